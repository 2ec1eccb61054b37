//! Watching a process of this machine until it exits, and signalling it, without ever reaching
//! another process that reused its pid: the one implementation the crates and the operators'
//! programs share (a child of ours is tracked by the crate's own `Process`, which reaps it; this
//! watches any process, child or not, and reaps nothing).

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    time::{Duration, Instant},
};

use crate::sys;

/// A process of this machine, watched from the moment it is opened: through a pidfd (Linux 5.3
/// and later), so that its end is seen at once and a signal never reaches a process that merely
/// reused its pid; on kernels without pidfds (or when no descriptor is left), by asking with
/// `kill(pid, 0)` with a back-off from 100 µs to 10 ms.
///
/// Open it while something shows that the pid is still the process meant (a connection to it, a
/// child not yet reaped): from then on a pidfd keeps naming it.
///
/// Through a pidfd a process has exited once it is a zombie; asked by pid, a zombie counts as
/// running until its parent reaps it.
///
/// ```
/// use std::time::Duration;
/// use worker_bootstrap::ProcessWatch;
///
/// let mut child = std::process::Command::new("true").spawn()?;
/// let watch = ProcessWatch::open(child.id())?;
/// assert!(watch.wait(Duration::from_secs(60))?);
/// child.wait()?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct ProcessWatch {
    pid: u32,
    /// `None` on a kernel without pidfds.
    pidfd: Option<OwnedFd>,
}

impl ProcessWatch {
    /// Starts watching process `pid`.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] for pid 0 or one above `i32::MAX` (no process has it),
    /// [`io::ErrorKind::NotFound`] when no process `pid` exists.
    pub fn open(pid: u32) -> io::Result<ProcessWatch> {
        if pid == 0 || i32::try_from(pid).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a process id",
            ));
        }
        match sys::pidfd_open(pid) {
            Ok(pidfd) => Ok(ProcessWatch {
                pid,
                pidfd: Some(pidfd),
            }),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                Err(io::Error::new(io::ErrorKind::NotFound, "no such process"))
            }
            // No pidfds here (ENOSYS), or no descriptor to spare: asked by pid instead.
            Err(_) if sys::process_exists(pid) => Ok(ProcessWatch { pid, pidfd: None }),
            Err(_) => Err(io::Error::new(io::ErrorKind::NotFound, "no such process")),
        }
    }

    /// The process's id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` (a number: `libc::SIGTERM`, or one [`signal_number`] read); a process
    /// already gone is not an error. Without a pidfd the signal goes by pid, which may have been
    /// reused if the process ended since it was opened.
    ///
    /// # Errors
    ///
    /// What the kernel refused: `EPERM` for another user's process, `EINVAL` for no such signal.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        match &self.pidfd {
            Some(fd) => sys::pidfd_send_signal(fd.as_fd(), signal),
            None => sys::kill_pid(self.pid, signal),
        }
    }

    /// Waits until the process has exited, or `timeout` passes ([`Duration::MAX`]: no limit;
    /// zero: only asks); returns whether it exited.
    ///
    /// # Errors
    ///
    /// Those of `poll` (other than an interruption, which is resumed).
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        self.wait_until(worker_core::deadline_after(timeout))
    }

    /// [`wait`](Self::wait) until `deadline` (`None`: no limit).
    ///
    /// # Errors
    ///
    /// As for [`wait`](Self::wait).
    pub fn wait_until(&self, deadline: Option<Instant>) -> io::Result<bool> {
        let pidfd = self.pidfd.as_ref().map(AsFd::as_fd);
        wait_exit(pidfd, deadline, || Ok(!sys::process_exists(self.pid)))
    }
}

/// Waits until a process has exited or `deadline` passes, and returns whether it did: through
/// its pidfd when there is one, else by asking `exited` from 100 µs between two questions,
/// doubling up to 10 ms.
pub(crate) fn wait_exit(
    pidfd: Option<std::os::fd::BorrowedFd<'_>>,
    deadline: Option<Instant>,
    mut exited: impl FnMut() -> io::Result<bool>,
) -> io::Result<bool> {
    if let Some(fd) = pidfd {
        return Ok(worker_core::os::poll(&[(fd, true, false)], deadline)?.is_some());
    }
    let mut pause = Duration::from_micros(100);
    loop {
        if exited()? {
            return Ok(true);
        }
        let left = worker_core::time_left(deadline).unwrap_or(pause);
        if left.is_zero() {
            return Ok(false);
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// A signal by name (`TERM`, `SIGTERM`, any case) or number (1 to 64): the one table of signal
/// names of the crates and the operators' programs.
///
/// ```
/// assert_eq!(worker_bootstrap::signal_number("sigterm"), Some(libc::SIGTERM));
/// assert_eq!(worker_bootstrap::signal_number("9"), Some(9));
/// assert_eq!(worker_bootstrap::signal_number("NOPE"), None);
/// ```
pub fn signal_number(text: &str) -> Option<i32> {
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some((_, number)) = SIGNAL_NAMES.iter().find(|(n, _)| *n == name) {
        return Some(*number);
    }
    text.parse::<i32>().ok().filter(|n| (1..=64).contains(n))
}

/// The signals [`signal_number`] knows by name, without their `SIG` prefix.
pub const SIGNAL_NAMES: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
];

#[cfg(test)]
// Processes that are no workers, to watch: plain commands.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        let cases: &[(&str, Option<i32>)] = &[
            ("term", Some(libc::SIGTERM)),
            ("SIGKILL", Some(libc::SIGKILL)),
            ("SigHup", Some(libc::SIGHUP)),
            ("9", Some(9)),
            ("64", Some(64)),
            ("65", None),
            ("0", None),
            ("-9", None),
            ("", None),
            ("SIG", None),
            ("SIGNOPE", None),
            ("4294967295", None),
        ];
        for (text, expected) in cases {
            assert_eq!(signal_number(text), *expected, "{text:?}");
        }
    }

    #[test]
    fn pids_that_name_no_process() {
        for pid in [0, u32::MAX, i32::MAX as u32 + 1] {
            let e = ProcessWatch::open(pid).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "pid {pid}");
        }
        // A child that exited and was reaped: its pid names nothing (pids are not reused that
        // fast within one test).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let e = ProcessWatch::open(pid).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn zero_and_max_timeouts() {
        let me = ProcessWatch::open(std::process::id()).unwrap();
        assert!(!me.wait(Duration::ZERO).unwrap());
        assert!(!me.wait(Duration::from_millis(10)).unwrap());
        assert!(!me.wait_until(Some(Instant::now())).unwrap());

        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        let watch = ProcessWatch::open(child.id()).unwrap();
        assert!(!watch.wait(Duration::ZERO).unwrap());
        watch.signal(libc::SIGKILL).unwrap();
        // Exited, even unreaped (a zombie), and without a limit.
        assert!(watch.wait(Duration::MAX).unwrap());
        assert!(watch.wait(Duration::ZERO).unwrap());
        child.wait().unwrap();
        // Signalling a process that is gone is not an error.
        watch.signal(libc::SIGTERM).unwrap();
    }

    #[test]
    fn a_process_that_is_not_our_child() {
        // init (pid 1 of this namespace) is nobody's child here and does not exit.
        let init = ProcessWatch::open(1).unwrap();
        assert_eq!(init.pid(), 1);
        assert!(!init.wait(Duration::from_millis(10)).unwrap());
        // A grandchild: watched and seen to exit though another process reaps it.
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "sleep 1000 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        io::BufRead::read_line(
            &mut io::BufReader::new(shell.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let grandchild = ProcessWatch::open(line.trim().parse().unwrap()).unwrap();
        assert!(!grandchild.wait(Duration::ZERO).unwrap());
        grandchild.signal(libc::SIGTERM).unwrap();
        assert!(grandchild.wait(Duration::MAX).unwrap());
        shell.wait().unwrap();
    }
}
