//! Browser tests of the web dashboard: each test makes real runs through a real `cauce server`,
//! then runs one spec of `tests/ui/` (`node tests/ui/NAME.mjs`, Playwright driving Debian's
//! Chromium) against it and asserts the spec passed; the API is checked afterwards where the
//! UI acted. Needs `/usr/bin/chromium` and `tests/ui/node_modules` (`.ci/run` installs both);
//! without them these tests fail, they do not skip.
//! Screenshots (1280x800 and 390x844, light and dark) and the spec's output go to
//! `ui-screenshots/TEST/` in the build folder (`$CARGO_TARGET_DIR`, `target/` by default).
//! Only one browser runs at a time.

use crate::common::server::{server_settings, Server, OPERATOR, VIEWER};
use crate::common::Project;
use serde_json::{json, Value};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CHROMIUM: &str = "/usr/bin/chromium";
/// One browser at a time: the machine has two cores, and timings are part of the checks.
static BROWSER: Mutex<()> = Mutex::new(());

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The folder of one test's screenshots, emptied.
fn shot_dir(test: &str) -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let dir = target.join("ui-screenshots").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn require_tools() {
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing
            .push("Chromium at /usr/bin/chromium (`apt-get install -y chromium chromium-driver`)");
    }
    if Command::new("node").arg("--version").output().is_err() {
        missing.push("Node.js (`node`)");
    }
    if !root()
        .join("tests/ui/node_modules/playwright-core")
        .is_dir()
    {
        missing.push("tests/ui/node_modules (`npm ci --prefix tests/ui`)");
    }
    assert!(
        missing.is_empty(),
        "the browser tests need {}; .ci/run installs them",
        missing.join(", ")
    );
}

fn project() -> Project {
    let p = Project::new();
    p.write("cauce.yaml", &server_settings(""));
    p
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Runs `node tests/ui/SPEC.mjs` against the server with `data` as `CAUCE_DATA`; panics with
/// its output (and the end of the server's log) unless it exits 0. Returns its output.
fn run_spec(spec: &str, test: &str, s: &Server, data: &Value, limit: Duration) -> String {
    require_tools();
    let dir = shot_dir(test);
    let out_path = dir.join("output.txt");
    let out = File::create(&out_path).unwrap();
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    let mut child = Command::new("node")
        .arg(root().join(format!("tests/ui/{spec}.mjs")))
        .current_dir(root().join("tests/ui"))
        .env("CAUCE_URL", &s.base)
        .env("CAUCE_OPERATOR", OPERATOR)
        .env("CAUCE_VIEWER", VIEWER)
        .env("CAUCE_OPERATOR_NAME", "ops")
        .env("CAUCE_VIEWER_NAME", "look")
        .env("SCREENSHOT_DIR", &dir)
        .env("CAUCE_DATA", data.to_string())
        .env("FORCE_COLOR", "0")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let took = start.elapsed();
    println!(
        "--- tests/ui/{spec}.mjs ({:.1} s, screenshots in {}) ---\n{output}",
        took.as_secs_f64(),
        dir.display()
    );
    let log = s.log();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    match status {
        Some(st) if st.success() => output,
        Some(st) => panic!(
            "tests/ui/{spec}.mjs failed ({st}):\n{output}\n--- server log (end) ---\n{}\nscreenshots: {}",
            tail.join("\n"),
            dir.display()
        ),
        None => panic!(
            "tests/ui/{spec}.mjs did not finish within {limit:?}:\n{output}\n--- server log (end) ---\n{}",
            tail.join("\n")
        ),
    }
}

fn wait_ok(s: &Server, id: &str, want: &str) -> Value {
    let run = s.wait_run(id, Duration::from_secs(60));
    assert_eq!(run["run"]["state"], want, "{run}");
    run
}

fn wait_running_task(s: &Server, id: &str, task: &str) {
    let start = Instant::now();
    loop {
        let (_, v) = s.get(&format!("/api/v1/runs/{id}"), Some(VIEWER));
        let running = v["tasks"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .any(|t| t["task_id"] == task && t["state"] == "running")
            })
            .unwrap_or(false);
        if running {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "task {task} of {id} did not start: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cancel(s: &Server, id: &str) {
    let _ = s.post(
        &format!("/api/v1/runs/{id}/cancel"),
        Some(OPERATOR),
        &json!({}),
    );
}

fn attempts_of(run: &Value, task: &str) -> usize {
    run["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["task_id"] == task)
        .count()
}

/// `75%` of ended runs that succeeded, or `–` without ended runs.
fn rate(runs: &[&Value]) -> String {
    let ended: Vec<&&Value> = runs.iter().filter(|r| r["state"] != "running").collect();
    if ended.is_empty() {
        return "–".to_string();
    }
    let ok = ended.iter().filter(|r| r["state"] == "success").count();
    format!(
        "{}%",
        (100.0 * ok as f64 / ended.len() as f64).round() as i64
    )
}

#[test]
fn overview_numbers_match_the_store_and_filters_narrow_it() {
    let p = project();
    p.pipeline(
        "sales",
        "params:\n  code: {type: integer, default: 0}\ntasks:\n  extract: {run: \"exit {{ params.code }}\", category: extraction}\n  load: {run: echo load, depends_on: [extract], category: load}\n",
    );
    p.pipeline(
        "billing",
        "params:\n  code: {type: integer, default: 0}\ntasks:\n  bill: \"exit {{ params.code }}\"\n",
    );
    p.pipeline("archive", "tasks:\n  pack: echo pack\n");
    p.pipeline("slow", "tasks:\n  wait: sleep 30\n");
    let s = Server::start(&p);
    for (pipeline, code, state) in [
        ("sales", 0, "success"),
        ("sales", 1, "failed"),
        ("billing", 0, "success"),
        ("sales", 0, "success"),
        ("billing", 1, "failed"),
        ("sales", 0, "success"),
    ] {
        let id = s.trigger(pipeline, json!({"params": {"code": code}}));
        wait_ok(&s, &id, state);
    }
    let running = s.trigger("slow", json!({}));
    wait_running_task(&s, &running, "wait");

    // What the page must show, from the API's run list.
    let (code, list) = s.get("/api/v1/runs?limit=500", Some(VIEWER));
    assert_eq!(code, 200, "{list}");
    let all = list["runs"].as_array().unwrap();
    let now = now_ms();
    let day = 86_400_000;
    let mut expected = serde_json::Map::new();
    for name in ["sales", "billing", "archive", "slow"] {
        let mine: Vec<&Value> = all.iter().filter(|r| r["pipeline"] == name).collect();
        let since = |days: i64| -> Vec<&Value> {
            mine.iter()
                .copied()
                .filter(|r| r["created_at"].as_i64().unwrap() >= now - days * day)
                .collect()
        };
        expected.insert(
            name.into(),
            json!({
                "success7": rate(&since(7)),
                "success30": rate(&since(30)),
                // Ended runs, the denominator of the rate (a running run is not counted).
                "runs7": since(7).iter().filter(|r| r["state"] != "running").count(),
                // Newest first.
                "last_state": mine.first().map(|r| r["state"].clone()),
            }),
        );
    }
    assert_eq!(expected["sales"]["success7"], "75%");
    assert_eq!(expected["billing"]["last_state"], "failed");
    let data = json!({
        "expected": expected,
        "running": running,
        "name_filter": "bil",
        "name_match": ["billing"],
        "state_match": {"failed": ["billing"], "success": ["sales"], "running": ["slow"]},
        "category": "extraction",
        "category_match": ["sales"],
    });
    run_spec("overview", "overview", &s, &data, Duration::from_secs(90));
    cancel(&s, &running);
}

#[test]
fn dag_shows_each_task_state_of_the_selected_run() {
    let p = project();
    p.pipeline(
        "chain",
        "params:\n  code: {type: integer, default: 1}\ntasks:\n  a: echo a\n  b: {run: \"sleep 0.3; exit {{ params.code }}\", depends_on: [a]}\n  c: {run: echo c, depends_on: [b]}\n  d: echo d\n",
    );
    let s = Server::start(&p);
    let ok = s.trigger("chain", json!({"params": {"code": 0}}));
    wait_ok(&s, &ok, "success");
    let failed = s.trigger("chain", json!({}));
    let run = wait_ok(&s, &failed, "failed");
    let states: serde_json::Map<String, Value> = run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["task_id"].as_str().unwrap().to_string(),
                t["state"].clone(),
            )
        })
        .collect();
    let want = json!({"a": "success", "b": "failed", "c": "skipped", "d": "success"});
    assert_eq!(Value::Object(states), want, "the API's task states");
    let data = json!({
        "pipeline": "chain",
        "ok_run": ok,
        "failed_run": failed,
        "failed_states": want,
    });
    run_spec("dag", "dag", &s, &data, Duration::from_secs(60));
}

#[test]
fn the_trigger_form_starts_a_run_with_typed_params() {
    let p = project();
    p.pipeline(
        "typed",
        "params:\n  n: {type: integer, default: 1}\n  day: {type: date, default: \"2024-01-01\"}\n  label: {type: string, default: nightly}\ntasks:\n  check: \"test {{ params.n }} -eq 42 && echo n={{ params.n }} {{ params.day }} {{ params.label }}\"\n",
    );
    let s = Server::start(&p);
    let data = json!({
        "pipeline": "typed",
        "params": ["n", "day", "label"],
        "param": "n",
        "value": 42,
    });
    let out = run_spec("trigger", "trigger", &s, &data, Duration::from_secs(60));
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("RUN_ID="))
        .expect("the spec printed the run id")
        .trim()
        .to_string();
    let run = wait_ok(&s, &id, "success");
    assert_eq!(run["run"]["params"]["n"], 42, "{run}");
    assert_eq!(run["run"]["params"]["day"], "2024-01-01", "{run}");
    assert_eq!(run["run"]["trigger"], "api", "{run}");
}

#[test]
fn cancel_and_retry_from_the_run_page() {
    let p = project();
    p.pipeline("slow", "tasks:\n  wait: sleep 30\n");
    p.pipeline("fixable", "tasks:\n  check: test -f fixed.flag\n");
    p.pipeline(
        "pair",
        "tasks:\n  p: echo p\n  q: {run: test -f q.flag, critical: false}\n  r: {run: test -f r.flag, critical: false}\n",
    );
    let s = Server::start(&p);
    let fixable = s.trigger("fixable", json!({}));
    wait_ok(&s, &fixable, "failed");
    let pair = s.trigger("pair", json!({}));
    wait_ok(&s, &pair, "partial");
    // The causes are fixed: the files appear (r's does not).
    p.write("fixed.flag", "");
    p.write("q.flag", "");
    let slow = s.trigger("slow", json!({}));
    wait_running_task(&s, &slow, "wait");
    let data = json!({"slow_run": slow, "fixable_run": fixable, "pair_run": pair});
    run_spec("actions", "actions", &s, &data, Duration::from_secs(90));

    let run = s.wait_run(&slow, Duration::from_secs(10));
    assert_eq!(run["run"]["state"], "cancelled", "{run}");
    let run = wait_ok(&s, &fixable, "success");
    assert_eq!(attempts_of(&run, "check"), 2, "{run}");
    let run = s.wait_run(&pair, Duration::from_secs(20));
    assert_eq!(
        (
            attempts_of(&run, "p"),
            attempts_of(&run, "q"),
            attempts_of(&run, "r")
        ),
        (1, 2, 1),
        "only q ran again: {run}"
    );
}

#[test]
fn a_viewer_cannot_trigger_cancel_or_retry() {
    let p = project();
    p.pipeline("slow", "tasks:\n  wait: sleep 30\n");
    p.pipeline("broken", "tasks:\n  boom: exit 3\n");
    let s = Server::start(&p);
    let failed = s.trigger("broken", json!({}));
    wait_ok(&s, &failed, "failed");
    let running = s.trigger("slow", json!({}));
    wait_running_task(&s, &running, "wait");
    let data = json!({
        "pipeline": "broken",
        "running_run": running,
        "failed_run": failed,
        "failed_task": "boom",
    });
    run_spec("viewer", "viewer", &s, &data, Duration::from_secs(60));
    let (_, v) = s.get(&format!("/api/v1/runs/{running}"), Some(VIEWER));
    assert_eq!(v["run"]["state"], "running", "the viewer cancelled nothing");
    let (_, v) = s.get(&format!("/api/v1/runs/{failed}"), Some(VIEWER));
    assert_eq!(attempts_of(&v, "boom"), 1, "the viewer retried nothing");
    let (_, list) = s.get("/api/v1/runs?limit=500", Some(VIEWER));
    assert_eq!(
        list["runs"].as_array().unwrap().len(),
        2,
        "the viewer started nothing"
    );
    cancel(&s, &running);
}

#[test]
fn logs_show_live_while_the_task_runs() {
    let p = project();
    let lines = 17;
    p.pipeline(
        "ticker",
        &format!(
            "tasks:\n  ticker:\n    run: |\n      i=0\n      while [ ! -f gate.flag ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n      for n in $(seq 1 {lines}); do echo \"tick $n\"; sleep 0.3; done\n"
        ),
    );
    let s = Server::start(&p);
    let id = s.trigger("ticker", json!({}));
    wait_running_task(&s, &id, "ticker");
    let data = json!({
        "run": id,
        "task": "ticker",
        "gate": p.path().join("gate.flag"),
        "lines": lines,
    });
    run_spec("logs", "logs", &s, &data, Duration::from_secs(60));
    wait_ok(&s, &id, "success");
}

#[test]
fn a_run_of_a_thousand_tasks_renders_quickly() {
    let p = project();
    let n = 1000;
    // Ten layers of 100: each task after the one 100 before it.
    let mut yaml = String::from("max_workers: 16\ntasks:\n");
    for i in 0..n {
        if i >= 100 {
            yaml.push_str(&format!(
                "  t{i:04}: {{run: echo t{i:04}, depends_on: [t{:04}]}}\n",
                i - 100
            ));
        } else {
            yaml.push_str(&format!("  t{i:04}: echo t{i:04}\n"));
        }
    }
    p.pipeline("big", &yaml);
    let s = Server::start(&p);
    let started = Instant::now();
    let id = s.trigger("big", json!({}));
    let run = s.wait_run(&id, Duration::from_secs(180));
    assert_eq!(run["run"]["state"], "success");
    println!(
        "the {n}-task run took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let data = json!({"run": id, "tasks": n, "last_task": format!("t{:04}", n - 1)});
    run_spec("big", "big", &s, &data, Duration::from_secs(90));
}
