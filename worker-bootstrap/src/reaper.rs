//! The process-wide reaper thread: ends the workers handed to it (grace period, kill, reap)
//! without making anyone wait, however many there are.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

use worker_core::{
    Poller, PollerWaker,
    mio::{Interest, Token, unix::SourceFd},
};

use crate::{
    process::{Fate, Process},
    sys::{ForkLocal, Pipes},
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

/// Something else the reaper thread looks after (a zygote, see `zygote.rs`): a descriptor whose
/// readiness wakes the thread, and a service it calls on every wake-up.
pub(crate) trait Watch: Send {
    /// The descriptor to watch (a pidfd), open until [`service`](Self::service) says done;
    /// `None` to be woken by the deadline only.
    fn fd(&self) -> Option<BorrowedFd<'_>>;

    /// Looks again: `None` when done with, else when to look at the latest (`Some(None)`: on
    /// an event only).
    fn service(&mut self, now: Instant) -> Option<Option<Instant>>;
}

/// The token of every watch's descriptor: which one woke the thread does not matter (every
/// watch is serviced on each wake-up), but it is not the waker's.
const WATCH_TOKEN: Token = Token(usize::MAX - 1);

/// What the reaper thread is handed.
enum Job {
    Dying(Dying),
    Watch(Box<dyn Watch>),
}

type Handle = (mpsc::Sender<Job>, PollerWaker);

/// The reaper of this process: its queue and its waker. A forked child has no reaper thread
/// (and maybe this lock held for good by a thread it did not inherit): it starts its own.
static REAPER: ForkLocal<Mutex<Option<Handle>>> = ForkLocal::new(|| Mutex::new(None));

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
    if let Err(Job::Dying(returned)) = send(Job::Dying(dying)) {
        dying = returned;
        // No reaper thread can be started: end the worker here, at once.
        let _ = dying.process.kill_and_reap();
    }
}

/// Hands `watch` to the reaper thread, which services it until it says done; the watch back
/// when no reaper thread can be started.
pub(crate) fn watch(watch: Box<dyn Watch>) -> Result<(), Box<dyn Watch>> {
    match send(Job::Watch(watch)) {
        Ok(()) => Ok(()),
        Err(Job::Watch(watch)) => Err(watch),
        Err(Job::Dying(_)) => unreachable!("a watch was sent"),
    }
}

/// Wakes the reaper thread, so that it services every watch now.
pub(crate) fn wake() {
    if let Ok((_, waker)) = reaper() {
        let _ = waker.wake();
    }
}

fn send(job: Job) -> Result<(), Job> {
    let Ok((tx, waker)) = reaper() else {
        return Err(job);
    };
    match tx.send(job) {
        Ok(()) => {
            let _ = waker.wake();
            Ok(())
        }
        Err(mpsc::SendError(returned)) => Err(returned),
    }
}

fn reaper() -> io::Result<(mpsc::Sender<Job>, PollerWaker)> {
    let mut reaper = REAPER.get().lock().unwrap_or_else(|e| e.into_inner());
    if let Some((tx, waker)) = &*reaper {
        return Ok((tx.clone(), waker.clone()));
    }
    let poller = Poller::new().map_err(io::Error::other)?;
    let waker = poller.waker();
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("exsyst-worker-reaper".into())
        .spawn(move || run(poller, rx))?;
    *reaper = Some((tx.clone(), waker.clone()));
    Ok((tx, waker))
}

fn run(mut poller: Poller, rx: mpsc::Receiver<Job>) {
    let mut dying: Vec<Option<Dying>> = Vec::new();
    let mut watches: Vec<(Box<dyn Watch>, Option<Instant>)> = Vec::new();
    loop {
        while let Ok(job) = rx.try_recv() {
            let d = match job {
                Job::Dying(d) => d,
                Job::Watch(w) => {
                    if let Some(fd) = w.fd() {
                        let _ = poller.registry().register(
                            &mut SourceFd(&fd.as_raw_fd()),
                            WATCH_TOKEN,
                            Interest::READABLE,
                        );
                    }
                    watches.push((w, None));
                    continue;
                }
            };
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
        watches.retain_mut(|(w, wake)| match w.service(now) {
            Some(at) => {
                *wake = at;
                true
            }
            None => {
                if let Some(fd) = w.fd() {
                    let _ = poller.registry().deregister(&mut SourceFd(&fd.as_raw_fd()));
                }
                false
            }
        });
        for (_, wake) in &watches {
            next = match (next, *wake) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
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
