//! Starting a shared worker when the first master finds it absent, and stopping it for good
//! (see the crate documentation, "Starting on demand").

use std::{
    fs::{self, DirBuilder, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use worker_bootstrap::{BootstrapProfile, ProcessWatch};
use worker_core::{deadline_after, time_left};
use worker_killswitch::{Address, KillSwitch, KillSwitchLock, LockFile};

use crate::{
    AdminCookie, DEFAULT_CONTROL_TIMEOUT, Error, SharedServerConfig, SharedWorker, StartReport,
    address, daemon_extensions, listener, local, sys,
};

/// How long a start waits for the daemon to say that it listens (its constructor included),
/// unless told otherwise.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stop waits for the worker to acknowledge and, when local, to exit, unless told
/// otherwise: longer than a server's default drain deadline (10 s).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Makes sure the shared worker at `address` runs, starting it if nothing listens there, and
/// returns its pid: that of the running worker, or of the daemon just started (start is
/// idempotent). Waits at most [`DEFAULT_START_TIMEOUT`] for a daemon to listen.
///
/// `implementation` is the name the worker executable registered the implementation under
/// (`registry().shared::<W>()` uses `W::NAME`); `profile` says which executable that is, its
/// environment, working directory, constructor arguments, codec, kill switch and output path;
/// `config` is the server's configuration. The daemon's admin cookie is `config`'s, or else the
/// profile's ([`with_admin_cookie`](BootstrapProfile::with_admin_cookie) or
/// [`with_admin_cookie_file`](BootstrapProfile::with_admin_cookie_file)); without one it can
/// be stopped only by a signal.
///
/// See the [crate documentation](crate#starting-on-demand) for the steps, the locks and their order.
///
/// ```no_run
/// use worker_bootstrap::BootstrapProfile;
/// use worker_shared::{SharedServerConfig, start, stop};
///
/// let profile = BootstrapProfile::new()
///     .with_program("/usr/local/bin/my-app")
///     .with_admin_cookie_file("/etc/my-app/admin-cookie")
///     .with_kill_switch_path("/var/lib/my-app/kill-switch.json")
///     .with_output_path("/var/log/my-app/worker.log");
/// let pid = start(&profile, "unix:///run/my-app/worker.sock", "counter", &SharedServerConfig::default())?;
/// println!("running as pid {pid}");
/// # Ok::<(), worker_shared::Error>(())
/// ```
///
/// # Errors
///
/// - [`Error::NotLocal`]: no worker could be reached, and the address is another machine's;
/// - [`Error::Disabled`], [`Error::KillSwitch`]: the kill switch refuses the start;
/// - [`Error::StartFailed`]: the daemon said why it could not start (its constructor, its
///   socket, its settings); [`Error::Start`]: it could not be spawned, or died before it said;
///   [`Error::Timeout`] (operation `start`): it said nothing in time, and was killed;
/// - [`Error::StartLock`]: the lock file could not be taken; [`Error::Timeout`] (operation
///   `start lock`): another starter held it, or the kill switch's lock, until the deadline
///   (nothing was spawned);
/// - [`Error::Untrusted`]: the socket's directory, the lock file, a stale socket file or the
///   [runtime directory](runtime_dir) is another user's, or others may change it;
/// - any error of connecting to a running worker, other than finding nothing there or a
///   worker that is stopping ([`Error::UntrustedServer`] for a socket served by another
///   user).
pub fn start(
    profile: &BootstrapProfile,
    address: &str,
    implementation: &str,
    config: &SharedServerConfig,
) -> Result<u32, Error> {
    start_timeout(
        profile,
        address,
        implementation,
        config,
        DEFAULT_START_TIMEOUT,
    )
}

/// As [`start`], within `timeout` in all (`Duration::MAX`: no limit): the running worker's
/// hello, the locks, and the new daemon's report.
pub fn start_timeout(
    profile: &BootstrapProfile,
    address: &str,
    implementation: &str,
    config: &SharedServerConfig,
    timeout: Duration,
) -> Result<u32, Error> {
    match ensure_running(profile, address, implementation, config, timeout)? {
        Running::Connected(worker) => Ok(worker.pid()),
        Running::Started { pid, .. } => Ok(pid),
    }
}

/// Connects to the shared worker at `address`, starting it first if nothing listens there (the
/// seed's `connectToSharedWorker`): the steps of [`start`], then a connection to the worker
/// that runs.
///
/// Concurrent masters are all served by one daemon: those that lose the race for the start
/// lock find the winner's daemon under it and connect to it.
///
/// # Errors
///
/// As for [`start`], and those of [`SharedWorker::connect`].
pub fn connect_or_start(
    profile: &BootstrapProfile,
    address: &str,
    implementation: &str,
    config: &SharedServerConfig,
) -> Result<SharedWorker, Error> {
    connect_or_start_timeout(
        profile,
        address,
        implementation,
        config,
        DEFAULT_START_TIMEOUT,
    )
}

/// As [`connect_or_start`], within `timeout` in all: the running worker's hello, the locks,
/// the new daemon's report and the connection to it (whose error then names the daemon's
/// pid, as it runs). The connection's [control
/// timeout](SharedWorker::set_control_timeout) is [`DEFAULT_CONTROL_TIMEOUT`], and its
/// [latency mode](SharedWorker::set_spin) the profile's.
pub fn connect_or_start_timeout(
    profile: &BootstrapProfile,
    address: &str,
    implementation: &str,
    config: &SharedServerConfig,
    timeout: Duration,
) -> Result<SharedWorker, Error> {
    let mut worker = match ensure_running(profile, address, implementation, config, timeout)? {
        Running::Connected(worker) => *worker,
        Running::Started {
            pid,
            address,
            deadline,
        } => {
            let left = time_left(deadline).unwrap_or(Duration::MAX);
            // The daemon runs: an error names it rather than hide it.
            SharedWorker::connect_timeout(&address, left).map_err(|e| match e {
                Error::Timeout {
                    address,
                    operation,
                    waited,
                    ..
                } => Error::Timeout {
                    address,
                    pid: Some(pid),
                    operation,
                    waited,
                },
                Error::Closed { address, .. } => Error::Closed {
                    address,
                    pid: Some(pid),
                },
                e => e,
            })?
        }
    };
    worker.set_control_timeout(DEFAULT_CONTROL_TIMEOUT);
    worker.set_spin(profile.spin().budget());
    worker.authenticate_if_required(config.client_cookie().or(config.cookie()))?;
    Ok(worker)
}

/// Stops the shared worker at `address` with the admin cookie, and returns its pid once it is
/// done (the seed's `stopSharedWorker`), within `timeout` in all.
///
/// It returns only once the worker has acknowledged the stop. For a worker on this machine it
/// also waits until the process has exited, so that a start right after it cannot meet the
/// old process (its socket, its files, its resources): through a pidfd taken before the stop
/// is sent, or, on kernels without pidfds, by asking with `kill(pid, 0)` with a back-off of up
/// to 10 ms (a zombie counts as running until init reaps it). The process waited for is the
/// one the worker's hello named, once confirmed to be the peer of the connection (the kernel's
/// `SO_PEERCRED` for a Unix socket; for TCP, the connection found among that process's
/// descriptors through `/proc`); a worker that cannot be confirmed (another user's TCP worker,
/// one in a container behind a forwarded port, a remote one) is not waited for beyond its
/// acknowledgement.
///
/// To take a worker out of service for good, disable it in the kill switch first, then stop
/// it: in the other order, a master could start it again in between.
///
/// # Errors
///
/// - those of [`SharedWorker::connect`] ([`Error::is_not_running`] tells a worker that is not
///   there) and of [`SharedWorker::stop`] ([`Error::Unauthorized`],
///   [`Error::ServerHasNoCookie`], ...);
/// - [`Error::Timeout`] with operation `exit` when the process was still there at the end of
///   `timeout`.
pub fn stop(address: &str, cookie: &AdminCookie, timeout: Duration) -> Result<u32, Error> {
    stop_worker(address, StopBy::Cookie(cookie), timeout, None)
}

/// How [`stop_and_wait`] asks a worker to stop.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum StopBy<'a> {
    /// The admin plane's stop, authenticated with the admin cookie: any worker, local or remote.
    Cookie(&'a AdminCookie),
    /// A signal (a number: `libc::SIGTERM`, or one [`worker_bootstrap::signal_number`] read) to
    /// the worker's process, without the cookie: only for a worker whose pid is confirmed to be
    /// the process at the other end of the connection (see [`stop`]), sent through a pidfd taken
    /// while the connection showed it alive.
    Signal(i32),
}

/// Stops the shared worker at `address` as `by` says, and waits until it is gone: the stop
/// (connecting, and the acknowledgement of a stop by cookie) within `timeout`, then the end
/// within `wait` more. What the operators' `worker-ctl stop` does.
///
/// A worker whose process is confirmed (see [`stop`]) is gone when its process has exited;
/// another one (remote, in another pid namespace, another user's over TCP) when it has closed
/// the connection at the end of its stop.
///
/// # Errors
///
/// - those of [`SharedWorker::connect`] ([`Error::is_not_running`] tells a worker that is not
///   there) and, for [`StopBy::Cookie`], of [`SharedWorker::stop`];
/// - for [`StopBy::Signal`], [`Error::Unconfirmed`] when the worker's pid is not confirmed
///   (nothing was sent), and [`Error::Io`] when the kernel refused the signal;
/// - [`Error::Timeout`] with operation `exit` when the worker was still there at the end of
///   `wait`.
pub fn stop_and_wait(
    address: &str,
    by: StopBy<'_>,
    timeout: Duration,
    wait: Duration,
) -> Result<u32, Error> {
    stop_worker(address, by, timeout, Some(wait))
}

/// [`stop`] and [`stop_and_wait`]: the end is waited for within `timeout` in all, or, with
/// `wait`, within `wait` after the stop, for an unconfirmed worker too (until it closes the
/// connection).
fn stop_worker(
    address: &str,
    by: StopBy<'_>,
    timeout: Duration,
    wait: Option<Duration>,
) -> Result<u32, Error> {
    let deadline = deadline_after(timeout);
    let mut worker = SharedWorker::connect_timeout(address, timeout)?;
    let pid = worker.pid();
    // Taken while the connection shows the process alive, so its pid cannot have been reused;
    // a process gone already (`open` fails) is not waited for.
    let exit = worker
        .peer_is_announced_pid()
        .then(|| ProcessWatch::open(pid).ok())
        .flatten();
    let address = worker.address().to_owned();
    match by {
        StopBy::Cookie(cookie) => {
            worker.set_control_timeout(time_left(deadline).unwrap_or(Duration::MAX));
            worker.stop(cookie)?;
        }
        StopBy::Signal(signal) => {
            let Some(exit) = &exit else {
                return Err(Error::Unconfirmed { address, pid });
            };
            exit.signal(signal).map_err(|source| Error::Io {
                address: address.clone(),
                pid: Some(pid),
                source,
            })?;
        }
    }
    let (deadline, waited) = match wait {
        Some(wait) => (deadline_after(wait), wait),
        None => (deadline, timeout),
    };
    let gone = match (&exit, wait) {
        (Some(exit), _) => exit.wait_until(deadline).unwrap_or(false),
        (None, Some(_)) => connection_closed(&mut worker, deadline)?,
        (None, None) => true,
    };
    if !gone {
        return Err(Error::Timeout {
            address,
            pid: Some(pid),
            operation: "exit",
            waited,
        });
    }
    Ok(pid)
}

/// Waits until the worker closes the connection (at the end of its stop) or `deadline`
/// passes; returns whether it closed it.
fn connection_closed(worker: &mut SharedWorker, deadline: Option<Instant>) -> Result<bool, Error> {
    loop {
        let left = time_left(deadline).unwrap_or(Duration::MAX);
        match worker.receive_message_timeout::<serde::de::IgnoredAny>(left) {
            Ok(_) => {}
            Err(Error::Closed { .. } | Error::Stopping { .. } | Error::Io { .. }) => {
                return Ok(true);
            }
            Err(Error::Timeout { .. }) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// The directory of the start locks of TCP workers: `$XDG_RUNTIME_DIR/exsyst-worker` when
/// `XDG_RUNTIME_DIR` is set (to an absolute path), else `exsyst-worker-<euid>` in the system's
/// temporary directory (`$TMPDIR`, or `/tmp`). It is created `0700`, and refused unless it is
/// a directory of this user's that nobody else may enter.
///
/// Masters of one user that start the same TCP worker must agree on it (the same
/// `XDG_RUNTIME_DIR`, or none). Those that do not are still never served by two daemons (see
/// the [crate documentation](crate#starting-on-demand)).
pub fn runtime_dir() -> Result<PathBuf, Error> {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(base) if base.is_absolute() => base.join("exsyst-worker"),
        _ => std::env::temp_dir().join(format!("exsyst-worker-{}", sys::geteuid())),
    };
    let fail = |source| Error::StartLock {
        path: dir.clone(),
        source,
    };
    match DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail(e)),
    }
    // In a shared temporary directory someone else may have made it first: a link, another
    // user's directory, or one that others may enter.
    let meta = fs::symlink_metadata(&dir).map_err(fail)?;
    let untrusted = |reason| Error::Untrusted {
        path: dir.clone(),
        owner: meta.uid(),
        reason,
    };
    if meta.file_type().is_symlink() {
        return Err(untrusted("a symbolic link, which is never followed"));
    }
    listener::check_dir(&dir, &meta)?;
    if meta.mode() & 0o077 != 0 {
        return Err(untrusted("others may enter this user's runtime directory"));
    }
    Ok(dir)
}

/// What [`ensure_running`] found or did.
enum Running {
    /// A worker answered.
    Connected(Box<SharedWorker>),
    /// A daemon was started and listens.
    Started {
        pid: u32,
        address: String,
        deadline: Option<Instant>,
    },
}

/// The steps of the [crate documentation](crate#starting-on-demand).
fn ensure_running(
    profile: &BootstrapProfile,
    address: &str,
    implementation: &str,
    config: &SharedServerConfig,
    timeout: Duration,
) -> Result<Running, Error> {
    let deadline = deadline_after(timeout);
    let parsed = address::parse(address)?;
    let canonical = parsed.to_string();
    let waited = time_left(deadline).unwrap_or(Duration::MAX);
    match SharedWorker::connect_timeout(&canonical, waited) {
        Ok(worker) => return Ok(Running::Connected(Box::new(worker))),
        // However it failed to reach a worker, one elsewhere is not ours to start.
        Err(
            e @ (Error::Connect { .. }
            | Error::Timeout {
                operation: "hello", ..
            }
            | Error::Closed { pid: None, .. }),
        ) if !local::is_local_address(&parsed)? => {
            return Err(Error::NotLocal {
                address: canonical,
                source: Box::new(e),
            });
        }
        Err(e) if e.is_not_running() => {}
        // Going away: its successor is started (or found) below, under the lock.
        Err(Error::Stopping { .. }) if local::is_local_address(&parsed)? => {}
        Err(e) => return Err(e),
    }
    let switch = profile.kill_switch_path().map(KillSwitch::new);
    if let Some(switch) = &switch {
        // Without waiting for a lock: the start's deadline bounds only the waits below.
        switch
            .peek_start(&canonical)
            .map_err(|e| kill_switch_error(&canonical, e))?;
    }
    let mut config = config.clone();
    if config.cookie().is_none()
        && let Some(cookie) = AdminCookie::from_profile(profile)?
    {
        config = config.with_cookie(cookie);
    }
    let extensions = daemon_extensions(&canonical, &config)?;

    let lock_timeout = || Error::Timeout {
        address: canonical.clone(),
        pid: None,
        operation: "start lock",
        waited: timeout,
    };
    let Some(_start_lock) = StartLock::take(&parsed, deadline)? else {
        return Err(lock_timeout());
    };
    // Looked at before connecting, so that only the file that refused is removed.
    let socket_file = parsed.unix_path().and_then(SocketFile::find);
    let refused = match try_connect(&canonical, deadline)? {
        Probe::Running(worker) => return Ok(Running::Connected(worker)),
        Probe::Refused => true,
        Probe::Absent => false,
    };
    let _switch_lock: Option<KillSwitchLock> = match &switch {
        Some(switch) => {
            let lock = wait_for(deadline, || switch.try_lock())
                .map_err(|e| kill_switch_error(&canonical, e))?
                .ok_or_else(lock_timeout)?;
            lock.check_start(&parsed)
                .map_err(|e| kill_switch_error(&canonical, e))?;
            Some(lock)
        }
        None => None,
    };
    if let Some(stale) = socket_file.filter(|_| refused) {
        stale.remove(|source| Error::Bind {
            address: canonical.clone(),
            source,
        })?;
    }
    // Past the deadline nothing is spawned: a daemon nobody waits for would start unseen.
    if time_left(deadline).is_some_and(|left| left.is_zero()) {
        return Err(lock_timeout());
    }
    let mut daemon = worker_bootstrap::start_detached(profile, implementation, None, extensions)
        .map_err(|source| Error::Start {
            address: canonical.clone(),
            source,
        })?;
    let waited = time_left(deadline).unwrap_or(Duration::MAX);
    match daemon.receive_report::<StartReport>(waited) {
        Ok(StartReport::Listening { pid, .. }) => Ok(Running::Started {
            pid,
            address: canonical,
            deadline,
        }),
        Ok(StartReport::Failed { reason }) => {
            // A starter that does not share our lock may have won the race for the socket.
            match connect_if_running(&canonical, deadline) {
                Ok(Some(worker)) => Ok(Running::Connected(Box::new(worker))),
                _ => Err(Error::StartFailed {
                    address: canonical,
                    reason,
                }),
            }
        }
        Err(worker_bootstrap::Error::Timeout { pid, .. }) => {
            // Gone before the locks are released, so the next starter starts afresh.
            let _ = daemon.kill();
            Err(Error::Timeout {
                address: canonical,
                pid: Some(pid),
                operation: "start",
                waited: timeout,
            })
        }
        Err(source) => Err(Error::Start {
            address: canonical,
            source,
        }),
    }
}

/// What connecting found.
enum Probe {
    /// A worker answered.
    Running(Box<SharedWorker>),
    /// The connection was refused: a socket file with nobody behind it, or a closed port.
    Refused,
    /// No socket file.
    Absent,
}

/// Connects to a running worker, telling apart the two ways of finding nobody there.
fn try_connect(address: &str, deadline: Option<Instant>) -> Result<Probe, Error> {
    match SharedWorker::connect_timeout(address, time_left(deadline).unwrap_or(Duration::MAX)) {
        Ok(worker) => Ok(Probe::Running(Box::new(worker))),
        Err(Error::Connect { source, .. }) if source.kind() == io::ErrorKind::ConnectionRefused => {
            Ok(Probe::Refused)
        }
        Err(e) if e.is_not_running() => Ok(Probe::Absent),
        // A stopping worker removed its socket file before it said so.
        Err(Error::Stopping { .. }) => Ok(Probe::Absent),
        Err(e) => Err(e),
    }
}

/// Connects to a running worker; `Ok(None)` when nothing listens there.
fn connect_if_running(
    address: &str,
    deadline: Option<Instant>,
) -> Result<Option<SharedWorker>, Error> {
    match try_connect(address, deadline)? {
        Probe::Running(worker) => Ok(Some(*worker)),
        Probe::Refused | Probe::Absent => Ok(None),
    }
}

fn kill_switch_error(address: &str, e: worker_killswitch::Error) -> Error {
    match e {
        worker_killswitch::Error::Disabled { globally, .. } => Error::Disabled {
            address: address.to_owned(),
            globally,
        },
        source => Error::KillSwitch {
            address: address.to_owned(),
            source,
        },
    }
}

/// A socket file, known by device and inode.
struct SocketFile {
    path: PathBuf,
    meta: fs::Metadata,
}

impl SocketFile {
    /// The socket at `path`, if there is one (anything else is left for the daemon's bind to
    /// refuse).
    fn find(path: &Path) -> Option<SocketFile> {
        let meta = fs::symlink_metadata(path).ok()?;
        meta.file_type().is_socket().then(|| SocketFile {
            path: path.to_owned(),
            meta,
        })
    }

    /// Removes the file, if it is still the one found (which refused a connection since) and
    /// this user's: another user's stale socket is not this user's to take over.
    fn remove(self, io_error: impl FnOnce(io::Error) -> Error) -> Result<(), Error> {
        listener::check_own_file(&self.path, &self.meta, true, "not a socket")?;
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.meta.dev() && meta.ino() == self.meta.ino() => {
                match fs::remove_file(&self.path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(e)),
                    _ => Ok(()),
                }
            }
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(e)),
        }
    }
}

/// The exclusive lock of one address's starters, held until dropped (the kernel releases it
/// when its holder dies).
#[derive(Debug)]
struct StartLock {
    _file: LockFile,
}

impl StartLock {
    /// Takes the lock of `address`'s starters, waiting at most until `deadline`: `Ok(None)`
    /// when another starter held it all along.
    ///
    /// The lock file is opened without following links, and used only when it is a regular
    /// file of this user's: another user's file (or link) at its path, in a shared directory,
    /// is refused rather than locked, created through, or waited for.
    fn take(address: &Address, deadline: Option<Instant>) -> Result<Option<StartLock>, Error> {
        let path = lock_path(address)?;
        let fail = |source| Error::StartLock {
            path: path.clone(),
            source,
        };
        let opened = LockFile::open(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600),
            &path,
        );
        let file = match opened {
            Ok(file) => file,
            // ELOOP: the last component is a link; EACCES: another user's file; a FIFO or
            // another file that is not a regular one.
            Err(e) => {
                return Err(match fs::symlink_metadata(&path) {
                    Ok(meta) => {
                        listener::check_own_file(&path, &meta, meta.is_file(), "not a regular file")
                            .err()
                            .unwrap_or_else(|| fail(e))
                    }
                    Err(_) => fail(e),
                });
            }
        };
        let meta = file.file().metadata().map_err(fail)?;
        listener::check_own_file(&path, &meta, meta.is_file(), "not a regular file")?;
        let locked = wait_for(deadline, || {
            file.try_lock_exclusive().map(|taken| taken.then_some(()))
        })
        .map_err(fail)?;
        Ok(locked.map(|()| StartLock { _file: file }))
    }
}

/// The lock file of `address`'s starters (see the [crate documentation](crate#starting-on-demand)).
fn lock_path(address: &Address) -> Result<PathBuf, Error> {
    if let Some(path) = address.unix_path() {
        // As the server would: for this socket alone.
        listener::socket_dir(path, |source| Error::StartLock {
            path: path.parent().unwrap_or(Path::new("/")).to_owned(),
            source,
        })?;
        let mut name = path.as_os_str().to_owned();
        name.push(".lock");
        return Ok(PathBuf::from(name));
    }
    let host = address.tcp_host().unwrap_or_default();
    let port = address.tcp_port().unwrap_or_default();
    Ok(runtime_dir()?.join(format!("tcp-{host}-{port}.lock")))
}

/// Asks `probe` until it has an answer or `deadline` passes (`Ok(None)` then), pausing between
/// two questions from 100 µs, doubling up to 10 ms: for what the kernel offers no wait on (a
/// lock held by another process, a process's exit without a pidfd).
fn wait_for<T, E>(
    deadline: Option<Instant>,
    mut probe: impl FnMut() -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    let mut pause = Duration::from_micros(100);
    loop {
        if let Some(answer) = probe()? {
            return Ok(Some(answer));
        }
        match time_left(deadline) {
            Some(left) if left.is_zero() => return Ok(None),
            left => std::thread::sleep(left.map_or(pause, |l| l.min(pause))),
        }
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}
