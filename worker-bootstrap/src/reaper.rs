//! The process's one I/O thread, its readiness loop watching every worker: it reads every
//! worker's standard error (see [`StderrTail`]), watches the exit of
//! every living dedicated worker for its handle (see [`ExitWatch`]), and ends the workers
//! handed to it (grace period, kill, reap) without making anyone wait, however many there are.
//! The library's thread count does not grow with the number of workers.
//!
//! Descriptors the I/O thread watches for a handle are closed by that handle, on its own
//! thread, under the lock they share with the I/O thread (taken out of the poller first,
//! through a registry shared with it): dropping a handle leaves nothing open behind it, and
//! the I/O thread only frees the slot afterwards.

use std::{
    io::{self, Write},
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use worker_core::{
    Poller, PollerWaker, WAKE_TOKEN,
    mio::{Interest, Registry, Token, unix::SourceFd},
};

use crate::{
    process::{Fate, Process},
    stderr::{Pumped, StderrTail, Stream, TURN_READS},
    sys::{self, ForkLocal, Pipes},
};

/// How often the reaper checks workers it cannot watch through a pidfd (old kernels), tries
/// again to tell a handle of its worker's death when no descriptor was to spare, and to forward
/// standard error the master's did not take.
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

/// What the I/O thread is asked to do.
enum Command {
    /// End a worker.
    Dying(Dying),
    /// Read a worker's standard error.
    Watch(Arc<Stream>),
    /// Watch a living worker's exit.
    WatchExit(Arc<Watched>),
    /// Look after something else (a zygote).
    Service(Box<dyn Watch>),
    /// Free a slot whose descriptors its owner closed.
    Forget(usize),
}

/// What the I/O thread watches under one token.
enum Entry {
    Dying(Dying),
    Stderr(Arc<Stream>),
    Exit(Arc<Watched>),
    /// Serviced on every turn, and woken by its descriptor or its own time.
    Service(Box<dyn Watch>, Option<Instant>),
}

/// The I/O thread of this process: its queue, its waker, its registry.
#[derive(Clone)]
struct Handle {
    tx: mpsc::Sender<Command>,
    waker: PollerWaker,
    registry: Arc<Registry>,
}

/// A forked child has no I/O thread (and maybe this lock held for good by a thread it did not
/// inherit): it starts its own.
static REAPER: ForkLocal<Mutex<Option<Handle>>> = ForkLocal::new(|| Mutex::new(None));

/// The notice the I/O thread writes into a worker's output once the worker has exited: a
/// control frame with an empty payload, which no codec produces, so no worker sends it. It
/// ends a blocking receive's read (see [`ExitWatch`]) and is skipped by every receive.
pub(crate) const EXIT_NOTICE: [u8; worker_channel::HEADER_LEN] =
    [0, 0, 0, 0, worker_channel::FrameKind::Control.to_byte()];

/// A living worker whose exit the I/O thread watches for its handle.
struct Watched {
    state: Mutex<WatchState>,
    /// Set once the worker has exited, before the notice is written.
    dead: AtomicBool,
}

struct WatchState {
    /// The worker's pidfd (a descriptor of our own) and the blocking description of its output
    /// that the handle reads (see [`sys::open_blocking`]), through which the pipe is opened for
    /// writing once the worker is dead. Closed only by the handle: `None` once it stopped the
    /// watch.
    fds: Option<(OwnedFd, OwnedFd)>,
    /// The writing end opened to write the notice, kept while the pipe is full.
    writer: Option<std::fs::File>,
    /// Where the I/O thread watches it, while it does.
    token: Option<usize>,
}

impl Watched {
    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl WatchState {
    /// Takes the watched descriptors out of `registry` and closes the writing end; returns the
    /// token, the first time. The pidfd and the output stay, for the handle to close.
    fn unwatch(&mut self, registry: Option<&Registry>) -> Option<usize> {
        if let Some(registry) = registry.filter(|_| self.token.is_some()) {
            if let Some((pidfd, _)) = &self.fds {
                deregister(registry, pidfd.as_raw_fd());
            }
            if let Some(writer) = &self.writer {
                deregister(registry, writer.as_raw_fd());
            }
        }
        self.writer = None;
        self.token.take()
    }
}

/// The I/O thread watching a living worker's exit, for its handle's blocking receives: they
/// read the worker's output without also polling its pidfd (one system call less per message,
/// and none that touches the process), because once the worker has exited the I/O thread sets
/// [`is_dead`](Self::is_dead) and writes [`EXIT_NOTICE`] into the output, after everything the
/// worker wrote, which ends a read blocked there even while a grandchild holds the pipe.
/// Dropping it stops the watch and closes its descriptors.
pub(crate) struct ExitWatch {
    watched: Arc<Watched>,
    /// The blocking description of the worker's output, which only dropping this closes.
    blocking: RawFd,
}

impl std::fmt::Debug for ExitWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitWatch")
            .field("dead", &self.is_dead())
            .finish()
    }
}

impl ExitWatch {
    /// Watches the worker whose pidfd is `pidfd` and whose output (our reading end) is
    /// `output`; `None` when there is no I/O thread, no `/proc` or no descriptor to spare.
    pub(crate) fn start(pidfd: BorrowedFd<'_>, output: BorrowedFd<'_>) -> Option<Self> {
        let fds = (
            pidfd.try_clone_to_owned().ok()?,
            sys::open_blocking(output).ok()?,
        );
        let blocking = fds.1.as_raw_fd();
        let watched = Arc::new(Watched {
            state: Mutex::new(WatchState {
                fds: Some(fds),
                writer: None,
                token: None,
            }),
            dead: AtomicBool::new(false),
        });
        send(Command::WatchExit(Arc::clone(&watched))).ok()?;
        Some(ExitWatch { watched, blocking })
    }

    /// Whether the worker has exited (seen by the I/O thread).
    pub(crate) fn is_dead(&self) -> bool {
        self.watched.dead.load(Ordering::Acquire)
    }

    /// The worker's output through a description that blocks: a read there ends with bytes,
    /// the end of the output, or the notice of the worker's death. Open as long as this is
    /// (only dropping it closes it).
    pub(crate) fn blocking_output(&self) -> RawFd {
        self.blocking
    }
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        let registry = io_thread().ok().map(|h| h.registry);
        let mut state = self.watched.lock();
        let token = state.unwatch(registry.as_deref());
        state.fds = None;
        drop(state);
        if let Some(slot) = token {
            let _ = send(Command::Forget(slot));
        }
    }
}

/// What telling a handle of its worker's death came to.
enum Notice {
    /// Written, or nobody reads the output any more.
    Done,
    /// The pipe is full: written once it is writable.
    Pending,
    /// The pipe cannot be opened now (no descriptor to spare): tried again later.
    Retry,
}

/// Marks the watched worker dead and writes the notice into its output (through the writer
/// kept, or a writing end opened now).
fn tell_death(watched: &Watched, state: &mut WatchState) -> Notice {
    watched.dead.store(true, Ordering::Release);
    let Some((_, output)) = &state.fds else {
        return Notice::Done;
    };
    if state.writer.is_none() {
        match sys::reopen_pipe(output.as_fd(), true) {
            Ok(fd) => state.writer = Some(fd.into()),
            // No reader left: the handle is gone.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Notice::Done,
            Err(_) => return Notice::Retry,
        }
    }
    let pipe = state.writer.as_mut().expect("opened above");
    // The notice is smaller than PIPE_BUF: written whole or not at all.
    match sys::without_sigpipe(|| pipe.write(&EXIT_NOTICE)) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Notice::Pending,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Notice::Pending,
        _ => Notice::Done,
    }
}

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

/// Hands `watch` to the I/O thread, which services it until it says done; the watch back when
/// no I/O thread can be started.
pub(crate) fn watch(watch: Box<dyn Watch>) -> Result<(), Box<dyn Watch>> {
    match send(Command::Service(watch)) {
        Ok(()) => Ok(()),
        Err(Command::Service(watch)) => Err(watch),
        Err(_) => unreachable!("a watch was sent"),
    }
}

/// Wakes the I/O thread, so that it services every watch now.
pub(crate) fn wake() {
    if let Ok(handle) = io_thread() {
        let _ = handle.waker.wake();
    }
}

/// Has the I/O thread read `stream` until it ends or is closed.
pub(crate) fn watch_stderr(stream: Arc<Stream>) -> io::Result<()> {
    send(Command::Watch(stream))
        .map_err(|_| io::Error::other("the exsyst-worker I/O thread cannot be started"))
}

/// Stops the reading of `stream` and closes it, here and now.
pub(crate) fn close_stderr(stream: &Stream) {
    let registry = io_thread().ok().map(|h| h.registry);
    let token = stream.close(|fd| {
        if let Some(registry) = &registry {
            deregister(registry, fd);
        }
    });
    if let Some(slot) = token {
        let _ = send(Command::Forget(slot));
    }
}

/// Sends `command` to the I/O thread (started on first use); gives it back when no thread can
/// take it.
fn send(command: Command) -> Result<(), Command> {
    let Ok(handle) = io_thread() else {
        return Err(command);
    };
    match handle.tx.send(command) {
        Ok(()) => {
            let _ = handle.waker.wake();
            Ok(())
        }
        Err(mpsc::SendError(returned)) => Err(returned),
    }
}

fn io_thread() -> io::Result<Handle> {
    let mut reaper = REAPER.get().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = &*reaper {
        return Ok(handle.clone());
    }
    let poller = Poller::new().map_err(io::Error::other)?;
    let registry = Arc::new(poller.registry().try_clone()?);
    let (tx, rx) = mpsc::channel();
    let handle = Handle {
        tx,
        waker: poller.waker(),
        registry,
    };
    std::thread::Builder::new()
        .name("exsyst-worker-io".into())
        .spawn(move || run(poller, rx))?;
    *reaper = Some(handle.clone());
    Ok(handle)
}

fn register(registry: &Registry, fd: RawFd, token: usize, interest: Interest) -> io::Result<()> {
    registry.register(&mut SourceFd(&fd), Token(token), interest)
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

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn run(mut poller: Poller, rx: mpsc::Receiver<Command>) {
    let mut entries: Vec<Option<Entry>> = Vec::new();
    // Tokens whose sources had events (or are new) since the last turn.
    let mut due: Vec<usize> = Vec::new();
    // Exit watches whose notice could not be written, and standard errors the master's could
    // not take: tried again after a tick.
    let mut later: Vec<usize> = Vec::new();
    loop {
        // A panic in one turn (a `log` implementation's, say) costs that turn only: the thread
        // every worker depends on goes on.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
            while let Ok(command) = rx.try_recv() {
                let registry = poller.registry();
                match command {
                    Command::Dying(d) => {
                        let slot = free_slot(&mut entries);
                        let readable = Interest::READABLE;
                        let _ = register(registry, d.pipes.output().as_raw_fd(), slot, readable);
                        if let Some(pidfd) = d.process.pidfd() {
                            let _ = register(registry, pidfd.as_raw_fd(), slot, readable);
                        }
                        entries[slot] = Some(Entry::Dying(d));
                        due.push(slot);
                    }
                    Command::Watch(stream) => {
                        let slot = free_slot(&mut entries);
                        if stream
                            .register(slot, |fd| register(registry, fd, slot, Interest::READABLE))
                        {
                            entries[slot] = Some(Entry::Stderr(stream));
                            due.push(slot);
                        } else {
                            // Closed already, or the kernel will not watch it: read it no more.
                            stream.close(|_| {});
                        }
                    }
                    Command::WatchExit(watched) => {
                        let slot = free_slot(&mut entries);
                        let mut state = watched.lock();
                        let Some((pidfd, _)) = &state.fds else {
                            continue;
                        };
                        if register(registry, pidfd.as_raw_fd(), slot, Interest::READABLE).is_ok() {
                            state.token = Some(slot);
                            drop(state);
                            entries[slot] = Some(Entry::Exit(watched));
                            due.push(slot);
                        } else {
                            // Unwatched, the death is told at once: the handle polls from now on.
                            tell_death(&watched, &mut state);
                            state.unwatch(None);
                        }
                    }
                    Command::Service(w) => {
                        let slot = free_slot(&mut entries);
                        if let Some(fd) = w.fd() {
                            let _ = register(registry, fd.as_raw_fd(), slot, Interest::READABLE);
                        }
                        entries[slot] = Some(Entry::Service(w, None));
                    }
                    Command::Forget(slot) => entries[slot] = None,
                }
            }
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            let mut again = Vec::new();
            let retry = std::mem::take(&mut later);
            due.sort_unstable();
            due.dedup();
            for (slot, entry) in entries.iter_mut().enumerate() {
                let fired = due.binary_search(&slot).is_ok();
                let registry = poller.registry();
                let done = match entry {
                    None => false,
                    Some(Entry::Stderr(stream)) if fired || retry.contains(&slot) => {
                        match stream.pump(TURN_READS) {
                            Pumped::Empty => false,
                            Pumped::More => {
                                again.push(slot);
                                false
                            }
                            Pumped::Held => {
                                later.push(slot);
                                false
                            }
                            // Its slot is freed by whoever closes it first.
                            Pumped::Ended => stream.close(|fd| deregister(registry, fd)).is_some(),
                        }
                    }
                    Some(Entry::Stderr(_)) => false,
                    Some(Entry::Exit(watched)) if fired || retry.contains(&slot) => {
                        let mut state = watched.lock();
                        let exited = match &state.fds {
                            Some((pidfd, _)) => {
                                state.writer.is_some()
                                    || sys::is_readable_now(pidfd.as_fd()).unwrap_or(true)
                            }
                            None => false,
                        };
                        match exited.then(|| tell_death(watched, &mut state)) {
                            Some(Notice::Done) => state.unwatch(Some(registry)).is_some(),
                            Some(Notice::Pending) => {
                                if let Some(pipe) = &state.writer {
                                    let fd = pipe.as_raw_fd();
                                    let writable = Interest::WRITABLE;
                                    if register(registry, fd, slot, writable).is_err() {
                                        later.push(slot);
                                    }
                                }
                                false
                            }
                            Some(Notice::Retry) => {
                                later.push(slot);
                                false
                            }
                            None => false,
                        }
                    }
                    Some(Entry::Exit(_)) => false,
                    // Few (zygotes): each looked at on every turn.
                    Some(Entry::Service(w, wake)) => match w.service(now) {
                        Some(at) => {
                            *wake = at;
                            next = earliest(next, at);
                            false
                        }
                        None => {
                            if let Some(fd) = w.fd() {
                                deregister(registry, fd.as_raw_fd());
                            }
                            true
                        }
                    },
                    Some(Entry::Dying(d)) => {
                        let expired =
                            !d.killed && d.deadline.is_some_and(|deadline| now >= deadline);
                        if (fired || expired || d.process.needs_polling()) && service(d, now) {
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
                            next = earliest(next, wake);
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
            if !later.is_empty() {
                next = earliest(next, worker_core::deadline_after(EXIT_POLL_TICK));
            }
            let _ = poller.wait(next, |token, _| {
                if token != WAKE_TOKEN {
                    due.push(token.0);
                }
            });
        }));
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
