//! The seed's first example with its evented `MyWorkerImpl`: the master does not change.
//!
//! Run it with `cargo run --example squares_evented`.

use exsyst_worker::{BoxError, Connection, EventedWorker, Worker, WorkerFactory, WorkerLoop};

/// The seed's evented `MyWorkerImpl`.
struct MyWorkerImpl;

impl Worker for MyWorkerImpl {
    const NAME: &'static str = "squares_evented::MyWorkerImpl";
    type Args = ();

    fn new((): ()) -> Result<Self, BoxError> {
        Ok(MyWorkerImpl)
    }
}

impl EventedWorker for MyWorkerImpl {
    type Message = i64;
    type Reply = String;

    // set_loop, initialize, on_connect, on_disconnect and terminate keep their empty defaults.

    fn on_message(
        &mut self,
        message: i64,
        channel: &mut Connection<String>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        channel.send(&format!("{message} squared is {}", message * message))?;
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    exsyst_worker::registry()
        .evented::<MyWorkerImpl>()
        .run_if_worker();

    let wf = WorkerFactory::new();
    let mut w = wf.create_worker::<MyWorkerImpl>()?;
    for i in 0..10 {
        w.send_message(&i)?;
        println!("{}", w.receive_message::<String>()?);
    }
    Ok(())
}
