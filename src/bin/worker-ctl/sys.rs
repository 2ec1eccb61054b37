//! The operating system layer of `worker-ctl`: every `unsafe` call of the program lives here.
//!
//! A local worker is watched through a pidfd, so that a signal never reaches a process that
//! merely reused its pid and its end is seen at once; kernels without pidfds (before Linux 5.3)
//! get `kill(pid, 0)` with back-off instead.

#![allow(unsafe_code)]

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    thread,
    time::{Duration, Instant},
};

/// A process of this machine, watched from before it is asked to stop.
#[derive(Debug)]
pub(crate) struct Process {
    pid: u32,
    /// `None` on a kernel without pidfds.
    pidfd: Option<OwnedFd>,
}

impl Process {
    /// Starts watching `pid`; [`io::ErrorKind::NotFound`] when no such process exists.
    pub(crate) fn watch(pid: u32) -> io::Result<Process> {
        let raw = libc::pid_t::try_from(pid)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a process id"))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
        if fd >= 0 {
            // SAFETY: the kernel just created this descriptor (close-on-exec), and it is ours.
            let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            return Ok(Process {
                pid,
                pidfd: Some(pidfd),
            });
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::ESRCH) => Err(io::Error::new(io::ErrorKind::NotFound, "no such process")),
            Some(libc::ENOSYS) => Ok(Process { pid, pidfd: None }),
            _ => Err(error),
        }
    }

    /// Sends `signal`; a process already gone is not an error.
    pub(crate) fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        let result = match &self.pidfd {
            // SAFETY: pidfd_send_signal takes a descriptor, a signal number, a null siginfo and
            // flags.
            Some(pidfd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    signal,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            },
            // SAFETY: kill only sends a signal.
            None => unsafe { libc::kill(self.pid as libc::pid_t, signal) }.into(),
        };
        if result < 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::ESRCH) {
                return Err(error);
            }
        }
        Ok(())
    }

    /// Waits until the process has ended, or `deadline`; whether it ended.
    pub(crate) fn wait_gone(&self, deadline: Instant) -> io::Result<bool> {
        match &self.pidfd {
            Some(pidfd) => wait_readable(pidfd, deadline),
            None => self.poll_gone(deadline),
        }
    }

    /// `kill(pid, 0)` until it says the process is gone: from a millisecond between tries up
    /// to a tenth of a second.
    fn poll_gone(&self, deadline: Instant) -> io::Result<bool> {
        let mut pause = Duration::from_millis(1);
        loop {
            // SAFETY: signal 0 only checks that the process exists.
            if unsafe { libc::kill(self.pid as libc::pid_t, 0) } < 0 {
                let error = io::Error::last_os_error();
                match error.raw_os_error() {
                    Some(libc::ESRCH) => return Ok(true),
                    Some(libc::EPERM) => {}
                    _ => return Err(error),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            thread::sleep(pause.min(left));
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

/// Waits until `fd` is readable (a pidfd: its process has ended), or `deadline`.
fn wait_readable(fd: &OwnedFd, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Rounded up, so that a wait never ends just before the deadline and spins.
        let millis =
            libc::c_int::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(libc::c_int::MAX);
        let mut pollfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let n = unsafe { libc::poll(&mut pollfd, 1, millis) };
        if n > 0 {
            return Ok(true);
        }
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        } else if left.is_zero() {
            return Ok(false);
        }
    }
}

/// A signal by name (`TERM`, `SIGTERM`, any case) or number.
pub(crate) fn signal_number(text: &str) -> Result<libc::c_int, String> {
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let known = [
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("USR2", libc::SIGUSR2),
        ("ALRM", libc::SIGALRM),
        ("TERM", libc::SIGTERM),
    ];
    if let Some((_, number)) = known.iter().find(|(n, _)| *n == name) {
        return Ok(*number);
    }
    match text.parse::<libc::c_int>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(format!(
            "unknown signal {text:?} (expected TERM, INT, HUP, QUIT, KILL, USR1, USR2, ALRM or a \
             number)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(signal_number("term"), Ok(libc::SIGTERM));
        assert_eq!(signal_number("SIGKILL"), Ok(libc::SIGKILL));
        assert_eq!(signal_number("9"), Ok(9));
        assert!(signal_number("SIGNOPE").is_err());
        assert!(signal_number("0").is_err());
    }

    #[test]
    fn this_process_is_watched_and_alive() {
        let me = Process::watch(std::process::id()).unwrap();
        let soon = Instant::now()
            .checked_add(Duration::from_millis(10))
            .unwrap();
        assert!(!me.wait_gone(soon).unwrap());
        assert_eq!(
            Process::watch(0).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
