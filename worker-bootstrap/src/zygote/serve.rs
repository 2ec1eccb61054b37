//! The zygote's half of [`SpawnMode::Zygote`](crate::SpawnMode::Zygote): it serves fork
//! requests on its standard input, and each worker it forks returns from [`serve`] to run its
//! implementation. The master's half, and the messages both speak, are the parent module's.

use std::{
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

use worker_channel::Codec;
use worker_core::BoxError;

use super::{MAX_REQUEST, Reply, Request};
use crate::sys::{self, ForkContext, Forked, SharedSlot};

/// In a zygote: serves fork requests on standard input until the master closes it (then exits
/// with status 0); returns in each worker it forks, with the implementation that worker must
/// run, once the worker has armed its parent-death signal against `master`, taken a process group
/// of its own, and put its standard descriptors in place.
pub(crate) fn serve(master: u32) -> Result<String, BoxError> {
    let socket = sys::stdin();
    // What the master's descriptors without close-on-exec left here would otherwise stay open
    // (a file lock held, a pipe's end never closed) for as long as the zygote lives.
    worker_core::os::close_inherited_fds()
        .map_err(|e| format!("the zygote cannot close inherited descriptors: {e}"))?;
    let mut buf = vec![0u8; MAX_REQUEST];
    let slot = setup(socket, &mut buf)?;
    let context = readiness();
    loop {
        let (n, fds) = match sys::recv_with_fds(socket, &mut buf) {
            Ok(Some(message)) => message,
            // The master is gone, or let go: nothing more to serve.
            Ok(None) => std::process::exit(0),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                answer(socket, &refused(format!("a malformed request: {e}")));
                continue;
            }
            // The worker's descriptors did not fit in this process (its descriptor limit):
            // what a spawn says then.
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                let reply = Reply::Refused {
                    reason: format!("the zygote cannot take the worker's descriptors: {e}"),
                    errno: Some(libc::EMFILE),
                    unsupported: false,
                };
                answer(socket, &reply);
                continue;
            }
            Err(e) => return Err(format!("the zygote cannot read its requests: {e}").into()),
        };
        let request = Codec::MessagePack.decode::<Request>(&buf[..n]);
        let (implementation, stdio) = match (request, <[OwnedFd; 3]>::try_from(fds)) {
            (Ok(Request::Fork { implementation }), Ok(stdio)) => (implementation, stdio),
            (Ok(Request::Setup), _) => {
                answer(socket, &refused("a second setup".into()));
                continue;
            }
            (Err(e), _) => {
                answer(socket, &refused(format!("a malformed request: {e}")));
                continue;
            }
            (_, Err(fds)) => {
                let reason = format!("a request with {} descriptors, not 3", fds.len());
                answer(socket, &refused(reason));
                continue;
            }
        };
        let context = match &context {
            Ok(context) => context,
            Err(refusal) => {
                answer(socket, refusal);
                continue;
            }
        };
        match sys::fork_sibling(context, &slot) {
            Ok(Forked::Child) => {
                // The master's page goes with the zygote's socket: nothing of the zygote's
                // conversation stays in the worker.
                drop(slot);
                become_worker(master, stdio)?;
                return Ok(implementation);
            }
            Ok(Forked::Parent { pid }) => {
                // The worker's descriptors are its own now.
                drop(stdio);
                answer(socket, &Reply::Forked { pid });
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
                answer(socket, &reply);
            }
        }
    }
}

/// Reads the master's first message, which hands over the shared page, and maps it.
fn setup(socket: BorrowedFd<'_>, buf: &mut [u8]) -> Result<SharedSlot, BoxError> {
    let (n, fds) = match sys::recv_with_fds(socket, buf) {
        Ok(Some(message)) => message,
        Ok(None) => std::process::exit(0),
        Err(e) => return Err(format!("the zygote cannot read its setup: {e}").into()),
    };
    match (
        Codec::MessagePack.decode::<Request>(&buf[..n]),
        fds.as_slice(),
    ) {
        (Ok(Request::Setup), [fd]) => SharedSlot::map(fd.as_fd())
            .map_err(|e| format!("the zygote cannot map its master's page: {e}").into()),
        _ => Err("the zygote's first message is not its setup".into()),
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
    match sys::thread_count() {
        Ok(1) => {}
        Ok(n) => {
            return Err(refused(format!(
                "the zygote has {n} threads, not 1: something in main started a thread before \
                 run_if_worker"
            )));
        }
        Err(e) => {
            return Err(Reply::Refused {
                reason: format!("cannot count the zygote's threads: {e}"),
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

/// Sends `reply` to the master; a master that is gone ends the zygote.
fn answer(socket: BorrowedFd<'_>, reply: &Reply) {
    let Ok(bytes) = Codec::MessagePack.encode(reply) else {
        return;
    };
    if sys::send_with_fds(socket, &bytes, &[]).is_err() {
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
