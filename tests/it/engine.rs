//! Engine behaviour through the real binary: ordering, retries, timeouts, critical and
//! non-critical failures, triggers, cancellation (Ctrl-C and `cauce cancel`) and recovery
//! after `kill -9`.

use crate::common::*;
use std::time::{Duration, Instant};

#[test]
fn runs_a_dag_in_order_and_writes_a_report() {
    let p = Project::new();
    p.pipeline(
        "p",
        "tasks:\n  a: echo a >> order.txt\n  b:\n    run: echo b >> order.txt\n    depends_on: [a]\n  c:\n    run: echo c >> order.txt\n    depends_on: [b]\n",
    );
    let r = p.run(&["run", "p", "--json", "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(p.read("order.txt"), "a\nb\nc\n");
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["status"], "success");
    assert_eq!(
        report["execution_order"],
        serde_json::json!(["a", "b", "c"])
    );
    let id = report["execution_id"].as_str().unwrap();
    assert!(p.path().join(format!(".cauce/reports/{id}.json")).is_file());
    let a = &report["results"]["a"];
    assert_eq!(a["status"], "success");
    assert_eq!(a["attempts"][0]["exit_code"], 0);
    assert!(a["attempts"][0]["peak_memory_kb"].as_i64().unwrap() > 0);
    assert!(a["duration"].as_f64().is_some());
}

#[test]
fn independent_tasks_run_in_parallel_up_to_max_workers() {
    let p = Project::new();
    // Four tasks of 1 s each: with 2 workers the run takes about 2 s, not 4 and not 1.
    let mut yaml = String::from("tasks:\n");
    for i in 0..4 {
        yaml.push_str(&format!("  t{i}: sleep 1\n"));
    }
    p.pipeline("par", &yaml);
    let start = Instant::now();
    let r = p.run(&["run", "par", "--max-workers", "2", "-q"]);
    let took = start.elapsed();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        took >= Duration::from_millis(1900),
        "{took:?}: more than 2 ran at once"
    );
    assert!(
        took < Duration::from_millis(3800),
        "{took:?}: tasks did not overlap"
    );
}

#[test]
fn failed_attempts_are_retried_with_their_policy() {
    let p = Project::new();
    // Fails twice, then succeeds.
    p.pipeline(
        "flaky",
        "tasks:\n  t:\n    run: echo x >> tries; test $(wc -l < tries) -ge 3\n    retries: 3\n    retry_delay: 200ms\n    backoff: exponential\n",
    );
    let start = Instant::now();
    let r = p.run(&["run", "flaky"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Delays of about 200 ms and 400 ms.
    assert!(start.elapsed() >= Duration::from_millis(600));
    assert!(r.stderr.contains("attempt 1 failed"), "{}", r.stderr);
    let id = latest_run(&p);
    let s = p.status(&id);
    let attempts: Vec<&str> = s["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["state"].as_str().unwrap())
        .collect();
    assert_eq!(attempts, vec!["failed", "failed", "success"]);
    assert_eq!(s["tasks"][0]["attempts"], 3);
}

#[test]
fn retries_run_out_and_the_run_fails() {
    let p = Project::new();
    p.pipeline(
        "bad",
        "tasks:\n  t:\n    run: exit 7\n    retries: 1\n    retry_delay: 10ms\n",
    );
    let r = p.run(&["run", "bad"]);
    assert_eq!(r.code, 1);
    let id = latest_run(&p);
    let s = p.status(&id);
    assert_eq!(s["run"]["state"], "failed");
    assert_eq!(s["tasks"][0]["error"], "exited with code 7");
    assert_eq!(s["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(s["attempts"][1]["exit_code"], 7);
}

#[test]
fn a_timeout_kills_the_whole_process_group() {
    let p = Project::new();
    p.pipeline(
        "slow",
        "tasks:\n  t:\n    run: sleep 60 & echo $! > child.pid; sleep 60\n    timeout: 500ms\n",
    );
    let start = Instant::now();
    let r = p.run(&["run", "slow"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    let id = latest_run(&p);
    let s = p.status(&id);
    assert!(
        s["tasks"][0]["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 500ms"),
        "{s}"
    );
    let child: i32 = p.read("child.pid").trim().parse().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !alive(child),
        "the background child {child} survived the timeout"
    );
}

#[test]
fn a_critical_failure_stops_the_run() {
    let p = Project::new();
    p.pipeline(
        "crit",
        "tasks:\n  boom: exit 1\n  later1: touch later1\n  later2: touch later2\n",
    );
    let r = p.run(&["run", "crit", "--max-workers", "1"]);
    assert_eq!(r.code, 1);
    let id = latest_run(&p);
    let states = p.task_states(&id);
    assert_eq!(states["boom"], "failed");
    assert_eq!(states["later1"], "skipped");
    assert_eq!(states["later2"], "skipped");
    assert!(
        !p.path().join("later1").exists(),
        "nothing new starts after a critical failure"
    );
    assert_eq!(p.status(&id)["run"]["state"], "failed");
}

#[test]
fn a_non_critical_failure_skips_its_dependents_and_makes_the_run_partial() {
    let p = Project::new();
    p.pipeline(
        "partial",
        "tasks:\n  optional:\n    run: exit 1\n    critical: false\n  after:\n    run: touch after\n    depends_on: [optional]\n  other: touch other\n  cleanup:\n    run: touch cleanup\n    depends_on: [optional]\n    trigger: one_failed\n  report:\n    run: touch report\n    depends_on: [optional, other]\n    trigger: all_done\n",
    );
    let r = p.run(&["run", "partial"]);
    assert_eq!(r.code, 1);
    let id = latest_run(&p);
    let states = p.task_states(&id);
    assert_eq!(states["optional"], "failed");
    assert_eq!(states["after"], "skipped");
    assert_eq!(states["other"], "success");
    assert_eq!(
        states["cleanup"], "success",
        "one_failed runs after a failure"
    );
    assert_eq!(
        states["report"], "success",
        "all_done runs whatever happened"
    );
    assert_eq!(p.status(&id)["run"]["state"], "partial");
}

#[test]
fn continue_on_failure_treats_every_task_as_non_critical() {
    let p = Project::new();
    p.pipeline("cof", "tasks:\n  boom: exit 1\n  other: touch other\n");
    let r = p.run(&["run", "cof", "--max-workers", "1", "--continue-on-failure"]);
    assert_eq!(r.code, 1);
    assert!(p.path().join("other").exists());
    let id = latest_run(&p);
    assert_eq!(p.status(&id)["run"]["state"], "partial");
}

#[test]
fn ctrl_c_cancels_running_tasks_and_exits_130() {
    let p = Project::new();
    p.pipeline(
        "long",
        "tasks:\n  t:\n    run: echo $$ > t.pid; sleep 60\n  u:\n    run: touch u\n    depends_on: [t]\n",
    );
    let child = p.spawn(&["run", "long"]);
    let pid = child.id();
    p.wait_for_file("t.pid", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(100));
    signal(pid, "INT");
    let r = wait_with_limit(child, Duration::from_secs(15));
    assert_eq!(r.code, 130, "{}", r.stderr);
    let task_pid: i32 = p.read("t.pid").trim().parse().unwrap();
    assert!(!alive(task_pid), "the task's process survived Ctrl-C");
    let id = latest_run(&p);
    let states = p.task_states(&id);
    assert_eq!(states["t"], "cancelled");
    assert_eq!(states["u"], "cancelled");
    assert_eq!(p.status(&id)["run"]["state"], "cancelled");
}

#[test]
fn cauce_cancel_from_another_shell_stops_the_run() {
    let p = Project::new();
    p.pipeline("long", "tasks:\n  t:\n    run: touch started; sleep 60\n");
    let child = p.spawn(&["run", "long"]);
    p.wait_for_file("started", Duration::from_secs(10));
    let c = p.run(&["cancel", "latest"]);
    assert_eq!(c.code, 0, "{} {}", c.stdout, c.stderr);
    assert!(c.stdout.contains("cancelled"), "{}", c.stdout);
    let r = wait_with_limit(child, Duration::from_secs(15));
    assert_eq!(r.code, 130, "{}", r.stderr);
    let again = p.run(&["cancel", "latest"]);
    assert_eq!(again.code, 2, "cancelling an ended run is a usage error");
}

#[test]
fn kill_9_then_retry_completes_without_rerunning_successes() {
    let p = Project::new();
    p.pipeline(
        "crash",
        // The first attempt of `slow` hangs (and leaves a background child); the retry's is quick.
        "tasks:\n  first: echo first >> ran.txt\n  slow:\n    run: echo slow >> ran.txt; if [ -f slow.started ]; then exit 0; fi; sleep 60 & echo $! > bg.pid; echo $$ > slow.pid; touch slow.started; wait\n    depends_on: [first]\n  last:\n    run: echo last >> ran.txt\n    depends_on: [slow]\n",
    );
    let child = p.spawn(&["run", "crash"]);
    p.wait_for_file("slow.started", Duration::from_secs(10));
    signal(child.id(), "KILL");
    let _ = wait_with_limit(child, Duration::from_secs(5));
    let id = latest_run(&p);
    assert_eq!(
        p.status(&id)["run"]["state"],
        "running",
        "the store still says running"
    );
    // The killed cauce left its task running (own process group); retry stops it first.
    let orphan: i32 = p.read("slow.pid").trim().parse().unwrap();
    let background: i32 = p.read("bg.pid").trim().parse().unwrap();
    assert!(alive(orphan) && alive(background));
    let started = Instant::now();
    let r = p.run(&["retry", &id]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(!alive(orphan), "the orphaned task {orphan} still runs");
    assert!(
        !alive(background),
        "its background child {background} still runs"
    );
    let ran = p.read("ran.txt");
    assert_eq!(
        ran.matches("first").count(),
        1,
        "a task that succeeded ran again: {ran}"
    );
    assert_eq!(ran.matches("slow").count(), 2, "{ran}");
    assert_eq!(ran.matches("last").count(), 1, "{ran}");
    let s = p.status(&id);
    assert_eq!(s["run"]["state"], "success");
    let slow: Vec<&str> = s["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["task_id"] == "slow")
        .map(|a| a["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        slow,
        vec!["lost", "success"],
        "the interrupted attempt is recorded as lost"
    );
    // A finished run has nothing to retry but can be retried harmlessly.
    let again = p.run(&["retry", &id]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(p.read("ran.txt").matches("first").count(), 1);
}

#[test]
fn retry_reruns_only_what_did_not_succeed() {
    let p = Project::new();
    p.pipeline(
        "fix",
        "tasks:\n  ok: echo ok >> ran.txt\n  fragile:\n    run: test -f fixed && echo fragile >> ran.txt\n    depends_on: [ok]\n  after:\n    run: echo after >> ran.txt\n    depends_on: [fragile]\n",
    );
    assert_eq!(p.run(&["run", "fix"]).code, 1);
    let id = latest_run(&p);
    assert_eq!(p.task_states(&id)["after"], "skipped");
    p.write("fixed", "");
    let r = p.run(&["retry", &id]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(p.read("ran.txt"), "ok\nfragile\nafter\n");
    assert_eq!(p.status(&id)["run"]["state"], "success");
}

#[test]
fn a_task_printing_a_lot_streams_to_its_log_with_bounded_memory() {
    let p = Project::new();
    // 300 MB of output.
    p.pipeline(
        "loud",
        "tasks:\n  t: head -c 300000000 /dev/zero | tr '\\0' x\n",
    );
    let probe = "import resource, subprocess, sys\nr = subprocess.run(sys.argv[1:])\nprint(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)";
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(probe)
        .arg(bin())
        .arg("--project")
        .arg(p.path())
        .args(["run", "loud", "-q"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    assert_eq!(
        parts.next(),
        Some("0"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let max_rss_kb: u64 = parts.next().unwrap().parse().unwrap();
    assert!(
        max_rss_kb < 150_000,
        "peak memory {max_rss_kb} KiB for 300 MB of output"
    );
    let id = latest_run(&p);
    let log = p.path().join(format!(".cauce/logs/{id}/t.1.log"));
    assert!(std::fs::metadata(log).unwrap().len() >= 300_000_000);
}

#[test]
fn failure_handlers_run_after_a_critical_failure() {
    let p = Project::new();
    p.pipeline(
        "handlers",
        "tasks:\n  load: exit 1\n  publish:\n    run: touch published\n    depends_on: [load]\n  independent: touch independent\n  alert:\n    run: touch alerted\n    depends_on: [load]\n    trigger: one_failed\n  cleanup:\n    run: touch cleaned\n    depends_on: [publish]\n    trigger: all_done\n",
    );
    let r = p.run(&["run", "handlers", "--max-workers", "1"]);
    assert_eq!(r.code, 1);
    let id = latest_run(&p);
    let states = p.task_states(&id);
    assert_eq!(states["load"], "failed");
    assert_eq!(states["publish"], "skipped");
    assert_eq!(
        states["independent"], "skipped",
        "nothing new starts after a critical failure"
    );
    assert_eq!(
        states["alert"], "success",
        "a one_failed handler still runs"
    );
    assert_eq!(
        states["cleanup"], "success",
        "an all_done handler still runs"
    );
    assert!(p.path().join("alerted").exists() && !p.path().join("published").exists());
    assert_eq!(p.status(&id)["run"]["state"], "failed");
}

#[test]
fn a_handler_that_did_not_fire_keeps_the_run_successful() {
    let p = Project::new();
    p.pipeline(
        "quiet",
        "tasks:\n  work: \"true\"\n  alert:\n    run: touch alerted\n    depends_on: [work]\n    trigger: one_failed\n",
    );
    let r = p.run(&["run", "quiet"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let id = latest_run(&p);
    assert_eq!(p.task_states(&id)["alert"], "skipped");
    assert_eq!(p.status(&id)["run"]["state"], "success");
}

#[test]
fn every_task_can_write_to_the_run_data_folder() {
    let p = Project::new();
    p.pipeline(
        "data",
        "tasks:\n  write: echo rows > \"$CAUCE_DATA_DIR/out.txt\"\n  read:\n    run: cat \"$CAUCE_DATA_DIR/out.txt\"\n    depends_on: [write]\n",
    );
    let r = p.run(&["run", "data", "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let logs = p.run(&["logs", "latest", "read"]);
    assert!(logs.stdout.contains("rows"), "{}", logs.stdout);
}
