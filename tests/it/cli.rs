//! The command line: validation that reports everything at once, listings, init, dry runs,
//! selections, params and exit codes.

use crate::common::*;

#[test]
fn validate_reports_every_problem_with_its_place() {
    let p = Project::new();
    p.write("scripts/not_exec.sh", "#!/bin/sh\necho hi\n");
    p.pipeline(
        "broken",
        "schedule: \"0 25 * * *\"\ntimezone: Mars/Olympus\ntasks:\n  a:\n    run: echo a\n    depends_on: [c]\n  b:\n    run: echo b\n    depends_on: [a]\n  c:\n    run: echo c\n    depends_on: [b]\n  d:\n    run: echo d\n    depends_on: [extrac]\n  extract:\n    run: ./scripts/missing.sh\n  e:\n    run: ./scripts/not_exec.sh\n  f:\n    python:\n      module: etl.nowhere\n  g:\n    run: echo g\n    timeout: 5 minutos\n",
    );
    let r = p.run(&["validate"]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    let e = &r.stderr;
    assert!(e.contains("dependency cycle: a -> c -> b -> a"), "{e}");
    assert!(e.contains("broken.yaml:15:18: `tasks.d.depends_on`: unknown dependency `extrac` (did you mean `extract`?)"), "{e}");
    assert!(e.contains("`./scripts/missing.sh` does not exist"), "{e}");
    assert!(
        e.contains("`./scripts/not_exec.sh` is not executable"),
        "{e}"
    );
    assert!(e.contains("python module `etl.nowhere` not found"), "{e}");
    assert!(
        e.contains("broken.yaml:25:14: `tasks.g.timeout`: invalid duration"),
        "{e}"
    );
    assert!(
        e.contains("broken.yaml:1:11: `schedule`: invalid cron expression"),
        "{e}"
    );
    assert!(
        e.contains("broken.yaml:2:11: `timezone`: unknown time zone `Mars/Olympus`"),
        "{e}"
    );
    assert!(e.contains("8 error(s)"), "{e}");
    // JSON output carries the same problems.
    let j = p.run(&["validate", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"].as_array().unwrap().len(), 8);
    // A broken pipeline is not run either.
    assert_eq!(p.run(&["run", "broken"]).code, 2);
}

#[test]
fn unknown_keys_and_bad_yaml_are_located() {
    let p = Project::new();
    p.pipeline("typo", "tasks:\n  a:\n    run: echo\n    retires: 2\n");
    let r = p.run(&["validate", "typo"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains(
            "typo.yaml:4:5: `tasks.a.retires`: unknown key `retires` (did you mean `retries`?)"
        ),
        "{}",
        r.stderr
    );
    p.pipeline("syntax", "tasks:\n  a: [unclosed\n");
    let r = p.run(&["validate", "syntax"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("syntax.yaml:"), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    p.write("cauce.yaml", "name: x\nmax_wokers: 3\n");
    let r = p.run(&["validate"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("did you mean `max_workers`"),
        "{}",
        r.stderr
    );
}

#[test]
fn init_creates_a_project_that_runs() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("demo");
    let cauce = init_project(&target);
    let r = cauce(&["validate"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = cauce(&["run", "daily_sales", "-p", "region=sur"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let csv = std::fs::read_dir(target.join("results"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(csv).unwrap();
    assert!(text.starts_with("day,region,orders,total\n"), "{text}");
    assert_eq!(text.lines().count(), 2, "only the sur region: {text}");
    // init refuses to overwrite.
    let again = std::process::Command::new(bin())
        .arg("init")
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
}

#[test]
fn dry_run_prints_the_plan_layer_by_layer_and_runs_nothing() {
    let p = Project::new();
    p.pipeline(
        "plan",
        "tasks:\n  a: touch a\n  b:\n    run: touch b\n    depends_on: [a]\n  c:\n    run: touch c\n    depends_on: [a]\n  d:\n    run: touch d\n    depends_on: [b, c]\n",
    );
    let r = p.run(&["run", "plan", "--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = &r.stdout;
    let l1 = out.find("layer 1:").unwrap();
    let l2 = out.find("layer 2:").unwrap();
    let l3 = out.find("layer 3:").unwrap();
    assert!(out[l1..l2].contains("a: run: touch a"), "{out}");
    assert!(
        out[l2..l3].contains("b:") && out[l2..l3].contains("c:"),
        "{out}"
    );
    assert!(out[l3..].contains("d: run: touch d  (after b, c)"), "{out}");
    assert!(!p.path().join("a").exists());
}

#[test]
fn selections_workflows_and_categories() {
    let p = Project::new();
    p.pipeline(
        "sel",
        "workflows:\n  only_b: [b]\ntasks:\n  a:\n    run: echo a >> ran\n    category: extraction\n  b:\n    run: echo b >> ran\n    depends_on: [a]\n    category: load\n  c:\n    run: echo c >> ran\n    category: extraction\n",
    );
    assert_eq!(p.run(&["run", "sel", "--tasks", "b", "-q"]).code, 0);
    assert_eq!(p.read("ran"), "b\n");
    std::fs::remove_file(p.path().join("ran")).unwrap();
    assert_eq!(
        p.run(&["run", "sel", "--tasks", "b", "--with-upstream", "-q"])
            .code,
        0
    );
    assert_eq!(p.read("ran"), "a\nb\n");
    std::fs::remove_file(p.path().join("ran")).unwrap();
    assert_eq!(p.run(&["run", "sel", "--workflow", "only_b", "-q"]).code, 0);
    assert_eq!(p.read("ran"), "b\n");
    std::fs::remove_file(p.path().join("ran")).unwrap();
    assert_eq!(
        p.run(&[
            "run",
            "sel",
            "--category",
            "extraction",
            "--max-workers",
            "1",
            "-q"
        ])
        .code,
        0
    );
    assert_eq!(p.read("ran"), "a\nc\n");
    let r = p.run(&["run", "sel", "--workflow", "ony_b"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("did you mean `only_b`"), "{}", r.stderr);
    let r = p.run(&["run", "sel", "--tasks", "zz"]);
    assert_eq!(r.code, 2);
    let r = p.run(&["run", "nope"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("pipelines: sel"), "{}", r.stderr);
}

#[test]
fn params_are_checked_typed_and_reach_tasks() {
    let p = Project::new();
    p.pipeline(
        "par",
        "params:\n  day: {type: date, default: 2024-01-02}\n  n: {type: integer, default: \"1\"}\ntasks:\n  t:\n    run: echo {{ params.day }} {{ params.n }} $CAUCE_PARAM_DAY {{ ds }} > out.txt\n",
    );
    let r = p.run(&[
        "run",
        "par",
        "-p",
        "n=5",
        "--logical-date",
        "2024-03-04",
        "-q",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(p.read("out.txt"), "2024-01-02 5 2024-01-02 2024-03-04\n");
    let r = p.run(&["run", "par", "-p", "n=five"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("`five` is not an integer"),
        "{}",
        r.stderr
    );
    let r = p.run(&["run", "par", "-p", "dya=2024-01-01"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("did you mean `day`"), "{}", r.stderr);
    let r = p.run(&["run", "par", "-p", "novalue"]);
    assert_eq!(r.code, 2);
}

#[test]
fn list_shows_pipelines_tasks_and_workflows() {
    let p = Project::new();
    p.pipeline(
        "one",
        "description: first\nschedule: \"@daily\"\nworkflows:\n  w: [a]\ntasks:\n  a:\n    run: echo\n    category: extraction\n  b:\n    run: echo\n    category: load\n",
    );
    let r = p.run(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v[0]["name"], "one");
    assert_eq!(v[0]["tasks"], 2);
    let r = p.run(&["list", "tasks", "--category", "load", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["task"], "b");
    let r = p.run(&["list", "workflows"]);
    assert!(r.stdout.contains("one / w"), "{}", r.stdout);
}

#[test]
fn runs_status_logs_and_report() {
    let p = Project::new();
    p.pipeline("hello", "tasks:\n  greet: echo hola mundo\n");
    assert_eq!(p.run(&["run", "hello", "-q"]).code, 0);
    let id = latest_run(&p);
    let runs = p.run(&["runs"]);
    assert!(
        runs.stdout.contains(&id) && runs.stdout.contains("success"),
        "{}",
        runs.stdout
    );
    let status = p.run(&["status", "--latest"]);
    assert!(
        status.stdout.contains("greet") && status.stdout.contains("success"),
        "{}",
        status.stdout
    );
    let logs = p.run(&["logs", &id, "greet"]);
    assert!(logs.stdout.contains("hola mundo"), "{}", logs.stdout);
    let json: serde_json::Value =
        serde_json::from_str(&p.run(&["logs", &id, "--json"]).stdout).unwrap();
    assert_eq!(json[0]["task_id"], "greet");
    assert!(json[0]["text"].as_str().unwrap().contains("hola mundo"));
    let report = p.run(&["report", "latest"]);
    let v: serde_json::Value = serde_json::from_str(&report.stdout).unwrap();
    assert_eq!(v["results"]["greet"]["status"], "success");
    assert_eq!(p.run(&["status", "nope"]).code, 2);
    assert_eq!(p.run(&["logs", &id, "nope"]).code, 2);
}

#[test]
fn logs_follow_streams_until_the_task_ends() {
    let p = Project::new();
    p.pipeline(
        "talk",
        "tasks:\n  t: for i in 1 2 3 4 5; do echo line$i; sleep 0.2; done\n",
    );
    let run = p.spawn(&["run", "talk", "-q"]);
    // Wait for the run to exist, then follow.
    let start = std::time::Instant::now();
    let id = loop {
        let r = p.run(&["runs", "--json"]);
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&r.stdout) {
            if let Some(id) = v[0]["id"].as_str() {
                break id.to_string();
            }
        }
        assert!(start.elapsed().as_secs() < 10);
        std::thread::sleep(std::time::Duration::from_millis(30));
    };
    let follow = p.spawn(&["logs", &id, "t", "--follow"]);
    let out = wait_with_limit(follow, std::time::Duration::from_secs(20));
    assert!(
        out.stdout.contains("line1") && out.stdout.contains("line5"),
        "{}",
        out.stdout
    );
    assert_eq!(
        wait_with_limit(run, std::time::Duration::from_secs(20)).code,
        0
    );
}

#[test]
fn a_closed_output_pipe_is_not_an_error() {
    let p = Project::new();
    p.pipeline("many", "tasks:\n  a: \"true\"\n  b: \"true\"\n");
    assert_eq!(p.run(&["run", "many", "-q"]).code, 0);
    let script = format!(
        "'{}' --project '{}' report latest | head -c 1 > /dev/null; exit ${{PIPESTATUS[0]}}",
        bin(),
        p.path().display()
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn the_store_setting_can_use_env_file_values() {
    let p = Project::new();
    p.write(".env", "CAUCE_IT_STATE_DIR=state-here\n");
    p.write(
        "cauce.yaml",
        "name: t\nstore: \"sqlite:${CAUCE_IT_STATE_DIR}/cauce.db\"\n",
    );
    p.pipeline("one", "tasks:\n  a: \"true\"\n");
    let r = p.run(&["run", "one", "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        p.path().join("state-here/cauce.db").is_file(),
        "relative to the project, from .env"
    );
    p.write(
        "cauce.yaml",
        "name: t\nstore: \"sqlite:${CAUCE_IT_NOT_SET_ANYWHERE}/x.db\"\n",
    );
    let r = p.run(&["runs"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("CAUCE_IT_NOT_SET_ANYWHERE"),
        "{}",
        r.stderr
    );
}
