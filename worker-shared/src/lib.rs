//! Shared workers: one daemon, many masters, over Unix or TCP sockets, stopped only by the holder of the admin cookie.
//!
//! ```
//! use worker_shared::{AdminCookie, Error, SharedWorker};
//!
//! let dir = tempfile::tempdir()?;
//! let address = format!("unix://{}/worker.sock", dir.path().display());
//!
//! // Nothing listens there: connecting does not start a worker, it says so.
//! match SharedWorker::connect(&address) {
//!     Err(Error::Connect { address: refused, .. }) => assert_eq!(refused, address),
//!     other => panic!("expected a refused connection, got {other:?}"),
//! }
//!
//! // The admin cookie is a secret: it never shows, and never crosses the wire.
//! let cookie = AdminCookie::new("change me in your app")?;
//! assert_eq!(cookie.to_string(), "<redacted>");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Overview
//!
//! A shared worker is an evented worker that listens on a socket instead of talking to one master over its standard input and output: any master can connect and disconnect at any time (the seed's shared workers).
//!
//! - [`SharedWorker`] is one master's connection: messages both ways, [`SharedWorker::query`] for the worker's `WorkerStatus`, and [`SharedWorker::stop`].
//! - [`AdminCookie`] is the secret that privileged operations need: stopping, and the privileged query.
//!   Both sides prove they know it by HMAC-SHA256 challenge-response, and it never crosses the wire.
//! - Every failure is an [`Error`], naming the worker's address and, once known, its pid.
//!
//! Addresses are `unix:///absolute/path`, `tcp://host:port` and `tcp://[ipv6]:port`, in the kill switch's canonical form.
//!
//! The admin plane travels in control frames, apart from application messages, so no message can be taken for a command.
//! Its bytes are described in [`protocol`], for programs in other languages.
//!
//! The server side (a daemon started race-free by its first master, or embedded in a program) comes next; this crate has the client and the protocol it speaks so far.

// `unsafe` only in `sys`, the operating system layer.
#![deny(unsafe_code)]

mod address;
mod auth;
mod client;
mod config;
mod cookie;
mod daemon;
mod error;
mod listener;
mod peer;
pub mod protocol;
mod server;
mod session;
mod stop;
mod sys;
mod wire;

pub use client::{DEFAULT_CONTROL_TIMEOUT, SharedWorker, StatusReply};
pub use config::{PeerUids, SharedServerConfig};
pub use cookie::AdminCookie;
pub use daemon::{SharedRegistryExt, StartReport, daemon_extensions, wait_until_listening};
pub use error::Error;
pub use peer::{ParsePeerError, Peer};
pub use server::{RunningServer, SharedServer, SharedWorkerImpl};
pub use stop::{StopHandle, stop_current};
