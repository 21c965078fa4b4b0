//! The runs a server executes: started by the API, a webhook or the scheduler, retried on
//! request, or resumed when the server finds a run whose executor died.
//!
//! The manager keeps only a cancellation handle per run it executes; states live in the
//! store. On shutdown it stops taking new runs, lets running ones go on for the grace
//! period, then cancels them (their task process groups are killed and `cancelled` is
//! recorded).

use super::catalog::Catalog;
use super::metrics::ServerMetrics;
use crate::dag::{self, Selection};
use crate::engine::{Engine, EngineError, Event, EventSink, RunInfo, RunOptions};
use crate::spec::Pipeline;
use crate::state::RunState;
use crate::store::{now_ms, NewRun};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why a run could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// No such pipeline in the project.
    #[error("{0}")]
    UnknownPipeline(String),
    /// The pipeline file is invalid, or a param, task or workflow given is.
    #[error("{0}")]
    Invalid(String),
    /// `max_active_runs` runs of this pipeline are already active.
    #[error("{0}")]
    Busy(String),
    /// The server is shutting down.
    #[error("the server is shutting down and starts no new runs")]
    ShuttingDown,
    /// The engine or the store failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<crate::store::StoreError> for TriggerError {
    fn from(e: crate::store::StoreError) -> Self {
        TriggerError::Engine(e.into())
    }
}

/// A request to start a run.
#[derive(Debug, Clone, Default)]
pub struct TriggerRequest {
    /// Pipeline name.
    pub pipeline: String,
    /// Params as text, checked against the declared ones.
    pub params: Vec<(String, String)>,
    /// Logical date (default: now).
    pub logical_date: Option<DateTime<Utc>>,
    /// Only this workflow's tasks.
    pub workflow: Option<String>,
    /// Only these tasks.
    pub tasks: Vec<String>,
    /// With `tasks`/`workflow`: also their upstream tasks.
    pub with_upstream: bool,
    /// `manual`, `api`, `webhook`, `schedule`.
    pub trigger: String,
}

/// Executes runs in this process.
#[derive(Debug)]
pub struct RunManager {
    engine: Engine,
    catalog: Arc<Catalog>,
    metrics: Arc<ServerMetrics>,
    running: Mutex<HashMap<String, CancellationToken>>,
    tracker: TaskTracker,
    accepting: AtomicBool,
    /// Held from counting a pipeline's active runs to creating a new one, so that two
    /// triggers at once cannot both pass `max_active_runs`.
    admission: tokio::sync::Mutex<()>,
}

impl RunManager {
    /// A manager over an engine.
    pub fn new(
        engine: Engine,
        catalog: Arc<Catalog>,
        metrics: Arc<ServerMetrics>,
    ) -> Arc<RunManager> {
        Arc::new(RunManager {
            engine,
            catalog,
            metrics,
            running: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            accepting: AtomicBool::new(true),
            admission: tokio::sync::Mutex::new(()),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether new runs are taken.
    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// How many runs this process executes now.
    pub fn active(&self) -> usize {
        self.running.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// The pipelines.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// A valid project pipeline by name.
    pub fn pipeline(&self, name: &str) -> Result<Arc<Pipeline>, TriggerError> {
        match self.catalog.get(name) {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(TriggerError::UnknownPipeline(format!(
                "no pipeline `{name}`"
            ))),
            Err(e) => Err(TriggerError::Invalid(format!(
                "pipeline `{name}` is invalid:\n{e}"
            ))),
        }
    }

    /// The new run a request describes (checked), without storing it.
    pub fn plan(
        &self,
        pipeline: &Pipeline,
        req: &TriggerRequest,
    ) -> Result<(NewRun, RunOptions), TriggerError> {
        let selection = dag::select(
            pipeline,
            &Selection {
                workflow: req.workflow.clone(),
                tasks: req.tasks.clone(),
                with_upstream: req.with_upstream,
                category: None,
            },
        )
        .map_err(TriggerError::Invalid)?;
        let params =
            crate::project::resolve_params(pipeline, &req.params).map_err(TriggerError::Invalid)?;
        let project = &self.engine.services().project;
        let opts = RunOptions {
            max_workers: pipeline.max_workers.unwrap_or(project.settings.max_workers),
            continue_on_failure: false,
            params,
            logical_date: req.logical_date.unwrap_or_else(Utc::now),
            selection,
            trigger: req.trigger.clone(),
            parent: None,
            depth: 0,
        };
        Ok((self.engine.new_run(pipeline, &opts), opts))
    }

    /// Holds new runs back while the caller counts and creates (see `admission`).
    pub async fn admit(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.admission.lock().await
    }

    /// How many more runs of the pipeline may start now under its `max_active_runs`
    /// (`None`: it has no limit).
    pub async fn room(
        &self,
        pipeline: &Pipeline,
    ) -> Result<Option<usize>, crate::store::StoreError> {
        let Some(max) = pipeline.max_active_runs else {
            return Ok(None);
        };
        let active = self
            .engine
            .services()
            .store
            .run_summaries(&crate::store::RunQuery {
                pipeline: Some(pipeline.name.clone()),
                state: Some(RunState::Running),
                limit: max.max(1),
                ..Default::default()
            })
            .await?
            .len();
        Ok(Some((max as usize).saturating_sub(active)))
    }

    /// Refuses when `max_active_runs` runs of the pipeline are active.
    pub async fn check_capacity(&self, pipeline: &Pipeline) -> Result<(), TriggerError> {
        if self.room(pipeline).await? == Some(0) {
            return Err(TriggerError::Busy(format!(
                "pipeline `{}` already has as many active runs as its max_active_runs ({})",
                pipeline.name,
                pipeline.max_active_runs.unwrap_or(0)
            )));
        }
        Ok(())
    }

    /// Starts a run now; returns its id.
    pub async fn trigger(self: &Arc<Self>, req: TriggerRequest) -> Result<String, TriggerError> {
        if !self.accepting() {
            return Err(TriggerError::ShuttingDown);
        }
        let pipeline = self.pipeline(&req.pipeline)?;
        let (run, opts) = self.plan(&pipeline, &req)?;
        {
            let _admitted = self.admission.lock().await;
            self.check_capacity(&pipeline).await?;
            self.engine
                .services()
                .store
                .create_run(&run, now_ms())
                .await?;
        }
        tracing::info!(run = %run.id, pipeline = %pipeline.name, trigger = %req.trigger, "run triggered");
        self.start_planned(&run.id, pipeline, opts);
        Ok(run.id)
    }

    /// Executes a stored run in the background.
    pub async fn start(self: &Arc<Self>, run_id: &str) -> Result<(), EngineError> {
        let info = Arc::new(self.engine.load_run(run_id).await?);
        self.spawn(info);
        Ok(())
    }

    /// Executes a run just created from `plan`, with the pipeline already in memory.
    pub fn start_planned(
        self: &Arc<Self>,
        run_id: &str,
        pipeline: Arc<Pipeline>,
        opts: RunOptions,
    ) {
        self.spawn(Arc::new(RunInfo {
            id: run_id.to_string(),
            pipeline,
            params: opts.params,
            logical_date: opts.logical_date,
            max_workers: opts.max_workers,
            continue_on_failure: opts.continue_on_failure,
            depth: opts.depth,
        }));
    }

    fn spawn(self: &Arc<Self>, info: Arc<RunInfo>) {
        let token = CancellationToken::new();
        if let Ok(mut r) = self.running.lock() {
            r.insert(info.id.clone(), token.clone());
        }
        let me = Arc::clone(self);
        let pipeline = info.pipeline.name.clone();
        let metrics = Arc::clone(&self.metrics);
        let task_pipeline = pipeline.clone();
        let sink: EventSink = Arc::new(move |e| {
            if let Event::Finished {
                state,
                elapsed: Some(d),
                ..
            } = e
            {
                metrics.observe_task(&task_pipeline, state.as_str(), d);
            }
        });
        self.tracker.spawn(async move {
            let started = Instant::now();
            let id = info.id.clone();
            let result = me.engine.execute(info, sink, token).await;
            if let Ok(mut r) = me.running.lock() {
                r.remove(&id);
            }
            match result {
                Ok(state) => {
                    me.metrics
                        .observe_run(&pipeline, state.as_str(), started.elapsed());
                    tracing::info!(run = %id, pipeline = %pipeline, state = %state, "run ended");
                }
                // The run stays `running` in the store; once its heartbeat is older than a
                // lease, `resume_orphans` takes it up again.
                Err(e) => tracing::error!(run = %id, error = %e, "run stopped by an error"),
            }
        });
    }

    /// Retries a run that ended without success (or whose executor died).
    pub async fn retry(self: &Arc<Self>, run_id: &str) -> Result<Vec<String>, TriggerError> {
        if !self.accepting() {
            return Err(TriggerError::ShuttingDown);
        }
        if let Some(r) = self.engine.services().store.get_run(run_id).await? {
            if r.state == RunState::Success {
                return Err(TriggerError::Busy(format!(
                    "run {run_id} succeeded; there is nothing to retry"
                )));
            }
        }
        let reset = self.engine.prepare_retry(run_id).await?;
        self.start(run_id).await?;
        Ok(reset)
    }

    /// Runs one task of an ended run again, with everything downstream of it.
    pub async fn retry_task(
        self: &Arc<Self>,
        run_id: &str,
        task: &str,
    ) -> Result<Vec<String>, TriggerError> {
        if !self.accepting() {
            return Err(TriggerError::ShuttingDown);
        }
        let reset = self.engine.prepare_retry_task(run_id, task).await?;
        self.start(run_id).await?;
        Ok(reset)
    }

    /// Finds runs nobody executes any more (their process died, or stopped heartbeating
    /// for longer than a lease) and executes them again here, from where they stopped.
    /// Child runs are left to their parent, whose retry closes them.
    pub async fn resume_orphans(self: &Arc<Self>) -> Result<usize, EngineError> {
        if !self.accepting() {
            return Ok(0);
        }
        let store = &self.engine.services().store;
        let lease = self.engine.services().project.settings.lease;
        let now = now_ms();
        let mine: Vec<String> = self
            .running
            .lock()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default();
        let mut resumed = 0;
        for run in store.list_runs(None, Some(RunState::Running), 1000).await? {
            if run.parent_run_id.is_some()
                || mine.contains(&run.id)
                || !crate::engine::run_is_orphaned(&run, lease, now)
            {
                continue;
            }
            tracing::warn!(run = %run.id, pipeline = %run.pipeline, owner = run.owner.as_deref().unwrap_or("-"), "resuming a run whose executor is gone");
            match self.engine.prepare_retry(&run.id).await {
                Ok(_) => {
                    self.start(&run.id).await?;
                    resumed += 1;
                }
                Err(e) => tracing::error!(run = %run.id, error = %e, "cannot resume run"),
            }
        }
        Ok(resumed)
    }

    /// Shutdown: no new runs; running ones get `grace` to finish, then are cancelled.
    pub async fn drain(&self, grace: Duration) {
        self.accepting.store(false, Ordering::SeqCst);
        self.tracker.close();
        let n = self.active();
        if n > 0 {
            tracing::info!(
                runs = n,
                grace_s = grace.as_secs(),
                "waiting for running runs"
            );
        }
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
        {
            return;
        }
        let tokens: Vec<CancellationToken> = self
            .running
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        tracing::warn!(
            runs = tokens.len(),
            "grace period over: cancelling running runs"
        );
        for t in tokens {
            t.cancel();
        }
        self.tracker.wait().await;
    }
}
