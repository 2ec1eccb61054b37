//! The seed's `MasterWithPool.php`: ten numbers through a pool of four squarers, each reply
//! printed with the worker that sent it.
//!
//! Run with `cargo run --example pool_squares`.

use exsyst_worker::{BoxError, RawWorker, Worker, WorkerChannel, WorkerFactory};

/// The seed's `MyWorkerImpl`.
struct Squarer;

impl Worker for Squarer {
    const NAME: &'static str = "squarer";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Squarer)
    }
}

impl RawWorker for Squarer {
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
        while let Some(n) = channel.next_message::<i64>()? {
            channel.send_message(&format!("{n} squared is {}", n * n))?;
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    // First thing in main: in a worker process this runs the implementation and exits.
    exsyst_worker::registry().raw::<Squarer>().run_if_worker();

    let factory = WorkerFactory::new();
    let mut pool = factory.create_worker_pool::<Squarer>(Some(4))?;
    let mut i = 0i64;
    let mut busy = 0;
    for worker in &mut pool {
        if i >= 10 {
            break;
        }
        worker.send_message(&i)?;
        busy += 1;
        i += 1;
    }
    while i < 10 {
        // The pool says which worker answered, so the next number goes to that one.
        let (w, reply) = pool.receive_message::<String>()?;
        println!("worker {w}: {reply}");
        pool.send_message(w, &i)?;
        i += 1;
    }
    while busy > 0 {
        let (w, reply) = pool.receive_message::<String>()?;
        println!("worker {w}: {reply}");
        busy -= 1;
    }
    Ok(())
}
