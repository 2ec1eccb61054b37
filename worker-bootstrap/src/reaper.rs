//! The process-wide reaper thread: ends the workers handed to it (grace period, kill, reap)
//! without making anyone wait, however many there are.

use std::{
    io,
    os::fd::AsRawFd,
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

use worker_core::{
    Poller, PollerWaker,
    mio::{Interest, Token, unix::SourceFd},
};

use crate::{
    process::{Fate, Process},
    sys::Pipes,
};

/// How often the reaper checks workers it cannot watch through a pidfd (old kernels).
const EXIT_POLL_TICK: Duration = Duration::from_millis(20);

/// A worker on its way out.
struct Dying {
    process: Process,
    pipes: Pipes,
    /// When it is killed if it has not exited.
    deadline: Option<Instant>,
    killed: bool,
}

type Handle = (u32, mpsc::Sender<Dying>, PollerWaker);

/// The reaper of this process: its queue, its waker, and the process id it was started in (a
/// forked child has no reaper thread, and starts its own).
static REAPER: Mutex<Option<Handle>> = Mutex::new(None);

/// Hands a worker to the reaper thread: its channel is closed now; it gets until `deadline` to
/// exit, then its process group is killed; it is reaped in any case.
pub(crate) fn hand_over(process: Process, mut pipes: Pipes, deadline: Option<Instant>) {
    pipes.close_input();
    let mut dying = Dying {
        process,
        pipes,
        deadline,
        killed: false,
    };
    if let Ok((tx, waker)) = reaper() {
        match tx.send(dying) {
            Ok(()) => {
                let _ = waker.wake();
                return;
            }
            Err(mpsc::SendError(returned)) => dying = returned,
        }
    }
    // No reaper thread can be started: end the worker here, at once.
    let _ = dying.process.kill_and_reap();
}

fn reaper() -> io::Result<(mpsc::Sender<Dying>, PollerWaker)> {
    let mut reaper = REAPER.lock().unwrap_or_else(|e| e.into_inner());
    let me = std::process::id();
    if let Some((pid, tx, waker)) = &*reaper
        && *pid == me
    {
        return Ok((tx.clone(), waker.clone()));
    }
    let poller = Poller::new().map_err(io::Error::other)?;
    let waker = poller.waker();
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("exsyst-worker-reaper".into())
        .spawn(move || run(poller, rx))?;
    *reaper = Some((me, tx.clone(), waker.clone()));
    Ok((tx, waker))
}

fn run(mut poller: Poller, rx: mpsc::Receiver<Dying>) {
    let mut dying: Vec<Option<Dying>> = Vec::new();
    loop {
        while let Ok(d) = rx.try_recv() {
            let slot = dying.iter().position(Option::is_none).unwrap_or_else(|| {
                dying.push(None);
                dying.len() - 1
            });
            let token = Token(slot);
            let registry = poller.registry();
            let _ = registry.register(
                &mut SourceFd(&d.pipes.output().as_raw_fd()),
                token,
                Interest::READABLE,
            );
            if let Some(pidfd) = d.process.pidfd() {
                let _ =
                    registry.register(&mut SourceFd(&pidfd.as_raw_fd()), token, Interest::READABLE);
            }
            dying[slot] = Some(d);
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for slot in dying.iter_mut() {
            let Some(d) = slot else { continue };
            if !service(d, now) {
                continue;
            }
            let registry = poller.registry();
            let _ = registry.deregister(&mut SourceFd(&d.pipes.output().as_raw_fd()));
            if let Some(pidfd) = d.process.pidfd() {
                let _ = registry.deregister(&mut SourceFd(&pidfd.as_raw_fd()));
            }
            *slot = None;
        }
        for d in dying.iter().flatten() {
            let wake = if d.process.needs_polling() {
                worker_core::deadline_after(EXIT_POLL_TICK)
            } else if d.killed {
                None
            } else {
                d.deadline
            };
            next = match (next, wake) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        // Which source woke it does not matter: every dying worker is looked at again.
        let _ = poller.wait(next, |_, _| {});
    }
}

/// Drains the worker's output, kills it past its deadline, reaps it once it exited; returns
/// whether it is done with.
fn service(d: &mut Dying, now: Instant) -> bool {
    let _ = d.pipes.discard_output();
    if !d.killed && d.deadline.is_some_and(|deadline| now >= deadline) {
        d.killed = true;
        let _ = d.process.kill();
    }
    match d.process.try_reap() {
        Ok(Some(fate)) => {
            let pid = d.process.pid();
            match fate {
                Fate::Reaped(status) => log::debug!(
                    target: crate::LOG_TARGET,
                    "worker {pid} closed in the background, exited: {status}"
                ),
                _ => log::debug!(
                    target: crate::LOG_TARGET,
                    "worker {pid} closed in the background, reaped elsewhere"
                ),
            }
            true
        }
        Ok(None) => false,
        // Nothing more can be learnt about it.
        Err(_) => true,
    }
}
