//! Task kinds through the real binary: python functions and scripts, the seed-001 JSON
//! config, http against a local server, pipelines of pipelines, and the safety rules for
//! secrets and shell quoting.

use crate::common::*;
use std::io::{Read, Write};

#[test]
fn python_functions_return_their_output_into_the_report() {
    let p = Project::new();
    p.write(
        "etl/jobs.py",
        "import asyncio\n\ndef double(n, label='x'):\n    print('doubling', n)\n    return {'status': 'success', 'value': n * 2, 'label': label}\n\nasync def later():\n    await asyncio.sleep(0)\n    return {'async': True}\n\ndef broken():\n    raise ValueError('bad input file')\n\ndef soft_fail():\n    return {'status': 'error', 'message': 'source empty'}\n",
    );
    p.pipeline(
        "py",
        "params:\n  label: hi\ntasks:\n  d:\n    python:\n      module: etl.jobs\n      function: double\n      params: {n: 21, label: \"{{ params.label }}\"}\n  l:\n    python: {module: etl.jobs, function: later}\n  b:\n    python: {module: etl.jobs, function: broken}\n    critical: false\n  s:\n    python: {module: etl.jobs, function: soft_fail}\n    critical: false\n",
    );
    let r = p.run(&["run", "py", "--json", "-q"]);
    assert_eq!(
        r.code, 1,
        "two non-critical failures make it partial: {}",
        r.stderr
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["status"], "partial");
    assert_eq!(
        v["results"]["d"]["output"],
        serde_json::json!({"status": "success", "value": 42, "label": "hi"})
    );
    assert_eq!(
        v["results"]["l"]["output"],
        serde_json::json!({"async": true})
    );
    assert_eq!(v["results"]["b"]["status"], "failed");
    assert_eq!(v["results"]["s"]["error"], "source empty");
    let logs = p.run(&["logs", "latest", "b"]);
    assert!(
        logs.stdout.contains("ValueError: bad input file"),
        "{}",
        logs.stdout
    );
    let logs = p.run(&["logs", "latest", "d"]);
    assert!(logs.stdout.contains("doubling 21"), "{}", logs.stdout);
}

#[test]
fn the_seed_001_config_runs_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("demo");
    let cauce = init_project(&target);
    let config = target.join("etl_config.json");
    let config = config.to_str().unwrap();
    let r = cauce(&["validate", "--config", config]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = cauce(&["list", "workflows", "--config", config]);
    assert!(
        r.stdout.contains("full_etl") && r.stdout.contains("extraction_only"),
        "{}",
        r.stdout
    );
    let r = cauce(&[
        "run",
        "--config",
        config,
        "--workflow",
        "full_etl",
        "--json",
        "-q",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["execution_order"].as_array().unwrap().len(), 5);
    assert_eq!(v["results"]["extract_contratos"]["output"]["rows"], 50);
    assert_eq!(v["results"]["load_data_complete"]["status"], "success");
    assert!(target.join("results/contratos.json").is_file());
    let r = cauce(&[
        "run",
        "--config",
        config,
        "--workflow",
        "extraction_only",
        "--json",
        "-q",
    ]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["results"].as_object().unwrap().len(), 2);
}

#[test]
fn params_cannot_inject_shell_commands() {
    let p = Project::new();
    p.pipeline(
        "inj",
        "params:\n  name: world\ntasks:\n  t:\n    run: echo hello {{ params.name }} > out.txt\n",
    );
    let r = p.run(&["run", "inj", "-p", "name=x; touch pwned #", "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!p.path().join("pwned").exists(), "a param ran a command");
    assert_eq!(p.read("out.txt"), "hello x; touch pwned #\n");
    let r = p.run(&["run", "inj", "-p", "name=$(touch pwned2)", "-q"]);
    assert_eq!(r.code, 0);
    assert!(!p.path().join("pwned2").exists());
}

#[test]
fn secrets_from_env_are_redacted_from_logs_reports_and_errors() {
    let p = Project::new();
    p.write(".env", "API_TOKEN=s3cr3t-t0ken-value\n");
    p.pipeline(
        "sec",
        "tasks:\n  show:\n    run: echo token=${API_TOKEN}; echo env=$API_TOKEN >&2\n  fail:\n    run: echo failing with ${API_TOKEN}; exit 3\n    critical: false\n",
    );
    let r = p.run(&["run", "sec", "--json"]);
    assert_eq!(r.code, 1);
    let everything = format!("{}{}", r.stdout, r.stderr);
    let id = latest_run(&p);
    let logs = p.run(&["logs", &id]);
    let status = p.run(&["status", &id, "--json"]);
    let report = p.read(&format!(".cauce/reports/{id}.json"));
    for text in [&everything, &logs.stdout, &status.stdout, &report] {
        assert!(
            !text.contains("s3cr3t-t0ken-value"),
            "secret leaked: {text}"
        );
    }
    assert!(
        logs.stdout.contains("token=***") && logs.stdout.contains("env=***"),
        "{}",
        logs.stdout
    );
    // The task itself got the real value.
    p.pipeline(
        "check",
        "tasks:\n  t: test \"$API_TOKEN\" = s3cr3t-t0ken-value\n",
    );
    assert_eq!(p.run(&["run", "check", "-q"]).code, 0);
}

#[test]
fn a_missing_env_var_fails_the_task_without_retrying() {
    let p = Project::new();
    p.pipeline("miss", "tasks:\n  t:\n    run: echo ${CAUCE_TEST_NOT_SET_ANYWHERE}\n    retries: 3\n    retry_delay: 5s\n");
    let start = std::time::Instant::now();
    let r = p.run(&["run", "miss"]);
    assert_eq!(r.code, 1);
    assert!(
        start.elapsed().as_secs() < 5,
        "retried a configuration error"
    );
    let s = p.status(&latest_run(&p));
    assert!(
        s["tasks"][0]["error"]
            .as_str()
            .unwrap()
            .contains("CAUCE_TEST_NOT_SET_ANYWHERE"),
        "{s}"
    );
}

/// A one-shot HTTP server on loopback answering `status` to every request; returns its port
/// and a handle yielding the requests it saw.
fn http_server(
    status: u16,
    body: &'static str,
    requests: usize,
) -> (u16, std::thread::JoinHandle<Vec<String>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..requests {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 8192];
            let n = s.read(&mut buf).unwrap();
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).unwrap();
        }
        seen
    });
    (port, handle)
}

#[test]
fn http_tasks_check_the_status_and_keep_small_json_bodies() {
    let p = Project::new();
    let (port, server) = http_server(200, "{\"refreshed\": true}", 1);
    p.pipeline(
        "h",
        &format!("tasks:\n  refresh:\n    http:\n      url: http://127.0.0.1:{port}/refresh?day={{{{ ds }}}}\n      method: POST\n      headers: {{X-Token: abc123}}\n      json: {{dashboard: sales}}\n"),
    );
    let r = p.run(&["run", "h", "--json", "-q", "--logical-date", "2024-05-06"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["results"]["refresh"]["output"]["body"]["refreshed"], true);
    let seen = server.join().unwrap();
    assert!(
        seen[0].starts_with("POST /refresh?day=2024-05-06"),
        "{}",
        seen[0]
    );
    assert!(seen[0].to_lowercase().contains("x-token: abc123"));
    assert!(seen[0].contains("{\"dashboard\":\"sales\"}"), "{}", seen[0]);

    let (port, server) = http_server(503, "{}", 2);
    p.pipeline("h2", &format!("tasks:\n  t:\n    http: http://127.0.0.1:{port}/\n    retries: 1\n    retry_delay: 10ms\n"));
    let r = p.run(&["run", "h2"]);
    assert_eq!(r.code, 1);
    assert_eq!(server.join().unwrap().len(), 2, "a 503 is retried");
    let s = p.status(&latest_run(&p));
    assert!(
        s["tasks"][0]["error"].as_str().unwrap().contains("503"),
        "{s}"
    );
}

#[test]
fn a_pipeline_task_runs_another_pipeline_as_a_child_run() {
    let p = Project::new();
    p.pipeline(
        "child",
        "params:\n  who: nobody\ntasks:\n  c: echo child {{ params.who }} >> ran\n",
    );
    p.pipeline("parent", "tasks:\n  first: echo parent >> ran\n  sub:\n    pipeline: {name: child, params: {who: parent}}\n    depends_on: [first]\n");
    let r = p.run(&["run", "parent", "--json", "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(p.read("ran"), "parent\nchild parent\n");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let child_id = v["results"]["sub"]["output"]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let child = p.status(&child_id);
    assert_eq!(child["run"]["state"], "success");
    assert_eq!(child["run"]["parent_run_id"], v["execution_id"]);
    // A pipeline that runs itself is stopped, not recursed forever.
    p.pipeline("selfish", "tasks:\n  me:\n    pipeline: selfish\n");
    let r = p.run(&["run", "selfish"]);
    assert_eq!(r.code, 1);
}

#[test]
fn secrets_from_the_real_environment_and_in_outputs_are_redacted() {
    let p = Project::new();
    p.write("etl/leak.py", "import os\n\ndef run():\n    return {'dsn': 'postgres://u:' + os.environ['CAUCE_IT_DB_PASSWORD'] + '@db/x'}\n");
    p.pipeline(
        "leak",
        "tasks:\n  show:\n    run: echo pw=${CAUCE_IT_DB_PASSWORD}\n  out:\n    python: {module: etl.leak, function: run}\n    env: {UNUSED: \"${CAUCE_IT_DB_PASSWORD}\"}\n",
    );
    let out = p
        .cmd(&["run", "leak", "--json", "-q"])
        .env("CAUCE_IT_DB_PASSWORD", "hunter2-from-env")
        .output()
        .unwrap();
    let r = Run::from(out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains("hunter2-from-env"), "{}", r.stdout);
    let logs = p.run(&["logs", "latest"]);
    assert!(logs.stdout.contains("pw=***"), "{}", logs.stdout);
    assert!(!logs.stdout.contains("hunter2-from-env"), "{}", logs.stdout);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        v["results"]["out"]["output"]["dsn"],
        "postgres://u:***@db/x"
    );
}

#[test]
fn json_bodies_take_template_values_as_json_strings() {
    let p = Project::new();
    let (port, server) = http_server(200, "{}", 1);
    p.pipeline(
        "j",
        &format!("params:\n  note: x\ntasks:\n  post:\n    http:\n      url: http://127.0.0.1:{port}/\n      method: POST\n      json: {{text: \"{{{{ params.note }}}}\", n: 3}}\n"),
    );
    let r = p.run(&["run", "j", "-q", "-p", "note=say \"hi\", then {leave}"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let seen = server.join().unwrap();
    let body = seen[0].split("\r\n\r\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["text"], "say \"hi\", then {leave}");
    assert_eq!(v["n"], 3);
}

#[test]
fn retrying_a_crashed_parent_closes_its_orphaned_child_run() {
    let p = Project::new();
    p.pipeline(
        "inner",
        "tasks:\n  work:\n    run: if [ -f started ]; then exit 0; fi; echo $$ > work.pid; touch started; sleep 60\n",
    );
    p.pipeline("outer", "tasks:\n  sub:\n    pipeline: inner\n");
    let child = p.spawn(&["run", "outer"]);
    p.wait_for_file("started", std::time::Duration::from_secs(10));
    signal(child.id(), "KILL");
    let _ = wait_with_limit(child, std::time::Duration::from_secs(5));
    let runs: serde_json::Value = serde_json::from_str(&p.run(&["runs", "--json"]).stdout).unwrap();
    let parent = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pipeline"] == "outer")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let old_child = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["parent_run_id"] == parent.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = p.run(&["retry", &parent]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let orphan: i32 = p.read("work.pid").trim().parse().unwrap();
    assert!(!alive(orphan), "the child's task process survived");
    let old = p.status(&old_child);
    assert_eq!(old["run"]["state"], "cancelled");
    assert_eq!(old["tasks"][0]["state"], "cancelled");
    assert_eq!(p.status(&parent)["run"]["state"], "success");
}
