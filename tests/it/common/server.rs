//! A real `cauce server` on a loopback port, and an HTTP client for it.

use super::Project;
use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The operator token the test projects configure.
pub const OPERATOR: &str = "operator-token-for-tests-0001";
/// The viewer token the test projects configure.
pub const VIEWER: &str = "viewer-token-for-tests-00001";

/// `server:` settings with an operator and a viewer token on a free loopback port.
pub fn server_settings(extra: &str) -> String {
    server_settings_grace("5s", extra)
}

/// [`server_settings`] with another shutdown grace period.
pub fn server_settings_grace(grace: &str, extra: &str) -> String {
    format!(
        "name: test\nkill_grace: 1s\nlease: 3s\nserver:\n  listen: 127.0.0.1:0\n  shutdown_grace: {grace}\n  tokens:\n    - {{name: ops, token: \"${{OPS_TOKEN}}\", role: operator}}\n    - {{name: look, token: \"{VIEWER}\", role: viewer}}\n{extra}"
    )
}

/// A running server.
pub struct Server {
    pub child: Child,
    pub base: String,
    /// Everything it printed on stderr so far.
    pub stderr: Arc<Mutex<String>>,
    pub http: reqwest::blocking::Client,
}

impl Server {
    /// Starts `cauce server` in the project (its cauce.yaml must listen on port 0).
    pub fn start(p: &Project) -> Server {
        Server::start_with(p, &[])
    }

    /// Starts `cauce server ARGS...`.
    pub fn start_with(p: &Project, args: &[&str]) -> Server {
        let mut all = vec!["server"];
        all.extend_from_slice(args);
        let mut cmd = p.cmd(&all);
        cmd.env("OPS_TOKEN", OPERATOR)
            .env("CAUCE_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                        let _ = tx.send(addr);
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not start: {}", log.lock().unwrap());
            }
        };
        Server {
            child,
            base: format!("http://{addr}"),
            stderr: log,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET with a token; returns (status, JSON body or Null).
    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        answer(req.send().unwrap())
    }

    /// POST of a JSON body with a token.
    pub fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let mut req = self.http.post(self.url(path)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        answer(req.send().unwrap())
    }

    /// Waits until a run reaches a final state; returns its detail.
    pub fn wait_run(&self, id: &str, limit: Duration) -> serde_json::Value {
        self.wait_run_as(id, limit, VIEWER)
    }

    /// [`Server::wait_run`] with another token.
    pub fn wait_run_as(&self, id: &str, limit: Duration, token: &str) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let (code, v) = self.get(&format!("/api/v1/runs/{id}"), Some(token));
            assert_eq!(code, 200, "{v}");
            if v["run"]["state"] != "running" {
                return v;
            }
            assert!(
                start.elapsed() < limit,
                "run {id} still running after {limit:?}: {v}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts a run of a pipeline as the operator; returns its id.
    pub fn trigger(&self, pipeline: &str, body: serde_json::Value) -> String {
        let (code, v) = self.post(
            &format!("/api/v1/pipelines/{pipeline}/runs"),
            Some(OPERATOR),
            &body,
        );
        assert_eq!(code, 201, "{v}");
        v["run_id"].as_str().unwrap().to_string()
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(mut self, limit: Duration) -> i32 {
        super::signal(self.child.id(), "TERM");
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "server did not stop within {limit:?}: {}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `/metrics` as text.
    pub fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    /// The server's stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn answer(resp: reqwest::blocking::Response) -> (u16, serde_json::Value) {
    let code = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}
