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
    /// A callback or a handler panicked, and the panic was caught (see
    /// [`EventLoop::set_panic_handler`](crate::EventLoop::set_panic_handler) and
    /// [`WorkerHost::set_panic_handler`](crate::WorkerHost::set_panic_handler)).
    Panicked {
        /// Which callback (`on_message`, `on_query` through `control`, ...), or `handler`,
        /// `timer`, `posted closure` for what runs on the loop.
        callback: &'static str,
        /// The panic's message (its payload when that is text).
        message: String,
    },
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
            Error::Panicked { callback, message } => write!(f, "{callback} panicked: {message}"),
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

/// Runs `f`, turning a panic into [`Error::Panicked`] naming `callback`, with the panic's
/// message: how a host that isolates panics calls the code it does not trust.
///
/// The panic still goes through the process's panic hook (by default a line on standard
/// error). What `f` changed before it panicked stays changed: the caller decides whether the
/// state it shares with `f` can still be used.
///
/// ```
/// use worker_core::{Error, catch_panic};
///
/// assert_eq!(catch_panic("sum", || 1 + 1).unwrap(), 2);
/// let caught = catch_panic("on_message", || -> u32 { panic!("no such user") });
/// assert!(matches!(caught, Err(Error::Panicked { callback: "on_message", message })
///     if message == "no such user"));
/// ```
pub fn catch_panic<T>(callback: &'static str, f: impl FnOnce() -> T) -> Result<T, Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| Error::Panicked {
        callback,
        message: panic_message(&*payload),
    })
}

/// The text of a panic's payload: what `panic!` was given, when it was text.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic whose payload is not text".to_owned()
    }
}
