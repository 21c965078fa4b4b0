//! The coordinator of one run: decides which tasks are ready (trigger rules), enqueues their
//! attempts in the store, claims them into at most `max_workers` slots, records each result
//! with what follows it (success, a retry after its backoff, a final failure), stops the run
//! after a critical failure, heartbeats its leases and watches for cancellation.
//!
//! It keeps an in-memory view of the task states to avoid re-reading the store; that view is
//! only ever changed after the store accepted the same change, so a crash loses nothing.
//! Running an attempt belongs to `attempt`; storage to `crate::store`.

use super::attempt::{self, AttemptOutcome};
use super::{report, Engine, EngineError, Event, EventSink, RunInfo, CANCEL_POLL};
use crate::data::live::{Live, Streams};
use crate::state::{AttemptState, Readiness, RunState, TaskState, Trigger};
use crate::store::{now_ms, AttemptResult, ClaimRequest, Completion, Millis, Next};
use crate::tasks::{PipelineRunner, TaskError};
use indexmap::IndexSet;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A final state for a task, with the reason shown to the user.
type Finalization = (String, TaskState, Option<String>);

pub(super) struct Coordinator {
    engine: Engine,
    run: Arc<RunInfo>,
    events: EventSink,
    cancel: CancellationToken,
    runner: Arc<dyn PipelineRunner>,
    /// Selected task ids in pipeline order.
    order: Vec<String>,
    position: HashMap<String, usize>,
    selected: HashSet<String>,
    /// Downstream edges within the selection.
    dependents: HashMap<String, Vec<String>>,
    states: HashMap<String, TaskState>,
    budget_base: HashMap<String, u32>,
    critical: HashMap<String, bool>,
    /// Pending tasks whose upstream changed since they were last evaluated.
    dirty: IndexSet<String>,
    inflight: JoinSet<AttemptOutcome>,
    /// The critical task whose failure stopped the run.
    stopping: Option<String>,
    cancelled: bool,
    /// Tasks skipped because something upstream failed (as opposed to a handler whose
    /// `one_failed` trigger did not fire): they make the run partial.
    skipped_by_failure: HashSet<String>,
    /// When each retrying task's next attempt may be claimed.
    retry_at: HashMap<String, i64>,
    /// How many attempts of this run are queued and claimable now. This coordinator is the
    /// only claimer of its run, so it knows without asking the store.
    claimable: usize,
    /// Whether `cauce worker` processes run the attempts (`executor: workers`): this
    /// coordinator then only enqueues, watches the store for results and re-queues
    /// attempts whose worker stopped heartbeating.
    remote: bool,
    /// Remote mode: whether the cancel request was written to the store for the workers.
    cancel_sent: bool,
    /// Remote mode: how long a cancelled run waits for workers to stop their attempts.
    cancel_deadline: Option<tokio::time::Instant>,
    /// Remote mode: when the last poll started (this clock), and when the last full read
    /// of the run's tasks was.
    last_poll: Option<i64>,
    last_full_read: tokio::time::Instant,
    /// Whether tasks may stream into one another (`data.streaming`, local execution).
    streaming: bool,
    /// The hand-over of each running attempt that streams its dataset into a consumer,
    /// by producing task: a later attempt of that consumer (a retry) waits on it too.
    live: HashMap<String, Arc<Live>>,
}

/// How often a remote-mode coordinator reads its run's changed task states.
const REMOTE_POLL: Duration = Duration::from_millis(100);
/// How far back before its previous poll a poll looks: a change is stamped with its
/// writer's clock before the writer commits, so a change committed late or stamped by a
/// clock a little behind is still seen.
const POLL_OVERLAP_MS: i64 = 1000;
/// How often a remote-mode coordinator reads all its run's task states anyway (a writer
/// whose clock is further off than the overlap is seen this late, never missed).
const FULL_READ: Duration = Duration::from_secs(10);

impl Coordinator {
    /// Loads the run's task states from the store.
    pub(super) async fn new(
        engine: Engine,
        run: Arc<RunInfo>,
        events: EventSink,
        cancel: CancellationToken,
        runner: Arc<dyn PipelineRunner>,
    ) -> Result<Coordinator, EngineError> {
        let records = engine.services.store.task_runs(&run.id).await?;
        let order: Vec<String> = records.iter().map(|r| r.task_id.clone()).collect();
        let selected: HashSet<String> = order.iter().cloned().collect();
        let mut dependents: HashMap<String, Vec<String>> = HashMap::new();
        for id in &order {
            let Some(task) = run.pipeline.tasks.get(id) else {
                return Err(EngineError::Refused(format!(
                    "task `{id}` of run {} is not in its pipeline",
                    run.id
                )));
            };
            for d in task.depends_on.iter().filter(|d| selected.contains(*d)) {
                dependents.entry(d.clone()).or_default().push(id.clone());
            }
        }
        let states: HashMap<String, TaskState> = records
            .iter()
            .map(|r| (r.task_id.clone(), r.state))
            .collect();
        let dirty = order
            .iter()
            .filter(|t| states[*t] == TaskState::Pending)
            .cloned()
            .collect();
        let claimable = order
            .iter()
            .filter(|t| states[*t] == TaskState::Queued)
            .count();
        let engine_remote =
            engine.services.project.settings.executor == crate::project::Executor::Workers;
        let streaming = !engine_remote && engine.services.data.streaming;
        Ok(Coordinator {
            position: order
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), i))
                .collect(),
            budget_base: records
                .iter()
                .map(|r| (r.task_id.clone(), r.budget_base))
                .collect(),
            critical: records
                .iter()
                .map(|r| (r.task_id.clone(), r.critical))
                .collect(),
            engine,
            run,
            events,
            cancel,
            runner,
            order,
            selected,
            dependents,
            states,
            dirty,
            inflight: JoinSet::new(),
            stopping: None,
            cancelled: false,
            skipped_by_failure: HashSet::new(),
            retry_at: HashMap::new(),
            claimable,
            remote: engine_remote,
            cancel_sent: false,
            cancel_deadline: None,
            last_poll: None,
            last_full_read: tokio::time::Instant::now(),
            streaming,
            live: HashMap::new(),
        })
    }

    /// Runs until every selected task is final; records and returns the run's state. A
    /// store that cannot be reached (a database restart) is waited for: the view is then
    /// read again from the store, the one truth, and the run goes on.
    pub(super) async fn run(mut self) -> Result<RunState, EngineError> {
        let svc = Arc::clone(&self.engine.services);
        let lease = svc.project.settings.lease;
        let mut next_heartbeat = tokio::time::Instant::now() + lease / 3;
        let mut next_cancel_poll = tokio::time::Instant::now() + CANCEL_POLL;
        loop {
            match self.step(&mut next_heartbeat, &mut next_cancel_poll).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(EngineError::Store(e)) if e.is_transient() => {
                    tracing::warn!(run = %self.run.id, "the store is unreachable ({e}); waiting for it");
                    self.resync().await?;
                }
                Err(e) => return Err(e),
            }
        }
        let state = self.final_state();
        let error = match (&self.stopping, self.cancelled) {
            (_, true) => Some("cancelled".to_string()),
            (Some(t), _) => Some(format!("critical task `{t}` failed")),
            _ => None,
        };
        // Incremental cursors move only with a successful run: a failed load keeps the
        // cursor where it was, so its rows are read again next time.
        let watermarks = if state == RunState::Success {
            svc.store
                .task_runs(&self.run.id)
                .await?
                .into_iter()
                .filter_map(|t| {
                    let v = t.output.as_ref()?.get("watermark")?.get("value")?.clone();
                    (!v.is_null()).then_some(crate::store::Watermark {
                        task_id: t.task_id,
                        value: v,
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        crate::store::retrying(
            "recording the run's end",
            svc.project.settings.lease,
            || {
                svc.store
                    .finish_run(&self.run.id, state, error.as_deref(), &watermarks, now_ms())
            },
        )
        .await?;
        tracing::info!(run = %self.run.id, pipeline = %self.run.pipeline.name, state = %state, "run finished");
        if let Err(e) = report::write_report(&svc, &self.run.id).await {
            tracing::warn!("could not write the report of run {}: {e}", self.run.id);
        }
        Ok(state)
    }

    /// One turn of the loop: start what is ready, wait for something to happen, heartbeat.
    /// Returns true when the run is done.
    async fn step(
        &mut self,
        next_heartbeat: &mut tokio::time::Instant,
        next_cancel_poll: &mut tokio::time::Instant,
    ) -> Result<bool, EngineError> {
        let svc = Arc::clone(&self.engine.services);
        let lease = svc.project.settings.lease;
        // A cancellation that fired while an attempt's end was being handled (the
        // select below takes one ready branch) is seen here, before anything new starts
        // and before the run can be found finished.
        if self.cancel.is_cancelled() {
            self.cancelled = true;
        }
        if !self.cancelled {
            self.evaluate().await?;
            self.fill_slots().await?;
        }
        if self.inflight.is_empty() && self.finish_if_done().await? {
            return Ok(true);
        }
        // Wait for an attempt to end, a retry to come due, or a cancellation.
        let wake = match self.retry_at.values().min() {
            _ if self.remote => REMOTE_POLL,
            Some(t) => Duration::from_millis((t - now_ms()).clamp(0, 500) as u64),
            None => Duration::from_millis(500),
        };
        tokio::select! {
            Some(joined) = self.inflight.join_next(), if !self.inflight.is_empty() => {
                let outcome = joined.map_err(|e| {
                    EngineError::Refused(format!("a task attempt panicked: {e}; this is a bug, please report it"))
                })?;
                self.on_outcome(outcome).await?;
            }
            _ = self.cancel.cancelled(), if !self.cancelled => self.cancelled = true,
            _ = tokio::time::sleep(wake) => {}
        }
        if self.remote {
            if self.cancelled && !self.cancel_sent {
                // The workers running this run's attempts see the flag and stop them.
                self.cancel_sent = true;
                svc.store.request_cancel(&self.run.id).await?;
            }
            self.poll_remote().await?;
        }
        let now = tokio::time::Instant::now();
        if now >= *next_heartbeat {
            *next_heartbeat = now + lease / 3;
            self.heartbeat().await?;
            if self.remote {
                self.requeue_lost().await?;
            }
        }
        if now >= *next_cancel_poll && !self.cancelled {
            // `cauce cancel` from another process sets a flag in the store.
            *next_cancel_poll = now + CANCEL_POLL;
            if svc.store.cancel_requested(&self.run.id).await? {
                self.cancel.cancel();
                self.cancelled = true;
            }
        }
        Ok(false)
    }

    /// After a store outage: waits until the store answers, then reads the task states,
    /// the queued attempts and their times again, and marks every pending task for
    /// evaluation. Attempts running here go on; their results are recorded with retries.
    async fn resync(&mut self) -> Result<(), EngineError> {
        let store = Arc::clone(&self.engine.services.store);
        let mut delay = Duration::from_millis(200);
        let (tasks, attempts) = loop {
            let tasks = store.task_runs(&self.run.id).await;
            let attempts = store.attempts(&self.run.id).await;
            match (tasks, attempts) {
                (Ok(t), Ok(a)) => break (t, a),
                (Err(e), _) | (_, Err(e)) if e.is_transient() => {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.cancel.cancelled() => self.cancelled = true,
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                (Err(e), _) | (_, Err(e)) => return Err(e.into()),
            }
        };
        tracing::info!(run = %self.run.id, "the store answers again");
        self.heartbeat().await?;
        self.last_poll = None; // the next poll reads everything again
        let now = now_ms();
        self.claimable = 0;
        self.retry_at.clear();
        for a in attempts
            .iter()
            .filter(|a| a.state == crate::state::AttemptState::Queued)
        {
            if a.available_at > now {
                self.retry_at.insert(a.task_id.clone(), a.available_at);
            } else {
                self.claimable += 1;
            }
        }
        for t in tasks {
            if !self.selected.contains(&t.task_id) {
                continue;
            }
            self.states.insert(t.task_id.clone(), t.state);
        }
        self.dirty = self
            .order
            .iter()
            .filter(|t| self.states[*t] == TaskState::Pending)
            .cloned()
            .collect();
        if self.stopping.is_none() {
            if let Some(failed) = self
                .order
                .iter()
                .find(|t| self.states[*t] == TaskState::Failed && self.critical[*t])
                .cloned()
            {
                self.stop_after_critical_failure(&failed).await?;
            }
        }
        Ok(())
    }

    /// Renews this coordinator's leases and its run's heartbeat. If the run is no longer
    /// its own (it could not heartbeat for longer than a lease, so the scheduling server
    /// resumed the run elsewhere), it steps down: its own attempts are stopped and not
    /// recorded, and the run is left to the new owner.
    async fn heartbeat(&mut self) -> Result<(), EngineError> {
        let svc = Arc::clone(&self.engine.services);
        let lease = svc.project.settings.lease;
        let beat = svc
            .store
            .heartbeat(Some(&self.run.id), &svc.owner, lease, now_ms())
            .await?;
        if beat.holds_run {
            return Ok(());
        }
        let owner = svc
            .store
            .get_run(&self.run.id)
            .await?
            .and_then(|r| r.owner)
            .unwrap_or_else(|| "unknown".into());
        tracing::warn!(run = %self.run.id, new_owner = %owner, "another process took this run over (this one lost the store for longer than a lease); stepping down");
        self.cancel.cancel();
        let grace = svc.project.settings.kill_grace + Duration::from_secs(1);
        let _ = tokio::time::timeout(grace, async {
            while self.inflight.join_next().await.is_some() {}
        })
        .await;
        self.inflight.abort_all();
        Err(EngineError::TakenOver { owner })
    }

    /// Records final states, then updates the view, wakes dependents and tells the UI. On
    /// workers, a task a worker claimed meanwhile keeps running (it ends as it ends).
    async fn finalize(&mut self, updates: Vec<Finalization>) -> Result<(), EngineError> {
        self.finalize_with(updates, self.remote).await
    }

    async fn finalize_with(
        &mut self,
        updates: Vec<Finalization>,
        keep_running: bool,
    ) -> Result<(), EngineError> {
        if updates.is_empty() {
            return Ok(());
        }
        let kept = self
            .engine
            .services
            .store
            .finalize_tasks(&self.run.id, keep_running, &updates, now_ms())
            .await?;
        for (id, state, error) in updates {
            if kept.contains(&id) {
                self.states.insert(id, TaskState::Running);
                continue;
            }
            self.states.insert(id.clone(), state);
            self.wake_dependents(&id);
            (self.events)(Event::Finished {
                task: id,
                state,
                elapsed: None,
                error,
            });
        }
        Ok(())
    }

    fn wake_dependents(&mut self, id: &str) {
        if let Some(ds) = self.dependents.get(id) {
            self.dirty.extend(ds.iter().cloned());
        }
    }

    /// Enqueues the pending tasks whose trigger now holds and skips those whose trigger can
    /// no longer hold. After a critical failure only handlers are still pending.
    async fn evaluate(&mut self) -> Result<(), EngineError> {
        while !self.dirty.is_empty() {
            let mut ready = Vec::new();
            let mut skips = Vec::new();
            while let Some(id) = self.dirty.pop() {
                if self.states[&id] != TaskState::Pending {
                    continue;
                }
                let task = &self.run.pipeline.tasks[&id];
                let upstream: Vec<&String> = task
                    .depends_on
                    .iter()
                    .filter(|d| self.selected.contains(*d))
                    .collect();
                match task
                    .trigger
                    .evaluate(upstream.iter().map(|d| self.states[*d]))
                {
                    Readiness::Wait => {}
                    Readiness::Ready => ready.push(id),
                    Readiness::Skip => {
                        let not_ok: Vec<&str> = upstream
                            .iter()
                            .filter(|d| {
                                matches!(
                                    self.states[**d],
                                    TaskState::Failed | TaskState::Skipped | TaskState::Cancelled
                                )
                            })
                            .map(|d| d.as_str())
                            .collect();
                        let caused_by_failure = upstream.iter().any(|d| {
                            matches!(self.states[*d], TaskState::Failed | TaskState::Cancelled)
                                || self.skipped_by_failure.contains(*d)
                        });
                        let why = if not_ok.is_empty() {
                            format!("trigger `{}` not met", task.trigger.as_str())
                        } else {
                            format!("upstream did not succeed: {}", not_ok.join(", "))
                        };
                        if caused_by_failure {
                            self.skipped_by_failure.insert(id.clone());
                        }
                        // Final at once in the view, so that dependents evaluated in this same
                        // pass see it; recorded below before anything acts on it.
                        self.states.insert(id.clone(), TaskState::Skipped);
                        skips.push((id, TaskState::Skipped, Some(why)));
                    }
                }
            }
            // Skips may make more tasks decidable: `finalize` marks their dependents dirty.
            self.finalize(skips).await?;
            if !ready.is_empty() {
                // Equal tasks start in the order they are written.
                ready.sort_by_key(|id| self.position.get(id).copied());
                // Enqueue and fill free slots in one transaction.
                let want = (self.claimable + ready.len()).min(self.free_slots());
                let svc = Arc::clone(&self.engine.services);
                let claimed = svc
                    .store
                    .enqueue_and_claim(
                        &self.run.id,
                        &ready,
                        &svc.owner,
                        svc.project.settings.lease,
                        want,
                        now_ms(),
                    )
                    .await?;
                self.claimable += ready.len();
                for id in ready {
                    self.states.insert(id, TaskState::Queued);
                }
                self.start_claimed(want, claimed).await;
            }
        }
        Ok(())
    }

    /// Claims queued attempts into free slots and starts them.
    async fn fill_slots(&mut self) -> Result<(), EngineError> {
        let now = now_ms();
        let mut due = 0;
        self.retry_at.retain(|_, at| {
            let is_due = *at <= now;
            due += usize::from(is_due);
            !is_due
        });
        self.claimable += due;
        let want = self.claimable.min(self.free_slots());
        if want == 0 {
            return Ok(());
        }
        let svc = Arc::clone(&self.engine.services);
        let claim = ClaimRequest {
            run_id: Some(&self.run.id),
            queues: None,
            tasks: None,
            lease: svc.project.settings.lease,
            limit: want,
        };
        let claimed = svc.store.claim_many(&svc.owner, claim, now).await?;
        self.start_claimed(want, claimed).await;
        Ok(())
    }

    fn free_slots(&self) -> usize {
        if self.remote {
            return 0; // the workers claim
        }
        self.run.max_workers.saturating_sub(self.inflight.len())
    }

    /// Remote mode: takes in what the workers recorded since the last look (attempts
    /// started, retries, final states), as `on_outcome` does for local attempts.
    async fn poll_remote(&mut self) -> Result<(), EngineError> {
        let started = now_ms();
        let since = match self.last_poll {
            Some(t) if self.last_full_read.elapsed() < FULL_READ => t - POLL_OVERLAP_MS,
            _ => {
                self.last_full_read = tokio::time::Instant::now();
                Millis::MIN
            }
        };
        let records = self
            .engine
            .services
            .store
            .task_changes(&self.run.id, since)
            .await?;
        self.last_poll = Some(started);
        for r in records {
            let Some(old) = self.states.get(&r.task_id).copied() else {
                continue;
            };
            if old == r.state || old.is_final() {
                continue;
            }
            let id = r.task_id.clone();
            let elapsed = match (r.started_at, r.ended_at) {
                (Some(a), Some(b)) => Some(Duration::from_millis((b - a).max(0) as u64)),
                _ => None,
            };
            match r.state {
                s if s.is_final() => {
                    self.states.insert(id.clone(), s);
                    self.wake_dependents(&id);
                    (self.events)(Event::Finished {
                        task: id.clone(),
                        state: s,
                        elapsed,
                        error: r.error.clone(),
                    });
                    if s == TaskState::Failed && self.critical[&id] && self.stopping.is_none() {
                        self.stop_after_critical_failure(&id).await?;
                    }
                }
                TaskState::Retrying if self.stopping.is_some() || self.cancelled => {
                    // A worker scheduled a retry after the run was stopped.
                    self.finalize(vec![(id, TaskState::Failed, r.error.clone())])
                        .await?;
                }
                TaskState::Retrying => {
                    let task = &self.run.pipeline.tasks[&id];
                    let used = r.attempts.saturating_sub(self.budget_base[&id]);
                    self.states.insert(id.clone(), TaskState::Retrying);
                    (self.events)(Event::Retrying {
                        task: id,
                        attempt: r.attempts,
                        delay: task.retry.delay_for(used),
                        error: r.error.clone().unwrap_or_default(),
                    });
                }
                TaskState::Running => {
                    self.states.insert(id.clone(), TaskState::Running);
                    (self.events)(Event::Started {
                        task: id,
                        attempt: r.attempts,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Remote mode: attempts whose worker stopped heartbeating past its lease are marked
    /// lost; each counts as an attempt, and the task is retried while its budget lasts.
    async fn requeue_lost(&mut self) -> Result<(), EngineError> {
        let store = Arc::clone(&self.engine.services.store);
        let now = now_ms();
        let lost = store.expire_leases(Some(&self.run.id), &[], now).await?;
        for a in lost {
            let Some(task) = self.run.pipeline.tasks.get(&a.task_id) else {
                continue;
            };
            let used = a
                .number
                .saturating_sub(self.budget_base.get(&a.task_id).copied().unwrap_or(0));
            let giving_up = self.stopping.is_some() || self.cancelled;
            let error = format!(
                "lost: {} stopped heartbeating (lease expired)",
                a.owner.as_deref().unwrap_or("its worker")
            );
            let next = if !giving_up && used <= task.retry.retries {
                Next::Retry {
                    available_at: now + task.retry.delay_for(used).as_millis() as i64,
                }
            } else {
                Next::Final(TaskState::Failed)
            };
            tracing::warn!(run = %self.run.id, task = %a.task_id, attempt = a.number, "{error}");
            store
                .resolve_lost(&self.run.id, &a.task_id, &error, next, now)
                .await?;
        }
        // The new states reach the view with the next poll.
        Ok(())
    }

    /// Starts the attempts that a claim of `want` returned.
    async fn start_claimed(&mut self, want: usize, mut claimed: Vec<crate::store::AttemptRecord>) {
        // Fewer than asked means the queue is empty, whatever the count said.
        self.claimable = if claimed.len() < want {
            0
        } else {
            self.claimable - want
        };
        let svc = Arc::clone(&self.engine.services);
        // Upstream tasks still queued that let a task take all its inputs live start now too.
        let join = self.producers_to_join(&claimed);
        if !join.is_empty() {
            let claim = ClaimRequest {
                run_id: Some(&self.run.id),
                queues: None,
                tasks: Some(&join),
                lease: svc.project.settings.lease,
                limit: join.len(),
            };
            match svc.store.claim_many(&svc.owner, claim, now_ms()).await {
                Ok(more) => {
                    self.claimable = self.claimable.saturating_sub(more.len());
                    claimed.extend(more);
                }
                // Only an optimisation: they start when a slot frees, as usual.
                Err(e) => {
                    tracing::warn!(run = %self.run.id, "could not start the tasks to stream together: {e}")
                }
            }
        }
        // The tasks that start beside these, streaming from them.
        let plan = self.plan_streams(&claimed);
        let mut streams: HashMap<String, Streams> = HashMap::new();
        if !plan.is_empty() {
            let ids: Vec<String> = plan.iter().map(|(c, _)| c.clone()).collect();
            // Streaming is an optimisation: if the store cannot start the consumers now,
            // the producers still start (below), and the consumers wait as usual.
            let extra = svc
                .store
                .start_tasks(
                    &self.run.id,
                    &ids,
                    &svc.owner,
                    svc.project.settings.lease,
                    now_ms(),
                )
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(run = %self.run.id, "could not start the streaming tasks: {e}");
                    Vec::new()
                });
            // One transaction starts them all or none; an edge is wired only between two
            // attempts that start here, so no input ever waits on an attempt that is not.
            let started: HashSet<&str> = claimed
                .iter()
                .chain(extra.iter())
                .map(|a| a.task_id.as_str())
                .collect();
            streams = wire_streams(&plan, &started, &self.dependents);
            for (task, s) in &streams {
                if let Some(live) = &s.out {
                    self.live.insert(task.clone(), Arc::clone(live));
                }
            }
            claimed.extend(extra);
        }
        for a in claimed {
            let task = self.run.pipeline.tasks[&a.task_id].clone();
            let mut s = streams.remove(&a.task_id).unwrap_or_default();
            // A retry of a consumer whose producer still streams waits for it.
            for up in &task.depends_on {
                if let Some(live) = self.live.get(up) {
                    s.inputs
                        .entry(up.clone())
                        .or_insert_with(|| Arc::clone(live));
                }
            }
            self.states.insert(a.task_id.clone(), TaskState::Running);
            (self.events)(Event::Started {
                task: a.task_id.clone(),
                attempt: a.number,
            });
            self.inflight.spawn(attempt::run_attempt(
                Arc::clone(&svc),
                Arc::clone(&self.run),
                task,
                a,
                self.cancel.child_token(),
                Arc::clone(&self.runner),
                s,
            ));
        }
    }

    /// Queued tasks to start beside `starting`, beyond the run's free slots: the upstream
    /// tasks a pending task still waits for that would let it stream from all of its inputs
    /// at once ([`Coordinator::plan_streams`]), when at least one of them starts now. Without
    /// them, that task would wait for the slower ones and read what the others wrote from
    /// disk. Each upstream qualifies as `plan_streams` asks (a kind that streams, no
    /// retries, read by that task, not promised to another); at most `max_workers` join.
    fn producers_to_join(&self, starting: &[crate::store::AttemptRecord]) -> Vec<String> {
        if !self.streaming || self.cancelled || self.stopping.is_some() {
            return Vec::new();
        }
        let tasks = &self.run.pipeline.tasks;
        let starting: HashSet<&str> = starting.iter().map(|a| a.task_id.as_str()).collect();
        let mut promised: HashSet<&str> = HashSet::new();
        let mut join: Vec<String> = Vec::new();
        for id in &self.order {
            let t = &tasks[id];
            if self.states[id] != TaskState::Pending || !takes_live_input(t) {
                continue;
            }
            let reads = t.action.reads();
            let (mut live, mut queued) = (Vec::new(), Vec::new());
            let all = t
                .depends_on
                .iter()
                .filter(|u| self.selected.contains(*u))
                .all(|u| {
                    if self.states[u] == TaskState::Success {
                        return true;
                    }
                    let up = &tasks[u];
                    let streams = up.action.streams_output()
                        && up.retry.retries == 0
                        && (reads.is_empty() || reads.contains(u))
                        && !promised.contains(u.as_str());
                    if streams && starting.contains(u.as_str()) {
                        live.push(u.as_str());
                    } else if streams && self.states[u] == TaskState::Queued {
                        queued.push(u.as_str());
                    } else {
                        return false;
                    }
                    true
                });
            if !all || live.is_empty() || queued.is_empty() {
                continue;
            }
            if join.len() + queued.len() > self.run.max_workers {
                break;
            }
            promised.extend(live.iter().chain(queued.iter()).copied());
            join.extend(queued.into_iter().map(String::from));
        }
        join
    }

    /// Which pending tasks start now beside `starting`, each with the upstream tasks that
    /// stream into it. A task streams from its upstream when it is a kind that takes live
    /// input (`sql`, `load`), waits for `all_success`, has no timeout (its clock would
    /// run while it waits for rows), and every upstream has either succeeded or starts now
    /// with a dataset it hands over as it writes; such an upstream is on its last attempt
    /// (a failure is then final, and the consumer is skipped as it would have been), and
    /// streams into one consumer only (two could each wait for the other's rows). Chains
    /// start together: a `sql` started so streams on into its own consumer.
    fn plan_streams(&self, starting: &[crate::store::AttemptRecord]) -> Vec<(String, Vec<String>)> {
        if !self.streaming || self.cancelled || self.stopping.is_some() {
            return Vec::new();
        }
        let tasks = &self.run.pipeline.tasks;
        // Producers that can stream, and whether a consumer took them yet.
        let mut free: HashMap<String, bool> = starting
            .iter()
            .filter(|a| {
                let t = &tasks[&a.task_id];
                let used = a.number.saturating_sub(self.budget_base[&a.task_id]);
                t.action.streams_output() && used > t.retry.retries
            })
            .map(|a| (a.task_id.clone(), true))
            .collect();
        let mut plan: Vec<(String, Vec<String>)> = Vec::new();
        loop {
            let before = plan.len();
            for id in &self.order {
                if self.states[id] != TaskState::Pending || plan.iter().any(|(c, _)| c == id) {
                    continue;
                }
                let t = &tasks[id];
                if !takes_live_input(t) {
                    continue;
                }
                let reads = t.action.reads();
                let mut live = Vec::new();
                let ready = t
                    .depends_on
                    .iter()
                    .filter(|d| self.selected.contains(*d))
                    .all(|u| match free.get(u) {
                        Some(true) if reads.is_empty() || reads.contains(u) => {
                            live.push(u.clone());
                            true
                        }
                        Some(_) => false,
                        None => self.states[u] == TaskState::Success,
                    });
                if !ready || live.is_empty() {
                    continue;
                }
                for u in &live {
                    free.insert(u.clone(), false);
                }
                // Its first attempt under its budget: the last when it has no retries.
                if t.action.streams_output() && t.retry.retries == 0 {
                    free.insert(id.clone(), true);
                }
                plan.push((id.clone(), live));
            }
            if plan.len() == before {
                return plan;
            }
        }
    }

    /// With nothing running: if nothing can start any more, gives every task left its
    /// final state and returns true.
    async fn finish_if_done(&mut self) -> Result<bool, EngineError> {
        if self.remote {
            let outstanding = |s: &TaskState| {
                matches!(
                    s,
                    TaskState::Queued | TaskState::Running | TaskState::Retrying
                )
            };
            if !self.cancelled
                && (self.order.iter().any(|t| outstanding(&self.states[t]))
                    || !self.dirty.is_empty())
            {
                return Ok(false);
            }
            if self.cancelled
                && self
                    .order
                    .iter()
                    .any(|t| self.states[t] == TaskState::Running)
            {
                // Give the workers time to stop their attempts and record it.
                let grace = self.engine.services.project.settings.kill_grace;
                let deadline = *self.cancel_deadline.get_or_insert_with(|| {
                    tokio::time::Instant::now() + grace + Duration::from_secs(5)
                });
                if tokio::time::Instant::now() < deadline {
                    return Ok(false);
                }
            }
        } else {
            let can_progress =
                self.claimable > 0 || !self.retry_at.is_empty() || !self.dirty.is_empty();
            if !self.cancelled && can_progress {
                return Ok(false);
            }
        }
        let (state, reason) = if self.cancelled {
            (TaskState::Cancelled, "run cancelled")
        } else {
            (TaskState::Skipped, "not run: its trigger could not be met")
        };
        let leftovers = self
            .order
            .iter()
            .filter(|id| !self.states[*id].is_final())
            .map(|id| match self.states[id] {
                TaskState::Retrying if !self.cancelled => (id.clone(), TaskState::Failed, None),
                _ => (id.clone(), state, Some(reason.to_string())),
            })
            .collect();
        // The end: nothing is left running, even an attempt whose worker never answered
        // the cancellation.
        self.finalize_with(leftovers, false).await?;
        Ok(true)
    }

    /// Records an attempt's result together with what follows it.
    async fn on_outcome(&mut self, outcome: AttemptOutcome) -> Result<(), EngineError> {
        let svc = Arc::clone(&self.engine.services);
        let id = outcome.attempt.task_id.clone();
        let (next, event) = self.decide(&outcome);
        let result = attempt_result(&outcome, &svc);
        // The freed slot is refilled in the same transaction, unless this failure stops the run.
        let stops_run =
            next == Next::Final(TaskState::Failed) && self.critical[&id] && self.stopping.is_none();
        let want = if self.cancelled || stops_run {
            0
        } else {
            self.claimable.min(self.free_slots())
        };
        let claim = ClaimRequest {
            run_id: Some(&self.run.id),
            queues: None,
            tasks: None,
            lease: svc.project.settings.lease,
            limit: want,
        };
        // The result must not be lost to a database restart: retried while the store is
        // unreachable (for up to a lease; then it is rejected or the attempt re-run).
        let done = [Completion {
            attempt_id: outcome.attempt.id,
            result: &result,
            next,
        }];
        let (accepted, claimed) =
            crate::store::retrying("recording a result", svc.project.settings.lease, || {
                svc.store
                    .complete_and_claim(&svc.owner, &done, claim, now_ms())
            })
            .await?;
        self.live.remove(&id);
        self.start_claimed(want, claimed).await;
        if accepted.first() != Some(&true) {
            tracing::warn!(task = %id, attempt = outcome.attempt.number, "result rejected: this process no longer holds the attempt's lease");
            if let Some(t) = svc.store.task_run(&self.run.id, &id).await? {
                self.states.insert(id, t.state);
            }
            // Let the next claim ask the store what is really queued.
            self.claimable = self.claimable.max(1);
            return Ok(());
        }
        match next {
            Next::Final(state) => {
                if state == TaskState::Skipped {
                    self.skipped_by_failure.insert(id.clone());
                }
                self.states.insert(id.clone(), state);
                self.wake_dependents(&id);
                (self.events)(event);
                if state == TaskState::Failed && self.critical[&id] && self.stopping.is_none() {
                    self.stop_after_critical_failure(&id).await?;
                }
            }
            Next::Retry { available_at } => {
                self.states.insert(id.clone(), TaskState::Retrying);
                self.retry_at.insert(id, available_at);
                (self.events)(event);
            }
        }
        Ok(())
    }

    /// Nothing new starts after a critical failure, except failure handlers: every task
    /// still waiting for its upstream to succeed is skipped now, and retries waiting are
    /// given up.
    async fn stop_after_critical_failure(&mut self, failed: &str) -> Result<(), EngineError> {
        self.stopping = Some(failed.to_string());
        let mut updates = Vec::new();
        for id in &self.order {
            match self.states[id] {
                TaskState::Pending | TaskState::Queued
                    if self.run.pipeline.tasks[id].trigger == Trigger::AllSuccess =>
                {
                    self.skipped_by_failure.insert(id.clone());
                    updates.push((
                        id.clone(),
                        TaskState::Skipped,
                        Some(format!("not run: critical task `{failed}` failed")),
                    ));
                }
                TaskState::Retrying => updates.push((id.clone(), TaskState::Failed, None)),
                _ => {}
            }
        }
        self.finalize(updates).await?;
        self.claimable = self
            .order
            .iter()
            .filter(|t| self.states[*t] == TaskState::Queued)
            .count();
        let states = &self.states;
        self.retry_at
            .retain(|t, _| states[t] == TaskState::Retrying);
        Ok(())
    }

    /// What follows an attempt: a final state or a retry, and the event to show.
    fn decide(&self, o: &AttemptOutcome) -> (Next, Event) {
        let task = &self.run.pipeline.tasks[&o.attempt.task_id];
        decide(
            &self.engine.services,
            task,
            o,
            self.budget_base[&task.id],
            self.stopping.is_some() || self.cancelled,
        )
    }

    fn final_state(&self) -> RunState {
        if self.cancelled {
            RunState::Cancelled
        } else if self.stopping.is_some() {
            RunState::Failed
        } else if self.states.values().any(|s| *s == TaskState::Failed)
            || !self.skipped_by_failure.is_empty()
        {
            RunState::Partial
        } else {
            RunState::Success
        }
    }
}

/// The hand-overs of a stream plan ([`Coordinator::plan_streams`]) between attempts that
/// all start now (`started`): one [`Live`] per producer and its consumer, and each task's
/// group size, the tasks joined by streams (they share one `max_memory`). A producer feeds
/// one consumer, so every group is a tree whose root is the consumer that feeds no one. A
/// producer whose consumer is its only task downstream (`dependents`) is told so.
fn wire_streams(
    plan: &[(String, Vec<String>)],
    started: &HashSet<&str>,
    dependents: &HashMap<String, Vec<String>>,
) -> HashMap<String, Streams> {
    let mut streams: HashMap<String, Streams> = HashMap::new();
    let mut consumer_of: HashMap<&str, &str> = HashMap::new();
    for (consumer, producers) in plan.iter().filter(|(c, _)| started.contains(c.as_str())) {
        for p in producers.iter().filter(|p| started.contains(p.as_str())) {
            let live = Live::new(p);
            let out = streams.entry(p.clone()).or_default();
            out.out = Some(Arc::clone(&live));
            out.sole_reader = dependents.get(p).is_some_and(|d| d.len() == 1);
            streams
                .entry(consumer.clone())
                .or_default()
                .inputs
                .insert(p.clone(), live);
            consumer_of.insert(p, consumer);
        }
    }
    let mut root_of: HashMap<String, String> = HashMap::new();
    for task in streams.keys() {
        let mut t = task.as_str();
        while let Some(c) = consumer_of.get(t) {
            t = c;
        }
        root_of.insert(task.clone(), t.to_string());
    }
    for (task, s) in &mut streams {
        let mine = &root_of[task];
        s.group = root_of.values().filter(|r| *r == mine).count();
    }
    streams
}

/// Whether `task` may start beside its upstream tasks and take their batches live: a
/// kind that streams its input (`sql`, `load`), waiting for `all_success`, with no timeout
/// (its clock would run while it waits for rows).
fn takes_live_input(task: &crate::spec::Task) -> bool {
    task.action.streams_input() && task.trigger == Trigger::AllSuccess && task.timeout.is_none()
}

/// What follows an attempt of `task` (whose retry budget started at attempt
/// `budget_base`): a final state or a retry after its backoff (none when `giving_up`), and
/// the event to show. The coordinator and `cauce worker` decide alike.
pub(super) fn decide(
    svc: &super::Services,
    task: &crate::spec::Task,
    o: &AttemptOutcome,
    budget_base: u32,
    giving_up: bool,
) -> (Next, Event) {
    let id = task.id.clone();
    let finished = |state, error| Event::Finished {
        task: id.clone(),
        state,
        elapsed: Some(o.elapsed),
        error,
    };
    match &o.result {
        Ok(_) => (
            Next::Final(TaskState::Success),
            finished(TaskState::Success, None),
        ),
        Err(TaskError::Cancelled) if !o.timed_out => (
            Next::Final(TaskState::Cancelled),
            finished(TaskState::Cancelled, Some("cancelled".into())),
        ),
        // It started beside an upstream task that then failed: skipped, as it would have
        // been had it waited.
        Err(TaskError::Upstream(why)) => (
            Next::Final(TaskState::Skipped),
            finished(TaskState::Skipped, Some(svc.project.secrets.redact(why))),
        ),
        Err(e) => {
            let error = svc.project.secrets.redact(&e.to_string());
            let used = o.attempt.number.saturating_sub(budget_base);
            if e.retryable() && !giving_up && used <= task.retry.retries {
                let delay = task.retry.delay_for(used);
                (
                    Next::Retry {
                        available_at: now_ms() + delay.as_millis() as i64,
                    },
                    Event::Retrying {
                        task: id.clone(),
                        attempt: o.attempt.number,
                        delay,
                        error,
                    },
                )
            } else {
                (
                    Next::Final(TaskState::Failed),
                    finished(TaskState::Failed, Some(error)),
                )
            }
        }
    }
}

/// What the store records of an attempt (errors and outputs with secrets masked).
pub(super) fn attempt_result(o: &AttemptOutcome, svc: &super::Services) -> AttemptResult {
    let secrets = &svc.project.secrets;
    let (state, error, output, metrics) = match &o.result {
        Ok(out) => (
            AttemptState::Success,
            None,
            (!out.value.is_null()).then(|| secrets.redact_json(&out.value)),
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
        Err(TaskError::Upstream(why)) => (
            AttemptState::Cancelled,
            Some(secrets.redact(why)),
            None,
            None,
        ),
        Err(e) => (
            AttemptState::Failed,
            Some(secrets.redact(&e.to_string())),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_joined_by_streams_form_one_group_and_only_started_ones_are_wired() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // raw -> q -> save, and two extracts into one join; `late` did not start.
        let plan = vec![
            ("q".to_string(), s(&["raw"])),
            ("save".to_string(), s(&["q"])),
            ("join".to_string(), s(&["a", "b"])),
            ("other".to_string(), s(&["late"])),
        ];
        let started: HashSet<&str> = ["raw", "q", "save", "a", "b", "join", "other"].into();
        // `a` is read by `join` and by another task.
        let mut dependents: HashMap<String, Vec<String>> = HashMap::new();
        for (c, ps) in &plan {
            for p in ps {
                dependents.entry(p.clone()).or_default().push(c.clone());
            }
        }
        dependents
            .entry("a".into())
            .or_default()
            .push("report".into());
        let w = wire_streams(&plan, &started, &dependents);
        for t in ["raw", "q", "save"] {
            assert_eq!(w[t].group, 3, "{t}");
        }
        for t in ["a", "b", "join"] {
            assert_eq!(w[t].group, 3, "{t}");
        }
        assert!(w["raw"].out.is_some() && w["raw"].inputs.is_empty());
        assert!(w["q"].out.is_some() && w["q"].inputs.contains_key("raw"));
        assert!(w["save"].out.is_none() && w["save"].inputs.contains_key("q"));
        assert_eq!(w["join"].inputs.len(), 2);
        assert!(w["raw"].sole_reader && w["q"].sole_reader && w["b"].sole_reader);
        assert!(!w["a"].sole_reader);
        assert!(!w.contains_key("other") && !w.contains_key("late"));
    }
}
