//! One attempt of one task: builds its [`TaskContext`] (log file, environment, template
//! variables), runs the task kind with its timeout, and returns what happened. With an
//! object store for shared data it also fetches the upstream datasets this machine lacks
//! and uploads its own dataset and its log ([`crate::shared`]). When the attempt streams
//! (its dataset into a consumer, or its inputs from producers, [`crate::data::live`]), it
//! ends those hand-overs with its result however it ends. It writes nothing to the store;
//! the run coordinator (or the worker) records the outcome.

use super::{RunInfo, Services};
use crate::data::live::{EndOnDrop, Streams};
use crate::process::{LogFile, ProcessStats};
use crate::spec::duration::format_duration;
use crate::spec::Task;
use crate::store::AttemptRecord;
use crate::tasks::{PipelineRunner, TaskContext, TaskError, TaskOutput};
use crate::template::{Escape, RenderVars, RunVars, TaskVars};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// What an attempt ended with.
#[derive(Debug)]
pub struct AttemptOutcome {
    /// The attempt as claimed.
    pub attempt: AttemptRecord,
    /// Its result.
    pub result: Result<TaskOutput, TaskError>,
    /// Whether it hit its timeout.
    pub timed_out: bool,
    /// Kernel accounting of its process, if it ran one.
    pub stats: Option<ProcessStats>,
    /// Its log file.
    pub log_path: String,
    /// Wall time.
    pub elapsed: std::time::Duration,
}

/// `CAUCE_PARAM_<NAME>` for a param name.
pub fn param_env_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("CAUCE_PARAM_{cleaned}")
}

/// Runs one claimed attempt to its end.
pub async fn run_attempt(
    services: Arc<Services>,
    run: Arc<RunInfo>,
    task: Task,
    attempt: AttemptRecord,
    cancel: CancellationToken,
    runner: Arc<dyn PipelineRunner>,
    streams: Streams,
) -> AttemptOutcome {
    let started = Instant::now();
    // Whatever happens below, the tasks streaming from or into this one are told it ended.
    let streams = EndOnDrop(streams);
    let log_path = services
        .project
        .attempt_log(&run.id, &task.id, attempt.number);
    let log = match LogFile::create(&log_path, services.project.secrets.clone()) {
        Ok(l) => l,
        Err(e) => {
            return AttemptOutcome {
                attempt,
                result: Err(TaskError::Failed(format!(
                    "cannot create log file {}: {e}",
                    log_path.display()
                ))),
                timed_out: false,
                stats: None,
                log_path: log_path.display().to_string(),
                elapsed: started.elapsed(),
            }
        }
    };
    // `ds` is the logical date in the pipeline's time zone (UTC when it has none).
    let local_date = match run
        .pipeline
        .timezone
        .as_deref()
        .and_then(|tz| tz.parse::<chrono_tz::Tz>().ok())
    {
        Some(tz) => run.logical_date.with_timezone(&tz).date_naive(),
        None => run.logical_date.date_naive(),
    };
    let vars = RenderVars {
        params: run.params.clone(),
        run: RunVars {
            id: run.id.clone(),
            pipeline: run.pipeline.name.clone(),
            logical_date: run.logical_date.to_rfc3339(),
        },
        ds: local_date.format("%Y-%m-%d").to_string(),
        ds_nodash: local_date.format("%Y%m%d").to_string(),
        yyyy: local_date.format("%Y").to_string(),
        mm: local_date.format("%m").to_string(),
        dd: local_date.format("%d").to_string(),
        task: TaskVars {
            id: task.id.clone(),
            attempt: attempt.number,
        },
        watermark: serde_json::Value::Null,
    };
    let mut vars = vars;
    if let Some(initial) = task.action.watermark_initial() {
        match services.store.watermark(&run.pipeline.name, &task.id).await {
            Ok(Some(v)) => vars.watermark = v,
            Ok(None) => vars.watermark = initial,
            Err(e) => {
                return AttemptOutcome {
                    attempt,
                    result: Err(TaskError::Failed(format!(
                        "cannot read the incremental cursor from the store: {e}"
                    ))),
                    timed_out: false,
                    stats: None,
                    log_path: log_path.display().to_string(),
                    elapsed: started.elapsed(),
                }
            }
        }
    }
    let data_dir = services.project.data_dir().join(&run.id);
    if let Err(e) = std::fs::create_dir_all(&data_dir) {
        log.note(&format!(
            "cannot create the run's data folder {}: {e}",
            data_dir.display()
        ));
    }
    // The project's `.env` first (where the real environment does not set the name), then
    // cauce's variables, params, and the pipeline's and task's `env`, later ones winning.
    let mut env: Vec<(String, String)> = services
        .project
        .dotenv
        .iter()
        .filter(|(k, _)| std::env::var_os(k).is_none())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend([
        ("CAUCE_RUN_ID".to_string(), run.id.clone()),
        ("CAUCE_PIPELINE".to_string(), run.pipeline.name.clone()),
        ("CAUCE_TASK_ID".to_string(), task.id.clone()),
        ("CAUCE_ATTEMPT".to_string(), attempt.number.to_string()),
        (
            "CAUCE_LOGICAL_DATE".to_string(),
            vars.run.logical_date.clone(),
        ),
        ("CAUCE_DS".to_string(), vars.ds.clone()),
        ("CAUCE_DATA_DIR".to_string(), data_dir.display().to_string()),
    ]);
    for (k, v) in &run.params {
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        env.push((param_env_name(k), text));
    }
    let mut ctx = TaskContext {
        run_id: run.id.clone(),
        pipeline: run.pipeline.name.clone(),
        task_id: task.id.clone(),
        attempt: attempt.number,
        cancel: cancel.clone(),
        log: Arc::clone(&log),
        vars,
        templates: Arc::clone(&services.templates),
        env: Vec::new(),
        work_dir: run.pipeline.base_dir.clone(),
        data_dir,
        upstream: task.depends_on.clone(),
        data: streams.0.settings(&services.data),
        python: services.project.settings.python.clone(),
        python_path: services.project.settings.python_path.clone(),
        kill_grace: services.project.settings.kill_grace,
        process_stats: Mutex::new(None),
        runner: Some(runner),
        streams: streams.0.clone(),
    };
    // Pipeline env, then task env; both templated (values may use params and ${VAR}).
    let mut env_error = None;
    for (k, v) in run.pipeline.env.iter().chain(task.env.iter()) {
        match ctx.render(v, Escape::Plain) {
            Ok(val) => env.push((k.clone(), val)),
            Err(e) => {
                env_error = Some(TaskError::Invalid(format!("env `{k}`: {e}")));
                break;
            }
        }
    }
    ctx.env = env;
    log.note(&format!(
        "task `{}` attempt {} started ({})",
        task.id,
        attempt.number,
        task.action.describe()
    ));
    // With an object store for shared data: the upstream datasets this machine lacks are
    // fetched first, and the log is uploaded every few seconds while the attempt runs.
    let shared = services.shared.clone();
    let mut setup_error = env_error;
    if let (Some(sh), None) = (&shared, &setup_error) {
        match sh.pull_datasets(&ctx.data_dir, &task.depends_on).await {
            Ok(fetched) => {
                for (up, n) in fetched {
                    log.note(&format!(
                        "fetched the dataset of `{up}` from shared storage ({n} files)"
                    ));
                }
            }
            Err(e) => {
                setup_error = Some(TaskError::Failed(format!(
                    "cannot fetch the upstream datasets from shared storage: {e}"
                )))
            }
        }
    }
    let mirror = shared
        .clone()
        .map(|sh| LogMirror::start(sh, log_path.clone()));
    let mut timed_out = false;
    let mut result = if let Some(e) = setup_error {
        Err(e)
    } else {
        let fut = task.action.run(&ctx);
        tokio::pin!(fut);
        match task.timeout {
            None => fut.await,
            Some(limit) => {
                tokio::select! {
                    r = &mut fut => r,
                    _ = tokio::time::sleep(limit) => {
                        timed_out = true;
                        log.note(&format!("timed out after {}; stopping it", format_duration(limit)));
                        ctx.cancel.cancel();
                        let _ = (&mut fut).await;
                        Err(TaskError::Failed(format!("timed out after {}", format_duration(limit))))
                    }
                }
            }
        }
    };
    let stats = ctx.process_stats.lock().ok().and_then(|s| *s);
    if let (Some(sh), Ok(_)) = (&shared, &result) {
        // Downstream tasks on other machines read it from there.
        match sh.push_datasets(&ctx.data_dir, &task.id).await {
            Ok(0) => {}
            Ok(n) => log.note(&format!(
                "uploaded the dataset to shared storage ({n} files)"
            )),
            Err(e) => {
                result = Err(TaskError::Failed(format!(
                    "cannot upload the dataset to shared storage: {e}"
                )))
            }
        }
    }
    match &result {
        Ok(_) => log.note(&format!(
            "succeeded in {}",
            format_duration(started.elapsed())
        )),
        Err(e) => log.note(&format!("ended: {e}")),
    }
    // The dataset is in place (and uploaded): a consumer streaming from it may commit now.
    streams
        .0
        .end(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
    if let Some(m) = mirror {
        m.finish().await;
    }
    AttemptOutcome {
        attempt,
        result,
        timed_out,
        stats,
        log_path: log_path.display().to_string(),
        elapsed: started.elapsed(),
    }
}

/// How often a running attempt's log is uploaded to shared storage.
const LOG_MIRROR_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Uploads a running attempt's log to shared storage whenever it grew, so that a server on
/// another machine can show it while it runs; [`LogMirror::finish`] uploads the last of it.
struct LogMirror {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    shared: Arc<crate::shared::SharedStorage>,
    path: std::path::PathBuf,
}

impl LogMirror {
    fn start(shared: Arc<crate::shared::SharedStorage>, path: std::path::PathBuf) -> LogMirror {
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (stop, shared, path) = (stop.clone(), Arc::clone(&shared), path.clone());
            async move {
                let mut sent = 0;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(LOG_MIRROR_EVERY) => {}
                    }
                    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    if size != sent {
                        match shared.push_file(&path).await {
                            Ok(()) => sent = size,
                            Err(e) => tracing::warn!("uploading a running log: {e}"),
                        }
                    }
                }
            }
        });
        LogMirror {
            stop,
            task,
            shared,
            path,
        }
    }

    async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
        if let Err(e) = self.shared.push_file(&self.path).await {
            tracing::warn!("uploading the log {}: {e}", self.path.display());
        }
    }
}
