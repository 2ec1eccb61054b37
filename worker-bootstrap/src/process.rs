//! A worker process as its master tracks it: through a pidfd taken at spawn, so that its death is
//! seen directly (even while a grandchild holds its channel) and no signal ever reaches another
//! process that reused its pid.

use std::{
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    process::ExitStatus,
    time::{Duration, Instant},
};

use crate::sys::{self, ChildId, ChildState};

/// How long a worker that the kernel is already tearing down (its descriptors closed as it
/// exits, a moment before it can be reaped) may take to finish exiting, so that its exit
/// status can be reported. A worker that is not exiting is never waited for; one that is takes
/// microseconds, and this bound only matters on a machine so loaded that the exiting process is
/// not scheduled for a while (seen at 100 ms under parallel builds).
pub(crate) const EXITING_WAIT: Duration = Duration::from_millis(500);

/// Where a tracked process stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Not reaped yet (running, or a zombie we have not reaped).
    Unreaped,
    /// Reaped by us, with its status.
    Reaped(ExitStatus),
    /// Reaped by someone else (another thread's `waitpid(-1)`, or the kernel with SIGCHLD
    /// ignored): the status is lost.
    Lost,
}

/// A child process of ours.
///
/// On kernels before 5.3 (no `pidfd_open`) there is no pidfd: death is then polled for, and
/// signals go by pid, sent only while the child is known unreaped (its pid reserved).
#[derive(Debug)]
pub(crate) struct Process {
    pid: u32,
    pidfd: Option<OwnedFd>,
    fate: Fate,
    /// Whether the process leads a process group of its own, killed with it.
    group: bool,
}

impl Process {
    /// Starts tracking child `pid`, right after it was spawned and before anyone can have
    /// reaped it (the spawner thread calls this).
    ///
    /// A child that another thread already reaped is tracked as [`Fate::Lost`]: its pid may
    /// already belong to another process, so the pidfd just opened is dropped unused.
    ///
    /// With `group`, the child leads a process group of its own, which is killed with it.
    pub(crate) fn track(pid: u32, group: bool) -> Self {
        Self::adopt(pid, sys::pidfd_open(pid).ok(), group)
    }

    /// [`track`](Self::track) with a pidfd the caller already has (one `clone` returned, so it
    /// names the child whatever happened since); with `None`, one is opened as `track` does.
    pub(crate) fn adopt(pid: u32, pidfd: Option<OwnedFd>, group: bool) -> Self {
        let pidfd = pidfd.or_else(|| sys::pidfd_open(pid).ok());
        let mut process = Process {
            pid,
            pidfd,
            fate: Fate::Unreaped,
            group,
        };
        if let Ok(ChildState::Gone) = sys::wait_child(process.id(), false) {
            process.pidfd = None;
            process.fate = Fate::Lost;
        }
        process
    }

    fn id(&self) -> ChildId<'_> {
        match &self.pidfd {
            Some(fd) => ChildId::Pidfd(fd.as_fd()),
            None => ChildId::Pid(self.pid),
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The pidfd, readable once the process has exited (and for good after); `None` on old
    /// kernels. It lives as long as this value, so a registration of it stays valid.
    pub(crate) fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(AsFd::as_fd)
    }

    /// Where the process stands, as last seen.
    pub(crate) fn fate(&self) -> Fate {
        self.fate
    }

    /// Whether the process has exited (or was reaped by someone else), without waiting.
    pub(crate) fn has_exited(&self) -> io::Result<bool> {
        if self.fate != Fate::Unreaped {
            return Ok(true);
        }
        match &self.pidfd {
            Some(fd) => sys::is_readable_now(fd.as_fd()),
            None => Ok(sys::wait_child(self.id(), false)? != ChildState::Running),
        }
    }

    /// Whether the process has exited, or is exiting (the kernel is tearing it down: it called
    /// `exit`, or was killed) and finishes within `wait`; a process that is not exiting is not
    /// waited for.
    ///
    /// Asked in the order the states come: exiting first, exited second. Asked the other way
    /// round, a process that was exiting when its exit was asked about and was gone (reaped by
    /// the kernel, with SIGCHLD ignored) when it was found exiting would be neither: its
    /// `/proc` entry is gone by then (seen under load, issue 17).
    pub(crate) fn exits_within(&self, wait: Duration) -> bool {
        if self.fate != Fate::Unreaped {
            return true;
        }
        let exiting = sys::is_exiting(self.pid);
        self.has_exited().unwrap_or(false)
            || (exiting
                && self
                    .wait_exited(worker_core::deadline_after(wait))
                    .unwrap_or(false))
    }

    /// Waits until the process has exited or `deadline` passes; returns whether it exited.
    pub(crate) fn wait_exited(&self, deadline: Option<Instant>) -> io::Result<bool> {
        if self.fate != Fate::Unreaped {
            return Ok(true);
        }
        // Kernels without pidfd: asked through `waitid`, which also sees a zombie.
        crate::watch::wait_exit(self.pidfd(), deadline, || self.has_exited())
    }

    /// Whether a blocking wait must also wake up now and then to check for exit (no pidfd).
    pub(crate) fn needs_polling(&self) -> bool {
        self.fate == Fate::Unreaped && self.pidfd.is_none()
    }

    /// Sends SIGKILL to the process and its whole process group (when it leads one).
    ///
    /// The group is signalled only while its leader is known unreaped, so that its id cannot
    /// have been reused by another group; the leader itself through its pidfd.
    pub(crate) fn kill(&mut self) -> io::Result<()> {
        if self.fate != Fate::Unreaped {
            return Ok(());
        }
        match sys::wait_child(self.id(), false)? {
            ChildState::Gone => {
                self.lost();
                return Ok(());
            }
            _ if self.group => sys::kill_group(self.pid)?,
            _ => {}
        }
        match &self.pidfd {
            Some(fd) => sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL),
            // The group signal reached the leader: its pgid is its pid, unless it moved itself
            // to another group, which only a pidfd can follow safely.
            None if self.group => Ok(()),
            // Unreaped a moment ago, so the pid is still its own.
            None => sys::kill_pid(self.pid, libc::SIGKILL),
        }
    }

    /// Reaps the process if it has exited, first killing what is left of its process group
    /// (its grandchildren), when it leads one, while the exited leader still holds the group
    /// id. `Ok(None)` while it runs.
    pub(crate) fn try_reap(&mut self) -> io::Result<Option<Fate>> {
        if self.fate != Fate::Unreaped {
            return Ok(Some(self.fate));
        }
        match sys::wait_child(self.id(), false)? {
            ChildState::Running => return Ok(None),
            ChildState::Gone => {
                self.lost();
                return Ok(Some(self.fate));
            }
            ChildState::Exited(_) => {}
        }
        if self.group {
            let _ = sys::kill_group(self.pid);
        }
        match sys::wait_child(self.id(), true)? {
            ChildState::Exited(status) => self.fate = Fate::Reaped(status),
            ChildState::Gone => self.lost(),
            ChildState::Running => return Ok(None),
        }
        Ok(Some(self.fate))
    }

    /// Waits for the process to exit, until `deadline`, and reaps it; `Ok(None)` when it still
    /// runs at the deadline.
    pub(crate) fn reap_until(&mut self, deadline: Option<Instant>) -> io::Result<Option<Fate>> {
        loop {
            if let Some(fate) = self.try_reap()? {
                return Ok(Some(fate));
            }
            if !self.wait_exited(deadline)? {
                return Ok(None);
            }
        }
    }

    /// Kills the process group and reaps the process, waiting as long as that takes.
    pub(crate) fn kill_and_reap(&mut self) -> io::Result<Fate> {
        self.kill()?;
        loop {
            if let Some(fate) = self.reap_until(None)? {
                return Ok(fate);
            }
        }
    }

    /// Moves the tracking out (to the reaper thread), leaving a value with nothing to do.
    pub(crate) fn hand_over(&mut self) -> Process {
        let pid = self.pid;
        std::mem::replace(
            self,
            Process {
                pid,
                pidfd: None,
                fate: Fate::Lost,
                group: false,
            },
        )
    }

    /// A pidfd taken at spawn still names the dead process (never a newcomer with its pid),
    /// so it is kept.
    fn lost(&mut self) {
        self.fate = Fate::Lost;
    }
}
