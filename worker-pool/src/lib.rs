//! Pools of dedicated workers: first-ready receive, a task API, and crash recovery.
//!
//! ```rust,standalone_crate
//! use worker_bootstrap::{BootstrapProfile, registry};
//! use worker_core::{BoxError, Worker};
//! use worker_pool::{RegistryExt, TaskWorker, WorkerPoolBuilder};
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
//! impl TaskWorker for Squarer {
//!     type Item = i64;
//!     type Output = i64;
//!     fn handle(&mut self, n: i64) -> Result<i64, String> {
//!         n.checked_mul(n).ok_or_else(|| format!("{n} squared overflows"))
//!     }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // First thing in main: in a worker process this runs the implementation and exits.
//!     registry().task::<Squarer>().run_if_worker();
//!
//!     let pool = WorkerPoolBuilder::new()
//!         .profile(BootstrapProfile::new())
//!         .size(2)
//!         .in_flight_per_worker(4)
//!         .build_tasks::<Squarer>()?;
//!     let task = pool.submit(12)?;
//!     assert_eq!(task.wait()?, 144);
//!     assert_eq!(pool.map(1..=5)?, [1, 4, 9, 16, 25]);
//!     assert!(matches!(pool.submit(i64::MAX)?.wait(), Err(worker_pool::Error::Task { .. })));
//!     pool.close()?;
//!     Ok(())
//! }
//! ```
//!
//! The core types:
//! - [`WorkerPool`]: the seed's pool, for raw workers: send to the worker you choose, and
//!   receive the first message from any of them with the index of the worker that sent it;
//! - [`TaskPool`], with [`TaskWorker`] on the worker side: [`TaskPool::submit`] returns a
//!   [`TaskHandle`]; [`TaskPool::map`] sends items in chunks; a bounded queue holds fast
//!   producers back; workers that die or overrun the task timeout are replaced within a
//!   restart limit;
//! - [`WorkerPoolBuilder`], which builds both and refuses impossible settings with
//!   [`Error::Config`].
//!
//! Async callers, under any executor: a [`TaskHandle`] is a [`Future`] of
//! its result, woken by the dispatcher thread, and [`TaskPool::submit_async`] waits for room in
//! the queue as a future, so `pool.submit_async(item).await?.await?` never blocks an
//! executor's thread. With the feature `stream`, `TaskPool::map_unordered_stream` gives the
//! results of a map as a `futures_core::Stream`. No feature is on by default.
//!
//! Neither pool hangs when a worker dies (its death is seen through its pidfd, even while a
//! grandchild it forked holds its channel): the task it ran, or the messages it held, fail with
//! [`Error::Worker`], which carries the worker's exit status and the tail of its standard error
//! (the tasks it had not started go to another worker).
//! Nor when a worker misbehaves: a frame header the channel cannot accept breaks only that
//! worker's channel and the worker is replaced; a task reply with the wrong id is
//! [`Error::Protocol`] and the worker is replaced; an item or result too large for a frame fails
//! alone with [`Error::Encode`]. Timeouts saturate ([`Duration::MAX`](std::time::Duration::MAX)
//! is no timeout), and dropping a task pool returns within half a second whatever its workers
//! do.
//!
//! A worker replaced after it failed is a `log` record at `warn`, and the restart limit
//! reached one at `error`, both with the target `exsyst_worker::pool`.

#![forbid(unsafe_code)]

mod builder;
mod counters;
mod dispatcher;
mod error;
mod inbox;
mod job;
mod pool;
pub mod protocol;
mod readiness;
mod room;
mod supervisor;
mod task_worker;
mod tasks;
mod wire;

pub use builder::WorkerPoolBuilder;
pub use error::{Error, TrySubmitError};
pub use pool::WorkerPool;
pub use task_worker::{RegistryExt, TaskWorker, run_task_worker};
#[cfg(feature = "stream")]
pub use tasks::MapUnorderedStream;
pub use tasks::{MapUnordered, PoolStats, Submit, TaskHandle, TaskPool};
