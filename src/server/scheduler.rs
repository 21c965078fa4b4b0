//! The scheduler service: once a second it asks [`crate::schedule`] which fire times of each
//! scheduled pipeline are due, and starts their runs.
//!
//! The last fire time handled is kept per pipeline in the store and moved in the same
//! transaction that creates the runs, as a compare-and-set: a crash between the two is
//! impossible, a restart neither skips nor repeats a fire time, and of two schedulers on one
//! store only one fires each time. `max_active_runs` holds fire times back (they stay due)
//! until runs end. Every few seconds it also raises `sla_miss` for scheduled runs that have
//! not succeeded in time, and resumes runs whose executor died.

use super::metrics::ServerMetrics;
use super::runs::{RunManager, TriggerRequest};
use crate::alerts::{Alert, AlertEvent};
use crate::schedule::Schedule;
use crate::state::RunState;
use crate::store::{now_ms, Millis, RunQuery, ScheduleFire};
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The store's name for the scheduler leadership.
const LEASE_NAME: &str = "scheduler";

/// How often SLAs are checked and dead executors looked for.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);

/// The scheduler of one server.
#[derive(Debug)]
pub struct Scheduler {
    runs: Arc<RunManager>,
    metrics: Arc<ServerMetrics>,
    /// Whether this server holds the scheduler lease now (shown by `/health`).
    leading: Arc<AtomicBool>,
    /// Pipelines whose schedule could not be read, already logged.
    warned: std::sync::Mutex<HashSet<String>>,
}

fn to_time(ms: Millis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

impl Scheduler {
    /// A scheduler starting runs through `runs`.
    pub fn new(
        runs: Arc<RunManager>,
        metrics: Arc<ServerMetrics>,
        leading: Arc<AtomicBool>,
    ) -> Scheduler {
        Scheduler {
            runs,
            metrics,
            leading,
            warned: Default::default(),
        }
    }

    /// Runs until `stop` is cancelled. Only the server holding the `scheduler` lease in the
    /// store schedules, checks SLAs and resumes orphaned runs; the others wait to take over
    /// when its lease runs out (a stopped server gives it up at once).
    pub async fn run(self, stop: CancellationToken) {
        let services = Arc::clone(self.runs.engine().services());
        let lease = services.project.settings.lease;
        let mut last_housekeeping = tokio::time::Instant::now() - HOUSEKEEPING_EVERY;
        loop {
            let leads = match self.try_lead(lease).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "cannot reach the store to hold the scheduler lease");
                    false
                }
            };
            if leads != self.leading.swap(leads, Ordering::SeqCst) {
                if leads {
                    tracing::info!(owner = %services.owner, "this server now schedules");
                    last_housekeeping = tokio::time::Instant::now() - HOUSEKEEPING_EVERY;
                } else {
                    tracing::warn!("another server holds the scheduler lease; this one stands by");
                }
            }
            if leads {
                self.lead_once(&mut last_housekeeping).await;
            }
            // Wake just after the next whole second: cron fire times are whole minutes.
            let now = Utc::now();
            let to_next = 1000 - (now.timestamp_subsec_millis() as u64 % 1000) + 5;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(to_next)) => {}
            }
        }
        if self.leading.swap(false, Ordering::SeqCst) {
            if let Err(e) = services.store.resign(LEASE_NAME, &services.owner).await {
                tracing::warn!(error = %e, "could not give up the scheduler lease; another server takes over when it runs out");
            }
        }
    }

    /// Takes the scheduler lease, or renews it. A holder that is a dead process on this
    /// machine (a server killed and restarted) is not waited for: its lease is dropped.
    async fn try_lead(&self, lease: Duration) -> Result<bool, crate::store::StoreError> {
        let services = self.runs.engine().services();
        let store = &services.store;
        if store
            .try_lead(LEASE_NAME, &services.owner, lease, now_ms())
            .await?
        {
            return Ok(true);
        }
        match store.leader(LEASE_NAME).await? {
            Some(holder) if crate::engine::owner_is_dead(&holder) => {
                tracing::info!(holder = %holder, "the server holding the scheduler lease is gone; taking over");
                store.resign(LEASE_NAME, &holder).await?;
                store
                    .try_lead(LEASE_NAME, &services.owner, lease, now_ms())
                    .await
            }
            _ => Ok(false),
        }
    }

    async fn lead_once(&self, last_housekeeping: &mut tokio::time::Instant) {
        if let Err(e) = self.pass(Utc::now()).await {
            tracing::error!(error = %e, "scheduler pass failed; trying again in a second");
        }
        if last_housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
            *last_housekeeping = tokio::time::Instant::now();
            if let Err(e) = self.check_slas(Utc::now()).await {
                tracing::error!(error = %e, "SLA check failed");
            }
            match self.runs.resume_orphans().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(runs = n, "resumed runs whose executor had stopped"),
                Err(e) => tracing::error!(error = %e, "looking for orphaned runs failed"),
            }
        }
    }

    /// One pass over every scheduled pipeline at `now`: what is due is worked out for all
    /// of them, fired in one store transaction, then started.
    pub async fn pass(&self, now: DateTime<Utc>) -> Result<(), crate::engine::EngineError> {
        if !self.runs.accepting() {
            return Ok(());
        }
        let store = Arc::clone(&self.runs.engine().services().store);
        let _admitted = self.runs.admit().await;
        let marks = store.schedule_marks().await?;
        let mut fires = Vec::new();
        let mut planned = Vec::new();
        for pipeline in self.runs.catalog().pipelines() {
            let schedule = match Schedule::of(&pipeline) {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    if self
                        .warned
                        .lock()
                        .map(|mut w| w.insert(pipeline.name.clone()))
                        .unwrap_or(false)
                    {
                        tracing::error!(pipeline = %pipeline.name, error = %e, "schedule ignored");
                    }
                    continue;
                }
            };
            let prev = marks.get(&pipeline.name).copied();
            let due = schedule.due(prev.map(to_time), now);
            let mut fire = due.fire;
            let mut mark = due.mark;
            if !fire.is_empty() {
                if let Some(room) = self.runs.room(&pipeline).await? {
                    if room == 0 {
                        continue; // stays due until a run ends
                    }
                    fire.truncate(room);
                    if let Some(last) = fire.last() {
                        mark = *last;
                    }
                }
            }
            if fire.is_empty() && prev.is_some() {
                continue;
            }
            let mut runs = Vec::new();
            let mut starts = Vec::new();
            for at in &fire {
                let req = TriggerRequest {
                    pipeline: pipeline.name.clone(),
                    logical_date: Some(*at),
                    trigger: "schedule".into(),
                    ..Default::default()
                };
                match self.runs.plan(&pipeline, &req) {
                    Ok((run, opts)) => {
                        starts.push((run.id.clone(), opts, *at));
                        runs.push(run);
                    }
                    // `cauce validate` refuses scheduled pipelines whose params lack
                    // defaults; anything else is logged and its fire time consumed, so it is
                    // not tried again every second.
                    Err(e) => {
                        tracing::error!(pipeline = %pipeline.name, error = %e, "scheduled run cannot start")
                    }
                }
            }
            fires.push(ScheduleFire {
                pipeline: pipeline.name.clone(),
                prev,
                mark: mark.timestamp_millis(),
                runs,
            });
            planned.push((pipeline, starts));
        }
        if fires.is_empty() {
            return Ok(());
        }
        let moved = store.fire_schedules(&fires, now_ms()).await?;
        let created = Utc::now();
        for ((pipeline, starts), fired) in planned.into_iter().zip(moved) {
            if !fired {
                continue; // another scheduler moved the mark first
            }
            for (id, opts, at) in starts {
                let lag = (created - at).to_std().unwrap_or_default();
                self.metrics.observe_fire(&pipeline.name, lag);
                tracing::info!(run = %id, pipeline = %pipeline.name, due = %at.to_rfc3339(), lag_ms = lag.as_millis() as u64, "scheduled run started");
                self.runs.start_planned(&id, Arc::clone(&pipeline), opts);
            }
        }
        Ok(())
    }

    /// Raises `sla_miss` for scheduled runs not successful `sla` after their fire time.
    pub async fn check_slas(&self, now: DateTime<Utc>) -> Result<(), crate::engine::EngineError> {
        let services = self.runs.engine().services();
        for pipeline in self.runs.catalog().pipelines() {
            let Some(sla) = pipeline.sla else { continue };
            let Ok(sla) = chrono::Duration::from_std(sla) else {
                continue;
            };
            let recent = services
                .store
                .runs_page(&RunQuery {
                    pipeline: Some(pipeline.name.clone()),
                    trigger: Some("schedule".into()),
                    limit: 20,
                    ..Default::default()
                })
                .await?;
            for run in recent {
                if run.sla_missed_at.is_some() {
                    continue;
                }
                let Ok(due) = DateTime::parse_from_rfc3339(&run.logical_date) else {
                    continue;
                };
                let deadline = due.with_timezone(&Utc) + sla;
                let missed = match (run.state, run.ended_at) {
                    (RunState::Success, Some(end)) => to_time(end) > deadline,
                    _ => now > deadline,
                };
                if !missed || !services.store.mark_sla_missed(&run.id, now_ms()).await? {
                    continue;
                }
                self.metrics.observe_sla_miss(&pipeline.name);
                tracing::warn!(run = %run.id, pipeline = %pipeline.name, deadline = %deadline.to_rfc3339(), "SLA missed");
                services.alerts.send(
                    &pipeline.alerts.channels("sla_miss"),
                    Alert {
                        error: Some(format!(
                            "not successful by {} (sla {})",
                            deadline.to_rfc3339(),
                            humantime::format_duration(sla.to_std().unwrap_or_default())
                        )),
                        ..Alert::new(
                            AlertEvent::SlaMiss,
                            &pipeline.name,
                            &run.id,
                            run.logical_date.clone(),
                            run.state.as_str(),
                        )
                    },
                );
            }
        }
        Ok(())
    }
}
