//! The integration tests: one binary (`cargo test --test it`).
//!
//! - `common`: a temporary project and a runner for the real `cauce` binary.
//! - `store`: the store conformance suite, on SQLite and on PostgreSQL.
//! - `cli`: validation, listing, init, dry runs, params and error exit codes.
//! - `engine`: retries, timeouts, critical failures, triggers, cancellation, kill -9 recovery.
//! - `data`: extract, sql and load end to end; files read back with DuckDB and pyarrow.
//! - `data_db`: the PostgreSQL, MySQL/MariaDB and SQLite sources and sinks against real servers.
//! - `data_files`: file formats (JSON, NDJSON, Parquet, Excel in and out, decimal commas).
//! - `data_http`: the http_api source against a local HTTP server: pagination, retries, auth.
//! - `data_stream`: tasks streaming into one another: overlap, failures upstream, odd queries.
//! - `quality`: validate (rules, quarantine, populations, report) and reconcile/merge.
//! - `warehouse`: dimension (SCD1/2 in PostgreSQL and Parquet), fact lookups, the calendar.
//! - `workers`: `cauce worker` processes on PostgreSQL: queues, drain, kill -9, frozen workers, a soak.
//! - `tasks`: the task kinds (python, http, pipeline), secrets and injection safety.
//! - `server`: `cauce server`: API, auth, scheduler, alerts, metrics, lifecycle.
//! - `fuzz`: schema-driven fuzzing of the API from its OpenAPI document.
//! - `ui`: the web dashboard in headless Chromium (specs in `tests/ui/`, run with Node).

#![allow(clippy::unwrap_used)]

mod cli;
mod common;
mod data;
mod data_db;
mod data_files;
mod data_http;
mod data_stream;
mod engine;
mod fuzz;
mod quality;
mod server;
mod store;
mod tasks;
mod ui;
mod warehouse;
mod workers;
