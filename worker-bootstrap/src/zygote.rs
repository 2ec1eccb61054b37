//! Spawning from a zygote ([`SpawnMode::Zygote`](crate::SpawnMode::Zygote)): the master's half
//! (here), which starts zygotes and asks them for workers, and the messages both halves speak;
//! the zygote's half, which forks them, is [`serve`]'s module.
//!
//! The master starts a zygote as it starts any dedicated worker (on the spawner thread, through
//! `posix_spawn`, in a process group of its own, with a parent-death signal), with one end of a
//! sequenced-packet socket pair as its standard input and [`ENV_ZYGOTE`] in its environment. Its
//! first message hands the zygote a shared memory page ([`SharedSlot`]). The zygote runs `main`
//! up to `run_if_worker`, checks that it has one thread, and serves requests: each is one message
//! naming the implementation, with the worker's standard input, output and error attached. It
//! forks a sibling ([`sys::fork_sibling`]: a child of the master, not of the zygote), the kernel
//! writing the sibling's pid into the shared page before it runs, and answers with that pid. The
//! worker arms its parent-death signal against the master, takes a process group of its own,
//! puts the three descriptors on 0, 1 and 2, and goes on exactly as an executed worker does once
//! it has read its environment: the init frame, then the implementation.
//!
//! A zygote serves one spawn at a time: the spawn takes it out of the process's list (a lock held
//! for a lookup only, never across the conversation), and puts it back once answered; another
//! spawn that finds it busy executes its worker instead of waiting. A spawn whose zygote fails
//! (dies, does not answer within the profile's bound, says something that is not an answer)
//! kills it, reads the shared page, and kills and reaps the worker the zygote forked for it if
//! any: no worker is ever left that no handle owns. The reaper thread watches each zygote's
//! pidfd, reaps one that dies while idle, and ends one unused for its idle timeout. The list is a
//! [`ForkLocal`]: a process forked from the master starts its own zygotes.
//!
//! The zygote itself is started on the spawner thread, so that its parent-death signal, and
//! through `CLONE_PARENT` its workers', follows that thread, as every executed worker's does.

use std::{
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    process::Stdio,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use worker_channel::Codec;

use crate::{
    Error, LOG_TARGET, StderrMode,
    error::describe_exit,
    init::{ENV_DETACHED, ENV_IMPLEMENTATION, ENV_PARENT, ENV_ZYGOTE, ZYGOTE_IMPLEMENTATION},
    process::{EXITING_WAIT, Fate, Process},
    reaper::{self, Watch},
    spawn::Image,
    spawner,
    stderr::{Sink, StderrTail},
    sys::{self, ForkLocal, SharedSlot},
};

mod serve;

pub(crate) use serve::serve;

/// The most zygotes that run at once in one master (see [`SpawnMode`](crate::SpawnMode) for
/// what each costs). A spawn that needs another ends the one unused for longest, or executes
/// its worker when every zygote is busy.
pub const MAX_ZYGOTES: usize = 8;

/// How long the master waits for a dead zygote's last standard error bytes.
const STDERR_DRAIN_WAIT: Duration = Duration::from_millis(500);

/// How often the reaper thread looks whether a zygote died, on kernels without pidfd.
const EXIT_POLL_TICK: Duration = Duration::from_secs(1);

/// The largest request a zygote reads: an implementation name.
const MAX_REQUEST: usize = 64 * 1024;

/// The largest answer a master reads.
const MAX_REPLY: usize = 4096;

/// The `log` target of what a zygote writes to its standard error, with [`StderrMode::Log`].
const ZYGOTE_LOG_TARGET: &str = "exsyst_worker::worker::zygote";

/// A message to a zygote.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// The first: the shared page where the kernel writes each worker's pid is attached.
    Setup,
    /// A worker; its standard input, output and error are attached.
    Fork { implementation: String },
}

/// A zygote's answer.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    /// The worker's pid.
    Forked { pid: u32 },
    /// No worker. `errno` when the fork itself failed, or the worker's descriptors could not
    /// be received; `unsupported` when no fork ever will here (a platform or kernel that
    /// refuses it), so that the master executes workers instead.
    Refused {
        reason: String,
        errno: Option<i32>,
        unsupported: bool,
    },
}

// The master's side.

/// What a spawn through a zygote needs from its profile.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    /// How long to wait for an answer.
    pub(crate) timeout: Duration,
    /// How long the zygote may stay unused.
    pub(crate) idle_timeout: Duration,
}

/// A running zygote, as its master holds it.
#[derive(Debug)]
struct Zygote {
    /// Its entry's identity in the list (pids are reused; these are not).
    id: u64,
    process: Process,
    socket: OwnedFd,
    /// Where the kernel writes the pid of the worker it forks.
    slot: SharedSlot,
    stderr: Option<StderrTail>,
    /// Workers forked so far.
    served: u64,
}

/// Where one image's zygote stands.
#[derive(Debug)]
enum State {
    /// Running, waiting for a spawn.
    Idle(Box<Zygote>),
    /// A spawn is talking to it (or starting it).
    Busy,
    /// Its zygote said forks are refused here: its spawns execute workers.
    Unsupported,
}

/// The zygote of one image.
#[derive(Debug)]
struct Entry {
    id: u64,
    image: Image,
    stderr: StderrMode,
    state: State,
    last_used: Instant,
    idle_timeout: Duration,
}

/// The zygotes of this process, one per image and standard error mode.
static ZYGOTES: ForkLocal<Mutex<Vec<Entry>>> = ForkLocal::new(|| Mutex::new(Vec::new()));

/// The identity of the next zygote.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn zygotes() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    ZYGOTES.get().lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a request got no answer.
#[derive(Debug)]
enum Failure {
    /// The zygote ended.
    Ended,
    /// It did not answer in time.
    TimedOut(Duration),
    /// The socket failed, or carried something that is not an answer.
    Protocol(String),
}

/// What a spawn got from the list.
enum Checkout {
    /// The image's zygote, now busy with this spawn.
    Ready(Box<Zygote>),
    /// No zygote yet: this spawn starts the one of this identity (its entry is busy).
    Start(u64),
    /// Execute the worker: zygotes refuse to fork here, or the image's zygote is busy with
    /// another spawn, or every zygote is.
    Exec,
}

/// Forks a worker running `implementation` from the zygote of `image` (started now if it is
/// not running), with `stdio` as its standard input, output and error; `Ok(None)` when the
/// worker is to be executed instead (zygotes are not supported here, or the zygote is busy).
///
/// Runs on the calling thread, holding no lock while it waits; a zygote is started on the
/// spawner thread. A zygote that fails for a reason of the moment (it had served before, was
/// killed, or did not answer in time) is ended and replaced once, then the worker is executed;
/// one that cannot start, refuses, or exits before its first answer is [`Error::Zygote`].
/// Whatever fails, no worker is left that the caller does not get.
pub(crate) fn fork(
    image: &Image,
    stderr: StderrMode,
    implementation: &str,
    stdio: [BorrowedFd<'_>; 3],
    settings: Settings,
) -> Result<Option<Process>, Error> {
    if !sys::ZYGOTE_SUPPORTED {
        return Ok(None);
    }
    // Whether this spawn already replaced a zygote that failed.
    let mut replaced = false;
    loop {
        let mut zygote = match checkout(image, stderr, settings.idle_timeout) {
            Checkout::Exec => return Ok(None),
            Checkout::Ready(zygote) => zygote,
            Checkout::Start(id) => {
                let start = image.clone();
                let started = spawner::run(move || Zygote::start(&start, stderr, id))
                    .map_err(|source| Error::Spawn {
                        program: image.program.clone(),
                        source,
                    })
                    .and_then(|started| started);
                match started {
                    Ok(zygote) => Box::new(zygote),
                    Err(e) => {
                        forget(id);
                        return Err(e);
                    }
                }
            }
        };
        let zpid = zygote.process.pid();
        match zygote.request(implementation, stdio, settings.timeout) {
            Ok(Reply::Forked { pid }) => {
                zygote.served += 1;
                // Its group exists when the spawn returns, whether or not the worker has
                // run far enough to make it.
                sys::put_in_own_group(pid);
                let process = Process::adopt(pid, None, true);
                give_back(zygote);
                return Ok(Some(process));
            }
            Ok(Reply::Refused {
                reason,
                unsupported: true,
                ..
            }) => {
                log::info!(
                    target: LOG_TARGET,
                    "zygote {zpid} cannot fork workers ({reason}): they are executed instead"
                );
                let id = zygote.id;
                drop(zygote);
                if let Some(entry) = zygotes().iter_mut().find(|e| e.id == id) {
                    entry.state = State::Unsupported;
                }
                return Ok(None);
            }
            Ok(Reply::Refused {
                errno: Some(errno), ..
            }) => {
                // What a spawn says when the system refuses a process (EAGAIN, ENOMEM), or
                // the zygote cannot take its descriptors (EMFILE): the zygote is fine.
                give_back(zygote);
                return Err(Error::Spawn {
                    program: image.program.clone(),
                    source: io::Error::from_raw_os_error(errno),
                });
            }
            Ok(Reply::Refused { reason, .. }) => {
                forget(zygote.id);
                return Err(zygote.error(reason));
            }
            Err(failure) => {
                forget(zygote.id);
                zygote.end();
                let reason = zygote.describe(&failure);
                // It served before, or was killed (by an operator, the OOM killer), or stalled:
                // nothing says that the image cannot be a zygote.
                let transient = zygote.served > 0
                    || matches!(failure, Failure::TimedOut(_))
                    || matches!(failure, Failure::Ended) && zygote.was_killed();
                if !transient {
                    return Err(zygote.error(reason));
                }
                if replaced {
                    log::warn!(
                        target: LOG_TARGET,
                        "zygote {zpid} failed too ({reason}); this worker is executed"
                    );
                    return Ok(None);
                }
                log::warn!(
                    target: LOG_TARGET,
                    "zygote {zpid} failed ({reason}); starting another"
                );
                replaced = true;
            }
        }
    }
}

/// Takes the zygote of `image` out of the list for one spawn, or says to start it or to
/// execute the worker instead; the lock is held for this only.
fn checkout(image: &Image, stderr: StderrMode, idle_timeout: Duration) -> Checkout {
    let mut evicted = None;
    let checkout = {
        let mut list = zygotes();
        let now = Instant::now();
        match list
            .iter_mut()
            .find(|e| e.stderr == stderr && e.image == *image)
        {
            Some(entry) => match std::mem::replace(&mut entry.state, State::Busy) {
                State::Idle(zygote) => {
                    entry.last_used = now;
                    entry.idle_timeout = idle_timeout;
                    Checkout::Ready(zygote)
                }
                other => {
                    entry.state = other;
                    Checkout::Exec
                }
            },
            None => {
                let running = list
                    .iter()
                    .filter(|e| !matches!(e.state, State::Unsupported))
                    .count();
                let room = running < MAX_ZYGOTES || {
                    // The zygote unused for longest makes room, if one is idle.
                    let oldest = list
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| matches!(e.state, State::Idle(_)))
                        .min_by_key(|(_, e)| e.last_used)
                        .map(|(i, _)| i);
                    oldest
                        .map(|i| evicted = Some(list.swap_remove(i)))
                        .is_some()
                };
                if room {
                    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                    list.push(Entry {
                        id,
                        image: image.clone(),
                        stderr,
                        state: State::Busy,
                        last_used: now,
                        idle_timeout,
                    });
                    Checkout::Start(id)
                } else {
                    Checkout::Exec
                }
            }
        }
    };
    if let Some(Entry {
        state: State::Idle(mut zygote),
        ..
    }) = evicted
    {
        log::debug!(
            target: LOG_TARGET,
            "zygote {} ended: {MAX_ZYGOTES} zygotes run, and it was unused for longest",
            zygote.process.pid()
        );
        zygote.end();
    }
    checkout
}

/// Puts a zygote that answered back in the list, idle; one that died meanwhile is reaped now
/// (a death after this is the reaper thread's to see).
fn give_back(zygote: Box<Zygote>) {
    let mut list = zygotes();
    let Some(entry) = list.iter_mut().find(|e| e.id == zygote.id) else {
        return;
    };
    entry.last_used = Instant::now();
    if zygote.process.has_exited().unwrap_or(false) {
        let id = zygote.id;
        list.retain(|e| e.id != id);
        drop(list);
        drop(zygote);
        return;
    }
    entry.state = State::Idle(zygote);
}

/// Removes the entry of zygote `id`, which its spawn ends.
fn forget(id: u64) {
    zygotes().retain(|e| e.id != id);
    // Its watch is done with: let the reaper thread see it now rather than at its next wake.
    reaper::wake();
}

impl Zygote {
    /// Starts the zygote of `image`; on the spawner thread (so that its parent-death signal
    /// follows that thread, as every worker's does).
    fn start(image: &Image, stderr: StderrMode, id: u64) -> Result<Zygote, Error> {
        let spawn_error = |source| Error::Spawn {
            program: image.program.clone(),
            source,
        };
        let (socket, theirs) = sys::seqpacket_pair().map_err(spawn_error)?;
        let (slot, slot_fd) = SharedSlot::create().map_err(spawn_error)?;
        // Queued before the zygote runs: its first message.
        let setup = Codec::MessagePack
            .encode(&Request::Setup)
            .map_err(|e| spawn_error(io::Error::other(e)))?;
        sys::send_with_fds(socket.as_fd(), &setup, &[slot_fd.as_fd()]).map_err(spawn_error)?;
        drop(slot_fd);
        let (tail, their_stderr) = match stderr {
            StderrMode::Forward | StderrMode::Capture | StderrMode::Log => {
                let (ours, theirs) = sys::pipe().map_err(spawn_error)?;
                (Some(ours), Stdio::from(theirs))
            }
            StderrMode::Inherit => (None, Stdio::inherit()),
            StderrMode::Null => (None, Stdio::null()),
        };
        let mut command = image.command();
        command
            .env(ENV_IMPLEMENTATION, ZYGOTE_IMPLEMENTATION)
            .env(ENV_ZYGOTE, "1")
            .env(ENV_PARENT, sys::getpid().to_string())
            .env_remove(ENV_DETACHED)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(their_stderr);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().map_err(spawn_error)?;
        let mut process = Process::track(child.id(), true);
        drop(command);
        let pid = process.pid();
        let stderr = match tail {
            Some(tail) => {
                let sink = match stderr {
                    StderrMode::Forward => Sink::Stderr,
                    StderrMode::Log => Sink::Log(ZYGOTE_LOG_TARGET.into()),
                    _ => Sink::None,
                };
                match StderrTail::start(tail, sink, pid) {
                    Ok(tail) => Some(tail),
                    Err(source) => {
                        let _ = process.kill_and_reap();
                        return Err(Error::Io { pid, source });
                    }
                }
            }
            None => None,
        };
        let pidfd = process.pidfd().map(|fd| fd.try_clone_to_owned());
        let watch = match pidfd {
            Some(Ok(pidfd)) => Some(pidfd),
            Some(Err(source)) => {
                let _ = process.kill_and_reap();
                return Err(spawn_error(source));
            }
            None => None,
        };
        if reaper::watch(Box::new(Watcher { id, pidfd: watch })).is_err() {
            log::debug!(
                target: LOG_TARGET,
                "zygote {pid}: no background thread watches it; it is reaped by a spawn"
            );
        }
        log::debug!(
            target: LOG_TARGET,
            "zygote {pid} started from {}",
            image.program.display()
        );
        Ok(Zygote {
            id,
            process,
            socket,
            slot,
            stderr,
            served: 0,
        })
    }

    /// Asks for one worker and waits for the answer, until `timeout`.
    fn request(
        &mut self,
        implementation: &str,
        stdio: [BorrowedFd<'_>; 3],
        timeout: Duration,
    ) -> Result<Reply, Failure> {
        let request = Request::Fork {
            implementation: implementation.to_owned(),
        };
        let bytes = Codec::MessagePack
            .encode(&request)
            .map_err(|e| Failure::Protocol(format!("cannot encode the request: {e}")))?;
        self.slot.clear();
        match sys::send_with_fds(self.socket.as_fd(), &bytes, &stdio) {
            Ok(()) => {}
            Err(e) if is_gone(&e) => return Err(Failure::Ended),
            Err(e) => return Err(Failure::Protocol(format!("cannot send the request: {e}"))),
        }
        let deadline = worker_core::deadline_after(timeout);
        let socket = self.socket.as_fd();
        // The pidfd too: a worker forked a moment before its zygote died holds the zygote's
        // socket until it put its own input in its place.
        let mut fds = vec![(socket, true, false)];
        fds.extend(self.process.pidfd().map(|fd| (fd, true, false)));
        let ready = sys::poll(&fds, deadline)
            .map_err(|e| Failure::Protocol(format!("cannot wait for the answer: {e}")))?;
        let Some(ready) = ready else {
            return Err(Failure::TimedOut(timeout));
        };
        if !ready[0].can_read() {
            return Err(Failure::Ended);
        }
        let mut buf = [0u8; MAX_REPLY];
        let (n, fds) = match sys::recv_with_fds(socket, &mut buf) {
            Ok(Some(message)) => message,
            Ok(None) => return Err(Failure::Ended),
            Err(e) => return Err(Failure::Protocol(format!("cannot read the answer: {e}"))),
        };
        let reply: Reply = Codec::MessagePack
            .decode(&buf[..n])
            .map_err(|e| Failure::Protocol(format!("an answer that does not decode: {e}")))?;
        if let Reply::Forked { pid } = reply
            && (pid != self.slot.load() || !fds.is_empty())
        {
            return Err(Failure::Protocol(format!(
                "an answer naming pid {pid} (the kernel says {}) with {} descriptors",
                self.slot.load(),
                fds.len()
            )));
        }
        // Answered: the worker is the spawn's now, not the zygote's to end.
        self.slot.clear();
        Ok(reply)
    }

    /// Kills and reaps the zygote (with its process group, which holds no worker once it
    /// answered: each leads its own), then the worker it forked for the spawn it failed, if
    /// any, which nobody else knows of.
    fn end(&mut self) {
        let _ = self.process.kill_and_reap();
        // Reaped: it forks nothing more, and the slot is final.
        let pid = self.slot.load();
        if pid != 0 {
            self.slot.clear();
            let mut orphan = Process::adopt(pid, None, true);
            let fate = orphan.kill_and_reap();
            log::debug!(
                target: LOG_TARGET,
                "worker {pid}, forked by zygote {} for a spawn it did not answer, ended: \
                 {fate:?}",
                self.process.pid()
            );
        }
    }

    /// Whether it ended by a signal (or was reaped elsewhere, so that nobody can tell).
    fn was_killed(&self) -> bool {
        match self.process.fate() {
            Fate::Reaped(status) => {
                std::os::unix::process::ExitStatusExt::signal(&status).is_some()
            }
            Fate::Lost => true,
            Fate::Unreaped => false,
        }
    }

    /// Why a request failed, in words.
    fn describe(&mut self, failure: &Failure) -> String {
        match failure {
            Failure::Ended => {
                let fate = self
                    .process
                    .reap_until(worker_core::deadline_after(EXITING_WAIT))
                    .ok()
                    .flatten();
                format!("it ended before it answered: {}", describe_fate(fate))
            }
            Failure::TimedOut(timeout) => format!("it did not answer within {timeout:?}"),
            Failure::Protocol(why) => why.clone(),
        }
    }

    /// Ends the zygote and returns the error that says why, with its standard error's tail.
    fn error(&mut self, reason: String) -> Error {
        self.end();
        let stderr_tail = self
            .stderr
            .as_ref()
            .map(|tail| tail.text(STDERR_DRAIN_WAIT))
            .unwrap_or_default();
        Error::Zygote {
            pid: self.process.pid(),
            reason,
            stderr_tail,
        }
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        self.end();
    }
}

fn describe_fate(fate: Option<Fate>) -> String {
    match fate {
        Some(Fate::Reaped(status)) => describe_exit(&status),
        Some(Fate::Lost) => "its exit status was lost".into(),
        _ => "it did not exit".into(),
    }
}

/// Whether a send failed because the zygote is gone.
fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN)
    )
}

/// The reaper thread's watch over one zygote: reaps it when it dies idle, ends it when unused
/// for its idle timeout, and is done once its entry is gone.
struct Watcher {
    id: u64,
    /// A copy of the zygote's pidfd (the zygote itself may be out with a spawn).
    pidfd: Option<OwnedFd>,
}

impl Watch for Watcher {
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(AsFd::as_fd)
    }

    fn service(&mut self, now: Instant) -> Option<Option<Instant>> {
        let mut list = zygotes();
        let index = list.iter().position(|e| e.id == self.id)?;
        let entry = &list[index];
        let expires = worker_core::deadline_after(entry.idle_timeout)
            .and_then(|_| entry.last_used.checked_add(entry.idle_timeout));
        let zygote = match &entry.state {
            State::Idle(zygote) => zygote,
            // Its spawn sees a death; look again when it may have expired.
            State::Busy => return Some(expires.map(|at| at.max(now + EXIT_POLL_TICK))),
            // Ended: its spawns execute workers.
            State::Unsupported => return None,
        };
        let dead = zygote.process.has_exited().unwrap_or(false);
        let expired = expires.is_some_and(|at| now >= at);
        if !(dead || expired) {
            let poll = zygote.process.needs_polling().then(|| now + EXIT_POLL_TICK);
            return Some(match (expires, poll) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            });
        }
        let Entry {
            state: State::Idle(mut zygote),
            idle_timeout,
            ..
        } = list.swap_remove(index)
        else {
            unreachable!("idle, just seen")
        };
        drop(list);
        let pid = zygote.process.pid();
        if dead {
            let fate = zygote.process.try_reap().ok().flatten();
            log::warn!(
                target: LOG_TARGET,
                "zygote {pid} ended while idle ({}); the next spawn starts another",
                describe_fate(fate)
            );
        } else {
            log::debug!(
                target: LOG_TARGET,
                "zygote {pid} ended: unused for {idle_timeout:?}"
            );
        }
        zygote.end();
        None
    }
}
