//! The seed's first example: a master and a raw dedicated worker that squares numbers.
//!
//! Run it with `cargo run --example squares`.

use exsyst_worker::{BoxError, RawWorker, Worker, WorkerChannel, WorkerFactory};

/// The seed's `MyWorkerImpl`, as a raw worker.
struct MyWorkerImpl;

impl Worker for MyWorkerImpl {
    const NAME: &'static str = "squares::MyWorkerImpl";
    type Args = ();

    fn new((): ()) -> Result<Self, BoxError> {
        Ok(MyWorkerImpl)
    }
}

impl RawWorker for MyWorkerImpl {
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
        // `None`: the master closed the channel (its handle went out of scope).
        while let Some(message) = channel.next_message::<i64>()? {
            channel.send_message(&format!("{message} squared is {}", message * message))?;
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    // In the worker process, this runs MyWorkerImpl and exits; in the master it returns.
    exsyst_worker::registry()
        .raw::<MyWorkerImpl>()
        .run_if_worker();

    let wf = WorkerFactory::new();
    let mut w = wf.create_worker::<MyWorkerImpl>()?;
    for i in 0..10 {
        w.send_message(&i)?;
        println!("{}", w.receive_message::<String>()?);
    }
    Ok(())
}
