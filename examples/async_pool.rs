//! A task pool driven from async code: a thousand concurrent "requests" on a tokio runtime,
//! each offloading its CPU-heavy work (the longest Collatz sequence in a block of numbers) to
//! a pool of four workers, while a timer on the same runtime keeps ticking: nothing blocks the
//! runtime's threads.
//!
//! Run with `cargo run --example async_pool`.

use std::{sync::Arc, time::Duration};

use exsyst_worker::{
    BoxError, Worker, WorkerFactory,
    pool::{RegistryExt, TaskWorker},
};

/// Numbers per request.
const BLOCK: u64 = 1_000;

/// Finds the number with the longest Collatz sequence in a block of [`BLOCK`] numbers: work
/// for another process.
struct Collatz;

impl Worker for Collatz {
    const NAME: &'static str = "async-collatz";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Collatz)
    }
}

impl TaskWorker for Collatz {
    /// The block's index.
    type Item = u64;
    /// The number, and its steps down to 1.
    type Output = (u64, u32);
    fn handle(&mut self, block: u64) -> Result<(u64, u32), String> {
        let first = block.checked_mul(BLOCK).ok_or("no such block")?.max(1);
        let longest = (first..first + BLOCK)
            .map(|start| {
                let (mut n, mut steps) = (start, 0);
                while n != 1 {
                    n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
                    steps += 1;
                }
                (start, steps)
            })
            .max_by_key(|(_, steps)| *steps);
        longest.ok_or_else(|| "an empty block".into())
    }
}

fn main() -> anyhow::Result<()> {
    // First thing in main, before any runtime starts: in a worker process this runs the
    // implementation and exits.
    exsyst_worker::registry().task::<Collatz>().run_if_worker();

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    // Starting the pool waits for its workers: do it before serving (or in `spawn_blocking`).
    let pool = Arc::new(WorkerFactory::new().create_task_pool::<Collatz>(Some(4))?);

    // A timer on the same runtime: it keeps ticking while the requests wait for the pool.
    let ticker = tokio::spawn(async {
        let mut interval = tokio::time::interval(Duration::from_millis(10));
        let mut ticks = 0u32;
        loop {
            interval.tick().await;
            ticks += 1;
            if ticks.is_multiple_of(25) {
                println!("tick {ticks}: the runtime is responsive");
            }
        }
    });

    let mut requests = tokio::task::JoinSet::new();
    for block in 0..1_000u64 {
        let pool = pool.clone();
        requests.spawn(async move {
            // `submit_async` waits for room in the pool's queue, and the handle for the
            // result, both as futures: a handler awaits them like any other I/O.
            let longest = pool.submit_async(block).await?.await;
            Ok::<_, exsyst_worker::pool::Error>((block, longest))
        });
    }
    let mut longest = (0, 0);
    while let Some(answer) = requests.join_next().await {
        let (block, found) = answer??;
        match found {
            Ok(found) if found.1 > longest.1 => longest = found,
            Ok(_) => {}
            // A handler's error, or a worker's crash, fails that request alone.
            Err(e) => println!("block {block} failed: {e}"),
        }
    }
    ticker.abort();
    println!(
        "below {}, {} takes the most steps: {}; the pool answered {} tasks",
        1_000 * BLOCK,
        longest.0,
        longest.1,
        pool.stats().completed
    );
    Ok(())
}
