//! The one long-lived thread that starts every worker process.
//!
//! Linux ties the parent-death signal to the *thread* that created the child: a worker started
//! from a short-lived thread (`spawn_blocking`, rayon, a request thread) would be killed when
//! that thread exits. Every spawn therefore runs on this thread, started on first use and never
//! ended, so a worker lives as long as its handle, whichever thread asked for it.

use std::{
    io,
    panic::AssertUnwindSafe,
    sync::{Mutex, mpsc},
};

use crate::sys::ForkLocal;

type Job = Box<dyn FnOnce() + Send>;

/// The spawner of this process: its sender. A forked child of the master has no spawner thread
/// (and maybe this lock held for good by a thread it did not inherit): it starts its own.
static SPAWNER: ForkLocal<Mutex<Option<mpsc::Sender<Job>>>> = ForkLocal::new(|| Mutex::new(None));

/// Runs `job` on the spawner thread and returns its result.
pub(crate) fn run<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    let mut job: Option<Job> = Some(Box::new(move || {
        let _ = tx.send(job());
    }));
    // A spawner whose thread is gone (it cannot end, but be safe) is replaced once.
    for _ in 0..2 {
        let sender = sender()?;
        match sender.send(job.take().expect("job not sent yet")) {
            Ok(()) => break,
            Err(mpsc::SendError(returned)) => {
                job = Some(returned);
                *SPAWNER.get().lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
    }
    if job.is_some() {
        return Err(io::Error::other("the spawner thread cannot be started"));
    }
    rx.recv()
        .map_err(|_| io::Error::other("the spawner thread panicked while starting a worker"))
}

fn sender() -> io::Result<mpsc::Sender<Job>> {
    let mut spawner = SPAWNER.get().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(sender) = &*spawner {
        return Ok(sender.clone());
    }
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("exsyst-worker-spawner".into())
        .spawn(move || {
            for job in rx {
                // A panicking job only loses its own reply; the thread, whose life the workers'
                // parent-death signal follows, goes on.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
            }
        })?;
    *spawner = Some(tx.clone());
    Ok(tx)
}
