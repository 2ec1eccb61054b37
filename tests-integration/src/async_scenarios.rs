//! Async master scenarios that need a process of their own: counting its threads with no other
//! test running beside it.

use exsyst_worker::{AsyncDedicatedWorker, StderrMode, WorkerFactory};

use crate::workers::dedicated::Squarer;

/// Round trips per worker in [`many`].
const ROUND_TRIPS: i64 = 50;

/// Threads of this process.
pub fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Starts `n` workers, then drives them all at once from one current-thread runtime, counting
/// this process's threads after every receive; prints the count before the runtime started
/// (`threads_before`), the most seen while driving (`threads_max`), and the round trips done.
pub fn many(n: usize) -> anyhow::Result<()> {
    // No standard error threads: every thread left is the process's own, or the library's.
    let factory = WorkerFactory::with_profile(
        exsyst_worker::BootstrapProfile::new().with_stderr(StderrMode::Null),
    );
    let workers = (0..n)
        .map(|_| factory.create_worker::<Squarer>())
        .collect::<Result<Vec<_>, _>>()?;
    let before = threads();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (max, done) = runtime.block_on(async move {
        let mut tasks = Vec::new();
        for worker in workers {
            let mut worker: AsyncDedicatedWorker = worker.into_async()?;
            tasks.push(tokio::spawn(async move {
                let mut max = 0;
                for i in 0..ROUND_TRIPS {
                    worker.send_message(&i).await?;
                    let reply: String = worker.receive_message().await?;
                    anyhow::ensure!(reply == format!("{i} squared is {}", i * i), "{reply}");
                    max = max.max(threads());
                    // Hand the thread to the other workers' tasks between round trips.
                    tokio::task::yield_now().await;
                }
                anyhow::ensure!(worker.close().await?.success());
                Ok(max)
            }));
        }
        let (mut max, mut done) = (0, 0);
        for task in tasks {
            max = max.max(task.await??);
            done += ROUND_TRIPS;
        }
        anyhow::Ok((max, done))
    })?;
    println!("threads_before={before}");
    println!("threads_max={max}");
    println!("round_trips={done}");
    Ok(())
}
