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
//! - [`DedicatedWorker`]: a worker with one master.
//!
//! # How a worker process starts
//!
//! By default the master re-executes its own binary ([`std::env::current_exe`]); a profile can
//! name another executable, for all implementations or per implementation. The child learns
//! which implementation to run from its environment, and everything else (codec, constructor
//! arguments, hooks, secrets) from a first control frame on its standard input, never from its
//! command line. It starts in a process group of its own, through `posix_spawn` (never `fork`,
//! whose cost grows with the master's memory), and asks the kernel to kill it if its master dies.
//!
//! The bytes on the wire are described in [`protocol`], for programs in other languages.
//!
//! Note on threads: Linux delivers the parent-death signal when the *thread* that started the
//! worker exits, so start workers from a thread that lives as long as they should.

mod dedicated;
mod error;
mod init;
mod profile;
pub mod protocol;
mod registry;
mod spawn;
mod stderr;
mod sys;

pub use dedicated::DedicatedWorker;
pub use error::{Error, describe_exit};
pub use profile::{BootstrapProfile, StderrMode};
pub use registry::{EXIT_FAILURE, Registry, WorkerContext, registry};
