//! `cauce run` and `cauce retry`: one run, in this process, with live progress; the exit
//! code is the run's outcome (0 success, 1 failed or partial, 130 cancelled).

use super::progress::Progress;
use super::{Context, UserError};
use crate::dag::{self, Selection};
use crate::engine::{Engine, RunInfo, RunOptions};
use crate::project::resolve_params;
use crate::spec::check::check_pipeline;
use crate::spec::SpecErrors;
use crate::state::RunState;
use chrono::{DateTime, Utc};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// `cauce run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Pipeline name (in the project) or pipeline file.
    pub pipeline: Option<String>,
    /// A pipeline file or seed-001 JSON config to run (same as giving the file).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run only the tasks of this workflow.
    #[arg(long, conflicts_with = "tasks")]
    pub workflow: Option<String>,
    /// Run only these tasks (comma- or space-separated).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub tasks: Vec<String>,
    /// With --tasks or --workflow: also run everything they depend on.
    #[arg(long)]
    pub with_upstream: bool,
    /// Run only the selected tasks of this category.
    #[arg(long)]
    pub category: Option<String>,
    /// A run parameter (repeatable).
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Parallel task slots (default: the pipeline's `max_workers`, else cauce.yaml's).
    #[arg(long)]
    pub max_workers: Option<usize>,
    /// Treat every task as non-critical for this run.
    #[arg(long)]
    pub continue_on_failure: bool,
    /// Print the plan, layer by layer, and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The run's logical date (`YYYY-MM-DD` or RFC 3339; default: now).
    #[arg(long, value_name = "DATE")]
    pub logical_date: Option<String>,
    /// Print the run's report as JSON on stdout when it ends.
    #[arg(long)]
    pub json: bool,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Accepted for seed-001 compatibility: cauce always runs independent tasks in parallel.
    #[arg(long, hide = true)]
    pub parallel: bool,
}

impl RunArgs {
    /// The folder a pipeline file argument lives in, to find its project from there.
    pub fn anchor(&self) -> Option<PathBuf> {
        let arg = self
            .config
            .clone()
            .or_else(|| self.pipeline.as_ref().map(PathBuf::from))?;
        if !arg.is_file() {
            return None;
        }
        let abs = std::fs::canonicalize(&arg).ok()?;
        abs.parent().map(|p| p.to_path_buf())
    }
}

/// `cauce retry`.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The run (`latest` for the newest).
    pub run_id: String,
    /// Print the run's report as JSON on stdout when it ends.
    #[arg(long)]
    pub json: bool,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_logical_date(text: &str) -> Result<DateTime<Utc>, UserError> {
    crate::schedule::parse_logical_date(text)
        .map_err(|m| UserError(format!("invalid --logical-date: {m}")))
}

/// Parses `-p KEY=VALUE` arguments.
pub fn parse_params(raw: &[String]) -> Result<Vec<(String, String)>, UserError> {
    raw.iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| UserError(format!("invalid param `{p}`: write -p KEY=VALUE")))
        })
        .collect()
}

/// Cancels `token` on Ctrl-C or SIGTERM.
fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        crate::process::stop_signal().await;
        errln!("interrupted: cancelling running tasks...");
        token.cancel();
    });
}

/// `cauce run`.
pub async fn run(cx: Context, args: RunArgs) -> anyhow::Result<i32> {
    let target = match (&args.config, &args.pipeline) {
        (Some(c), None) => c.display().to_string(),
        (None, Some(p)) => p.clone(),
        (Some(_), Some(_)) => {
            return Err(UserError("give a pipeline or --config, not both".into()).into())
        }
        (None, None) => {
            return Err(UserError(
                "which pipeline? give its name or file (`cauce list` shows them)".into(),
            )
            .into())
        }
    };
    let file = cx.project.resolve(&target).map_err(UserError)?;
    let pipeline = cx.project.load_pipeline(&file)?;
    let check_cx = crate::tasks::CheckContext {
        spawn_checks: false,
        ..cx.project.check_context()
    };
    let problems = check_pipeline(&pipeline, &check_cx);
    if !problems.is_empty() {
        return Err(SpecErrors(problems).into());
    }
    let selection = dag::select(
        &pipeline,
        &Selection {
            workflow: args.workflow.clone(),
            tasks: args.tasks.clone(),
            with_upstream: args.with_upstream,
            category: args.category.clone(),
        },
    )
    .map_err(UserError)?;
    let params = resolve_params(&pipeline, &parse_params(&args.params)?).map_err(UserError)?;
    let max_workers = args
        .max_workers
        .or(pipeline.max_workers)
        .unwrap_or(cx.project.settings.max_workers);
    if max_workers == 0 {
        return Err(UserError("--max-workers must be at least 1".into()).into());
    }
    let logical_date = match &args.logical_date {
        Some(t) => parse_logical_date(t)?,
        None => Utc::now(),
    };
    if args.dry_run {
        outln!(
            "pipeline {} ({} of {} tasks, {max_workers} workers)",
            pipeline.name,
            selection.len(),
            pipeline.tasks.len()
        );
        if !params.is_empty() {
            outln!("params: {}", serde_json::to_string(&params)?);
        }
        for (i, layer) in dag::layers(&pipeline, &selection).iter().enumerate() {
            outln!("layer {}:", i + 1);
            for id in layer {
                let t = &pipeline.tasks[id];
                let deps: Vec<&str> = t
                    .depends_on
                    .iter()
                    .filter(|d| selection.contains(*d))
                    .map(|d| d.as_str())
                    .collect();
                let after = if deps.is_empty() {
                    String::new()
                } else {
                    format!("  (after {})", deps.join(", "))
                };
                outln!("  {id}: {}{after}", t.action.describe());
            }
        }
        return Ok(0);
    }
    let opts = RunOptions {
        max_workers,
        continue_on_failure: args.continue_on_failure,
        params: params.clone(),
        logical_date,
        selection,
        trigger: "manual".into(),
        parent: None,
        depth: 0,
    };
    let services = cx.services().await?;
    let engine = Engine::new(services);
    let run_id = engine.create_run(&pipeline, &opts).await?;
    let info = Arc::new(RunInfo {
        id: run_id.clone(),
        pipeline: Arc::new(pipeline),
        params,
        logical_date,
        max_workers,
        continue_on_failure: args.continue_on_failure,
        depth: 0,
    });
    execute(&engine, info, args.json, args.quiet).await
}

/// `cauce retry`.
pub async fn retry(cx: Context, args: RetryArgs) -> anyhow::Result<i32> {
    let services = cx.services().await?;
    let run_id = super::inspect::resolve_run_id(services.store.as_ref(), &args.run_id).await?;
    let engine = Engine::new(services);
    let reset = engine.prepare_retry(&run_id).await.map_err(|e| match e {
        crate::engine::EngineError::Refused(m) => anyhow::Error::new(UserError(m)),
        other => other.into(),
    })?;
    let info = Arc::new(engine.load_run(&run_id).await?);
    if !args.quiet {
        errln!(
            "retrying run {run_id}: {} task(s) to run again",
            reset.len()
        );
    }
    execute(&engine, info, args.json, args.quiet).await
}

async fn execute(
    engine: &Engine,
    info: Arc<RunInfo>,
    json: bool,
    quiet: bool,
) -> anyhow::Result<i32> {
    let store = Arc::clone(&engine.services().store);
    let run_id = info.id.clone();
    let total = store.task_runs(&run_id).await?.len();
    if !quiet {
        errln!(
            "run {run_id} of pipeline {} ({total} tasks, {} workers)",
            info.pipeline.name,
            info.max_workers
        );
    }
    let progress = Progress::new(total, quiet);
    let cancel = CancellationToken::new();
    cancel_on_signals(cancel.clone());
    let state = engine.execute(info, progress.sink(quiet), cancel).await?;
    progress.finish();
    // Alerts of this run go out before the process ends.
    engine
        .services()
        .alerts
        .flush(std::time::Duration::from_secs(15))
        .await;
    if json {
        let report = crate::engine::report::build(store.as_ref(), &run_id).await?;
        super::print_json(&report)?;
    }
    if !quiet {
        let run = store.get_run(&run_id).await?;
        let took = run
            .as_ref()
            .and_then(|r| r.ended_at.map(|e| (e - r.created_at) as f64 / 1000.0))
            .unwrap_or(0.0);
        let tasks = store.task_runs(&run_id).await?;
        let count = |s: crate::state::TaskState| tasks.iter().filter(|t| t.state == s).count();
        use crate::state::TaskState as T;
        errln!(
            "run {run_id} {state} in {took:.2}s: {} succeeded, {} failed, {} skipped, {} cancelled",
            count(T::Success),
            count(T::Failed),
            count(T::Skipped),
            count(T::Cancelled)
        );
        if state != RunState::Success {
            errln!("details: cauce status {run_id}   logs: cauce logs {run_id} TASK   report: cauce report {run_id}");
        }
    }
    Ok(state.exit_code())
}
