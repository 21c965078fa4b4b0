//! The engine: executes runs of pipelines through the store's queue.
//!
//! This module creates runs, loads stored runs (a retry re-reads the pipeline text kept with
//! the run), prepares a crashed or failed run for `cauce retry` (attempts of a dead process
//! are marked lost, tasks that did not succeed go back to pending), and runs child pipelines.
//! `coordinator` drives one run (triggers, slots, retries, critical failures, cancellation),
//! `attempt` runs one attempt of one task, `report` builds the run's JSON report.

pub mod attempt;
mod coordinator;
pub mod report;
pub mod worker;

use crate::alerts::{Alert, AlertEvent, Alerter};
use crate::dag;
use crate::project::Project;
use crate::spec::{Pipeline, SpecErrors};
use crate::state::{RunState, TaskState};
use crate::store::{now_ms, NewRun, Next, Store, StoreError};
use crate::tasks::{PipelineRunner, TaskContext, TaskError};
use crate::template::Templates;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use indexmap::{IndexMap, IndexSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a running engine looks for a cancel request made by another process.
const CANCEL_POLL: Duration = Duration::from_millis(500);

/// How deeply `pipeline` tasks may nest (a guard against a pipeline that runs itself).
pub const MAX_PIPELINE_DEPTH: u32 = 8;

/// Errors that stop the engine itself (not task failures, which are recorded).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored pipeline definition no longer parses.
    #[error("the run's pipeline definition is invalid:\n{0}")]
    Spec(#[from] SpecErrors),
    /// The run cannot be executed as asked.
    #[error("{0}")]
    Refused(String),
    /// Shared storage (an `s3://` `shared_dir`) failed.
    #[error(transparent)]
    Shared(#[from] crate::shared::SharedError),
    /// Another process took the run over while this one could not reach the store; the
    /// run goes on there.
    #[error("another process ({owner}) took this run over while this one could not reach the store for longer than a lease; the run goes on there")]
    TakenOver {
        /// The new owner.
        owner: String,
    },
}

/// What every run of this process shares.
#[derive(Debug)]
pub struct Services {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The project.
    pub project: Arc<Project>,
    /// The template engine.
    pub templates: Arc<Templates>,
    /// This process's identity as a lease holder: `host:pid:nonce`.
    pub owner: String,
    /// Sends alerts on failures, retries and successes.
    pub alerts: Arc<Alerter>,
    /// The data plane's settings, shared by every attempt.
    pub data: Arc<crate::data::DataSettings>,
    /// The object store `.cauce/` is mirrored through (`shared_dir: s3://...`).
    pub shared: Option<Arc<crate::shared::SharedStorage>>,
}

impl Services {
    /// Services for a project and an open store; opens the project's shared storage.
    pub fn new(
        project: Project,
        store: Arc<dyn Store>,
    ) -> Result<Arc<Services>, crate::shared::SharedError> {
        let shared = match &project.settings.shared_url {
            Some(url) => {
                // Secrets in the options come from the environment or `.env`.
                let env = Templates::new(project.secrets.clone(), Arc::clone(&project.dotenv));
                let mut options = Vec::new();
                for (k, v) in &project.settings.shared_options {
                    let value =
                        env.expand_env(v)
                            .map_err(|e| crate::shared::SharedError::BadUrl {
                                url: url.clone(),
                                why: format!("shared_options.{k}: {e}"),
                            })?;
                    options.push((k.clone(), value));
                }
                Some(Arc::new(crate::shared::SharedStorage::open(
                    url,
                    &project.state_dir(),
                    &options,
                )?))
            }
            None => None,
        };
        let templates = Arc::new(Templates::new(
            project.secrets.clone(),
            Arc::clone(&project.dotenv),
        ));
        let alerts = Arc::new(Alerter::new(
            &project.settings.alerts,
            project.settings.server.base_url.clone(),
            &templates,
            project.secrets.clone(),
            &project.root,
        ));
        Ok(Arc::new(Services {
            store,
            data: Arc::new(project.settings.data.clone()),
            project: Arc::new(project),
            templates,
            owner: owner_id(),
            alerts,
            shared,
        }))
    }
}

impl Services {
    /// The local path of an attempt's log. With an object store for shared data, a log
    /// written on another machine is downloaded first (again on each call, so a running
    /// attempt's log grows); a log written on this machine is read where it is.
    pub async fn attempt_log_local(&self, a: &crate::store::AttemptRecord) -> std::path::PathBuf {
        let path = self.project.attempt_log(&a.run_id, &a.task_id, a.number);
        let elsewhere = a
            .owner
            .as_deref()
            .and_then(|o| o.split(':').next())
            .is_some_and(|host| host != hostname());
        if let (Some(sh), true) = (&self.shared, elsewhere) {
            if let Err(e) = sh.pull_file(&path).await {
                tracing::warn!("fetching the log {}: {e}", path.display());
            }
        }
        path
    }
}

/// This process's lease-holder id.
pub fn owner_id() -> String {
    let host = hostname();
    format!(
        "{host}:{}:{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// This machine's name in owner ids: `CAUCE_HOST`, else the kernel's hostname.
pub(crate) fn hostname() -> String {
    // Containers often share a hostname: `CAUCE_HOST` names the machine instead.
    if let Some(h) = std::env::var("CAUCE_HOST")
        .ok()
        .filter(|h| !h.is_empty() && !h.contains(':'))
    {
        return h;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into())
}

/// Whether the process named by an owner id is known to be gone (same machine, pid dead).
/// Owners on other machines are judged by their lease only.
pub fn owner_is_dead(owner: &str) -> bool {
    let mut parts = owner.split(':');
    let (Some(host), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    host == hostname()
        && pid
            .parse::<i32>()
            .is_ok_and(|p| p != std::process::id() as i32 && !crate::process::pid_alive(p))
}

/// Whether nobody executes a run any more: its owner is a dead process on this machine, or
/// it has not heartbeated for longer than a lease. (`cauce retry` and `cauce cancel` both
/// use this rule.)
pub fn run_is_orphaned(run: &crate::store::RunRecord, lease: Duration, now: i64) -> bool {
    let dead = run.owner.as_deref().is_none_or(owner_is_dead);
    let stale = run
        .heartbeat_at
        .is_none_or(|h| now - h > lease.as_millis() as i64);
    dead || stale
}

/// A new run id: creation time to the millisecond plus 4 hex digits, so ids sort by time.
/// The digits start at a random value in each millisecond (processes sharing a store rarely
/// meet) and count up within it, so the ids one process makes never repeat, even when a
/// scheduler pass creates hundreds of runs in the same millisecond, and keep their order.
pub fn new_run_id() -> String {
    static LAST: std::sync::Mutex<(i64, u32)> = std::sync::Mutex::new((0, 0));
    let mut now = Utc::now();
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    let ms = now.timestamp_millis();
    let suffix = if ms <= last.0 && last.1 < 0xffff {
        // Same millisecond (or the clock stepped back): count up from the last id.
        now = DateTime::from_timestamp_millis(last.0).unwrap_or(now);
        last.1 + 1
    } else if ms <= last.0 {
        // 65,536 ids in one millisecond: borrow the next one.
        now = DateTime::from_timestamp_millis(last.0 + 1).unwrap_or(now);
        0
    } else {
        u32::from(rand::random::<u16>() & 0x7fff)
    };
    *last = (now.timestamp_millis(), suffix);
    format!("{}-{:04x}", now.format("%Y%m%dT%H%M%S%3f"), suffix)
}

#[cfg(test)]
mod tests {
    #[test]
    fn run_ids_made_at_once_are_unique_and_ordered() {
        let ids: Vec<String> = (0..5000).map(|_| super::new_run_id()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ids, "unique and already in creation order");
    }
}

/// What the engine tells the user interface as a run progresses.
#[derive(Debug, Clone)]
pub enum Event {
    /// An attempt started.
    Started {
        /// Task id.
        task: String,
        /// Attempt number.
        attempt: u32,
    },
    /// A task reached a final state.
    Finished {
        /// Task id.
        task: String,
        /// Its state.
        state: TaskState,
        /// Wall time of its last attempt.
        elapsed: Option<Duration>,
        /// Error, if any.
        error: Option<String>,
    },
    /// An attempt failed and another one will follow.
    Retrying {
        /// Task id.
        task: String,
        /// The failed attempt's number.
        attempt: u32,
        /// Delay before the next one.
        delay: Duration,
        /// The failure.
        error: String,
    },
}

/// Receives events; the CLI draws progress with them.
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Parallel task slots.
    pub max_workers: usize,
    /// Treat every task as non-critical.
    pub continue_on_failure: bool,
    /// Checked params.
    pub params: IndexMap<String, serde_json::Value>,
    /// The logical date.
    pub logical_date: DateTime<Utc>,
    /// Selected tasks.
    pub selection: IndexSet<String>,
    /// `manual`, `child`, ...
    pub trigger: String,
    /// Parent run and task, for child runs.
    pub parent: Option<(String, String)>,
    /// Nesting depth of child pipelines.
    pub depth: u32,
}

/// A run being executed: the pipeline and the run's fixed inputs.
#[derive(Debug)]
pub struct RunInfo {
    /// Run id.
    pub id: String,
    /// The pipeline.
    pub pipeline: Arc<Pipeline>,
    /// Params.
    pub params: IndexMap<String, serde_json::Value>,
    /// Logical date.
    pub logical_date: DateTime<Utc>,
    /// Options.
    pub max_workers: usize,
    /// Options.
    pub continue_on_failure: bool,
    /// Nesting depth.
    pub depth: u32,
}

/// What [`Engine::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The run had already ended in this state.
    AlreadyEnded(RunState),
    /// Nobody executed it any more; it is now cancelled.
    Closed,
    /// Its executor was asked to stop it.
    Requested,
}

/// Executes runs.
#[derive(Debug, Clone)]
pub struct Engine {
    services: Arc<Services>,
}

impl Engine {
    /// An engine over these services.
    pub fn new(services: Arc<Services>) -> Engine {
        Engine { services }
    }

    /// The services.
    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// Creates a run in the store (all selected tasks `pending`) and returns its id.
    pub async fn create_run(
        &self,
        pipeline: &Pipeline,
        opts: &RunOptions,
    ) -> Result<String, EngineError> {
        let run = self.new_run(pipeline, opts);
        self.services.store.create_run(&run, now_ms()).await?;
        Ok(run.id)
    }

    /// The record of a new run (all selected tasks `pending`), not yet stored.
    pub fn new_run(&self, pipeline: &Pipeline, opts: &RunOptions) -> NewRun {
        let id = new_run_id();
        NewRun {
            id: id.clone(),
            pipeline: pipeline.name.clone(),
            pipeline_file: pipeline.file.display().to_string(),
            base_dir: pipeline.base_dir.display().to_string(),
            source: pipeline.source.clone(),
            params: serde_json::to_value(&opts.params).unwrap_or_default(),
            tasks: opts
                .selection
                .iter()
                .map(|t| crate::store::NewTask {
                    id: t.clone(),
                    critical: pipeline.tasks[t].critical && !opts.continue_on_failure,
                    queue: pipeline.tasks[t].queue.clone(),
                })
                .collect(),
            options: serde_json::json!({
                "max_workers": opts.max_workers,
                "continue_on_failure": opts.continue_on_failure,
                "depth": opts.depth,
            }),
            // Whole seconds: a manual run's "now" needs no nanoseconds.
            logical_date: opts
                .logical_date
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
            trigger: opts.trigger.clone(),
            parent: opts.parent.clone(),
            owner: self.services.owner.clone(),
        }
    }

    /// Loads what is needed to execute a stored run (its own copy of the pipeline text).
    pub async fn load_run(&self, run_id: &str) -> Result<RunInfo, EngineError> {
        let rec = self
            .services
            .store
            .get_run(run_id)
            .await?
            .ok_or_else(|| StoreError::NoSuchRun(run_id.to_string()))?;
        let pipeline = self
            .services
            .project
            .parse_pipeline_text(std::path::Path::new(&rec.pipeline_file), &rec.source)?;
        let params = match rec.params {
            serde_json::Value::Object(m) => m.into_iter().collect(),
            _ => IndexMap::new(),
        };
        let logical_date = DateTime::parse_from_rfc3339(&rec.logical_date)
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_else(|_| Utc::now());
        let opt = |k: &str| rec.options.get(k).cloned();
        Ok(RunInfo {
            id: rec.id,
            pipeline: Arc::new(pipeline),
            params,
            logical_date,
            max_workers: opt("max_workers")
                .and_then(|v| v.as_u64())
                .unwrap_or(2)
                .max(1) as usize,
            continue_on_failure: opt("continue_on_failure")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            depth: opt("depth").and_then(|v| v.as_u64()).unwrap_or(0) as u32,
        })
    }

    /// Prepares a run that did not finish (or failed) to be executed again: attempts of a
    /// dead executor are marked lost, and every task that did not succeed goes back to
    /// `pending` with a fresh retry budget. Refuses while a live process still runs it.
    pub async fn prepare_retry(&self, run_id: &str) -> Result<Vec<String>, EngineError> {
        self.prepare_retry_of(run_id, None).await
    }

    /// Like [`Engine::prepare_retry`], but runs again one task (whatever its state) and
    /// every selected task downstream of it; the rest of the run is kept as it is.
    pub async fn prepare_retry_task(
        &self,
        run_id: &str,
        task: &str,
    ) -> Result<Vec<String>, EngineError> {
        self.prepare_retry_of(run_id, Some(task)).await
    }

    async fn prepare_retry_of(
        &self,
        run_id: &str,
        only: Option<&str>,
    ) -> Result<Vec<String>, EngineError> {
        let store = &self.services.store;
        let rec = store
            .get_run(run_id)
            .await?
            .ok_or_else(|| StoreError::NoSuchRun(run_id.to_string()))?;
        let now = now_ms();
        if rec.state == RunState::Running
            && !run_is_orphaned(&rec, self.services.project.settings.lease, now)
        {
            return Err(EngineError::Refused(format!(
                "run {run_id} is still being executed by {}; wait for it or `cauce cancel {run_id}`",
                rec.owner.as_deref().unwrap_or("another process")
            )));
        }
        let dead: Vec<String> = rec.owner.iter().cloned().collect();
        let lost = store.expire_leases(Some(run_id), &dead, now).await?;
        self.stop_orphans(&lost).await;
        for a in &lost {
            // The lost attempt counts; the task is then reset below with the others.
            store
                .resolve_lost(
                    run_id,
                    &a.task_id,
                    a.error.as_deref().unwrap_or("lost"),
                    Next::Final(TaskState::Failed),
                    now,
                )
                .await?;
        }
        let tasks = store.task_runs(run_id).await?;
        let to_reset: Vec<String> = match only {
            None => {
                // A succeeded data task whose dataset is gone (removed by `data.retention`)
                // runs again, so what reads it downstream finds it.
                let info = self.load_run(run_id).await?;
                let data_dir = self.services.project.data_dir().join(run_id);
                // On workers, attempts queued or running outlive the coordinator that died:
                // their tasks are left as they are for the new coordinator to follow (a
                // lost one is re-queued when its lease runs out), never started twice.
                let remote =
                    self.services.project.settings.executor == crate::project::Executor::Workers;
                // Datasets this machine does not have but the shared bucket does are not gone.
                let in_bucket = match &self.services.shared {
                    Some(sh) => sh.tasks_with_datasets(&data_dir).await?,
                    None => Default::default(),
                };
                tasks
                    .into_iter()
                    .filter(|t| {
                        !(remote
                            && matches!(
                                t.state,
                                TaskState::Queued | TaskState::Running | TaskState::Retrying
                            ))
                    })
                    .filter(|t| {
                        t.state != TaskState::Success
                            || info.pipeline.tasks.get(&t.task_id).is_some_and(|task| {
                                task.action.produces_dataset()
                                    && !crate::data::dataset::exists(&data_dir, &t.task_id)
                                    && !in_bucket.contains(&t.task_id)
                            })
                    })
                    .map(|t| t.task_id)
                    .collect()
            }
            Some(task) => {
                if !tasks.iter().any(|t| t.task_id == task) {
                    return Err(EngineError::Refused(format!(
                        "run {run_id} has no task `{task}`"
                    )));
                }
                let info = self.load_run(run_id).await?;
                let deps = dag::dependencies(&info.pipeline);
                let mut chosen: IndexSet<String> = IndexSet::new();
                chosen.insert(task.to_string());
                // Everything downstream, transitively, within the run's tasks.
                loop {
                    let before = chosen.len();
                    for (id, ups) in &deps {
                        if ups.iter().any(|u| chosen.contains(u)) {
                            chosen.insert(id.clone());
                        }
                    }
                    if chosen.len() == before {
                        break;
                    }
                }
                tasks
                    .into_iter()
                    .filter(|t| chosen.contains(&t.task_id))
                    .map(|t| t.task_id)
                    .collect()
            }
        };
        self.close_orphaned_children(run_id, now).await?;
        store.reset_tasks(run_id, &to_reset).await?;
        store.take_run(run_id, &self.services.owner, now).await?;
        Ok(to_reset)
    }

    /// Child runs (of `pipeline` tasks) that died with their parent stay `running` in the
    /// store; a retry of the parent starts new ones, so the old ones are closed as cancelled
    /// (and their leftover processes stopped).
    async fn close_orphaned_children(&self, run_id: &str, now: i64) -> Result<(), EngineError> {
        let store = &self.services.store;
        let lease = self.services.project.settings.lease;
        let running = store
            .list_runs(None, Some(RunState::Running), 10_000)
            .await?;
        let mut parents = vec![run_id.to_string()];
        while let Some(parent) = parents.pop() {
            for child in running
                .iter()
                .filter(|r| r.parent_run_id.as_deref() == Some(parent.as_str()))
            {
                if !run_is_orphaned(child, lease, now) {
                    continue;
                }
                self.close_dead_run(
                    child,
                    "parent run was retried",
                    "its parent run stopped; the retry of the parent starts a new one",
                )
                .await?;
                parents.push(child.id.clone());
            }
        }
        Ok(())
    }

    /// Closes a run nobody executes any more (its process died): its running attempts are
    /// marked lost and their leftover processes stopped, its unfinished tasks and the run
    /// itself become `cancelled` with these reasons.
    pub async fn close_dead_run(
        &self,
        run: &crate::store::RunRecord,
        task_reason: &str,
        run_reason: &str,
    ) -> Result<(), EngineError> {
        let store = &self.services.store;
        let now = now_ms();
        let owners: Vec<String> = run.owner.iter().cloned().collect();
        let lost = store.expire_leases(Some(&run.id), &owners, now).await?;
        self.stop_orphans(&lost).await;
        let updates: Vec<_> = store
            .task_runs(&run.id)
            .await?
            .into_iter()
            .filter(|t| !t.state.is_final())
            .map(|t| {
                (
                    t.task_id,
                    TaskState::Cancelled,
                    Some(task_reason.to_string()),
                )
            })
            .collect();
        store.finalize_tasks(&run.id, false, &updates, now).await?;
        store
            .finish_run(&run.id, RunState::Cancelled, Some(run_reason), &[], now)
            .await?;
        Ok(())
    }

    /// Cancels a run: asks its executor to stop it (seen through the store within a
    /// second), or, when no live process executes it any more, closes it here.
    pub async fn cancel(&self, run_id: &str) -> Result<CancelOutcome, EngineError> {
        let store = &self.services.store;
        let Some(run) = store.get_run(run_id).await? else {
            return Err(StoreError::NoSuchRun(run_id.to_string()).into());
        };
        if run.state.is_final() {
            return Ok(CancelOutcome::AlreadyEnded(run.state));
        }
        if run_is_orphaned(&run, self.services.project.settings.lease, now_ms()) {
            self.close_dead_run(&run, "run cancelled", "cancelled (its process was gone)")
                .await?;
            return Ok(CancelOutcome::Closed);
        }
        store.request_cancel(run_id).await?;
        Ok(CancelOutcome::Requested)
    }

    /// Stops the processes that lost attempts left running (cauce was killed while they
    /// ran), so that a retry never runs a task twice at the same time.
    pub async fn stop_orphans(&self, lost: &[crate::store::AttemptRecord]) {
        let project = &self.services.project;
        for a in lost {
            let log = project.attempt_log(&a.run_id, &a.task_id, a.number);
            let Some(identity) = crate::process::ProcessIdentity::from_log(&log) else {
                continue;
            };
            let n =
                crate::process::stop_orphaned_group(&identity, project.settings.kill_grace).await;
            if n > 0 {
                let note = format!("[cauce] stopped {n} process(es) this attempt left running when cauce stopped\n");
                if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&log) {
                    use std::io::Write;
                    let _ = f.write_all(note.as_bytes());
                }
                tracing::warn!(run = %a.run_id, task = %a.task_id, attempt = a.number, processes = n, "stopped processes left by a lost attempt");
            }
        }
    }

    /// Executes a stored run until every selected task is final; returns the run's state.
    /// `cancel` stops it (Ctrl-C); `cauce cancel` from another process is seen through the
    /// store.
    pub async fn execute(
        &self,
        run: Arc<RunInfo>,
        events: EventSink,
        cancel: CancellationToken,
    ) -> Result<RunState, EngineError> {
        self.services
            .store
            .take_run(&run.id, &self.services.owner, now_ms())
            .await?;
        if let Some(keep) = self.services.data.retention {
            let root = self.services.project.data_dir();
            let current = run.id.clone();
            let removed = tokio::task::spawn_blocking(move || {
                crate::data::dataset::prune(&root, keep, &current)
            })
            .await
            .unwrap_or(0);
            if removed > 0 {
                tracing::info!(
                    removed,
                    "removed the datasets of runs older than data.retention"
                );
            }
        }
        // Every event is also a structured log line (`CAUCE_LOG=info`, `--log-format json`),
        // and failures and retries are alerts.
        let run_id = run.id.clone();
        let alerts = Arc::clone(&self.services.alerts);
        let alert_run = Arc::clone(&run);
        let events: EventSink = Arc::new(move |e: Event| {
            task_alert(&alerts, &alert_run, &e);
            log_event(&run_id, &e);
            events(e);
        });
        let runner: Arc<dyn PipelineRunner> = Arc::new(ChildRunner {
            engine: self.clone(),
            depth: run.depth,
        });
        let state =
            coordinator::Coordinator::new(self.clone(), Arc::clone(&run), events, cancel, runner)
                .await?
                .run()
                .await?;
        if state == RunState::Success {
            self.services.alerts.send(
                &run.pipeline.alerts.channels("success"),
                Alert::new(
                    AlertEvent::Success,
                    &run.pipeline.name,
                    &run.id,
                    run.logical_date.to_rfc3339(),
                    state.as_str(),
                ),
            );
        }
        Ok(state)
    }
}

/// Sends the alert a task event calls for: `retry` when an attempt failed and another
/// follows, `failure` when a task failed for good (to the task's channels, else the
/// pipeline's).
fn task_alert(alerts: &Alerter, run: &RunInfo, e: &Event) {
    let (event, task, attempt, error, state) = match e {
        Event::Retrying {
            task,
            attempt,
            error,
            ..
        } => (
            AlertEvent::Retry,
            task,
            Some(*attempt),
            Some(error.clone()),
            "retrying",
        ),
        Event::Finished {
            task,
            state: TaskState::Failed,
            error,
            ..
        } => (AlertEvent::Failure, task, None, error.clone(), "failed"),
        _ => return,
    };
    let routes = run
        .pipeline
        .tasks
        .get(task)
        .and_then(|t| t.alerts.as_ref())
        .unwrap_or(&run.pipeline.alerts);
    alerts.send(
        &routes.channels(event.as_str()),
        Alert {
            task: Some(task.clone()),
            attempt,
            error,
            ..Alert::new(
                event,
                &run.pipeline.name,
                &run.id,
                run.logical_date.to_rfc3339(),
                state,
            )
        },
    );
}

/// An event as a structured log line (`CAUCE_LOG=info`, `--log-format json`).
pub(crate) fn log_event(run_id: &str, e: &Event) {
    match e {
        Event::Started { task, attempt } => {
            tracing::info!(run = %run_id, task = %task, attempt, "task started")
        }
        Event::Retrying {
            task,
            attempt,
            delay,
            error,
        } => {
            tracing::info!(run = %run_id, task = %task, attempt, delay_ms = delay.as_millis() as u64, error = %error, "task attempt failed; retrying")
        }
        Event::Finished {
            task, state, error, ..
        } => {
            tracing::info!(run = %run_id, task = %task, state = %state, error = error.as_deref().unwrap_or(""), "task finished")
        }
    }
}

/// Runs `pipeline` tasks: a child run in the same store, executed in this process.
#[derive(Debug)]
struct ChildRunner {
    engine: Engine,
    depth: u32,
}

#[async_trait]
impl PipelineRunner for ChildRunner {
    async fn run_child(
        &self,
        name: &str,
        params: Vec<(String, String)>,
        parent: &TaskContext,
    ) -> Result<(String, RunState), TaskError> {
        if self.depth + 1 > MAX_PIPELINE_DEPTH {
            return Err(TaskError::Invalid(format!(
                "pipelines nest deeper than {MAX_PIPELINE_DEPTH} levels; does `{name}` run itself?"
            )));
        }
        let project = &self.engine.services.project;
        let file = project.resolve(name).map_err(TaskError::Invalid)?;
        let pipeline = project
            .load_pipeline(&file)
            .map_err(|e| TaskError::Invalid(format!("pipeline `{name}` is invalid:\n{e}")))?;
        let params =
            crate::project::resolve_params(&pipeline, &params).map_err(TaskError::Invalid)?;
        let selection =
            dag::select(&pipeline, &dag::Selection::default()).map_err(TaskError::Invalid)?;
        let logical_date = DateTime::parse_from_rfc3339(&parent.vars.run.logical_date)
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_else(|_| Utc::now());
        let opts = RunOptions {
            max_workers: pipeline.max_workers.unwrap_or(project.settings.max_workers),
            continue_on_failure: false,
            params,
            logical_date,
            selection,
            trigger: "child".into(),
            parent: Some((parent.run_id.clone(), parent.task_id.clone())),
            depth: self.depth + 1,
        };
        let id = self
            .engine
            .create_run(&pipeline, &opts)
            .await
            .map_err(|e| TaskError::Failed(e.to_string()))?;
        parent.log.note(&format!("child run {id}"));
        let info = Arc::new(RunInfo {
            id: id.clone(),
            pipeline: Arc::new(pipeline),
            params: opts.params,
            logical_date,
            max_workers: opts.max_workers,
            continue_on_failure: false,
            depth: opts.depth,
        });
        let log = Arc::clone(&parent.log);
        let sink: EventSink = Arc::new(move |e| match e {
            Event::Finished { task, state, .. } => {
                log.note(&format!("  child task `{task}` {state}"))
            }
            Event::Retrying {
                task,
                attempt,
                error,
                ..
            } => log.note(&format!(
                "  child task `{task}` attempt {attempt} failed: {error}"
            )),
            Event::Started { .. } => {}
        });
        let fut = Box::pin(self.engine.execute(info, sink, parent.cancel.clone()));
        let state = fut.await.map_err(|e| TaskError::Failed(e.to_string()))?;
        Ok((id, state))
    }
}
