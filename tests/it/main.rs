//! The integration tests: one binary (`cargo test --test it`).
//!
//! - `common`: a temporary project and a runner for the real `cauce` binary.
//! - `store`: the store conformance suite, on SQLite and on PostgreSQL.
//! - `cli`: validation, listing, init, dry runs, params and error exit codes.
//! - `engine`: retries, timeouts, critical failures, triggers, cancellation, kill -9 recovery.
//! - `tasks`: the task kinds (python, http, pipeline), secrets and injection safety.

#![allow(clippy::unwrap_used)]

mod cli;
mod common;
mod engine;
mod store;
mod tasks;
