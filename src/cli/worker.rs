//! `cauce worker` (claim and run attempts from the store's queues) and `cauce workers` (the
//! workers the store has heard from). The worker loop itself is [`crate::engine::worker`].

use super::{print_json, Context, UserError};
use crate::engine::worker::WorkerOptions;
use crate::engine::Engine;
use crate::spec::duration::parse_duration;
use crate::store::{format_ms, now_ms};
use clap::Args;
use tokio_util::sync::CancellationToken;

/// `cauce worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Attempts run at once (default: the project's `max_workers`).
    #[arg(long)]
    pub slots: Option<usize>,
    /// Queues to claim from, comma-separated (default: `default`).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub queues: Vec<String>,
    /// Labels shown in `cauce workers` (`zone=eu`, `gpu`), repeatable.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// How long to wait between claims while the queues are empty.
    #[arg(long, default_value = "100ms")]
    pub poll: String,
}

/// `cauce workers`.
#[derive(Debug, Args)]
pub struct WorkersArgs {
    /// Also workers last heard of this long ago (default: 10m).
    #[arg(long, default_value = "10m")]
    pub since: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `cauce worker`: runs until drained (SIGTERM or Ctrl-C once) or stopped (twice).
pub async fn worker(cx: Context, args: WorkerArgs) -> anyhow::Result<i32> {
    let poll = parse_duration(&args.poll).map_err(|e| UserError(format!("--poll: {e}")))?;
    let mut queues = args.queues;
    queues.retain(|q| !q.trim().is_empty());
    if queues.is_empty() {
        queues.push(crate::spec::parse::DEFAULT_QUEUE.to_string());
    }
    if args.slots == Some(0) {
        return Err(UserError("--slots must be at least 1".into()).into());
    }
    let svc = cx.services().await?;
    if svc.store.backend() == "sqlite" {
        tracing::warn!("this store is SQLite: only workers on this machine can share it; use PostgreSQL for workers on several machines");
    }
    let slots = args.slots.unwrap_or(svc.project.settings.max_workers);
    let engine = Engine::new(svc);
    let drain = CancellationToken::new();
    let stop = CancellationToken::new();
    {
        let (drain, stop) = (drain.clone(), stop.clone());
        tokio::spawn(async move {
            crate::process::stop_signal().await;
            errln!("draining: finishing the running attempts (signal again to stop now)");
            drain.cancel();
            crate::process::stop_signal().await;
            errln!("stopping: running attempts are left for other workers");
            stop.cancel();
        });
    }
    let opts = WorkerOptions {
        slots,
        queues,
        labels: args.labels,
        poll,
    };
    crate::engine::worker::run(engine, opts, drain, stop.clone()).await?;
    Ok(if stop.is_cancelled() { 130 } else { 0 })
}

/// `cauce workers`.
pub async fn workers(cx: Context, args: WorkersArgs) -> anyhow::Result<i32> {
    let since = parse_duration(&args.since).map_err(|e| UserError(format!("--since: {e}")))?;
    let lease = cx.project.settings.lease;
    let svc = cx.services().await?;
    let now = now_ms();
    let list = svc.store.workers(now - since.as_millis() as i64).await?;
    if args.json {
        print_json(&list)?;
        return Ok(0);
    }
    if list.is_empty() {
        outln!("no workers");
        return Ok(0);
    }
    outln!(
        "{:<34} {:<10} {:>5} {:>7} {:<18} {:<24} labels",
        "worker",
        "state",
        "slots",
        "running",
        "queues",
        "last heartbeat"
    );
    for w in list {
        let state = w.state(lease, now);
        outln!(
            "{:<34} {:<10} {:>5} {:>7} {:<18} {:<24} {}",
            w.info.id,
            state,
            w.info.slots,
            w.running,
            w.info.queues.join(","),
            format_ms(w.heartbeat_at),
            w.info.labels.join(" ")
        );
    }
    Ok(0)
}
