//! Worker traits, the worker-side runtimes, and the event loop of `exsyst-worker`.
//!
//! A worker implementation is a type with a stable [`Worker::NAME`], built from serialized
//! constructor arguments, that implements one of the worker traits:
//! - [`RawWorker`] runs its own blocking loop over a [`WorkerChannel`] (the seed's
//!   `RawWorkerImplementationInterface`).
//! - [`EventedWorker`] reacts to events (connect, message, disconnect) on an [`EventLoop`],
//!   on which it can also put its own timers and sockets (the seed's
//!   `EventedWorkerImplementationInterface`); [`run_evented`] serves one over the master's
//!   channel.
//!
//! ```
//! use worker_core::{BoxError, RawWorker, Worker, WorkerChannel};
//!
//! struct Squarer;
//!
//! impl Worker for Squarer {
//!     const NAME: &'static str = "squarer";
//!     type Args = ();
//!     fn new((): ()) -> Result<Self, BoxError> {
//!         Ok(Squarer)
//!     }
//! }
//!
//! impl RawWorker for Squarer {
//!     fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
//!         // `None`: the master closed the channel (its handle went out of scope).
//!         while let Some(n) = channel.next_message::<i64>()? {
//!             channel.send_message(&format!("{n} squared is {}", n * n))?;
//!         }
//!         Ok(())
//!     }
//! }
//! ```
//!
//! Registering implementations and starting worker processes is `worker-bootstrap`'s job; this
//! crate is what runs inside the worker.
//!
//! Underneath the evented side: the [`Poller`], the one readiness layer (the event loop and
//! the pools wait on it), and the [`NbChannel`], the event loop's face of the one framed
//! connection ([`worker_channel::FramedConnection`]), which is itself the mio source of its
//! descriptors. A [`WorkerHost`] serves an [`EventedWorker`] over any number of connections,
//! hands control frames to a handler of the host's own, and can end one connection on purpose;
//! a shared host also keeps each connection's failures (garbage, a full queue) to itself.

mod deadline;
pub mod os;
mod raw;
mod status;
mod sys;
mod worker;

pub use deadline::{deadline_after, deadline_from, time_left};
/// The event library the evented side is built on, re-exported so that users name the same
/// version as this crate ([`mio::Interest`], [`mio::event::Source`], ...).
pub use mio;
pub use raw::{ChannelOutput, RawWorker, WorkerChannel, set_spin, take_stdio_channel};
pub use status::{Counter, Threshold, ThresholdError, WorkerStatus};
pub use worker::{BoxError, Worker, error_chain};

/// The `libc` that the `syscall!` macro names; not part of the public API.
#[doc(hidden)]
pub use libc as __libc;

// The evented side (event loop, non-blocking channel, EventedWorker and its runtime).
mod error;
mod event_loop;
mod evented;
mod nb_channel;
mod poller;

pub use error::{Error, catch_panic};
pub use event_loop::{EventLoop, LoopHandle, LoopPanicHandler, SourceId, TimerId};
pub use evented::{
    Connection, ConnectionId, Connections, ControlHandler, DataGuard, DisconnectHandler,
    EventedWorker, PanicHandler, WorkerHost, WorkerLoop, run_evented,
};
pub use nb_channel::{DEFAULT_STALL_TIMEOUT, NbChannel};
pub use poller::{Poller, PollerWaker, Readiness, WAKE_TOKEN};
/// The latency mode of every blocking receive and wait (from `worker-channel`).
#[doc(no_inline)]
pub use worker_channel::Spin;
