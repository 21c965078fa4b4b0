//! A temporary project folder and helpers to drive the real `cauce` binary in it.
#![allow(dead_code)]

pub mod server;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The built binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cauce")
}

/// A project in a temporary folder (SQLite store inside it).
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    /// An empty project with a `cauce.yaml` and a pipelines folder.
    pub fn new() -> Project {
        let p = Project {
            dir: tempfile::tempdir().unwrap(),
        };
        p.write("cauce.yaml", "name: test\nkill_grace: 1s\n");
        std::fs::create_dir_all(p.path().join("pipelines")).unwrap();
        p
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file (creating folders).
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Writes `pipelines/NAME.yaml`.
    pub fn pipeline(&self, name: &str, yaml: &str) -> PathBuf {
        self.write(&format!("pipelines/{name}.yaml"), yaml)
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap_or_default()
    }

    /// A `cauce` command in this project.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--project").arg(self.path()).args(args);
        c.current_dir(self.path());
        c.env_remove("CAUCE_STORE")
            .env_remove("CAUCE_PROJECT")
            .env("NO_COLOR", "1");
        c.stdin(Stdio::null());
        c
    }

    /// Runs `cauce` to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.cmd(args).output().unwrap();
        Run::from(out)
    }

    /// Starts `cauce` in the background.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `cauce status RUN --json`.
    pub fn status(&self, run: &str) -> serde_json::Value {
        let r = self.run(&["status", run, "--json"]);
        assert_eq!(r.code, 0, "status failed: {}", r.stderr);
        serde_json::from_str(&r.stdout).unwrap()
    }

    /// The state of each task of a run, by task id.
    pub fn task_states(&self, run: &str) -> std::collections::BTreeMap<String, String> {
        let s = self.status(run);
        s["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["task_id"].as_str().unwrap().to_string(),
                    t["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Waits until a file exists (or panics after `limit`).
    pub fn wait_for_file(&self, rel: &str, limit: Duration) {
        let start = Instant::now();
        while !self.path().join(rel).exists() {
            assert!(
                start.elapsed() < limit,
                "{rel} did not appear within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A finished command.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Waits for a child with a time limit; kills it and panics past the limit.
pub fn wait_with_limit(mut child: Child, limit: Duration) -> Run {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return Run::from(child.wait_with_output().unwrap());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "cauce did not finish within {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a signal to a pid with the `kill` command (no unsafe code in tests).
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|s| s != 'Z' && s != 'X'),
        Err(_) => false,
    }
}

/// The id of the newest run.
pub fn latest_run(p: &Project) -> String {
    let r = p.run(&["runs", "--json", "--limit", "1"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v[0]["id"].as_str().unwrap().to_string()
}

/// Runs `cauce init DIR` and returns a runner of `cauce --project DIR ...`.
pub fn init_project(target: &Path) -> impl Fn(&[&str]) -> Run + '_ {
    let out = Command::new(bin())
        .arg("init")
        .arg(target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    move |args: &[&str]| {
        Run::from(
            Command::new(bin())
                .arg("--project")
                .arg(target)
                .args(args)
                .output()
                .unwrap(),
        )
    }
}

/// The Python that has DuckDB and pyarrow for reading back what cauce wrote:
/// `CAUCE_TEST_PYTHON`, else the virtualenv `.ci/run` makes (`~/.cache/cauce/venv`).
pub fn data_python() -> PathBuf {
    if let Ok(p) = std::env::var("CAUCE_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let p = Path::new(&home).join(".cache/cauce/venv/bin/python");
    assert!(
        p.is_file(),
        "the data tests read files back with DuckDB and pyarrow; `.ci/run` installs them, by hand: \
         `python3 -m venv ~/.cache/cauce/venv && ~/.cache/cauce/venv/bin/pip install duckdb pyarrow openpyxl`"
    );
    p
}

/// Runs a Python program (with DuckDB, pyarrow and openpyxl importable) in `dir`; returns
/// its standard output, panicking with its error output if it fails.
pub fn py(dir: &Path, code: &str) -> String {
    let out = Command::new(data_python())
        .arg("-c")
        .arg(code)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}\n{code}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
