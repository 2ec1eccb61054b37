//! Starting a detached worker: a daemon that outlives the process that started it.

use std::{
    collections::BTreeMap,
    fmt,
    os::fd::{AsFd, OwnedFd},
    time::Duration,
};

use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;
use worker_channel::FrameKind;

use crate::{
    BootstrapProfile, DedicatedWorker, Error, dedicated::FromDescendants, spawn::Mode, sys,
};

/// How long the process that becomes the daemon may take to say that it detached.
const DETACH_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`DetachedStart::kill`] waits for the killed daemon to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Starts a detached worker running `implementation`: a daemon, reached by other means than a
/// channel (a socket of its own), which outlives the process that started it. Returns the
/// daemon's process id once it runs on its own.
///
/// It goes through the one spawn path like every worker (posix_spawn, the profile's program,
/// environment and hooks, the init frame with its arguments and extensions), but:
/// - it asks for no parent-death signal;
/// - it leaves the starter's session for one of its own, and forks, so it is neither a session
///   nor a group leader (it cannot acquire a controlling terminal) and is adopted by init (or a
///   subreaper) at once; the intermediate process is reaped here, so no zombie is left behind;
/// - it runs in `/` unless the profile sets a working directory, so it keeps no directory of
///   its starter's busy;
/// - it holds none of the starter's descriptors: its standard input is `/dev/null`, its standard
///   output and error go to the profile's [output path](BootstrapProfile::with_output_path) or
///   to `/dev/null` (whatever the profile's [`StderrMode`](crate::StderrMode)), and its channel
///   is closed once it has said its pid; the channel its implementation gets reads nothing.
///
/// A failure before it detaches (an unknown implementation, a failing before-construction
/// hook) is [`Error::Detach`]; one of its constructor runs in the daemon, which then exits with
/// [`EXIT_FAILURE`](crate::EXIT_FAILURE), unseen here: a daemon that must tell its starter
/// whether it started is started with [`start_detached`] instead. Before-construction hooks run
/// before the fork, so they must not start threads.
///
/// ```rust,standalone_crate,no_run
/// use worker_bootstrap::{BootstrapProfile, spawn_detached};
///
/// let pid = spawn_detached(&BootstrapProfile::default(), "my-daemon", None, Default::default())?;
/// println!("daemon running as pid {pid}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn spawn_detached(
    profile: &BootstrapProfile,
    implementation: &str,
    args: Option<ByteBuf>,
    extensions: BTreeMap<String, ByteBuf>,
) -> Result<u32, Error> {
    let start = launch(profile, implementation, args, extensions, false)?;
    Ok(start.pid)
}

/// Starts a detached worker as [`spawn_detached`] does, but the daemon keeps its channel's
/// writing end until its implementation has said whether it is ready: the returned
/// [`DetachedStart`] reads that one report.
///
/// The implementation (a runner registered with
/// [`Registry::implementation`](crate::Registry::implementation)) sends its report with
/// [`WorkerContext::report`](crate::WorkerContext::report), which also closes the channel, so
/// from then on the daemon holds none of its starter's descriptors. Its standard input is
/// `/dev/null` from the start.
///
/// The starter never polls: it waits on the channel, and a daemon that dies (or closes its
/// channel) before it reports ends that wait at once with [`Error::DaemonEnded`].
///
/// ```rust,standalone_crate,no_run
/// use std::time::Duration;
/// use worker_bootstrap::{BootstrapProfile, start_detached};
///
/// let mut start = start_detached(&BootstrapProfile::default(), "my-daemon", None, Default::default())?;
/// let ready: String = start.receive_report(Duration::from_secs(30))?;
/// println!("daemon {} says {ready}", start.pid());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn start_detached(
    profile: &BootstrapProfile,
    implementation: &str,
    args: Option<ByteBuf>,
    extensions: BTreeMap<String, ByteBuf>,
) -> Result<DetachedStart, Error> {
    launch(profile, implementation, args, extensions, true)
}

/// A daemon just started by [`start_detached`], until it reports.
///
/// It holds the reading end of the daemon's channel (the daemon's standard input is
/// `/dev/null`). Dropping it closes that end; a report sent afterwards is lost, and its send
/// fails in the daemon without harming it.
pub struct DetachedStart {
    implementation: String,
    pid: u32,
    /// The handle of the process that detached (reaped), which holds the channel.
    starter: DedicatedWorker,
    /// The daemon's pidfd, taken while its channel showed it alive, so a kill can never reach
    /// another process that reused its pid; `None` once it had closed its channel then, or on
    /// kernels without pidfds.
    pidfd: Option<OwnedFd>,
}

impl fmt::Debug for DetachedStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DetachedStart")
            .field("implementation", &self.implementation)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl DetachedStart {
    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The implementation the daemon runs.
    pub fn implementation(&self) -> &str {
        &self.implementation
    }

    /// Waits at most `timeout` for the daemon's report (a data message in the profile's codec).
    ///
    /// # Errors
    ///
    /// - [`Error::DaemonEnded`] at once when the daemon ends, or closes its channel, before it
    ///   reports (what it wrote went to the profile's output path);
    /// - [`Error::Timeout`] when it says nothing in time (it may still: see [`kill`](Self::kill));
    /// - [`Error::Channel`] when what it sent does not decode as a `T`.
    pub fn receive_report<T: DeserializeOwned>(&mut self, timeout: Duration) -> Result<T, Error> {
        let deadline = worker_core::deadline_after(timeout);
        match self
            .starter
            .receive_from_descendants::<T>(deadline, FrameKind::Data)?
        {
            FromDescendants::Message(report) => Ok(report),
            FromDescendants::End => Err(Error::DaemonEnded {
                implementation: self.implementation.clone(),
                pid: Some(self.pid),
            }),
            FromDescendants::Timeout => Err(Error::Timeout {
                pid: self.pid,
                waited: timeout,
            }),
        }
    }

    /// Kills the daemon (SIGKILL) if it has not closed its channel yet, and waits until it has
    /// (up to 5 s): a daemon that would not report in time goes, rather than start later with
    /// nobody waiting for it.
    ///
    /// Without a pidfd (its channel was already closed when it said its pid, or the kernel has
    /// none) nothing is sent: its pid could belong to another process by now.
    pub fn kill(&mut self) -> Result<(), Error> {
        let Some(pidfd) = self.pidfd.take() else {
            return Ok(());
        };
        sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL).map_err(|source| Error::Io {
            pid: self.pid,
            source,
        })?;
        let _ = sys::poll(
            &[(pidfd.as_fd(), true, false)],
            worker_core::deadline_after(KILL_WAIT),
        );
        Ok(())
    }
}

/// Starts a detached worker and waits until the daemon said its pid.
fn launch(
    profile: &BootstrapProfile,
    implementation: &str,
    args: Option<ByteBuf>,
    extensions: BTreeMap<String, ByteBuf>,
    report: bool,
) -> Result<DetachedStart, Error> {
    let mut starter = DedicatedWorker::launch(
        profile,
        implementation,
        args,
        extensions,
        Mode::Detached { report },
    )?;
    let deadline = worker_core::deadline_after(DETACH_TIMEOUT);
    // The answer comes from the daemon (its pid) or, when it could not detach, from the
    // process that was to fork it (the reason); the latter's exit is not the end of it.
    let said =
        starter.receive_from_descendants::<Result<u32, String>>(deadline, FrameKind::Control);
    let pid = match said? {
        FromDescendants::Message(Ok(pid)) => pid,
        FromDescendants::Message(Err(reason)) => {
            let _ = starter.close();
            return Err(Error::Detach {
                implementation: implementation.to_owned(),
                reason,
            });
        }
        FromDescendants::End => {
            // Nothing said: how the process that was to detach ended tells why, when it did
            // not exit cleanly after forking.
            starter.reap_within(deadline)?;
            return Err(match starter.exited_error() {
                Some(Error::WorkerExited { status, .. }) if status.success() => {
                    Error::DaemonEnded {
                        implementation: implementation.to_owned(),
                        pid: None,
                    }
                }
                Some(e) => e,
                None => Error::DaemonEnded {
                    implementation: implementation.to_owned(),
                    pid: None,
                },
            });
        }
        FromDescendants::Timeout => {
            let pid = starter.pid();
            let _ = starter.kill();
            return Err(Error::Timeout {
                pid,
                waited: DETACH_TIMEOUT,
            });
        }
    };
    // It exits as soon as it has forked: this reaps it.
    starter.reap_within(deadline)?;
    // While the daemon still holds its channel it is alive, so the pid is still its own.
    let pidfd = match report {
        true => sys::pidfd_open(pid)
            .ok()
            .filter(|_| !starter.output_hung_up()),
        false => None,
    };
    Ok(DetachedStart {
        implementation: implementation.to_owned(),
        pid,
        starter,
        pidfd,
    })
}
