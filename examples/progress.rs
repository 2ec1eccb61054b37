//! Long work with a sign of life: 200,000 tiny tasks through a task pool, an `indicatif`
//! progress bar driven by the results as they arrive.
//!
//! Run with `cargo run --example progress`.

use exsyst_worker::{
    BoxError, Worker, WorkerFactory,
    pool::{RegistryExt, TaskWorker},
};
use indicatif::ProgressBar;

/// Squares a number.
struct Squarer;

impl Worker for Squarer {
    const NAME: &'static str = "progress-squarer";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Squarer)
    }
}

impl TaskWorker for Squarer {
    type Item = u64;
    type Output = u64;
    fn handle(&mut self, n: u64) -> Result<u64, String> {
        Ok(n * n)
    }
}

fn main() -> anyhow::Result<()> {
    // First thing in main: in a worker process this runs the implementation and exits.
    exsyst_worker::registry().task::<Squarer>().run_if_worker();

    let pool = WorkerFactory::new().create_task_pool::<Squarer>(None)?;

    // `map_unordered` yields each result as it arrives and knows how many remain.
    let results = pool.map_unordered(0..200_000u64);
    let bar = ProgressBar::new(results.len() as u64);
    let mut sum = 0u64;
    for (_, square) in results {
        sum = sum.wrapping_add(square?);
        bar.inc(1);
    }
    bar.finish();

    // `map_with_progress` keeps the input order and reports (completed, total).
    let bar = ProgressBar::new(0);
    let squares = pool.map_with_progress(0..1_000u64, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish();
    println!(
        "sum of squares below 200,000: {sum}; 999 squared is {}",
        squares[999]
    );
    Ok(())
}
