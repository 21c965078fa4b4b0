//! The engine: executes one run of a pipeline through the store's queue.
//!
//! The coordinator decides which tasks are ready (trigger rules), enqueues their attempts in
//! the store, claims them into at most `max_workers` slots with a lease, runs them
//! (`attempt`), heartbeats the leases, and records each result together with what follows
//! (success, a retry after its backoff, or a final failure). It holds a cache of task states
//! that is only ever written after the store accepted the change, so a crash loses nothing:
//! `cauce retry` (`recover`) marks the attempts of a dead process as lost and resumes.

pub mod attempt;
pub mod report;

use crate::dag;
use crate::project::Project;
use crate::spec::{Pipeline, SpecErrors};
use crate::state::{AttemptState, Readiness, RunState, TaskState};
use crate::store::{now_ms, AttemptResult, NewRun, Next, Store, StoreError};
use crate::tasks::{PipelineRunner, TaskContext, TaskError};
use crate::template::Templates;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use indexmap::{IndexMap, IndexSet};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
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
}

impl Services {
    /// Services for a project and an open store.
    pub fn new(project: Project, store: Arc<dyn Store>) -> Arc<Services> {
        let templates = Arc::new(Templates::new(project.secrets.clone()));
        Arc::new(Services {
            store,
            project: Arc::new(project),
            templates,
            owner: owner_id(),
        })
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

fn hostname() -> String {
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

/// A new run id: creation time to the millisecond plus randomness, so ids sort by time.
pub fn new_run_id() -> String {
    format!(
        "{}-{:04x}",
        Utc::now().format("%Y%m%dT%H%M%S%3f"),
        rand::random::<u16>()
    )
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
        let id = new_run_id();
        let run = NewRun {
            id: id.clone(),
            pipeline: pipeline.name.clone(),
            pipeline_file: pipeline.file.display().to_string(),
            base_dir: pipeline.base_dir.display().to_string(),
            source: pipeline.source.clone(),
            params: serde_json::to_value(&opts.params).unwrap_or_default(),
            tasks: opts
                .selection
                .iter()
                .map(|t| {
                    (
                        t.clone(),
                        pipeline.tasks[t].critical && !opts.continue_on_failure,
                    )
                })
                .collect(),
            options: serde_json::json!({
                "max_workers": opts.max_workers,
                "continue_on_failure": opts.continue_on_failure,
                "depth": opts.depth,
            }),
            logical_date: opts.logical_date.to_rfc3339(),
            trigger: opts.trigger.clone(),
            parent: opts.parent.clone(),
            owner: self.services.owner.clone(),
        };
        self.services.store.create_run(&run, now_ms()).await?;
        Ok(id)
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
        let to_reset: Vec<String> = store
            .task_runs(run_id)
            .await?
            .into_iter()
            .filter(|t| t.state != TaskState::Success)
            .map(|t| t.task_id)
            .collect();
        store.reset_tasks(run_id, &to_reset).await?;
        store.take_run(run_id, &self.services.owner, now).await?;
        Ok(to_reset)
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
        let svc = &self.services;
        let store = &svc.store;
        let lease = svc.project.settings.lease;
        let heartbeat_every = lease / 3;
        store.take_run(&run.id, &svc.owner, now_ms()).await?;

        let records = store.task_runs(&run.id).await?;
        let selected: HashSet<String> = records.iter().map(|r| r.task_id.clone()).collect();
        let mut states: HashMap<String, TaskState> = records
            .iter()
            .map(|r| (r.task_id.clone(), r.state))
            .collect();
        let budget_base: HashMap<String, u32> = records
            .iter()
            .map(|r| (r.task_id.clone(), r.budget_base))
            .collect();
        let critical: HashMap<String, bool> = records
            .iter()
            .map(|r| (r.task_id.clone(), r.critical))
            .collect();
        let order: Vec<String> = records.iter().map(|r| r.task_id.clone()).collect();
        let position: HashMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        // Downstream edges within the selection.
        let mut dependents: HashMap<&str, Vec<&str>> = HashMap::new();
        for id in &order {
            let Some(task) = run.pipeline.tasks.get(id) else {
                return Err(EngineError::Refused(format!(
                    "task `{id}` of run {} is not in its pipeline",
                    run.id
                )));
            };
            for d in &task.depends_on {
                if selected.contains(d) {
                    dependents.entry(d.as_str()).or_default().push(id.as_str());
                }
            }
        }
        // Every event is also a structured log line (`CAUCE_LOG=info`, `--log-format json`).
        let run_id_for_log = run.id.clone();
        let events: EventSink = Arc::new(move |e: Event| {
            match &e {
                Event::Started { task, attempt } => {
                    tracing::info!(run = %run_id_for_log, task = %task, attempt, "task started")
                }
                Event::Retrying {
                    task,
                    attempt,
                    delay,
                    error,
                } => {
                    tracing::info!(run = %run_id_for_log, task = %task, attempt, delay_ms = delay.as_millis() as u64, error = %error, "task attempt failed; retrying")
                }
                Event::Finished {
                    task, state, error, ..
                } => {
                    tracing::info!(run = %run_id_for_log, task = %task, state = %state, error = error.as_deref().unwrap_or(""), "task finished")
                }
            }
            events(e);
        });
        let runner: Arc<dyn PipelineRunner> = Arc::new(ChildRunner {
            engine: self.clone(),
            depth: run.depth,
        });

        let mut dirty: IndexSet<String> = order
            .iter()
            .filter(|t| states[*t] == TaskState::Pending)
            .cloned()
            .collect();
        let mut inflight: JoinSet<attempt::AttemptOutcome> = JoinSet::new();
        let mut stopping: Option<String> = None;
        // Tasks skipped because something upstream failed (as opposed to a handler whose
        // `one_failed` trigger simply did not fire): they make the run partial.
        let mut skipped_by_failure: HashSet<String> = HashSet::new();
        let mut cancelled = false;
        let mut next_heartbeat = tokio::time::Instant::now() + heartbeat_every;
        let mut next_cancel_poll = tokio::time::Instant::now() + CANCEL_POLL;
        // When each retrying task's next attempt may be claimed.
        let mut retry_at: HashMap<String, i64> = HashMap::new();
        // How many attempts of this run are in the queue and claimable now. This engine is
        // the only claimer of its run, so it knows without asking the store.
        let mut claimable: usize = order
            .iter()
            .filter(|t| states[*t] == TaskState::Queued)
            .count();

        loop {
            // 1. Decide what became ready or can no longer run. After a critical failure
            // only handlers (`one_failed`, `all_done`) are still pending and may start.
            if !cancelled {
                let mut ready = Vec::new();
                let mut skips = Vec::new();
                while let Some(id) = dirty.pop() {
                    if states[&id] != TaskState::Pending {
                        continue;
                    }
                    let task = &run.pipeline.tasks[&id];
                    let ups = task
                        .depends_on
                        .iter()
                        .filter(|d| selected.contains(*d))
                        .map(|d| states[d]);
                    match task.trigger.evaluate(ups) {
                        Readiness::Wait => {}
                        Readiness::Ready => ready.push(id.clone()),
                        Readiness::Skip => {
                            let failed: Vec<&str> = task
                                .depends_on
                                .iter()
                                .filter(|d| {
                                    matches!(
                                        states.get(*d),
                                        Some(
                                            TaskState::Failed
                                                | TaskState::Skipped
                                                | TaskState::Cancelled
                                        )
                                    )
                                })
                                .map(|d| d.as_str())
                                .collect();
                            let why = if failed.is_empty() {
                                format!("trigger `{}` not met", task.trigger.as_str())
                            } else {
                                format!("upstream did not succeed: {}", failed.join(", "))
                            };
                            let caused_by_failure = task.depends_on.iter().any(|d| {
                                matches!(
                                    states.get(d),
                                    Some(TaskState::Failed | TaskState::Cancelled)
                                ) || skipped_by_failure.contains(d)
                            });
                            if caused_by_failure {
                                skipped_by_failure.insert(id.clone());
                            }
                            skips.push((id.clone(), TaskState::Skipped, Some(why)));
                            states.insert(id.clone(), TaskState::Skipped);
                            for d in dependents.get(id.as_str()).into_iter().flatten() {
                                dirty.insert(d.to_string());
                            }
                        }
                    }
                }
                if !skips.is_empty() {
                    store.finalize_tasks(&run.id, &skips, now_ms()).await?;
                    for (id, state, err) in skips {
                        events(Event::Finished {
                            task: id,
                            state,
                            elapsed: None,
                            error: err,
                        });
                    }
                }
                if !ready.is_empty() {
                    // Keep file order so that equal tasks start in the order written.
                    ready.sort_by_key(|id| position.get(id.as_str()).copied());
                    store.enqueue(&run.id, &ready, now_ms()).await?;
                    claimable += ready.len();
                    for id in ready {
                        states.insert(id, TaskState::Queued);
                    }
                }
            }

            // 2. Fill free slots from the queue.
            if !cancelled {
                let now = now_ms();
                retry_at.retain(|_, at| {
                    let due = *at <= now;
                    if due {
                        claimable += 1;
                    }
                    !due
                });
                let want = claimable.min(run.max_workers.saturating_sub(inflight.len()));
                if want > 0 {
                    let claimed = store
                        .claim_many(Some(&run.id), &svc.owner, lease, now, want)
                        .await?;
                    claimable = if claimed.len() < want {
                        0
                    } else {
                        claimable - want
                    };
                    for a in claimed {
                        let task = run.pipeline.tasks[&a.task_id].clone();
                        states.insert(a.task_id.clone(), TaskState::Running);
                        events(Event::Started {
                            task: a.task_id.clone(),
                            attempt: a.number,
                        });
                        let token = cancel.child_token();
                        inflight.spawn(attempt::run_attempt(
                            Arc::clone(svc),
                            Arc::clone(&run),
                            task,
                            a,
                            token,
                            Arc::clone(&runner),
                        ));
                    }
                }
            }

            // 3. Finished?
            if inflight.is_empty() {
                let waiting_retry = states.values().any(|s| *s == TaskState::Retrying);
                let queued = states.values().any(|s| *s == TaskState::Queued);
                if cancelled || (!waiting_retry && !queued && dirty.is_empty()) {
                    let leftover_state = if cancelled {
                        TaskState::Cancelled
                    } else {
                        TaskState::Skipped
                    };
                    let reason = if cancelled {
                        "run cancelled".to_string()
                    } else {
                        "not run: its trigger could not be met".to_string()
                    };
                    let mut leftovers = Vec::new();
                    for id in &order {
                        match states[id] {
                            s if s.is_final() => {}
                            TaskState::Retrying if !cancelled => {
                                leftovers.push((id.clone(), TaskState::Failed, None));
                            }
                            _ => leftovers.push((id.clone(), leftover_state, Some(reason.clone()))),
                        }
                    }
                    store.finalize_tasks(&run.id, &leftovers, now_ms()).await?;
                    for (id, state, err) in leftovers {
                        states.insert(id.clone(), state);
                        events(Event::Finished {
                            task: id,
                            state,
                            elapsed: None,
                            error: err,
                        });
                    }
                    break;
                }
            }

            // 4. Wait for something to happen.
            let wake = match retry_at.values().min() {
                Some(t) => Duration::from_millis((t - now_ms()).clamp(0, 500) as u64),
                None => Duration::from_millis(500),
            };
            tokio::select! {
                Some(joined) = inflight.join_next(), if !inflight.is_empty() => {
                    let outcome = match joined {
                        Ok(o) => o,
                        Err(e) => return Err(EngineError::Refused(format!("a task attempt panicked: {e}; this is a bug, please report it"))),
                    };
                    let id = outcome.attempt.task_id.clone();
                    let (next, event) = self.decide(&run, &outcome, budget_base[&id], stopping.is_some() || cancelled);
                    let result = attempt_result(&outcome, svc);
                    let accepted = store.complete(outcome.attempt.id, &svc.owner, &result, next, now_ms()).await?;
                    if !accepted {
                        tracing::warn!(task = %id, attempt = outcome.attempt.number, "result rejected: this process no longer holds the attempt's lease");
                        let fresh = store.task_runs(&run.id).await?;
                        if let Some(t) = fresh.iter().find(|t| t.task_id == id) {
                            states.insert(id.clone(), t.state);
                        }
                        // Let the next claim ask the store what is really queued.
                        claimable = claimable.max(1);
                        continue;
                    }
                    match next {
                        Next::Final(state) => {
                            states.insert(id.clone(), state);
                            if state == TaskState::Failed && critical[&id] && stopping.is_none() {
                                stopping = Some(id.clone());
                                // Nothing new starts: every task still waiting for its upstream
                                // to succeed is skipped now; retries waiting are given up.
                                let mut stop_updates = Vec::new();
                                for t in &order {
                                    let trigger = run.pipeline.tasks[t].trigger;
                                    match states[t] {
                                        TaskState::Pending | TaskState::Queued if trigger == crate::state::Trigger::AllSuccess => {
                                            stop_updates.push((t.clone(), TaskState::Skipped, Some(format!("not run: critical task `{id}` failed"))));
                                        }
                                        TaskState::Retrying => stop_updates.push((t.clone(), TaskState::Failed, None)),
                                        _ => {}
                                    }
                                }
                                store.finalize_tasks(&run.id, &stop_updates, now_ms()).await?;
                                for (t, st, err) in stop_updates {
                                    states.insert(t.clone(), st);
                                    if st == TaskState::Skipped {
                                        skipped_by_failure.insert(t.clone());
                                    }
                                    for d in dependents.get(t.as_str()).into_iter().flatten() {
                                        dirty.insert(d.to_string());
                                    }
                                    events(Event::Finished { task: t, state: st, elapsed: None, error: err });
                                }
                                claimable = order.iter().filter(|t| states[*t] == TaskState::Queued).count();
                                retry_at.retain(|t, _| states[t] == TaskState::Retrying);
                            }
                            for d in dependents.get(id.as_str()).into_iter().flatten() {
                                dirty.insert(d.to_string());
                            }
                        }
                        Next::Retry { available_at } => {
                            states.insert(id.clone(), TaskState::Retrying);
                            retry_at.insert(id.clone(), available_at);
                        }
                    }
                    events(event);
                }
                _ = cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                }
                _ = tokio::time::sleep(wake) => {}
            }

            let now = tokio::time::Instant::now();
            if now >= next_heartbeat {
                next_heartbeat = now + heartbeat_every;
                store.heartbeat(&svc.owner, lease, now_ms()).await?;
            }
            if now >= next_cancel_poll && !cancelled {
                // `cauce cancel` from another process sets a flag in the store.
                next_cancel_poll = now + CANCEL_POLL;
                if store
                    .get_run(&run.id)
                    .await?
                    .is_some_and(|r| r.cancel_requested)
                {
                    cancel.cancel();
                    cancelled = true;
                }
            }
        }

        let final_state = if cancelled {
            RunState::Cancelled
        } else if stopping.is_some() {
            RunState::Failed
        } else if states.values().any(|s| *s == TaskState::Failed) || !skipped_by_failure.is_empty()
        {
            RunState::Partial
        } else {
            RunState::Success
        };
        let error = match (&stopping, cancelled) {
            (_, true) => Some("cancelled".to_string()),
            (Some(t), _) => Some(format!("critical task `{t}` failed")),
            _ => None,
        };
        store
            .finish_run(&run.id, final_state, error.as_deref(), now_ms())
            .await?;
        if let Err(e) = report::write_report(svc, &run.id).await {
            tracing::warn!("could not write the report of run {}: {e}", run.id);
        }
        Ok(final_state)
    }

    /// What follows an attempt: final state or a retry, and the event to show.
    fn decide(
        &self,
        run: &RunInfo,
        o: &attempt::AttemptOutcome,
        budget_base: u32,
        stopping: bool,
    ) -> (Next, Event) {
        let task = &run.pipeline.tasks[&o.attempt.task_id];
        let id = task.id.clone();
        match &o.result {
            Ok(_) => (
                Next::Final(TaskState::Success),
                Event::Finished {
                    task: id,
                    state: TaskState::Success,
                    elapsed: Some(o.elapsed),
                    error: None,
                },
            ),
            Err(TaskError::Cancelled) if !o.timed_out => (
                Next::Final(TaskState::Cancelled),
                Event::Finished {
                    task: id,
                    state: TaskState::Cancelled,
                    elapsed: Some(o.elapsed),
                    error: Some("cancelled".into()),
                },
            ),
            Err(e) => {
                let error = self.services.project.secrets.redact(&e.to_string());
                let used = o.attempt.number.saturating_sub(budget_base);
                if e.retryable() && !stopping && used <= task.retry.retries {
                    let delay = task.retry.delay_for(used);
                    (
                        Next::Retry {
                            available_at: now_ms() + delay.as_millis() as i64,
                        },
                        Event::Retrying {
                            task: id,
                            attempt: o.attempt.number,
                            delay,
                            error,
                        },
                    )
                } else {
                    (
                        Next::Final(TaskState::Failed),
                        Event::Finished {
                            task: id,
                            state: TaskState::Failed,
                            elapsed: Some(o.elapsed),
                            error: Some(error),
                        },
                    )
                }
            }
        }
    }
}

fn attempt_result(o: &attempt::AttemptOutcome, svc: &Services) -> AttemptResult {
    let (state, error, output, metrics) = match &o.result {
        Ok(out) => (
            AttemptState::Success,
            None,
            (!out.value.is_null()).then(|| svc.project.secrets.redact_json(&out.value)),
            serde_json::to_value(&out.metrics)
                .ok()
                .filter(|m| m.as_object().is_some_and(|o| !o.is_empty())),
        ),
        Err(TaskError::Cancelled) if !o.timed_out => (
            AttemptState::Cancelled,
            Some("cancelled".to_string()),
            None,
            None,
        ),
        Err(e) => (
            AttemptState::Failed,
            Some(svc.project.secrets.redact(&e.to_string())),
            None,
            None,
        ),
    };
    AttemptResult {
        state: Some(state),
        error,
        exit_code: o.stats.and_then(|s| s.exit_code).map(i64::from),
        peak_rss_kb: o.stats.map(|s| s.peak_rss_kb as i64),
        cpu_user_ms: o.stats.map(|s| s.cpu_user_ms as i64),
        cpu_sys_ms: o.stats.map(|s| s.cpu_sys_ms as i64),
        output,
        metrics,
        log_path: Some(o.log_path.clone()),
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
