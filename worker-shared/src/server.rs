//! The shared-worker server: one listener and many connections on one evented host.
//!
//! Everything runs on the loop's one thread. What the server keeps beside the host (the
//! listener, each connection's admin session and peer, the timers, whether it is stopping) is
//! in one [`State`] shared by the handlers it puts on the loop; a handler borrows it only
//! between calls into the host, never across one, since the host calls back into other
//! handlers.

use std::{
    cell::RefCell,
    collections::HashMap,
    fmt,
    net::TcpListener as StdTcpListener,
    os::{
        fd::{AsFd, OwnedFd},
        unix::net::UnixListener as StdUnixListener,
    },
    rc::Rc,
    sync::{Arc, mpsc},
    thread,
    time::Duration,
};

use log::Level;
use worker_channel::{Codec, FrameKind};
use worker_core::{
    BoxError, Connection, ConnectionId, ControlHandler, DisconnectHandler, EventedWorker,
    NbChannel, SourceId, TimerId, WorkerHost, WorkerLoop, WorkerStatus, error_chain,
    mio::{Interest, net::UnixStream},
};

use crate::{
    AdminCookie, Error, Peer, PeerUids, SharedServerConfig, address, auth,
    listener::{self, Accepted, Bound, Listener, SocketFile},
    session::{self, MAX_AUTH_FAILURES, ServerInfo, ServerSession, Step},
    stop::{self, StopHandle, StopLine, StopReason},
    sys,
    wire::{self, ErrorCode, ServerMessage},
};

/// A shared worker's implementation: an [`EventedWorker`] that many masters reach over a
/// socket (the seed's `SharedWorkerImplementationInterface`), and that a client holding the
/// admin cookie can stop.
///
/// The server calls, besides [`EventedWorker`]'s callbacks (`on_connect` with the peer's name,
/// see [`Peer`]): [`on_query`](Self::on_query) for each status query, and
/// [`on_stop`](Self::on_stop) once when the worker is asked to stop (by an authenticated
/// client, by SIGTERM or SIGINT, by [`stop_current`](crate::stop_current), after its idle
/// time, or through a [`StopHandle`]); then the connections close, and
/// [`terminate`](EventedWorker::terminate) runs once.
///
/// The seed's `MySharedWorkerImpl`, which counts its clients:
///
/// ```
/// use worker_core::{BoxError, Connection, EventedWorker, Worker, WorkerLoop, WorkerStatus};
/// use worker_shared::SharedWorkerImpl;
///
/// struct MySharedWorkerImpl { i: u64 }
///
/// impl Worker for MySharedWorkerImpl {
///     const NAME: &'static str = "my-shared-worker";
///     type Args = ();
///     fn new((): ()) -> Result<Self, BoxError> { Ok(MySharedWorkerImpl { i: 0 }) }
/// }
///
/// impl EventedWorker for MySharedWorkerImpl {
///     type Message = String;
///     type Reply = String;
///
///     fn on_message(
///         &mut self,
///         name: String,
///         connection: &mut Connection<String>,
///         _: &mut WorkerLoop<Self>,
///     ) -> Result<(), BoxError> {
///         self.i += 1;
///         connection.send(&format!("Hello {name} ! You're my {} client.", self.i))?;
///         Ok(())
///     }
/// }
///
/// impl SharedWorkerImpl for MySharedWorkerImpl {
///     fn on_query(&mut self, _privileged: bool) -> Option<WorkerStatus> {
///         Some(format!("Current counter value : {}", self.i).into())
///     }
/// }
/// ```
pub trait SharedWorkerImpl: EventedWorker {
    /// A client asked for the worker's status; `privileged` when its connection proved it
    /// knows the admin cookie, so the worker can tell more to those who do.
    ///
    /// `None` (the default) when there is nothing interesting to report; a text converts into
    /// a status with `.into()`.
    fn on_query(&mut self, privileged: bool) -> Option<WorkerStatus> {
        let _ = privileged;
        None
    }

    /// The worker is asked to stop: deregister and cancel what it put on the loop (its own
    /// sockets, timers, sub-workers), since the loop ends only once nothing is registered.
    ///
    /// It runs once, after the server stopped accepting and before the connections close: a
    /// last message sent now is still delivered. An error is reported (logged, and returned
    /// by [`SharedServer::run`]) once the stop is over; the stop goes on.
    fn on_stop(&mut self, event_loop: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
        let _ = event_loop;
        Ok(())
    }
}

/// The `log` target of the server's lines.
const LOG_TARGET: &str = "exsyst_worker::shared";

/// Where a server's log lines go, with the level each deserves.
type LogSink = Arc<dyn Fn(Level, &str) + Send + Sync>;

/// A shared-worker server, bound and ready to run an implementation (the server half of the
/// seed's shared workers; a daemon started by [`registry().shared::<W>()`](crate::SharedRegistryExt)
/// is one of these).
///
/// It listens on a Unix socket or a TCP port and serves many connections at once on one
/// thread: each gets a hello with a fresh nonce, its own bounded queue of replies, and the
/// admin plane (queries, authentication, the authenticated stop) beside the worker's
/// messages. What goes wrong with one client (garbage, an oversized or cut frame, silence past
/// the handshake deadline, a full queue, repeated wrong cookies) ends that client's connection
/// only.
///
/// Embedded in a program, on a thread of its own:
///
/// ```
/// use worker_core::{BoxError, Connection, EventedWorker, Worker, WorkerLoop};
/// use worker_shared::{SharedServer, SharedServerConfig, SharedWorker, SharedWorkerImpl};
///
/// struct Echo;
/// impl Worker for Echo {
///     const NAME: &'static str = "echo";
///     type Args = ();
///     fn new((): ()) -> Result<Self, BoxError> { Ok(Echo) }
/// }
/// impl EventedWorker for Echo {
///     type Message = String;
///     type Reply = String;
///     fn on_message(&mut self, text: String, connection: &mut Connection<String>,
///                   _: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
///         connection.send(&text)?;
///         Ok(())
///     }
/// }
/// impl SharedWorkerImpl for Echo {}
///
/// let dir = tempfile::tempdir()?;
/// let address = format!("unix://{}/echo.sock", dir.path().display());
/// let server = SharedServer::bind(&address, SharedServerConfig::default())?.spawn(|| Ok(Echo))?;
///
/// let mut client = SharedWorker::connect(&address)?;
/// client.send_message("ping")?;
/// assert_eq!(client.receive_message::<String>()?, "ping");
///
/// server.stop();
/// server.join()?; // the socket file is gone now
/// assert!(!dir.path().join("echo.sock").exists());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SharedServer {
    bound: Bound,
    config: SharedServerConfig,
    stop_line: StopLine,
    stop_reader: UnixStream,
    log: LogSink,
}

impl fmt::Debug for SharedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedServer")
            .field("address", &self.bound.address)
            .field("activated", &self.bound.activated)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SharedServer {
    /// Listens at `address` (`unix:///absolute/path`, `tcp://host:port` or
    /// `tcp://[ipv6]:port`), or on the listener that systemd's socket activation hands over.
    ///
    /// - A Unix socket file is created with the configured mode (`0600` by default), never
    ///   more open; its directory is created `0700` when it does not exist. An existing file at
    ///   the path is an error ([`Error::Bind`], address in use): whoever starts the server
    ///   decides whether it is stale.
    /// - Socket activation (unless [disabled](SharedServerConfig::with_socket_activation)):
    ///   when `LISTEN_PID` is this process and `LISTEN_FDS` at least 1, the server serves on
    ///   descriptor 3 instead, and removes the three `LISTEN_*` variables from the environment;
    ///   call it before other threads read the environment then. Its socket file is systemd's:
    ///   the server never removes it.
    pub fn bind(address: &str, config: SharedServerConfig) -> Result<Self, Error> {
        config.validate()?;
        let address = address::parse(address)?;
        let bound = listener::bind(&address, &config)?;
        Self::new(bound, config)
    }

    /// Serves on a Unix listener the caller bound (at a path); its socket file stays the
    /// caller's to remove.
    pub fn from_unix_listener(
        listener: StdUnixListener,
        config: SharedServerConfig,
    ) -> Result<Self, Error> {
        config.validate()?;
        let bound = listener::from_unix(listener).map_err(|source| Error::Bind {
            address: "a unix listener".to_owned(),
            source,
        })?;
        Self::new(bound, config)
    }

    /// Serves on a TCP listener the caller bound (on port 0, say, for a port of the kernel's
    /// choosing; [`SharedServer::address`] names it).
    pub fn from_tcp_listener(
        listener: StdTcpListener,
        config: SharedServerConfig,
    ) -> Result<Self, Error> {
        config.validate()?;
        let bound = listener::from_tcp(listener).map_err(|source| Error::Bind {
            address: "a tcp listener".to_owned(),
            source,
        })?;
        Self::new(bound, config)
    }

    fn new(bound: Bound, config: SharedServerConfig) -> Result<Self, Error> {
        let address = bound.address.to_string();
        let (stop_line, stop_reader) = StopLine::new().map_err(|source| Error::Serve {
            address: address.clone(),
            source: worker_core::Error::Io {
                op: "create stop line",
                source,
            },
        })?;
        let pid = std::process::id();
        let log: LogSink = Arc::new(move |level, line: &str| {
            log::log!(
                target: LOG_TARGET,
                level,
                "shared worker {address} (pid {pid}): {line}"
            );
        });
        Ok(SharedServer {
            bound,
            config,
            stop_line,
            stop_reader,
            log,
        })
    }

    /// The address clients connect to, in canonical form (for a TCP listener bound on port 0,
    /// with the port the kernel chose).
    pub fn address(&self) -> &str {
        self.bound.address.as_str()
    }

    /// Whether the listener came from systemd's socket activation.
    pub fn is_socket_activated(&self) -> bool {
        self.bound.activated
    }

    /// Hands the server's log lines (connections refused or dropped, wrong cookies, the stop)
    /// to the function `log` instead of the `log` facade. Lines never hold a cookie or a proof.
    ///
    /// By default each line is a `log` record with the target `exsyst_worker::shared`: the
    /// start and the stop at `info`, a wrong cookie or a refused connection at `warn`, a
    /// connection dropped for an error at `debug`, a failed callback at `error`.
    pub fn with_log(mut self, log: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.log = Arc::new(move |_, line: &str| log(line));
        self
    }

    /// A handle that stops the server once it runs, from any thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop_line.handle()
    }

    /// Serves `worker` on the calling thread until it is stopped and its loop has nothing left
    /// (see [`SharedWorkerImpl`] for the order of the callbacks).
    ///
    /// Returns the first error of the worker's `on_stop` once the stop is over, or
    /// [`Error::Serve`] at once when the event loop or a callback of the worker fails (the
    /// server ends then without `on_stop` or `terminate`, and removes its socket file).
    pub fn run<W: SharedWorkerImpl>(self, worker: W) -> Result<(), Error> {
        let SharedServer {
            bound,
            config,
            stop_line,
            stop_reader,
            log,
        } = self;
        let address = bound.address.to_string();
        let serve_error = |source| Error::Serve {
            address: address.clone(),
            source,
        };
        let _signals = if config.stop_on_signals() {
            Some(stop_line.catch_signals().map_err(|source| Error::Signals {
                address: address.clone(),
                source,
            })?)
        } else {
            None
        };
        let _current = stop::enter(stop_line.handle());
        let mut event_loop = WorkerLoop::<W>::new().map_err(serve_error)?;
        event_loop.set_spin(config.spin());
        let mut host = WorkerHost::shared(worker);
        let Bound {
            mut listener,
            socket_file,
            ..
        } = bound;
        let state = Rc::new(RefCell::new(State {
            address: address.clone(),
            info: ServerInfo {
                pid: std::process::id(),
                implementation: W::NAME.to_owned(),
                codec: config.codec(),
                max_frame_len: config.max_frame_len(),
            },
            cookie: config.cookie().cloned(),
            peer_uids: config.peer_uids().clone(),
            euid: sys::geteuid(),
            codec: config.codec(),
            max_frame_len: config.max_frame_len(),
            max_connections: config.max_connections(),
            max_queued: config.max_queued(),
            handshake_timeout: config.handshake_timeout(),
            drain_timeout: config.drain_timeout(),
            idle_timeout: config.idle_timeout(),
            sessions: HashMap::new(),
            listener: None,
            stop_source: None,
            stop_probe: stop_reader.as_fd().try_clone_to_owned().ok(),
            stop_asked: false,
            socket_file,
            idle_timer: None,
            retry_timer: None,
            drain_timer: None,
            stopping: false,
            first_error: None,
            log,
        }));
        host.set_control_handler(control_handler(&state));
        host.set_disconnect_handler(disconnect_handler(&state));
        host.start(&mut event_loop).map_err(serve_error)?;

        let accepting = Rc::clone(&state);
        let listener_id = event_loop
            .register_ref(
                &mut listener,
                Interest::READABLE,
                move |host: &mut WorkerHost<W>, event_loop: &mut WorkerLoop<W>, _| {
                    accept_all(&accepting, host, event_loop)
                },
            )
            .map_err(serve_error)?;
        state.borrow_mut().listener = Some((listener_id, listener));
        let stopping = Rc::clone(&state);
        let stop_id = event_loop
            .register(
                stop_reader,
                Interest::READABLE,
                move |host: &mut WorkerHost<W>,
                      event_loop: &mut WorkerLoop<W>,
                      reader: &mut UnixStream,
                      _| {
                    match stop::read_reason(reader) {
                        Some(reason) => {
                            begin_stop(&stopping, host, event_loop, Cause::Line(reason))
                        }
                        None => Ok(()),
                    }
                },
            )
            .map_err(serve_error)?;
        state.borrow_mut().stop_source = Some(stop_id);
        arm_idle_timer(&state, &mut event_loop);
        state.borrow().log(Level::Info, "listening");

        let ran = event_loop.run(&mut host);
        // Whatever ended the loop, the socket file goes if it is still ours.
        let socket_file = state.borrow_mut().socket_file.take();
        drop(socket_file);
        ran.map_err(serve_error)?;
        let first_error = state.borrow_mut().first_error.take();
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Serves the worker that `make` builds on a thread of its own, returning once the worker
    /// is built (or with its constructor's error, [`Error::Constructor`]).
    ///
    /// The server is listening already, so clients can connect as soon as this returns.
    /// [`RunningServer::stop`] stops it, [`RunningServer::join`] waits for it; dropping the
    /// [`RunningServer`] does both.
    pub fn spawn<W, F>(self, make: F) -> Result<RunningServer, Error>
    where
        W: SharedWorkerImpl,
        F: FnOnce() -> Result<W, BoxError> + Send + 'static,
    {
        let stop = self.stop_handle();
        let address = self.address().to_owned();
        let (built_tx, built) = mpsc::sync_channel::<Result<(), BoxError>>(1);
        let thread = thread::Builder::new()
            .name(format!("shared worker {}", W::NAME))
            .spawn(move || {
                let worker = match make() {
                    Ok(worker) => worker,
                    Err(e) => {
                        let _ = built_tx.send(Err(e));
                        return Ok(());
                    }
                };
                let _ = built_tx.send(Ok(()));
                self.run(worker)
            })
            .map_err(|source| Error::Serve {
                address: address.clone(),
                source: worker_core::Error::Io {
                    op: "spawn thread",
                    source,
                },
            })?;
        match built.recv() {
            Ok(Ok(())) => Ok(RunningServer {
                address,
                stop,
                thread: Some(thread),
            }),
            Ok(Err(source)) => {
                let _ = thread.join();
                Err(Error::Constructor {
                    implementation: W::NAME.to_owned(),
                    source,
                })
            }
            // The constructor panicked: so does this.
            Err(_) => match thread.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(_) => unreachable!("the thread reports before it returns"),
            },
        }
    }
}

/// A [`SharedServer`] serving on a thread of its own, from [`SharedServer::spawn`].
///
/// Dropping it stops the server and waits for its thread.
#[derive(Debug)]
pub struct RunningServer {
    address: String,
    stop: StopHandle,
    thread: Option<thread::JoinHandle<Result<(), Error>>>,
}

impl RunningServer {
    /// The address clients connect to, in canonical form.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Asks the server to stop gracefully; returns at once (see [`StopHandle::stop`]).
    pub fn stop(&self) -> bool {
        self.stop.stop()
    }

    /// A handle that stops the server from anywhere.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Whether the server's thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits until the server has stopped (something must stop it: a client with the cookie,
    /// [`RunningServer::stop`], the idle time), returning what [`SharedServer::run`] returned.
    ///
    /// A panic of the worker on the server's thread resumes here.
    pub fn join(mut self) -> Result<(), Error> {
        let thread = self.thread.take().expect("joined once");
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.stop();
            let _ = thread.join();
        }
    }
}

/// Why a server stops.
#[derive(Clone, Copy, Debug)]
enum Cause {
    /// An authenticated client asked.
    Client(Peer),
    /// A stop handle, the worker, or a signal.
    Line(StopReason),
    /// Nobody connected for this long.
    Idle(Duration),
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Client(peer) => write!(f, "asked to stop by {peer}"),
            Cause::Line(reason) => write!(f, "{reason}"),
            Cause::Idle(idle) => write!(f, "no connection for {idle:?}"),
        }
    }
}

/// One connection's admin session and peer.
struct Session {
    admin: ServerSession,
    peer: Peer,
    handshake: Option<TimerId>,
}

type Shared = Rc<RefCell<State>>;

/// What the server keeps beside the host.
struct State {
    address: String,
    info: ServerInfo,
    cookie: Option<AdminCookie>,
    peer_uids: PeerUids,
    euid: u32,
    codec: Codec,
    max_frame_len: u32,
    max_connections: usize,
    max_queued: usize,
    handshake_timeout: Option<Duration>,
    drain_timeout: Duration,
    idle_timeout: Option<Duration>,
    sessions: HashMap<ConnectionId, Session>,
    listener: Option<(SourceId, Listener)>,
    stop_source: Option<SourceId>,
    /// The stop line's reading end again, to see a stop asked for but not begun yet.
    stop_probe: Option<OwnedFd>,
    /// A client's stop was acknowledged, and the stop begins once its callback returned.
    stop_asked: bool,
    socket_file: Option<SocketFile>,
    idle_timer: Option<TimerId>,
    retry_timer: Option<TimerId>,
    drain_timer: Option<TimerId>,
    stopping: bool,
    first_error: Option<Error>,
    log: LogSink,
}

impl State {
    fn log(&self, level: Level, line: &str) {
        (self.log)(level, line);
    }

    fn uid_allowed(&self, uid: u32) -> bool {
        match &self.peer_uids {
            PeerUids::Owner => uid == self.euid,
            PeerUids::Any => true,
            PeerUids::Only(uids) => uids.contains(&uid),
        }
    }

    /// Who is at the other end of a connection just accepted, if it may connect; otherwise
    /// why not, to log.
    fn admitted_peer(&self, accepted: &Accepted) -> Result<Peer, String> {
        let peer = match accepted {
            Accepted::Unix(_) => match sys::peer_cred(accepted.as_fd()) {
                Ok(cred) => Peer::Unix {
                    pid: u32::try_from(cred.pid).ok().filter(|&pid| pid != 0),
                    uid: cred.uid,
                    gid: cred.gid,
                },
                Err(e) => return Err(format!("refused a connection: cannot tell its peer ({e})")),
            },
            Accepted::Tcp(stream, addr) => {
                // One frame is one write; replies wait on no delayed acknowledgement.
                let _ = stream.set_nodelay(true);
                Peer::Tcp(*addr)
            }
        };
        if let Peer::Unix { uid, .. } = peer {
            if !self.uid_allowed(uid) {
                return Err(format!("refused {peer}: user {uid} may not connect"));
            }
        }
        Ok(peer)
    }

    /// Tells the connections still waiting in the listener's backlog that this server is
    /// stopping (their first and last frame, instead of a hello), and closes them.
    fn turn_away(&self, listener: &Listener) {
        let Ok(notice) = wire::encode(&ServerMessage::stopping()) else {
            return;
        };
        loop {
            let accepted = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.admitted_peer(&accepted).is_err() {
                continue;
            }
            let mut channel = match accepted {
                Accepted::Unix(stream) => {
                    NbChannel::from_unix_stream(stream, self.codec, self.max_frame_len)
                }
                Accepted::Tcp(stream, _) => {
                    NbChannel::from_tcp_stream(stream, self.codec, self.max_frame_len)
                }
            };
            // A fresh socket takes a frame this small at once.
            let _ = channel.send_raw(FrameKind::Control, &notice);
        }
    }

    /// Whether a stop is asked for and not begun yet: no hello is said then, since the
    /// stop's notice would follow it at once (the backlog is told by [`State::turn_away`]).
    fn stop_pending(&self) -> bool {
        self.stop_asked
            || self
                .stop_probe
                .as_ref()
                .is_some_and(|probe| worker_core::sys::readable_now(probe.as_fd()).unwrap_or(false))
    }

    fn record(&mut self, error: Error) {
        self.log(Level::Error, &error_chain(&error));
        self.first_error.get_or_insert(error);
    }
}

/// Accepts until the listener would block.
fn accept_all<W: SharedWorkerImpl>(
    state: &Shared,
    host: &mut WorkerHost<W>,
    event_loop: &mut WorkerLoop<W>,
) -> Result<(), BoxError> {
    loop {
        // Looked at before each accept: the callbacks of the connection admitted last (its
        // first message may be read as it joins the loop) may have asked for the stop.
        if state.borrow().stop_pending() {
            return Ok(());
        }
        let accepted = match state.borrow().listener.as_ref() {
            Some((_, listener)) => listener.accept(),
            None => return Ok(()),
        };
        match accepted {
            Ok(accepted) => admit(state, host, event_loop, accepted)?,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => {
                // Out of descriptors, say: the connection waits in the backlog, and no new
                // readiness will announce it, so look again a little later.
                let mut st = state.borrow_mut();
                if st.retry_timer.is_none() {
                    st.log(
                        Level::Warn,
                        &format!("cannot accept a connection ({e}); trying again in 100 ms"),
                    );
                    let retrying = Rc::clone(state);
                    let timer = event_loop.add_timer(
                        Duration::from_millis(100),
                        move |host: &mut WorkerHost<W>, event_loop: &mut WorkerLoop<W>| {
                            retrying.borrow_mut().retry_timer = None;
                            accept_all(&retrying, host, event_loop)
                        },
                    );
                    st.retry_timer = Some(timer);
                }
                return Ok(());
            }
        }
    }
}

/// Takes one accepted stream in: checks its peer and the limit, says hello, and hands it to
/// the host with its handshake deadline.
fn admit<W: SharedWorkerImpl>(
    state: &Shared,
    host: &mut WorkerHost<W>,
    event_loop: &mut WorkerLoop<W>,
    accepted: Accepted,
) -> Result<(), BoxError> {
    let mut st = state.borrow_mut();
    // Refused connections are closed at once, before any hello: the client sees the end of
    // the stream.
    let peer = match st.admitted_peer(&accepted) {
        Ok(peer) => peer,
        Err(why) => {
            st.log(Level::Warn, &why);
            return Ok(());
        }
    };
    let connections = host.connections().len();
    if connections >= st.max_connections {
        st.log(
            Level::Warn,
            &format!("refused {peer}: {connections} connections already, the limit"),
        );
        return Ok(());
    }
    let nonce = match auth::fresh_nonce() {
        Ok(nonce) => nonce,
        Err(e) => {
            st.log(
                Level::Warn,
                &format!("refused {peer}: cannot draw a nonce ({e})"),
            );
            return Ok(());
        }
    };
    let admin = ServerSession::new(nonce);
    let hello = wire::encode(&admin.hello(&st.info))?;
    let (codec, max_frame_len) = (st.codec, st.max_frame_len);
    let channel = match accepted {
        Accepted::Unix(stream) => NbChannel::from_unix_stream(stream, codec, max_frame_len),
        Accepted::Tcp(stream, _) => NbChannel::from_tcp_stream(stream, codec, max_frame_len),
    };
    let mut channel = channel.with_max_queued(st.max_queued);
    // Before `on_connect`, so that it is the first frame the client reads.
    if let Err(e) = channel.send_raw(FrameKind::Control, &hello) {
        st.log(
            Level::Debug,
            &format!("dropped {peer}: cannot say hello ({})", error_chain(&e)),
        );
        return Ok(());
    }
    if let Some(timer) = st.idle_timer.take() {
        event_loop.cancel_timer(timer);
    }
    let id = host.next_connection_id();
    st.sessions.insert(
        id,
        Session {
            admin,
            peer,
            handshake: None,
        },
    );
    let handshake_timeout = st.handshake_timeout;
    drop(st);
    match host.connect(event_loop, channel, peer.to_string()) {
        Ok(_) => {}
        // The connection could not join the loop: it alone is refused.
        Err(worker_core::Error::Io { op, source }) => {
            let mut st = state.borrow_mut();
            st.sessions.remove(&id);
            st.log(
                Level::Debug,
                &format!("dropped {peer}: cannot {op} it ({source})"),
            );
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    let silent = host
        .connections()
        .get(id)
        .is_some_and(|c| c.frames_received() == 0);
    if let (Some(timeout), true) = (handshake_timeout, silent) {
        let expiring = Rc::clone(state);
        let timer = event_loop.add_timer(
            timeout,
            move |host: &mut WorkerHost<W>, event_loop: &mut WorkerLoop<W>| {
                handshake_expired(&expiring, host, event_loop, id, timeout)
            },
        );
        if let Some(session) = state.borrow_mut().sessions.get_mut(&id) {
            session.handshake = Some(timer);
        }
    }
    Ok(())
}

/// Drops a connection that sent no complete frame within the handshake deadline.
fn handshake_expired<W: SharedWorkerImpl>(
    state: &Shared,
    host: &mut WorkerHost<W>,
    event_loop: &mut WorkerLoop<W>,
    id: ConnectionId,
    timeout: Duration,
) -> Result<(), BoxError> {
    let peer = {
        let mut st = state.borrow_mut();
        let Some(session) = st.sessions.get_mut(&id) else {
            return Ok(());
        };
        session.handshake = None;
        session.peer
    };
    let silent = host
        .connections()
        .get(id)
        .is_some_and(|c| c.frames_received() == 0);
    if silent {
        state.borrow().log(
            Level::Debug,
            &format!("dropped {peer}: said nothing within {timeout:?} of connecting"),
        );
        host.disconnect(event_loop, id)?;
    }
    Ok(())
}

/// Sends one admin message; control frames are MessagePack whatever the data codec.
fn send_control<R: serde::Serialize>(
    connection: &mut Connection<R>,
    message: &ServerMessage,
) -> Result<(), BoxError> {
    let payload = wire::encode(message)?;
    connection.send_raw(FrameKind::Control, &payload)?;
    Ok(())
}

/// The admin plane: each control frame through the connection's session.
fn control_handler<W: SharedWorkerImpl>(state: &Shared) -> ControlHandler<W> {
    let state = Rc::clone(state);
    Box::new(move |worker, connection, event_loop, payload| {
        let id = connection.id();
        let (step, peer, failures) = {
            let mut st = state.borrow_mut();
            let st = &mut *st;
            let Some(session) = st.sessions.get_mut(&id) else {
                return Ok(());
            };
            let step = session.admin.handle(st.cookie.as_ref(), payload);
            (step, session.peer, session.admin.failures())
        };
        match step {
            Step::Reply(message) => {
                log_refusal(&state, peer, &message, failures, false);
                send_control(connection, &message)?;
            }
            Step::Query { privileged } => {
                let status = worker.on_query(privileged);
                send_control(connection, &session::status(privileged, status))?;
            }
            Step::Stop(ack) => {
                send_control(connection, &ack)?;
                state.borrow_mut().stop_asked = true;
                let stopping = Rc::clone(&state);
                // Once this callback returns: the stop needs the whole host.
                event_loop.add_timer(
                    Duration::ZERO,
                    move |host: &mut WorkerHost<W>, event_loop: &mut WorkerLoop<W>| {
                        begin_stop(&stopping, host, event_loop, Cause::Client(peer))
                    },
                );
            }
            Step::Close(message) => {
                log_refusal(&state, peer, &message, failures, true);
                send_control(connection, &message)?;
                connection.close();
            }
        }
        Ok(())
    })
}

/// Logs a refused admin request: a wrong cookie above all, never with the proof.
fn log_refusal(state: &Shared, peer: Peer, message: &ServerMessage, failures: u32, closing: bool) {
    let ServerMessage::Error { code, message } = message else {
        return;
    };
    let then = if closing {
        "; closing its connection"
    } else {
        ""
    };
    let line = match code {
        ErrorCode::Unauthorized => format!(
            "wrong admin cookie from {peer} (failure {failures} of {MAX_AUTH_FAILURES}){then}"
        ),
        ErrorCode::NoCookie => format!(
            "{peer} tried to authenticate, but this worker has no admin cookie (failure \
             {failures} of {MAX_AUTH_FAILURES}){then}"
        ),
        ErrorCode::ProtocolError => format!("{peer} broke the admin protocol: {message}{then}"),
        // Asking before authenticating, or asking what a newer version offers, is no offence.
        _ => return,
    };
    state.borrow().log(Level::Warn, &line);
}

/// Forgets a connection that ended; logs why when it ended for an error; when it was the last,
/// finishes a stop or starts counting the idle time.
fn disconnect_handler<W: SharedWorkerImpl>(state: &Shared) -> DisconnectHandler<W> {
    let state = Rc::clone(state);
    Box::new(move |_, connection, event_loop| {
        let mut st = state.borrow_mut();
        let session = st.sessions.remove(&connection.id());
        if let Some(timer) = session.as_ref().and_then(|s| s.handshake) {
            event_loop.cancel_timer(timer);
        }
        if let (Some(error), Some(session)) = (connection.error(), &session) {
            st.log(
                Level::Debug,
                &format!(
                    "dropped connection from {}: {}",
                    session.peer,
                    error_chain(error)
                ),
            );
        }
        if st.sessions.is_empty() {
            if st.stopping {
                let ending = Rc::clone(&state);
                event_loop.add_timer(
                    Duration::ZERO,
                    move |host: &mut WorkerHost<W>, event_loop: &mut WorkerLoop<W>| {
                        end_stop(&ending, host, event_loop)
                    },
                );
            } else {
                drop(st);
                arm_idle_timer(&state, event_loop);
            }
        }
        Ok(())
    })
}

/// Starts counting the idle time, when the server has one and nobody is connected.
fn arm_idle_timer<W: SharedWorkerImpl>(state: &Shared, event_loop: &mut WorkerLoop<W>) {
    let mut st = state.borrow_mut();
    let Some(idle) = st.idle_timeout else {
        return;
    };
    if st.stopping || st.idle_timer.is_some() || !st.sessions.is_empty() {
        return;
    }
    let idling = Rc::clone(state);
    let timer = event_loop.add_timer(
        idle,
        move |host: &mut WorkerHost<W>, event_loop: &mut WorkerLoop<W>| {
            idling.borrow_mut().idle_timer = None;
            begin_stop(&idling, host, event_loop, Cause::Idle(idle))
        },
    );
    st.idle_timer = Some(timer);
}

/// The graceful stop: stop accepting, remove the socket file if it is still ours, `on_stop`,
/// then every connection answers what it already sent, delivers what is queued and closes
/// (within the drain deadline), and `terminate` follows the last one.
fn begin_stop<W: SharedWorkerImpl>(
    state: &Shared,
    host: &mut WorkerHost<W>,
    event_loop: &mut WorkerLoop<W>,
    cause: Cause,
) -> Result<(), BoxError> {
    let (listener, stop_source, timers, socket_file) = {
        let mut st = state.borrow_mut();
        if std::mem::replace(&mut st.stopping, true) {
            return Ok(());
        }
        st.log(Level::Info, &format!("stopping: {cause}"));
        let mut timers: Vec<TimerId> = st
            .sessions
            .values_mut()
            .filter_map(|s| s.handshake.take())
            .collect();
        timers.extend(st.idle_timer.take());
        timers.extend(st.retry_timer.take());
        (
            st.listener.take(),
            st.stop_source.take(),
            timers,
            st.socket_file.take(),
        )
    };
    // The socket's name first, so that no new connection reaches the listener; then those
    // already waiting in its backlog are told, rather than cut off when it closes.
    if let Some(mut file) = socket_file {
        match file.remove_if_ours() {
            Ok(_) => {}
            Err(e) => state
                .borrow()
                .log(Level::Warn, &format!("cannot remove the socket file: {e}")),
        }
    }
    if let Some((id, mut listener)) = listener {
        event_loop.deregister_ref(id, &mut listener);
        state.borrow().turn_away(&listener);
    }
    if let Some(id) = stop_source {
        event_loop.deregister(id);
    }
    for timer in timers {
        event_loop.cancel_timer(timer);
    }
    if let Err(source) = host.worker_mut().on_stop(event_loop) {
        let mut st = state.borrow_mut();
        let address = st.address.clone();
        st.record(Error::Serve {
            address,
            source: worker_core::Error::Handler {
                callback: "on_stop",
                source,
            },
        });
    }
    // Each connection's last frame says why it ends: a client tells a stopping worker from
    // one that died.
    let notice = wire::encode(&ServerMessage::stopping())?;
    for id in host.connections().ids() {
        host.finish_with(event_loop, id, Some((FrameKind::Control, &notice)))?;
    }
    if host.connections().is_empty() {
        return end_stop(state, host, event_loop);
    }
    let drain = state.borrow().drain_timeout;
    let draining = Rc::clone(state);
    let timer = event_loop.add_timer(
        drain,
        move |host: &mut WorkerHost<W>, event_loop: &mut WorkerLoop<W>| {
            draining.borrow_mut().drain_timer = None;
            let ids = host.connections().ids();
            draining.borrow().log(
                Level::Warn,
                &format!(
                    "{} connections still had replies to take after {drain:?}: closing them",
                    ids.len()
                ),
            );
            for id in ids {
                host.disconnect(event_loop, id)?;
            }
            Ok(())
        },
    );
    state.borrow_mut().drain_timer = Some(timer);
    Ok(())
}

/// Ends a stop once the last connection is gone: `terminate`, once.
fn end_stop<W: SharedWorkerImpl>(
    state: &Shared,
    host: &mut WorkerHost<W>,
    event_loop: &mut WorkerLoop<W>,
) -> Result<(), BoxError> {
    if host.is_terminated() || !host.connections().is_empty() {
        return Ok(());
    }
    if let Some(timer) = state.borrow_mut().drain_timer.take() {
        event_loop.cancel_timer(timer);
    }
    host.terminate(event_loop)?;
    state.borrow().log(Level::Info, "stopped");
    Ok(())
}
