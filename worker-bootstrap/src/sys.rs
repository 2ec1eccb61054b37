//! The operating system layer of the bootstrap side: every `unsafe` call of this crate lives here.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use worker_core::syscall;

/// Puts a descriptor in non-blocking mode.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller borrows; flags only.
    let flags = syscall!(fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
    // SAFETY: as above.
    syscall!(fcntl(
        fd.as_raw_fd(),
        libc::F_SETFL,
        flags | libc::O_NONBLOCK
    ))?;
    Ok(())
}

/// The most descriptors [`poll`] waits on at once: a worker's input and output.
pub(crate) const MAX_POLL_FDS: usize = 2;

/// What [`poll`] found on one descriptor.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ready {
    pub(crate) readable: bool,
    /// Hang-up or error: the other end is gone.
    pub(crate) hangup: bool,
}

/// Waits until one of `fds` is ready for what is asked (`(fd, want_read, want_write)`), or until
/// `deadline`. Returns `Ok(None)` on timeout. Interrupted waits are resumed.
///
/// At most [`MAX_POLL_FDS`] descriptors: the arrays live on the stack, as this runs once per
/// non-blocking receive of a pool's dispatcher.
pub(crate) fn poll(
    fds: &[(BorrowedFd<'_>, bool, bool)],
    deadline: Option<Instant>,
) -> io::Result<Option<[Ready; MAX_POLL_FDS]>> {
    assert!(
        fds.len() <= MAX_POLL_FDS,
        "poll takes at most {MAX_POLL_FDS} descriptors"
    );
    let unused = libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    };
    let mut pollfds = [unused; MAX_POLL_FDS];
    for (slot, &(fd, r, w)) in pollfds.iter_mut().zip(fds) {
        slot.fd = fd.as_raw_fd();
        slot.events = (if r { libc::POLLIN } else { 0 }) | (if w { libc::POLLOUT } else { 0 });
    }
    let pollfds = &mut pollfds[..fds.len()];
    loop {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up, so a wait never ends early and spins.
                left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
            }
        };
        // SAFETY: `pollfds` is a live array of `pollfds.len()` entries.
        match syscall!(poll(
            pollfds.as_mut_ptr(),
            pollfds.len() as libc::nfds_t,
            timeout
        )) {
            Ok(0) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(None);
                }
            }
            Ok(_) => {
                let mut ready = [Ready::default(); MAX_POLL_FDS];
                for (r, p) in ready.iter_mut().zip(pollfds.iter()) {
                    r.readable = p.revents & libc::POLLIN != 0;
                    r.hangup = p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0;
                }
                return Ok(Some(ready));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Waits until process `pid` (a child of ours, not yet reaped) has exited, without reaping it,
/// so its process group id stays reserved until the caller reaps it. Returns whether it exited
/// before `deadline`.
pub(crate) fn wait_exited_no_reap(pid: u32, deadline: Option<Instant>) -> io::Result<bool> {
    if let Some(pidfd) = pidfd_open(pid) {
        return Ok(poll(&[(pidfd.as_fd(), true, false)], deadline)?.is_some());
    }
    // Kernels without pidfd: ask, then back off.
    let mut pause = Duration::from_micros(50);
    loop {
        if exited_no_reap(pid)? {
            return Ok(true);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
        let left = deadline.map_or(pause, |d| d.saturating_duration_since(Instant::now()));
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just created this descriptor (close-on-exec by default) and it is ours.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether child `pid` has exited, leaving it unreaped.
fn exited_no_reap(pid: u32) -> io::Result<bool> {
    // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable siginfo_t.
    syscall!(waitid(
        libc::P_PID,
        pid as libc::id_t,
        &mut info,
        libc::WEXITED | libc::WNOHANG | libc::WNOWAIT
    ))?;
    // SAFETY: waitid filled `info`; si_pid is 0 when the child has not changed state.
    Ok(unsafe { info.si_pid() } != 0)
}

/// Sends SIGKILL to process group `pgid`; a group that no longer exists is not an error.
pub(crate) fn kill_group(pgid: u32) -> io::Result<()> {
    // SAFETY: killpg only sends a signal.
    match syscall!(killpg(pgid as libc::pid_t, libc::SIGKILL)) {
        Err(e) if e.raw_os_error() != Some(libc::ESRCH) => Err(e),
        _ => Ok(()),
    }
}

/// This process's id.
pub(crate) fn getpid() -> u32 {
    std::process::id()
}

/// In a worker: asks for SIGKILL when the parent dies, then checks that the parent is still the
/// process that started us, closing the race where it died before the request.
/// Returns whether the parent is still there.
pub(crate) fn arm_parent_death_signal(expected_parent: u32, signal: libc::c_int) -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl(PR_SET_PDEATHSIG) only records a signal number for this process.
        let _ = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) };
    }
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    parent as u32 == expected_parent
}

/// Sets the process's file mode creation mask.
pub(crate) fn set_umask(mask: u32) {
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(mask as libc::mode_t) };
}

/// Removes a variable from this process's environment.
///
/// Only called at the very start of a worker process, from `run_if_worker`, which the
/// documentation requires to be the first thing in `main`, before any other thread exists.
pub(crate) fn remove_env(name: &str) {
    // SAFETY: single-threaded at this point (see above), so no other thread reads the
    // environment concurrently.
    unsafe { std::env::remove_var(name) };
}

/// How long a worker that got SIGTERM may take to finish before SIGALRM ends it.
const TERM_GRACE_SECS: libc::c_uint = 1;

extern "C" fn on_sigterm(_: libc::c_int) {
    // SAFETY: alarm is async-signal-safe. The worker's loop notices its master is gone through
    // the end of its channel; this only bounds how long that may take.
    unsafe { libc::alarm(TERM_GRACE_SECS) };
}

/// For workers that can finish on their own: SIGTERM (from the parent-death signal, or anyone)
/// gives them [`TERM_GRACE_SECS`] to see their channel end and exit, after which SIGALRM's
/// default action ends them.
pub(crate) fn graceful_parent_death(expected_parent: u32) -> io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid value to fill in.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigterm as *const () as libc::sighandler_t;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: `action` is initialised, its handler only calls an async-signal-safe function, and
    // a null old-action pointer is allowed.
    syscall!(sigaction(libc::SIGTERM, &action, std::ptr::null_mut()))?;
    if expected_parent != 0 && !arm_parent_death_signal(expected_parent, libc::SIGTERM) {
        // The master died before the softer signal was armed: behave as if it arrived.
        on_sigterm(libc::SIGTERM);
    }
    Ok(())
}
