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
//!   With the `tokio` feature, `AsyncSharedWorker` is the same connection for async code, on tokio's reactor (`AsyncSharedWorker::connect`, or `SharedWorker::into_async`).
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
//! - What goes wrong with one client ends that client's connection only: garbage, an oversized header, a frame cut by the end of the stream, a message that does not decode, silence past the handshake deadline, a client that stops reading (its replies at the queue's bound, none of them taken for the stall timeout: it is dropped, and nobody waits for it), three wrong cookies.
//!   A reply is never refused for its size: any one up to the frame limit reaches a client that reads it, whatever the queue's bound.
//! - A wrong cookie is a typed [`Error::Unauthorized`] for the client; the server logs it (never the cookie or the proof) and keeps serving.
//!   Wrong cookies are checked at most 100 times a second per peer (its user, its IPv4 address or its IPv6 `/64`), across its connections; past that, each is refused unchecked ([`Error::Throttled`]) at the end of the second, and the server logs it once per second.
//! - On a TCP address that is not loopback (by default, see [`ClientAuth`]), a connection proves it knows the client cookie or the admin cookie ([`SharedWorker::connect_with_cookie`]) before the worker takes a data message or a query from it; before that, either is refused ([`Error::AuthenticationRequired`]) and the connection closed.
//! - A panic in a callback of the worker ends the connection it was serving only ([`Error::WorkerFailed`] for its client, after what was queued for it before), and is logged with its message; the server stops gracefully after 10 within 60 s, or at the first, as its [`PanicPolicy`] says.
//! - A connection idle past the [connection idle timeout](SharedServerConfig::with_connection_idle_timeout), when there is one, is closed.
//! - Past the connection limit, and for a Unix peer of another user (by default), the connection is closed before any hello.
//! - A Unix socket file is created `0600` (configurable), never more open, in a directory created `0700` when absent.
//! - A graceful stop (an authenticated client, SIGTERM or SIGINT when asked (SIGHUP is then ignored), [`stop_current`] from inside the worker, a [`StopHandle`], the idle time) stops accepting, removes the socket file only while it is still the one this server bound, runs `on_stop`, answers what the clients already sent, delivers every queued reply, closes (within the drain deadline), and runs `terminate`; `on_stop` and `terminate` run once each.
//! - systemd's socket activation: when `LISTEN_PID` and `LISTEN_FDS` hand the process its listener, [`SharedServer::bind`] serves on it instead of binding.
//!
//! # Daemons
//!
//! `worker_bootstrap::registry().shared::<W>()` (with [`SharedRegistryExt`] in scope) registers `W` so that a process started as a shared-worker daemon serves it.
//! The starter passes [`daemon_extensions`] (address, cookie, settings) in the bootstrap frame, through the private start pipe; the daemon binds, builds `W`, and answers one [`StartReport`] on the channel it was started with (`listening` with its pid, or `failed` with its reason), then closes that channel.
//! [`start`] and [`connect_or_start`] do all of it (see below); [`wait_until_listening`] reads the report of a daemon started as a `DedicatedWorker`.
//! Then it serves until stopped, SIGTERM and SIGINT included; SIGHUP is logged and ignored, so a daemon outlives the terminal or session that started it.
//!
//! # Starting on demand
//!
//! [`connect_or_start`] and [`start`] start a shared worker that is not running, as a daemon, the first time a master needs it; [`stop`] stops it, and waits until it is gone.
//!
//! ## How a start goes
//!
//! 1. Connect.
//!    A worker that answers is running: it is used as it is (its pid is the answer of [`start`]), whatever the kill switch says, since disabling a worker does not stop it.
//! 2. A worker that cannot be reached at an address that is not this machine's (the connection failed, or gave no hello in time) is [`Error::NotLocal`], and nothing is spawned: only a Unix socket, or TCP on a host whose every address is a loopback, unspecified or local one, is started here.
//! 3. Only "nothing listens there" goes on (no socket file, or a refused connection), and a worker that says it is stopping ([`Error::Stopping`]: its successor is started, or found, under the lock); every other failure is returned (a socket served by another user, say, is [`Error::UntrustedServer`] and never taken over).
//! 4. The kill switch, if the profile names one, is read: a disabled worker fails at once with [`Error::Disabled`] (and an unreadable switch with [`Error::KillSwitch`]), without waiting for the start lock.
//! 5. Take the **start lock**, an exclusive `flock(2)` on a lock file: for a Unix socket, the socket's path with `.lock` appended, beside it (its directory is created `0700` when absent); for TCP, one file per address in the [runtime directory](runtime_dir()).
//!    The lock is waited for within the start's timeout (asked again and again without blocking, with a back-off of up to 10 ms): a lock held past it ends the start with [`Error::Timeout`] (operation `start lock`), and nothing is spawned.
//!    Nothing another user controls is used: the lock file is opened without following a link, and only when it is a regular file of this user's; an existing socket directory only when this user or root owns it and nobody else may write to it, unless it is sticky (the system's temporary directory), where only this user's files are used; anything else is [`Error::Untrusted`].
//!    The lock files are never removed (removing one would let two starters lock two files).
//! 6. Under it, connect again: a master that held the lock before us may have started the worker; it is used then, and nothing is spawned (so a loser's constructor never runs).
//! 7. Under it, take the kill switch's own exclusive lock (within the start's timeout too) and check again ([`KillSwitchLock::check_start`](worker_killswitch::KillSwitchLock::check_start)); that lock is kept until the daemon has answered, so a worker disabled meanwhile cannot start: the disable waits for the start, and the stop that follows it (disable, *then* stop) finds the worker.
//! 8. Under it, a Unix socket file that refused the connection is stale (its daemon died without removing it, say by SIGKILL): it is removed, if it is a socket of this user's (another user's is [`Error::Untrusted`]).
//!    A file that is not a socket is left alone (the daemon's bind then says the address is in use).
//! 9. Spawn the daemon through the one spawn path, detached ([`start_detached`](worker_bootstrap::start_detached)): a session of its own, `/` as its working directory unless the profile sets one, `/dev/null` as its standard input, the profile's output path (or `/dev/null`) as its standard output and error, no parent-death signal, no descriptor of its starter's.
//!    Its settings, the admin cookie among them, travel in the bootstrap frame through its private pipe, never on its command line, in its environment or in a file.
//! 10. Wait for its [`StartReport`] on that pipe, never polling: it binds, builds the worker, and says `listening` (the start's answer is its pid) or why it cannot ([`Error::StartFailed`], in its own words); a daemon that dies first is [`Error::Start`] at once.
//!     One that says nothing within the start timeout is killed, and the start fails with [`Error::Timeout`].
//!     A daemon that listens is never hidden behind an error: when [`connect_or_start`]'s connection to it fails in the time left, the error names its pid.
//! 11. Release the kill switch's lock, then the start lock.
//!
//! Exactly one daemon runs per address: starters of one address are serialised by the start lock, each looks again under it, and a daemon binds its socket before its constructor runs, so even a starter that does not share the lock (another user's, or one with another runtime directory for a TCP address) cannot run a second constructor; it gets the first daemon instead, when it can connect to it.
//!
//! ## Lock order, and what must not be done in a constructor
//!
//! The start lock of an address is always taken before the kill switch's lock, and released after it; changes of the kill switch take its lock alone; a daemon takes no lock.
//! So no cycle can form between starters and the kill switch.
//! One can through the daemon's own code: its constructor runs while its starter holds both locks, so a constructor that itself starts another shared worker (with a kill switch) waits for the kill switch's lock its starter holds until the start times out.
//! Start other shared workers from `initialize` instead, which runs after the daemon has answered.
//!
//! A starter waits for the start lock at most its own start timeout, and another starter holds it at most that starter's start timeout (and not at all once it died: the kernel releases its lock).
//!
//! # Logging
//!
//! A server's lines (its start and stop, refused connections, wrong cookies) are `log` records with the target `exsyst_worker::shared`, never holding a cookie or a proof; [`SharedServer::with_log`] sends them elsewhere.
//! A daemon that installed no logger writes them to its standard error, the profile's output path.

// `unsafe` only in `sys`, the operating system layer.
#![deny(unsafe_code)]

mod address;
mod auth;
mod client;
#[cfg(feature = "tokio")]
mod client_async;
mod config;
mod cookie;
mod daemon;
mod error;
mod listener;
mod local;
mod peer;
pub mod protocol;
mod server;
mod session;
mod start;
mod stop;
mod sys;
mod throttle;
mod wire;

pub use client::{DEFAULT_CONTROL_TIMEOUT, SharedWorker, StatusReply};
#[cfg(feature = "tokio")]
pub use client_async::AsyncSharedWorker;
pub use config::{ClientAuth, PanicPolicy, PeerUids, SharedServerConfig};
pub use cookie::AdminCookie;
pub use daemon::{SharedRegistryExt, StartReport, daemon_extensions, wait_until_listening};
pub use error::Error;
pub use local::is_local;
pub use peer::{ParsePeerError, Peer};
pub use server::{RunningServer, SharedServer, SharedWorkerImpl};
pub use start::{
    DEFAULT_START_TIMEOUT, DEFAULT_STOP_TIMEOUT, StopBy, connect_or_start,
    connect_or_start_timeout, runtime_dir, start, start_timeout, stop, stop_and_wait,
};
pub use stop::{StopHandle, stop_current};
