use std::{error, fmt, io};

use crate::BoxError;

/// The error type of the evented side: the event loop, the non-blocking channel and the
/// evented runtime.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A system call of the event loop or of a channel failed.
    Io {
        /// What was being done (`poll`, `register`, `read`, `write`, ...).
        op: &'static str,
        /// What the system said.
        source: io::Error,
    },
    /// A frame could not be encoded or decoded, or the stream broke the frame protocol
    /// (a truncated or oversized frame, an unknown or unexpected frame kind).
    Channel(worker_channel::Error),
    /// A send found the outgoing queue at its bound: the peer does not read fast enough.
    ///
    /// Nothing was queued; send again once the queue has drained.
    QueueFull {
        /// Bytes waiting to be written.
        queued: usize,
        /// The bound of the queue.
        limit: usize,
    },
    /// A send found the peer gone (its end of the stream is closed).
    Disconnected,
    /// A callback or a handler returned an error.
    Handler {
        /// Which callback (`initialize`, `on_message`, ...) or `handler` for loop handlers.
        callback: &'static str,
        /// What it returned.
        source: BoxError,
    },
    /// [`LoopHandle::post`](crate::LoopHandle::post) found the event loop dropped.
    LoopGone,
}

impl Error {
    /// Turns an error a handler returned into the loop's error, keeping an `Error` that
    /// a nested layer already produced as it is instead of wrapping it twice.
    pub(crate) fn from_handler(callback: &'static str, e: BoxError) -> Self {
        match e.downcast::<Error>() {
            Ok(e) => *e,
            Err(source) => Error::Handler { callback, source },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, .. } => write!(f, "event loop {op} failed"),
            Error::Channel(_) => f.write_str("channel protocol error"),
            Error::QueueFull { queued, limit } => write!(
                f,
                "outgoing queue full ({queued} bytes queued, limit {limit} bytes)"
            ),
            Error::Disconnected => f.write_str("peer disconnected"),
            Error::Handler { callback, .. } => write!(f, "{callback} failed"),
            Error::LoopGone => f.write_str("event loop is gone"),
        }
    }
}

impl error::Error for Error {
    fn source(&self) -> Option<&(dyn error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Channel(e) => Some(e),
            Error::Handler { source, .. } => Some(&**source),
            _ => None,
        }
    }
}
