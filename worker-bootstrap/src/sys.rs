//! The operating system layer of the bootstrap side: every `unsafe` call of this crate lives here.

// The operating system layer: the one place this crate may use `unsafe` (the workspace denies it).
#![allow(unsafe_code)]

use std::{
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::process::ExitStatusExt,
    },
    process::ExitStatus,
    time::Duration,
};

use worker_core::{os, syscall};

pub(crate) use worker_core::os::{MAX_POLL_FDS, poll};

/// Whether `fd` is readable right now (for a pidfd: whether its process has exited).
pub(crate) fn is_readable_now(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(os::poll_now(fd)? & libc::POLLIN != 0)
}

/// Whether the other end of pipe `fd` is gone: no process holds its writing end any more.
/// What is left to read does not matter.
pub(crate) fn is_hung_up(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(os::poll_now(fd)? & (libc::POLLHUP | libc::POLLERR) != 0)
}

/// A pipe, both ends close-on-exec: (reading end, writing end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two descriptors into a live array of two.
    syscall!(pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC))?;
    // SAFETY: the kernel just created both descriptors, and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The master's ends of a worker's channel: the worker's standard input and output, two pipes.
///
/// Our ends are non-blocking. A reading end of the worker's input is also kept open here (and
/// never read): the pipe then never loses its last reader while we write, so no write can raise
/// SIGPIPE, whatever the program did with that signal's disposition. A dead worker is seen
/// through its pidfd instead; a write to it fills the pipe, then waits, and the wait sees the
/// death. (A socket pair with `MSG_NOSIGNAL` would do the same, but costs 60 to 80 % more per
/// round trip than pipes on Linux 6.)
#[derive(Debug)]
pub(crate) struct Pipes {
    output: OwnedFd,
    /// The next read (only) goes to this descriptor: the worker's output through a description
    /// that blocks (see [`open_blocking`]).
    block_next: Option<RawFd>,
    /// `None` once closed, so the worker reads the end of its input.
    input: Option<OwnedFd>,
    _input_reader: OwnedFd,
}

/// The child's ends of its channel: its standard input and output.
#[derive(Debug)]
pub(crate) struct ChildEnds {
    pub(crate) stdin: OwnedFd,
    pub(crate) stdout: OwnedFd,
}

impl Pipes {
    /// Two pipes, all ends close-on-exec, ours non-blocking.
    pub(crate) fn new() -> io::Result<(Pipes, ChildEnds)> {
        let (stdin, input) = pipe()?;
        let (output, stdout) = pipe()?;
        os::set_nonblocking(input.as_fd(), true)?;
        os::set_nonblocking(output.as_fd(), true)?;
        let pipes = Pipes {
            output,
            block_next: None,
            input: Some(input),
            _input_reader: stdin.try_clone()?,
        };
        Ok((pipes, ChildEnds { stdin, stdout }))
    }

    /// Other descriptors for the same pipes.
    pub(crate) fn try_clone(&self) -> io::Result<Self> {
        Ok(Pipes {
            output: self.output.try_clone()?,
            block_next: None,
            input: self.input.as_ref().map(OwnedFd::try_clone).transpose()?,
            _input_reader: self._input_reader.try_clone()?,
        })
    }

    /// Closes the worker's input: it reads the end of its channel, and can still write.
    pub(crate) fn close_input(&mut self) {
        self.input = None;
    }

    /// Makes the next read (only) go to `blocking`, a description of the worker's output that
    /// blocks until bytes come or the output ends (`None`: the next read does not block).
    pub(crate) fn block_next_read(&mut self, blocking: Option<RawFd>) {
        self.block_next = blocking;
    }

    /// The reading end of the worker's output.
    pub(crate) fn output(&self) -> BorrowedFd<'_> {
        self.output.as_fd()
    }

    /// The writing end of the worker's input, until closed.
    pub(crate) fn input(&self) -> Option<BorrowedFd<'_>> {
        self.input.as_ref().map(AsFd::as_fd)
    }

    /// Reads and drops what the worker's output holds, until it would block or ends, or after
    /// [`DISCARD_READS`] reads (so a worker that streams without pause cannot hold the caller
    /// past its deadline); returns whether it ended.
    pub(crate) fn discard_output(&mut self) -> io::Result<bool> {
        let mut scratch = [0u8; 16 * 1024];
        for _ in 0..DISCARD_READS {
            match io::Read::read(self, &mut scratch) {
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                // The worker closed its end with our bytes unread: an end all the same.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(true),
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }
}

/// The most reads of one [`Pipes::discard_output`]: 1 MiB.
const DISCARD_READS: usize = 64;

/// The writing half of the channel: `BrokenPipe` once the worker's input is closed. The pipe
/// never loses its last reader meanwhile (see [`Pipes`]), so no write raises SIGPIPE.
impl io::Write for Pipes {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(input) = &self.input else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        // SAFETY: `buf` is a live slice of `buf.len()` bytes; write only reads it.
        syscall!(write(input.as_raw_fd(), buf.as_ptr().cast(), buf.len())).map(|n| n as usize)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The reading half of the channel: the worker's output.
impl io::Read for Pipes {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // The blocking description is its owner's until the handle ends, and it is set for one
        // read of that handle's: still open here.
        let fd = self.block_next.take().unwrap_or(self.output.as_raw_fd());
        // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes.
        syscall!(read(fd, buf.as_mut_ptr().cast(), buf.len())).map(|n| n as usize)
    }
}

/// Opens the pipe `fd` reads anew, through `/proc/self/fd`, as a reading description of its
/// own that blocks (`fd`'s stays non-blocking for the event loops), so that a blocking receive
/// can read without asking `poll` first. Fails without `/proc`, or without a descriptor to
/// spare.
pub(crate) fn open_blocking(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // Opened non-blocking, which never waits for a writer, then made blocking.
    let blocking = reopen_pipe(fd, false)?;
    os::set_nonblocking(blocking.as_fd(), false)?;
    Ok(blocking)
}

/// Opens the pipe `fd` names anew through `/proc/self/fd`, close-on-exec and non-blocking, for
/// reading or (with `write`) for writing: a new open file description of the same pipe. For
/// writing it fails with `ENXIO` when nobody reads the pipe any more.
pub(crate) fn reopen_pipe(fd: BorrowedFd<'_>, write: bool) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let pipe = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    Ok(pipe.into())
}

/// A pidfd for process `pid` (Linux 5.3 and later), close-on-exec: a child, or any process to
/// watch (see [`crate::ProcessWatch`]).
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this descriptor (close-on-exec by default) and it is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends `signal` to the process a pidfd refers to: never to another process that reused its
/// pid. A process already gone is not an error.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: pidfd_send_signal takes a descriptor, a signal number, a null siginfo and flags.
    let res = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if res < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(())
}

/// Which child [`wait_child`] asks about.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ChildId<'a> {
    /// Through a pidfd: immune to pid reuse (Linux 5.4 and later).
    Pidfd(BorrowedFd<'a>),
    /// Through its pid, for older kernels.
    Pid(u32),
}

/// What [`wait_child`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChildState {
    /// Still running.
    Running,
    /// Exited with this status (reaped if asked to, else still a zombie).
    Exited(ExitStatus),
    /// Not a child of ours any more: someone else reaped it (or the kernel did, with SIGCHLD
    /// ignored), and its exit status is lost.
    Gone,
}

/// `waitid` on one child, without blocking: `reap` takes the zombie, otherwise it is left for a
/// later call (`WNOWAIT`), so its pid and process group id stay reserved.
pub(crate) fn wait_child(child: ChildId<'_>, reap: bool) -> io::Result<ChildState> {
    let (idtype, id) = match child {
        ChildId::Pidfd(fd) => (libc::P_PIDFD, fd.as_raw_fd() as libc::id_t),
        ChildId::Pid(pid) => (libc::P_PID, pid as libc::id_t),
    };
    let flags = libc::WEXITED | libc::WNOHANG | if reap { 0 } else { libc::WNOWAIT };
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t.
        match syscall!(waitid(idtype, id, &mut info, flags)) {
            Ok(_) => {
                // SAFETY: waitid filled `info`; si_pid is 0 when the child has not changed state.
                if unsafe { info.si_pid() } == 0 {
                    return Ok(ChildState::Running);
                }
                // SAFETY: as above; for CLD_* codes si_status is the exit code or signal.
                let status = unsafe { info.si_status() };
                let raw = match info.si_code {
                    libc::CLD_EXITED => (status & 0xff) << 8,
                    libc::CLD_DUMPED => (status & 0x7f) | 0x80,
                    _ => status & 0x7f,
                };
                return Ok(ChildState::Exited(ExitStatus::from_raw(raw)));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return Ok(ChildState::Gone),
            Err(e) => return Err(e),
        }
    }
}

/// The kernel's flag of a task that is exiting (`PF_EXITING` in `linux/sched.h`).
const PF_EXITING: u64 = 0x4;

/// Whether the kernel is tearing process `pid` down: it called `exit` or was killed, and its
/// descriptors are being closed, but it is not a zombie yet. Read from `/proc/<pid>/stat`
/// (the flags field); `false` when that cannot be read.
pub(crate) fn is_exiting(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    // After it: state ppid pgrp session tty_nr tpgid flags.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_ascii_whitespace().nth(6))
        .and_then(|flags| flags.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_EXITING != 0)
}

/// Sends SIGKILL to process group `pgid`; a group that no longer exists is not an error.
pub(crate) fn kill_group(pgid: u32) -> io::Result<()> {
    // SAFETY: killpg only sends a signal.
    match syscall!(killpg(pgid as libc::pid_t, libc::SIGKILL)) {
        Err(e) if e.raw_os_error() != Some(libc::ESRCH) => Err(e),
        _ => Ok(()),
    }
}

/// Sends `signal` to process `pid`; a process that no longer exists is not an error. Only for
/// a child known unreaped (its pid is then still its own).
pub(crate) fn kill_pid(pid: u32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill only sends a signal.
    match syscall!(kill(pid as libc::pid_t, signal)) {
        Err(e) if e.raw_os_error() != Some(libc::ESRCH) => Err(e),
        _ => Ok(()),
    }
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

/// This process's id.
pub(crate) fn getpid() -> u32 {
    std::process::id()
}

/// A path to the running image of this process (`/proc/self/exe`), which stays executable after
/// the file on disk was deleted or replaced (a deploy that upgrades the binary in place); `None`
/// without procfs.
pub(crate) fn running_image() -> Option<std::path::PathBuf> {
    const SELF_EXE: &str = "/proc/self/exe";
    std::path::Path::new(SELF_EXE)
        .exists()
        .then(|| SELF_EXE.into())
}

/// How many threads this process has (`/proc/self/task`).
pub(crate) fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// In a worker: asks for SIGKILL when the parent dies, then checks that the parent is still the
/// process that started us, closing the race where it died before the request.
/// Returns whether the parent is still there.
pub(crate) fn arm_parent_death_signal(expected_parent: u32, signal: libc::c_int) -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl(PR_SET_PDEATHSIG) only records a signal number for this process.
        let _ = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) };
    }
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    parent as u32 == expected_parent
}

/// Sets the process's file mode creation mask.
pub(crate) fn set_umask(mask: u32) {
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(mask as libc::mode_t) };
}

/// Removes a variable from this process's environment.
///
/// Only called at the very start of a worker process, from `run_if_worker`, which the
/// documentation requires to be the first thing in `main`, before any other thread exists (or
/// from `enable_test_support!`, before `main`).
pub(crate) fn remove_env(name: &str) {
    // SAFETY: single-threaded at this point (see above), so no other thread reads the
    // environment concurrently.
    unsafe { std::env::remove_var(name) };
}

/// Ignores SIGPIPE, as Rust's runtime does before `main`: for a worker that starts before
/// `main` (`enable_test_support!`), so that it behaves as one started from `main` would.
pub(crate) fn ignore_sigpipe() {
    // SAFETY: SIG_IGN installs no handler; signal() only changes the disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// How long an evented worker may take to finish once its master died, before it is killed
/// whatever its signal dispositions.
pub(crate) const PARENT_DEATH_GRACE: Duration = Duration::from_secs(1);

/// In an evented worker: a watchdog thread that kills this process `grace` after its master
/// (`expected_parent`) died. It waits on the master's pidfd, so it does not depend on any signal
/// the worker may ignore or block; on kernels without pidfd it checks the parent every 100 ms.
pub(crate) fn kill_after_parent_death(expected_parent: u32, grace: Duration) -> io::Result<()> {
    // A pidfd opened after the master died could name a process that reused its pid: it is
    // trusted only when the master is still our parent once it is open.
    let pidfd = pidfd_open(expected_parent).ok();
    let pidfd = pidfd.filter(|_| parent_is(expected_parent));
    std::thread::Builder::new()
        .name("exsyst-worker-watchdog".into())
        .spawn(move || {
            match &pidfd {
                Some(pidfd) => {
                    let _ = poll(&[(pidfd.as_fd(), true, false)], None);
                }
                None => {
                    while parent_is(expected_parent) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
            std::thread::sleep(grace);
            // SAFETY: kill only sends a signal, SIGKILL to this process, which no disposition
            // or mask can stop.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        })?;
    Ok(())
}

/// Whether this process's parent is `pid`.
fn parent_is(pid: u32) -> bool {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() as u32 == pid }
}

/// Which side of [`detach`] returned.
#[derive(Debug)]
pub(crate) enum Detached {
    /// The daemon: not a session or group leader, in a session of its own.
    Daemon,
    /// The process that started the daemon, which should exit now.
    Starter,
}

/// Leaves this process's session (`setsid`, so the caller must not lead a process group), then
/// forks: the daemon is the child, which cannot acquire a controlling terminal, and is adopted by
/// init (or a subreaper) once the parent exits.
///
/// Only called from `run_if_worker`, which the documentation requires to be the first thing in
/// `main`, before any other thread exists: forking a single-threaded process is sound.
pub(crate) fn detach() -> io::Result<Detached> {
    // SAFETY: setsid only changes this process's session.
    syscall!(setsid())?;
    // SAFETY: single-threaded at this point (see above); the child goes on running Rust code.
    match syscall!(fork())? {
        0 => Ok(Detached::Daemon),
        _ => Ok(Detached::Starter),
    }
}

/// Closes a descriptor whose owner was forgotten on purpose (the channel's writing end, kept
/// open until exit by design).
pub(crate) fn close(fd: RawFd) {
    // SAFETY: nothing owns `fd` any more (its owner was forgotten); closing it twice would only
    // return EBADF.
    unsafe { libc::close(fd) };
}

/// How long a worker that got SIGTERM may take to finish before SIGALRM ends it.
const TERM_GRACE_SECS: libc::c_uint = 1;

extern "C" fn on_sigterm(_: libc::c_int) {
    // SAFETY: alarm is async-signal-safe. The worker's loop notices its master is gone through
    // the end of its channel; this only bounds how long that may take.
    unsafe { libc::alarm(TERM_GRACE_SECS) };
}

/// For workers that can finish on their own: SIGTERM (from the parent-death signal, or anyone)
/// gives them [`TERM_GRACE_SECS`] to see their channel end and exit, after which SIGALRM's
/// default action ends them.
pub(crate) fn graceful_parent_death(expected_parent: u32) -> io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid value to fill in.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigterm as *const () as libc::sighandler_t;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: `action` is initialised, its handler only calls an async-signal-safe function, and
    // a null old-action pointer is allowed.
    syscall!(sigaction(libc::SIGTERM, &action, std::ptr::null_mut()))?;
    if expected_parent != 0 && !arm_parent_death_signal(expected_parent, libc::SIGTERM) {
        // The master died before the softer signal was armed: behave as if it arrived.
        on_sigterm(libc::SIGTERM);
    }
    Ok(())
}

/// Runs `f` (a write to a pipe whose reader may be gone) with SIGPIPE blocked on this thread,
/// then takes back a SIGPIPE the write raised, so that it fails with `EPIPE` instead of killing
/// the process whatever SIGPIPE's disposition is (a program may have restored the default).
pub(crate) fn without_sigpipe<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: an all-zero sigset_t is valid storage for sigemptyset to initialise.
    let mut pipe: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigemptyset and sigaddset only write the live set they are given.
    unsafe {
        libc::sigemptyset(&mut pipe);
        libc::sigaddset(&mut pipe, libc::SIGPIPE);
        libc::sigemptyset(&mut old);
        libc::sigemptyset(&mut pending);
    }
    // SAFETY: both sets are live; pthread_sigmask returns an error number, never -1.
    let blocked = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &pipe, &mut old) } == 0;
    // A SIGPIPE already pending before the write is someone else's: it stays.
    // SAFETY: sigpending writes the live set; sigismember reads it.
    let was_pending = blocked
        && syscall!(sigpending(&mut pending)).is_ok()
        && unsafe { libc::sigismember(&pending, libc::SIGPIPE) } == 1;
    let result = f();
    if blocked {
        if !was_pending {
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: a live set and timeout; a null siginfo is allowed. EAGAIN (none
            // pending) is the usual answer.
            let _ = syscall!(sigtimedwait(&pipe, std::ptr::null_mut(), &zero));
        }
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    }
    result
}

/// Puts `$function` (an `extern "C" fn()` that never unwinds) in this executable's table of
/// constructors, at `$section` (`.init_array.NNNNN`): the loader calls it before `main`, lower
/// priorities first, after the C library and Rust's own (priority 99) are set up.
///
/// This is what `enable_test_support!` expands to in the user's crate, by hand rather than
/// through the `ctor` crate: `ctor`'s expansion carries `#[allow(unsafe_code)]`, which a crate
/// with `#![forbid(unsafe_code)]` refuses (E0453), whereas the lint does not look into the
/// expansion of another crate's macro. ELF targets only (every target whose loader runs
/// `.init_array`), which is where workers run.
#[doc(hidden)]
#[macro_export]
macro_rules! __before_main {
    ($section:literal, $function:path) => {
        #[cfg(not(any(
            target_os = "linux",
            target_os = "android",
            target_os = "freebsd",
            target_os = "netbsd",
            target_os = "openbsd",
            target_os = "dragonfly",
            target_os = "illumos",
        )))]
        compile_error!("enable_test_support! needs an ELF target, whose loader runs .init_array");
        // SAFETY: `.init_array.N` sections hold pointers to functions the loader calls with
        // (argc, argv, envp) before `main`; a C function taking nothing ignores them, and
        // `$function` never unwinds (it catches panics). `#[used]` keeps it through link-time
        // garbage collection.
        #[used]
        #[unsafe(link_section = $section)]
        static CONSTRUCTOR: extern "C" fn() = $function;
    };
}

// The zygote (`SpawnMode::Zygote`): its socket, and the fork of a worker.

/// Whether this build can fork workers from a zygote: Linux with glibc (whose fork the zygote
/// reproduces, see [`ForkContext`]), on an architecture whose `clone(2)` takes the child's
/// thread-id address as its fourth or fifth argument (not s390's or microblaze's order).
///
/// Not musl: it tells the kernel to write a thread's id into a lock word of its own
/// (`set_tid_address(&__thread_list_lock)`), not into its thread record, and its `fork` sets the
/// record's id by hand in the child. A raw clone cannot reach that record (its layout is
/// private), and a worker left with its zygote's id would send `raise`'s and `abort`'s signals
/// to the zygote. ([`ForkContext::new`] refuses it at run time too: the word the kernel reports
/// does not hold the thread's id.)
pub(crate) const ZYGOTE_SUPPORTED: bool = cfg!(all(
    target_os = "linux",
    target_env = "gnu",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "x86",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "loongarch64",
        target_arch = "powerpc64",
    )
));

/// The most descriptors one zygote message carries: a worker's standard input, output and error.
pub(crate) const MAX_PASSED_FDS: usize = 3;

/// A connected pair of Unix sequenced-packet sockets, both close-on-exec: each message keeps its
/// boundaries, carries descriptors, and a peer that is gone is seen as the end of the stream.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: socketpair writes two descriptors into a live array of two.
    syscall!(socketpair(
        libc::AF_UNIX,
        libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
        0,
        fds.as_mut_ptr()
    ))?;
    // SAFETY: the kernel just created both descriptors, and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Room for the control message of [`MAX_PASSED_FDS`] descriptors, aligned for `cmsghdr`.
#[repr(C)]
union ControlBuffer {
    _align: libc::cmsghdr,
    bytes: [u8; 64],
}

impl ControlBuffer {
    fn new() -> Self {
        ControlBuffer { bytes: [0; 64] }
    }
}

/// Sends `bytes` as one message on a sequenced-packet socket, with `fds` attached
/// (`SCM_RIGHTS`), without ever raising SIGPIPE: a peer that is gone is `EPIPE`.
pub(crate) fn send_with_fds(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    assert!(
        fds.len() <= MAX_PASSED_FDS,
        "at most {MAX_PASSED_FDS} descriptors"
    );
    let mut control = ControlBuffer::new();
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is a valid value to fill in.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let data_len = std::mem::size_of_val(fds) as libc::c_uint;
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
        // SAFETY: `control` is a union of plain bytes; the field is always initialised.
        let buffer = unsafe { &mut control.bytes };
        debug_assert!(space <= buffer.len());
        msg.msg_control = buffer.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` writable bytes aligned for cmsghdr, enough for
        // one header and `fds.len()` descriptors; CMSG_FIRSTHDR returns its start.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&msg);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(data_len) as _;
            let data = libc::CMSG_DATA(header).cast::<libc::c_int>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: `msg` points at live buffers (the payload, the control message) for the call.
        match syscall!(sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Receives one message from a sequenced-packet socket into `buf`: its length and the
/// descriptors attached (owned, close-on-exec); `Ok(None)` at the end of the stream (the peer is
/// gone). A message longer than `buf`, or with more than [`MAX_PASSED_FDS`] descriptors, is an
/// `InvalidData` error, its descriptors closed; descriptors that this process cannot take (at
/// its descriptor limit) make it an `EMFILE` error.
pub(crate) fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut control = ControlBuffer::new();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid value to fill in.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: `control` is a union of plain bytes; the field is always initialised.
    let buffer = unsafe { &mut control.bytes };
    msg.msg_control = buffer.as_mut_ptr().cast();
    msg.msg_controllen = buffer.len() as _;
    let n = loop {
        // SAFETY: `msg` points at live, writable buffers for the call.
        match syscall!(recvmsg(
            socket.as_raw_fd(),
            &mut msg,
            libc::MSG_CMSG_CLOEXEC
        )) {
            Ok(n) => break n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => return Ok(None),
            Err(e) => return Err(e),
        }
    };
    let mut fds = Vec::new();
    // SAFETY: recvmsg filled `msg` and the control buffer it points at; CMSG_FIRSTHDR and
    // CMSG_NXTHDR walk the headers within msg_controllen, and each SCM_RIGHTS payload holds
    // descriptors the kernel just installed in this process, owned by nobody else.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&msg);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header).cast::<libc::c_int>();
                let len = (*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<libc::c_int>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            header = libc::CMSG_NXTHDR(&msg, header);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 && msg.msg_flags & libc::MSG_TRUNC == 0 {
        // The buffer holds a dozen descriptors, and no peer of ours sends more than three: the
        // kernel could not install them, this process being at its descriptor limit.
        return Err(io::Error::from_raw_os_error(libc::EMFILE));
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 || fds.len() > MAX_PASSED_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a message too long, or with too many descriptors",
        ));
    }
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some((n, fds)))
}

/// `PR_GET_TID_ADDRESS` (`linux/prctl.h`), which the libc crate does not name on glibc.
const PR_GET_TID_ADDRESS: libc::c_int = 40;

/// What the zygote needs to fork a worker as glibc's `fork` would, learnt once in the zygote.
///
/// glibc keeps each thread's id in its thread control block and hands that field's address to
/// the kernel (`set_tid_address`) when the thread starts; its `fork` asks the kernel to write the
/// child's id there (`CLONE_CHILD_SETTID`), so that `pthread_self()`'s id is the child's own, and
/// registers the child's robust-futex list again (the kernel drops it on fork). The zygote
/// cannot call glibc's `fork` (it has no `CLONE_PARENT`), so it does both itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ForkContext {
    tid_address: usize,
    robust_head: usize,
    robust_len: usize,
}

impl ForkContext {
    /// Learns the thread-id address (checking that it holds this thread's id, as glibc's does)
    /// and the robust-list head of the calling thread, the zygote's only one.
    pub(crate) fn new() -> io::Result<Self> {
        if !ZYGOTE_SUPPORTED {
            return Err(io::ErrorKind::Unsupported.into());
        }
        let mut address: *mut libc::c_int = std::ptr::null_mut();
        // SAFETY: PR_GET_TID_ADDRESS writes one pointer into the live location given.
        syscall!(prctl(
            PR_GET_TID_ADDRESS,
            &mut address as *mut *mut libc::c_int as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong
        ))?;
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        // SAFETY: the kernel reports the address this thread gave `set_tid_address`, which libc
        // did at start, inside memory that lives as long as the thread (glibc: the thread
        // control block's id field; another libc: a word of its own); reading it is sound.
        let holds_tid = !address.is_null() && unsafe { address.read_volatile() } == tid;
        if !holds_tid {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the C library does not keep the thread id where the kernel writes it",
            ));
        }
        let mut head: *mut libc::c_void = std::ptr::null_mut();
        let mut len: libc::size_t = 0;
        // SAFETY: get_robust_list writes a pointer and a length into the live locations given.
        let res = unsafe {
            libc::syscall(
                libc::SYS_get_robust_list,
                0 as libc::c_long,
                &mut head as *mut *mut libc::c_void,
                &mut len as *mut libc::size_t,
            )
        };
        if res != 0 {
            head = std::ptr::null_mut();
            len = 0;
        }
        Ok(ForkContext {
            tid_address: address as usize,
            robust_head: head as usize,
            robust_len: len,
        })
    }
}

/// Which side of [`fork_sibling`] returned.
#[derive(Debug)]
pub(crate) enum Forked {
    /// The new process.
    Child,
    /// The zygote, with the new process's id.
    Parent { pid: u32 },
}

/// Forks this process into a *sibling*: a child of this process's parent (`CLONE_PARENT`), so
/// that the master that started the zygote gets the new worker as its own child (it takes its
/// pidfd, reaps it, gets its exit status, and the worker's parent-death signal follows the
/// master's spawner thread). Done as glibc's `fork` does it otherwise (see [`ForkContext`]),
/// without running `pthread_atfork` handlers.
///
/// The kernel writes the new process's id into `slot` (`CLONE_PARENT_SETTID`), memory the
/// master shares, before the new process runs and before this call returns: whenever the
/// zygote is killed, its master learns of every worker it forked. (A pidfd from the clone would
/// take the same argument, and the master opens its own.)
///
/// Only called in the zygote, which checked that it has a single thread: forking a
/// single-threaded process is sound, and the child goes on running Rust code.
pub(crate) fn fork_sibling(context: &ForkContext, slot: &SharedSlot) -> io::Result<Forked> {
    let flags = libc::CLONE_PARENT
        | libc::CLONE_PARENT_SETTID
        | libc::CLONE_CHILD_SETTID
        | libc::CLONE_CHILD_CLEARTID
        | libc::SIGCHLD;
    let tid = context.tid_address as *mut libc::c_int;
    // SAFETY: no CLONE_VM: the child gets a copy of this single-threaded process, running on a
    // copy of this stack (a null stack pointer), as after fork. The parent's thread-id address
    // (the third argument on every supported architecture) is the shared slot's word, mapped
    // for as long as `slot` lives; the child's thread-id address is this thread's own (checked
    // in `ForkContext::new`), where the kernel writes the child's id in the child's copy. It is
    // passed as both the fourth and the fifth argument, whichever the architecture reads as the
    // child's thread-id address (the other is the TLS pointer, unused without CLONE_SETTLS).
    let res = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags as libc::c_ulong,
            0 as libc::c_ulong,
            slot.word.as_ptr(),
            tid,
            tid,
        )
    };
    if res < 0 {
        return Err(io::Error::last_os_error());
    }
    if res == 0 {
        if context.robust_head != 0 {
            // SAFETY: the robust list head is this thread's own (the child's copy of it), as
            // glibc registers it again after fork; a failure only loses robust-mutex cleanup.
            unsafe {
                libc::syscall(
                    libc::SYS_set_robust_list,
                    context.robust_head as *mut libc::c_void,
                    context.robust_len,
                )
            };
        }
        return Ok(Forked::Child);
    }
    Ok(Forked::Parent { pid: res as u32 })
}

/// A word of memory shared by a master and its zygote (a page of a `memfd`, mapped by both),
/// where the kernel writes the id of each worker the zygote forks (see [`fork_sibling`]).
#[derive(Debug)]
pub(crate) struct SharedSlot {
    word: std::ptr::NonNull<std::sync::atomic::AtomicU32>,
}

// SAFETY: the slot is a word of shared memory only ever accessed atomically; the mapping lives
// until the value is dropped, whichever thread drops it.
unsafe impl Send for SharedSlot {}
// SAFETY: as above: every access is atomic.
unsafe impl Sync for SharedSlot {}

/// The size of a [`SharedSlot`]'s mapping: one page on every supported architecture (the
/// kernel rounds it up where pages are larger).
const SLOT_MAP_LEN: usize = 4096;

impl SharedSlot {
    /// A new slot, zero, and the descriptor to hand the zygote (close-on-exec) so that it maps
    /// the same memory.
    pub(crate) fn create() -> io::Result<(SharedSlot, OwnedFd)> {
        // SAFETY: memfd_create takes a NUL-terminated name and flags, and returns a new
        // descriptor or -1.
        let fd = syscall!(memfd_create(
            c"exsyst-worker-zygote".as_ptr(),
            libc::MFD_CLOEXEC
        ))?;
        // SAFETY: the kernel just created this descriptor, and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate only sizes the file behind a descriptor we own.
        syscall!(ftruncate(fd.as_raw_fd(), SLOT_MAP_LEN as libc::off_t))?;
        let slot = SharedSlot::map(fd.as_fd())?;
        Ok((slot, fd))
    }

    /// Maps the slot that `fd` (from [`create`](Self::create)) holds.
    pub(crate) fn map(fd: BorrowedFd<'_>) -> io::Result<SharedSlot> {
        // SAFETY: a new shared mapping of one page of the file, at an address the kernel
        // chooses; nothing else in this process refers to it.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SLOT_MAP_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Kept in memory (best effort: RLIMIT_MEMLOCK may refuse), so that the kernel's write
        // of a worker's id, as the zygote forks it, cannot be lost to a page fault that a kill
        // interrupts.
        // SAFETY: mlock only pins the page just mapped.
        let _ = unsafe { libc::mlock(address, SLOT_MAP_LEN) };
        let word = std::ptr::NonNull::new(address.cast()).ok_or(io::ErrorKind::Other)?;
        Ok(SharedSlot { word })
    }

    fn atomic(&self) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: the mapping is page-aligned, readable and writable, and lives as long as
        // `self`; it is only ever accessed atomically.
        unsafe { self.word.as_ref() }
    }

    /// The pid the kernel wrote, 0 when none since the last [`clear`](Self::clear).
    pub(crate) fn load(&self) -> u32 {
        self.atomic().load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Sets the slot to 0, before a request.
    pub(crate) fn clear(&self) {
        self.atomic().store(0, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for SharedSlot {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value made, which nothing refers to any more.
        unsafe { libc::munmap(self.word.as_ptr().cast(), SLOT_MAP_LEN) };
    }
}

/// A process-wide value that a process forked from this one does not inherit: the fork gets a
/// fresh one on first use, and the value its parent had (with any lock another thread held
/// across the fork, for good) is left untouched, and leaked.
///
/// Without it, a `Mutex` in a static that another thread holds when the program forks stays
/// locked for ever in the child, which then hangs on it: no `pthread_atfork` handler is needed.
pub(crate) struct ForkLocal<T: 'static> {
    current: std::sync::atomic::AtomicPtr<(u32, T)>,
    init: fn() -> T,
}

impl<T: Send + Sync + 'static> ForkLocal<T> {
    /// A value made by `init` on first use in each process.
    pub(crate) const fn new(init: fn() -> T) -> Self {
        ForkLocal {
            current: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
            init,
        }
    }

    /// This process's value.
    pub(crate) fn get(&self) -> &'static T {
        use std::sync::atomic::Ordering;
        let me = getpid();
        loop {
            let current = self.current.load(Ordering::Acquire);
            // SAFETY: a published pointer comes from `Box::into_raw` below and is never freed.
            if let Some((owner, value)) = unsafe { current.as_ref() }
                && *owner == me
            {
                return value;
            }
            let fresh = Box::into_raw(Box::new((me, (self.init)())));
            match self
                .current
                .compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire)
            {
                // SAFETY: just published, never freed; the parent's value is leaked.
                Ok(_) => return unsafe { &(*fresh).1 },
                Err(_) => {
                    // Another thread of this process published first: use its value.
                    // SAFETY: `fresh` was never published, so this is its only owner.
                    drop(unsafe { Box::from_raw(fresh) });
                }
            }
        }
    }
}

/// Puts the calling process in a new process group of its own (its pgid becomes its pid).
pub(crate) fn lead_own_group() -> io::Result<()> {
    // SAFETY: setpgid only changes this process's group.
    syscall!(setpgid(0, 0)).map(drop)
}

/// Puts child `pid` in a new process group of its own, as it does itself: whichever comes
/// first, the group exists once both returned. A child that is gone already is not an error.
pub(crate) fn put_in_own_group(pid: u32) {
    // SAFETY: setpgid only changes the group of a child of ours.
    let _ = syscall!(setpgid(pid as libc::pid_t, pid as libc::pid_t));
}

/// Makes `fd` descriptor `target` too (not close-on-exec), as a spawn does for the standard
/// descriptors.
pub(crate) fn dup_onto(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    if fd.as_raw_fd() == target {
        // dup2 onto itself would leave close-on-exec set.
        // SAFETY: fcntl on a descriptor the caller borrows; flags only.
        syscall!(fcntl(target, libc::F_SETFD, 0))?;
        return Ok(());
    }
    // SAFETY: dup2 only replaces descriptor `target`, which the caller means to replace.
    syscall!(dup2(fd.as_raw_fd(), target)).map(drop)
}

/// Unblocks every signal of the calling thread, as a spawn's child starts.
pub(crate) fn unblock_all_signals() {
    // SAFETY: an all-zero sigset_t is valid storage for sigemptyset to initialise.
    let mut empty: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigemptyset writes the live set; pthread_sigmask reads it.
    unsafe {
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// This process's standard input, borrowed (the zygote's request socket).
pub(crate) fn stdin() -> BorrowedFd<'static> {
    // SAFETY: descriptor 0 stays open for the life of the zygote, which borrows it only.
    unsafe { BorrowedFd::borrow_raw(0) }
}

/// This process's standard error, borrowed (passed to a worker whose standard error is the
/// master's, as a spawn lets the child inherit it).
pub(crate) fn stderr() -> BorrowedFd<'static> {
    // SAFETY: borrowed for one send only, as std's `Stdio::inherit` leaves descriptor 2 to the
    // child whatever it is; a closed one makes the send fail with EBADF.
    unsafe { BorrowedFd::borrow_raw(2) }
}
