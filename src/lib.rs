//! Worker subprocess management: dedicated workers, pools of them, and shared workers.
//!
//! `exsyst-worker` runs work in other processes and talks to them with typed messages.
//! This crate is a facade: it re-exports the crates that do the work, and composes them in
//! [`WorkerFactory`], the seed's entry point.
//!
//! ```rust,standalone_crate
//! use exsyst_worker::{BoxError, RawWorker, Worker, WorkerChannel, WorkerFactory};
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
//!         // `None`: the master dropped its handle.
//!         while let Some(n) = channel.next_message::<i64>()? {
//!             channel.send_message(&format!("{n} squared is {}", n * n))?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // First thing in main: in a worker process this runs the implementation and exits.
//!     exsyst_worker::registry().raw::<Squarer>().run_if_worker();
//!
//!     let factory = WorkerFactory::new();
//!     let mut worker = factory.create_worker::<Squarer>()?;
//!     for i in 0..3 {
//!         worker.send_message(&i)?;
//!         println!("{}", worker.receive_message::<String>()?);
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # Workers in your own tests
//!
//! A test binary's `main` is libtest's, so `run_if_worker` has no `main` to go first in.
//! One line at the root of the test crate does its job instead, and `#[test]` functions can
//! start raw, evented and task workers, under `cargo test` and `cargo nextest` alike:
//!
//! ```text
//! #[cfg(test)]
//! exsyst_worker::enable_test_support!(registry().raw::<Squarer>().task::<Doubler>());
//! ```
//!
//! See [`enable_test_support!`].
//!
//! # The crates
//!
//! | module | crate | what it holds |
//! |---|---|---|
//! | [`channel`] | `worker-channel` | frames, codecs, the blocking channel |
//! | [`worker`] | `worker-core` | worker traits and worker-side runtimes |
//! | [`bootstrap`] | `worker-bootstrap` | profiles, the registry, the spawn path, [`DedicatedWorker`] |
//! | [`pool`] | `worker-pool` | [`WorkerPool`], task pools, crash recovery |
//! | [`killswitch`] | `worker-killswitch` | the JSON kill switch |
//! | [`shared`] | `worker-shared` | shared workers: the [`SharedWorker`] client, the [`SharedServer`] (embedded or a daemon), the race-free start on demand, the admin plane |
//!
//! A program that needs only part of this can depend on those crates alone.
//!
//! With the `tokio` feature, `AsyncDedicatedWorker` and `AsyncSharedWorker` drive dedicated
//! workers and shared-worker clients from async code, on tokio's reactor, with no thread per
//! worker (`DedicatedWorker::into_async`, `AsyncSharedWorker::connect`).
//! Task pools serve async code too ([`pool::TaskPool::submit_async`], and a
//! [`pool::TaskHandle`] is a future), under any executor; the `stream` feature adds
//! `TaskPool::map_unordered_stream`, a `futures_core::Stream` of results.
//!
//! With the `cli` feature the package also builds the operators' programs:
//! `check_shared_worker`, a Monitoring Plugins (Nagios) check, and `worker-ctl`, which queries,
//! stops, disables and lists shared workers (`cargo install exsyst-worker --features cli`).
//!
//! Diagnostics go through the [`log`](https://docs.rs/log) facade, under targets starting with
//! `exsyst_worker::` (`bootstrap`, `pool`, `killswitch`, `shared`, and `worker::<implementation>`
//! for the standard error of workers started with [`StderrMode::Log`]); per-worker events are at
//! `debug`, so an `info` filter shows only failures and the shared workers' starts and stops.

#![forbid(unsafe_code)]

mod factory;
mod test_support;

pub use factory::{Addresses, Error, WorkerFactory};

#[doc(inline)]
pub use worker_bootstrap as bootstrap;
#[doc(inline)]
pub use worker_channel as channel;
#[doc(inline)]
pub use worker_core as worker;
#[doc(inline)]
pub use worker_killswitch as killswitch;
#[doc(inline)]
pub use worker_pool as pool;
#[doc(inline)]
pub use worker_shared as shared;

#[cfg(feature = "tokio")]
pub use worker_bootstrap::AsyncDedicatedWorker;
pub use worker_bootstrap::{
    BootstrapProfile, DedicatedWorker, Registry, SpawnMode, StderrMode, registry,
};
pub use worker_channel::{Codec, Spin};
pub use worker_core::{
    BoxError, Connection, EventedWorker, RawWorker, Worker, WorkerChannel, WorkerLoop,
};
pub use worker_killswitch::KillSwitch;
pub use worker_pool::WorkerPool;
#[cfg(feature = "tokio")]
pub use worker_shared::AsyncSharedWorker;
pub use worker_shared::{
    AdminCookie, SharedRegistryExt, SharedServer, SharedServerConfig, SharedWorker,
    SharedWorkerImpl, StatusReply,
};
