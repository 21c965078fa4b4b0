//! The store conformance suite: the same tests against SQLite and against the PostgreSQL
//! server on localhost (`CAUCE_TEST_PG`, default postgres://postgres@127.0.0.1:5432/test),
//! each PostgreSQL test in a schema of its own.

use cauce::state::{AttemptState, RunState, TaskState};
use cauce::store::{self, AttemptResult, NewRun, NewTask, Next, Store, WorkerInfo};
use std::sync::Arc;
use std::time::Duration;

fn pg_url() -> String {
    std::env::var("CAUCE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

struct Backend {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("state.db").display());
    Backend {
        store: store::open(&url).await.unwrap(),
        _dir: Some(dir),
    }
}

/// A fresh schema on the test PostgreSQL server; the store connects with it as search_path.
pub async fn postgres_url() -> String {
    sqlx::any::install_default_drivers();
    let base = pg_url();
    let schema = format!(
        "cauce_test_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let pool = sqlx::AnyPool::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be running for these tests ({base}): {e}"));
    // Schemas left by test processes that have ended are dropped, so the shared test
    // database does not fill up run after run.
    let names: Vec<(String,)> =
        sqlx::query_as("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'cauce_test_%'")
            .fetch_all(&pool)
            .await
            .unwrap();
    for (name,) in names {
        let pid = name.split('_').nth(2).and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| !crate::common::alive(p)) {
            // The name comes from pg_namespace and matched our own pattern.
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {name} CASCADE"
            )))
            .execute(&pool)
            .await;
        }
    }
    // The schema name is made here from a pid and a random number.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

async fn postgres() -> Backend {
    Backend {
        store: store::open(&postgres_url().await).await.unwrap(),
        _dir: None,
    }
}

fn new_run(id: &str, tasks: &[&str]) -> NewRun {
    NewRun {
        id: id.into(),
        pipeline: "p".into(),
        pipeline_file: "p.yaml".into(),
        base_dir: ".".into(),
        source: "tasks: {}".into(),
        params: serde_json::json!({"day": "2024-01-01"}),
        tasks: tasks
            .iter()
            .map(|t| {
                // `name@queue` puts a task on a queue.
                let (id, queue) = t.split_once('@').unwrap_or((t, "default"));
                NewTask {
                    id: id.into(),
                    critical: true,
                    queue: queue.into(),
                }
            })
            .collect(),
        options: serde_json::json!({"max_workers": 2}),
        logical_date: "2024-01-01T00:00:00Z".into(),
        trigger: "manual".into(),
        parent: None,
        owner: "me".into(),
    }
}

const LEASE: Duration = Duration::from_secs(30);

async fn runs_round_trip(s: &dyn Store) {
    s.create_run(&new_run("r1", &["a", "b"]), 1000)
        .await
        .unwrap();
    let r = s.get_run("r1").await.unwrap().unwrap();
    assert_eq!(r.state, RunState::Running);
    assert_eq!(r.params["day"], "2024-01-01");
    assert_eq!(r.selection, vec!["a", "b"]);
    let tasks = s.task_runs("r1").await.unwrap();
    assert_eq!(
        tasks.iter().map(|t| t.task_id.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    assert!(tasks.iter().all(|t| t.state == TaskState::Pending));
    s.finish_run("r1", RunState::Partial, Some("x"), &[], 2000)
        .await
        .unwrap();
    let r = s.get_run("r1").await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.ended_at, r.error.as_deref()),
        (RunState::Partial, Some(2000), Some("x"))
    );
    assert!(s.get_run("nope").await.unwrap().is_none());
    s.create_run(&new_run("r2", &["a"]), 3000).await.unwrap();
    let listed = s.list_runs(None, None, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec!["r2", "r1"]
    );
    let partial = s
        .list_runs(Some("p"), Some(RunState::Partial), 10)
        .await
        .unwrap();
    assert_eq!(partial.len(), 1);
    assert!(
        !s.request_cancel("r1").await.unwrap(),
        "an ended run cannot be cancelled"
    );
    assert!(s.request_cancel("r2").await.unwrap());
    assert!(s.get_run("r2").await.unwrap().unwrap().cancel_requested);
}

async fn queue_claim_complete(s: &dyn Store) {
    s.create_run(&new_run("q1", &["a", "b"]), 0).await.unwrap();
    assert!(
        s.claim(Some("q1"), "w1", LEASE, 10)
            .await
            .unwrap()
            .is_none(),
        "nothing enqueued yet"
    );
    s.enqueue("q1", &["a".into(), "b".into()], 10)
        .await
        .unwrap();
    // Enqueuing twice does not duplicate attempts.
    s.enqueue("q1", &["a".into()], 11).await.unwrap();
    let a = s.claim(Some("q1"), "w1", LEASE, 20).await.unwrap().unwrap();
    let b = s.claim(Some("q1"), "w2", LEASE, 20).await.unwrap().unwrap();
    assert_eq!(
        (a.task_id.as_str(), a.number, a.state),
        ("a", 1, AttemptState::Running)
    );
    assert_eq!(b.task_id, "b");
    assert!(s
        .claim(Some("q1"), "w1", LEASE, 20)
        .await
        .unwrap()
        .is_none());
    let ok = AttemptResult {
        state: Some(AttemptState::Success),
        output: Some(serde_json::json!({"rows": 3})),
        exit_code: Some(0),
        peak_rss_kb: Some(1234),
        ..Default::default()
    };
    // Only the lease holder may complete.
    assert!(!s
        .complete(a.id, "w2", &ok, Next::Final(TaskState::Success), 30)
        .await
        .unwrap());
    assert!(s
        .complete(a.id, "w1", &ok, Next::Final(TaskState::Success), 30)
        .await
        .unwrap());
    // Completing twice is rejected (idempotent recording).
    assert!(!s
        .complete(a.id, "w1", &ok, Next::Final(TaskState::Success), 31)
        .await
        .unwrap());
    let tasks = s.task_runs("q1").await.unwrap();
    assert_eq!(tasks[0].state, TaskState::Success);
    assert_eq!(tasks[0].output, Some(serde_json::json!({"rows": 3})));
    assert_eq!(tasks[1].state, TaskState::Running);
    let attempts = s.attempts("q1").await.unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].peak_rss_kb, Some(1234));
}

async fn retries_wait_for_their_time(s: &dyn Store) {
    s.create_run(&new_run("t1", &["a"]), 0).await.unwrap();
    s.enqueue("t1", &["a".into()], 0).await.unwrap();
    let a1 = s.claim(Some("t1"), "w", LEASE, 0).await.unwrap().unwrap();
    let failed = AttemptResult {
        state: Some(AttemptState::Failed),
        error: Some("boom".into()),
        exit_code: Some(1),
        ..Default::default()
    };
    assert!(s
        .complete(a1.id, "w", &failed, Next::Retry { available_at: 500 }, 100)
        .await
        .unwrap());
    assert_eq!(
        s.task_runs("t1").await.unwrap()[0].state,
        TaskState::Retrying
    );
    assert!(
        s.claim(Some("t1"), "w", LEASE, 499)
            .await
            .unwrap()
            .is_none(),
        "not before its delay"
    );
    let a2 = s.claim(Some("t1"), "w", LEASE, 500).await.unwrap().unwrap();
    assert_eq!(a2.number, 2);
    let t = &s.task_runs("t1").await.unwrap()[0];
    assert_eq!((t.state, t.attempts), (TaskState::Running, 2));
}

async fn leases_expire_and_late_results_are_rejected(s: &dyn Store) {
    s.create_run(&new_run("l1", &["a", "b"]), 0).await.unwrap();
    s.enqueue("l1", &["a".into(), "b".into()], 0).await.unwrap();
    let a = s
        .claim(Some("l1"), "dead", Duration::from_millis(100), 0)
        .await
        .unwrap()
        .unwrap();
    let b = s
        .claim(Some("l1"), "alive", Duration::from_millis(100), 0)
        .await
        .unwrap()
        .unwrap();
    // "alive" heartbeats, "dead" does not.
    assert_eq!(
        s.heartbeat(None, "alive", Duration::from_millis(1000), 90)
            .await
            .unwrap()
            .leases,
        1
    );
    assert_eq!(
        s.heartbeat(
            Some("another-run"),
            "alive",
            Duration::from_millis(1000),
            95
        )
        .await
        .unwrap()
        .leases,
        0,
        "a heartbeat for one run renews nothing of another"
    );
    let lost = s.expire_leases(None, &[], 200).await.unwrap();
    assert_eq!(lost.iter().map(|l| l.id).collect::<Vec<_>>(), vec![a.id]);
    assert_eq!(lost[0].state, AttemptState::Lost);
    let late = AttemptResult {
        state: Some(AttemptState::Success),
        ..Default::default()
    };
    assert!(
        !s.complete(a.id, "dead", &late, Next::Final(TaskState::Success), 300)
            .await
            .unwrap(),
        "late result of a lost lease"
    );
    assert!(s
        .complete(b.id, "alive", &late, Next::Final(TaskState::Success), 300)
        .await
        .unwrap());
    s.resolve_lost("l1", "a", "lost", Next::Retry { available_at: 300 }, 300)
        .await
        .unwrap();
    let again = s
        .claim(Some("l1"), "alive", LEASE, 300)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.task_id.as_str(), again.number), ("a", 2));
    // An owner known to be dead loses its attempts at once, lease or not.
    let lost = s
        .expire_leases(Some("l1"), &["alive".to_string()], 301)
        .await
        .unwrap();
    assert_eq!(lost.len(), 1);
}

async fn finalize_and_reset(s: &dyn Store) {
    s.create_run(&new_run("f1", &["a", "b", "c"]), 0)
        .await
        .unwrap();
    s.enqueue("f1", &["a".into(), "b".into()], 0).await.unwrap();
    let a = s.claim(Some("f1"), "w", LEASE, 0).await.unwrap().unwrap();
    let ok = AttemptResult {
        state: Some(AttemptState::Success),
        ..Default::default()
    };
    s.complete(a.id, "w", &ok, Next::Final(TaskState::Success), 1)
        .await
        .unwrap();
    s.finalize_tasks(
        "f1",
        false,
        &[
            ("a".into(), TaskState::Cancelled, None),
            (
                "b".into(),
                TaskState::Cancelled,
                Some("run cancelled".into()),
            ),
            ("c".into(), TaskState::Skipped, Some("upstream".into())),
        ],
        2,
    )
    .await
    .unwrap();
    let t = s.task_runs("f1").await.unwrap();
    assert_eq!(
        t[0].state,
        TaskState::Success,
        "final states are not overwritten"
    );
    assert_eq!(t[1].state, TaskState::Cancelled);
    assert_eq!(t[2].state, TaskState::Skipped);
    assert!(
        s.claim(Some("f1"), "w", LEASE, 3).await.unwrap().is_none(),
        "queued attempt of a cancelled task is gone"
    );
    s.reset_tasks("f1", &["b".into(), "c".into()])
        .await
        .unwrap();
    let t = s.task_runs("f1").await.unwrap();
    assert_eq!(t[0].state, TaskState::Success, "a task not named is kept");
    assert_eq!(
        (t[1].state, t[1].budget_base, t[1].error.as_deref()),
        (TaskState::Pending, 1, None)
    );
    // A succeeded task is reset when named (its dataset is gone, or it is run again).
    s.reset_tasks("f1", &["a".into()]).await.unwrap();
    let t = s.task_runs("f1").await.unwrap();
    assert_eq!(
        (t[0].state, t[0].budget_base, t[0].output.as_ref()),
        (TaskState::Pending, 1, None)
    );
    s.take_run("f1", "other", 5).await.unwrap();
    assert_eq!(
        s.get_run("f1").await.unwrap().unwrap().owner.as_deref(),
        Some("other")
    );
}

async fn concurrent_claims_never_share_an_attempt(s: Arc<dyn Store>) {
    let tasks: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
    let refs: Vec<&str> = tasks.iter().map(|s| s.as_str()).collect();
    s.create_run(&new_run("c1", &refs), 0).await.unwrap();
    s.enqueue("c1", &tasks, 0).await.unwrap();
    let mut handles = Vec::new();
    for w in 0..4 {
        let s = Arc::clone(&s);
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(a) = s.claim(None, &format!("w{w}"), LEASE, 1).await.unwrap() {
                got.push(a.id);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!(
        (n, all.len()),
        (40, 40),
        "each attempt claimed exactly once"
    );
}

/// The states of run `run_id`'s tasks, in task order.
async fn task_states(s: &dyn Store, run_id: &str) -> Vec<TaskState> {
    let runs = s.task_runs(run_id).await.unwrap();
    runs.iter().map(|t| t.state).collect()
}

/// A coordinator's claim: attempts of one run.
fn run_claim(run_id: &str, limit: usize) -> store::ClaimRequest<'_> {
    store::ClaimRequest {
        run_id: Some(run_id),
        queues: None,
        tasks: None,
        lease: LEASE,
        limit,
    }
}

/// A worker's claim: attempts of any run on its queues.
fn queue_claim(queues: &[String], limit: usize) -> store::ClaimRequest<'_> {
    store::ClaimRequest {
        run_id: None,
        queues: Some(queues),
        tasks: None,
        lease: LEASE,
        limit,
    }
}

async fn claim_many_takes_up_to_the_limit_in_queue_order(s: &dyn Store) {
    s.create_run(&new_run("m1", &["a", "b", "c"]), 0)
        .await
        .unwrap();
    // Enqueued together, they queue in pipeline order, whatever order they are given in.
    s.enqueue("m1", &["c".into(), "a".into(), "b".into()], 0)
        .await
        .unwrap();
    let two = s.claim_many("w", run_claim("m1", 2), 1).await.unwrap();
    assert_eq!(
        two.iter().map(|a| a.task_id.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    let rest = s.claim_many("w", run_claim("m1", 10), 1).await.unwrap();
    assert_eq!(
        rest.iter().map(|a| a.task_id.as_str()).collect::<Vec<_>>(),
        vec!["c"]
    );
    assert!(s
        .claim_many("w", run_claim("m1", 10), 1)
        .await
        .unwrap()
        .is_empty());
    let states = task_states(s, "m1").await;
    assert_eq!(states, vec![TaskState::Running; 3]);
}

/// The tasks a coordinator starts beside their streaming upstream are claimed themselves,
/// not older attempts that happen to be queued.
async fn started_tasks_are_claimed_ahead_of_older_queued_ones(s: &dyn Store) {
    s.create_run(&new_run("st", &["a", "b", "c"]), 0)
        .await
        .unwrap();
    s.enqueue("st", &["a".into()], 0).await.unwrap();
    let got = s
        .start_tasks("st", &["c".into()], "w", LEASE, 1)
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|a| a.task_id.as_str()).collect::<Vec<_>>(),
        vec!["c"]
    );
    let states = task_states(s, "st").await;
    assert_eq!(
        states,
        vec![TaskState::Queued, TaskState::Pending, TaskState::Running]
    );
    // The older one is still there for the next ordinary claim.
    let next = s.claim_many("w", run_claim("st", 5), 2).await.unwrap();
    assert_eq!(
        next.iter().map(|a| a.task_id.as_str()).collect::<Vec<_>>(),
        vec!["a"]
    );
}

async fn results_and_claims_share_a_transaction(s: &dyn Store) {
    s.create_run(&new_run("x1", &["a", "b", "c"]), 0)
        .await
        .unwrap();
    let first = s
        .enqueue_and_claim("x1", &["a".into(), "b".into()], "w", LEASE, 1, 0)
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|a| a.task_id.as_str()).collect::<Vec<_>>(),
        vec!["a"]
    );
    let ok = AttemptResult {
        state: Some(AttemptState::Success),
        ..Default::default()
    };
    let claim = store::ClaimRequest {
        run_id: Some("x1"),
        queues: None,
        tasks: None,
        lease: LEASE,
        limit: 1,
    };
    // A result from someone who does not hold the lease is rejected and claims nothing.
    let (accepted, claimed) = s
        .complete_and_claim(
            "intruder",
            &[store::Completion {
                attempt_id: first[0].id,
                result: &ok,
                next: Next::Final(TaskState::Success),
            }],
            claim,
            1,
        )
        .await
        .unwrap();
    assert!(accepted == [false] && claimed.is_empty());
    assert_eq!(
        s.task_runs("x1").await.unwrap()[1].state,
        TaskState::Queued,
        "b is still queued"
    );
    let (accepted, claimed) = s
        .complete_and_claim(
            "w",
            &[store::Completion {
                attempt_id: first[0].id,
                result: &ok,
                next: Next::Final(TaskState::Success),
            }],
            claim,
            1,
        )
        .await
        .unwrap();
    assert_eq!(accepted, [true]);
    assert_eq!(
        claimed
            .iter()
            .map(|a| a.task_id.as_str())
            .collect::<Vec<_>>(),
        vec!["b"]
    );
    let states = task_states(s, "x1").await;
    assert_eq!(
        states,
        vec![TaskState::Success, TaskState::Running, TaskState::Pending]
    );
}

async fn schedule_marks_move_by_compare_and_set(s: &dyn Store) {
    assert!(s.schedule_marks().await.unwrap().is_empty());
    // First sight: the mark is set, with or without runs.
    assert!(s.fire_schedule("p", None, 1000, &[], 1000).await.unwrap());
    assert!(
        !s.fire_schedule("p", None, 1500, &[new_run("lost", &["a"])], 1500)
            .await
            .unwrap(),
        "a second first sight loses"
    );
    assert!(
        s.get_run("lost").await.unwrap().is_none(),
        "the loser wrote nothing"
    );
    let mut fired = new_run("f1", &["a"]);
    fired.trigger = "schedule".into();
    assert!(s
        .fire_schedule("p", Some(1000), 2000, &[fired], 2000)
        .await
        .unwrap());
    let mut stale = new_run("f2", &["a"]);
    stale.trigger = "schedule".into();
    assert!(
        !s.fire_schedule("p", Some(1000), 3000, &[stale], 3000)
            .await
            .unwrap(),
        "a scheduler with an old mark fires nothing"
    );
    assert!(s.get_run("f2").await.unwrap().is_none());
    assert_eq!(s.get_run("f1").await.unwrap().unwrap().trigger, "schedule");
    assert_eq!(s.schedule_marks().await.unwrap()["p"], 2000);
}

async fn pages_filters_sla_marks_and_stats(s: &dyn Store) {
    for (i, trigger) in ["api", "schedule", "api", "schedule", "api"]
        .iter()
        .enumerate()
    {
        let mut r = new_run(&format!("r{i}"), &["a", "b"]);
        r.trigger = trigger.to_string();
        s.create_run(&r, 1000 + i as i64).await.unwrap();
    }
    s.finish_run("r1", RunState::Failed, None, &[], 5000)
        .await
        .unwrap();
    let page = |before: Option<&str>, trigger: Option<&str>, limit| store::RunQuery {
        pipeline: Some("p".into()),
        state: None,
        trigger: trigger.map(String::from),
        before: before.map(String::from),
        ended: false,
        limit,
    };
    let ids = |v: Vec<store::RunRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.runs_page(&page(None, None, 2)).await.unwrap()),
        ["r4", "r3"]
    );
    assert_eq!(
        ids(s.runs_page(&page(Some("r3"), None, 2)).await.unwrap()),
        ["r2", "r1"]
    );
    assert_eq!(
        ids(s.runs_page(&page(Some("r1"), None, 2)).await.unwrap()),
        ["r0"]
    );
    assert_eq!(
        ids(s
            .runs_page(&page(None, Some("schedule"), 10))
            .await
            .unwrap()),
        ["r3", "r1"]
    );
    assert!(s.mark_sla_missed("r3", 7000).await.unwrap());
    assert!(!s.mark_sla_missed("r3", 8000).await.unwrap(), "marked once");
    assert_eq!(
        s.get_run("r3").await.unwrap().unwrap().sla_missed_at,
        Some(7000)
    );
    s.enqueue("r0", &["a".to_string()], 1000).await.unwrap();
    let stats = s.stats().await.unwrap();
    let runs = |state| {
        stats
            .runs
            .iter()
            .find(|(p, st, _)| p == "p" && *st == state)
            .map(|r| r.2)
    };
    assert_eq!(runs(RunState::Running), Some(4));
    assert_eq!(runs(RunState::Failed), Some(1));
    assert_eq!(stats.queued_attempts, 1);
    let pending: u64 = stats
        .tasks
        .iter()
        .filter(|(st, _)| *st == TaskState::Pending)
        .map(|t| t.1)
        .sum();
    assert_eq!(pending, 9, "{:?}", stats.tasks);
}

async fn one_leader_at_a_time(s: &dyn Store) {
    let lease = Duration::from_millis(1000);
    assert!(s.try_lead("scheduler", "a", lease, 10_000).await.unwrap());
    assert!(
        !s.try_lead("scheduler", "b", lease, 10_500).await.unwrap(),
        "a holds it"
    );
    assert!(
        s.try_lead("scheduler", "a", lease, 10_900).await.unwrap(),
        "a renews"
    );
    assert!(
        !s.try_lead("scheduler", "b", lease, 11_800).await.unwrap(),
        "renewed until 11,900"
    );
    assert!(
        s.try_lead("scheduler", "b", lease, 12_000).await.unwrap(),
        "a's lease ran out"
    );
    assert_eq!(s.leader("scheduler").await.unwrap().as_deref(), Some("b"));
    assert!(!s.try_lead("scheduler", "a", lease, 12_100).await.unwrap());
    s.resign("scheduler", "a").await.unwrap();
    assert_eq!(
        s.leader("scheduler").await.unwrap().as_deref(),
        Some("b"),
        "only the holder resigns"
    );
    s.resign("scheduler", "b").await.unwrap();
    assert!(s.leader("scheduler").await.unwrap().is_none());
    assert!(s.try_lead("scheduler", "a", lease, 12_200).await.unwrap());
}

async fn watermarks_move_with_the_run_that_reached_them(s: &dyn Store) {
    use cauce::store::Watermark;
    let w = |task: &str, v: serde_json::Value| Watermark {
        task_id: task.into(),
        value: v,
    };
    assert_eq!(s.watermark("p", "a").await.unwrap(), None);
    s.create_run(&new_run("r1", &["a"]), 1000).await.unwrap();
    s.finish_run(
        "r1",
        RunState::Success,
        None,
        &[w("a", serde_json::json!("2024-01-02T10:00:00"))],
        2000,
    )
    .await
    .unwrap();
    assert_eq!(
        s.watermark("p", "a").await.unwrap(),
        Some(serde_json::json!("2024-01-02T10:00:00"))
    );
    // A later run moves it again; numbers stay numbers.
    s.create_run(&new_run("r2", &["a", "b"]), 3000)
        .await
        .unwrap();
    s.finish_run(
        "r2",
        RunState::Success,
        None,
        &[
            w("a", serde_json::json!("2024-01-03T00:00:00")),
            w("b", serde_json::json!(42)),
        ],
        4000,
    )
    .await
    .unwrap();
    let all = s.watermarks("p").await.unwrap();
    assert_eq!(
        all.iter()
            .map(|r| (r.task_id.as_str(), r.value.clone(), r.run_id.as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("a", serde_json::json!("2024-01-03T00:00:00"), "r2"),
            ("b", serde_json::json!(42), "r2")
        ]
    );
    assert!(s.watermarks("other").await.unwrap().is_empty());
}

macro_rules! conformance {
    ($($name:ident),*) => {
        mod sqlite_backend {
            use super::*;
            $(#[tokio::test] async fn $name() { let b = sqlite().await; super::$name(b.store.as_ref()).await; })*
            #[tokio::test] async fn concurrent_claims() { let b = sqlite().await; super::concurrent_claims_never_share_an_attempt(b.store.clone()).await; }
        }
        mod postgres_backend {
            use super::*;
            $(#[tokio::test] async fn $name() { let b = postgres().await; super::$name(b.store.as_ref()).await; })*
            #[tokio::test] async fn concurrent_claims() { let b = postgres().await; super::concurrent_claims_never_share_an_attempt(b.store.clone()).await; }
        }
    };
}

/// Workers claim only from their queues; a retry stays on its task's queue.
async fn workers_claim_from_their_queues(s: &dyn Store) {
    s.create_run(&new_run("wq", &["a", "b@gpu", "c@etl"]), 0)
        .await
        .unwrap();
    s.enqueue("wq", &["a".into(), "b".into(), "c".into()], 10)
        .await
        .unwrap();
    let etl = ["etl".to_string()];
    let got = s.claim_many("w1", queue_claim(&etl, 5), 20).await.unwrap();
    assert_eq!(
        got.iter().map(|a| a.task_id.as_str()).collect::<Vec<_>>(),
        ["c"]
    );
    let both = ["default".to_string(), "gpu".to_string()];
    let got = s.claim_many("w2", queue_claim(&both, 5), 20).await.unwrap();
    assert_eq!(
        got.iter().map(|a| a.task_id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert!(s
        .claim_many("w3", queue_claim(&[], 5), 20)
        .await
        .unwrap()
        .is_empty());
    // b fails and is retried: the new attempt is on `gpu` again.
    let b = got.iter().find(|a| a.task_id == "b").unwrap();
    let failed = AttemptResult {
        state: Some(AttemptState::Failed),
        error: Some("boom".into()),
        ..Default::default()
    };
    assert!(s
        .complete(b.id, "w2", &failed, Next::Retry { available_at: 30 }, 25)
        .await
        .unwrap());
    assert!(s
        .claim_many("w1", queue_claim(&etl, 5), 40)
        .await
        .unwrap()
        .is_empty());
    let gpu = ["gpu".to_string()];
    let again = s.claim_many("w4", queue_claim(&gpu, 5), 40).await.unwrap();
    assert_eq!((again[0].task_id.as_str(), again[0].number), ("b", 2));
}

/// Workers register, heartbeat, drain and stop; the listing counts what each holds.
async fn workers_register_and_are_listed(s: &dyn Store) {
    let info = |id: &str| WorkerInfo {
        id: id.into(),
        host: "h".into(),
        pid: 7,
        slots: 4,
        queues: vec!["default".into(), "etl".into()],
        labels: vec!["zone=eu".into()],
        version: "x".into(),
    };
    s.register_worker(&info("w1"), 100).await.unwrap();
    s.register_worker(&info("w2"), 100).await.unwrap();
    s.create_run(&new_run("wl", &["a", "b"]), 0).await.unwrap();
    s.enqueue("wl", &["a".into(), "b".into()], 10)
        .await
        .unwrap();
    let q = ["default".to_string()];
    s.claim_many("w1", queue_claim(&q, 2), 110).await.unwrap();
    s.worker_heartbeat("w1", true, 200).await.unwrap();
    s.worker_stopped("w2", 150).await.unwrap();
    let list = s.workers(0).await.unwrap();
    let w1 = list.iter().find(|w| w.info.id == "w1").unwrap();
    assert_eq!((w1.running, w1.draining, w1.heartbeat_at), (2, true, 200));
    assert_eq!(w1.info.queues, ["default", "etl"]);
    assert_eq!(w1.info.labels, ["zone=eu"]);
    let w2 = list.iter().find(|w| w.info.id == "w2").unwrap();
    assert_eq!((w2.running, w2.stopped_at), (0, Some(150)));
    // Only those heard of since a time.
    assert_eq!(s.workers(180).await.unwrap().len(), 1);
    // A restart with the same id starts afresh.
    s.register_worker(&info("w2"), 300).await.unwrap();
    let w2 = s
        .workers(250)
        .await
        .unwrap()
        .into_iter()
        .find(|w| w.info.id == "w2")
        .unwrap();
    assert_eq!((w2.stopped_at, w2.started_at), (None, 300));
}

/// A coordinator stopping a run on workers leaves alone a task a worker has claimed, and
/// sees changes by time.
async fn stopping_leaves_claimed_tasks_and_changes_are_read_by_time(s: &dyn Store) {
    s.create_run(&new_run("k1", &["a", "b", "c"]), 0)
        .await
        .unwrap();
    s.enqueue("k1", &["a".into(), "b".into()], 10)
        .await
        .unwrap();
    let a = s.claim(Some("k1"), "w", LEASE, 20).await.unwrap().unwrap();
    assert_eq!(a.task_id, "a");
    let why = Some("not run".to_string());
    let kept = s
        .finalize_tasks(
            "k1",
            true,
            &[
                ("a".into(), TaskState::Skipped, why.clone()),
                ("b".into(), TaskState::Skipped, why.clone()),
                ("c".into(), TaskState::Skipped, why.clone()),
            ],
            30,
        )
        .await
        .unwrap();
    assert_eq!(kept, ["a"], "the claimed task is left running");
    let t = s.task_runs("k1").await.unwrap();
    assert_eq!(
        t.iter().map(|t| t.state).collect::<Vec<_>>(),
        [TaskState::Running, TaskState::Skipped, TaskState::Skipped]
    );
    assert!(s.claim(Some("k1"), "w", LEASE, 31).await.unwrap().is_none());
    // Changes at or after a time, by the writers' clocks.
    let ok = AttemptResult {
        state: Some(AttemptState::Success),
        ..Default::default()
    };
    assert!(s
        .complete(a.id, "w", &ok, Next::Final(TaskState::Success), 40)
        .await
        .unwrap());
    let changed = |since| async move {
        s.task_changes("k1", since)
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.task_id, c.state))
            .collect::<Vec<_>>()
    };
    assert_eq!(changed(40).await, [("a".to_string(), TaskState::Success)]);
    assert_eq!(changed(31).await.len(), 1);
    assert_eq!(changed(30).await.len(), 3);
    assert_eq!(changed(i64::MIN).await.len(), 3);
    // Forced (the end of a cancelled run): nothing is left running.
    s.create_run(&new_run("k2", &["a"]), 0).await.unwrap();
    s.enqueue("k2", &["a".into()], 10).await.unwrap();
    s.claim(Some("k2"), "w", LEASE, 20).await.unwrap().unwrap();
    let kept = s
        .finalize_tasks("k2", false, &[("a".into(), TaskState::Cancelled, None)], 30)
        .await
        .unwrap();
    assert!(kept.is_empty());
    assert_eq!(
        s.task_runs("k2").await.unwrap()[0].state,
        TaskState::Cancelled
    );
}

conformance!(
    started_tasks_are_claimed_ahead_of_older_queued_ones,
    stopping_leaves_claimed_tasks_and_changes_are_read_by_time,
    runs_round_trip,
    queue_claim_complete,
    retries_wait_for_their_time,
    leases_expire_and_late_results_are_rejected,
    finalize_and_reset,
    claim_many_takes_up_to_the_limit_in_queue_order,
    results_and_claims_share_a_transaction,
    schedule_marks_move_by_compare_and_set,
    pages_filters_sla_marks_and_stats,
    one_leader_at_a_time,
    watermarks_move_with_the_run_that_reached_them,
    workers_claim_from_their_queues,
    workers_register_and_are_listed
);

/// A store made by the first release (schema 1) is upgraded in place, its runs kept.
#[tokio::test]
async fn a_schema_1_store_is_upgraded_in_place() {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        let v1 = include_str!("../../src/store/migrations/sqlite_v1.sql");
        for stmt in v1.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            sqlx::query(sqlx::AssertSqlSafe(stmt))
                .execute(&pool)
                .await
                .unwrap();
        }
        sqlx::query("INSERT INTO cauce_meta (key, value) VALUES ('schema_version', '1')")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO runs (id, pipeline, pipeline_file, base_dir, source, state, params, selection, options, logical_date, trigger_kind, created_at) VALUES ('old', 'p', 'p.yaml', '.', 'tasks: {}', 'success', '{}', '[]', '{}', '2024-01-01T00:00:00Z', 'manual', 1)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let s = store::open(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    let old = s.get_run("old").await.unwrap().unwrap();
    assert_eq!((old.state, old.sla_missed_at), (RunState::Success, None));
    assert!(s.fire_schedule("p", None, 1, &[], 1).await.unwrap());
    drop(s);
    // Opening it again changes nothing.
    let s = store::open(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    assert_eq!(s.schedule_marks().await.unwrap()["p"], 1);
}

#[tokio::test]
async fn bad_store_urls_are_explained() {
    let e = store::open("mysql://x").await.unwrap_err().to_string();
    assert!(e.contains("sqlite:") && e.contains("postgres://"), "{e}");
}
