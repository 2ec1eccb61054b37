//! Spawning from a zygote ([`SpawnMode::Zygote`](crate::SpawnMode::Zygote)): the master's side,
//! which starts zygotes and asks them for workers, and the zygote's, which forks them.
//!
//! The master starts a zygote as it starts any dedicated worker (on the spawner thread, through
//! `posix_spawn`, in a process group of its own, with a parent-death signal), with one end of a
//! sequenced-packet socket pair as its standard input and [`ENV_ZYGOTE`] in its environment. The
//! zygote runs `main` up to `run_if_worker`, checks that it has one thread, and serves requests:
//! each is one message naming the implementation, with the worker's standard input, output and
//! error attached. It forks a sibling ([`sys::fork_sibling`]: a child of the master, not of the
//! zygote) and answers with its pid and a pidfd for it. The worker arms its parent-death signal
//! against the master, takes a process group of its own, puts the three descriptors on 0, 1 and
//! 2, and goes on exactly as an executed worker does once it has read its environment: the init
//! frame, then the implementation.
//!
//! Requests are sent from the thread that spawns, one at a time (a lock); the zygote itself is
//! started on the spawner thread, so that its parent-death signal, and through `CLONE_PARENT`
//! its workers', follows that thread, as every executed worker's does.

use std::{
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    process::Stdio,
    sync::Mutex,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use worker_channel::Codec;
use worker_core::BoxError;

use crate::{
    Error, LOG_TARGET, StderrMode,
    error::describe_exit,
    init::{ENV_DETACHED, ENV_IMPLEMENTATION, ENV_PARENT, ENV_ZYGOTE, ZYGOTE_IMPLEMENTATION},
    process::{EXITING_WAIT, Fate, Process},
    spawn::Image,
    spawner,
    stderr::{Sink, StderrTail},
    sys::{self, ForkContext, Forked},
};

/// How long a master waits for its zygote's answer (its start included, for the first request)
/// before it gives up on it and kills it.
const REPLY_WAIT: Duration = Duration::from_secs(10);

/// How long the master waits for a dead zygote's last standard error bytes.
const STDERR_DRAIN_WAIT: Duration = Duration::from_millis(500);

/// The largest request a zygote reads: an implementation name.
const MAX_REQUEST: usize = 64 * 1024;

/// The largest answer a master reads.
const MAX_REPLY: usize = 4096;

/// The `log` target of what a zygote writes to its standard error, with [`StderrMode::Log`].
const ZYGOTE_LOG_TARGET: &str = "exsyst_worker::worker::zygote";

/// A request to a zygote; the worker's standard input, output and error are attached.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    implementation: String,
}

/// A zygote's answer.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    /// The worker's pid; a pidfd for it is attached when the kernel gave one.
    Forked { pid: u32 },
    /// No worker. `errno` when the fork itself failed; `unsupported` when no fork ever will
    /// here (a platform or kernel that refuses it), so that the master executes workers instead.
    Refused {
        reason: String,
        errno: Option<i32>,
        unsupported: bool,
    },
}

// The master's side.

/// A running zygote, as its master holds it.
#[derive(Debug)]
struct Zygote {
    process: Process,
    socket: OwnedFd,
    stderr: Option<StderrTail>,
    /// Workers forked so far.
    served: u64,
}

/// What one image's spawns go through.
#[derive(Debug)]
enum Slot {
    Running(Zygote),
    /// Its zygote said forks are refused here: its spawns execute workers.
    Unsupported,
}

/// The zygote of one image.
#[derive(Debug)]
struct Entry {
    image: Image,
    stderr: StderrMode,
    slot: Slot,
}

/// The zygotes of this process, one per image and standard error mode (a handful at most, so a
/// list), and the process id they were started for: a forked child of the master inherits the
/// list, must not use its parent's zygotes (whose workers would be its parent's children), and
/// must not end them either, so it forgets them.
static ZYGOTES: Mutex<(u32, Vec<Entry>)> = Mutex::new((0, Vec::new()));

/// Why a request got no answer.
#[derive(Debug)]
enum Failure {
    /// The zygote ended: how, if it could be reaped.
    Ended(Option<Fate>),
    /// It did not answer in [`REPLY_WAIT`].
    TimedOut,
    /// The socket failed, or carried something that is not an answer.
    Protocol(String),
}

/// Forks a worker running `implementation` from the zygote of `image` (started now if it is
/// not running), with `stdio` as its standard input, output and error; `Ok(None)` when zygotes
/// are not supported here, so that the caller executes the worker instead.
///
/// Runs on the calling thread (the fork is the zygote's, and the worker's parent is the
/// zygote's, the spawner thread, whoever asks); a zygote is started on the spawner thread.
/// Requests to a zygote are serialised. A zygote that died since its last fork is reaped and
/// replaced once; one that cannot start, refuses, or dies at once is [`Error::Zygote`].
pub(crate) fn fork(
    image: &Image,
    stderr: StderrMode,
    implementation: &str,
    stdio: [BorrowedFd<'_>; 3],
) -> Result<Option<Process>, Error> {
    if !sys::ZYGOTE_SUPPORTED {
        return Ok(None);
    }
    let mut guard = ZYGOTES.lock().unwrap_or_else(|e| e.into_inner());
    let (owner, zygotes) = &mut *guard;
    let me = sys::getpid();
    if *owner != me {
        std::mem::forget(std::mem::take(zygotes));
        *owner = me;
    }
    loop {
        let index = match zygotes
            .iter()
            .position(|e| e.stderr == stderr && e.image == *image)
        {
            Some(index) => index,
            None => {
                let start = image.clone();
                let zygote = spawner::run(move || Zygote::start(&start, stderr))
                    .map_err(|source| Error::Spawn {
                        program: image.program.clone(),
                        source,
                    })
                    .and_then(|started| started)?;
                zygotes.push(Entry {
                    image: image.clone(),
                    stderr,
                    slot: Slot::Running(zygote),
                });
                zygotes.len() - 1
            }
        };
        let Slot::Running(zygote) = &mut zygotes[index].slot else {
            return Ok(None);
        };
        let answer = zygote.request(implementation, stdio);
        let zpid = zygote.process.pid();
        match answer {
            Ok((Reply::Forked { pid }, pidfd)) => {
                zygote.served += 1;
                // Its group exists when the spawn returns, whether or not the worker has
                // run far enough to make it.
                sys::put_in_own_group(pid);
                return Ok(Some(Process::adopt(pid, pidfd, true)));
            }
            Ok((
                Reply::Refused {
                    reason,
                    unsupported: true,
                    ..
                },
                _,
            )) => {
                log::info!(
                    target: LOG_TARGET,
                    "zygote {zpid} cannot fork workers ({reason}): they are executed instead"
                );
                zygote.end();
                zygotes[index].slot = Slot::Unsupported;
                return Ok(None);
            }
            Ok((
                Reply::Refused {
                    errno: Some(errno), ..
                },
                _,
            )) => {
                // What a spawn says when the system refuses a process (EAGAIN, ENOMEM).
                return Err(Error::Spawn {
                    program: image.program.clone(),
                    source: io::Error::from_raw_os_error(errno),
                });
            }
            Ok((Reply::Refused { reason, .. }, _)) => {
                let error = zygote.error(reason);
                zygotes.swap_remove(index);
                return Err(error);
            }
            Err(Failure::Ended(fate)) if zygote.served > 0 => {
                // It served before: it was killed meanwhile (by an operator, the OOM
                // killer). Another one is started for this spawn.
                log::warn!(
                    target: LOG_TARGET,
                    "zygote {zpid} ended ({}); starting another",
                    describe_fate(fate)
                );
                zygotes.swap_remove(index);
            }
            Err(failure) => {
                let reason = match failure {
                    Failure::Ended(fate) => {
                        format!("it ended before it answered: {}", describe_fate(fate))
                    }
                    Failure::TimedOut => format!("it did not answer within {REPLY_WAIT:?}"),
                    Failure::Protocol(why) => why,
                };
                let error = zygote.error(reason);
                zygotes.swap_remove(index);
                return Err(error);
            }
        }
    }
}

fn describe_fate(fate: Option<Fate>) -> String {
    match fate {
        Some(Fate::Reaped(status)) => describe_exit(&status),
        Some(Fate::Lost) => "its exit status was lost".into(),
        _ => "it did not exit".into(),
    }
}

impl Zygote {
    /// Starts the zygote of `image`; on the spawner thread (so that its parent-death signal
    /// follows that thread, as every worker's does).
    fn start(image: &Image, stderr: StderrMode) -> Result<Zygote, Error> {
        let spawn_error = |source| Error::Spawn {
            program: image.program.clone(),
            source,
        };
        let (socket, theirs) = sys::seqpacket_pair().map_err(spawn_error)?;
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
        log::debug!(
            target: LOG_TARGET,
            "zygote {pid} started from {}",
            image.program.display()
        );
        Ok(Zygote {
            process,
            socket,
            stderr,
            served: 0,
        })
    }

    /// Asks for one worker and waits for the answer, and for the pidfd attached to it.
    fn request(
        &mut self,
        implementation: &str,
        stdio: [BorrowedFd<'_>; 3],
    ) -> Result<(Reply, Option<OwnedFd>), Failure> {
        let request = Request {
            implementation: implementation.to_owned(),
        };
        let bytes = Codec::MessagePack
            .encode(&request)
            .map_err(|e| Failure::Protocol(format!("cannot encode the request: {e}")))?;
        match sys::send_with_fds(self.socket.as_fd(), &bytes, &stdio) {
            Ok(()) => {}
            Err(e) if is_gone(&e) => return Err(self.ended()),
            Err(e) => return Err(Failure::Protocol(format!("cannot send the request: {e}"))),
        }
        let deadline = worker_core::deadline_after(REPLY_WAIT);
        let socket = self.socket.as_fd();
        let ready = sys::poll(&[(socket, true, false)], deadline)
            .map_err(|e| Failure::Protocol(format!("cannot wait for the answer: {e}")))?;
        if ready.is_none() {
            return Err(Failure::TimedOut);
        }
        let mut buf = [0u8; MAX_REPLY];
        let (n, mut fds) = match sys::recv_with_fds(socket, &mut buf) {
            Ok(Some(message)) => message,
            Ok(None) => return Err(self.ended()),
            Err(e) => return Err(Failure::Protocol(format!("cannot read the answer: {e}"))),
        };
        let reply: Reply = Codec::MessagePack
            .decode(&buf[..n])
            .map_err(|e| Failure::Protocol(format!("an answer that does not decode: {e}")))?;
        if let Reply::Forked { pid } = reply
            && (pid == 0 || pid > i32::MAX as u32 || fds.len() > 1)
        {
            return Err(Failure::Protocol(format!(
                "an answer naming pid {pid} with {} descriptors",
                fds.len()
            )));
        }
        Ok((reply, fds.pop()))
    }

    /// The zygote closed its socket: it is exiting. Reaps it, to say how it ended.
    fn ended(&mut self) -> Failure {
        let fate = self
            .process
            .reap_until(worker_core::deadline_after(EXITING_WAIT))
            .ok()
            .flatten();
        Failure::Ended(fate)
    }

    /// Kills and reaps the zygote (with its process group, which holds no worker: each leads
    /// its own).
    fn end(&mut self) {
        let _ = self.process.kill_and_reap();
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

/// Whether a send failed because the zygote is gone.
fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN)
    )
}

// The zygote's side.

/// In a zygote: serves fork requests on standard input until the master closes it (then exits
/// with status 0); returns in each worker it forks, with the implementation that worker must
/// run, once the worker has armed its parent-death signal against `master`, taken a process group
/// of its own, and put its standard descriptors in place.
pub(crate) fn serve(master: u32) -> Result<String, BoxError> {
    let socket = sys::stdin();
    // What the master's descriptors without close-on-exec left here would otherwise stay open
    // (a file lock held, a pipe's end never closed) for as long as the zygote lives.
    worker_core::sys::close_inherited_fds()
        .map_err(|e| format!("the zygote cannot close inherited descriptors: {e}"))?;
    let context = readiness();
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        let (n, fds) = match sys::recv_with_fds(socket, &mut buf) {
            Ok(Some(message)) => message,
            // The master is gone, or let go: nothing more to serve.
            Ok(None) => std::process::exit(0),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                answer(socket, &refused(format!("a malformed request: {e}")), None);
                continue;
            }
            Err(e) => return Err(format!("the zygote cannot read its requests: {e}").into()),
        };
        let request = Codec::MessagePack.decode::<Request>(&buf[..n]);
        let (request, stdio) = match (request, <[OwnedFd; 3]>::try_from(fds)) {
            (Ok(request), Ok(stdio)) => (request, stdio),
            (Err(e), _) => {
                answer(socket, &refused(format!("a malformed request: {e}")), None);
                continue;
            }
            (_, Err(fds)) => {
                let reason = format!("a request with {} descriptors, not 3", fds.len());
                answer(socket, &refused(reason), None);
                continue;
            }
        };
        let context = match &context {
            Ok(context) => context,
            Err(refusal) => {
                answer(socket, refusal, None);
                continue;
            }
        };
        match sys::fork_sibling(context) {
            Ok(Forked::Child) => {
                become_worker(master, stdio)?;
                return Ok(request.implementation);
            }
            Ok(Forked::Parent { pid, pidfd }) => {
                // The worker's descriptors are its own now.
                drop(stdio);
                answer(socket, &Reply::Forked { pid }, pidfd);
            }
            Err(e) => {
                let errno = e.raw_os_error();
                // A seccomp filter (or an old kernel) refusing this clone refuses every one.
                let unsupported = matches!(errno, Some(libc::ENOSYS | libc::EPERM | libc::EINVAL));
                let reply = Reply::Refused {
                    reason: format!("cannot fork: {e}"),
                    errno: errno.filter(|_| !unsupported),
                    unsupported,
                };
                answer(socket, &reply, None);
            }
        }
    }
}

fn refused(reason: String) -> Reply {
    Reply::Refused {
        reason,
        errno: None,
        unsupported: false,
    }
}

/// Whether this process can fork workers: what it needs to, or the answer that says why not.
fn readiness() -> Result<ForkContext, Reply> {
    // A fork copies only the calling thread: another one's locks would stay held for good in
    // every worker. The registry's contract (run_if_worker first in main) guarantees one thread.
    match std::fs::read_dir("/proc/self/task").map(Iterator::count) {
        Ok(1) => {}
        Ok(n) => {
            return Err(refused(format!(
                "the zygote has {n} threads, not 1: something in main started a thread before \
                 run_if_worker"
            )));
        }
        Err(e) => {
            return Err(Reply::Refused {
                reason: format!("cannot count the zygote's threads in /proc/self/task: {e}"),
                errno: None,
                unsupported: true,
            });
        }
    }
    ForkContext::new().map_err(|e| Reply::Refused {
        reason: e.to_string(),
        errno: None,
        unsupported: true,
    })
}

/// Sends `reply` to the master, with `pidfd` attached; a master that is gone ends the zygote.
fn answer(socket: BorrowedFd<'_>, reply: &Reply, pidfd: Option<OwnedFd>) {
    let Ok(bytes) = Codec::MessagePack.encode(reply) else {
        return;
    };
    let fds: Vec<BorrowedFd<'_>> = pidfd.iter().map(AsFd::as_fd).collect();
    if sys::send_with_fds(socket, &bytes, &fds).is_err() {
        std::process::exit(0);
    }
}

/// In a worker just forked: what a spawn would have done before `run_if_worker` (its own process
/// group, its standard descriptors, no blocked signal), and the parent-death signal armed first,
/// against the master, as an executed worker does first thing.
fn become_worker(master: u32, stdio: [OwnedFd; 3]) -> Result<(), BoxError> {
    if master != 0 && !sys::arm_parent_death_signal(master, libc::SIGKILL) {
        // The master died before we could ask to follow it: nobody is left to serve.
        std::process::exit(crate::EXIT_FAILURE);
    }
    sys::lead_own_group().map_err(|e| format!("cannot lead a process group: {e}"))?;
    for (target, fd) in stdio.iter().enumerate() {
        sys::dup_onto(fd.as_fd(), target as i32)
            .map_err(|e| format!("cannot set up descriptor {target}: {e}"))?;
    }
    // The copies go; the zygote's socket went with descriptor 0, and `run_if_worker` closes
    // anything else above 2.
    drop(stdio);
    sys::unblock_all_signals();
    Ok(())
}
