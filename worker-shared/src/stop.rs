//! Asking a running server to stop: from another thread, from inside the worker, or by signal.
//!
//! All three write one byte on the server's stop line, a socket pair whose reading end is on
//! the server's loop: a byte is all a signal handler may safely send, a socket (unlike a pipe)
//! can be written with `MSG_NOSIGNAL` after its reader is gone, and the byte says why.

use std::{
    cell::RefCell,
    io::{self, Read},
    os::{
        fd::{AsFd, AsRawFd},
        unix::net::UnixStream as StdUnixStream,
    },
    sync::Arc,
};

use worker_core::mio::net::UnixStream;

use crate::sys;

/// Why a server stops, as the byte on its stop line says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// [`StopHandle::stop`].
    Handle,
    /// [`stop_current`], from inside the worker.
    Worker,
    /// A signal, by number.
    Signal(u8),
}

const BY_HANDLE: u8 = 0;
const BY_WORKER: u8 = 255;

impl StopReason {
    /// Whether this reason stops the server: every one but SIGHUP, which a server that owns
    /// its process's signals logs and ignores.
    pub(crate) fn stops(self) -> bool {
        self != StopReason::Signal(libc::SIGHUP as u8)
    }

    fn from_byte(byte: u8) -> Self {
        match byte {
            BY_HANDLE => StopReason::Handle,
            BY_WORKER => StopReason::Worker,
            signal => StopReason::Signal(signal),
        }
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Handle => f.write_str("asked to stop by its embedder"),
            StopReason::Worker => f.write_str("asked to stop by the worker"),
            StopReason::Signal(s) if i32::from(*s) == libc::SIGTERM => f.write_str("got SIGTERM"),
            StopReason::Signal(s) if i32::from(*s) == libc::SIGINT => f.write_str("got SIGINT"),
            StopReason::Signal(s) if i32::from(*s) == libc::SIGHUP => f.write_str("got SIGHUP"),
            StopReason::Signal(s) => write!(f, "got signal {s}"),
        }
    }
}

/// A server's stop line: a socket pair whose reading end goes on the server's loop.
#[derive(Debug)]
pub(crate) struct StopLine {
    writer: Arc<StdUnixStream>,
}

impl StopLine {
    /// A new line and its reading end.
    pub(crate) fn new() -> io::Result<(StopLine, UnixStream)> {
        let (reader, writer) = StdUnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        let line = StopLine {
            writer: Arc::new(writer),
        };
        Ok((line, UnixStream::from_std(reader)))
    }

    /// A handle that writes to this line.
    pub(crate) fn handle(&self) -> StopHandle {
        StopHandle {
            writer: Arc::clone(&self.writer),
        }
    }

    /// Makes SIGTERM and SIGINT stop this server, and SIGHUP reach it (to be ignored), while
    /// the result lives.
    pub(crate) fn catch_signals(&self) -> io::Result<sys::StopSignals> {
        sys::StopSignals::install(self.writer.as_fd())
    }
}

/// What a stop line said since it was last read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Heard {
    /// The first reason that stops the server, if any.
    pub(crate) stop: Option<StopReason>,
    /// The first reason that does not (SIGHUP), if any.
    pub(crate) ignored: Option<StopReason>,
}

/// Reads what was written on a stop line's reading end: a SIGHUP ahead of a SIGTERM does not
/// hide the SIGTERM.
pub(crate) fn read_reasons(reader: &mut UnixStream) -> Heard {
    let mut buf = [0; 64];
    let mut heard = Heard::default();
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return heard,
            Ok(n) => {
                for reason in buf[..n].iter().map(|&b| StopReason::from_byte(b)) {
                    let slot = if reason.stops() {
                        &mut heard.stop
                    } else {
                        &mut heard.ignored
                    };
                    slot.get_or_insert(reason);
                }
                if n < buf.len() {
                    return heard;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return heard,
        }
    }
}

/// Stops a running shared-worker server gracefully, from any thread: it stops accepting,
/// removes its socket file, runs the worker's `on_stop`, delivers the replies already queued,
/// closes its connections, and runs `terminate`.
///
/// Cheap to clone; [`StopHandle::stop`] may be called any number of times.
#[derive(Clone, Debug)]
pub struct StopHandle {
    writer: Arc<StdUnixStream>,
}

impl StopHandle {
    /// Asks the server to stop; returns at once, `false` when the server has already stopped
    /// (or is stopping).
    pub fn stop(&self) -> bool {
        sys::send_byte(self.writer.as_raw_fd(), BY_HANDLE)
    }

    fn stop_from_worker(&self) -> bool {
        sys::send_byte(self.writer.as_raw_fd(), BY_WORKER)
    }
}

thread_local! {
    /// The server whose loop runs on this thread, if any.
    static CURRENT: RefCell<Option<StopHandle>> = const { RefCell::new(None) };
}

/// Makes `handle` the current server of this thread until the guard drops.
pub(crate) fn enter(handle: StopHandle) -> CurrentGuard {
    let previous = CURRENT.with(|c| c.replace(Some(handle)));
    CurrentGuard { previous }
}

/// Restores the previous current server.
#[derive(Debug)]
pub(crate) struct CurrentGuard {
    previous: Option<StopHandle>,
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// Stops the shared worker that runs on this thread, gracefully (the seed's
/// `SharedWorker::stopCurrent()`): call it from the worker's callbacks or handlers.
///
/// The stop begins once the current callback returns: the server stops accepting, removes its
/// socket file, runs `on_stop`, delivers the replies already queued and closes. Resources the
/// worker registered on the loop must be deregistered (in `on_stop`, say) for the loop to end.
///
/// Returns `false` when no shared worker runs on this thread, or it is already stopping.
pub fn stop_current() -> bool {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .is_some_and(StopHandle::stop_from_worker)
    })
}
