//! The store: every run, task state and attempt, and the queue of ready attempts.
//!
//! One [`Store`] trait, one SQL implementation ([`sql::SqlStore`]) with two dialects:
//! SQLite (the embedded default, WAL) and PostgreSQL (`postgres://...`). Ready attempts are
//! enqueued here; executor slots claim them with a lease (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL), renew it by heartbeat, and complete them only while they hold it. Expired
//! leases are found and their attempts marked lost. The engine keeps no state the store does
//! not have. This module does not decide anything: the engine says what follows a result.

pub mod sql;

use crate::state::{AttemptState, RunState, TaskState};
use async_trait::async_trait;
use serde::Serialize;
use std::time::Duration;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or answered with an error.
    #[error("store error: {0}")]
    Database(#[from] sqlx::Error),
    /// The store URL is not one cauce understands.
    #[error("invalid store URL `{0}`: use `sqlite:PATH` or `postgres://user@host:port/db`")]
    BadUrl(String),
    /// Stored data could not be read back (a bug or a hand-edited database).
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    /// A run id that does not exist.
    #[error("no run `{0}`")]
    NoSuchRun(String),
}

impl StoreError {
    /// Whether the database could not be reached or dropped the connection (a restart, a
    /// network cut), so the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        let StoreError::Database(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_) => true,
            // PostgreSQL: connection exceptions (08), shutting down or starting (57P0x),
            // too many connections (53300).
            sqlx::Error::Database(d) => d
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57P0") || c == "53300"),
            _ => false,
        }
    }
}

/// Runs a store call until it succeeds, retrying transient failures with a growing pause
/// (200 ms up to 2 s) for at most `limit`; other errors are returned at once.
pub async fn retrying<T, F, Fut>(what: &str, limit: Duration, mut call: F) -> StoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<T>>,
{
    let start = std::time::Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        match call().await {
            Err(e) if e.is_transient() && start.elapsed() < limit => {
                tracing::warn!("{what}: {e}; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// Store result.
pub type StoreResult<T> = Result<T, StoreError>;

/// Milliseconds since the Unix epoch: the store's clock unit.
pub type Millis = i64;

/// The current time in store units.
pub fn now_ms() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// Formats store time for people and reports (RFC 3339, UTC, milliseconds).
pub fn format_ms(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// A run to create.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// Unique id, sortable by creation time.
    pub id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// The pipeline file.
    pub pipeline_file: String,
    /// Where its tasks run.
    pub base_dir: String,
    /// The file's text at creation (a retry re-reads this, not the file).
    pub source: String,
    /// Resolved params.
    pub params: serde_json::Value,
    /// Selected tasks, in order.
    pub tasks: Vec<NewTask>,
    /// Run options (`max_workers`, `continue_on_failure`).
    pub options: serde_json::Value,
    /// Logical date, RFC 3339.
    pub logical_date: String,
    /// What started it: `manual`, `schedule`, `child`...
    pub trigger: String,
    /// Parent run and task, for child pipelines.
    pub parent: Option<(String, String)>,
    /// The process that executes it.
    pub owner: String,
}

/// A task of a new run.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// Task id.
    pub id: String,
    /// Whether its failure stops the run.
    pub critical: bool,
    /// The queue its attempts go to (workers subscribe to queues).
    pub queue: String,
}

/// A stored run.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunRecord {
    /// Id.
    pub id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Pipeline file.
    pub pipeline_file: String,
    /// Task working directory.
    pub base_dir: String,
    /// The pipeline file's text.
    #[serde(skip)]
    pub source: String,
    /// State.
    pub state: RunState,
    /// Params.
    pub params: serde_json::Value,
    /// Selected task ids.
    pub selection: Vec<String>,
    /// Options.
    pub options: serde_json::Value,
    /// Logical date.
    pub logical_date: String,
    /// What started it.
    pub trigger: String,
    /// Parent run id.
    pub parent_run_id: Option<String>,
    /// Parent task id.
    pub parent_task_id: Option<String>,
    /// Creation time.
    pub created_at: Millis,
    /// End time.
    pub ended_at: Option<Millis>,
    /// Executing process.
    pub owner: Option<String>,
    /// Last heartbeat of the owner.
    pub heartbeat_at: Option<Millis>,
    /// Whether someone asked to cancel it.
    pub cancel_requested: bool,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// When an `sla_miss` was raised for it.
    pub sla_missed_at: Option<Millis>,
}

/// A task's state in a run.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TaskRunRecord {
    /// Run id.
    pub run_id: String,
    /// Task id.
    pub task_id: String,
    /// State.
    pub state: TaskState,
    /// Whether its failure stops the run.
    pub critical: bool,
    /// Attempts created so far.
    pub attempts: u32,
    /// Attempts made before the current try (`cauce retry` starts a fresh budget).
    pub budget_base: u32,
    /// First start.
    pub started_at: Option<Millis>,
    /// End.
    pub ended_at: Option<Millis>,
    /// Output value of the successful attempt.
    pub output: Option<serde_json::Value>,
    /// Last error.
    pub error: Option<String>,
    /// Metrics of the successful attempt.
    pub metrics: Option<serde_json::Value>,
}

/// A task's state as a coordinator watching workers reads it ([`Store::task_changes`]).
#[derive(Debug, Clone)]
pub struct TaskChange {
    /// Task id.
    pub task_id: String,
    /// State.
    pub state: TaskState,
    /// Attempts created so far.
    pub attempts: u32,
    /// First start.
    pub started_at: Option<Millis>,
    /// End.
    pub ended_at: Option<Millis>,
    /// Last error.
    pub error: Option<String>,
}

/// One attempt.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttemptRecord {
    /// Store id.
    pub id: i64,
    /// Run id.
    pub run_id: String,
    /// Task id.
    pub task_id: String,
    /// Attempt number, from 1.
    pub number: u32,
    /// State.
    pub state: AttemptState,
    /// When it may be claimed.
    pub available_at: Millis,
    /// Lease holder.
    pub owner: Option<String>,
    /// Lease expiry.
    pub lease_until: Option<Millis>,
    /// Start.
    pub started_at: Option<Millis>,
    /// End.
    pub ended_at: Option<Millis>,
    /// Process exit code.
    pub exit_code: Option<i64>,
    /// Error.
    pub error: Option<String>,
    /// Log file.
    pub log_path: Option<String>,
    /// Peak resident memory of its process, KiB.
    pub peak_rss_kb: Option<i64>,
    /// User CPU ms.
    pub cpu_user_ms: Option<i64>,
    /// System CPU ms.
    pub cpu_sys_ms: Option<i64>,
    /// Output value.
    pub output: Option<serde_json::Value>,
    /// Metrics.
    pub metrics: Option<serde_json::Value>,
}

/// The result of an attempt, as recorded.
#[derive(Debug, Clone, Default)]
pub struct AttemptResult {
    /// Success, failed or cancelled.
    pub state: Option<AttemptState>,
    /// Error text (already redacted).
    pub error: Option<String>,
    /// Exit code of its process.
    pub exit_code: Option<i64>,
    /// Peak memory KiB.
    pub peak_rss_kb: Option<i64>,
    /// User CPU ms.
    pub cpu_user_ms: Option<i64>,
    /// System CPU ms.
    pub cpu_sys_ms: Option<i64>,
    /// Output value.
    pub output: Option<serde_json::Value>,
    /// Metrics.
    pub metrics: Option<serde_json::Value>,
    /// Log file.
    pub log_path: Option<String>,
}

/// What happens to the task after an attempt ends (decided by the engine).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    /// The task reaches this final state.
    Final(TaskState),
    /// Another attempt is queued, claimable at this time; the task is `retrying`.
    Retry {
        /// When it may be claimed.
        available_at: Millis,
    },
}

/// Which attempts to claim ([`Store::claim_many`], and after results in the same
/// transaction).
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    /// Only attempts of this run (`None`: any run).
    pub run_id: Option<&'a str>,
    /// Only attempts of these queues (`None`: any queue).
    pub queues: Option<&'a [String]>,
    /// Only attempts of these tasks (`None`: any task).
    pub tasks: Option<&'a [String]>,
    /// Lease of the claimed attempts.
    pub lease: Duration,
    /// At most this many.
    pub limit: usize,
}

/// What a [`Store::heartbeat`] renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// How many attempt leases it extended.
    pub leases: u64,
    /// Whether `owner` still holds the run it was asked about (true without a run).
    pub holds_run: bool,
}

/// One attempt's result to record, with what follows it ([`Store::complete_and_claim`]).
#[derive(Debug, Clone, Copy)]
pub struct Completion<'a> {
    /// The attempt.
    pub attempt_id: i64,
    /// What it ended with.
    pub result: &'a AttemptResult,
    /// The task's next step.
    pub next: Next,
}

/// An incremental cursor a run reached, to commit with its success.
#[derive(Debug, Clone, PartialEq)]
pub struct Watermark {
    /// Task id.
    pub task_id: String,
    /// The cursor value.
    pub value: serde_json::Value,
}

/// A stored cursor.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WatermarkRecord {
    /// Task id.
    pub task_id: String,
    /// The cursor value.
    pub value: serde_json::Value,
    /// The run that reached it.
    pub run_id: String,
    /// When.
    pub updated_at: Millis,
}

/// A page of runs: newest first, filtered.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    /// Only runs of this pipeline.
    pub pipeline: Option<String>,
    /// Only runs in this state.
    pub state: Option<RunState>,
    /// Only runs started this way (`manual`, `schedule`, `webhook`, ...).
    pub trigger: Option<String>,
    /// Only runs with an id below this one (the cursor of the previous page).
    pub before: Option<String>,
    /// Only runs that have ended.
    pub ended: bool,
    /// At most this many.
    pub limit: u32,
}

/// A run without its definition, params or options: what listings and KPIs need.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunSummary {
    /// Id.
    pub id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// State.
    pub state: RunState,
    /// What started it.
    pub trigger: String,
    /// Logical date.
    pub logical_date: String,
    /// Creation time.
    pub created_at: Millis,
    /// End time.
    pub ended_at: Option<Millis>,
    /// Parent run id, for child runs.
    pub parent_run_id: Option<String>,
}

/// Ended runs per pipeline since two times (for success rates).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunCounts {
    /// Pipeline name.
    pub pipeline: String,
    /// Ended since the first time.
    pub ended_a: u64,
    /// Of those, successful.
    pub success_a: u64,
    /// Ended since the second time.
    pub ended_b: u64,
    /// Of those, successful.
    pub success_b: u64,
}

/// One pipeline's part of a scheduler pass.
#[derive(Debug, Clone)]
pub struct ScheduleFire {
    /// Pipeline name.
    pub pipeline: String,
    /// The mark the scheduler read (`None`: none yet).
    pub prev: Option<Millis>,
    /// The new mark.
    pub mark: Millis,
    /// The runs to create with it.
    pub runs: Vec<NewRun>,
}

/// Counts for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    /// Runs per pipeline and state.
    pub runs: Vec<(String, RunState, u64)>,
    /// Task runs per state.
    pub tasks: Vec<(TaskState, u64)>,
    /// Attempts waiting in the queue (queued and available now or later).
    pub queued_attempts: u64,
    /// Attempts being executed.
    pub running_attempts: u64,
}

/// A `cauce worker` process as it registers itself.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WorkerInfo {
    /// Its lease-holder id (`host:pid:nonce`), the owner of the attempts it runs.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: i64,
    /// Attempts it runs at once.
    pub slots: i64,
    /// The queues it claims from.
    pub queues: Vec<String>,
    /// Free labels (`zone=eu`, `gpu`).
    pub labels: Vec<String>,
    /// cauce version.
    pub version: String,
}

/// A worker as the store knows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WorkerRecord {
    /// What it registered.
    #[serde(flatten)]
    pub info: WorkerInfo,
    /// When it started.
    pub started_at: Millis,
    /// Its last heartbeat.
    pub heartbeat_at: Millis,
    /// When it stopped cleanly (`None` while it runs, or if it died).
    pub stopped_at: Option<Millis>,
    /// Whether it is draining (finishing its attempts, claiming no more).
    pub draining: bool,
    /// Attempts it holds now.
    pub running: i64,
}

impl WorkerRecord {
    /// `stopped`, `lost` (no heartbeat for longer than `lease`), `draining` or `up`.
    pub fn state(&self, lease: Duration, now: Millis) -> &'static str {
        if self.stopped_at.is_some() {
            "stopped"
        } else if now - self.heartbeat_at > lease.as_millis() as i64 {
            "lost"
        } else if self.draining {
            "draining"
        } else {
            "up"
        }
    }
}

/// The operations the engine, the CLI, the server and workers need.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Which backend (`sqlite` or `postgres`).
    fn backend(&self) -> &'static str;

    /// Creates a run with its selected tasks, all `pending`.
    async fn create_run(&self, run: &NewRun, now: Millis) -> StoreResult<()>;
    /// One run.
    async fn get_run(&self, id: &str) -> StoreResult<Option<RunRecord>>;
    /// Runs, newest first, optionally of one pipeline and one state.
    async fn list_runs(
        &self,
        pipeline: Option<&str>,
        state: Option<RunState>,
        limit: u32,
    ) -> StoreResult<Vec<RunRecord>>;
    /// A page of runs, newest first.
    async fn runs_page(&self, q: &RunQuery) -> StoreResult<Vec<RunRecord>>;
    /// [`Store::runs_page`] without the heavy columns.
    async fn run_summaries(&self, q: &RunQuery) -> StoreResult<Vec<RunSummary>>;
    /// Ended runs and successes per pipeline, created since `a` and since `b`.
    async fn run_counts(&self, a: Millis, b: Millis) -> StoreResult<Vec<RunCounts>>;
    /// The last fire time handled, per scheduled pipeline.
    async fn schedule_marks(&self) -> StoreResult<std::collections::HashMap<String, Millis>>;
    /// Moves a pipeline's schedule mark from `prev` to `mark` and creates `runs`, in one
    /// transaction, only if the mark is still `prev` (`None`: no mark yet). Returns false,
    /// having written nothing, when another scheduler moved it first.
    async fn fire_schedule(
        &self,
        pipeline: &str,
        prev: Option<Millis>,
        mark: Millis,
        runs: &[NewRun],
        now: Millis,
    ) -> StoreResult<bool> {
        let fire = ScheduleFire {
            pipeline: pipeline.to_string(),
            prev,
            mark,
            runs: runs.to_vec(),
        };
        Ok(self
            .fire_schedules(std::slice::from_ref(&fire), now)
            .await?
            .first()
            .copied()
            .unwrap_or(false))
    }
    /// [`Store::fire_schedule`] for many pipelines in one transaction (one scheduler pass):
    /// each mark is compared and moved on its own; the answer says which moved.
    async fn fire_schedules(&self, fires: &[ScheduleFire], now: Millis) -> StoreResult<Vec<bool>>;
    /// Takes or renews the named leadership (`scheduler`) for `holder` until `now + lease`,
    /// if nobody else holds it or the other holder's lease has run out. True when `holder`
    /// leads now. One row per name: the store decides, so no two processes lead at once
    /// beyond a clock skew.
    async fn try_lead(
        &self,
        name: &str,
        holder: &str,
        lease: Duration,
        now: Millis,
    ) -> StoreResult<bool>;
    /// Who holds the named leadership, if anyone (expired or not).
    async fn leader(&self, name: &str) -> StoreResult<Option<String>>;
    /// Gives up a leadership `holder` has (at shutdown, so another takes over at once).
    async fn resign(&self, name: &str, holder: &str) -> StoreResult<()>;
    /// Records that a run missed its SLA; false when that was already recorded.
    async fn mark_sla_missed(&self, run_id: &str, now: Millis) -> StoreResult<bool>;
    /// Counts for metrics.
    async fn stats(&self) -> StoreResult<StoreStats>;
    /// The tasks of a run in pipeline order.
    async fn task_runs(&self, run_id: &str) -> StoreResult<Vec<TaskRunRecord>>;
    /// The tasks of a run whose state changed at or after `since` (by the writer's clock;
    /// `Millis::MIN` for all), in pipeline order, without their outputs: what a coordinator
    /// watching its workers reads.
    async fn task_changes(&self, run_id: &str, since: Millis) -> StoreResult<Vec<TaskChange>>;
    /// One task of a run.
    async fn task_run(&self, run_id: &str, task_id: &str) -> StoreResult<Option<TaskRunRecord>>;
    /// The attempts of a run in creation order.
    async fn attempts(&self, run_id: &str) -> StoreResult<Vec<AttemptRecord>>;

    /// Makes `owner` the executor of a run (start, retry, recovery) and marks it running.
    async fn take_run(&self, run_id: &str, owner: &str, now: Millis) -> StoreResult<()>;
    /// Ends a run, and in the same transaction moves the incremental cursors its tasks
    /// reached (given only for a successful run).
    async fn finish_run(
        &self,
        run_id: &str,
        state: RunState,
        error: Option<&str>,
        watermarks: &[Watermark],
        now: Millis,
    ) -> StoreResult<()>;
    /// The cursor value an incremental task of a pipeline reached in its last successful
    /// run.
    async fn watermark(
        &self,
        pipeline: &str,
        task_id: &str,
    ) -> StoreResult<Option<serde_json::Value>>;
    /// Every cursor of a pipeline.
    async fn watermarks(&self, pipeline: &str) -> StoreResult<Vec<WatermarkRecord>>;
    /// Whether someone asked for a run to be cancelled (cheap; polled by its executor).
    async fn cancel_requested(&self, run_id: &str) -> StoreResult<bool>;
    /// Asks for a run to be cancelled; its executor sees the flag. Returns false if the run
    /// had already ended.
    async fn request_cancel(&self, run_id: &str) -> StoreResult<bool>;

    /// Moves pending tasks to `queued` and enqueues their next attempt, claimable now.
    async fn enqueue(&self, run_id: &str, task_ids: &[String], now: Millis) -> StoreResult<()>;
    /// Sets final states (`skipped`, `cancelled`) on tasks that are not final yet, and
    /// cancels their queued attempts. With `keep_running`, a task whose attempt a worker
    /// has claimed meanwhile is left alone: returned are the tasks left so.
    async fn finalize_tasks(
        &self,
        run_id: &str,
        keep_running: bool,
        updates: &[(String, TaskState, Option<String>)],
        now: Millis,
    ) -> StoreResult<Vec<String>>;
    /// Resets these tasks, whatever their state, to `pending` with a fresh retry budget
    /// (`cauce retry`: the engine chooses which: what did not succeed, a succeeded data
    /// task whose dataset is gone, or one task and what is downstream of it).
    async fn reset_tasks(&self, run_id: &str, task_ids: &[String]) -> StoreResult<()>;

    /// Claims up to `claim.limit` of the oldest claimable queued attempts (of one run or of
    /// any, of some queues or of all), each with a lease held by `owner`. A worker claims
    /// from its queues; a local coordinator from its run.
    async fn claim_many(
        &self,
        owner: &str,
        claim: ClaimRequest<'_>,
        now: Millis,
    ) -> StoreResult<Vec<AttemptRecord>>;

    /// Records a worker (again, after a restart with the same id).
    async fn register_worker(&self, worker: &WorkerInfo, now: Millis) -> StoreResult<()>;
    /// A worker's heartbeat, saying whether it drains.
    async fn worker_heartbeat(&self, id: &str, draining: bool, now: Millis) -> StoreResult<()>;
    /// A worker stopped cleanly.
    async fn worker_stopped(&self, id: &str, now: Millis) -> StoreResult<()>;
    /// Workers that heartbeated since `since`, or stopped since then, newest first.
    async fn workers(&self, since: Millis) -> StoreResult<Vec<WorkerRecord>>;

    /// Claims the oldest claimable queued attempt, if there is one.
    async fn claim(
        &self,
        run_id: Option<&str>,
        owner: &str,
        lease: Duration,
        now: Millis,
    ) -> StoreResult<Option<AttemptRecord>> {
        let claim = ClaimRequest {
            run_id,
            queues: None,
            tasks: None,
            lease,
            limit: 1,
        };
        Ok(self.claim_many(owner, claim, now).await?.into_iter().next())
    }
    /// Extends the leases of `owner`'s running attempts and the heartbeat of its runs: of
    /// one run (each coordinator vouches only for its own, so a run whose coordinator
    /// stopped goes stale even while the process lives on), or all of them (`None`). A
    /// run that is no longer `owner`'s (another process took it over, or it ended) gets
    /// nothing renewed, and the answer says so.
    async fn heartbeat(
        &self,
        run_id: Option<&str>,
        owner: &str,
        lease: Duration,
        now: Millis,
    ) -> StoreResult<Heartbeat>;
    /// Records an attempt's result and the task's next step, only if `owner` still holds
    /// the attempt's lease. Returns false (and changes nothing) otherwise.
    async fn complete(
        &self,
        attempt_id: i64,
        owner: &str,
        result: &AttemptResult,
        next: Next,
        now: Millis,
    ) -> StoreResult<bool>;
    /// [`Store::complete`] for each of `done` (all by `owner`), then a claim for the freed
    /// slots, in one transaction: one commit for everything a worker or coordinator finished
    /// since its last look. Returns, per completion, whether it was recorded (false: `owner`
    /// no longer holds that lease, and nothing of it changed), and the attempts claimed.
    async fn complete_and_claim(
        &self,
        owner: &str,
        done: &[Completion<'_>],
        claim: ClaimRequest<'_>,
        now: Millis,
    ) -> StoreResult<(Vec<bool>, Vec<AttemptRecord>)>;

    /// [`Store::enqueue`], then [`Store::claim_many`] on that run, in one transaction where
    /// the backend can.
    async fn enqueue_and_claim(
        &self,
        run_id: &str,
        task_ids: &[String],
        owner: &str,
        lease: Duration,
        limit: usize,
        now: Millis,
    ) -> StoreResult<Vec<AttemptRecord>> {
        self.enqueue(run_id, task_ids, now).await?;
        let claim = ClaimRequest {
            run_id: Some(run_id),
            queues: None,
            tasks: None,
            lease,
            limit,
        };
        self.claim_many(owner, claim, now).await
    }

    /// [`Store::enqueue`], then claims exactly these tasks' attempts, in one transaction
    /// where the backend can: the tasks a coordinator starts beside the upstream tasks
    /// that stream into them, whatever else is queued.
    async fn start_tasks(
        &self,
        run_id: &str,
        task_ids: &[String],
        owner: &str,
        lease: Duration,
        now: Millis,
    ) -> StoreResult<Vec<AttemptRecord>>;

    /// Marks `lost` every running attempt whose lease expired or whose owner is listed as
    /// dead (of one run, or of all), and returns them.
    async fn expire_leases(
        &self,
        run_id: Option<&str>,
        dead_owners: &[String],
        now: Millis,
    ) -> StoreResult<Vec<AttemptRecord>>;
    /// Applies the next step to a task whose attempt was lost.
    async fn resolve_lost(
        &self,
        run_id: &str,
        task_id: &str,
        error: &str,
        next: Next,
        now: Millis,
    ) -> StoreResult<()>;
}

/// Opens a store from a URL: `sqlite:PATH` (created if missing) or `postgres://...`.
pub async fn open(url: &str) -> StoreResult<std::sync::Arc<dyn Store>> {
    Ok(std::sync::Arc::new(sql::SqlStore::open(url).await?))
}
