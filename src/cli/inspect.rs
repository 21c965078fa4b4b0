//! Read commands: `cauce status`, `cauce runs`, `cauce report`, `cauce logs`. Each reads the
//! store (and log files) only; `--json` prints machine-readable output.

use super::{print_json, Context, UserError};
use crate::spec::duration::format_duration;
use crate::state::{RunState, TaskState};
use crate::store::{format_ms, Store};
use clap::Args;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

/// `cauce status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The run (`latest` for the newest; default: the newest).
    pub run_id: Option<String>,
    /// The newest run (seed-001 compatibility; same as giving no id).
    #[arg(long)]
    pub latest: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// A byte count for people: `950 B`, `12.3 KB`, `4.1 MB`, `2.0 GB` (powers of 1024).
fn human_bytes(n: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// `cauce runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only runs of this pipeline.
    pub pipeline: Option<String>,
    /// Only runs in this state.
    #[arg(long, value_parser = ["running", "success", "partial", "failed", "cancelled"])]
    pub state: Option<String>,
    /// How many (newest first).
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `cauce report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run (`latest` for the newest).
    pub run_id: String,
}

/// `cauce logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The run (`latest` for the newest).
    pub run_id: String,
    /// Only this task.
    pub task: Option<String>,
    /// Only this attempt of the task (default: all).
    #[arg(long)]
    pub attempt: Option<u32>,
    /// Keep printing new output until the task (or run) ends.
    #[arg(long, short, conflicts_with = "json")]
    pub follow: bool,
    /// Machine-readable output: one object per attempt with its log text (up to 1 MiB
    /// each; the rest is cut and said so).
    #[arg(long)]
    pub json: bool,
}

/// Turns a run id, or `latest` (the newest run started by a user or a schedule, not a
/// child run of a `pipeline` task), into a run id that exists.
pub async fn resolve_run_id(store: &dyn Store, arg: &str) -> anyhow::Result<String> {
    if arg == "latest" {
        let recent = store.list_runs(None, None, 200).await?;
        return recent
            .iter()
            .find(|r| r.parent_run_id.is_none())
            .or(recent.first())
            .map(|r| r.id.clone())
            .ok_or_else(|| UserError("there are no runs yet".into()).into());
    }
    if store.get_run(arg).await?.is_some() {
        return Ok(arg.to_string());
    }
    Err(UserError(format!("no run `{arg}` (`cauce runs` lists them)")).into())
}

fn secs(a: Option<i64>, b: Option<i64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format_duration(Duration::from_millis((b - a).max(0) as u64)),
        (Some(_), None) => "…".into(),
        _ => "-".into(),
    }
}

/// `cauce status`.
pub async fn status(cx: Context, args: StatusArgs) -> anyhow::Result<i32> {
    let svc = cx.services().await?;
    let store = svc.store.as_ref();
    let arg = args.run_id.unwrap_or_else(|| "latest".into());
    let _ = args.latest;
    let id = resolve_run_id(store, &arg).await?;
    let run = store
        .get_run(&id)
        .await?
        .ok_or_else(|| UserError(format!("no run `{id}`")))?;
    let tasks = store.task_runs(&id).await?;
    let attempts = store.attempts(&id).await?;
    if args.json {
        print_json(&serde_json::json!({ "run": run, "tasks": tasks, "attempts": attempts }))?;
        return Ok(0);
    }
    outln!("run       {}", run.id);
    outln!("pipeline  {}", run.pipeline);
    outln!("state     {}", run.state);
    outln!("started   {}", format_ms(run.created_at));
    if let Some(e) = run.ended_at {
        outln!(
            "ended     {} ({})",
            format_ms(e),
            secs(Some(run.created_at), Some(e))
        );
    }
    if run.params.as_object().is_some_and(|m| !m.is_empty()) {
        outln!("params    {}", run.params);
    }
    if let Some(err) = &run.error {
        outln!("error     {err}");
    }
    outln!("");
    // Data tasks report rows and bytes; the columns appear when a task has them.
    let data = tasks.iter().any(|t| t.metrics.is_some());
    let data_head = if data {
        format!(
            " {:>10} {:>10} {:>9} {:>9}",
            "rows in", "rows out", "read", "written"
        )
    } else {
        String::new()
    };
    outln!(
        "{:<28} {:<10} {:>8} {:>10} {:>10}{data_head}  error",
        "task",
        "state",
        "attempts",
        "duration",
        "peak mem"
    );
    let mut last_attempt: std::collections::HashMap<&str, &crate::store::AttemptRecord> =
        std::collections::HashMap::new();
    for a in &attempts {
        let slot = last_attempt.entry(a.task_id.as_str()).or_insert(a);
        if a.number > slot.number {
            *slot = a;
        }
    }
    for t in &tasks {
        let last = last_attempt.get(t.task_id.as_str());
        let mem = last
            .and_then(|a| a.peak_rss_kb)
            .map(|kb| format!("{:.1} MB", kb as f64 / 1024.0))
            .unwrap_or_else(|| "-".into());
        let data_cols = if data {
            let m = |k: &str| {
                t.metrics
                    .as_ref()
                    .and_then(|m| m.get(k))
                    .and_then(|v| v.as_u64())
            };
            let count = |k: &str| m(k).map(|n| n.to_string()).unwrap_or_else(|| "-".into());
            let bytes = |k: &str| m(k).map(human_bytes).unwrap_or_else(|| "-".into());
            format!(
                " {:>10} {:>10} {:>9} {:>9}",
                count("rows_in"),
                count("rows_out"),
                bytes("bytes_read"),
                bytes("bytes_written")
            )
        } else {
            String::new()
        };
        outln!(
            "{:<28} {:<10} {:>8} {:>10} {:>10}{data_cols}  {}",
            t.task_id,
            t.state.as_str(),
            t.attempts,
            secs(t.started_at, t.ended_at),
            mem,
            t.error
                .as_deref()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("")
        );
    }
    Ok(0)
}

/// `cauce runs`.
pub async fn runs(cx: Context, args: RunsArgs) -> anyhow::Result<i32> {
    let svc = cx.services().await?;
    let state = args.state.as_deref().and_then(RunState::parse);
    let runs = svc
        .store
        .list_runs(args.pipeline.as_deref(), state, args.limit)
        .await?;
    if args.json {
        print_json(&runs)?;
        return Ok(0);
    }
    if runs.is_empty() {
        outln!("no runs");
        return Ok(0);
    }
    outln!(
        "{:<26} {:<24} {:<10} {:<25} {:>10}",
        "run",
        "pipeline",
        "state",
        "started",
        "duration"
    );
    for r in runs {
        outln!(
            "{:<26} {:<24} {:<10} {:<25} {:>10}",
            r.id,
            r.pipeline,
            r.state.as_str(),
            format_ms(r.created_at),
            secs(Some(r.created_at), r.ended_at)
        );
    }
    Ok(0)
}

/// `cauce report`.
pub async fn report(cx: Context, args: ReportArgs) -> anyhow::Result<i32> {
    let svc = cx.services().await?;
    let id = resolve_run_id(svc.store.as_ref(), &args.run_id).await?;
    let report = crate::engine::report::build(svc.store.as_ref(), &id).await?;
    print_json(&report)?;
    Ok(0)
}

/// `cauce logs`.
pub async fn logs(cx: Context, args: LogsArgs) -> anyhow::Result<i32> {
    let svc = cx.services().await?;
    let store = svc.store.as_ref();
    let id = resolve_run_id(store, &args.run_id).await?;
    let tasks = store.task_runs(&id).await?;
    if let Some(t) = &args.task {
        if !tasks.iter().any(|r| &r.task_id == t) {
            let names: Vec<&str> = tasks.iter().map(|r| r.task_id.as_str()).collect();
            return Err(UserError(format!(
                "run {id} has no task `{t}`{}",
                crate::spec::error::suggestion(t, names.iter().copied())
            ))
            .into());
        }
    }
    if args.json {
        const MAX: u64 = 1024 * 1024;
        let mut out = Vec::new();
        for a in store
            .attempts(&id)
            .await?
            .iter()
            .filter(|a| args.task.as_ref().is_none_or(|t| &a.task_id == t))
            .filter(|a| args.attempt.is_none_or(|n| a.number == n))
            .filter(|a| a.started_at.is_some())
        {
            let path = svc.attempt_log_local(a).await;
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let mut text = Vec::new();
            if let Ok(f) = std::fs::File::open(&path) {
                f.take(MAX).read_to_end(&mut text)?;
            }
            out.push(serde_json::json!({
                "task_id": a.task_id,
                "attempt": a.number,
                "state": a.state,
                "bytes": size,
                "truncated": size > MAX,
                "text": String::from_utf8_lossy(&text),
            }));
        }
        print_json(&out)?;
        return Ok(0);
    }
    let mut printed: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut stdout = std::io::stdout();
    loop {
        let attempts = store.attempts(&id).await?;
        let chosen: Vec<_> = attempts
            .iter()
            .filter(|a| args.task.as_ref().is_none_or(|t| &a.task_id == t))
            .filter(|a| args.attempt.is_none_or(|n| a.number == n))
            .filter(|a| a.started_at.is_some())
            .collect();
        for a in &chosen {
            // Log paths come from the store; only files under the project's log folder are read.
            let path = svc.attempt_log_local(a).await;
            let offset = printed.get(&path.display().to_string()).copied();
            if offset.is_none() && args.task.is_none() || offset.is_none() && chosen.len() > 1 {
                writeln!(
                    stdout,
                    "==> {} attempt {} ({}) <==",
                    a.task_id, a.number, a.state
                )?;
            }
            let from = offset.unwrap_or(0);
            if let Ok(mut f) = std::fs::File::open(&path) {
                f.seek(SeekFrom::Start(from))?;
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)?;
                stdout.write_all(&buf)?;
                printed.insert(path.display().to_string(), from + buf.len() as u64);
            } else {
                printed.entry(path.display().to_string()).or_insert(0);
            }
        }
        stdout.flush()?;
        if !args.follow {
            break;
        }
        let run = store.get_run(&id).await?;
        let tasks = store.task_runs(&id).await?;
        let done = match &args.task {
            Some(t) => tasks
                .iter()
                .any(|r| &r.task_id == t && r.state.is_final() && r.state != TaskState::Pending),
            None => run.is_none_or(|r| r.state.is_final()),
        };
        if done {
            // One last read after the end, then stop.
            for a in store
                .attempts(&id)
                .await?
                .iter()
                .filter(|a| args.task.as_ref().is_none_or(|t| &a.task_id == t))
            {
                let path = svc.attempt_log_local(a).await;
                let from = printed
                    .get(&path.display().to_string())
                    .copied()
                    .unwrap_or(0);
                if let Ok(mut f) = std::fs::File::open(&path) {
                    f.seek(SeekFrom::Start(from))?;
                    let mut buf = Vec::new();
                    f.read_to_end(&mut buf)?;
                    stdout.write_all(&buf)?;
                }
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(0)
}
