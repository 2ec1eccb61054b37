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
    /// A channel's error: a frame could not be encoded or decoded, the stream broke the frame
    /// protocol (a truncated or oversized frame, an unknown or unexpected frame kind, a payload
    /// nested too deep), a send found the outgoing queue at its bound
    /// ([`worker_channel::Error::QueueFull`]), or reading or writing the stream failed.
    Channel(worker_channel::Error),
    /// A callback or a handler returned an error.
    Handler {
        /// Which callback (`initialize`, `on_message`, ...) or `handler` for loop handlers.
        callback: &'static str,
        /// What it returned.
        source: BoxError,
    },
    /// [`LoopHandle::post`](crate::LoopHandle::post) found the event loop dropped.
    LoopGone,
    /// A peer of a [shared](crate::WorkerHost::shared) host stopped reading: its outgoing
    /// queue stayed at its bound and it took no byte for its
    /// [stall timeout](crate::NbChannel::stall_timeout).
    Stalled {
        /// Bytes that were waiting for it.
        queued: usize,
        /// How long it took none.
        waited: std::time::Duration,
    },
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
            Error::Channel(_) => f.write_str("channel error"),
            Error::Handler { callback, .. } => write!(f, "{callback} failed"),
            Error::LoopGone => f.write_str("event loop is gone"),
            Error::Stalled { queued, waited } => write!(
                f,
                "peer stopped reading ({queued} bytes queued, none taken for {waited:?})"
            ),
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

impl From<worker_channel::Error> for Error {
    fn from(e: worker_channel::Error) -> Self {
        Error::Channel(e)
    }
}
