//! Schema-driven fuzzing of the REST API (schemathesis against the served OpenAPI document).
//!
//! This module owns one test: a real `cauce server` on a project with typed params, a
//! workflow, a schedule, a webhook and a few finished runs, then schemathesis reading
//! `/api/v1/openapi.json` and sending generated requests (valid and invalid) to every
//! operation as the operator. No answer may be a 5xx, answers must match the documented
//! schemas and content types, invalid data must be refused, and the server must still be
//! up at the end. Checks of the document's completeness (every status code and method
//! documented, every schema-valid request accepted) are not run here.
//!
//! schemathesis comes from `CAUCE_SCHEMATHESIS`, else `~/.cache/cauce/venv` (which `.ci/run`
//! fills), else `PATH`; without it the test fails. `CAUCE_FUZZ_SEED` replaces the fixed
//! seed to explore other inputs.

use crate::common::server::{server_settings, Server, OPERATOR};
use crate::common::Project;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The webhook token of the `hooked` pipeline.
const HOOK_TOKEN: &str = "hook-token-0123456789abcd";

/// Generated cases per operation in the fuzzing phase (the coverage and stateful phases add
/// their own; about a thousand requests in all, 10 to 20 s).
const MAX_EXAMPLES: &str = "25";

/// Seed of the generated data, unless `CAUCE_FUZZ_SEED` gives one.
const SEED: &str = "20240101";

/// Longest a schemathesis run may take before the test gives up on it.
const LIMIT: Duration = Duration::from_secs(240);

/// Where schemathesis is, or a failure saying how to install it.
fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("CAUCE_SCHEMATHESIS") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "CAUCE_SCHEMATHESIS is {}, which is not a file",
            p.display()
        );
        return p;
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = Path::new(&home).join(".cache/cauce/venv/bin/schemathesis");
        if p.is_file() {
            return p;
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&path)
            .map(|d| d.join("schemathesis"))
            .find(|p| p.is_file())
        {
            return p;
        }
    }
    panic!(
        "schemathesis is not installed, and the API fuzz test needs it. `.ci/run` installs it; \
         by hand: `python3 -m venv ~/.cache/cauce/venv && ~/.cache/cauce/venv/bin/pip install \
         schemathesis` (Debian needs the python3-venv package), or set CAUCE_SCHEMATHESIS to \
         its executable"
    );
}

/// A project with three pipelines: typed params with defaults and choices, a workflow, a
/// schedule and a task slow enough for a cancel to find it running (`daily`); a webhook
/// (`hooked`); a required param and a failing task to retry (`flaky`).
fn project() -> Project {
    let p = Project::new();
    p.write("cauce.yaml", &server_settings(""));
    p.pipeline(
        "daily",
        r#"description: A daily load with typed params.
schedule: "0 3 * * *"
timezone: Europe/Madrid
params:
  day: {type: date, default: "2024-01-01"}
  n: {type: integer, default: 3}
  ratio: {type: number, default: 0.5}
  full: {type: boolean, default: false}
  region: {type: string, default: eu, choices: [eu, us]}
workflows:
  load_only: [load]
tasks:
  extract: echo extract {{ params.day }} {{ params.n }}
  load:
    run: sleep 0.5 && echo load {{ params.region }} {{ params.ratio }} {{ params.full }}
    depends_on: [extract]
"#,
    );
    p.write(".env", &format!("HOOK_TOKEN={HOOK_TOKEN}\n"));
    p.pipeline(
        "hooked",
        "webhook: {token: \"${HOOK_TOKEN}\"}\nparams:\n  who: {type: string, default: world, description: Who to greet}\ntasks:\n  greet: sleep 0.3 && echo hello {{ params.who }}\n",
    );
    p.pipeline(
        "flaky",
        "params:\n  batch: {type: integer}\ntasks:\n  a: echo a {{ params.batch }}\n  b: {run: \"exit 3\", depends_on: [a]}\n  c: {run: \"sleep 0.2\", depends_on: [a]}\n",
    );
    p
}

/// A TOML string (JSON's escapes are TOML's for these values).
fn toml_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// schemathesis's settings: the operator token for the operations that declare the bearer
/// scheme (the webhook declares none and gets its own token in `?token=`), and known
/// names and ids offered often in place of random text so requests get past the 404s.
fn config(run_ids: &[String]) -> String {
    let names = |v: &[&str]| toml_list(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    format!(
        r#"generation.database = "none"
request-timeout = 15.0

# The checks that must pass. Left out: `positive_data_acceptance`, which expects every
# request the schemas allow to succeed (a pipeline's required params, `limit >= 1`, task
# names are not in the schemas); `object_level_authorization`, which needs several users; and
# `use_after_free`, which expects a DELETE to remove what it names: `DELETE /runs/{{id}}` is
# seed 001's cancel, and the cancelled run (and its report) stays readable by design.
[checks]
enabled = false
not_a_server_error.enabled = true
content_type_conformance.enabled = true
response_headers_conformance.enabled = true
response_schema_conformance.enabled = true
negative_data_rejection.enabled = true
missing_required_header.enabled = true
unsupported_method.enabled = true
ensure_resource_availability.enabled = true
ignored_auth.enabled = true
status_code_conformance.enabled = true
allow_header_conformance.enabled = true

[auth.openapi.bearer]
bearer = {operator}

[dictionaries.pipelines]
values = {pipelines}
[dictionaries.hooked]
values = ["hooked"]
[dictionaries.runs]
values = {runs}
[dictionaries.tasks]
values = {tasks}
[dictionaries.hook_token]
values = [{hook}]

[parameters]
"path.name" = {{ dictionary = "pipelines", probability = 0.7 }}
"path.id" = {{ dictionary = "runs", probability = 0.7 }}
"path.task" = {{ dictionary = "tasks", probability = 0.7 }}
"query.pipeline" = {{ dictionary = "pipelines", probability = 0.5 }}
"body.pipeline" = {{ dictionary = "pipelines", probability = 0.5 }}

[[operations]]
include-name = "POST /api/v1/hooks/{{name}}"
parameters = {{ "path.name" = {{ dictionary = "hooked", probability = 0.8 }}, "query.token" = {{ dictionary = "hook_token", probability = 0.8 }} }}
"#,
        operator = toml_str(OPERATOR),
        pipelines = names(&["daily", "hooked", "flaky"]),
        runs = toml_list(run_ids),
        tasks = names(&["extract", "load", "greet", "a", "b", "c"]),
        hook = toml_str(HOOK_TOKEN),
    )
}

#[test]
fn schemathesis_finds_no_server_error_in_the_api() {
    let exe = schemathesis();
    let p = project();
    let mut s = Server::start(&p);

    // Runs to look at: a success with params, a failure to retry, a webhook run.
    let mut run_ids = vec![
        s.trigger("daily", json!({"params": {"n": 5, "region": "us"}})),
        s.trigger("flaky", json!({"params": {"batch": 7}})),
    ];
    let (code, v) = s.post(
        "/api/v1/hooks/hooked",
        Some(HOOK_TOKEN),
        &json!({"params": {"who": "world"}}),
    );
    assert_eq!(code, 201, "{v}");
    run_ids.push(v["run_id"].as_str().unwrap().to_string());
    for id in &run_ids {
        s.wait_run(id, Duration::from_secs(30));
    }

    let config_text = config(&run_ids);
    let config_file = p.write("schemathesis.toml", &config_text);
    let seed = std::env::var("CAUCE_FUZZ_SEED").unwrap_or_else(|_| SEED.to_string());
    let out_file = p.path().join("schemathesis.out");
    let out = std::fs::File::create(&out_file).unwrap();
    let mut cmd = Command::new(&exe);
    cmd.arg("--config-file")
        .arg(&config_file)
        .arg("run")
        .arg(s.url("/api/v1/openapi.json"))
        .args(["--url", &s.base])
        .args(["--max-examples", MAX_EXAMPLES])
        // One worker: Python 3.11's ast module is not thread-safe, and schemathesis's
        // generator calls it ("AST constructor recursion depth mismatch").
        .args(["--workers", "1"])
        .args(["--seed", &seed])
        .arg("--no-color")
        .current_dir(p.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let shown = format!("{cmd:?}");
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            let output = std::fs::read_to_string(&out_file).unwrap_or_default();
            panic!(
                "schemathesis did not finish within {LIMIT:?}{}",
                details(&s, &shown, &config_text, &output)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = start.elapsed();
    let output = std::fs::read_to_string(&out_file).unwrap_or_default();

    let exited = s.child.try_wait().unwrap();
    assert!(
        exited.is_none(),
        "the server died during the fuzzing ({exited:?}){}",
        details(&s, &shown, &config_text, &output)
    );
    let (code, health) = s.get("/api/v1/health", None);
    assert_eq!(
        code,
        200,
        "the server no longer answers after the fuzzing: {health}{}",
        details(&s, &shown, &config_text, &output)
    );
    let hint = if output.contains("Runtime Error") {
        " (a `Runtime Error` is schemathesis failing, not the server: see its traceback)"
    } else {
        ""
    };
    assert!(
        status.success(),
        "schemathesis found problems ({status}) after {took:?}{hint}{}",
        details(&s, &shown, &config_text, &output)
    );
    let summary: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| l.contains(" generated, ") || l.starts_with("====") && l.contains(" in "))
        .collect();
    eprintln!("schemathesis passed in {took:?}: {}", summary.join(" "));
}

/// What a failure shows: the command, its settings, its output, and the server's warnings
/// and errors (a 5xx is logged there with its cause).
fn details(s: &Server, cmd: &str, config: &str, output: &str) -> String {
    let log = s.log();
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN ") || l.contains("panicked"))
        .collect();
    format!(
        "\n--- command ---\n{cmd}\n--- schemathesis.toml ---\n{config}\n--- schemathesis output ---\n{output}\n--- server warnings and errors ---\n{}",
        problems.join("\n")
    )
}
