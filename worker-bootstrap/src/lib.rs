//! Bootstrap profiles, the implementation registry, the one spawn path, and dedicated workers.
//!
//! ```rust,standalone_crate,no_run
//! use worker_bootstrap::{BootstrapProfile, DedicatedWorker, registry};
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
//!         while let Some(n) = channel.next_message::<i64>()? {
//!             channel.send_message(&format!("{n} squared is {}", n * n))?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // First thing in main: in the worker process, this runs Squarer and exits.
//!     registry().raw::<Squarer>().run_if_worker();
//!
//!     let mut worker = DedicatedWorker::spawn::<Squarer>(&BootstrapProfile::default())?;
//!     worker.send_message(&12)?;
//!     assert_eq!(worker.receive_message::<String>()?, "12 squared is 144");
//!     Ok(())
//! }
//! ```
//!
//! The core types:
//! - [`BootstrapProfile`]: everything needed to start a worker (the seed's profile);
//! - [`Registry`], from [`registry()`]: the implementations an executable runs, and
//!   [`Registry::run_if_worker`], which must be the first thing in `main`;
//! - [`DedicatedWorker`]: a worker with one master; with the `tokio` feature,
//!   `AsyncDedicatedWorker` (`DedicatedWorker::into_async`) drives it from async code, on
//!   tokio's reactor, with no thread per worker;
//! - [`enable_test_support!`]: the same registry for a binary whose `main` is not yours (a test
//!   binary's is libtest's), so that `#[test]` functions can start workers;
//! - [`spawn_detached`] and [`start_detached`]: a daemon that outlives its starter (what shared
//!   workers start), the latter waiting for its report that it is ready.
//!
//! # How a worker process starts
//!
//! By default the master re-executes its own running image (`/proc/self/exe`, which still works
//! after the file on disk was deleted or replaced by a deploy, and is the one guaranteed to
//! speak the same protocol); a profile can name another executable, for all implementations or
//! per implementation. The child learns which implementation to run from its environment, and
//! everything else (codec, constructor arguments, hooks, secrets) from a first control frame on
//! its channel, never from its command line. Its channel is two pipes, its standard input and
//! output. It starts in a process group of its own, through `posix_spawn` (never
//! `fork`, whose cost grows with the master's memory), and asks the kernel to kill it if its
//! master dies.
//!
//! With [`SpawnMode::Zygote`] ([`BootstrapProfile::with_spawn_mode`]), dedicated workers are
//! forked instead from a *zygote*, a single-threaded copy of the worker executable started once
//! and waiting past `run_if_worker`: they skip `exec`, dynamic loading and the program's start-up,
//! and keep every guarantee above (the master's child, its own process group, death with its
//! master, typed exit errors, nothing of the master's threads, locks or descriptors). Linux with
//! glibc only; elsewhere workers are executed. Its documentation says when not to use it.
//!
//! Every spawn runs on one long-lived thread of the process: Linux delivers the parent-death
//! signal when the *thread* that started a worker exits, so a worker started from a short-lived
//! thread would otherwise die with it. Workers live as long as their handles, whichever thread
//! created them.
//!
//! One more thread, the I/O thread, serves every worker with one readiness loop: it reads their
//! standard error (forwarded, logged, its tail kept for errors), watches their exits, and ends
//! the workers closed in the background. The library's threads are these two, however many
//! workers there are; a worker's standard error is closed once it is reaped, whatever its
//! descendants still hold.
//!
//! The master tracks each worker through a pidfd taken at spawn: it sees the worker's death even
//! while a grandchild still holds the channel, and never signals another process that reused
//! its pid. On kernels before 5.3 (no pidfd) death is polled for, and signals go by pid, only
//! while the worker is known unreaped.
//!
//! The bytes on the wire are described in [`protocol`], for programs in other languages.
//!
//! # Logging
//!
//! Diagnostics go through the [`log`] facade, with the target `exsyst_worker::bootstrap`: a
//! worker spawned or exited at `debug`, a worker that died on its own at `warn`. With
//! [`StderrMode::Log`], each line a worker writes to its standard error is a record of its own,
//! with the target `exsyst_worker::worker::<implementation>`.

mod dedicated;
#[cfg(feature = "tokio")]
mod dedicated_async;
mod detached;
mod error;
mod init;
mod process;
mod profile;
pub mod protocol;
mod reaper;
mod registry;
mod spawn;
mod spawner;
mod stderr;
mod sys;
mod test_support;
mod watch;
mod zygote;

/// The `log` target of this crate's diagnostics.
const LOG_TARGET: &str = "exsyst_worker::bootstrap";

pub use dedicated::DedicatedWorker;
#[cfg(feature = "tokio")]
pub use dedicated_async::AsyncDedicatedWorker;
pub use detached::{DetachedStart, spawn_detached, start_detached};
pub use error::{Error, describe_exit};
pub use profile::{
    BootstrapProfile, DEFAULT_ZYGOTE_IDLE_TIMEOUT, DEFAULT_ZYGOTE_TIMEOUT, SpawnMode, StderrMode,
};
pub use registry::{EXIT_FAILURE, Registry, WorkerContext, registry};
pub use watch::{ProcessWatch, SIGNAL_NAMES, signal_number};
pub use zygote::MAX_ZYGOTES;

/// What [`enable_test_support!`] expands to refers to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::test_support::{add_test_registry, run_test_worker};
}
