//! Child processes of tasks: each runs in its own process group, with stdout and stderr
//! streamed (redacted, in fixed-size chunks) to the attempt's log file, so a task that prints
//! gigabytes costs cauce no memory. Its exit status, peak memory and CPU time come from the
//! kernel (`wait4`). Cancelling sends SIGTERM to the whole group, then SIGKILL after a grace
//! period; when the main process exits, anything it left running in its group is killed.
//!
//! It knows nothing of tasks, retries or the store: it runs one command and reports. It
//! also owns how cauce itself hears it should stop ([`stop_signal`]).

mod sys;

use crate::secrets::{Redactor, Secrets};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use sys::pid_alive;

/// An attempt's log file: orchestrator notes and the child's output, secrets masked.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    secrets: Secrets,
}

impl LogFile {
    /// Creates (or appends to) the log file at `path`.
    pub fn create(path: &Path, secrets: Secrets) -> io::Result<Arc<LogFile>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Arc::new(LogFile {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            secrets,
        }))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a line written by cauce itself (redacted).
    pub fn note(&self, line: &str) {
        let text = format!("[cauce] {}\n", self.redactor().redact_str(line));
        self.write_bytes(text.as_bytes());
    }

    /// Appends bytes that are already redacted.
    pub fn write_bytes(&self, bytes: &[u8]) {
        if let Ok(mut f) = self.file.lock() {
            // A full disk must not crash the task; the write error is the log's loss only.
            let _ = f.write_all(bytes);
        }
    }

    /// The redactor for every secret known now (including `${VAR}` values a task read
    /// after its log was opened).
    pub fn redactor(&self) -> Arc<Redactor> {
        self.secrets.redactor()
    }
}

/// A signal asking cauce itself to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// Ctrl-C (SIGINT).
    Interrupt,
    /// SIGTERM (a service manager, `kill`).
    Terminate,
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn stop_signal() -> StopSignal {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => StopSignal::Interrupt,
        _ = term => StopSignal::Terminate,
    }
}

/// A command to run.
#[derive(Debug, Clone)]
pub struct Command {
    /// Program (looked up in `PATH` when it has no slash).
    pub program: OsString,
    /// Arguments.
    pub args: Vec<OsString>,
    /// Extra environment variables (on top of cauce's own environment).
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
}

/// What the kernel says about a finished process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessStats {
    /// Its pid.
    pub pid: u32,
    /// Exit code, when it exited normally.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Peak resident memory in KiB.
    pub peak_rss_kb: u64,
    /// User CPU time in ms.
    pub cpu_user_ms: u64,
    /// System CPU time in ms.
    pub cpu_sys_ms: u64,
}

/// How a process ended.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// Kernel accounting.
    pub stats: ProcessStats,
    /// Whether it was stopped because `cancel` fired.
    pub cancelled: bool,
}

impl Exit {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.stats.exit_code == Some(0)
    }
}

/// Runs `cmd` to completion in its own process group, streaming its output to `log`.
/// When `cancel` fires, the group gets SIGTERM and, after `grace`, SIGKILL.
pub async fn run(
    cmd: &Command,
    log: &Arc<LogFile>,
    cancel: &CancellationToken,
    grace: Duration,
) -> io::Result<Exit> {
    // stdout and stderr share one pipe, so the log keeps their interleaving and one reader
    // serves both.
    let (reader, writer) = io::pipe()?;
    let mut command = std::process::Command::new(resolve_program(&cmd.program, &cmd.env));
    command
        .args(&cmd.args)
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&cmd.cwd)
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .process_group(0);
    let child = command.spawn().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} not found", cmd.program.to_string_lossy()),
            )
        } else {
            e
        }
    })?;
    // The write ends held by `command` must close, or the reader never sees the end.
    drop(command);
    let pid = child.id() as i32;
    drop(child); // reaped below with wait4, never by std
                 // Written first, so that after a crash of cauce `cauce retry` can find and stop this
                 // process group (see `stop_orphaned_group`).
    if let Some(identity) = ProcessIdentity::of(pid) {
        log.note(&identity.to_note());
    }
    let pump = {
        let log = Arc::clone(log);
        tokio::spawn(pump(reader, log))
    };
    let exited = wait_exit(pid);
    tokio::pin!(exited);
    let mut cancelled = false;
    tokio::select! {
        r = &mut exited => r?,
        _ = cancel.cancelled() => {
            cancelled = true;
            let _ = sys::signal_group(pid, libc::SIGTERM);
            tokio::select! {
                r = &mut exited => r?,
                _ = tokio::time::sleep(grace) => {
                    log.note(&format!("still running {} after SIGTERM; sending SIGKILL", crate::spec::duration::format_duration(grace)));
                    let _ = sys::signal_group(pid, libc::SIGKILL);
                    (&mut exited).await?
                }
            }
        }
    }
    // The leader has exited but is not reaped, so its group id is still ours: kill what it
    // left behind, so background children do not hold the output pipe open forever.
    let _ = sys::signal_group(pid, libc::SIGKILL);
    let (status, usage) = sys::reap(pid)?;
    // A process that escaped the group (setsid) and kept the pipe open is not waited for.
    if tokio::time::timeout(Duration::from_secs(2), pump)
        .await
        .is_err()
    {
        log.note("output pipe still open after the task ended; stopped reading it");
    }
    let (exit_code, sig) = sys::decode_status(status);
    Ok(Exit {
        stats: ProcessStats {
            pid: pid as u32,
            exit_code,
            signal: sig,
            peak_rss_kb: usage.max_rss_kb,
            cpu_user_ms: usage.user_ms,
            cpu_sys_ms: usage.sys_ms,
        },
        cancelled,
    })
}

/// What identifies a process across a crash of cauce: the machine's boot, its pid and its
/// start time (clock ticks after boot). A pid alone may have been reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessIdentity {
    boot_id: String,
    pid: i32,
    start_ticks: u64,
}

const IDENTITY_PREFIX: &str = "[cauce] process group ";

impl ProcessIdentity {
    /// The identity of a live process.
    pub fn of(pid: i32) -> Option<ProcessIdentity> {
        Some(ProcessIdentity {
            boot_id: boot_id()?,
            pid,
            start_ticks: start_ticks(pid)?,
        })
    }

    fn to_note(&self) -> String {
        format!(
            "process group {} (boot {}, start {})",
            self.pid, self.boot_id, self.start_ticks
        )
    }

    /// Finds the identity noted in an attempt's log file.
    pub fn from_log(path: &Path) -> Option<ProcessIdentity> {
        use std::io::BufRead;
        let file = std::fs::File::open(path).ok()?;
        let line = std::io::BufReader::new(file)
            .lines()
            .take(200)
            .map_while(Result::ok)
            .find(|l| l.starts_with(IDENTITY_PREFIX))?;
        let rest = line.strip_prefix(IDENTITY_PREFIX)?;
        let (pid, rest) = rest.split_once(" (boot ")?;
        let (boot, rest) = rest.split_once(", start ")?;
        Some(ProcessIdentity {
            boot_id: boot.to_string(),
            pid: pid.parse().ok()?,
            start_ticks: rest.trim_end_matches(')').parse().ok()?,
        })
    }
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Fields of `/proc/PID/stat` after the command name: state is the first (index 0).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(String::from).collect())
}

fn start_ticks(pid: i32) -> Option<u64> {
    // Field 22 of stat is the start time; it is the 20th after the command name.
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Stops what is left of a process group started by a cauce that crashed: SIGTERM, then
/// SIGKILL after `grace`. The group is only signalled when it is certainly that one: on the
/// same boot, either its leader is alive with the recorded start time, or the leader is gone
/// and processes still carry its group id (Linux does not reuse a pid that is still a live
/// process group's id). Returns how many processes were signalled.
pub async fn stop_orphaned_group(identity: &ProcessIdentity, grace: Duration) -> usize {
    if boot_id().as_deref() != Some(identity.boot_id.as_str()) {
        return 0;
    }
    let pgid = identity.pid;
    let leader_is_ours = start_ticks(pgid) == Some(identity.start_ticks);
    let members = group_members(pgid);
    let ours = if pid_alive(pgid) {
        leader_is_ours
    } else {
        !members.is_empty()
    };
    if !ours || members.is_empty() {
        return 0;
    }
    let _ = sys::signal_group(pgid, libc::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline && !group_members(pgid).is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !group_members(pgid).is_empty() {
        let _ = sys::signal_group(pgid, libc::SIGKILL);
    }
    members.len()
}

/// Live (non-zombie) processes whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            stat_fields(*pid).is_some_and(|f| {
                // f[0] is the state, f[2] the process group.
                f.first().is_some_and(|s| s != "Z" && s != "X")
                    && f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
            })
        })
        .collect()
}

/// Waits until child `pid` has exited, without reaping it: on a pidfd where the kernel
/// offers one, else on a blocking thread.
async fn wait_exit(pid: i32) -> io::Result<()> {
    if let Some(async_fd) = sys::pidfd_async(pid) {
        let _ready = async_fd.readable().await?;
        return sys::wait_exit_unreaped(pid);
    }
    tokio::task::spawn_blocking(move || sys::wait_exit_unreaped(pid))
        .await
        .map_err(|e| io::Error::other(format!("waiting for the child failed: {e}")))?
}

/// The program to exec: a bare name is looked up in `PATH` here, once, rather than by
/// failed `execve` calls in the child; anything else is used as given.
/// The task's own `PATH` (from its `env`) wins over cauce's; relative entries are left to
/// the child's own lookup.
fn resolve_program(program: &std::ffi::OsStr, env: &[(String, String)]) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStrExt;
    if program.as_bytes().contains(&b'/') {
        return program.to_os_string();
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| std::ffi::OsString::from(v))
        .or_else(|| std::env::var_os("PATH"));
    path.and_then(|paths| find_in_path(program, &paths))
        .map(|p| p.into_os_string())
        .unwrap_or_else(|| program.to_os_string())
}

/// The first executable file named `program` in the absolute folders of `paths` (a `PATH`
/// value). Answers are remembered for the life of the process: a DAG of ten thousand
/// `true` tasks looks `true` up once, not ten thousand times.
pub fn find_in_path(program: &std::ffi::OsStr, paths: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::collections::HashMap;
    use std::ffi::OsString;
    type Cache = Mutex<HashMap<(OsString, OsString), Option<PathBuf>>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (program.to_os_string(), paths.to_os_string());
    if let Some(hit) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return hit;
    }
    let found = std::env::split_paths(paths)
        .take_while(|d| d.is_absolute())
        .map(|d| d.join(program))
        .find(|p| p.is_file());
    if let Ok(mut c) = cache.lock() {
        c.insert(key, found.clone());
    }
    found
}

/// Copies the child's output into the log in 64 KiB chunks, masking secrets.
async fn pump(reader: io::PipeReader, log: Arc<LogFile>) {
    use tokio::io::AsyncReadExt;
    let fd: std::os::fd::OwnedFd = reader.into();
    let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut carry = Vec::new();
    let mut out = Vec::with_capacity(buf.len());
    loop {
        match rx.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                out.clear();
                log.redactor()
                    .redact_chunk(&mut carry, &buf[..n], false, &mut out);
                log.write_bytes(&out);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    out.clear();
    log.redactor().redact_chunk(&mut carry, &[], true, &mut out);
    log.write_bytes(&out);
}

/// Splits a command line into argv when it uses no shell syntax at all, so it can be run
/// without `sh -c` (as `make` does); `None` means it needs a shell.
pub fn split_simple_command(line: &str) -> Option<Vec<String>> {
    const SHELL_CHARS: &[char] = &[
        '|', '&', ';', '<', '>', '(', ')', '$', '`', '\\', '"', '\'', '*', '?', '[', ']', '#', '~',
        '=', '%', '{', '}', '!', '\n',
    ];
    if line.contains(SHELL_CHARS) {
        return None;
    }
    let words: Vec<String> = line.split_whitespace().map(String::from).collect();
    match words.first() {
        None => None,
        Some(first) if SHELL_BUILTINS.contains(&first.as_str()) => None,
        Some(_) => Some(words),
    }
}

/// Commands that only exist inside a shell (no program of that name to exec).
const SHELL_BUILTINS: &[&str] = &[
    ".", ":", "alias", "bg", "break", "cd", "command", "continue", "eval", "exec", "exit",
    "export", "fg", "getopts", "hash", "jobs", "local", "read", "readonly", "return", "set",
    "shift", "source", "times", "trap", "type", "ulimit", "umask", "unalias", "unset", "wait",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, dir: &Path) -> Command {
        Command {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("CAUCE_T".into(), "v".into())],
            cwd: dir.to_path_buf(),
        }
    }

    #[tokio::test]
    async fn streams_output_and_reports_exit_and_usage() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::create(&dir.path().join("a.log"), {
            let s = Secrets::default();
            s.add("topsecret");
            s
        })
        .unwrap();
        let exit = run(
            &sh(
                "echo out $CAUCE_T; echo err topsecret >&2; exit 3",
                dir.path(),
            ),
            &log,
            &CancellationToken::new(),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(exit.stats.exit_code, Some(3));
        assert!(exit.stats.peak_rss_kb > 0);
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(text.contains("out v"), "{text}");
        assert!(
            text.contains("err ***") && !text.contains("topsecret"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn cancel_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::create(&dir.path().join("b.log"), Secrets::default()).unwrap();
        let marker = dir.path().join("grandchild.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", marker.display());
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            c2.cancel();
        });
        let started = std::time::Instant::now();
        let exit = run(
            &sh(&script, dir.path()),
            &log,
            &cancel,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(exit.cancelled);
        assert!(started.elapsed() < Duration::from_secs(5));
        let gpid: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background `sleep` was in the group and must be gone.
        for _ in 0..50 {
            if !pid_alive(gpid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!pid_alive(gpid), "grandchild {gpid} survived");
    }

    #[tokio::test]
    async fn background_children_do_not_hold_the_task_open() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::create(&dir.path().join("c.log"), Secrets::default()).unwrap();
        let started = std::time::Instant::now();
        let exit = run(
            &sh("sleep 60 & echo done", dir.path()),
            &log,
            &CancellationToken::new(),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert!(exit.success());
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn orphaned_groups_are_stopped_only_when_they_are_certainly_ours() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let identity = ProcessIdentity::of(pid).unwrap();
        let log = LogFile::create(&dir.path().join("x.log"), Secrets::default()).unwrap();
        log.note("task `t` attempt 1 started");
        log.note(&identity.to_note());
        assert_eq!(
            ProcessIdentity::from_log(log.path()),
            Some(identity.clone())
        );
        // Same pid, other start time: a reused pid, never signalled.
        let stranger = ProcessIdentity {
            start_ticks: identity.start_ticks + 1,
            ..identity.clone()
        };
        assert_eq!(
            stop_orphaned_group(&stranger, Duration::from_millis(100)).await,
            0
        );
        assert!(pid_alive(pid));
        assert_eq!(
            stop_orphaned_group(&identity, Duration::from_millis(500)).await,
            1
        );
        let status = child.wait().unwrap();
        assert!(!status.success(), "sleep was stopped by a signal");
    }

    #[test]
    fn simple_commands_skip_the_shell() {
        assert_eq!(split_simple_command("true"), Some(vec!["true".to_string()]));
        assert_eq!(
            split_simple_command("python3 x.py a"),
            Some(vec!["python3".into(), "x.py".into(), "a".into()])
        );
        assert_eq!(split_simple_command("echo $HOME"), None);
        assert_eq!(split_simple_command("a | b"), None);
        assert_eq!(split_simple_command("echo 'a b'"), None);
        assert_eq!(
            split_simple_command("exit 3"),
            None,
            "a builtin needs the shell"
        );
    }
}
