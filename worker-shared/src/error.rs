use std::{error, fmt, io, path::PathBuf, time::Duration};

use worker_core::BoxError;

/// The error type of `worker-shared`: addresses, connections, the admin plane, cookies, and
/// the server.
///
/// Errors about a connection name the worker's address, and its pid once its hello told it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The address is not `unix:///absolute/path` or `tcp://host:port`.
    InvalidAddress {
        /// The address as it was given.
        address: String,
        /// Why it was refused.
        source: worker_killswitch::Error,
    },
    /// Connecting failed: nothing listens there (refused, or no socket file), or the host is
    /// unreachable.
    Connect {
        /// The worker's address, in canonical form.
        address: String,
        /// What the operating system said.
        source: io::Error,
    },
    /// The worker did not answer in time: no hello after connecting, no reply to a query or a
    /// stop, or no message for a receive with a timeout.
    ///
    /// The connection stays usable: part of a frame that did arrive is kept.
    Timeout {
        /// The worker's address.
        address: String,
        /// The worker's pid, when its hello arrived; for a start, the daemon it started, which
        /// runs (a start never leaves a daemon of its own behind an error without naming it).
        pid: Option<u32>,
        /// What was awaited: `hello`, `query`, `authentication`, `stop` or `message`; for a
        /// start, `start lock` (another starter held a lock until the start's deadline:
        /// nothing was spawned), `start` (the daemon did not report in time: it was killed)
        /// or `exit` (a stop).
        operation: &'static str,
        /// How long the call waited.
        waited: Duration,
    },
    /// The worker closed the connection.
    Closed {
        /// The worker's address.
        address: String,
        /// The worker's pid, when its hello arrived.
        pid: Option<u32>,
    },
    /// The worker is stopping: it said so (the `stopping` notice of the
    /// [`protocol`](crate::protocol) guide), after answering what this connection had sent
    /// before, and closes the connection. Every later call on the connection fails the same
    /// way; a new connection finds the worker gone, or its successor.
    Stopping {
        /// The worker's address.
        address: String,
        /// The worker's pid, when its hello arrived (a connection the worker accepted only to
        /// say it is stopping gets no hello).
        pid: Option<u32>,
    },
    /// The process that serves the Unix socket runs as a user this client does not trust
    /// (by default, any but this process's own and root): whoever could put that socket
    /// there is not the worker. Nothing was sent.
    UntrustedServer {
        /// The worker's address.
        address: String,
        /// The user the kernel says serves the socket (`SO_PEERCRED`).
        uid: u32,
    },
    /// A file or directory of the start path is not this user's to trust: another user owns
    /// it, others may change it, or it is not what it should be (a symbolic link where a lock
    /// file belongs, say). Nothing was created, locked or started there.
    Untrusted {
        /// The file or directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A frame could not be encoded or decoded, or the stream broke the frame protocol (a
    /// truncated or oversized frame, an unknown frame kind).
    Channel {
        /// The worker's address.
        address: String,
        /// The worker's pid, when its hello arrived.
        pid: Option<u32>,
        /// The channel's error.
        source: worker_channel::Error,
    },
    /// Reading from or writing to the connection failed.
    Io {
        /// The worker's address.
        address: String,
        /// The worker's pid, when its hello arrived.
        pid: Option<u32>,
        /// What the operating system said.
        source: io::Error,
    },
    /// An earlier send failed, perhaps part-way through a frame, so the worker could read a cut
    /// frame: the connection cannot be used any more.
    Broken {
        /// The worker's address.
        address: String,
        /// The worker's pid.
        pid: u32,
    },
    /// The worker sent a control message that breaks the admin protocol (no hello first, a
    /// reply to nothing, a malformed message).
    Protocol {
        /// The worker's address.
        address: String,
        /// The worker's pid, when its hello arrived.
        pid: Option<u32>,
        /// What was wrong.
        reason: String,
    },
    /// The worker speaks a version of the admin protocol this client does not.
    UnsupportedVersion {
        /// The worker's address.
        address: String,
        /// The version its hello announced.
        version: u32,
    },
    /// The worker speaks another data codec than the one a client that did not wait for its
    /// hello encoded its messages with ([`SharedWorker::connect_with_codec`](crate::SharedWorker::connect_with_codec));
    /// the worker closes the connection without reading them.
    CodecMismatch {
        /// The worker's address.
        address: String,
        /// The worker's pid.
        pid: u32,
        /// The codec the client encoded with.
        expected: worker_channel::Codec,
        /// The codec the worker's hello announced.
        announced: worker_channel::Codec,
    },
    /// More data arrived while waiting for a control reply than a client keeps for later.
    Backlog {
        /// The worker's address.
        address: String,
        /// The worker's pid.
        pid: u32,
        /// The bound, in bytes.
        limit: usize,
    },
    /// The worker refused the admin cookie: it is not the one the worker was started with.
    Unauthorized {
        /// The worker's address.
        address: String,
        /// The worker's pid.
        pid: u32,
    },
    /// The worker accepted the client's proof but could not prove that it knows the cookie
    /// itself: whatever listens there is not the worker it claims to be.
    ServerNotAuthenticated {
        /// The worker's address.
        address: String,
        /// The pid its hello announced.
        pid: u32,
    },
    /// No admin cookie is configured on this side, so nothing privileged can be asked; nothing
    /// was sent.
    NoCookie {
        /// The worker's address.
        address: String,
    },
    /// The worker was started without an admin cookie, so it cannot be stopped, or queried with
    /// privilege, through its socket.
    ServerHasNoCookie {
        /// The worker's address.
        address: String,
        /// The worker's pid.
        pid: u32,
    },
    /// The worker takes no data message or query from a connection that has not proved it
    /// knows the client cookie (or the admin cookie): connect with
    /// [`SharedWorker::connect_with_cookie`](crate::SharedWorker::connect_with_cookie). The
    /// worker closed the connection.
    AuthenticationRequired {
        /// The worker's address.
        address: String,
        /// The worker's pid.
        pid: u32,
    },
    /// The worker refused to check a cookie: too many wrong ones came from this peer (its user,
    /// or its address) lately. Nothing was checked; try again later.
    Throttled {
        /// The worker's address.
        address: String,
        /// The worker's pid.
        pid: u32,
    },
    /// The worker failed (a callback of its panicked) while serving this connection, and closed
    /// it; the worker's other clients are served on, unless its panic policy stops it.
    WorkerFailed {
        /// The worker's address.
        address: String,
        /// The worker's pid.
        pid: u32,
    },
    /// The worker refused a request for a reason this client has no variant for.
    Rejected {
        /// The worker's address.
        address: String,
        /// The worker's pid.
        pid: u32,
        /// The error code of its reply (see the [`protocol`](crate::protocol) guide).
        code: String,
        /// The text of its reply.
        message: String,
    },
    /// The system's random number generator failed to give a nonce.
    Random(getrandom::Error),
    /// An admin cookie file could not be read, or is not a regular file.
    CookieFile {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// An admin cookie file is accessible to its group or to others: a secret there is no
    /// secret.
    CookieFileMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// An admin cookie that cannot be one (empty, say).
    InvalidCookie {
        /// Why.
        reason: &'static str,
    },
    /// A server setting that cannot work.
    Config {
        /// The setting at fault.
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A server could not listen at its address: the address is in use (a socket file is
    /// already there, or the port is taken), the directory cannot be created, permission was
    /// refused.
    Bind {
        /// The address, in canonical form.
        address: String,
        /// What the operating system said.
        source: io::Error,
    },
    /// Socket activation handed over something a server cannot serve on (not a listening
    /// stream socket).
    Activation {
        /// The address the server was to serve.
        address: String,
        /// What is wrong.
        source: io::Error,
    },
    /// SIGTERM and SIGINT could not be made to stop the server (another server of this
    /// process has them).
    Signals {
        /// The server's address.
        address: String,
        /// Why.
        source: io::Error,
    },
    /// A server's event loop failed, or a callback of its worker did (`on_stop` included).
    Serve {
        /// The server's address.
        address: String,
        /// The loop's or the callback's error.
        source: worker_core::Error,
    },
    /// The worker of an embedded server could not be built.
    Constructor {
        /// The implementation's name.
        implementation: String,
        /// The constructor's error.
        source: BoxError,
    },
    /// A shared-worker daemon said it could not start: its settings, its socket, or its
    /// constructor failed (the reason is its own words).
    StartFailed {
        /// The worker's address.
        address: String,
        /// The daemon's words.
        reason: String,
    },
    /// The worker could not be reached, and its address is not this machine's (a TCP host
    /// that is not a loopback or local address): a remote worker is never started from here.
    NotLocal {
        /// The worker's address.
        address: String,
        /// Why no worker could be reached: [`Error::Connect`] (refused, unreachable, ...), or
        /// [`Error::Timeout`] or [`Error::Closed`] before a hello.
        source: Box<Error>,
    },
    /// A stop by signal ([`StopBy::Signal`](crate::StopBy::Signal)) was refused: the pid the
    /// worker's hello named is not confirmed to be the process at the other end of the
    /// connection, as this machine names it (a remote worker, one in another pid namespace, one
    /// of another user over TCP), so no signal was sent.
    Unconfirmed {
        /// The worker's address.
        address: String,
        /// The pid its hello named.
        pid: u32,
    },
    /// The kill switch disables the worker, so it was not started (nothing was spawned). A
    /// running worker is not stopped by disabling it.
    Disabled {
        /// The worker's address.
        address: String,
        /// Whether shared workers are disabled globally (otherwise, this address is).
        globally: bool,
    },
    /// The kill switch could not be read or understood, so the worker was not started (the
    /// kill switch fails closed; nothing was spawned).
    KillSwitch {
        /// The worker's address.
        address: String,
        /// The kill switch's error.
        source: worker_killswitch::Error,
    },
    /// The start lock (the file that keeps two masters from starting the same worker) could
    /// not be created or taken.
    StartLock {
        /// The lock file, or the directory that was to hold it.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A shared-worker daemon could not be started, or ended before saying it listens.
    Start {
        /// The worker's address.
        address: String,
        /// The spawn's error (its exit status and the tail of its standard error, say).
        source: worker_bootstrap::Error,
    },
}

impl Error {
    /// Whether the error says that nothing listens at the worker's address: no socket file, or
    /// a connection refused. A worker in that state is what
    /// [`connect_or_start`](crate::connect_or_start) starts.
    pub fn is_not_running(&self) -> bool {
        match self {
            Error::Connect { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ),
            _ => false,
        }
    }
}

/// ` (pid N)` when the pid is known.
struct Pid(Option<u32>);

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(pid) => write!(f, " (pid {pid})"),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidAddress { address, .. } => {
                write!(f, "invalid shared worker address {address:?}")
            }
            Error::Connect { address, .. } => {
                write!(f, "cannot connect to shared worker at {address}")
            }
            Error::Timeout {
                address,
                pid,
                operation,
                waited,
            } => write!(
                f,
                "timed out after {waited:?} waiting for {operation} from shared worker at \
                 {address}{}",
                Pid(*pid)
            ),
            Error::Closed { address, pid } => write!(
                f,
                "shared worker at {address}{} closed the connection",
                Pid(*pid)
            ),
            Error::Stopping { address, pid } => {
                write!(f, "shared worker at {address}{} is stopping", Pid(*pid))
            }
            Error::UntrustedServer { address, uid } => write!(
                f,
                "shared worker at {address} is served by user {uid}, whom this client does not \
                 trust: nothing was sent"
            ),
            Error::Untrusted {
                path,
                owner,
                reason,
            } => write!(f, "refusing {} (owner {owner}): {reason}", path.display()),
            Error::Channel { address, pid, .. } => write!(
                f,
                "channel to shared worker at {address}{} failed",
                Pid(*pid)
            ),
            Error::Io { address, pid, .. } => {
                write!(f, "i/o error with shared worker at {address}{}", Pid(*pid))
            }
            Error::Broken { address, pid } => write!(
                f,
                "connection to shared worker at {address} (pid {pid}) is broken by an earlier \
                 failed send"
            ),
            Error::Protocol {
                address,
                pid,
                reason,
            } => write!(
                f,
                "shared worker at {address}{} broke the admin protocol: {reason}",
                Pid(*pid)
            ),
            Error::UnsupportedVersion { address, version } => write!(
                f,
                "shared worker at {address} speaks admin protocol version {version}, this client \
                 speaks version {}",
                crate::wire::PROTOCOL_VERSION
            ),
            Error::CodecMismatch {
                address,
                pid,
                expected,
                announced,
            } => write!(
                f,
                "shared worker at {address} (pid {pid}) speaks {announced}, not the {expected} \
                 its messages were sent in"
            ),
            Error::Backlog {
                address,
                pid,
                limit,
            } => write!(
                f,
                "more than {limit} bytes of messages from shared worker at {address} (pid {pid}) \
                 arrived while waiting for a control reply"
            ),
            Error::Unauthorized { address, pid } => write!(
                f,
                "shared worker at {address} (pid {pid}) refused the admin cookie"
            ),
            Error::ServerNotAuthenticated { address, pid } => write!(
                f,
                "shared worker at {address} (pid {pid}) could not prove it knows the admin cookie"
            ),
            Error::NoCookie { address } => write!(
                f,
                "no admin cookie configured: cannot authenticate to shared worker at {address}"
            ),
            Error::ServerHasNoCookie { address, pid } => write!(
                f,
                "shared worker at {address} (pid {pid}) has no admin cookie configured, so it \
                 cannot be stopped or queried with privilege through its socket"
            ),
            Error::AuthenticationRequired { address, pid } => write!(
                f,
                "shared worker at {address} (pid {pid}) takes data only from authenticated \
                 clients"
            ),
            Error::Throttled { address, pid } => write!(
                f,
                "shared worker at {address} (pid {pid}) refused to check a cookie: too many \
                 failed authentications from this peer"
            ),
            Error::WorkerFailed { address, pid } => write!(
                f,
                "shared worker at {address} (pid {pid}) failed while serving this connection"
            ),
            Error::Rejected {
                address,
                pid,
                code,
                message,
            } => write!(
                f,
                "shared worker at {address} (pid {pid}) refused the request: {code}: {message}"
            ),
            Error::Random(_) => f.write_str("cannot draw a random nonce"),
            Error::CookieFile { path, .. } => {
                write!(f, "cannot read admin cookie file {}", path.display())
            }
            Error::CookieFileMode { path, mode } => write!(
                f,
                "admin cookie file {} is accessible to group or others (mode {:04o}); \
                 allow its owner only (chmod 600)",
                path.display(),
                mode & 0o7777
            ),
            Error::InvalidCookie { reason } => write!(f, "invalid admin cookie: {reason}"),
            Error::Config { what, why } => {
                write!(f, "invalid shared worker configuration: {what} {why}")
            }
            Error::Bind { address, .. } => {
                write!(f, "cannot listen for shared worker at {address}")
            }
            Error::Activation { address, .. } => write!(
                f,
                "cannot serve shared worker {address} on the socket systemd handed over"
            ),
            Error::Signals { address, .. } => write!(
                f,
                "cannot make SIGTERM and SIGINT stop shared worker at {address}"
            ),
            Error::Serve { address, .. } => write!(f, "shared worker at {address} failed"),
            Error::Constructor { implementation, .. } => {
                write!(f, "cannot build shared worker {implementation}")
            }
            Error::StartFailed { address, reason } => {
                write!(f, "shared worker at {address} could not start: {reason}")
            }
            Error::Start { address, .. } => {
                write!(f, "cannot start shared worker at {address}")
            }
            Error::Unconfirmed { address, pid } => write!(
                f,
                "shared worker at {address} (pid {pid}) is not signalled: that pid is not \
                 confirmed to be its process on this machine"
            ),
            Error::NotLocal { address, .. } => write!(
                f,
                "cannot reach shared worker at {address}, which is not on this machine: a \
                 remote worker is never started from here"
            ),
            Error::Disabled { address, globally } => write!(
                f,
                "shared worker at {address} not started: the kill switch disables {}",
                if *globally {
                    "all shared workers"
                } else {
                    "its address"
                }
            ),
            Error::KillSwitch { address, .. } => write!(
                f,
                "cannot check the kill switch for shared worker at {address}: not started"
            ),
            Error::StartLock { path, .. } => {
                write!(f, "cannot take the start lock {}", path.display())
            }
        }
    }
}

impl error::Error for Error {
    fn source(&self) -> Option<&(dyn error::Error + 'static)> {
        match self {
            Error::InvalidAddress { source, .. } => Some(source),
            Error::NotLocal { source, .. } => Some(&**source),
            Error::Connect { source, .. }
            | Error::Io { source, .. }
            | Error::CookieFile { source, .. }
            | Error::Bind { source, .. }
            | Error::Activation { source, .. }
            | Error::Signals { source, .. } => Some(source),
            Error::Serve { source, .. } => Some(source),
            Error::Constructor { source, .. } => Some(&**source),
            Error::Start { source, .. } => Some(source),
            Error::KillSwitch { source, .. } => Some(source),
            Error::StartLock { source, .. } => Some(source),
            Error::Channel { source, .. } => Some(source),
            Error::Random(source) => Some(source),
            _ => None,
        }
    }
}
