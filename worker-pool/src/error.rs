use std::{error, fmt, io, sync::Arc, time::Duration};

/// The error type of `worker-pool`.
///
/// Errors that name a worker give its `index` in the pool (stable across replacements) and the
/// `pid` of the process that failed. Errors of the layers below are kept whole, as the
/// [`source`](error::Error::source), behind an [`Arc`]: one failure often fails several
/// tasks, and each gets the same error, which is why this type is [`Clone`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The builder was asked for something impossible; nothing was started.
    Config {
        /// The setting at fault, as the builder's method names it.
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A worker could not be started.
    Spawn {
        /// Why.
        source: Arc<worker_bootstrap::Error>,
    },
    /// A worker failed: it exited (`source` is [`worker_bootstrap::Error::WorkerExited`], with
    /// its exit status or signal and the tail of its standard error), or its channel broke (a
    /// frame header the channel cannot accept, say).
    ///
    /// The pool has replaced it, except when the channel is still in step (a message that did
    /// not decode, in a [`WorkerPool`](crate::WorkerPool)); the tasks or messages it held are
    /// lost.
    Worker {
        /// The worker's place in the pool.
        index: usize,
        /// The process that failed.
        pid: u32,
        /// What the worker's handle reported.
        source: Arc<worker_bootstrap::Error>,
    },
    /// The worker's task handler returned an error; the worker goes on.
    Task {
        /// The handler's error text.
        message: String,
    },
    /// A task's item or result, or a message, could not be encoded into one frame: it is
    /// larger than the profile's frame limit, or the codec refused it. Only this task (or
    /// message) failed; its worker is healthy and goes on.
    Encode {
        /// What could not travel: `item`, `result` or `message`.
        what: &'static str,
        /// The channel's error ([`worker_channel::Error::FrameTooLarge`], or
        /// [`worker_channel::Error::Encode`] with the codec's text).
        source: Arc<worker_channel::Error>,
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
    /// A worker answered something that does not fit the task protocol (a reply to no task,
    /// or to another task than the one it was running); it was killed and replaced, and the
    /// tasks it held fail with this error.
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
    /// The pool gave up: workers failed more often than its restart limit allows, a
    /// replacement could not be started, or its dispatcher thread panicked. Every task still
    /// queued or in flight fails with this, and so does every later call.
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
        source: Arc<io::Error>,
    },
}

impl Error {
    pub(crate) fn config(what: &'static str, why: impl Into<String>) -> Self {
        Error::Config {
            what,
            why: why.into(),
        }
    }

    pub(crate) fn worker(index: usize, pid: u32, source: worker_bootstrap::Error) -> Self {
        Error::Worker {
            index,
            pid,
            source: Arc::new(source),
        }
    }

    pub(crate) fn system(what: &'static str, source: io::Error) -> Self {
        Error::System {
            what,
            source: Arc::new(source),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { what, why } => {
                write!(f, "invalid pool configuration: {what} {why}")
            }
            Error::Spawn { .. } => f.write_str("cannot start a pool worker"),
            Error::Worker { index, pid, .. } => {
                write!(f, "pool worker {index} (pid {pid}) failed")
            }
            Error::Task { message } => write!(f, "task failed: {message}"),
            Error::Encode { what, .. } => write!(f, "cannot send the {what}"),
            Error::TaskTimeout {
                index,
                pid,
                timeout,
            } => write!(
                f,
                "task ran longer than {timeout:?}; pool worker {index} (pid {pid}) was killed"
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
            Error::Spawn { source } | Error::Worker { source, .. } => Some(&**source),
            Error::Encode { source, .. } => Some(&**source),
            Error::System { source, .. } => Some(&**source),
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
            // Transparent: the display is the pool error's own.
            TrySubmitError::Pool(e) => e.source(),
        }
    }
}
