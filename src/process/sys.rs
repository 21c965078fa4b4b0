//! The few POSIX calls the standard library does not offer: waiting for a child without
//! reaping it, reaping it with its resource usage (`wait4`), signalling a process group,
//! and checking whether a pid is alive. This is the only `unsafe` code in cauce.
#![allow(unsafe_code)]

use std::io;

/// Resource usage of a reaped child, from the kernel's accounting.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Peak resident set size in KiB.
    pub max_rss_kb: u64,
    /// User CPU time in milliseconds.
    pub user_ms: u64,
    /// System CPU time in milliseconds.
    pub sys_ms: u64,
}

/// Blocks until process `pid` (a child of ours) has exited, leaving it unreaped so its
/// process group id cannot be reused yet.
pub fn wait_exit_unreaped(pid: i32) -> io::Result<()> {
    loop {
        // SAFETY: siginfo_t is plain data; waitid writes into it and we never read it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a local siginfo_t; WNOWAIT leaves the child waitable.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// A pidfd for `pid` registered with the async runtime (Linux 5.3+): it becomes readable
/// when the process exits, so the exit can be awaited without a thread. `None` where the
/// kernel or a seccomp profile refuses it.
pub fn pidfd_async(pid: i32) -> Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscall; on success it returns a new file descriptor that we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the AsyncFd takes ownership of the descriptor and is its only user; it is
    // closed when the AsyncFd is dropped, after deregistration.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
    }
    .ok()
}

/// Reaps child `pid`, returning its raw wait status and resource usage.
pub fn reap(pid: i32) -> io::Result<(i32, Usage)> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is plain data, fully written by wait4 on success.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to locals.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            let ms = |tv: libc::timeval| (tv.tv_sec as u64) * 1000 + (tv.tv_usec as u64) / 1000;
            return Ok((
                status,
                Usage {
                    max_rss_kb: usage.ru_maxrss.max(0) as u64,
                    user_ms: ms(usage.ru_utime),
                    sys_ms: ms(usage.ru_stime),
                },
            ));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Sends `signal` to every process in group `pgid`. A group that no longer exists is fine.
pub fn signal_group(pgid: i32, signal: i32) -> io::Result<()> {
    if pgid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to signal pgid <= 1",
        ));
    }
    // SAFETY: plain syscall with integer arguments.
    let rc = unsafe { libc::kill(-pgid, signal) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Whether a process with this pid exists on this machine and is not a zombie (a dead
/// process nobody reaped yet, common in containers whose pid 1 does not reap).
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    let exists = rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_none_or(|state| state != 'Z' && state != 'X'),
        Err(_) => true,
    }
}

/// Decodes a wait status into (exit code, terminating signal).
pub fn decode_status(status: i32) -> (Option<i32>, Option<i32>) {
    if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    }
}
