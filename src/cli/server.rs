//! `cauce server` and `cauce schedule`: the long-running service, and the next fire times
//! of every scheduled pipeline.

use super::{Context, UserError};
use crate::schedule::Schedule;
use crate::server::{ServerError, Stopped};
use chrono::Utc;
use clap::Args;

/// `cauce server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on (default: `server.listen` of cauce.yaml, else 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

/// `cauce server`.
pub async fn server(cx: Context, args: ServerArgs) -> anyhow::Result<i32> {
    let services = cx.services().await?;
    let backend = services.store.backend();
    let result = crate::server::serve(services, args.listen, |addr, catalog| {
        let pipelines = catalog.pipelines();
        let scheduled = pipelines.iter().filter(|p| p.schedule.is_some()).count();
        errln!(
            "cauce server listening on http://{addr} (store: {backend}; {} pipelines, {scheduled} scheduled)",
            pipelines.len()
        );
    })
    .await;
    match result {
        Ok(Stopped::Terminated) => {
            errln!("cauce server stopped");
            Ok(0)
        }
        Ok(Stopped::Interrupted) => {
            errln!("cauce server interrupted");
            Ok(130)
        }
        Err(e @ (ServerError::Config(_) | ServerError::Listen { .. })) => {
            Err(UserError(e.to_string()).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// `cauce schedule`.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Only this pipeline.
    pub pipeline: Option<String>,
    /// How many fire times to show per pipeline.
    #[arg(short = 'n', long, default_value_t = 3)]
    pub count: usize,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// `cauce schedule`.
pub fn schedule(cx: Context, args: ScheduleArgs) -> anyhow::Result<i32> {
    let mut rows = Vec::new();
    let mut found = false;
    for file in cx.project.pipeline_files() {
        let p = match cx.project.load_pipeline(&file) {
            Ok(p) => p,
            Err(e) => {
                errln!("warning: skipping {}: {e}", file.display());
                continue;
            }
        };
        if args.pipeline.as_ref().is_some_and(|n| *n != p.name) {
            continue;
        }
        found = true;
        let Some(s) = Schedule::of(&p).map_err(|e| UserError(format!("{}: {e}", p.name)))? else {
            continue;
        };
        let next: Vec<String> = s
            .upcoming(Utc::now(), args.count)
            .iter()
            .map(|d| d.to_rfc3339())
            .collect();
        rows.push(serde_json::json!({
            "pipeline": p.name,
            "schedule": s.expr,
            "timezone": s.tz.name(),
            "catchup": s.catchup,
            "next": next,
        }));
    }
    if let Some(name) = &args.pipeline {
        if !found {
            return Err(
                UserError(format!("no pipeline `{name}` (`cauce list` shows them)")).into(),
            );
        }
    }
    if args.json {
        super::print_json(&rows)?;
        return Ok(0);
    }
    if rows.is_empty() {
        outln!("no scheduled pipelines (add `schedule:` to a pipeline)");
        return Ok(0);
    }
    for r in &rows {
        outln!(
            "{}  {}  ({}{})",
            r["pipeline"].as_str().unwrap_or(""),
            r["schedule"].as_str().unwrap_or(""),
            r["timezone"].as_str().unwrap_or(""),
            if r["catchup"].as_bool() == Some(true) {
                ", catchup"
            } else {
                ""
            }
        );
        for t in r["next"].as_array().into_iter().flatten() {
            outln!("    {}", t.as_str().unwrap_or(""));
        }
    }
    Ok(0)
}
