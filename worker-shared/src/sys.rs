//! The operating system layer of the shared-worker server: every `unsafe` call of this crate
//! lives here, each through worker-core's one `syscall!` helper where a call can fail.

#![allow(unsafe_code)]

use std::{
    io, mem,
    net::SocketAddr,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
    sync::atomic::{AtomicI32, Ordering},
};

use worker_core::syscall;

/// The credentials of the process at the other end of a connected Unix socket, as the kernel
/// recorded them when it connected (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PeerCred {
    /// 0 when the peer is in another pid namespace.
    pub(crate) pid: i32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

pub(crate) fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<PeerCred> {
    // SAFETY: an all-zero ucred is a valid value for getsockopt to fill.
    let mut cred: libc::ucred = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given.
    syscall!(getsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_PEERCRED,
        (&mut cred as *mut libc::ucred).cast(),
        &mut len,
    ))?;
    Ok(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// This process's effective user id.
pub(crate) fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn new_socket(domain: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket takes plain integers.
    let fd = syscall!(socket(
        domain,
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        0
    ))?;
    // SAFETY: socket just returned this descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The longest Unix socket path, in bytes (`sun_path` less its terminating nul).
const MAX_UNIX_PATH: usize = 107;

/// Refuses a path that no Unix socket address can hold.
pub(crate) fn check_unix_path(path: &Path) -> io::Result<()> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() > MAX_UNIX_PATH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a unix socket path is at most {MAX_UNIX_PATH} bytes long"),
        ));
    }
    if bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a unix socket path contains no nul byte",
        ));
    }
    Ok(())
}

/// A listening Unix stream socket bound at `path`, non-blocking and close-on-exec, whose file
/// is never more open than `mode`.
///
/// The mode is set on the socket before it is bound: Linux creates the file with the socket's
/// mode (less the umask), so there is no moment when others may connect. The caller widens it
/// afterwards if the umask narrowed it.
pub(crate) fn bind_unix(path: &Path, mode: u32, backlog: i32) -> io::Result<OwnedFd> {
    check_unix_path(path)?;
    // SAFETY: an all-zero sockaddr_un is valid; the path is copied in below.
    let mut addr: libc::sockaddr_un = unsafe { mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = (mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1) as libc::socklen_t;
    let fd = new_socket(libc::AF_UNIX)?;
    // SAFETY: fchmod on a socket this function owns.
    syscall!(fchmod(fd.as_raw_fd(), mode as libc::mode_t))?;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    syscall!(bind(
        fd.as_raw_fd(),
        (&addr as *const libc::sockaddr_un).cast(),
        len
    ))?;
    // SAFETY: listen on a socket this function owns.
    syscall!(listen(fd.as_raw_fd(), backlog))?;
    Ok(fd)
}

/// A listening TCP socket bound at `addr` with `SO_REUSEADDR` (so a restart does not wait for
/// the old connections' `TIME_WAIT`), non-blocking and close-on-exec.
pub(crate) fn bind_tcp(addr: SocketAddr, backlog: i32) -> io::Result<OwnedFd> {
    // SAFETY: all-zero socket addresses are valid; the fields are filled in below.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let (domain, len) = match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any socket address.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            };
            (libc::AF_INET, mem::size_of::<libc::sockaddr_in>())
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: v6.ip().octets(),
            };
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_scope_id = v6.scope_id();
            (libc::AF_INET6, mem::size_of::<libc::sockaddr_in6>())
        }
    };
    let fd = new_socket(domain)?;
    let one: libc::c_int = 1;
    // SAFETY: `one` is a valid c_int for the option's size.
    syscall!(setsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        (&one as *const libc::c_int).cast(),
        mem::size_of::<libc::c_int>() as libc::socklen_t,
    ))?;
    // SAFETY: `storage` holds a valid socket address of `len` bytes.
    syscall!(bind(
        fd.as_raw_fd(),
        (&storage as *const libc::sockaddr_storage).cast(),
        len as libc::socklen_t
    ))?;
    // SAFETY: listen on a socket this function owns.
    syscall!(listen(fd.as_raw_fd(), backlog))?;
    Ok(fd)
}

/// The first descriptor systemd hands over (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// What socket activation handed this process.
#[derive(Debug)]
pub(crate) struct Activated {
    pub(crate) fd: OwnedFd,
    /// `AF_UNIX`, `AF_INET` or `AF_INET6`.
    pub(crate) domain: libc::c_int,
}

/// Takes the listener systemd's socket activation handed this process (descriptor 3), when
/// `LISTEN_PID` names this process and `LISTEN_FDS` is at least 1; `Ok(None)` otherwise.
/// Descriptors after the first are left alone: a shared worker serves one socket.
///
/// The variables are removed either way when they name this process, as `sd_listen_fds(1)`
/// does, so a child process does not take them for its own. Call it before other threads read
/// the environment.
pub(crate) fn take_activated_listener() -> io::Result<Option<Activated>> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        == Some(std::process::id());
    if !ours {
        return Ok(None);
    }
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: the caller runs this before other threads read the environment (the server
        // documents it for `SharedServer::bind`).
        unsafe { std::env::remove_var(name) };
    }
    if count == 0 {
        return Ok(None);
    }
    // SAFETY: fcntl only reads the descriptor's flags; EBADF says it is not open.
    let flags = syscall!(fcntl(LISTEN_FDS_START, libc::F_GETFD))?;
    // SAFETY: as above; the descriptor is ours from now on, and not to be inherited.
    syscall!(fcntl(
        LISTEN_FDS_START,
        libc::F_SETFD,
        flags | libc::FD_CLOEXEC
    ))?;
    // SAFETY: systemd handed this descriptor to this process (LISTEN_PID says so), nothing else
    // in it owns it, and it is open (fcntl succeeded).
    let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) };
    let int_option = |option| -> io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid for writes of the sizes given.
        syscall!(getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        ))?;
        Ok(value)
    };
    let not_a_listener = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptor 3 is not a listening stream socket",
        )
    };
    if int_option(libc::SO_TYPE).map_err(|_| not_a_listener())? != libc::SOCK_STREAM
        || int_option(libc::SO_ACCEPTCONN)? == 0
    {
        return Err(not_a_listener());
    }
    let domain = int_option(libc::SO_DOMAIN)?;
    if ![libc::AF_UNIX, libc::AF_INET, libc::AF_INET6].contains(&domain) {
        return Err(not_a_listener());
    }
    set_nonblocking(fd.as_raw_fd())?;
    Ok(Some(Activated { fd, domain }))
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns; flags only.
    let flags = syscall!(fcntl(fd, libc::F_GETFL))?;
    // SAFETY: as above.
    syscall!(fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    Ok(())
}

/// Sends one byte on a socket without blocking and without `SIGPIPE`, whatever the signal's
/// disposition; safe to call from a signal handler. Returns whether it was sent.
pub(crate) fn send_byte(fd: RawFd, byte: u8) -> bool {
    // SAFETY: send reads one byte from a live local; MSG_NOSIGNAL keeps a closed peer from
    // raising SIGPIPE, MSG_DONTWAIT from blocking (a full buffer already holds a wake-up).
    let sent = unsafe {
        libc::send(
            fd,
            (&byte as *const u8).cast(),
            1,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    sent == 1
}

/// Where the stop signals' handler writes: the stop line of the one server that handles them.
static STOP_FD: AtomicI32 = AtomicI32::new(-1);

/// The signals a server that owns its process's signals catches: SIGTERM and SIGINT stop it
/// gracefully; SIGHUP (a terminal that went away, or `kill -HUP`) is logged and ignored, as a
/// daemon must survive a hangup.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

extern "C" fn on_stop_signal(signal: libc::c_int) {
    // Only async-signal-safe calls here: an atomic load, `send`, and errno saved around them.
    // SAFETY: __errno_location returns this thread's errno, which is always valid.
    let errno = unsafe { *libc::__errno_location() };
    let fd = STOP_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        send_byte(fd, signal as u8);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// SIGTERM, SIGINT and SIGHUP write their number on a stop line while this lives; the previous
/// actions come back when it drops. A handler (unlike `SIG_IGN`) is reset by `exec`, so the
/// worker's own children start with the default actions.
#[derive(Debug)]
pub(crate) struct StopSignals {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl StopSignals {
    /// Makes SIGTERM, SIGINT and SIGHUP write their number to `fd`, which must stay open while the
    /// result lives; fails with `AlreadyExists` while another server of this process has them.
    pub(crate) fn install(fd: BorrowedFd<'_>) -> io::Result<StopSignals> {
        if STOP_FD
            .compare_exchange(-1, fd.as_raw_fd(), Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "another shared worker of this process already stops on SIGTERM and SIGINT",
            ));
        }
        let mut installed = StopSignals {
            previous: Vec::new(),
        };
        for signal in STOP_SIGNALS {
            // SAFETY: an all-zero sigaction is a valid value to fill in.
            let mut action: libc::sigaction = unsafe { mem::zeroed() };
            action.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            // SAFETY: `sa_mask` is a valid signal set to empty.
            unsafe { libc::sigemptyset(&mut action.sa_mask) };
            // SAFETY: as above, for the old action.
            let mut old: libc::sigaction = unsafe { mem::zeroed() };
            // SAFETY: both pointers are valid; the handler only makes async-signal-safe calls.
            // On failure `installed` drops, restoring what was set so far.
            syscall!(sigaction(signal, &action, &mut old))?;
            installed.previous.push((signal, old));
        }
        Ok(installed)
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        for (signal, old) in self.previous.drain(..) {
            // SAFETY: restores an action sigaction gave back earlier.
            unsafe { libc::sigaction(signal, &old, std::ptr::null_mut()) };
        }
        STOP_FD.store(-1, Ordering::SeqCst);
    }
}

/// A pidfd for process `pid` (Linux 5.3 and later), close-on-exec: any process of ours to
/// watch, not only a child.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this descriptor (close-on-exec by default), and it is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Waits until `fd` is readable (for a pidfd: its process has exited) or `deadline` passes;
/// returns whether it became readable. Interrupted waits are resumed.
pub(crate) fn wait_readable(
    fd: BorrowedFd<'_>,
    deadline: Option<std::time::Instant>,
) -> io::Result<bool> {
    Ok(worker_core::os::poll(&[(fd, true, false)], deadline)?.is_some())
}

/// Whether a process with id `pid` exists (`kill(pid, 0)`; one of another user counts), for
/// kernels without pidfds. A zombie counts too, until its parent reaps it.
pub(crate) fn process_exists(pid: u32) -> bool {
    // SAFETY: signal 0 sends nothing; kill only checks that the process exists.
    match syscall!(kill(pid as libc::pid_t, 0)) {
        Ok(_) => true,
        Err(e) => e.raw_os_error() == Some(libc::EPERM),
    }
}
