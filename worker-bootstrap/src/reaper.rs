//! The process's one I/O thread, its readiness loop watching every worker: it reads every
//! worker's standard error (see [`StderrTail`](crate::stderr::StderrTail)), and ends the
//! workers handed to it (grace period, kill, reap) without making anyone wait, however many
//! there are. The library's thread count does not grow with the number of workers.

use std::{
    io,
    os::fd::{AsRawFd, RawFd},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use worker_core::{
    Poller, PollerWaker, WAKE_TOKEN,
    mio::{Interest, Registry, Token, unix::SourceFd},
};

use crate::{
    process::{Fate, Process},
    stderr::{Pumped, StderrTail, Stream, TURN_READS},
    sys::Pipes,
};

/// How often the reaper checks workers it cannot watch through a pidfd (old kernels).
const EXIT_POLL_TICK: Duration = Duration::from_millis(20);

/// A worker on its way out.
struct Dying {
    process: Process,
    pipes: Pipes,
    /// Its standard error, closed once it is reaped.
    stderr: Option<StderrTail>,
    /// When it is killed if it has not exited.
    deadline: Option<Instant>,
    killed: bool,
}

/// What the I/O thread is asked to do.
enum Command {
    /// End a worker.
    Dying(Dying),
    /// Read a worker's standard error.
    Watch(Arc<Stream>),
    /// Stop reading a worker's standard error, and close it.
    Close(Arc<Stream>),
}

/// What the I/O thread watches under one token.
enum Entry {
    Dying(Dying),
    Stderr(Arc<Stream>),
}

type Handle = (u32, mpsc::Sender<Command>, PollerWaker);

/// The I/O thread of this process: its queue, its waker, and the process id it was started in
/// (a forked child has no I/O thread, and starts its own).
static REAPER: Mutex<Option<Handle>> = Mutex::new(None);

/// Hands a worker to the I/O thread: its channel is closed now; it gets until `deadline` to
/// exit, then its process group is killed; it is reaped in any case, and its standard error
/// closed then.
pub(crate) fn hand_over(
    process: Process,
    mut pipes: Pipes,
    stderr: Option<StderrTail>,
    deadline: Option<Instant>,
) {
    pipes.close_input();
    let dying = Dying {
        process,
        pipes,
        stderr,
        deadline,
        killed: false,
    };
    if let Err(Command::Dying(mut dying)) = send(Command::Dying(dying)) {
        // No I/O thread can be started: end the worker here, at once.
        let _ = dying.process.kill_and_reap();
        if let Some(stderr) = dying.stderr.take() {
            stderr.finish();
        }
    }
}

/// Has the I/O thread read `stream` until it ends or is closed.
pub(crate) fn watch_stderr(stream: Arc<Stream>) -> io::Result<()> {
    send(Command::Watch(stream))
        .map_err(|_| io::Error::other("the exsyst-worker I/O thread cannot be started"))
}

/// Has the I/O thread stop reading `stream` and close it.
pub(crate) fn close_stderr(stream: Arc<Stream>) {
    if let Err(Command::Close(stream)) = send(Command::Close(stream)) {
        // No I/O thread: nothing watches it, so it is closed here.
        stream.close(|_| {});
    }
}

/// Sends `command` to the I/O thread (started on first use); gives it back when no thread can
/// take it.
fn send(command: Command) -> Result<(), Command> {
    let Ok((tx, waker)) = reaper() else {
        return Err(command);
    };
    match tx.send(command) {
        Ok(()) => {
            let _ = waker.wake();
            Ok(())
        }
        Err(mpsc::SendError(returned)) => Err(returned),
    }
}

fn reaper() -> io::Result<(mpsc::Sender<Command>, PollerWaker)> {
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
        .name("exsyst-worker-io".into())
        .spawn(move || run(poller, rx))?;
    *reaper = Some((me, tx.clone(), waker.clone()));
    Ok((tx, waker))
}

fn register(registry: &Registry, fd: RawFd, token: usize) -> io::Result<()> {
    registry.register(&mut SourceFd(&fd), Token(token), Interest::READABLE)
}

fn deregister(registry: &Registry, fd: RawFd) {
    let _ = registry.deregister(&mut SourceFd(&fd));
}

/// The slot of a new entry: the first free one.
fn free_slot(entries: &mut Vec<Option<Entry>>) -> usize {
    entries.iter().position(Option::is_none).unwrap_or_else(|| {
        entries.push(None);
        entries.len() - 1
    })
}

fn run(mut poller: Poller, rx: mpsc::Receiver<Command>) {
    let mut entries: Vec<Option<Entry>> = Vec::new();
    // Tokens whose sources had events (or are new) since the last turn.
    let mut due: Vec<usize> = Vec::new();
    loop {
        while let Ok(command) = rx.try_recv() {
            let registry = poller.registry();
            match command {
                Command::Dying(d) => {
                    let slot = free_slot(&mut entries);
                    let _ = register(registry, d.pipes.output().as_raw_fd(), slot);
                    if let Some(pidfd) = d.process.pidfd() {
                        let _ = register(registry, pidfd.as_raw_fd(), slot);
                    }
                    entries[slot] = Some(Entry::Dying(d));
                    due.push(slot);
                }
                Command::Watch(stream) => {
                    let slot = free_slot(&mut entries);
                    let registered = stream.fd().map(|fd| register(registry, fd, slot));
                    if let Some(Ok(())) = registered {
                        stream.set_token(slot);
                        entries[slot] = Some(Entry::Stderr(stream));
                        due.push(slot);
                    } else {
                        // Closed already, or the kernel will not watch it: read it no more.
                        stream.close(|_| {});
                    }
                }
                Command::Close(stream) => {
                    if let Some(slot) = stream.close(|fd| deregister(registry, fd)) {
                        entries[slot] = None;
                    }
                }
            }
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut again = Vec::new();
        due.sort_unstable();
        due.dedup();
        for (slot, entry) in entries.iter_mut().enumerate() {
            let fired = due.binary_search(&slot).is_ok();
            let done = match entry {
                None => false,
                Some(Entry::Stderr(stream)) if fired => match stream.pump(TURN_READS) {
                    Pumped::Empty => false,
                    Pumped::More => {
                        again.push(slot);
                        false
                    }
                    Pumped::Ended => {
                        stream.close(|fd| deregister(poller.registry(), fd));
                        true
                    }
                },
                Some(Entry::Stderr(_)) => false,
                Some(Entry::Dying(d)) => {
                    let expired = !d.killed && d.deadline.is_some_and(|deadline| now >= deadline);
                    if (fired || expired || d.process.needs_polling()) && service(d, now) {
                        let registry = poller.registry();
                        deregister(registry, d.pipes.output().as_raw_fd());
                        if let Some(pidfd) = d.process.pidfd() {
                            deregister(registry, pidfd.as_raw_fd());
                        }
                        if let Some(stderr) = d.stderr.take() {
                            stderr.finish();
                        }
                        true
                    } else {
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
                        false
                    }
                }
            };
            if done {
                *entry = None;
            }
        }
        // A stream with more to read is read again at once, after the others had their turn.
        due = again;
        if !due.is_empty() {
            next = Some(now);
        }
        let _ = poller.wait(next, |token, _| {
            if token != WAKE_TOKEN {
                due.push(token.0);
            }
        });
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
