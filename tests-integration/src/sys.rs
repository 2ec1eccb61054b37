//! The operating system calls of the test helpers, behind safe functions: the one module of this
//! crate that may use `unsafe` (the helpers misbehave on purpose: signal dispositions, forks,
//! descriptors pulled from under a channel).

#![allow(unsafe_code)]

use std::{
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
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

/// Forks a child that leaves for a session (and process group) of its own, so that killing
/// this process's group spares it, keeps every descriptor of this process, sleeps `millis`,
/// then exits 0; returns its pid in the parent.
pub fn fork_escaped_sleeper(millis: u64) -> io::Result<i32> {
    // SAFETY: the child only calls setsid, sleeps (nanosleep) and `_exit`s, all
    // async-signal-safe, so it is sound after fork even in a process with other threads.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // SAFETY: setsid takes no argument; it cannot fail in a fresh child, which leads
            // no group.
            unsafe { libc::setsid() };
            std::thread::sleep(Duration::from_millis(millis));
            // SAFETY: ends the child without running the parent's exit path.
            unsafe { libc::_exit(0) }
        }
        pid => Ok(pid),
    }
}

/// Makes `fd` this process's standard error (descriptor 2).
pub fn dup_onto_stderr(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: dup2 onto descriptor 2, which this process owns; the old description is released.
    if unsafe { libc::dup2(fd.as_raw_fd(), 2) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

/// Takes an exclusive `flock` on `file` without waiting: `WouldBlock` when another open file
/// description holds one.
pub fn try_flock_exclusive(file: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: flock only changes the lock of a descriptor the caller borrows.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lets `fd` be inherited across `exec` (what a careless program leaves): clears its
/// close-on-exec flag.
pub fn clear_cloexec(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller borrows; flags only.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The process group of this process.
pub fn pgid() -> u32 {
    // SAFETY: getpgid(0) only reads this process's group.
    unsafe { libc::getpgid(0) as u32 }
}

/// Whether the C library's record of the calling thread's id (where the kernel was told to
/// write it: `PR_GET_TID_ADDRESS`) holds the thread's real id, as after glibc's `fork`. A fork
/// that forgot it leaves its parent's id there, and `pthread_*` calls naming this thread would
/// reach the parent's.
pub fn libc_thread_id_is_own() -> io::Result<bool> {
    const PR_GET_TID_ADDRESS: libc::c_int = 40;
    let mut address: *mut libc::c_int = std::ptr::null_mut();
    // SAFETY: PR_GET_TID_ADDRESS writes one pointer into the live location given.
    let res = unsafe {
        libc::prctl(
            PR_GET_TID_ADDRESS,
            &mut address as *mut *mut libc::c_int as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if res == -1 {
        return Err(io::Error::last_os_error());
    }
    if address.is_null() {
        return Ok(false);
    }
    // SAFETY: the address the C library gave the kernel for this thread, in memory that lives
    // as long as the thread; gettid has no preconditions.
    Ok(unsafe { address.read_volatile() == libc::gettid() })
}

/// Forks a child of the calling *thread* that asks for SIGKILL when that thread exits (its
/// parent-death signal), then waits for signals; returns its pid in the parent once the child
/// has asked. Its death tells that the kernel has sent the parent-death signals of the thread's
/// exit.
pub fn fork_parent_death_canary() -> io::Result<i32> {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two descriptors into a live array of two.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created both descriptors, and nothing else owns them.
    let (armed, tell) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the child only calls prctl, getppid, write, pause and _exit, all
    // async-signal-safe, so it is sound after fork even in a process with other threads.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        // SAFETY: as above; the write reads one live byte.
        0 => unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            if libc::getppid() != parent {
                libc::_exit(0);
            }
            libc::write(tell.as_raw_fd(), [1u8].as_ptr().cast(), 1);
            loop {
                libc::pause();
            }
        },
        pid => {
            drop(tell);
            // The thread must not exit before the child asked: a parent-death signal asked for
            // after its thread died is never sent (the process, its parent, lives on).
            let mut byte = 0u8;
            // SAFETY: reads one byte into a live byte.
            unsafe { libc::read(armed.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
            Ok(pid)
        }
    }
}

/// Reaps child `pid` if it has ended, without waiting; whether it had.
pub fn try_reap(pid: i32) -> bool {
    let mut status = 0;
    // SAFETY: waitpid writes the status into a live integer.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) == pid }
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

/// Forks this process (with its other threads' locks as they are, on purpose) and runs `child`
/// in the copy, which then ends with the code `child` returned; the copy's pid in the parent.
///
/// Only for the fork-safety scenarios: the child runs Rust code after a fork of a
/// multi-threaded process, which is what they test the library against.
pub fn fork_and_run(child: impl FnOnce() -> i32) -> io::Result<i32> {
    // SAFETY: the child runs `child` then `_exit`s without the parent's exit path; whatever
    // lock another thread held at the fork stays held there, which is what the caller tests.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            let code = child();
            // SAFETY: ends the child without running the parent's exit path.
            unsafe { libc::_exit(code) }
        }
        pid => Ok(pid),
    }
}

/// Waits up to `timeout` for child `pid` to end, through a pidfd, and reaps it: its exit code
/// (a negative signal number when killed); `None` when it still ran (it is killed and reaped).
pub fn wait_child_within(pid: i32, timeout: Duration) -> io::Result<Option<i32>> {
    let pid_u32 = u32::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "not a process id"))?;
    let ended = exsyst_worker::bootstrap::ProcessWatch::open(pid_u32)?.wait(timeout)?;
    if !ended {
        kill(pid, libc::SIGKILL)?;
    }
    let mut status = 0;
    // SAFETY: waitpid writes the status into a live integer.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Err(io::Error::last_os_error());
    }
    if !ended {
        return Ok(None);
    }
    Ok(Some(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -libc::WTERMSIG(status)
    }))
}

/// Sets the soft limit of open descriptors (the hard one stays).
pub fn set_fd_limit(soft: u64) -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write a live rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        limit.rlim_cur = soft.min(limit.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets the soft limit of open descriptors of process `pid` (its hard one stays); root may
/// lower and raise another process's.
pub fn set_fd_limit_of(pid: u32, soft: u64) -> io::Result<()> {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit writes the current limits into a live rlimit, and sets none (null).
    if unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    let new = libc::rlimit {
        rlim_cur: soft.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: prlimit reads a live rlimit and writes no old value (null).
    if unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
