//! `cauce worker`: claims queued attempts of any run from the store (`FOR UPDATE SKIP
//! LOCKED` on PostgreSQL), from the queues it subscribes to, into a fixed number of slots;
//! runs each with the same task kinds, limits and log files as a local run (the pipeline
//! is the text stored with the run); heartbeats its leases; and records each result only
//! while it still holds the lease (a late result after its lease expired is rejected by the
//! store, and the run's coordinator has re-queued the attempt). It decides what follows a
//! failure (a retry after its backoff, or the end) the way the coordinator does.
//!
//! It owns no run: the coordinator of each run (`cauce run`, `cauce server`) enqueues the
//! attempts, watches their results and finishes the run. On the first SIGTERM or Ctrl-C a
//! worker drains (claims nothing more, finishes what it runs); on the second it stops its
//! attempts' processes and leaves without recording them, so their leases expire and the
//! attempts are re-queued elsewhere, as after `kill -9`.

use super::attempt::{self, AttemptOutcome};
use super::coordinator::{attempt_result, decide};
use super::{ChildRunner, Engine, EngineError, Event, RunInfo, CANCEL_POLL};
use crate::store::{now_ms, AttemptRecord, ClaimRequest, Completion, WorkerInfo};
use crate::tasks::{PipelineRunner, TaskError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Attempts it runs at once.
    pub slots: usize,
    /// Queues it claims from.
    pub queues: Vec<String>,
    /// Free labels shown in `cauce workers`.
    pub labels: Vec<String>,
    /// How long it waits between claims when the queues are empty.
    pub poll: Duration,
}

/// What a worker has in flight.
struct Running {
    run_id: String,
    cancel: CancellationToken,
}

/// Runs a worker until it has drained (`drain` fired and its attempts ended) or `stop`
/// fired.
pub async fn run(
    engine: Engine,
    opts: WorkerOptions,
    drain: CancellationToken,
    stop: CancellationToken,
) -> Result<(), EngineError> {
    let svc = Arc::clone(&engine.services);
    let store = Arc::clone(&svc.store);
    let lease = svc.project.settings.lease;
    let slots = opts.slots.max(1);
    let info = WorkerInfo {
        id: svc.owner.clone(),
        host: super::hostname(),
        pid: i64::from(std::process::id()),
        slots: slots as i64,
        queues: opts.queues.clone(),
        labels: opts.labels.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    store.register_worker(&info, now_ms()).await?;
    tracing::info!(worker = %info.id, slots, queues = %opts.queues.join(","), "worker started");
    let mut inflight: JoinSet<(AttemptOutcome, Arc<RunInfo>)> = JoinSet::new();
    let mut running: HashMap<i64, Running> = HashMap::new();
    let mut runs: HashMap<String, Arc<RunInfo>> = HashMap::new();
    let mut draining = false;
    let mut next_beat = tokio::time::Instant::now() + lease / 3;
    let mut next_cancel_poll = tokio::time::Instant::now() + CANCEL_POLL;
    // Claimed attempts waiting to start (a claim made together with a completion).
    let mut claimed: Vec<AttemptRecord> = Vec::new();
    loop {
        if stop.is_cancelled() {
            break;
        }
        if drain.is_cancelled() && !draining {
            draining = true;
            tracing::info!(
                running = inflight.len(),
                "draining: no new attempts; finishing the running ones"
            );
            let _ = store.worker_heartbeat(&info.id, true, now_ms()).await;
        }
        if draining && inflight.is_empty() && claimed.is_empty() {
            break;
        }
        let free = slots.saturating_sub(inflight.len() + claimed.len());
        let mut full_claim = false;
        if !draining && free > 0 {
            let claim = ClaimRequest {
                run_id: None,
                queues: Some(&opts.queues),
                tasks: None,
                lease,
                limit: free,
            };
            match store.claim_many(&info.id, claim, now_ms()).await {
                Ok(got) => {
                    full_claim = got.len() == free;
                    claimed.extend(got);
                }
                Err(e) => {
                    tracing::warn!("claiming attempts: {e}; trying again");
                    sleep_or(&stop, Duration::from_secs(1)).await;
                }
            }
        }
        for a in claimed.drain(..) {
            start(&engine, &mut runs, &mut inflight, &mut running, a).await;
        }
        let wait = if full_claim {
            Duration::ZERO
        } else {
            opts.poll
        };
        tokio::select! {
            Some(joined) = inflight.join_next(), if !inflight.is_empty() => {
                // Every attempt that has ended by now is recorded in one transaction.
                let mut ended = Vec::new();
                let mut next = Some(joined);
                while let Some(joined) = next {
                    let Ok((outcome, run)) = joined else {
                        return Err(EngineError::Refused("a task attempt panicked; this is a bug, please report it".into()));
                    };
                    running.remove(&outcome.attempt.id);
                    ended.push((outcome, run));
                    next = inflight.try_join_next();
                }
                let free = if draining || stop.is_cancelled() {
                    0
                } else {
                    slots.saturating_sub(inflight.len())
                };
                claimed.extend(finish(&engine, &opts, ended, free).await);
            }
            _ = tokio::time::sleep(wait) => {}
            _ = drain.cancelled(), if !draining => {}
            _ = stop.cancelled() => {}
        }
        let now = tokio::time::Instant::now();
        if now >= next_beat {
            next_beat = now + lease / 3;
            if let Err(e) = store.heartbeat(None, &info.id, lease, now_ms()).await {
                tracing::warn!("heartbeat: {e}");
            }
            let _ = store.worker_heartbeat(&info.id, draining, now_ms()).await;
            runs.retain(|id, _| running.values().any(|r| &r.run_id == id));
        }
        if now >= next_cancel_poll {
            next_cancel_poll = now + CANCEL_POLL;
            let mut asked: HashMap<String, bool> = HashMap::new();
            for r in running.values() {
                if !asked.contains_key(&r.run_id) {
                    let yes = store.cancel_requested(&r.run_id).await.unwrap_or(false);
                    asked.insert(r.run_id.clone(), yes);
                }
                if asked[&r.run_id] {
                    r.cancel.cancel();
                }
            }
        }
    }
    if stop.is_cancelled() && !inflight.is_empty() {
        // Stop the processes; record nothing: the leases expire and the coordinators
        // re-queue the attempts.
        tracing::warn!(
            running = inflight.len(),
            "stopping now: the running attempts are left to be re-queued when their leases expire"
        );
        for r in running.values() {
            r.cancel.cancel();
        }
        let grace = svc.project.settings.kill_grace + Duration::from_secs(1);
        let _ = tokio::time::timeout(grace, async {
            while inflight.join_next().await.is_some() {}
        })
        .await;
        inflight.abort_all();
    }
    let _ = store.worker_stopped(&info.id, now_ms()).await;
    tracing::info!(worker = %info.id, "worker stopped");
    Ok(())
}

async fn sleep_or(stop: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.cancelled() => {}
    }
}

/// Starts a claimed attempt (or records at once why it cannot run).
async fn start(
    engine: &Engine,
    runs: &mut HashMap<String, Arc<RunInfo>>,
    inflight: &mut JoinSet<(AttemptOutcome, Arc<RunInfo>)>,
    running: &mut HashMap<i64, Running>,
    a: AttemptRecord,
) {
    let svc = Arc::clone(&engine.services);
    let run = match runs.get(&a.run_id) {
        Some(r) => Arc::clone(r),
        None => match engine.load_run(&a.run_id).await {
            Ok(r) => {
                let r = Arc::new(r);
                runs.insert(a.run_id.clone(), Arc::clone(&r));
                r
            }
            Err(e) => {
                refuse(engine, &a, format!("cannot load run {}: {e}", a.run_id)).await;
                return;
            }
        },
    };
    let Some(task) = run.pipeline.tasks.get(&a.task_id).cloned() else {
        refuse(
            engine,
            &a,
            format!("task `{}` is not in the run's pipeline", a.task_id),
        )
        .await;
        return;
    };
    super::log_event(
        &a.run_id,
        &Event::Started {
            task: a.task_id.clone(),
            attempt: a.number,
        },
    );
    let cancel = CancellationToken::new();
    running.insert(
        a.id,
        Running {
            run_id: a.run_id.clone(),
            cancel: cancel.clone(),
        },
    );
    let runner: Arc<dyn PipelineRunner> = Arc::new(ChildRunner {
        engine: engine.clone(),
        depth: run.depth,
    });
    let run2 = Arc::clone(&run);
    inflight.spawn(async move {
        let outcome =
            attempt::run_attempt(svc, run2, task, a, cancel, runner, Default::default()).await;
        (outcome, run)
    });
}

/// Records that an attempt cannot run here (its run or task cannot be loaded).
async fn refuse(engine: &Engine, a: &AttemptRecord, error: String) {
    tracing::error!(run = %a.run_id, task = %a.task_id, "{error}");
    let result = crate::store::AttemptResult {
        state: Some(crate::state::AttemptState::Failed),
        error: Some(error),
        ..Default::default()
    };
    let _ = engine
        .services
        .store
        .complete(
            a.id,
            &engine.services.owner,
            &result,
            crate::store::Next::Final(crate::state::TaskState::Failed),
            now_ms(),
        )
        .await;
}

/// Records the results of attempts that ended, with what follows each, claiming up to
/// `free` new attempts in the same transaction. A store that is down is retried for a
/// while; a result the store rejects (the lease was lost) is dropped with a warning.
async fn finish(
    engine: &Engine,
    opts: &WorkerOptions,
    ended: Vec<(AttemptOutcome, Arc<RunInfo>)>,
    free: usize,
) -> Vec<AttemptRecord> {
    let svc = &engine.services;
    let store = &svc.store;
    let mut decided = Vec::with_capacity(ended.len());
    for (o, run) in &ended {
        let Some(task) = run.pipeline.tasks.get(&o.attempt.task_id) else {
            continue;
        };
        let (budget_base, giving_up) = match &o.result {
            Err(e) if !matches!(e, TaskError::Cancelled) => {
                // One row, not the run's whole task list, per failed attempt.
                let base = store
                    .task_run(&run.id, &task.id)
                    .await
                    .ok()
                    .flatten()
                    .map(|t| t.budget_base)
                    .unwrap_or(0);
                let cancelled = store.cancel_requested(&run.id).await.unwrap_or(false);
                (base, cancelled)
            }
            _ => (0, false),
        };
        let (next, event) = decide(svc, task, o, budget_base, giving_up);
        decided.push((o, run, next, event, attempt_result(o, svc)));
    }
    let done: Vec<Completion<'_>> = decided
        .iter()
        .map(|(o, _, next, _, result)| Completion {
            attempt_id: o.attempt.id,
            result,
            next: *next,
        })
        .collect();
    let claim = ClaimRequest {
        run_id: None,
        queues: Some(&opts.queues),
        tasks: None,
        lease: svc.project.settings.lease,
        limit: free,
    };
    let recorded = crate::store::retrying("recording results", Duration::from_secs(60), || {
        store.complete_and_claim(&svc.owner, &done, claim, now_ms())
    })
    .await;
    match recorded {
        Ok((accepted, claimed)) => {
            for ((o, run, _, event, _), ok) in decided.iter().zip(accepted) {
                if ok {
                    super::log_event(&run.id, event);
                } else {
                    tracing::warn!(run = %run.id, task = %o.attempt.task_id, attempt = o.attempt.number, "result rejected: this worker no longer holds the attempt's lease (it was re-queued)");
                }
            }
            claimed
        }
        Err(e) => {
            for (o, run, ..) in &decided {
                tracing::error!(run = %run.id, task = %o.attempt.task_id, "could not record the result ({e}); the attempt will be re-queued when its lease expires");
            }
            Vec::new()
        }
    }
}
