//! Shared workers: one daemon, many masters, over Unix or TCP sockets, stopped only by the holder of the admin cookie.
//!
//! ```
//! use worker_core::{BoxError, Connection, EventedWorker, Worker, WorkerLoop, WorkerStatus};
//! use worker_shared::{AdminCookie, SharedServer, SharedServerConfig, SharedWorker, SharedWorkerImpl};
//!
//! /// Counts its clients, as the seed's `MySharedWorkerImpl` does.
//! struct Counter { i: u64 }
//!
//! impl Worker for Counter {
//!     const NAME: &'static str = "counter";
//!     type Args = ();
//!     fn new((): ()) -> Result<Self, BoxError> { Ok(Counter { i: 0 }) }
//! }
//!
//! impl EventedWorker for Counter {
//!     type Message = String;
//!     type Reply = String;
//!     fn on_message(&mut self, name: String, connection: &mut Connection<String>,
//!                   _: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
//!         self.i += 1;
//!         connection.send(&format!("Hello {name}, you are client {}", self.i))?;
//!         Ok(())
//!     }
//! }
//!
//! impl SharedWorkerImpl for Counter {
//!     fn on_query(&mut self, _privileged: bool) -> Option<WorkerStatus> {
//!         Some(format!("{} clients so far", self.i).into())
//!     }
//! }
//!
//! let dir = tempfile::tempdir()?;
//! let address = format!("unix://{}/worker.sock", dir.path().display());
//! let cookie = AdminCookie::new("change me in your app")?;
//!
//! // The server: here embedded on a thread; a daemon is the same server in its own process.
//! let config = SharedServerConfig::default().with_cookie(cookie.clone());
//! let server = SharedServer::bind(&address, config)?.spawn(|| Counter::new(()))?;
//!
//! // The masters.
//! let mut master = SharedWorker::connect(&address)?;
//! master.send_message("world")?;
//! assert_eq!(master.receive_message::<String>()?, "Hello world, you are client 1");
//! assert_eq!(master.query()?.status.unwrap().text(), "1 clients so far");
//!
//! // Only the holder of the cookie stops it; the cookie itself never crosses the wire.
//! master.stop(&cookie)?;
//! server.join()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Overview
//!
//! A shared worker is an evented worker that listens on a socket instead of talking to one master over its standard input and output: any master can connect and disconnect at any time (the seed's shared workers).
//!
//! - [`SharedWorker`] is one master's connection: messages both ways, [`SharedWorker::query`] for the worker's `WorkerStatus`, and [`SharedWorker::stop`].
//! - [`SharedWorkerImpl`] is what a shared worker implements, on top of `EventedWorker`: `on_query` and `on_stop`.
//! - [`SharedServer`] serves one on a socket: on the calling thread ([`SharedServer::run`]), on a thread of its own ([`SharedServer::spawn`]), or as a daemon (below).
//!   [`SharedServerConfig`] holds the cookie, the codec, the socket's mode and who may connect, the limits and the deadlines.
//! - [`AdminCookie`] is the secret that privileged operations need: stopping, and the privileged query.
//!   Both sides prove they know it by HMAC-SHA256 challenge-response, and it never crosses the wire.
//! - Every failure is an [`Error`], naming the worker's address and, once known, its pid.
//!
//! Addresses are `unix:///absolute/path`, `tcp://host:port` and `tcp://[ipv6]:port`, in the kill switch's canonical form.
//!
//! The admin plane travels in control frames, apart from application messages, so no message can be taken for a command.
//! Its bytes are described in [`protocol`], for programs in other languages.
//!
//! # What the server guarantees
//!
//! - Many connections on one thread; each gets a hello (protocol version, pid, implementation, codec, a fresh nonce) before anything else, and its own bounded queue of replies.
//! - What goes wrong with one client ends that client's connection only: garbage, an oversized header, a frame cut by the end of the stream, a message that does not decode, silence past the handshake deadline, a queue at its bound (a client that stops reading is dropped, and nobody waits for it), three wrong cookies.
//! - A wrong cookie is a typed [`Error::Unauthorized`] for the client; the server logs it (never the cookie or the proof) and keeps serving.
//! - Past the connection limit, and for a Unix peer of another user (by default), the connection is closed before any hello.
//! - A Unix socket file is created `0600` (configurable), never more open, in a directory created `0700` when absent.
//! - A graceful stop (an authenticated client, SIGTERM or SIGINT when asked, [`stop_current`] from inside the worker, a [`StopHandle`], the idle time) stops accepting, removes the socket file only while it is still the one this server bound, runs `on_stop`, answers what the clients already sent, delivers every queued reply, closes (within the drain deadline), and runs `terminate`; `on_stop` and `terminate` run once each.
//! - systemd's socket activation: when `LISTEN_PID` and `LISTEN_FDS` hand the process its listener, [`SharedServer::bind`] serves on it instead of binding.
//!
//! # Daemons
//!
//! `worker_bootstrap::registry().shared::<W>()` (with [`SharedRegistryExt`] in scope) registers `W` so that a process started as a shared-worker daemon serves it.
//! The starter passes [`daemon_extensions`] (address, cookie, settings) in the bootstrap frame, through the private start pipe; the daemon binds, builds `W`, and answers one [`StartReport`] on the channel it was started with (`listening` with its pid, or `failed` with its reason), which [`wait_until_listening`] reads.
//! Then it serves until stopped, SIGTERM and SIGINT included.

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
