//! Shared workers for the shared-worker scenarios and benchmarks.

use std::io::Write;

use exsyst_worker::{
    BoxError, Registry, SharedRegistryExt, SharedWorkerImpl, Worker,
    channel::serde_bytes::ByteBuf,
    worker::{Connection, EventedWorker, WorkerLoop},
};

/// Registers this module's implementations.
pub fn register(registry: Registry) -> Registry {
    registry
        .shared::<MySharedWorkerImpl>()
        .shared::<SharedEcho>()
        .shared::<SharedFailer>()
        .after_hook(COUNT_CONSTRUCTIONS, |_| count_construction())
}

/// The admin cookie of the shared workers the tests start.
pub const SHARED_COOKIE: &str = "the shared tests' admin cookie, 5f0c1e9a";

/// The seed's `MySharedWorkerImpl`, the very one of the facade's shared-worker examples: it
/// greets each client with its ordinal.
#[path = "../../../examples/seed/my_shared_worker_impl.rs"]
mod seed;

pub use seed::{MySharedWorkerImpl, ordinal};

/// The after-construction hook that appends the daemon's pid, one line, to the file named by
/// [`CONSTRUCTION_LOG_VAR`], so a test can count how many times a constructor ran (the hook
/// runs right after each construction).
pub const COUNT_CONSTRUCTIONS: &str = "count-constructions";
/// The file [`COUNT_CONSTRUCTIONS`] appends to.
pub const CONSTRUCTION_LOG_VAR: &str = "EXSYST_TEST_CONSTRUCTION_LOG";

fn count_construction() -> Result<(), BoxError> {
    let log = std::env::var(CONSTRUCTION_LOG_VAR)?;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)?;
    // One write, so lines of concurrent daemons cannot interleave.
    file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
    Ok(())
}

/// Echoes byte strings: the benchmarks' shared worker.
#[derive(Debug)]
pub struct SharedEcho;

impl Worker for SharedEcho {
    const NAME: &'static str = "shared-echo";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(SharedEcho)
    }
}

impl EventedWorker for SharedEcho {
    type Message = ByteBuf;
    type Reply = ByteBuf;

    fn on_message(
        &mut self,
        message: ByteBuf,
        connection: &mut Connection<ByteBuf>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        connection.send(&message)?;
        Ok(())
    }
}

impl SharedWorkerImpl for SharedEcho {}

/// A shared worker whose constructor always fails, saying so.
#[derive(Debug)]
pub struct SharedFailer;

impl Worker for SharedFailer {
    const NAME: &'static str = "shared-failer";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Err("the database is on fire".into())
    }
}

impl EventedWorker for SharedFailer {
    type Message = String;
    type Reply = String;

    fn on_message(
        &mut self,
        _: String,
        _: &mut Connection<String>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        unreachable!("never built")
    }
}

impl SharedWorkerImpl for SharedFailer {}
