//! Helpers shared by the test modules.

use std::{fs::File, os::fd::OwnedFd, thread, time::Duration};

use crossbeam_channel::{Sender, bounded};
use worker_channel::{Channel, Codec};
use worker_core::WorkerChannel;

/// `secs` seconds, times `EXSYST_TEST_TIMEOUT_SCALE` (default 1) for slow machines.
pub(crate) fn timeout(secs: f64) -> Duration {
    let scale = std::env::var("EXSYST_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(1.0);
    Duration::from_secs_f64(secs * scale)
}

/// Aborts the test binary if it is still alive after the timeout, so a hang is a failure
/// instead of a stuck CI job; disarmed on drop.
pub(crate) struct Watchdog(#[allow(dead_code)] Sender<()>);

pub(crate) fn watchdog(what: &'static str, secs: f64) -> Watchdog {
    let (tx, rx) = bounded::<()>(0);
    let limit = timeout(secs);
    thread::spawn(move || {
        if let Err(crossbeam_channel::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("test `{what}` still running after {limit:?}: aborting");
            std::process::abort();
        }
    });
    Watchdog(tx)
}

/// A blocking pipe: (reading end, writing end).
pub(crate) fn pipe() -> (File, File) {
    let (tx, rx) = mio::unix::pipe::new().expect("pipe");
    tx.set_nonblocking(false).expect("blocking");
    rx.set_nonblocking(false).expect("blocking");
    (File::from(OwnedFd::from(rx)), File::from(OwnedFd::from(tx)))
}

/// The two ends of a dedicated worker's stdio channel: the worker's (as `take_stdio_channel`
/// would give it) and the master's.
pub(crate) fn stdio_pair(codec: Codec) -> (WorkerChannel, Channel<File, File>) {
    let (worker_in, master_out) = pipe();
    let (master_in, worker_out) = pipe();
    (
        Channel::new(worker_in, worker_out.into(), codec),
        Channel::new(master_in, master_out, codec),
    )
}
