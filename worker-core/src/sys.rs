//! The operating system layer of the worker side: every `unsafe` call of this crate lives here.

// The operating system layer: the one place this crate may use `unsafe` (the workspace denies it).
#![allow(unsafe_code)]

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    time::Instant,
};

/// Runs a libc call that returns -1 on failure, giving `io::Result` of its value.
///
/// The one copy for the whole workspace (worker-bootstrap and worker-shared use it too, in
/// their own `sys` modules); an implementation detail, not part of the public API.
#[doc(hidden)]
#[macro_export]
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        // SAFETY: the caller of the macro states why the call is sound.
        let res = unsafe { $crate::__libc::$fn($($arg, )*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// Moves the channel to the master off the standard descriptors and returns its two ends
/// (reading, writing), both close-on-exec; [`take_stdio_channel`](crate::take_stdio_channel)
/// is its public face.
///
/// Afterwards descriptor 0 reads `/dev/null`, descriptor 1 writes where descriptor 2 does, and
/// every other descriptor the process inherited is closed.
pub(crate) fn take_stdio_fds() -> io::Result<(OwnedFd, OwnedFd)> {
    close_inherited_fds()?;
    // SAFETY (all fcntl/dup2/open calls below): plain descriptor calls on descriptors this process
    // owns; errors come back as -1 and are turned into io::Error.
    let input = syscall!(fcntl(0, libc::F_DUPFD_CLOEXEC, 3))?;
    // SAFETY: `fcntl` just returned this new descriptor, owned by nobody else.
    let input = unsafe { OwnedFd::from_raw_fd(input) };
    let output = syscall!(fcntl(1, libc::F_DUPFD_CLOEXEC, 3))?;
    // SAFETY: as above.
    let output = unsafe { OwnedFd::from_raw_fd(output) };
    let null = syscall!(open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC))?;
    // SAFETY: `open` just returned this new descriptor.
    let null = unsafe { OwnedFd::from_raw_fd(null) };
    redirect(&null, 0)?;
    syscall!(dup2(2, 1))?;
    Ok((input, output))
}

fn redirect(from: &OwnedFd, to: RawFd) -> io::Result<()> {
    syscall!(dup2(from.as_raw_fd(), to))?;
    Ok(())
}

/// Puts a descriptor in non-blocking mode, or back in blocking mode.
///
pub fn set_nonblocking(fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller borrows; flags only.
    let flags = syscall!(fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
    let flags = if nonblocking {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFL, flags))?;
    Ok(())
}

/// The most descriptors [`poll`] waits on at once: a worker's output, input and pidfd.
pub const MAX_POLL_FDS: usize = 3;

/// What [`poll`] found on one descriptor.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ready {
    /// Bytes, or the end of stream (for a pidfd: its process has exited).
    pub readable: bool,
    /// Room to write.
    pub writable: bool,
    /// Hang-up or error: the other end is gone.
    pub hangup: bool,
}

impl Ready {
    /// Whether a read would not block (data, end of stream, or an error to report).
    pub fn can_read(&self) -> bool {
        self.readable || self.hangup
    }
}

/// Waits until one of `fds` is ready for what is asked (`(fd, want_read, want_write)`), or until
/// `deadline`. Returns `Ok(None)` on timeout. Interrupted waits are resumed.
///
/// At most [`MAX_POLL_FDS`] descriptors: the arrays live on the stack, as this runs once per
/// blocking receive.
pub fn poll(
    fds: &[(BorrowedFd<'_>, bool, bool)],
    deadline: Option<Instant>,
) -> io::Result<Option<[Ready; MAX_POLL_FDS]>> {
    assert!(
        fds.len() <= MAX_POLL_FDS,
        "poll takes at most {MAX_POLL_FDS} descriptors"
    );
    let unused = libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    };
    let mut pollfds = [unused; MAX_POLL_FDS];
    for (slot, &(fd, r, w)) in pollfds.iter_mut().zip(fds) {
        slot.fd = fd.as_raw_fd();
        slot.events = (if r { libc::POLLIN } else { 0 }) | (if w { libc::POLLOUT } else { 0 });
    }
    let pollfds = &mut pollfds[..fds.len()];
    loop {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up, so a wait never ends early and spins.
                left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
            }
        };
        // SAFETY: `pollfds` is a live array of `pollfds.len()` entries.
        match syscall!(poll(
            pollfds.as_mut_ptr(),
            pollfds.len() as libc::nfds_t,
            timeout
        )) {
            Ok(0) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(None);
                }
            }
            Ok(_) => {
                let mut ready = [Ready::default(); MAX_POLL_FDS];
                for (r, p) in ready.iter_mut().zip(pollfds.iter()) {
                    r.readable = p.revents & libc::POLLIN != 0;
                    r.writable = p.revents & libc::POLLOUT != 0;
                    r.hangup = p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0;
                }
                return Ok(Some(ready));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// What `poll(2)` says of `fd` (asked for input) right now, without waiting.
///
/// The result is `poll(2)`'s `revents` bits (`libc::POLLIN`, `libc::POLLHUP`, ...).
pub fn poll_now(fd: BorrowedFd<'_>) -> io::Result<libc::c_short> {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one live pollfd.
        match syscall!(poll(&mut pollfd, 1, 0)) {
            Ok(_) => return Ok(pollfd.revents),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether a read of `fd` would not block now: bytes, the end of stream, or an error to report.
pub fn readable_now(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(poll_now(fd)? & (libc::POLLIN | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0)
}

/// Whether `fd` is a socket.
pub(crate) fn is_socket(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: an all-zero stat is a valid value for fstat to fill.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into a live, writable stat.
    syscall!(fstat(fd.as_raw_fd(), &mut stat)).is_ok()
        && stat.st_mode & libc::S_IFMT == libc::S_IFSOCK
}

/// Registers `fd` with the current tokio runtime's reactor, through a duplicate that the
/// returned [`AsyncFd`](tokio::io::unix::AsyncFd) owns (close-on-exec), so the registration
/// stays valid whatever becomes of `fd`: the one registration of the async faces of
/// worker-bootstrap and worker-shared (feature `tokio`).
///
/// # Panics
///
/// Outside a tokio runtime, or in one built without IO, as every tokio registration does.
#[cfg(feature = "tokio")]
pub fn register_async(
    fd: BorrowedFd<'_>,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    let fd = fd.try_clone_to_owned()?;
    // SAFETY: the `AsyncFd` owns `fd`, an `OwnedFd`: it stays open and names the same open file
    // description until the `AsyncFd` drops it, and its `as_raw_fd` always returns it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }
        .map_err(io::Error::from)
}

/// Writes to a socket without ever raising SIGPIPE: a peer that went away is `EPIPE`.
pub fn send_nosignal(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a live slice of `buf.len()` bytes; send only reads it.
        match syscall!(send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL
        )) {
            Ok(n) => return Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Closes every descriptor above 2, which the worker inherited by accident (a parent that did
/// not set close-on-exec).
///
/// [`take_stdio_channel`](crate::take_stdio_channel) calls it; a zygote calls it too, before it
/// forks any worker.
pub fn close_inherited_fds() -> io::Result<()> {
    // SAFETY: close_range only closes descriptors; nothing in this process refers to the ones
    // above 2 yet, as this runs before any worker code (or, in a zygote, before it serves).
    let res = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if res == 0 {
        return Ok(());
    }
    // Kernels before 5.9: list the open descriptors, then close them.
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: as above; the descriptor of the directory listing is already closed, and
        // closing an already closed descriptor only returns EBADF.
        unsafe { libc::close(fd) };
    }
    Ok(())
}
