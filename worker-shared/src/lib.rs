//! Shared workers: one daemon, many masters, over Unix or TCP sockets, stopped only by the holder of the admin cookie.
//!
//! ```
//! use worker_shared::AdminCookie;
//!
//! // The admin cookie is a secret: it never shows, and never crosses the wire.
//! let cookie = AdminCookie::new("change me in your app")?;
//! assert_eq!(cookie.to_string(), "<redacted>");
//! # Ok::<(), worker_shared::Error>(())
//! ```
//!
//! # Overview
//!
//! A shared worker is an evented worker that listens on a socket instead of talking to one master over its standard input and output: any master can connect and disconnect at any time (the seed's shared workers).
//!
//! - [`AdminCookie`] is the secret that privileged operations need: stopping, and the privileged query.
//!   Both sides prove they know it by HMAC-SHA256 challenge-response, and it never crosses the wire.
//! - Every failure is an [`Error`], naming the worker's address and, once known, its pid.
//!
//! Addresses are `unix:///absolute/path`, `tcp://host:port` and `tcp://[ipv6]:port`, in the kill switch's canonical form.
//!
//! The admin plane travels in control frames, apart from application messages, so no message can be taken for a command.
//! Its bytes are described in [`protocol`], for programs in other languages.
//!
//! The client and the server (a daemon started race-free by its first master, or embedded in a program) come next; this crate has the protocol they speak so far.

#![forbid(unsafe_code)]

#[cfg_attr(not(test), allow(dead_code))]
mod auth;
mod cookie;
mod error;
pub mod protocol;
// The server's side of the admin plane; the server that drives it is wired onto worker-core's
// evented host next, so until then only its tests use it.
#[cfg_attr(not(test), allow(dead_code))]
mod session;
#[cfg_attr(not(test), allow(dead_code))]
mod wire;

pub use cookie::AdminCookie;
pub use error::Error;
