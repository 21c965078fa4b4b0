//! cauce: a single-binary ETL orchestrator. Pipelines are DAGs of tasks in YAML (or JSON);
//! cauce validates them, runs them with bounded parallelism, retries and timeouts, and keeps
//! every run, task and attempt in a store (SQLite by default, PostgreSQL for many machines).
//!
//! # Layout
//! - [`cli`]: the command line, one file per verb; the only place `anyhow` is used.
//! - [`project`]: finding the project, `cauce.yaml` settings, `.env`, pipeline files.
//! - [`spec`]: what the user writes: parsing (strict, located errors), the seed-001 JSON
//!   config, durations, and the semantic checks of `cauce validate`.
//! - [`dag`]: cycles, layers and task selection.
//! - [`tasks`]: the task-kind plug-in trait and registry, one file per kind.
//! - [`data`]: the data plane's shared parts: the query-engine session (memory limit,
//!   spilling), datasets between tasks, column types.
//! - [`sources`], [`sinks`]: where `extract` reads and `load` writes, one file each.
//! - [`quality`]: the rules engine of `validate` and the comparison of `reconcile`.
//! - [`warehouse`]: the star schema: the dimension merge (SCD1/2, surrogate keys) behind
//!   `dimension` and the surrogate-key lookup behind `fact`.
//! - [`engine`]: executes a run through the store's queue: triggers, slots, retries,
//!   timeouts, cancellation, crash recovery, reports.
//! - [`store`]: the one `Store` trait and its SQL implementation (SQLite, PostgreSQL).
//! - [`process`]: child processes in their own group, output to log files, kernel accounting.
//! - [`state`]: task, attempt and run states and trigger rules.
//! - [`template`], [`secrets`]: the one template engine; secret values and redaction.
//! - [`schedule`]: cron arithmetic: fire times in a time zone, catchup, what is due.
//! - [`server`]: `cauce server`: the scheduler service, the REST API, metrics, lifecycle.
//! - [`shared`]: logs, reports and datasets mirrored through an object store (`s3://`)
//!   for workers on machines that share no folder.
//! - [`alerts`]: alert channels (e-mail, webhook, command) and their rate-limited dispatch.

pub mod alerts;
pub mod cli;
pub mod dag;
pub mod data;
pub mod engine;
pub mod process;
pub mod project;
pub mod quality;
pub mod schedule;
pub mod secrets;
pub mod server;
pub mod shared;
pub mod sinks;
pub mod sources;
pub mod spec;
pub mod state;
pub mod store;
pub mod tasks;
pub mod template;
pub mod warehouse;
