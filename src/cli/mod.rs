//! The command line: clap definitions and one file per verb. This is the top of the
//! program, where `anyhow` is allowed; everything below returns typed errors. A
//! [`UserError`] or a [`SpecErrors`] exits with code 2, a failed run with 1, an
//! interrupted one with 130.

/// Prints a line on stdout. A closed pipe (`cauce runs | head`) ends the program quietly
/// with code 0 instead of a panic.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!($($arg)*)) };
}

/// Prints a line on stderr, ignoring write errors: a run must not die because whoever
/// watched its progress went away.
macro_rules! errln {
    ($($arg:tt)*) => { $crate::cli::write_stderr(format_args!($($arg)*)) };
}

mod cancel;
mod init;
mod inspect;
mod list;
mod progress;
mod run;
mod server;
mod validate;
mod worker;

use crate::engine::Services;
use crate::project::Project;
use crate::spec::SpecErrors;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

/// Exit code for invalid input or configuration.
pub const EXIT_USAGE: i32 = 2;

/// A mistake in what the user asked for: printed as it is, exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UserError(pub String);

/// cauce: pipelines as DAGs in YAML, run from the CLI, with every run's history kept.
#[derive(Debug, Parser)]
#[command(name = "cauce", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Project folder (default: the nearest folder upwards holding cauce.yaml, else the current one).
    #[arg(long, global = true, env = "CAUCE_PROJECT", value_name = "DIR")]
    pub project: Option<PathBuf>,
    /// Store URL (`sqlite:PATH` or `postgres://...`); overrides CAUCE_STORE and cauce.yaml.
    #[arg(long, global = true, value_name = "URL")]
    pub store: Option<String>,
    /// Format of cauce's own log lines on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "CAUCE_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a project with a runnable example and sample data.
    Init(init::InitArgs),
    /// Check pipeline files and report every problem at once.
    Validate(validate::ValidateArgs),
    /// List pipelines, tasks or workflows.
    List(list::ListArgs),
    /// Run a pipeline (or a selection of its tasks).
    Run(run::RunArgs),
    /// Re-run the tasks of a run that did not succeed (also resumes a run whose process died).
    Retry(run::RetryArgs),
    /// Ask a running run to stop; its tasks are killed and recorded as cancelled.
    Cancel(cancel::CancelArgs),
    /// Show a run's state and its tasks.
    Status(inspect::StatusArgs),
    /// List runs, newest first.
    Runs(inspect::RunsArgs),
    /// Print a run's JSON report.
    Report(inspect::ReportArgs),
    /// Print the log of a task attempt (follow it with --follow).
    Logs(inspect::LogsArgs),
    /// Serve the REST API and /metrics, run schedules, send alerts.
    Server(server::ServerArgs),
    /// Show the next fire times of scheduled pipelines.
    Schedule(server::ScheduleArgs),
    /// Claim and run task attempts from the store's queues (`executor: workers`).
    Worker(worker::WorkerArgs),
    /// List the workers the store has heard from, with their heartbeats and attempts.
    Workers(worker::WorkersArgs),
}

/// What every command starts from.
pub struct Context {
    /// The project.
    pub project: Project,
    /// `--store`.
    pub store_url: Option<String>,
}

impl Context {
    /// Opens the store and builds the services.
    pub async fn services(self) -> anyhow::Result<Arc<Services>> {
        let url = self
            .project
            .store_url(self.store_url.as_deref())
            .map_err(UserError)?;
        let store = crate::store::open(&url).await.map_err(|e| match e {
            crate::store::StoreError::BadUrl(_) => anyhow::Error::new(UserError(e.to_string())),
            other => anyhow::anyhow!("cannot open the store ({}): {other}", redact_url(&url)),
        })?;
        Services::new(self.project, store).map_err(|e| UserError(e.to_string()).into())
    }
}

/// Hides a password in a store URL.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Runs the parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let cwd = std::env::current_dir()?;
    if let Command::Init(args) = &cli.command {
        return init::run(args);
    }
    // A pipeline file given on the command line anchors project discovery at its folder.
    let start = match &cli.command {
        Command::Run(a) => a.anchor(),
        _ => None,
    }
    .unwrap_or(cwd);
    let project = Project::discover(cli.project.as_deref(), &start)?;
    let cx = Context {
        project,
        store_url: cli.store.clone(),
    };
    match cli.command {
        Command::Init(_) => unreachable_init(),
        Command::Validate(a) => validate::run(cx, a),
        Command::List(a) => list::run(cx, a),
        Command::Run(a) => run::run(cx, a).await,
        Command::Retry(a) => run::retry(cx, a).await,
        Command::Cancel(a) => cancel::run(cx, a).await,
        Command::Status(a) => inspect::status(cx, a).await,
        Command::Runs(a) => inspect::runs(cx, a).await,
        Command::Report(a) => inspect::report(cx, a).await,
        Command::Logs(a) => inspect::logs(cx, a).await,
        Command::Server(a) => server::server(cx, a).await,
        Command::Schedule(a) => server::schedule(cx, a),
        Command::Worker(a) => worker::worker(cx, a).await,
        Command::Workers(a) => worker::workers(cx, a).await,
    }
}

fn unreachable_init() -> anyhow::Result<i32> {
    Err(anyhow::anyhow!(
        "internal error: init handled above; this is a bug, please report it"
    ))
}

/// Maps an error from a command to its exit code and message.
pub fn exit_code_for(err: &anyhow::Error) -> i32 {
    if err.downcast_ref::<UserError>().is_some() || err.downcast_ref::<SpecErrors>().is_some() {
        EXIT_USAGE
    } else {
        1
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// See [`outln!`].
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{args}").and_then(|_| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// See [`errln!`].
pub fn write_stderr(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// Whether an error is only a closed output pipe (the reader went away: not a failure).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
