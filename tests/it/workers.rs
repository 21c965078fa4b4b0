//! `cauce worker` as real processes on a PostgreSQL store (a schema of each test's own):
//! attempts go to the workers of their queue, `cauce workers` lists them, a drained worker
//! finishes what it runs, a `kill -9`ed worker's attempt is re-run elsewhere after its
//! lease, a frozen worker's late result is rejected, a soak with workers killed at random
//! ends with exactly one success per task, the run survives a PostgreSQL restart, a
//! coordinator whose run was taken over steps down, and machines that share no folder
//! pass datasets and logs through an S3 bucket (moto's S3 server).

use crate::common::{alive, latest_run, signal, Project};
use serde_json::Value;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A project whose runs are executed by workers, on a fresh PostgreSQL schema.
fn project() -> Project {
    let url = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(crate::store::postgres_url());
    let p = Project::new();
    p.write(
        "cauce.yaml",
        &format!("store: \"{url}\"\nexecutor: workers\nlease: 2s\nkill_grace: 1s\n"),
    );
    p
}

/// A worker process whose log goes to a file (`worker-N.log` in the project).
struct Worker {
    child: Child,
    log: std::path::PathBuf,
}

impl Worker {
    fn start(p: &Project, name: &str, args: &[&str]) -> Worker {
        let log = p.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut all = vec!["worker"];
        all.extend(args);
        let child = p
            .cmd(&all)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Worker { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for it to exit; its exit code.
    fn wait(mut self, limit: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < limit,
                "worker did not exit: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid in an attempt owner id (`host:pid:nonce`).
fn owner_pid(attempt: &Value) -> u32 {
    attempt["owner"]
        .as_str()
        .and_then(|o| o.split(':').nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

fn attempts_of<'a>(status: &'a Value, task: &str) -> Vec<&'a Value> {
    status["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["task_id"] == task)
        .collect()
}

fn workers_json(p: &Project) -> Vec<Value> {
    let r = p.run(&["workers", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    serde_json::from_str::<Value>(&r.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn attempts_go_to_the_workers_of_their_queue_and_workers_are_listed() {
    let p = project();
    p.pipeline(
        "q",
        r#"
tasks:
  a: "echo a"
  b: "echo b"
  g:
    run: "echo on the gpu queue"
    queue: gpu
  c:
    depends_on: [a, b, g]
    run: "echo c"
"#,
    );
    let cpu = Worker::start(&p, "cpu", &["--slots", "2", "--label", "zone=eu"]);
    let gpu = Worker::start(&p, "gpu", &["--queues", "gpu", "--slots", "1"]);
    wait_until(Duration::from_secs(10), "two workers", || {
        workers_json(&p).len() == 2
    });
    let r = p.run(&["run", "q"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let status = p.status(&latest_run(&p));
    for t in ["a", "b", "c"] {
        let a = attempts_of(&status, t);
        assert_eq!(a.len(), 1, "{status}");
        assert_eq!(
            owner_pid(a[0]),
            cpu.pid(),
            "{t} ran on the default queue's worker"
        );
    }
    assert_eq!(owner_pid(attempts_of(&status, "g")[0]), gpu.pid());
    let log = std::fs::read_to_string(attempts_of(&status, "g")[0]["log_path"].as_str().unwrap())
        .unwrap();
    assert!(log.contains("on the gpu queue"), "{log}");
    let listed = workers_json(&p);
    let w = listed.iter().find(|w| w["pid"] == cpu.pid()).unwrap();
    assert_eq!(w["queues"], serde_json::json!(["default"]));
    assert_eq!(w["labels"], serde_json::json!(["zone=eu"]));
    assert_eq!(
        (&w["slots"], &w["running"]),
        (&Value::from(2), &Value::from(0))
    );
    let table = p.run(&["workers"]).stdout;
    assert!(table.contains("gpu") && table.contains(" up "), "{table}");
    // SIGTERM: both drain (nothing running) and exit 0, recorded as stopped.
    signal(cpu.pid(), "TERM");
    signal(gpu.pid(), "TERM");
    assert_eq!(cpu.wait(Duration::from_secs(10)), 0);
    assert_eq!(gpu.wait(Duration::from_secs(10)), 0);
    assert!(workers_json(&p).iter().all(|w| !w["stopped_at"].is_null()));
}

#[test]
fn a_draining_worker_finishes_its_attempt_and_claims_no_more() {
    let p = project();
    p.pipeline(
        "d",
        "tasks:\n  first: \"sleep 2 && echo first done\"\n  second:\n    depends_on: [first]\n    run: \"echo second\"\n",
    );
    let w1 = Worker::start(&p, "w1", &["--slots", "1"]);
    let run = p.spawn(&["run", "d"]);
    wait_running(&p, "first");
    signal(w1.pid(), "TERM");
    let w1_pid = w1.pid();
    assert_eq!(w1.wait(Duration::from_secs(15)), 0);
    let id = latest_run(&p);
    let s = p.status(&id);
    let first = attempts_of(&s, "first");
    assert_eq!(
        (first.len(), &first[0]["state"]),
        (1, &Value::from("success")),
        "{s}"
    );
    assert_eq!(owner_pid(first[0]), w1_pid);
    assert_eq!(s["run"]["state"], "running", "second waits for a worker");
    let w2 = Worker::start(&p, "w2", &["--slots", "1"]);
    let r = crate::common::wait_with_limit(run, Duration::from_secs(20));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let s = p.status(&id);
    assert_eq!(owner_pid(attempts_of(&s, "second")[0]), w2.pid());
}

/// Every one of the run's `n` tasks has exactly one successful attempt: none lost, none
/// run twice.
fn assert_one_success_each(status: &Value, n: usize) {
    let mut successes = std::collections::HashMap::new();
    for a in status["attempts"].as_array().unwrap() {
        if a["state"] == "success" {
            *successes.entry(a["task_id"].as_str().unwrap()).or_insert(0) += 1;
        }
    }
    assert_eq!(successes.len(), n, "a task was lost");
    assert!(
        successes.values().all(|c| *c == 1),
        "a task succeeded twice"
    );
}

/// Waits until the first attempt of `task` in the newest run is running.
fn wait_running(p: &Project, task: &str) {
    wait_until(Duration::from_secs(15), &format!("{task} to start"), || {
        latest_run_opt(p).is_some_and(|id| {
            attempts_of(&p.status(&id), task)
                .first()
                .is_some_and(|a| a["state"] == "running")
        })
    });
}

fn latest_run_opt(p: &Project) -> Option<String> {
    let r = p.run(&["runs", "--json"]);
    let v: Value = serde_json::from_str(&r.stdout).ok()?;
    v.as_array()?.first()?["id"].as_str().map(String::from)
}

#[test]
fn a_killed_worker_s_attempt_runs_again_on_another_worker() {
    let p = project();
    p.pipeline(
        "k",
        "tasks:\n  long:\n    run: \"sleep 3 && echo finished\"\n    retries: 1\n    retry_delay: 0s\n",
    );
    let a = Worker::start(&p, "a", &["--slots", "1"]);
    let run = p.spawn(&["run", "k"]);
    wait_running(&p, "long");
    signal(a.pid(), "KILL");
    let b = Worker::start(&p, "b", &["--slots", "1"]);
    let r = crate::common::wait_with_limit(run, Duration::from_secs(30));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let s = p.status(&latest_run(&p));
    let tries = attempts_of(&s, "long");
    let states: Vec<&str> = tries.iter().map(|t| t["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["lost", "success"], "{s}");
    assert_eq!(owner_pid(tries[1]), b.pid());
    assert_eq!(tries.iter().filter(|t| t["state"] == "success").count(), 1);
}

#[test]
fn a_frozen_worker_s_late_result_is_rejected() {
    let p = project();
    p.pipeline(
        "f",
        "tasks:\n  slow:\n    run: \"sleep 2 && echo slow done\"\n    retries: 2\n    retry_delay: 0s\n",
    );
    let a = Worker::start(&p, "a", &["--slots", "1"]);
    let run = p.spawn(&["run", "f"]);
    wait_running(&p, "slow");
    // A stops heartbeating (its task's process runs on and ends while A is frozen).
    signal(a.pid(), "STOP");
    let b = Worker::start(&p, "b", &["--slots", "1"]);
    let r = crate::common::wait_with_limit(run, Duration::from_secs(30));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    signal(a.pid(), "CONT");
    wait_until(
        Duration::from_secs(10),
        "A to try to record its result",
        || a.log().contains("result rejected"),
    );
    let s = p.status(&latest_run(&p));
    let tries = attempts_of(&s, "slow");
    let states: Vec<&str> = tries.iter().map(|t| t["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["lost", "success"], "{s}");
    assert_eq!(owner_pid(tries[1]), b.pid());
    assert_eq!(s["tasks"][0]["state"], "success");
    drop(b);
}

#[test]
fn a_soak_with_workers_killed_at_random_ends_with_one_success_per_task() {
    let p = project();
    let n = 1000;
    let mut yaml = String::from("defaults: {retries: 5, retry_delay: 0s}\ntasks:\n");
    for i in 0..n {
        yaml.push_str(&format!("  t{i}: \"true\"\n"));
    }
    p.pipeline("soak", &yaml);
    let mut workers: Vec<Worker> = (0..4)
        .map(|i| Worker::start(&p, &format!("w{i}"), &["--slots", "4"]))
        .collect();
    let mut run = p.spawn(&["run", "soak", "-q"]);
    let start = Instant::now();
    let mut kills = 0;
    let mut seed: u64 = 0x5eed;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    loop {
        if run.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "the soak did not end"
        );
        std::thread::sleep(Duration::from_millis(700 + next() % 600));
        if kills < 6 {
            let i = (next() % workers.len() as u64) as usize;
            signal(workers[i].pid(), "KILL");
            kills += 1;
            workers[i] = Worker::start(&p, &format!("w{i}-{kills}"), &["--slots", "4"]);
        }
    }
    let code = run.wait().unwrap().code();
    assert_eq!(code, Some(0));
    let s = p.status(&latest_run(&p));
    assert_eq!(s["run"]["state"], "success");
    let tasks = s["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), n);
    assert!(tasks.iter().all(|t| t["state"] == "success"));
    for a in s["attempts"].as_array().unwrap() {
        assert_ne!(a["state"], "running", "{a}");
    }
    assert_one_success_each(&s, n);
    let report = p.run(&["report", &latest_run(&p)]);
    let report: Value = serde_json::from_str(&report.stdout).unwrap();
    assert_eq!(report["status"], "success");
    assert_eq!(report["results"].as_object().unwrap().len(), n);
    for w in workers.drain(..) {
        assert!(alive(w.pid() as i32));
    }
}

#[test]
fn a_server_run_executes_on_a_worker_and_the_api_lists_the_worker() {
    use crate::common::server::{server_settings, Server, VIEWER};
    let url = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(crate::store::postgres_url());
    let p = Project::new();
    p.write(
        "cauce.yaml",
        &server_settings(&format!(
            "store: \"{url}\"\nexecutor: workers\nshared_dir: shared\n"
        )),
    );
    p.pipeline("hello", "tasks:\n  speak: \"echo hello from a worker\"\n");
    let w = Worker::start(&p, "w", &["--slots", "1", "--label", "zone=eu"]);
    let s = Server::start(&p);
    let id = s.trigger("hello", serde_json::json!({}));
    let detail = s.wait_run(&id, Duration::from_secs(20));
    assert_eq!(detail["run"]["state"], "success", "{detail}");
    assert_eq!(owner_pid(&detail["attempts"][0]), w.pid());
    // The worker wrote the log into the shared folder, where the server reads it.
    let (code, log) = s.get(&format!("/api/v1/runs/{id}/tasks/speak/logs"), Some(VIEWER));
    assert_eq!(code, 200, "{log}");
    assert!(log.to_string().contains("hello from a worker"), "{log}");
    assert!(p.path().join("shared/logs").join(&id).is_dir());
    let (code, v) = s.get("/api/v1/workers", Some(VIEWER));
    assert_eq!(code, 200, "{v}");
    let me = v
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["pid"] == w.pid())
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(me["state"], "up");
    assert_eq!(me["labels"], serde_json::json!(["zone=eu"]));
    assert!(me["heartbeat_age_ms"].as_i64().unwrap() < 3000);
}

/// A PostgreSQL server of the test's own (initdb in a temporary folder, a free port), so
/// it can be restarted without disturbing the tests that share the machine's server.
struct PrivatePg {
    dir: tempfile::TempDir,
    port: u16,
    bin: std::path::PathBuf,
}

impl PrivatePg {
    fn command(&self, program: &str) -> std::process::Command {
        pg_command(&self.bin, program)
    }

    fn start() -> PrivatePg {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries in /usr/lib/postgresql")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").is_file())
            .expect("initdb");
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = PrivatePg { dir, port, bin };
        let data = pg.dir.path().join("data");
        let out = pg
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            pg.dir.path().display()
        );
        let out = pg
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-o", &opts, "-l"])
            .arg(pg.dir.path().join("log"))
            .args(["-w", "start"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn restart(&self) {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "fast", "-l"])
            .arg(self.dir.path().join("log"))
            .args(["-w", "restart"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl restart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// PostgreSQL's programs refuse to run as root: as root they run as the `postgres` user.
fn pg_command(bin: &std::path::Path, program: &str) -> std::process::Command {
    let path = bin.join(program);
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        std::process::Command::new(path)
    }
}

#[test]
fn workers_and_the_coordinator_ride_through_a_postgresql_restart() {
    let pg = PrivatePg::start();
    let p = Project::new();
    p.write(
        "cauce.yaml",
        &format!(
            "store: \"{}\"\nexecutor: workers\nlease: 10s\nkill_grace: 1s\n",
            pg.url()
        ),
    );
    let n = 150;
    let mut yaml = String::from("tasks:\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "  a{i}: \"sleep 0.2\"\n  b{i}:\n    depends_on: [a{i}]\n    run: \"true\"\n"
        ));
    }
    p.pipeline("many", &yaml);
    let workers: Vec<Worker> = (0..2)
        .map(|i| Worker::start(&p, &format!("w{i}"), &["--slots", "4"]))
        .collect();
    let run = p.spawn(&["run", "many", "-q"]);
    wait_until(Duration::from_secs(30), "some tasks to succeed", || {
        latest_run_opt(&p).is_some_and(|id| {
            let s = p.status(&id);
            s["tasks"]
                .as_array()
                .is_some_and(|t| t.iter().filter(|t| t["state"] == "success").count() > 20)
        })
    });
    pg.restart();
    let mut run = run;
    assert!(
        run.try_wait().unwrap().is_none(),
        "the run ended before the database came back; the restart was not in its middle"
    );
    let r = crate::common::wait_with_limit(run, Duration::from_secs(120));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let s = p.status(&latest_run(&p));
    assert_eq!(s["run"]["state"], "success", "{s}");
    let tasks = s["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2 * n);
    assert_one_success_each(&s, 2 * n);
    drop(workers);
}

#[test]
fn a_queue_no_worker_could_subscribe_to_is_refused() {
    let p = Project::new();
    p.pipeline("q", "tasks:\n  a:\n    run: \"true\"\n    queue: \"\"\n");
    let r = p.run(&["validate", "q"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("q.yaml:2:3: `tasks.a.queue`: queue `` is not a name"),
        "{}",
        r.stderr
    );
}

/// An S3 server of the test's own: moto's, from the virtualenv `.ci/run` makes
/// (`CAUCE_TEST_MOTO` to use another), on a free loopback port.
struct S3Server {
    child: Child,
    endpoint: String,
}

impl S3Server {
    fn start() -> S3Server {
        let bin = std::env::var("CAUCE_TEST_MOTO")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| {
                std::path::Path::new(&std::env::var("HOME").unwrap_or_default())
                    .join(".cache/cauce/venv/bin/moto_server")
            });
        assert!(
            bin.is_file(),
            "the shared-storage test needs an S3 server; `.ci/run` installs moto, by hand: \
             `~/.cache/cauce/venv/bin/pip install 'moto[server]'`"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let endpoint = format!("http://127.0.0.1:{port}");
        let http = reqwest::blocking::Client::new();
        wait_until(Duration::from_secs(30), "the S3 server", || {
            http.get(&endpoint).send().is_ok()
        });
        S3Server { child, endpoint }
    }

    fn create_bucket(&self, name: &str) {
        let r = reqwest::blocking::Client::new()
            .put(format!("{}/{name}", self.endpoint))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{r:?}");
    }

    /// The keys in a bucket under a prefix.
    fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let body = reqwest::blocking::get(format!(
            "{}/{bucket}?list-type=2&prefix={prefix}&max-keys=1000",
            self.endpoint
        ))
        .unwrap()
        .text()
        .unwrap();
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a log chunk has this line (the command's own echo line aside).
fn has_line(chunk: &Value, line: &str) -> bool {
    chunk["text"]
        .as_str()
        .unwrap_or("")
        .lines()
        .any(|l| l == line)
}

#[test]
fn datasets_and_logs_cross_machines_through_an_s3_bucket() {
    use crate::common::server::{server_settings, Server, VIEWER};
    let s3 = S3Server::start();
    s3.create_bucket("cauce-shared");
    let url = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(crate::store::postgres_url());
    let settings = format!(
        "store: \"{url}\"\nexecutor: workers\n\
         shared_dir: s3://cauce-shared/cluster\n\
         shared_options:\n  endpoint: {}\n  allow_http: \"true\"\n  region: us-east-1\n  access_key_id: test\n  secret_access_key: \"${{S3_SECRET}}\"\n",
        s3.endpoint
    );
    // Three machines that share no folder: A and B run workers, C the server. Each has
    // the project checked out (C's copy is where the runs' pipelines point).
    let a = Project::new();
    let b = Project::new();
    let c = Project::new();
    for m in [&a, &b, &c] {
        m.write("cauce.yaml", &server_settings(&settings));
        m.write(".env", "S3_SECRET=test\n");
    }
    c.write(
        "pipelines/input/orders.csv",
        "order_id,country,amount\n1,ES,10.5\n2,FR,3\n3,ES,4.5\n",
    );
    c.pipeline(
        "sales",
        "tasks:\n\
         \x20 orders: {queue: a, extract: {source: csv, path: input/orders.csv}}\n\
         \x20 totals:\n    queue: b\n    depends_on: [orders]\n    sql: \"SELECT country, SUM(amount) AS total FROM orders GROUP BY country ORDER BY country\"\n\
         \x20 out: {queue: b, depends_on: [totals], load: {sink: csv, path: out/totals.csv}}\n\
         \x20 live: {queue: a, run: \"echo live-line-one; sleep 6; echo live-line-two\"}\n",
    );
    let start_worker = |m: &Project, host: &str, queue: &str| {
        let log = m.path().join("worker.log");
        let child = m
            .cmd(&["worker", "--slots", "2", "--queues", queue])
            .env("CAUCE_HOST", host)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Worker { child, log }
    };
    let wa = start_worker(&a, "machine-a", "a");
    let wb = start_worker(&b, "machine-b", "b");
    let s = Server::start(&c);
    let id = s.trigger("sales", serde_json::json!({}));

    // The running attempt's log, written on A, is read through the server on C.
    wait_until(
        Duration::from_secs(30),
        "the live log on the server",
        || {
            let (code, v) = s.get(&format!("/api/v1/runs/{id}/tasks/live/logs"), Some(VIEWER));
            code == 200 && has_line(&v, "live-line-one")
        },
    );
    let (_, v) = s.get(&format!("/api/v1/runs/{id}/tasks/live/logs"), Some(VIEWER));
    assert_eq!(v["state"], "running", "read while it runs: {v}");
    assert!(!has_line(&v, "live-line-two"), "{v}");

    let detail = s.wait_run(&id, Duration::from_secs(60));
    assert_eq!(
        detail["run"]["state"],
        "success",
        "{detail}\nA: {}\nB: {}",
        wa.log(),
        wb.log()
    );
    // The dataset extracted on A reached B through the bucket, whole.
    assert_eq!(
        std::fs::read_to_string(c.path().join("pipelines/out/totals.csv")).unwrap(),
        "country,total\nES,15.0\nFR,3.0\n"
    );
    assert!(a.path().join(format!(".cauce/data/{id}/orders")).is_dir());
    assert!(
        b.path().join(format!(".cauce/data/{id}/orders")).is_dir(),
        "B fetched it"
    );
    assert!(!a.path().join(format!(".cauce/data/{id}/totals")).exists());
    let keys = s3.keys("cauce-shared", &format!("cluster/data/{id}/"));
    assert!(
        keys.iter()
            .any(|k| k.starts_with(&format!("cluster/data/{id}/orders/"))),
        "{keys:?}"
    );
    let (_, log) = s.get(
        &format!("/api/v1/runs/{id}/tasks/totals/logs"),
        Some(VIEWER),
    );
    assert!(
        log["text"]
            .as_str()
            .unwrap()
            .contains("fetched the dataset of `orders` from shared storage"),
        "{log}"
    );
    // After the end, the whole log, and the report in the bucket.
    let (_, v) = s.get(&format!("/api/v1/runs/{id}/tasks/live/logs"), Some(VIEWER));
    assert!(has_line(&v, "live-line-two"), "{v}");
    let reports = s3.keys("cauce-shared", "cluster/reports/");
    assert!(
        reports.contains(&format!("cluster/reports/{id}.json")),
        "{reports:?}"
    );

    // A failed run retried from C, which has none of the datasets: the extract that
    // succeeded on A is not run again (its dataset is in the bucket); B fetches it.
    c.pipeline(
        "flaky",
        "tasks:\n\
         \x20 orders: {queue: a, extract: {source: csv, path: input/orders.csv}}\n\
         \x20 check: {queue: b, depends_on: [orders], run: \"test -f go\"}\n",
    );
    let r = c.run(&["run", "flaky"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let failed = latest_run(&c);
    c.write("pipelines/go", "");
    let r = c.run(&["retry", &failed]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let st = c.status(&failed);
    assert_eq!(attempts_of(&st, "orders").len(), 1, "not run again: {st}");
    assert_eq!(st["run"]["state"], "success", "{st}");
    assert!(!c
        .path()
        .join(format!(".cauce/data/{failed}/orders"))
        .exists());
}

/// A run on one machine streams a query into a load that fails; the query is kept as a
/// view in the bucket. `cauce retry` on a machine with none of the run's datasets fetches
/// the view and the extract it reads through, and loads the same rows.
#[test]
fn a_retry_elsewhere_fetches_a_view_and_what_it_reads() {
    let s3 = S3Server::start();
    s3.create_bucket("cauce-views");
    let url = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(crate::store::postgres_url());
    let settings = format!(
        "store: \"{url}\"\nshared_dir: s3://cauce-views/p\n\
         shared_options:\n  endpoint: {}\n  allow_http: \"true\"\n  region: us-east-1\n  access_key_id: test\n  secret_access_key: test\n",
        s3.endpoint
    );
    let a = Project::new();
    let b = Project::new();
    for m in [&a, &b] {
        m.write("cauce.yaml", &settings);
    }
    a.write("n.csv", "id,v\n1,10\n2,20\n3,30\n4,40\n");
    // `out.csv` is a folder: the load reads every row, then cannot put its file there.
    a.write("out.csv/in-the-way", "");
    a.pipeline(
        "chain",
        "tasks:\n\
         \x20 raw: {extract: {source: csv, path: n.csv}}\n\
         \x20 big: {depends_on: [raw], sql: \"SELECT id, v * 2 AS w FROM raw WHERE v > 15\"}\n\
         \x20 save: {depends_on: [big], load: {sink: csv, path: out.csv}}\n",
    );
    let r = a.run(&["run", "chain"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let id = latest_run(&a);
    assert!(
        a.path()
            .join(format!(".cauce/data/{id}/big/view.json"))
            .is_file(),
        "the query streamed into the load and was kept as a view: {}\n{}",
        a.status(&id),
        a.run(&["logs", &id, "big"]).stdout
    );
    let keys = s3.keys("cauce-views", &format!("p/data/{id}/"));
    assert!(
        keys.contains(&format!("p/data/{id}/big/view.json")),
        "{keys:?}"
    );
    std::fs::remove_dir_all(a.path().join("out.csv")).unwrap();
    let r = b.run(&["retry", &id]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // B has no checkout at A's path: the run's pipeline file is outside B's project, so
    // its relative paths are taken from that file's folder.
    assert_eq!(a.read("pipelines/out.csv"), "id,w\n2,40\n3,60\n4,80\n");
    assert!(b.path().join(format!(".cauce/data/{id}/raw")).is_dir());
    let st = b.status(&id);
    assert_eq!(attempts_of(&st, "raw").len(), 1, "not run again: {st}");
}

#[test]
fn a_bad_shared_storage_setting_is_a_located_error() {
    let p = Project::new();
    p.write("cauce.yaml", "shared_dir: gs://bucket/x\n");
    p.pipeline("x", "tasks:\n  a: \"true\"\n");
    let r = p.run(&["validate"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("cauce.yaml") && r.stderr.contains("shared_dir"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("only s3://"), "{}", r.stderr);
    p.write(
        "cauce.yaml",
        "shared_dir: s3://bucket/x\nshared_options:\n  endpoit: http://127.0.0.1:1\n",
    );
    let r = p.run(&["validate"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("shared_options.endpoit"), "{}", r.stderr);
    p.write(
        "cauce.yaml",
        "shared_dir: shared
shared_options:
  region: eu-west-1
",
    );
    let r = p.run(&["validate"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("applies only to an object-store"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_coordinator_whose_run_was_taken_over_steps_down() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(crate::store::postgres_url());
    let p = Project::new();
    p.write(
        "cauce.yaml",
        &format!("store: \"{url}\"\nexecutor: workers\nlease: 3s\nkill_grace: 1s\n"),
    );
    p.pipeline("t", "tasks:\n  slow: \"sleep 20\"\n");
    let _w = Worker::start(&p, "w", &["--slots", "1"]);
    let run = p.spawn(&["run", "t"]);
    wait_running(&p, "slow");
    let id = latest_run(&p);
    // What the scheduling server does to a run whose coordinator stopped heartbeating for
    // longer than a lease (an outage on the coordinator's side): another process owns it.
    rt.block_on(async {
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        sqlx::query("UPDATE runs SET owner = 'elsewhere:1:00000000' WHERE id = $1")
            .bind(&id)
            .execute(&pool)
            .await
            .unwrap();
    });
    let r = crate::common::wait_with_limit(run, Duration::from_secs(15));
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("took this run over"), "{}", r.stderr);
    let s = p.status(&id);
    assert_eq!(s["run"]["state"], "running", "left to its new owner: {s}");
    assert_eq!(s["run"]["owner"], "elsewhere:1:00000000", "{s}");
}
