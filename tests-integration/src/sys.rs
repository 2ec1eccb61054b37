//! The operating system calls of the test helpers, behind safe functions: the one module of this
//! crate that may use `unsafe` (the helpers misbehave on purpose: signal dispositions, forks,
//! descriptors pulled from under a channel).

#![allow(unsafe_code)]

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    time::Duration,
};

/// What a signal does to this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The signal's default action (death, for SIGPIPE and SIGTERM).
    Default,
    /// Nothing.
    Ignore,
}

/// Sets `signal`'s disposition; no handler is ever installed.
pub fn set_signal(signal: libc::c_int, disposition: Disposition) -> io::Result<()> {
    let action = match disposition {
        Disposition::Default => libc::SIG_DFL,
        Disposition::Ignore => libc::SIG_IGN,
    };
    // SAFETY: sets a disposition to default or ignore; installs no handler.
    if unsafe { libc::signal(signal, action) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Forks a child that keeps every descriptor of this process, sleeps `millis`, then exits 0;
/// returns in the parent.
pub fn fork_sleeper(millis: u64) -> io::Result<()> {
    // SAFETY: the child only sleeps (nanosleep) and `_exit`s, both async-signal-safe, so it is
    // sound after fork even in a process with other threads.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            std::thread::sleep(Duration::from_millis(millis));
            // SAFETY: ends the child without running the parent's exit path.
            unsafe { libc::_exit(0) }
        }
        _ => Ok(()),
    }
}

/// Replaces descriptor `fd` by `/dev/null`, so whatever it held is closed for good.
pub fn null_out(fd: impl AsRawFd) -> io::Result<()> {
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: dup2 onto a descriptor this process owns; the old description is released.
    if unsafe { libc::dup2(null.as_raw_fd(), fd.as_raw_fd()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits for any child of this process to end and reaps it, as a program's SIGCHLD handler
/// would; `None` when there is no child.
pub fn reap_any_child() -> Option<i32> {
    let mut status = 0;
    // SAFETY: waitpid writes the status into a live integer.
    let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
    (pid > 0).then_some(pid)
}

/// Sends `signal` to process `pid` (a child of ours, not yet reaped).
pub fn kill(pid: i32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill only sends a signal.
    if unsafe { libc::kill(pid, signal) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the soft limit of open descriptors to the hard one.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write a live rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Puts descriptor `fd` in non-blocking mode (for the busy-polling baselines).
pub fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    let fd = fd.as_fd().as_raw_fd();
    // SAFETY: fcntl reads and sets the flags of a descriptor this process owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags == -1 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The CPU time process `pid` has used so far, all its threads together: from the scheduler's
/// nanosecond counts (`/proc/PID/task/*/schedstat`) where the kernel keeps them, else from
/// `utime + stime` in `/proc/PID/stat` (clock ticks, 10 ms each on most systems).
pub fn process_cpu_time(pid: u32) -> io::Result<Duration> {
    let mut total = Duration::ZERO;
    let mut counted = false;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            if let Some(ns) = text.split(' ').next().and_then(|n| n.parse::<u64>().ok()) {
                total += Duration::from_nanos(ns);
                counted = true;
            }
        }
    }
    if counted {
        return Ok(total);
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 2..])
        .ok_or_else(|| io::Error::other("no ')' in /proc/PID/stat"))?;
    // After the command: state is field 3, utime and stime fields 14 and 15.
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("short /proc/PID/stat"))
    };
    let ticks = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf only reads a system setting.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second)
        .ok()
        .filter(|&t| t > 0)
        .unwrap_or(100);
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}
