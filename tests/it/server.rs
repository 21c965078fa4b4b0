//! `cauce server` end to end: the real binary on a loopback port, real runs, real signals.
//! Alerts go to an SMTP server, an HTTP receiver and a command run by these tests.

use crate::common::server::{server_settings, server_settings_grace, Server, OPERATOR, VIEWER};
use crate::common::{alive, signal, Project};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn project(extra: &str) -> Project {
    let p = Project::new();
    p.write("cauce.yaml", &server_settings(extra));
    p
}

fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn runs_of(s: &Server, pipeline: &str) -> Vec<Value> {
    let (code, v) = s.get(
        &format!("/api/v1/runs?pipeline={pipeline}&limit=500"),
        Some(VIEWER),
    );
    assert_eq!(code, 200, "{v}");
    v["runs"].as_array().unwrap().clone()
}

#[test]
fn api_needs_a_token_and_the_right_role() {
    let p = project("");
    p.pipeline("hello", "tasks:\n  a: echo hi\n");
    let s = Server::start(&p);
    // Health, metrics and the OpenAPI document are open.
    let (code, v) = s.get("/health", None);
    assert_eq!((code, v["status"].as_str()), (200, Some("ok")));
    let (code, doc) = s.get("/api/v1/openapi.json", None);
    assert_eq!(code, 200);
    assert!(doc["paths"]["/api/v1/runs"]["get"].is_object(), "{doc}");
    let metrics = s.http.get(s.url("/metrics")).send().unwrap();
    assert_eq!(metrics.status().as_u16(), 200);
    // Everything else needs a known token.
    let resp = s.http.get(s.url("/api/v1/runs")).send().unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let v: Value = resp.json().unwrap();
    assert_eq!(v["error"]["code"], "unauthorized");
    let (code, _) = s.get("/api/v1/runs", Some("not-a-token-but-long-enough"));
    assert_eq!(code, 401);
    let (code, _) = s.get("/api/v1/runs", Some(&OPERATOR[..OPERATOR.len() - 1]));
    assert_eq!(code, 401, "a prefix of a token is not the token");
    // A viewer reads but cannot start, cancel or retry.
    let (code, me) = s.get("/api/v1/me", Some(VIEWER));
    assert_eq!((code, me["role"].as_str()), (200, Some("viewer")));
    let (code, v) = s.post("/api/v1/pipelines/hello/runs", Some(VIEWER), &json!({}));
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (code, _) = s.post("/api/v1/runs/whatever/cancel", Some(VIEWER), &json!({}));
    assert_eq!(code, 403);
    assert!(
        runs_of(&s, "hello").is_empty(),
        "the viewer started nothing"
    );
    // An operator can.
    let id = s.trigger("hello", json!({}));
    let run = s.wait_run(&id, Duration::from_secs(20));
    assert_eq!(run["run"]["state"], "success");
    assert_eq!(run["run"]["trigger"], "api");
}

#[test]
fn the_quickstart_project_serves_its_api_with_the_token_init_wrote() {
    let p = Project::new();
    let r = p.run(&["init", "--force", p.path().to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let env = p.read(".env");
    let token = env
        .trim()
        .strip_prefix("CAUCE_OPS_TOKEN=")
        .unwrap()
        .to_string();
    assert_eq!(token.len(), 64);
    let s = Server::start_with(&p, &["--listen", "127.0.0.1:0"]);
    let (code, list) = s.get("/api/v1/pipelines", Some(&token));
    assert_eq!(code, 200, "{list}");
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["daily_sales", "master", "sales_warehouse"]);
    assert_eq!(list[0]["schedule"], "0 9 * * *");
    assert!(list[0]["next_runs"][0]
        .as_str()
        .unwrap()
        .ends_with("T09:00:00-03:00"));
    let (code, v) = s.post(
        "/api/v1/pipelines/daily_sales/runs",
        Some(&token),
        &json!({"params": {"region": "sur"}}),
    );
    assert_eq!(code, 201, "{v}");
    let run = s.wait_run_as(
        v["run_id"].as_str().unwrap(),
        Duration::from_secs(60),
        &token,
    );
    assert_eq!(run["run"]["state"], "success", "{run}");
    // The token never shows in an answer, even though .env made it a secret value.
    let (_, detail) = s.get("/api/v1/pipelines/daily_sales", Some(&token));
    assert!(!detail.to_string().contains(&token));
}

#[test]
fn bad_requests_get_json_errors_and_start_nothing() {
    let p = project("");
    p.pipeline(
        "typed",
        "params:\n  n: {type: integer, default: 1}\n  day: {type: date, default: \"2024-01-01\"}\ntasks:\n  a: echo {{ params.n }} {{ params.day }}\n",
    );
    let s = Server::start(&p);
    let post = |body: &str, ctype: &str| {
        let r = s
            .http
            .post(s.url("/api/v1/pipelines/typed/runs"))
            .bearer_auth(OPERATOR)
            .header("content-type", ctype)
            .body(body.to_string())
            .send()
            .unwrap();
        let code = r.status().as_u16();
        let v: Value = r.json().unwrap_or(Value::Null);
        (
            code,
            v["error"]["code"].as_str().unwrap_or("").to_string(),
            v["error"]["message"].as_str().unwrap_or("").to_string(),
        )
    };
    let (c, code, msg) = post(r#"{"params": {"n": "many"}}"#, "application/json");
    assert_eq!((c, code.as_str()), (400, "bad_request"), "{msg}");
    assert!(msg.contains("many") && msg.contains("integer"), "{msg}");
    let (c, _, msg) = post(r#"{"params": {"nope": 1}}"#, "application/json");
    assert_eq!(c, 400);
    assert!(msg.contains("nope"), "{msg}");
    let (c, _, _) = post(r#"{"params": {"n": [1, 2]}}"#, "application/json");
    assert_eq!(c, 400);
    let (c, code, msg) = post(r#"{"paramz": {}}"#, "application/json");
    assert_eq!((c, code.as_str()), (400, "invalid_json"));
    assert!(msg.contains("paramz"), "{msg}");
    let (c, code, _) = post(r#"{"params": "#, "application/json");
    assert_eq!((c, code.as_str()), (400, "invalid_json"));
    let (c, code, _) = post("{}", "text/plain");
    assert_eq!((c, code.as_str()), (415, "unsupported_media_type"));
    let big = format!(r#"{{"params": {{"day": "{}"}}}}"#, "x".repeat(100_000));
    let (c, code, _) = post(&big, "application/json");
    assert_eq!((c, code.as_str()), (413, "payload_too_large"));
    let (c, _, _) = post(r#"{"logical_date": "yesterday"}"#, "application/json");
    assert_eq!(c, 400);
    let (c, _, _) = post(r#"{"tasks": ["zz"]}"#, "application/json");
    assert_eq!(c, 400);
    let (code, v) = s.post("/api/v1/pipelines/missing/runs", Some(OPERATOR), &json!({}));
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (code, v) = s.get("/api/v1/nothing/here", Some(OPERATOR));
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    assert!(
        runs_of(&s, "typed").is_empty(),
        "no bad request started a run"
    );
    // A good one runs with typed params.
    let id = s.trigger(
        "typed",
        json!({"params": {"n": 7, "day": "2024-05-06"}, "logical_date": "2024-05-06"}),
    );
    let run = s.wait_run(&id, Duration::from_secs(20));
    assert_eq!(run["run"]["params"], json!({"n": 7, "day": "2024-05-06"}));
    assert!(run["run"]["logical_date"]
        .as_str()
        .unwrap()
        .starts_with("2024-05-06T00:00:00"));
    assert_eq!(run["attempts"].as_array().unwrap().len(), 1);
    let (code, report) = s.get(&format!("/api/v1/runs/{id}/report"), Some(VIEWER));
    assert_eq!(code, 200);
    assert_eq!(report["execution_id"], id.as_str());
}

#[test]
fn runs_are_filtered_and_paged_with_a_cursor() {
    let p = project("");
    p.pipeline("ok", "tasks:\n  a: \"true\"\n");
    p.pipeline("bad", "tasks:\n  a: \"false\"\n");
    let s = Server::start(&p);
    let mut ids = Vec::new();
    for pipeline in ["ok", "bad", "ok", "ok", "bad"] {
        let id = s.trigger(pipeline, json!({}));
        s.wait_run(&id, Duration::from_secs(20));
        ids.push(id);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/runs?limit=2&cursor={c}"),
            None => "/api/v1/runs?limit=2".into(),
        };
        let (code, v) = s.get(&path, Some(VIEWER));
        assert_eq!(code, 200, "{v}");
        for r in v["runs"].as_array().unwrap() {
            seen.push(r["id"].as_str().unwrap().to_string());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first, "every run once, newest first");
    let (_, v) = s.get("/api/v1/runs?pipeline=bad&state=failed", Some(VIEWER));
    assert_eq!(v["runs"].as_array().unwrap().len(), 2);
    let (_, v) = s.get("/api/v1/runs?state=success", Some(VIEWER));
    assert_eq!(v["runs"].as_array().unwrap().len(), 3);
    for bad in [
        "limit=0",
        "limit=100000",
        "state=bogus",
        "limit=abc",
        "colour=red",
    ] {
        let (code, v) = s.get(&format!("/api/v1/runs?{bad}"), Some(VIEWER));
        assert_eq!(code, 400, "{bad}: {v}");
    }
    let (code, v) = s.get("/api/v1/reports?pipeline=bad", Some(VIEWER));
    assert_eq!(code, 200);
    assert_eq!(v["reports"].as_array().unwrap().len(), 2);
}

#[test]
fn logs_are_read_by_range_followed_live_and_confined_to_the_log_folder() {
    let p = project("");
    p.write("secret.txt", "TOP SECRET\n");
    p.pipeline(
        "talk",
        "tasks:\n  speak: \"for i in 1 2 3 4 5; do echo line-$i; sleep 0.4; done\"\n",
    );
    let s = Server::start(&p);
    let id = s.trigger("talk", json!({}));
    // Follow while it runs: lines arrive as events, then `end`.
    let resp = s
        .http
        .get(s.url(&format!("/api/v1/runs/{id}/tasks/speak/logs?follow=true")))
        .bearer_auth(VIEWER)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let started = Instant::now();
    let mut first_line_at = None;
    let mut text = String::new();
    let mut ended = false;
    let mut event = String::new();
    for line in BufReader::new(resp).lines() {
        let line = line.unwrap();
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(d).unwrap();
            if event == "log" {
                text.push_str(v["text"].as_str().unwrap());
                if first_line_at.is_none() && text.contains("line-1") {
                    first_line_at = Some(started.elapsed());
                }
            } else if event == "end" {
                assert_eq!(v["state"], "success");
                ended = true;
                break;
            }
        }
    }
    assert!(ended, "the stream ends when the attempt does");
    for i in 1..=5 {
        assert!(text.contains(&format!("line-{i}")), "{text}");
    }
    assert!(
        first_line_at.unwrap() < Duration::from_millis(1500),
        "the first line came while the task still ran ({first_line_at:?})"
    );
    // Ranged reads.
    let (code, all) = s.get(&format!("/api/v1/runs/{id}/tasks/speak/logs"), Some(VIEWER));
    assert_eq!(code, 200);
    assert_eq!(all["complete"], true);
    let size = all["size"].as_u64().unwrap();
    let (_, part) = s.get(
        &format!("/api/v1/runs/{id}/tasks/speak/logs?offset=5&limit=10"),
        Some(VIEWER),
    );
    assert_eq!(part["offset"], 5);
    assert_eq!(part["next_offset"], 15);
    assert_eq!(
        part["text"].as_str().unwrap(),
        &all["text"].as_str().unwrap()[5..15]
    );
    let (_, tail) = s.get(
        &format!("/api/v1/runs/{id}/tasks/speak/logs?offset=-20"),
        Some(VIEWER),
    );
    assert_eq!(tail["offset"].as_u64().unwrap(), size - 20);
    // Nothing outside the log folder can be named.
    for path in [
        format!("/api/v1/runs/{id}/tasks/..%2F..%2F..%2Fsecret.txt/logs"),
        format!("/api/v1/runs/{id}/tasks/speak%2F..%2F..%2F..%2Fsecret.txt/logs"),
        "/api/v1/runs/..%2F..%2Fsecret.txt/tasks/speak/logs".to_string(),
        format!("/api/v1/runs/{id}/tasks/speak/logs?attempt=99"),
        "/api/v1/runs/nope/tasks/speak/logs".to_string(),
    ] {
        let resp = s.http.get(s.url(&path)).bearer_auth(VIEWER).send().unwrap();
        let code = resp.status().as_u16();
        let body = resp.text().unwrap();
        assert!(code == 404 || code == 400, "{path}: {code} {body}");
        assert!(!body.contains("TOP SECRET"), "{path}: {body}");
    }
}

#[test]
fn cancel_and_retry_through_the_api() {
    let p = project("");
    p.pipeline(
        "slow",
        "tasks:\n  wait: \"echo $$ > wait.pid; exec sleep 60\"\n",
    );
    p.pipeline(
        "flaky",
        "tasks:\n  first: \"echo once >> first.count\"\n  second: {run: \"test -f fixed\", depends_on: [first]}\n",
    );
    let s = Server::start(&p);
    let id = s.trigger("slow", json!({}));
    p.wait_for_file("wait.pid", Duration::from_secs(10));
    let pid: i32 = p.read("wait.pid").trim().parse().unwrap();
    let (code, v) = s.post(
        &format!("/api/v1/runs/{id}/cancel"),
        Some(OPERATOR),
        &json!({}),
    );
    assert_eq!(
        (code, v["status"].as_str()),
        (202, Some("cancel_requested")),
        "{v}"
    );
    let run = s.wait_run(&id, Duration::from_secs(10));
    assert_eq!(run["run"]["state"], "cancelled");
    wait_until(Duration::from_secs(5), "the task process to die", || {
        !alive(pid)
    });
    let (code, v) = s.post(
        &format!("/api/v1/runs/{id}/cancel"),
        Some(OPERATOR),
        &json!({}),
    );
    assert_eq!((code, v["error"]["code"].as_str()), (409, Some("conflict")));
    // seed 001's DELETE form on an unknown run.
    let resp = s
        .http
        .delete(s.url("/api/v1/runs/unknown"))
        .bearer_auth(OPERATOR)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    let id = s.trigger("flaky", json!({}));
    let run = s.wait_run(&id, Duration::from_secs(20));
    assert_eq!(run["run"]["state"], "failed");
    p.write("fixed", "");
    let (code, v) = s.post(
        &format!("/api/v1/runs/{id}/retry"),
        Some(OPERATOR),
        &json!({}),
    );
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["tasks"], json!(["second"]));
    let run = s.wait_run(&id, Duration::from_secs(20));
    assert_eq!(run["run"]["state"], "success");
    assert_eq!(
        p.read("first.count").lines().count(),
        1,
        "the successful task was not re-run"
    );
    let (code, _) = s.post(
        &format!("/api/v1/runs/{id}/retry"),
        Some(OPERATOR),
        &json!({}),
    );
    assert_eq!(code, 409, "a successful run has nothing to retry");
}

#[test]
fn a_webhook_needs_its_pipelines_token_and_valid_params() {
    let p = project("");
    p.pipeline(
        "hooked",
        "webhook: {token: \"${HOOK_TOKEN}\"}\nparams:\n  day: {type: date, default: \"2024-01-01\"}\ntasks:\n  a: echo {{ params.day }}\n",
    );
    p.pipeline("plain", "tasks:\n  a: \"true\"\n");
    p.write(".env", "HOOK_TOKEN=hook-secret-value-0123456789\n");
    let s = Server::start(&p);
    let hook = |path: &str, auth: Option<&str>, header: Option<&str>, body: &str| {
        let mut r = s.http.post(s.url(path)).body(body.to_string());
        if let Some(a) = auth {
            r = r.bearer_auth(a);
        }
        if let Some(h) = header {
            r = r.header("x-cauce-token", h);
        }
        let resp = r.send().unwrap();
        (
            resp.status().as_u16(),
            resp.json::<Value>().unwrap_or(Value::Null),
        )
    };
    let token = "hook-secret-value-0123456789";
    assert_eq!(hook("/api/v1/hooks/hooked", None, None, "").0, 401);
    assert_eq!(
        hook("/api/v1/hooks/hooked", Some(OPERATOR), None, "").0,
        401,
        "API tokens are not webhook tokens"
    );
    assert_eq!(
        hook(
            "/api/v1/hooks/hooked",
            Some("hook-secret-value-012345678"),
            None,
            ""
        )
        .0,
        401
    );
    assert_eq!(
        hook("/api/v1/hooks/plain", Some(token), None, "").0,
        404,
        "no webhook declared"
    );
    assert_eq!(
        hook(
            "/api/v1/hooks/hooked",
            Some(token),
            None,
            r#"{"params": {"day": "soon"}}"#
        )
        .0,
        400
    );
    let (code, v) = hook(
        "/api/v1/hooks/hooked",
        Some(token),
        None,
        r#"{"params": {"day": "2024-03-04"}}"#,
    );
    assert_eq!(code, 201, "{v}");
    let run = s.wait_run(v["run_id"].as_str().unwrap(), Duration::from_secs(20));
    assert_eq!(run["run"]["trigger"], "webhook");
    assert_eq!(run["run"]["params"]["day"], "2024-03-04");
    let (code, _) = hook(
        &format!("/api/v1/hooks/hooked?token={token}"),
        None,
        None,
        "",
    );
    assert_eq!(code, 201);
    let (code, _) = hook("/api/v1/hooks/hooked", None, Some(token), "");
    assert_eq!(code, 201);
    // The token is a secret: it never appears in an answer.
    let (_, detail) = s.get("/api/v1/pipelines/hooked", Some(VIEWER));
    assert_eq!(detail["webhook"], true);
    assert!(!detail.to_string().contains(token));
}

#[test]
fn the_scheduler_fires_due_runs_once_even_across_restarts() {
    let p = project("");
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    // Every minute since midnight is missed; without catchup only the latest one fires.
    p.pipeline(
        "latest",
        &format!("schedule: \"* * * * *\"\nstart_date: \"{today}\"\ntasks:\n  a: \"true\"\n"),
    );
    // With catchup every missed minute of the last five fires, oldest first, one at a time.
    let five_ago = (chrono::Utc::now() - chrono::Duration::minutes(5))
        .format("%Y-%m-%d %H:%M")
        .to_string();
    p.pipeline(
        "backfill",
        &format!("schedule: \"* * * * *\"\nstart_date: \"{five_ago}\"\ncatchup: true\nmax_active_runs: 1\ntasks:\n  a: \"sleep 0.3\"\n"),
    );
    let s = Server::start(&p);
    wait_until(Duration::from_secs(20), "the backfill", || {
        runs_of(&s, "backfill")
            .iter()
            .filter(|r| r["state"] == "success")
            .count()
            >= 5
    });
    let latest = runs_of(&s, "latest");
    assert!(!latest.is_empty() && latest.len() <= 2, "{latest:?}");
    assert_eq!(latest[latest.len() - 1]["trigger"], "schedule");
    let (code, schedules) = s.get("/api/v1/schedules", Some(VIEWER));
    assert_eq!(code, 200);
    assert_eq!(schedules.as_array().unwrap().len(), 2);
    assert!(schedules[0]["last_fire"].is_string(), "{schedules}");
    drop(s);
    // A restart fires nothing that was already fired.
    let s = Server::start(&p);
    std::thread::sleep(Duration::from_millis(2500));
    for name in ["latest", "backfill"] {
        let runs = runs_of(&s, name);
        let mut dates: Vec<&str> = runs
            .iter()
            .map(|r| r["logical_date"].as_str().unwrap())
            .collect();
        let n = dates.len();
        dates.sort();
        dates.dedup();
        assert_eq!(dates.len(), n, "{name}: a fire time ran twice: {dates:?}");
        for d in &dates {
            assert!(
                d.contains(":00+00:00"),
                "{name}: fire times are whole minutes: {d}"
            );
        }
    }
    // max_active_runs: 1 kept the backfill runs from overlapping.
    let mut spans: Vec<(i64, i64)> = runs_of(&s, "backfill")
        .iter()
        .filter(|r| r["ended_at"].is_i64())
        .map(|r| {
            (
                r["created_at"].as_i64().unwrap(),
                r["ended_at"].as_i64().unwrap(),
            )
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[1].0 >= w[0].1, "two backfill runs overlapped: {spans:?}");
    }
    let metrics = s.metrics();
    assert!(
        metrics.contains("cauce_scheduler_lag_seconds_count"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cauce_runs{pipeline=\"backfill\",state=\"success\"}"),
        "{metrics}"
    );
}

#[test]
fn sigterm_lets_running_tasks_finish_then_cancels_after_the_grace() {
    // Within the grace period: the run finishes.
    let p = Project::new();
    p.write("cauce.yaml", &server_settings_grace("10s", ""));
    p.pipeline(
        "short",
        "tasks:\n  a: \"sleep 1.5; echo done > finished\"\n",
    );
    let s = Server::start(&p);
    let id = s.trigger("short", json!({}));
    std::thread::sleep(Duration::from_millis(300));
    let code = s.terminate(Duration::from_secs(15));
    assert_eq!(code, 0);
    assert_eq!(p.read("finished").trim(), "done");
    let status = p.status(&id);
    assert_eq!(status["run"]["state"], "success", "{status}");

    // Past it: the task is cancelled and its process killed.
    let p = Project::new();
    p.write("cauce.yaml", &server_settings_grace("1s", ""));
    p.pipeline(
        "long",
        "tasks:\n  a: \"echo $$ > long.pid; exec sleep 60\"\n",
    );
    let s = Server::start(&p);
    let id = s.trigger("long", json!({}));
    p.wait_for_file("long.pid", Duration::from_secs(10));
    let pid: i32 = p.read("long.pid").trim().parse().unwrap();
    let started = Instant::now();
    let code = s.terminate(Duration::from_secs(15));
    assert_eq!(code, 0);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(!alive(pid), "the task's process was killed");
    let status = p.status(&id);
    assert_eq!(status["run"]["state"], "cancelled", "{status}");
}

#[test]
fn a_restarted_server_resumes_the_runs_a_killed_one_left() {
    let p = project("");
    p.pipeline(
        "two",
        "tasks:\n  a: \"echo a >> a.count\"\n  b: {run: \"echo $$ > b.pid; sleep 2; echo b >> b.count\", depends_on: [a]}\n",
    );
    let s = Server::start(&p);
    let id = s.trigger("two", json!({}));
    p.wait_for_file("b.pid", Duration::from_secs(10));
    let pid = s.child.id();
    signal(pid, "KILL");
    drop(s);
    let s = Server::start(&p);
    let run = s.wait_run(&id, Duration::from_secs(30));
    assert_eq!(run["run"]["state"], "success", "{run}");
    assert_eq!(
        p.read("a.count").lines().count(),
        1,
        "a succeeded before and is not run again"
    );
    assert_eq!(p.read("b.count").lines().count(), 1);
    let states: Vec<&str> = run["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["task_id"] == "b")
        .map(|a| a["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["lost", "success"], "{run}");
}

/// A minimal SMTP server: accepts messages and keeps their text.
fn smtp_sink() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mail = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&mail);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let _ = conn.write_all(b"220 test ESMTP\r\n");
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 test\r\n",
                        "DATA" => {
                            let _ = conn.write_all(b"354 go on\r\n");
                            let mut msg = String::new();
                            loop {
                                let mut l = String::new();
                                if reader.read_line(&mut l).unwrap_or(0) == 0 || l == ".\r\n" {
                                    break;
                                }
                                msg.push_str(&l);
                            }
                            store.lock().unwrap().push(msg);
                            b"250 queued\r\n"
                        }
                        "QUIT" => {
                            let _ = conn.write_all(b"221 bye\r\n");
                            return;
                        }
                        _ => b"250 ok\r\n",
                    };
                    let _ = conn.write_all(reply);
                }
            });
        }
    });
    (port, mail)
}

/// A minimal HTTP receiver: answers 200 and keeps each request body.
fn http_sink() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&bodies);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut l = String::new();
                if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
                if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            store
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (port, bodies)
}

#[test]
fn failures_and_retries_alert_email_webhook_and_command_channels() {
    let (smtp, mail) = smtp_sink();
    let (web, posts) = http_sink();
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = Project::new();
    p.write(
        "cauce.yaml",
        &format!(
            "name: test\nkill_grace: 1s\nalerts:\n  rate_limit: 1h\n  channels:\n    mail:\n      email: {{smtp: \"smtp://127.0.0.1:{smtp}\", from: \"cauce@example.com\", to: [\"ops@example.com\"]}}\n    chat:\n      webhook: {{url: \"http://127.0.0.1:{web}/hook\"}}\n    broken:\n      webhook: {{url: \"http://127.0.0.1:{dead}/nobody\"}}\n    script:\n      command: \"mkdir -p alerts && cat > alerts/$$.json\"\n"
        ),
    );
    p.write(".env", "DB_PASSWORD=hunter2-db-password\n");
    p.pipeline(
        "nightly",
        "alerts:\n  failure: [mail, chat, broken, script]\n  retry: [script]\n  success: [script]\ntasks:\n  load: {run: \"echo connecting with ${DB_PASSWORD}; echo login failed for ${DB_PASSWORD} >&2; exit 3\", retries: 1, retry_delay: 0s}\n",
    );
    let r = p.run(&["run", "nightly", "-q"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    // E-mail: subject names pipeline, task and run; the body has the error, masked.
    let mail = mail.lock().unwrap().clone();
    assert_eq!(mail.len(), 1, "{mail:?}");
    assert!(
        mail[0].contains("Subject: [cauce] nightly.load failed"),
        "{}",
        mail[0]
    );
    assert!(mail[0].contains("ops@example.com"));
    assert!(!mail[0].contains("hunter2-db-password"), "{}", mail[0]);
    // Webhook: Slack-compatible `text` plus the fields.
    let posts = posts.lock().unwrap().clone();
    assert_eq!(posts.len(), 1, "{posts:?}");
    let body: Value = serde_json::from_str(&posts[0]).unwrap();
    assert!(body["text"]
        .as_str()
        .unwrap()
        .contains("nightly.load failed"));
    assert_eq!(body["cauce"]["event"], "failure");
    assert!(!posts[0].contains("hunter2-db-password"));
    // Command: one JSON line per alert: the retry, then the failure; no success.
    // (Deliveries run concurrently, so each command writes a file of its own.)
    let mut lines: Vec<Value> = std::fs::read_dir(p.path().join("alerts"))
        .unwrap()
        .map(|e| {
            serde_json::from_str(&std::fs::read_to_string(e.unwrap().path()).unwrap()).unwrap()
        })
        .collect();
    lines.sort_by_key(|v: &Value| v["at"].as_str().unwrap_or("").to_string());
    let events: Vec<&str> = lines.iter().map(|v| v["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["retry", "failure"]);
    assert_eq!(lines[0]["attempt"], 1);
    assert!(
        lines[1]["error"].as_str().unwrap().contains("exit"),
        "{}",
        lines[1]
    );
    // The dead channel was logged, and did not change the outcome.
    assert!(
        r.stderr.contains("alert delivery failed") && r.stderr.contains("broken"),
        "{}",
        r.stderr
    );
}

#[test]
fn validate_reports_unknown_alert_channels() {
    let p = Project::new();
    p.write(
        "cauce.yaml",
        "name: test\nalerts:\n  channels:\n    ops:\n      command: \"true\"\n",
    );
    p.pipeline(
        "x",
        "alerts:\n  failure: [opz]\ntasks:\n  a: {run: \"true\", alerts: {sla_miss: [ops]}}\n",
    );
    let r = p.run(&["validate"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("unknown alert channel `opz`") && r.stderr.contains("did you mean"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("x.yaml:2:"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("`sla_miss` alerts belong to the pipeline"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_scheduled_run_over_its_sla_raises_sla_miss() {
    let p = project("alerts:\n  channels:\n    script:\n      command: \"cat >> sla.jsonl; echo >> sla.jsonl\"\n");
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    p.pipeline(
        "late",
        &format!("schedule: \"* * * * *\"\nstart_date: \"{today}\"\nsla: 1s\nalerts:\n  sla_miss: [script]\ntasks:\n  a: \"sleep 4\"\n"),
    );
    let s = Server::start(&p);
    wait_until(Duration::from_secs(20), "the sla_miss alert", || {
        p.read("sla.jsonl").contains("sla_miss")
    });
    let v: Value = serde_json::from_str(p.read("sla.jsonl").lines().next().unwrap()).unwrap();
    assert_eq!(v["pipeline"], "late");
    let runs = runs_of(&s, "late");
    assert!(runs[runs.len() - 1]["sla_missed_at"].is_i64(), "{runs:?}");
    let metrics = s.metrics();
    assert!(
        metrics.contains("cauce_sla_misses_total{pipeline=\"late\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_sensor_waits_for_its_file_or_times_out() {
    let p = Project::new();
    p.pipeline(
        "arrivals",
        "tasks:\n  wait: {sensor: {path: \"inbox/*.csv\", poke_interval: 100ms, timeout: 20s}}\n  use: {run: \"cat inbox/*.csv\", depends_on: [wait]}\n",
    );
    let child = p.spawn(&["run", "arrivals", "--json", "-q"]);
    std::thread::sleep(Duration::from_millis(600));
    p.write("inbox/sales.csv", "a,b\n1,2\n");
    let r = crate::common::wait_with_limit(child, Duration::from_secs(20));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    let files = &report["results"]["wait"]["output"]["files"];
    assert!(
        files[0].as_str().unwrap().ends_with("inbox/sales.csv"),
        "{report}"
    );

    p.pipeline(
        "never",
        "tasks:\n  wait: {sensor: {path: \"nothing/*.csv\", poke_interval: 100ms, timeout: 500ms}}\n",
    );
    let started = Instant::now();
    let r = p.run(&["run", "never", "-q"]);
    assert_eq!(r.code, 1);
    assert!(started.elapsed() < Duration::from_secs(5));
    let status = p.status("latest");
    assert!(
        status["tasks"][0]["error"]
            .as_str()
            .unwrap()
            .contains("sensor timed out"),
        "{status}"
    );
}

#[test]
fn cauce_schedule_lists_next_fire_times_in_the_pipelines_time_zone() {
    let p = Project::new();
    p.pipeline(
        "rfm",
        "schedule: \"0 0 1 1,7 *\"\ntimezone: America/Argentina/Buenos_Aires\ntasks:\n  a: \"true\"\n",
    );
    p.pipeline("manual", "tasks:\n  a: \"true\"\n");
    let r = p.run(&["schedule", "--json", "-n", "2"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        v.as_array().unwrap().len(),
        1,
        "manual pipelines have no schedule"
    );
    for t in v[0]["next"].as_array().unwrap() {
        let t = t.as_str().unwrap();
        assert!(
            t.ends_with("T00:00:00-03:00") && (t.contains("-01-01") || t.contains("-07-01")),
            "{t}"
        );
    }
    let r = p.run(&["schedule", "nope"]);
    assert_eq!(r.code, 2);
}

#[test]
fn unusable_settings_are_refused_before_anything_runs() {
    let p = Project::new();
    p.pipeline(
        "x",
        "schedule: \"@daily\"\nmax_active_runs: 0\nwebhook: {token: \"plain-text-token-in-the-file\"}\nparams:\n  day: {type: date}\ntasks:\n  a: \"true\"\n",
    );
    let r = p.run(&["validate"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    for want in [
        "max_active_runs must be at least 1",
        "param `day` has no default",
        "write the webhook token as `${VAR}`",
    ] {
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
    }
    // A channel whose secret is not set stops the server at start, exit code 2.
    let p = Project::new();
    p.write(
        "cauce.yaml",
        &server_settings(
            "alerts:\n  channels:\n    mail:\n      email: {smtp: \"smtp://127.0.0.1:2525\", from: \"a@example.com\", to: [\"b@example.com\"], username: ops, password: \"${SMTP_PASSWORD_NOT_SET}\"}\n",
        ),
    );
    let out = p
        .cmd(&["server"])
        .env("OPS_TOKEN", OPERATOR)
        .output()
        .unwrap();
    let r = crate::common::Run::from(out);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("alerts.channels.mail") && r.stderr.contains("SMTP_PASSWORD_NOT_SET"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_hundred_pipelines_due_at_once_all_fire_in_one_pass() {
    let p = project("");
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    for i in 0..100 {
        p.pipeline(
            &format!("p{i:03}"),
            &format!("schedule: \"* * * * *\"\nstart_date: \"{today}\"\ntasks:\n  a: \"true\"\n"),
        );
    }
    let s = Server::start(&p);
    let mut runs = Vec::new();
    wait_until(
        Duration::from_secs(30),
        "100 scheduled runs to succeed",
        || {
            let (_, v) = s.get(
                "/api/v1/runs?trigger=schedule&state=success&limit=500",
                Some(VIEWER),
            );
            runs = v["runs"].as_array().cloned().unwrap_or_default();
            runs.len() >= 100
        },
    );
    let mut pipelines: Vec<&str> = runs
        .iter()
        .map(|r| r["pipeline"].as_str().unwrap())
        .collect();
    pipelines.sort();
    pipelines.dedup();
    assert!(
        pipelines.len() == 100,
        "every pipeline fired: {}",
        pipelines.len()
    );
    assert!(!s.log().contains("scheduler pass failed"), "{}", s.log());
}

#[test]
fn the_overview_counts_runs_and_one_task_can_be_run_again() {
    let p = project("");
    p.pipeline(
        "etl",
        "sla: 1h\ntasks:\n  extract: {run: \"echo x >> extract.count\", category: extraction}\n  load: {run: \"test -f ok && echo y >> load.count\", depends_on: [extract], category: load}\n  report: {run: \"echo z >> report.count\", depends_on: [load]}\n",
    );
    p.pipeline("other", "tasks:\n  a: \"true\"\n");
    let s = Server::start(&p);
    let failed = s.trigger("etl", json!({}));
    s.wait_run(&failed, Duration::from_secs(20));
    p.write("ok", "");
    for _ in 0..2 {
        let id = s.trigger("etl", json!({}));
        s.wait_run(&id, Duration::from_secs(20));
    }
    let (code, v) = s.get("/api/v1/overview", Some(VIEWER));
    assert_eq!(code, 200, "{v}");
    let etl = v["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "etl")
        .unwrap();
    assert_eq!(etl["runs_7d"], 3);
    assert!(
        (etl["success_rate_7d"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9,
        "{etl}"
    );
    assert_eq!(etl["last_run"]["state"], "success");
    assert_eq!(etl["durations"].as_array().unwrap().len(), 3);
    assert_eq!(etl["durations"][0]["state"], "failed", "oldest first");
    assert_eq!(etl["categories"], json!(["extraction", "load"]));
    assert_eq!(etl["stale"], false);
    assert!(etl["freshness_s"].as_f64().unwrap() < 60.0);
    let (_, v) = s.get("/api/v1/overview?category=load", Some(VIEWER));
    assert_eq!(v["pipelines"].as_array().unwrap().len(), 1);
    let (_, v) = s.get("/api/v1/overview?state=failed", Some(VIEWER));
    assert_eq!(v["pipelines"].as_array().unwrap().len(), 0);
    // The first run failed at `load`: run `load` again, and `report` after it, not `extract`.
    let (code, v) = s.post(
        &format!("/api/v1/runs/{failed}/tasks/load/retry"),
        Some(OPERATOR),
        &json!({}),
    );
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["tasks"], json!(["load", "report"]));
    let run = s.wait_run(&failed, Duration::from_secs(20));
    assert_eq!(run["run"]["state"], "success", "{run}");
    assert_eq!(
        p.read("extract.count").lines().count(),
        3,
        "extract ran once per run"
    );
    let (code, _) = s.post(
        &format!("/api/v1/runs/{failed}/tasks/nope/retry"),
        Some(OPERATOR),
        &json!({}),
    );
    assert_eq!(code, 409);
    let (code, _) = s.post(
        &format!("/api/v1/runs/{failed}/tasks/load/retry"),
        Some(VIEWER),
        &json!({}),
    );
    assert_eq!(code, 403);
    // The dashboard is served from the binary, with no token needed for its files.
    let page = s.http.get(s.url("/")).send().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let js = s.http.get(s.url("/ui/app.js")).send().unwrap();
    assert_eq!(js.status().as_u16(), 200);
    // The pipeline's tasks carry their column for drawing the DAG.
    let (_, d) = s.get("/api/v1/pipelines/etl", Some(VIEWER));
    let layers: Vec<u64> = d["task_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["layer"].as_u64().unwrap())
        .collect();
    assert_eq!(layers, [0, 1, 2]);
}

fn health(s: &Server) -> Value {
    s.get("/health", None).1
}

/// A project on a PostgreSQL store of its own with a per-minute schedule, and a first
/// server that has taken the scheduler lease.
fn minutely_on_postgres() -> (Project, Server) {
    let url = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(crate::store::postgres_url());
    let p = project(&format!("store: \"{url}\"\n"));
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    p.pipeline(
        "minutely",
        &format!("schedule: \"* * * * *\"\nstart_date: \"{today}\"\ntasks:\n  a: \"true\"\n"),
    );
    let a = Server::start(&p);
    wait_until(Duration::from_secs(10), "A to schedule", || {
        health(&a)["scheduling"] == true
    });
    (p, a)
}

#[test]
fn two_servers_on_one_postgresql_store_schedule_one_at_a_time() {
    let (p, a) = minutely_on_postgres();
    let b = Server::start(&p);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        health(&b)["scheduling"],
        false,
        "B stands by while A holds the lease"
    );
    // A freezes (alive, not heartbeating): B takes over once A's 3 s lease runs out.
    signal(a.child.id(), "STOP");
    let frozen = Instant::now();
    wait_until(Duration::from_secs(10), "B to take over", || {
        health(&b)["scheduling"] == true
    });
    let took = frozen.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "not before the lease ran out: {took:?}"
    );
    signal(a.child.id(), "CONT");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(health(&a)["scheduling"], false, "A came back and stands by");
    assert_eq!(health(&b)["scheduling"], true);
    // B stops cleanly and gives the lease up: A takes over at once.
    let stopped = Instant::now();
    assert_eq!(b.terminate(Duration::from_secs(15)), 0);
    wait_until(Duration::from_secs(5), "A to take over again", || {
        health(&a)["scheduling"] == true
    });
    assert!(stopped.elapsed() < Duration::from_secs(5));
    // Whoever fired, every fire time ran once.
    let runs = runs_of(&a, "minutely");
    let mut dates: Vec<&str> = runs
        .iter()
        .map(|r| r["logical_date"].as_str().unwrap())
        .collect();
    let n = dates.len();
    dates.sort();
    dates.dedup();
    assert!(
        n >= 1 && dates.len() == n,
        "a fire time ran twice: {runs:?}"
    );
}

/// Sleeps until `secs_before` seconds before the next whole minute that is at least
/// `secs_before + 1` seconds away; returns that minute.
fn sleep_until_before_next_minute(secs_before: i64) -> chrono::DateTime<chrono::Utc> {
    use chrono::{DurationRound, TimeDelta, Utc};
    let now = Utc::now();
    let mut next = now.duration_trunc(TimeDelta::minutes(1)).unwrap() + TimeDelta::minutes(1);
    if (next - now).num_milliseconds() < (secs_before + 1) * 1000 {
        next += TimeDelta::minutes(1);
    }
    let wake = next - TimeDelta::seconds(secs_before);
    std::thread::sleep((wake - Utc::now()).to_std().unwrap_or_default());
    next
}

fn scheduled_dates(s: &Server) -> Vec<String> {
    let mut dates: Vec<String> = runs_of(s, "minutely")
        .iter()
        .map(|r| r["logical_date"].as_str().unwrap().to_string())
        .collect();
    dates.sort();
    dates
}

fn fired_here(s: &Server, at: chrono::DateTime<chrono::Utc>) -> bool {
    let due = format!("due={}", at.to_rfc3339());
    s.stderr
        .lock()
        .unwrap()
        .lines()
        .any(|l| l.contains("scheduled run started") && l.contains(&due))
}

#[test]
fn a_scheduling_server_killed_hard_is_replaced_and_no_minute_is_skipped_or_doubled() {
    let (p, a) = minutely_on_postgres();
    // The latest minute is fired on the first pass (catchup: false).
    wait_until(Duration::from_secs(10), "the first fire", || {
        !scheduled_dates(&a).is_empty()
    });
    let first = scheduled_dates(&a)[0].clone();
    let b = Server::start(&p);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(health(&b)["scheduling"], false, "B stands by");

    // A dies with kill -9 four seconds before a minute: B must fire that minute.
    let m1 = sleep_until_before_next_minute(4);
    signal(a.child.id(), "KILL");
    let killed = Instant::now();
    wait_until(Duration::from_secs(10), "B to take over", || {
        health(&b)["scheduling"] == true
    });
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(4), "takeover took {took:?}");
    wait_until(Duration::from_secs(20), "B to fire the minute", || {
        fired_here(&b, m1)
    });

    // A comes back and stands by; then B dies the same way and A fires the next minute.
    let a2 = Server::start(&p);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        health(&a2)["scheduling"],
        false,
        "the restarted A stands by"
    );
    let m2 = sleep_until_before_next_minute(4);
    signal(b.child.id(), "KILL");
    wait_until(Duration::from_secs(20), "A to fire the next minute", || {
        fired_here(&a2, m2)
    });
    std::thread::sleep(Duration::from_secs(3));

    // Every minute from the first fire to the last exactly once.
    let dates = scheduled_dates(&a2);
    let parse = |d: &str| chrono::DateTime::parse_from_rfc3339(d).unwrap().timestamp();
    let start = parse(&first);
    let expected: Vec<i64> = (0..dates.len() as i64).map(|i| start + 60 * i).collect();
    let got: Vec<i64> = dates.iter().map(|d| parse(d)).collect();
    assert_eq!(
        got, expected,
        "one run per minute, none skipped or doubled: {dates:?}"
    );
    assert_eq!(got.last(), Some(&m2.timestamp()), "{dates:?}");
    assert!(got.contains(&m1.timestamp()), "{dates:?}");
}
