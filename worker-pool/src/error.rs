use std::{error, fmt, io, time::Duration};

/// The error type of `worker-pool`.
///
/// Errors that name a worker give its `index` in the pool (stable across replacements) and the
/// `pid` of the process that failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The builder was asked for something impossible.
    Config {
        /// The setting at fault.
        setting: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A worker could not be started.
    Spawn {
        /// Why.
        source: worker_bootstrap::Error,
    },
    /// A worker failed: it exited (`source` is [`worker_bootstrap::Error::WorkerExited`], with its
    /// exit status or signal and the tail of its standard error), or its channel broke.
    ///
    /// The pool has replaced it; the tasks or messages it held are lost.
    Worker {
        /// The worker's place in the pool.
        index: usize,
        /// The process that failed.
        pid: u32,
        /// What the worker's handle reported.
        source: worker_bootstrap::Error,
    },
    /// The worker's task handler returned an error; the worker goes on.
    Task {
        /// The handler's error text.
        message: String,
    },
    /// The task ran longer than the pool's task timeout; its worker was killed and replaced.
    TaskTimeout {
        /// The worker's place in the pool.
        index: usize,
        /// The process that was killed.
        pid: u32,
        /// The pool's task timeout.
        timeout: Duration,
    },
    /// The task was waiting on a worker that was killed because another task on it timed out.
    Cancelled {
        /// The worker's place in the pool.
        index: usize,
        /// The process that was killed.
        pid: u32,
    },
    /// A worker answered something that does not fit the task protocol (a runner other than
    /// the task runner, or a reply nobody asked for); it was killed and replaced.
    Protocol {
        /// The worker's place in the pool.
        index: usize,
        /// The process that was killed.
        pid: u32,
        /// What did not fit.
        what: &'static str,
    },
    /// Nothing arrived within the time given.
    Timeout {
        /// How long the call waited.
        waited: Duration,
    },
    /// The pool gave up: workers failed more often than its restart limit allows, or a
    /// replacement could not be started. Every task still queued or in flight fails with this.
    PoolFailed {
        /// Why.
        reason: String,
    },
    /// The pool was dropped before the task finished.
    Closed,
    /// The operating system refused something the pool needs (a poller, a thread).
    System {
        /// What the pool was doing.
        what: &'static str,
        /// What the system said.
        source: io::Error,
    },
}

impl Error {
    /// A copy for the second and later tasks that fail for one cause (the bootstrap error
    /// holds an `io::Error`, which is not `Clone`).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Config { setting, problem } => Error::Config { setting, problem },
            Error::Spawn { source } => Error::Spawn {
                source: duplicate_bootstrap(source),
            },
            Error::Worker { index, pid, source } => Error::Worker {
                index: *index,
                pid: *pid,
                source: duplicate_bootstrap(source),
            },
            Error::Task { message } => Error::Task {
                message: message.clone(),
            },
            Error::TaskTimeout {
                index,
                pid,
                timeout,
            } => Error::TaskTimeout {
                index: *index,
                pid: *pid,
                timeout: *timeout,
            },
            Error::Cancelled { index, pid } => Error::Cancelled {
                index: *index,
                pid: *pid,
            },
            Error::Protocol { index, pid, what } => Error::Protocol {
                index: *index,
                pid: *pid,
                what,
            },
            Error::Timeout { waited } => Error::Timeout { waited: *waited },
            Error::PoolFailed { reason } => Error::PoolFailed {
                reason: reason.clone(),
            },
            Error::Closed => Error::Closed,
            Error::System { what, source } => Error::System {
                what,
                source: io::Error::new(source.kind(), source.to_string()),
            },
        }
    }
}

pub(crate) fn duplicate_bootstrap(e: &worker_bootstrap::Error) -> worker_bootstrap::Error {
    use worker_bootstrap::Error as B;
    match e {
        B::WorkerExited {
            pid,
            implementation,
            status,
            stderr_tail,
        } => B::WorkerExited {
            pid: *pid,
            implementation: implementation.clone(),
            status: *status,
            stderr_tail: stderr_tail.clone(),
        },
        B::ChannelClosed { pid } => B::ChannelClosed { pid: *pid },
        B::Timeout { pid, waited } => B::Timeout {
            pid: *pid,
            waited: *waited,
        },
        B::Io { pid, source } => B::Io {
            pid: *pid,
            source: io::Error::new(source.kind(), source.to_string()),
        },
        B::Spawn { program, source } => B::Spawn {
            program: program.clone(),
            source: io::Error::new(source.kind(), source.to_string()),
        },
        B::RegistryNotRun => B::RegistryNotRun,
        B::Closed => B::Closed,
        B::Config(what) => B::Config(what.clone()),
        // The rest (channel errors) hold boxed errors: keep their text.
        other => B::Io {
            pid: match other {
                B::Channel { pid, .. } => *pid,
                _ => 0,
            },
            source: io::Error::other(worker_core::error_chain(other)),
        },
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { setting, problem } => {
                write!(f, "invalid pool configuration: {setting} {problem}")
            }
            Error::Spawn { .. } => f.write_str("cannot start a pool worker"),
            Error::Worker { index, pid, .. } => {
                write!(f, "pool worker {index} (pid {pid}) failed")
            }
            Error::Task { message } => write!(f, "task failed: {message}"),
            Error::TaskTimeout {
                index,
                pid,
                timeout,
            } => write!(
                f,
                "task ran longer than {timeout:?}; pool worker {index} (pid {pid}) was killed"
            ),
            Error::Cancelled { index, pid } => write!(
                f,
                "task cancelled: pool worker {index} (pid {pid}) was killed after another task \
                 on it timed out"
            ),
            Error::Protocol { index, pid, what } => {
                write!(
                    f,
                    "pool worker {index} (pid {pid}) broke the task protocol: {what}"
                )
            }
            Error::Timeout { waited } => write!(f, "nothing arrived within {waited:?}"),
            Error::PoolFailed { reason } => write!(f, "the pool failed: {reason}"),
            Error::Closed => f.write_str("the pool was dropped before the task finished"),
            Error::System { what, .. } => write!(f, "cannot {what}"),
        }
    }
}

impl error::Error for Error {
    fn source(&self) -> Option<&(dyn error::Error + 'static)> {
        match self {
            Error::Spawn { source } | Error::Worker { source, .. } => Some(source),
            Error::System { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The error of [`TaskPool::try_submit`](crate::TaskPool::try_submit), which hands the item
/// back when the queue is full.
#[derive(Debug)]
pub enum TrySubmitError<T> {
    /// The queue of waiting tasks is at its bound; here is the item back.
    Full(T),
    /// The pool cannot take tasks any more.
    Pool(Error),
}

impl<T> fmt::Display for TrySubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySubmitError::Full(_) => f.write_str("the pool's task queue is full"),
            TrySubmitError::Pool(e) => e.fmt(f),
        }
    }
}

impl<T: fmt::Debug> error::Error for TrySubmitError<T> {
    fn source(&self) -> Option<&(dyn error::Error + 'static)> {
        match self {
            TrySubmitError::Full(_) => None,
            TrySubmitError::Pool(e) => e.source(),
        }
    }
}
