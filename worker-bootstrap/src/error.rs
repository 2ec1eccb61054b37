use std::{error, fmt, io, path::PathBuf, process::ExitStatus, time::Duration};

/// The error type of `worker-bootstrap`: starting workers and talking to them.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The worker executable could not be started.
    Spawn {
        /// The executable.
        program: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// This process was started as a worker, but `run_if_worker` did not run before it tried to
    /// start workers of its own: it must be the first thing in `main`.
    RegistryNotRun,
    /// The worker process ended (or closed its channel and then ended).
    WorkerExited {
        /// The worker's process id.
        pid: u32,
        /// The implementation it ran.
        implementation: String,
        /// How it ended.
        status: ExitStatus,
        /// The last lines it wrote to standard error (empty when its standard error was not
        /// captured).
        stderr_tail: String,
    },
    /// The worker process ended, but its exit status was lost: another part of this program
    /// reaped it (a `waitpid(-1)` of its own, or SIGCHLD set to be ignored, which makes the
    /// kernel reap children at once).
    ExitStatusLost {
        /// The worker's process id.
        pid: u32,
        /// The implementation it ran.
        implementation: String,
        /// The last lines it wrote to standard error (empty when its standard error was not
        /// captured).
        stderr_tail: String,
    },
    /// The worker closed its channel and is still running (it has not exited, nor is it
    /// exiting): nothing more can come from it. Closing or dropping the handle ends it.
    ChannelClosed {
        /// The worker's process id.
        pid: u32,
    },
    /// A send gave up part-way through a message, so the worker would read a cut frame: the
    /// channel cannot be used any more, and the worker should be killed.
    ChannelBroken {
        /// The worker's process id.
        pid: u32,
    },
    /// While a send waited for the worker to take its input, the worker sent more than the
    /// master buffers meanwhile (twice the maximum frame length, at least 1 MiB): it streams and
    /// does not read. If part of the message was written, the channel is broken
    /// ([`Error::ChannelBroken`] from then on).
    ReceiveBufferFull {
        /// The worker's process id.
        pid: u32,
        /// Bytes received and buffered.
        buffered: usize,
        /// The bound.
        limit: usize,
    },
    /// [`DedicatedWorker::queue_message`](crate::DedicatedWorker::queue_message) found the
    /// outgoing queue at its bound (twice the maximum frame length, at least 1 MiB): nothing was
    /// queued; flush and try again.
    QueueFull {
        /// The worker's process id.
        pid: u32,
        /// Bytes queued and not yet written.
        queued: usize,
        /// The bound.
        limit: usize,
    },
    /// Nothing arrived (or, for a send, the worker took nothing) within the time given.
    Timeout {
        /// The worker's process id.
        pid: u32,
        /// How long the call waited.
        waited: Duration,
    },
    /// The channel carried something the master could not accept (bad frame, undecodable
    /// payload), or a message could not be encoded.
    Channel {
        /// The worker's process id.
        pid: u32,
        /// The channel's error.
        source: worker_channel::Error,
    },
    /// A detached worker could not be started: the process that was to become the daemon said
    /// why before it exited.
    Detach {
        /// The implementation it was to run.
        implementation: String,
        /// What went wrong.
        reason: String,
    },
    /// A detached worker ended, or closed its channel, before it reported: before it said its
    /// pid (`pid` is `None`), or before its implementation said it was ready. What it wrote
    /// went to the profile's output path, if any.
    DaemonEnded {
        /// The implementation it was to run.
        implementation: String,
        /// The daemon's process id, once it said it.
        pid: Option<u32>,
    },
    /// The profile's output path, where a daemon's standard output and error go, cannot be
    /// opened.
    Output {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A system call on the worker's channel or process failed.
    Io {
        /// The worker's process id.
        pid: u32,
        /// What failed.
        source: io::Error,
    },
    /// A worker could not be forked from its zygote
    /// ([`SpawnMode::Zygote`](crate::SpawnMode::Zygote)): before its first answer the zygote
    /// refused (it has more than one thread), exited, or said something that is not an answer,
    /// so its executable cannot be a zygote. The zygote is ended; the next spawn starts another.
    ///
    /// A zygote that fails for a reason of the moment (killed, silent past the profile's
    /// [`zygote_timeout`](crate::BootstrapProfile::with_zygote_timeout), or failing after it
    /// served) is not this error: it is replaced for the same spawn, and if the new one fails
    /// too, the worker is executed instead.
    Zygote {
        /// The zygote's process id.
        pid: u32,
        /// What went wrong.
        reason: String,
        /// The last lines the zygote wrote to standard error (empty when the profile's
        /// [`StderrMode`](crate::StderrMode) does not keep them).
        stderr_tail: String,
    },
    /// The handle was already closed.
    Closed,
    /// The profile asks for something impossible (the same shape as every crate's
    /// configuration error).
    Config {
        /// The setting at fault.
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

impl Error {
    /// The worker's exit status, when the error is that the worker ended.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        match self {
            Error::WorkerExited { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Describes an exit status the way a person reads it: `exited with code 3`,
/// `killed by signal 9 (SIGKILL)`.
pub fn describe_exit(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    match status.signal() {
        Some(sig) => {
            let name = match sig {
                1 => " (SIGHUP)",
                2 => " (SIGINT)",
                6 => " (SIGABRT)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                13 => " (SIGPIPE)",
                15 => " (SIGTERM)",
                _ => "",
            };
            let core = if status.core_dumped() {
                ", core dumped"
            } else {
                ""
            };
            format!("killed by signal {sig}{name}{core}")
        }
        None => format!("{status}"),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Spawn { program, .. } => {
                write!(f, "cannot start worker executable {}", program.display())
            }
            Error::RegistryNotRun => f.write_str(
                "this process is a worker whose main did not call run_if_worker first; \
                 refusing to start workers from it",
            ),
            Error::WorkerExited {
                pid,
                implementation,
                status,
                stderr_tail,
            } => {
                write!(
                    f,
                    "worker {implementation} (pid {pid}) {}",
                    describe_exit(status)
                )?;
                let tail = stderr_tail.trim_end();
                if !tail.is_empty() {
                    write!(f, "; its stderr ended with:\n{tail}")?;
                }
                Ok(())
            }
            Error::ExitStatusLost {
                pid,
                implementation,
                stderr_tail,
            } => {
                write!(
                    f,
                    "worker {implementation} (pid {pid}) ended, but its exit status was lost: \
                     another part of this program reaped it (SIGCHLD ignored, or a waitpid(-1))"
                )?;
                let tail = stderr_tail.trim_end();
                if !tail.is_empty() {
                    write!(f, "; its stderr ended with:\n{tail}")?;
                }
                Ok(())
            }
            Error::ChannelClosed { pid } => {
                write!(f, "worker (pid {pid}) closed its channel but did not exit")
            }
            Error::ReceiveBufferFull {
                pid,
                buffered,
                limit,
            } => write!(
                f,
                "worker (pid {pid}) sent {buffered} bytes while a send waited for it to read, \
                 past the limit of {limit} bytes"
            ),
            Error::QueueFull { pid, queued, limit } => write!(
                f,
                "outgoing queue to worker (pid {pid}) full ({queued} bytes queued, limit {limit} \
                 bytes)"
            ),
            Error::ChannelBroken { pid } => write!(
                f,
                "channel to worker (pid {pid}) broken by a send that gave up part-way"
            ),
            Error::Timeout { pid, waited } => {
                write!(
                    f,
                    "timed out after {waited:?} waiting on worker (pid {pid})"
                )
            }
            Error::Channel { pid, .. } => write!(f, "channel to worker (pid {pid}) failed"),
            Error::Io { pid, .. } => write!(f, "i/o error with worker (pid {pid})"),
            Error::Detach {
                implementation,
                reason,
            } => write!(f, "cannot start detached worker {implementation}: {reason}"),
            Error::DaemonEnded {
                implementation,
                pid: Some(pid),
            } => write!(
                f,
                "detached worker {implementation} (pid {pid}) ended before it reported"
            ),
            Error::DaemonEnded {
                implementation,
                pid: None,
            } => write!(
                f,
                "detached worker {implementation} ended before it said its pid"
            ),
            Error::Output { path, .. } => {
                write!(f, "cannot open the daemon output file {}", path.display())
            }
            Error::Zygote {
                pid,
                reason,
                stderr_tail,
            } => {
                write!(f, "cannot fork a worker from zygote (pid {pid}): {reason}")?;
                let tail = stderr_tail.trim_end();
                if !tail.is_empty() {
                    write!(f, "; its stderr ended with:\n{tail}")?;
                }
                Ok(())
            }
            Error::Closed => f.write_str("worker handle already closed"),
            Error::Config { what, why } => write!(f, "invalid bootstrap profile: {what} {why}"),
        }
    }
}

impl error::Error for Error {
    fn source(&self) -> Option<&(dyn error::Error + 'static)> {
        match self {
            Error::Spawn { source, .. }
            | Error::Io { source, .. }
            | Error::Output { source, .. } => Some(source),
            Error::Channel { source, .. } => Some(source),
            _ => None,
        }
    }
}
