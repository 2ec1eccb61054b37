//! Shared workers for the shared-worker scenarios and benchmarks.

use std::io::Write;

use exsyst_worker::{
    BoxError, Registry, SharedRegistryExt, SharedWorkerImpl, Worker,
    channel::serde_bytes::ByteBuf,
    worker::{Connection, EventedWorker, WorkerLoop, WorkerStatus},
};

/// Registers this module's implementations.
pub fn register(registry: Registry) -> Registry {
    registry
        .shared::<SharedCounter>()
        .shared::<SharedEcho>()
        .shared::<SharedFailer>()
}

/// The admin cookie of the shared workers the tests start.
pub const SHARED_COOKIE: &str = "the shared tests' admin cookie, 5f0c1e9a";

/// The seed's `MySharedWorkerImpl`: greets each client with its ordinal.
///
/// Its constructor appends its pid, one line, to the file it is given (if any), so a test can
/// count how many times it ran.
#[derive(Debug)]
pub struct SharedCounter {
    i: u64,
}

impl Worker for SharedCounter {
    const NAME: &'static str = "shared-counter";
    type Args = Option<String>;
    fn new(log: Option<String>) -> Result<Self, BoxError> {
        if let Some(log) = log {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(log)?;
            // One write, so lines of concurrent constructors cannot interleave.
            file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
        }
        Ok(SharedCounter { i: 0 })
    }
}

impl EventedWorker for SharedCounter {
    type Message = String;
    type Reply = String;

    fn on_message(
        &mut self,
        message: String,
        connection: &mut Connection<String>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        self.i += 1;
        connection.send(&format!(
            "Hello {message} ! You're my {} client.",
            ordinal(self.i)
        ))?;
        Ok(())
    }
}

impl SharedWorkerImpl for SharedCounter {
    fn on_query(&mut self, _privileged: bool) -> Option<WorkerStatus> {
        Some(format!("Current counter value : {}", self.i).into())
    }
}

/// `1st`, `2nd`, `3rd`, `4th`, ..., `11th`, ..., `21st`, as the seed writes them.
pub fn ordinal(n: u64) -> String {
    let suffix = match (n % 10, n % 100 / 10) {
        (_, 1) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
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
