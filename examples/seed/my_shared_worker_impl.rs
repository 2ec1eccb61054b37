//! The seed's `MySharedWorkerImpl`, shared by the shared-worker examples (included with
//! `#[path]`; not an example of its own).

use exsyst_worker::{
    BoxError, Connection, EventedWorker, SharedWorkerImpl, Worker, WorkerLoop, worker::WorkerStatus,
};

/// The seed's `MySharedWorkerImpl`: it greets each client with its ordinal.
#[derive(Debug)]
pub struct MySharedWorkerImpl {
    i: u64,
}

impl Worker for MySharedWorkerImpl {
    const NAME: &'static str = "MySharedWorkerImpl";
    type Args = ();

    fn new((): ()) -> Result<Self, BoxError> {
        Ok(MySharedWorkerImpl { i: 0 })
    }
}

impl EventedWorker for MySharedWorkerImpl {
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

impl SharedWorkerImpl for MySharedWorkerImpl {
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
