//! Task kinds: the plug-in point for everything a task can do.
//!
//! A kind is one file here: a spec struct read from the task's kind key, a `build` function,
//! and an implementation of [`TaskKind`]. It is registered by one line in [`KINDS`]. A kind
//! receives everything it may touch through [`TaskContext`] (ids, cancellation, log file,
//! template rendering, environment, settings); it returns an output value, metrics and, for
//! data tasks, a dataset. It never writes to the store: the engine records what it returns.

pub mod dimension;
pub mod exec;
pub mod extract;
pub mod fact;
pub mod http;
pub mod load;
pub mod pipeline;
pub mod python;
pub mod reconcile;
pub mod run;
pub mod sensor;
pub mod sql;
pub mod validate;

use crate::process::{self, LogFile, ProcessStats};
use crate::spec::error::{Location, SpecError};
use crate::spec::parse::decode;
use crate::template::{Escape, RenderVars, Templates};
use async_trait::async_trait;
use marked_yaml::Node;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Builds a kind from the value of its key in a task.
pub type BuildFn = fn(&Node, &BuildContext) -> Result<Arc<dyn TaskKind>, SpecError>;

/// The registry of task kinds: the kind key in a pipeline file, and its build function.
/// Its order is the order the docs list them in.
pub const KINDS: &[(&str, BuildFn)] = &[
    ("run", run::build),
    ("exec", exec::build),
    ("python", python::build),
    ("http", http::build),
    ("extract", extract::build),
    ("sql", sql::build),
    ("validate", validate::build),
    ("reconcile", reconcile::build),
    ("dimension", dimension::build),
    ("fact", fact::build),
    ("load", load::build),
    ("pipeline", pipeline::build),
    ("sensor", sensor::build),
];

/// What a build function may use.
#[derive(Debug)]
pub struct BuildContext<'a> {
    /// The pipeline file.
    pub file: &'a Path,
    /// Where relative paths resolve.
    pub base_dir: &'a Path,
    /// The field path of the kind key (`tasks.x.run`), for errors.
    pub field: String,
    /// The task's id.
    pub task_id: &'a str,
}

impl BuildContext<'_> {
    /// Decodes the kind's spec strictly, with located errors.
    pub fn decode<T: DeserializeOwned>(&self, node: &Node) -> Result<T, SpecError> {
        decode(node, self.file, &self.field)
    }

    /// For a data kind whose mapping names a plug-in (`extract: {source: csv, ...}`,
    /// `load: {sink: parquet, ...}`): the plug-in's name and build function from
    /// `registry`, and the mapping without `own_keys` (the rest is the plug-in's to decode).
    /// `kind` and `key` name them in errors (`extract`, `source`).
    pub fn plugin<F: Copy>(
        &self,
        node: &Node,
        kind: &str,
        key: &str,
        registry: &[(&'static str, F)],
        own_keys: &[&str],
    ) -> Result<(String, F, Node), SpecError> {
        let Some(map) = node.as_mapping() else {
            return Err(self.error(
                node,
                format!("`{kind}` must be a mapping with `{key}` and its options"),
            ));
        };
        let names: Vec<&str> = registry.iter().map(|(n, _)| *n).collect();
        let Some(name_node) = map.get_node(key) else {
            return Err(self.error(
                node,
                format!("`{kind}` needs `{key}`: one of {}", names.join(", ")),
            ));
        };
        let Some(name) = name_node.as_scalar().map(|s| s.as_str().to_string()) else {
            return Err(self.error(name_node, format!("`{key}` must be a name")));
        };
        let Some((_, build)) = registry.iter().find(|(n, _)| *n == name) else {
            return Err(self.error(
                name_node,
                format!(
                    "unknown {key} `{name}`{}; {key}s: {}",
                    crate::spec::error::suggestion(&name, names.iter().copied()),
                    names.join(", ")
                ),
            ));
        };
        let mut rest = map.clone();
        for k in own_keys {
            rest.remove(*k);
        }
        Ok((name, *build, Node::Mapping(rest)))
    }

    /// An error about this kind's value.
    pub fn error(&self, node: &Node, msg: impl Into<String>) -> SpecError {
        SpecError::new(
            Location::at(self.file, node.span().start()),
            Some(self.field.clone()),
            msg,
        )
    }
}

/// What static checks (`cauce validate`) may use.
#[derive(Debug, Clone, Default)]
pub struct CheckContext {
    /// Python interpreter.
    pub python: String,
    /// Extra directories to find Python modules in.
    pub python_path: Vec<PathBuf>,
    /// Names of the project's pipelines (for the `pipeline` kind), when in a project.
    pub pipelines: Option<Vec<String>>,
    /// Names of the alert channels in `cauce.yaml`, when in a project.
    pub alert_channels: Option<Vec<String>>,
    /// Whether checks may start programs (asking the Python interpreter whether a module is
    /// installed): `cauce validate` does; `cauce run` skips it, since a run reports a
    /// missing module anyway and must not pay one interpreter start per task.
    pub spawn_checks: bool,
    /// Answers of the interpreter, by (interpreter, module), so each is asked once.
    pub installed: Arc<Mutex<std::collections::HashMap<(String, String), bool>>>,
}

/// Counters a task reports; the data-plane kinds fill the row and byte counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Rows read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_in: Option<u64>,
    /// Rows written or produced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_out: Option<u64>,
    /// Rows rejected (quarantined).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_rejected: Option<u64>,
    /// Bytes read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_read: Option<u64>,
    /// Bytes written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<u64>,
}

/// What a successful task returns.
#[derive(Debug, Clone, Default)]
pub struct TaskOutput {
    /// The output value shown in the report (a Python function's returned dict, an HTTP
    /// status, a child run id...). `Null` when there is nothing to say.
    pub value: serde_json::Value,
    /// Counters.
    pub metrics: Metrics,
    /// The dataset a data task produced, under the run's data folder.
    pub dataset: Option<PathBuf>,
}

/// Why a task did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TaskError {
    /// It failed; another attempt may succeed.
    #[error("{0}")]
    Failed(String),
    /// It cannot succeed as configured (a template refers to a missing value, a file to
    /// run is missing); retrying would not help.
    #[error("{0}")]
    Invalid(String),
    /// It was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// An upstream task streaming into it did not succeed: the task is skipped, as it would
    /// have been had it waited.
    #[error("{0}")]
    Upstream(String),
}

impl TaskError {
    /// Whether another attempt could succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, TaskError::Failed(_))
    }
}

/// Runs another pipeline as a task (implemented by the engine).
#[async_trait]
pub trait PipelineRunner: Send + Sync + Debug {
    /// Runs pipeline `name` with `params` as a child of the calling task; returns the child
    /// run's id and final state name.
    async fn run_child(
        &self,
        name: &str,
        params: Vec<(String, String)>,
        parent: &TaskContext,
    ) -> Result<(String, crate::state::RunState), TaskError>;
}

/// A task's only door to the world during one attempt.
#[derive(Debug)]
pub struct TaskContext {
    /// Run id.
    pub run_id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Task id.
    pub task_id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Fires on cancellation and timeout; every wait must select on it.
    pub cancel: CancellationToken,
    /// The attempt's log file.
    pub log: Arc<LogFile>,
    /// Template variables of this attempt.
    pub vars: RenderVars,
    /// The template engine.
    pub templates: Arc<Templates>,
    /// Environment for child processes: `CAUCE_*`, `CAUCE_PARAM_*` and the task's `env`.
    pub env: Vec<(String, String)>,
    /// Working directory (the project root or the pipeline's folder).
    pub work_dir: PathBuf,
    /// The run's data folder (datasets).
    pub data_dir: PathBuf,
    /// The task's upstream task ids (`depends_on`), whose datasets it may read.
    pub upstream: Vec<String>,
    /// The project's `data:` settings (memory limit, batch size).
    pub data: Arc<crate::data::DataSettings>,
    /// Python interpreter.
    pub python: String,
    /// Extra directories for Python imports.
    pub python_path: Vec<PathBuf>,
    /// How long a cancelled process group gets between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Kernel accounting of the last process the task ran.
    pub process_stats: Mutex<Option<ProcessStats>>,
    /// Runs child pipelines.
    pub runner: Option<Arc<dyn PipelineRunner>>,
    /// Upstream datasets that arrive live, and the hand-over of this task's own.
    pub streams: crate::data::live::Streams,
}

impl TaskContext {
    /// A folder for this attempt's temporary files under the run's data folder, removed
    /// when the guard drops, however the attempt ends.
    pub fn scratch(&self) -> crate::data::dataset::Scratch {
        crate::data::dataset::Scratch::new(
            self.data_dir
                .join(format!(".scratch-{}-{}", self.task_id, self.attempt)),
        )
    }

    /// The one upstream dataset a kind reads when its spec names none (`what` says what
    /// the kind does with it, for errors); `except` are upstream datasets it reads for
    /// other purposes (references, dimensions).
    pub fn one_upstream(&self, what: &str, except: &[String]) -> Result<String, TaskError> {
        let with_data: Vec<&String> = self
            .upstream
            .iter()
            .filter(|t| !except.contains(t) && crate::data::dataset::exists(&self.data_dir, t))
            .collect();
        match with_data.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(TaskError::Invalid(format!(
                "nothing to {what}: no upstream task has a dataset (depend on an extract or sql task, or name it in `from`)"
            ))),
            many => Err(TaskError::Invalid(format!(
                "several upstream datasets ({}); say which to {what} with `from`",
                many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Renders a templated field; a template error is not retryable.
    pub fn render(&self, text: &str, escape: Escape) -> Result<String, TaskError> {
        self.templates
            .render(text, escape, &self.vars)
            .map_err(TaskError::Invalid)
    }

    /// [`TaskContext::render`] for the data plane's sources and sinks (a URL, a path, a
    /// table name, a query): a template error is bad input, not retried.
    pub fn render_data(
        &self,
        text: &str,
        escape: Escape,
    ) -> Result<String, crate::data::DataError> {
        self.templates
            .render(text, escape, &self.vars)
            .map_err(crate::data::DataError::Invalid)
    }

    /// Renders every string inside a JSON value (keys stay as written), so that values
    /// are inserted as JSON strings, never spliced into JSON text.
    pub fn render_json(&self, v: &serde_json::Value) -> Result<serde_json::Value, TaskError> {
        use serde_json::Value;
        Ok(match v {
            Value::String(s) => Value::String(self.render(s, Escape::Plain)?),
            Value::Array(a) => Value::Array(
                a.iter()
                    .map(|x| self.render_json(x))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| Ok((k.clone(), self.render_json(x)?)))
                    .collect::<Result<_, TaskError>>()?,
            ),
            other => other.clone(),
        })
    }

    /// Runs a process in its own group with the task's environment, recording its stats;
    /// a non-zero exit is a failure, a cancellation is [`TaskError::Cancelled`].
    pub async fn run_process(
        &self,
        program: &str,
        args: Vec<String>,
        extra_env: Vec<(String, String)>,
    ) -> Result<ProcessStats, TaskError> {
        let mut env = self.env.clone();
        env.extend(extra_env);
        let cmd = process::Command {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            env,
            cwd: self.work_dir.clone(),
        };
        let exit = process::run(&cmd, &self.log, &self.cancel, self.kill_grace)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    TaskError::Invalid(format!("program `{program}` not found"))
                }
                std::io::ErrorKind::PermissionDenied => {
                    TaskError::Invalid(format!("program `{program}` is not executable"))
                }
                _ => TaskError::Failed(format!("could not start `{program}`: {e}")),
            })?;
        if let Ok(mut s) = self.process_stats.lock() {
            *s = Some(exit.stats);
        }
        if exit.cancelled {
            return Err(TaskError::Cancelled);
        }
        match (exit.stats.exit_code, exit.stats.signal) {
            (Some(0), _) => Ok(exit.stats),
            (Some(code), _) => Err(TaskError::Failed(format!("exited with code {code}"))),
            (None, Some(sig)) => Err(TaskError::Failed(format!("killed by signal {sig}"))),
            (None, None) => Err(TaskError::Failed("ended abnormally".into())),
        }
    }
}

/// One kind of task.
#[async_trait]
pub trait TaskKind: Send + Sync + Debug {
    /// One line saying what it does, for `--dry-run` and listings.
    fn describe(&self) -> String;

    /// Problems `cauce validate` can find without running it (a missing program...).
    fn check(&self, _cx: &CheckContext, _base_dir: &Path) -> Vec<String> {
        Vec::new()
    }

    /// For a task that keeps an incremental cursor: the value before its first successful
    /// run (`Null` when none). The engine looks up the last committed value and gives it,
    /// or this one, as the `watermark` template variable. `None` for other tasks.
    fn watermark_initial(&self) -> Option<serde_json::Value> {
        None
    }

    /// Whether a successful attempt leaves a dataset for the tasks downstream.
    fn produces_dataset(&self) -> bool {
        false
    }

    /// Whether its dataset can be handed, as it is written, to the one downstream task
    /// started beside it ([`crate::data::live`]): it writes one dataset, through
    /// `dataset::write_streaming`, and nothing after it that a consumer could miss.
    fn streams_output(&self) -> bool {
        false
    }

    /// Whether it can start while its upstream datasets are still being written and take
    /// them live: it reads each of them through [`crate::data::live::read`], and commits
    /// nothing before they are complete.
    fn streams_input(&self) -> bool {
        false
    }

    /// Task ids whose datasets it names explicitly (`from:` of a load); each must be
    /// upstream of it, which `cauce validate` checks.
    fn reads(&self) -> Vec<String> {
        Vec::new()
    }

    /// Runs one attempt. Must return promptly once `ctx.cancel` fires.
    async fn run(&self, ctx: &TaskContext) -> Result<TaskOutput, TaskError>;
}

/// Resolves a program the way `execvp` would, for static checks: a path with a slash is
/// checked relative to `base_dir`; a bare name is looked up in `PATH`.
pub fn check_program(program: &str, base_dir: &Path) -> Option<String> {
    if program.contains("{{") || program.contains("${") {
        return None; // decided at run time
    }
    if program.contains('/') {
        let path = base_dir.join(program);
        return match std::fs::metadata(&path) {
            Err(_) => Some(format!(
                "`{program}` does not exist (looked in {})",
                base_dir.display()
            )),
            Ok(m) if !m.is_file() => Some(format!("`{program}` is not a file")),
            Ok(m) => {
                use std::os::unix::fs::PermissionsExt;
                if m.permissions().mode() & 0o111 == 0 {
                    Some(format!(
                        "`{program}` is not executable (chmod +x {program})"
                    ))
                } else {
                    None
                }
            }
        };
    }
    let found = std::env::var_os("PATH")
        .and_then(|paths| process::find_in_path(std::ffi::OsStr::new(program), &paths))
        .is_some();
    if found {
        None
    } else {
        Some(format!("program `{program}` not found in PATH"))
    }
}
