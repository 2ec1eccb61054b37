//! The operating system helpers that the worker crates share: waiting on a few descriptors with
//! a deadline, non-blocking mode, writes that never raise `SIGPIPE`, and (feature `tokio`) the
//! registration of a descriptor with tokio's reactor.
//!
//! Every call is safe; the `unsafe` behind them stays in this crate's private `sys` module.
//!
//! ```
//! use std::{io::Write, os::{fd::AsFd, unix::net::UnixStream}};
//! use worker_core::os;
//!
//! let (mut a, b) = UnixStream::pair()?;
//! assert!(!os::readable_now(b.as_fd())?);
//! a.write_all(b"x")?;
//! let ready = os::poll(&[(b.as_fd(), true, false)], None)?.expect("no deadline, no timeout");
//! assert!(ready[0].can_read());
//! # Ok::<(), std::io::Error>(())
//! ```

#[cfg(feature = "tokio")]
pub use crate::sys::register_async;
pub use crate::sys::{
    MAX_POLL_FDS, Ready, close_inherited_fds, poll, poll_now, readable_now, send_nosignal,
    set_nonblocking,
};
