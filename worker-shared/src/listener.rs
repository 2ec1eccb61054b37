//! The server's listening socket: bound here, taken from the caller, or handed over by systemd.

use std::{
    fs::{self, DirBuilder, Permissions},
    io,
    net::{SocketAddr, TcpListener as StdTcpListener},
    os::{
        fd::{AsFd, BorrowedFd},
        unix::{
            fs::{DirBuilderExt, MetadataExt, PermissionsExt},
            net::UnixListener as StdUnixListener,
        },
    },
    path::{Path, PathBuf},
};

use worker_core::mio::{
    Interest, Registry, Token,
    event::Source,
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
};
use worker_killswitch::Address;

use crate::{Error, SharedServerConfig, sys};

/// A listening socket of either family, non-blocking.
#[derive(Debug)]
pub(crate) enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// A connection just accepted.
#[derive(Debug)]
pub(crate) enum Accepted {
    Unix(UnixStream),
    Tcp(TcpStream, SocketAddr),
}

impl Accepted {
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Accepted::Unix(s) => s.as_fd(),
            Accepted::Tcp(s, _) => s.as_fd(),
        }
    }
}

impl Listener {
    pub(crate) fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| Accepted::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, addr)| Accepted::Tcp(s, addr)),
        }
    }
}

impl Source for Listener {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Listener::Unix(l) => l.register(registry, token, interest),
            Listener::Tcp(l) => l.register(registry, token, interest),
        }
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Listener::Unix(l) => l.reregister(registry, token, interest),
            Listener::Tcp(l) => l.reregister(registry, token, interest),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Listener::Unix(l) => l.deregister(registry),
            Listener::Tcp(l) => l.deregister(registry),
        }
    }
}

/// The socket file a server bound, known by device and inode, so that it removes the file only
/// while it is still the one it bound (not one that a newer server put at the same path).
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
    removed: bool,
}

impl SocketFile {
    fn new(path: &Path) -> io::Result<SocketFile> {
        let meta = fs::symlink_metadata(path)?;
        Ok(SocketFile {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
            removed: false,
        })
    }

    /// Removes the file if it is still ours; returns whether it did.
    ///
    /// Between the check and the removal another server could replace the file; the window is
    /// two system calls wide, and a starter that replaces a socket does so under its lock only
    /// once connecting to this one is refused, which it no longer is only once the listener
    /// closed, just before this runs.
    pub(crate) fn remove_if_ours(&mut self) -> io::Result<bool> {
        if std::mem::replace(&mut self.removed, true) {
            return Ok(false);
        }
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => {
                fs::remove_file(&self.path)?;
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = self.remove_if_ours();
    }
}

/// The directory of the Unix socket at `path`, created `0700` when it does not exist (for this
/// socket alone, so nobody else may even look inside); an existing one must be one this user
/// may trust (see [`check_dir`]). `io_error` names an error of the file system.
pub(crate) fn socket_dir(
    path: &Path,
    io_error: impl FnOnce(io::Error) -> Error,
) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    // The directory the socket's name resolves in, so through links.
    let meta = match fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .and_then(|()| fs::set_permissions(dir, Permissions::from_mode(0o700)))
            .and_then(|()| fs::metadata(dir))
            .map_err(io_error)?,
        Err(e) => return Err(io_error(e)),
    };
    check_dir(dir, &meta).map(drop)
}

/// The sticky bit: in such a directory only a file's owner (or the directory's, or root) may
/// remove or rename it.
const STICKY: u32 = 0o1000;

/// Checks that `dir` (described by `meta`) is a directory this user may trust with a socket or
/// a lock: owned by this user or root, and writable by nobody else, unless it is sticky (the
/// system's temporary directory), where others cannot replace this user's files and only the
/// files this user owns are used. Returns whether it is sticky.
pub(crate) fn check_dir(dir: &Path, meta: &fs::Metadata) -> Result<bool, Error> {
    let untrusted = |reason| Error::Untrusted {
        path: dir.to_owned(),
        owner: meta.uid(),
        reason,
    };
    if !meta.is_dir() {
        return Err(untrusted("not a directory"));
    }
    if meta.uid() != sys::geteuid() && meta.uid() != 0 {
        return Err(untrusted(
            "another user owns the directory, and could replace what is in it",
        ));
    }
    let sticky = meta.mode() & STICKY != 0;
    if meta.mode() & 0o022 != 0 && !sticky {
        return Err(untrusted(
            "others may write to the directory, which is not sticky",
        ));
    }
    Ok(sticky)
}

/// Checks that a file this user is about to use (`meta`, read without following links) is a
/// file of `kind` that this user owns.
pub(crate) fn check_own_file(
    path: &Path,
    meta: &fs::Metadata,
    is_kind: bool,
    kind: &'static str,
) -> Result<(), Error> {
    let untrusted = |reason| Error::Untrusted {
        path: path.to_owned(),
        owner: meta.uid(),
        reason,
    };
    if meta.file_type().is_symlink() {
        return Err(untrusted("a symbolic link, which is never followed"));
    }
    if !is_kind {
        return Err(untrusted(kind));
    }
    if meta.uid() != sys::geteuid() {
        return Err(untrusted("another user's file"));
    }
    Ok(())
}

/// A listener ready to serve, with what the server says about it.
#[derive(Debug)]
pub(crate) struct Bound {
    pub(crate) listener: Listener,
    /// The canonical address clients connect to (for TCP, with the port actually bound).
    pub(crate) address: Address,
    /// The socket file this server bound and must remove when it stops.
    pub(crate) socket_file: Option<SocketFile>,
    /// Handed over by systemd.
    pub(crate) activated: bool,
}

fn bind_error(address: &str) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Bind {
        address: address.to_owned(),
        source,
    }
}

/// Binds `address`, or takes systemd's listener when socket activation hands one over.
pub(crate) fn bind(address: &Address, config: &SharedServerConfig) -> Result<Bound, Error> {
    if config.socket_activation() {
        let activated = sys::take_activated_listener().map_err(|source| Error::Activation {
            address: address.to_string(),
            source,
        })?;
        if let Some(activated) = activated {
            return from_activated(address, activated);
        }
    }
    let fail = bind_error(address.as_str());
    let backlog = config.backlog() as i32;
    if let Some(path) = address.unix_path() {
        // Refused before any directory is made for it.
        sys::check_unix_path(path).map_err(bind_error(address.as_str()))?;
        socket_dir(path, fail)?;
        let mode = config.socket_mode();
        let fd = sys::bind_unix(path, mode, backlog).map_err(bind_error(address.as_str()))?;
        // The file came out as `mode` less the umask: widen it to `mode` exactly.
        let socket_file = SocketFile::new(path).map_err(bind_error(address.as_str()))?;
        fs::set_permissions(path, Permissions::from_mode(mode))
            .map_err(bind_error(address.as_str()))?;
        let listener = UnixListener::from_std(StdUnixListener::from(fd));
        return Ok(Bound {
            listener: Listener::Unix(listener),
            address: address.clone(),
            socket_file: Some(socket_file),
            activated: false,
        });
    }
    // Each address a name resolves to, until one binds.
    let mut last = None;
    let addrs = std::net::ToSocketAddrs::to_socket_addrs(address).map_err(fail)?;
    for addr in addrs {
        match sys::bind_tcp(addr, backlog) {
            Ok(fd) => {
                let listener = TcpListener::from_std(StdTcpListener::from(fd));
                return Ok(Bound {
                    listener: Listener::Tcp(listener),
                    address: address.clone(),
                    socket_file: None,
                    activated: false,
                });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(bind_error(address.as_str())(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "the host name resolves to no address",
        )
    })))
}

fn from_activated(address: &Address, activated: sys::Activated) -> Result<Bound, Error> {
    let sys::Activated { fd, domain } = activated;
    let bound = if domain == libc::AF_UNIX {
        from_unix(StdUnixListener::from(fd))
    } else {
        from_tcp(StdTcpListener::from(fd))
    };
    let mut bound = bound.map_err(|source| Error::Activation {
        address: address.to_string(),
        source,
    })?;
    bound.activated = true;
    Ok(bound)
}

/// A Unix listener the caller bound; its socket file stays the caller's.
pub(crate) fn from_unix(listener: StdUnixListener) -> io::Result<Bound> {
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let path = local.as_pathname().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the unix listener has no path (unnamed or abstract)",
        )
    })?;
    let address = Address::parse(&format!("unix://{}", path.display()))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    Ok(Bound {
        listener: Listener::Unix(UnixListener::from_std(listener)),
        address,
        socket_file: None,
        activated: false,
    })
}

/// A TCP listener the caller bound.
pub(crate) fn from_tcp(listener: StdTcpListener) -> io::Result<Bound> {
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let address = Address::parse(&format!("tcp://{local}"))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    Ok(Bound {
        listener: Listener::Tcp(TcpListener::from_std(listener)),
        address,
        socket_file: None,
        activated: false,
    })
}
