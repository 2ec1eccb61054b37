//! The shared-worker server: one listener and many connections on one evented host.
//!
//! Everything runs on the loop's one thread. What the server keeps beside the host (the
//! listener, each connection's admin session and peer, the timers, whether it is stopping) is
//! in one [`State`] shared by the handlers it puts on the loop; a handler borrows it only
//! between calls into the host, never across one, since the host calls back into other
//! handlers.

use std::{
    cell::RefCell,
    collections::{HashMap, VecDeque},
    fmt,
    net::TcpListener as StdTcpListener,
    os::{
        fd::{AsFd, OwnedFd},
        unix::net::UnixListener as StdUnixListener,
    },
    rc::Rc,
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant},
};

use log::Level;
use worker_channel::FrameKind;
use worker_core::{
    BoxError, Connection, ConnectionId, ControlHandler, DataGuard, DisconnectHandler,
    EventedWorker, NbChannel, PanicHandler, SourceId, TimerId, WorkerHost, WorkerLoop,
    WorkerStatus, catch_panic, deadline_after, error_chain,
    mio::{Interest, net::UnixStream},
};

use crate::{
    AdminCookie, ClientAuth, Error, PanicPolicy, Peer, PeerUids, SharedServerConfig, address, auth,
    listener::{self, Accepted, Bound, Listener, SocketFile},
    session::{self, Context, MAX_AUTH_FAILURES, ServerInfo, ServerSession, Step},
    stop::{self, StopHandle, StopLine, StopReason},
    sys,
    throttle::{self, PeerKey, Throttle, Verdict},
    wire::{self, ErrorCode, ServerMessage},
};

/// A shared worker's implementation: an [`EventedWorker`] that many masters reach over a
/// socket (the seed's `SharedWorkerImplementationInterface`), and that a client holding the
/// admin cookie can stop.
///
/// A panic in any of its callbacks is caught by the server (see [`PanicPolicy`]): by default
/// it ends the connection it was serving, and the others are served on, by a worker left as the
/// panicking callback left it.
///
/// Where the server requires client authentication, the worker meets a connection only once
/// it authenticated: `on_connect` runs then, and a connection that never does reaches neither
/// `on_connect` nor `on_disconnect`.
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
    /// The process's stop signals, taken from the bind on (when the configuration says so),
    /// so that a daemon that reported `listening` is never killed by a SIGTERM or a SIGHUP
    /// that comes before its loop runs: the signal waits on the stop line.
    signals: Option<sys::StopSignals>,
    /// Whether connections must authenticate before data and queries.
    require_auth: bool,
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
        let require_auth = match config.client_auth() {
            ClientAuth::Always => true,
            ClientAuth::Never => false,
            // Whatever else `NonLoopback` may come to mean: required unless proven loopback.
            _ => match &bound.listener {
                Listener::Tcp(listener) => {
                    listener.local_addr().is_ok_and(|a| !a.ip().is_loopback())
                }
                Listener::Unix(_) => false,
            },
        };
        if require_auth && config.client_cookie().is_none() && config.cookie().is_none() {
            return Err(Error::Config {
                what: "client_auth",
                why: format!(
                    "requires clients to authenticate at {address}, a TCP address that is not \
                     loopback or by choice, but there is no client cookie nor admin cookie to \
                     authenticate with: give one (with_client_cookie), or leave the data plane \
                     open to anyone who reaches the port (with_client_auth(ClientAuth::Never))"
                ),
            });
        }
        let (stop_line, stop_reader) = StopLine::new().map_err(|source| Error::Serve {
            address: address.clone(),
            source: worker_core::Error::Io {
                op: "create stop line",
                source,
            },
        })?;
        let signals = if config.stop_on_signals() {
            Some(stop_line.catch_signals().map_err(|source| Error::Signals {
                address: address.clone(),
                source,
            })?)
        } else {
            None
        };
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
            signals,
            require_auth,
            log,
        })
    }

    /// The address clients connect to, in canonical form (for a TCP listener bound on port 0,
    /// with the port the kernel chose).
    pub fn address(&self) -> &str {
        self.bound.address.as_str()
    }

    /// Whether connections must prove they know the client cookie (or the admin cookie)
    /// before the server takes a data message or a query from them (see
    /// [`ClientAuth`]).
    pub fn requires_client_auth(&self) -> bool {
        self.require_auth
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
            signals: _signals,
            require_auth,
            log,
        } = self;
        let address = bound.address.to_string();
        let serve_error = |source| Error::Serve {
            address: address.clone(),
            source,
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
        let settings = Settings::new(&config, address.clone(), W::NAME, require_auth);
        let state = Rc::new(RefCell::new(State {
            settings,
            sessions: HashMap::new(),
            listener: None,
            stop_source: None,
            stop_probe: stop_reader.as_fd().try_clone_to_owned().ok(),
            stop_asked: false,
            socket_file,
            idle_timer: None,
            retry_timer: None,
            drain_timer: None,
            sweep_timer: None,
            throttle: Throttle::new(Instant::now()),
            panics: VecDeque::new(),
            stopping: false,
            first_error: None,
            log,
        }));
        host.set_control_handler(control_handler(&state));
        host.set_disconnect_handler(disconnect_handler(&state));
        host.set_panic_handler(panic_handler(&state));
        if require_auth {
            host.set_data_guard(data_guard(&state));
        }
        let panicking = Rc::clone(&state);
        event_loop.set_panic_handler(
            move |_: &mut WorkerHost<W>, event_loop: &mut WorkerLoop<W>, error| {
                panicked(&panicking, event_loop, &error, None);
                Ok(())
            },
        );
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
                    let heard = stop::read_reasons(reader);
                    if let Some(ignored) = heard.ignored {
                        stopping.borrow().log(
                            Level::Info,
                            &format!("{ignored}: ignored, serving on (SIGTERM or SIGINT stops)"),
                        );
                    }
                    match heard.stop {
                        Some(reason) => {
                            begin_stop(&stopping, host, event_loop, Cause::Line(reason))
                        }
                        // The accepts put off while the line was unread (it might have been a
                        // stop) are made now: the listener says nothing new for them.
                        None => accept_all(&stopping, host, event_loop),
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
    /// Callbacks panicked, as often as the panic policy allows.
    Panics(PanicPolicy),
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Client(peer) => write!(f, "asked to stop by {peer}"),
            Cause::Line(reason) => write!(f, "{reason}"),
            Cause::Idle(idle) => write!(f, "no connection for {idle:?}"),
            Cause::Panics(PanicPolicy::Isolate { max_panics, within }) => {
                write!(f, "{max_panics} panics within {within:?}")
            }
            Cause::Panics(_) => f.write_str("a callback panicked"),
        }
    }
}

/// One connection's admin session and peer.
struct Session {
    admin: ServerSession,
    peer: Peer,
    handshake: Option<TimerId>,
    /// Frames received when the idle sweep last looked, and when it last saw the connection
    /// busy.
    seen_frames: u64,
    busy_at: Instant,
    /// Its authentication waits for the end of its peer's throttle window; nothing more is
    /// taken from it.
    held: bool,
    /// It sent data without authenticating, and was told: what it sends is dropped until this
    /// timer closes it.
    refused: Option<TimerId>,
}

/// How long a connection refused for sending data unauthenticated is kept, its frames
/// dropped, before it is closed: a client that sent several messages before reading its
/// refusal gets to read it, instead of a reset that would throw it away.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

type Shared = Rc<RefCell<State>>;

/// What the server was told, fixed for its run.
struct Settings {
    address: String,
    info: ServerInfo,
    cookie: Option<AdminCookie>,
    client_cookie: Option<AdminCookie>,
    /// Whether connections must authenticate before data and queries.
    require_auth: bool,
    peer_uids: PeerUids,
    euid: u32,
    max_connections: usize,
    max_queued: usize,
    stall_timeout: Duration,
    handshake_timeout: Option<Duration>,
    drain_timeout: Duration,
    idle_timeout: Option<Duration>,
    /// Only a timeout the clock can reach: `Duration::MAX` is none.
    connection_idle_timeout: Option<Duration>,
    panic_policy: PanicPolicy,
}

impl Settings {
    fn new(
        config: &SharedServerConfig,
        address: String,
        implementation: &str,
        require_auth: bool,
    ) -> Self {
        Settings {
            address,
            info: ServerInfo {
                pid: std::process::id(),
                implementation: implementation.to_owned(),
                codec: config.codec(),
                max_frame_len: config.max_frame_len(),
            },
            cookie: config.cookie().cloned(),
            client_cookie: config.client_cookie().cloned(),
            require_auth,
            peer_uids: config.peer_uids().clone(),
            euid: sys::geteuid(),
            max_connections: config.max_connections(),
            max_queued: config.max_queued(),
            stall_timeout: config.stall_timeout(),
            handshake_timeout: config.handshake_timeout(),
            drain_timeout: config.drain_timeout(),
            idle_timeout: config.idle_timeout(),
            connection_idle_timeout: config
                .connection_idle_timeout()
                .filter(|&t| deadline_after(t).is_some()),
            panic_policy: config.panic_policy(),
        }
    }

    fn uid_allowed(&self, uid: u32) -> bool {
        match &self.peer_uids {
            PeerUids::Owner => uid == self.euid,
            PeerUids::Any => true,
            PeerUids::Only(uids) => uids.contains(&uid),
        }
    }

    /// What a session checks control messages against, for a peer throttled or not.
    fn context(&self, throttled: bool) -> Context<'_> {
        Context {
            admin: self.cookie.as_ref(),
            client: self.client_cookie.as_ref(),
            throttled,
            codec: self.info.codec,
        }
    }
}

/// What the server keeps beside the host, besides its settings: the state of its run.
struct State {
    settings: Settings,
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
    /// Looks for idle connections while there are connections and a timeout for them.
    sweep_timer: Option<TimerId>,
    /// Failed authentications per peer, across connections.
    throttle: Throttle,
    /// When the panics of the current window happened, oldest first.
    panics: VecDeque<Instant>,
    stopping: bool,
    first_error: Option<Error>,
    log: LogSink,
}

impl State {
    fn log(&self, level: Level, line: &str) {
        (self.log)(level, line);
    }

    fn uid_allowed(&self, uid: u32) -> bool {
        self.settings.uid_allowed(uid)
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
                Accepted::Unix(stream) => NbChannel::from_unix_stream(
                    stream,
                    self.settings.info.codec,
                    self.settings.info.max_frame_len,
                ),
                Accepted::Tcp(stream, _) => NbChannel::from_tcp_stream(
                    stream,
                    self.settings.info.codec,
                    self.settings.info.max_frame_len,
                ),
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
                .is_some_and(|probe| worker_core::os::readable_now(probe.as_fd()).unwrap_or(false))
    }

    fn record(&mut self, error: Error) {
        self.log(Level::Error, &error_chain(&error));
        self.first_error.get_or_insert(error);
    }

    /// Counts a panic at `now`; whether the panic policy says to stop.
    fn count_panic(&mut self, now: Instant) -> bool {
        match self.settings.panic_policy {
            PanicPolicy::Isolate { max_panics, within } => {
                while self
                    .panics
                    .front()
                    .is_some_and(|&at| now.duration_since(at) >= within)
                {
                    self.panics.pop_front();
                }
                if self.panics.len() >= max_panics as usize {
                    self.panics.pop_front();
                }
                self.panics.push_back(now);
                self.panics.len() >= max_panics as usize
            }
            // `Stop`, and whatever a later policy may be: stop.
            _ => true,
        }
    }
}

/// Ends one connection on purpose, the one place that does: logs why at `level`, tells the
/// peer with `message` (a typed error it reads before the end of the stream), and closes the
/// connection once what is queued for it is written. From a timer, follow with
/// [`WorkerHost::close`], since no event of the connection's will come to end it.
fn close_connection<R: serde::Serialize>(
    st: &State,
    connection: &mut Connection<R>,
    level: Level,
    why: &str,
    message: &ServerMessage,
) {
    tell_and_log(st, connection, level, why, message);
    connection.close();
}

/// The first half of [`close_connection`], for a close that comes later: logs why, and tells
/// the peer.
fn tell_and_log<R: serde::Serialize>(
    st: &State,
    connection: &mut Connection<R>,
    level: Level,
    why: &str,
    message: &ServerMessage,
) {
    st.log(level, why);
    // A peer already gone for writing cannot be told; the close goes on.
    let _ = send_control(connection, message);
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
    if connections >= st.settings.max_connections {
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
    let admin = ServerSession::new(nonce, st.settings.require_auth);
    let info = &st.settings.info;
    let hello = wire::encode(&admin.hello(info))?;
    let (codec, max_frame_len) = (info.codec, info.max_frame_len);
    let channel = match accepted {
        Accepted::Unix(stream) => NbChannel::from_unix_stream(stream, codec, max_frame_len),
        Accepted::Tcp(stream, _) => NbChannel::from_tcp_stream(stream, codec, max_frame_len),
    };
    let mut channel = channel
        .with_max_queued(st.settings.max_queued)
        .with_stall_timeout(st.settings.stall_timeout);
    // Before `on_connect`, so that it is the first frame the client reads. Queued, not
    // written: the host writes it with the replies to what the client already sent, in one
    // write, when the client did not wait for it.
    if let Err(e) = channel
        .connection_mut()
        .queue_raw(FrameKind::Control, &hello)
    {
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
            seen_frames: 0,
            busy_at: Instant::now(),
            held: false,
            refused: None,
        },
    );
    let handshake_timeout = st.settings.handshake_timeout;
    drop(st);
    arm_sweep(state, event_loop);
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
    // Where authentication is required, the deadline is the authentication's too.
    let require_auth = state.borrow().settings.require_auth;
    if let (Some(timeout), true) = (handshake_timeout, silent || require_auth) {
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

/// Drops a connection that sent no complete frame within the handshake deadline, and closes
/// one that has not authenticated by then where the server requires it.
fn handshake_expired<W: SharedWorkerImpl>(
    state: &Shared,
    host: &mut WorkerHost<W>,
    event_loop: &mut WorkerLoop<W>,
    id: ConnectionId,
    timeout: Duration,
) -> Result<(), BoxError> {
    let (peer, unauthenticated) = {
        let mut st = state.borrow_mut();
        let Some(session) = st.sessions.get_mut(&id) else {
            return Ok(());
        };
        session.handshake = None;
        (session.peer, !session.admin.may_send_data())
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
    } else if unauthenticated {
        let why = |peer| {
            format!("closing the connection of {peer}: not authenticated within {timeout:?}")
        };
        close_from_timer(
            state,
            host,
            event_loop,
            id,
            Level::Debug,
            why,
            &session::authentication_required(),
        )?;
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
            if session.held || session.refused.is_some() {
                return Ok(());
            }
            let key = PeerKey::of(&session.peer);
            let now = Instant::now();
            let verdict = st.throttle.verdict(key, now);
            let failures = session.admin.failures();
            let step = session
                .admin
                .handle(&st.settings.context(verdict != Verdict::Check), payload);
            if session.admin.failures() > failures {
                st.throttle.failed(key, now);
            }
            if session.admin.may_send_data() {
                connection.open_data();
            }
            let peer = session.peer;
            if step == Step::Throttled {
                session.held = true;
                if let Verdict::Refuse { log: true, .. } = verdict {
                    st.log(
                        Level::Warn,
                        &format!(
                            "{peer} failed to authenticate {} times within {:?}: its proofs are \
                             not checked, and are refused late, until the window ends",
                            throttle::MAX_FAILURES,
                            throttle::WINDOW
                        ),
                    );
                }
                let until = match verdict {
                    Verdict::Refuse { until, .. } => until,
                    Verdict::Check => now,
                };
                // Answered once the peer's window has ended, then closed.
                let releasing = Rc::clone(&state);
                event_loop.add_timer(
                    until.saturating_duration_since(now),
                    move |host: &mut WorkerHost<W>, event_loop: &mut WorkerLoop<W>| {
                        let why = |peer| {
                            format!(
                                "refused an authentication from {peer} unchecked (too many \
                                 failures lately); closing its connection"
                            )
                        };
                        let message = session::throttled();
                        close_from_timer(
                            &releasing,
                            host,
                            event_loop,
                            id,
                            Level::Debug,
                            why,
                            &message,
                        )
                    },
                );
            }
            let failures = st.sessions.get(&id).map_or(0, |s| s.admin.failures());
            (step, peer, failures)
        };
        match step {
            Step::Reply(message) => {
                if let Some(line) = refusal_line(peer, &message, failures, false) {
                    state.borrow().log(Level::Warn, &line);
                }
                send_control(connection, &message)?;
            }
            Step::Query { privileged } => {
                // Caught here to be named; the host ends this connection only.
                let status = catch_panic("on_query", || worker.on_query(privileged))?;
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
                let why = refusal_line(peer, &message, failures, true)
                    .unwrap_or_else(|| format!("closing the connection of {peer}"));
                close_connection(&state.borrow(), connection, Level::Warn, &why, &message);
            }
            // Answered by its timer, above.
            Step::Throttled => {}
            Step::Nothing => {}
        }
        Ok(())
    })
}

/// [`close_connection`] from a timer, for connection `id` if it is still there.
#[allow(clippy::too_many_arguments)]
fn close_from_timer<W: SharedWorkerImpl>(
    state: &Shared,
    host: &mut WorkerHost<W>,
    event_loop: &mut WorkerLoop<W>,
    id: ConnectionId,
    level: Level,
    why: impl FnOnce(Peer) -> String,
    message: &ServerMessage,
) -> Result<(), BoxError> {
    let Some(connection) = host.connections_mut().get_mut(id) else {
        return Ok(());
    };
    {
        let st = state.borrow();
        let Some(session) = st.sessions.get(&id) else {
            return Ok(());
        };
        close_connection(&st, connection, level, &why(session.peer), message);
    }
    host.close(event_loop, id)?;
    Ok(())
}

/// Refuses a data message from a connection that has not authenticated, where the server
/// requires it: the peer is told, and its connection closes.
fn data_guard<W: SharedWorkerImpl>(state: &Shared) -> DataGuard<W> {
    let state = Rc::clone(state);
    Box::new(move |connection, event_loop| {
        let id = connection.id();
        let mut st = state.borrow_mut();
        let Some(session) = st.sessions.get(&id) else {
            return Ok(());
        };
        if session.refused.is_some() {
            return Ok(());
        }
        let why = format!(
            "refused a data message from {}: it has not authenticated; closing its connection",
            session.peer
        );
        tell_and_log(
            &st,
            connection,
            Level::Warn,
            &why,
            &session::authentication_required(),
        );
        let timer = event_loop.add_timer(
            REFUSAL_LINGER,
            move |host: &mut WorkerHost<W>, event_loop: &mut WorkerLoop<W>| {
                host.close(event_loop, id)?;
                Ok(())
            },
        );
        if let Some(session) = st.sessions.get_mut(&id) {
            session.refused = Some(timer);
        }
        Ok(())
    })
}

/// A callback run for a connection panicked: its peer is told, its connection closes (the
/// host closes it once this returns), and the panic counts.
fn panic_handler<W: SharedWorkerImpl>(state: &Shared) -> PanicHandler<W> {
    let state = Rc::clone(state);
    Box::new(move |connection, event_loop, error| {
        let peer = state
            .borrow()
            .sessions
            .get(&connection.id())
            .map(|session| session.peer);
        // A peer already gone for writing cannot be told.
        let failed = ServerMessage::error(
            ErrorCode::WorkerFailed,
            "the worker failed while serving this connection",
        );
        let _ = send_control(connection, &failed);
        panicked(&state, event_loop, error, peer);
        Ok(())
    })
}

/// A callback of the worker, or a handler on the loop, panicked: logs it with the panic's
/// message, counts it, and begins a graceful stop when the panic policy says so.
fn panicked<W: SharedWorkerImpl>(
    state: &Shared,
    event_loop: &mut WorkerLoop<W>,
    error: &worker_core::Error,
    peer: Option<Peer>,
) {
    let mut st = state.borrow_mut();
    let stop = st.count_panic(Instant::now());
    let serving = peer.map_or_else(String::new, |peer| {
        format!(" while serving {peer}, whose connection closes")
    });
    let then = if st.stopping {
        ""
    } else if stop {
        "; stopping, as the panic policy says"
    } else {
        "; serving the others on"
    };
    st.log(Level::Error, &format!("{error}{serving}{then}"));
    if !stop || st.stopping {
        return;
    }
    let address = st.settings.address.clone();
    let message = match error {
        worker_core::Error::Panicked { message, .. } => message.clone(),
        other => other.to_string(),
    };
    let callback = match error {
        worker_core::Error::Panicked { callback, .. } => callback,
        _ => &"handler",
    };
    st.first_error.get_or_insert(Error::Serve {
        address,
        source: worker_core::Error::Panicked { callback, message },
    });
    let policy = st.settings.panic_policy;
    drop(st);
    let stopping = Rc::clone(state);
    // Once the current callback returns: the stop needs the whole host.
    event_loop.add_timer(
        Duration::ZERO,
        move |host: &mut WorkerHost<W>, event_loop: &mut WorkerLoop<W>| {
            begin_stop(&stopping, host, event_loop, Cause::Panics(policy))
        },
    );
}

/// Looks for idle connections every quarter of their timeout (at least every 10 ms), while
/// there are connections.
fn arm_sweep<W: SharedWorkerImpl>(state: &Shared, event_loop: &mut WorkerLoop<W>) {
    let mut st = state.borrow_mut();
    let Some(timeout) = st.settings.connection_idle_timeout else {
        return;
    };
    if st.sweep_timer.is_some() || st.stopping || st.sessions.is_empty() {
        return;
    }
    let sweeping = Rc::clone(state);
    let every = (timeout / 4).max(Duration::from_millis(10));
    let timer = event_loop.add_periodic_timer(
        every,
        move |host: &mut WorkerHost<W>, event_loop: &mut WorkerLoop<W>| {
            sweep_idle(&sweeping, host, event_loop, timeout)
        },
    );
    st.sweep_timer = Some(timer);
}

/// Closes every connection that neither sent a frame nor had replies waiting for it within
/// `timeout`.
fn sweep_idle<W: SharedWorkerImpl>(
    state: &Shared,
    host: &mut WorkerHost<W>,
    event_loop: &mut WorkerLoop<W>,
    timeout: Duration,
) -> Result<(), BoxError> {
    let now = Instant::now();
    let mut idle = Vec::new();
    {
        let mut st = state.borrow_mut();
        for (&id, session) in st.sessions.iter_mut() {
            let Some(connection) = host.connections().get(id) else {
                continue;
            };
            let frames = connection.frames_received();
            if frames != session.seen_frames || connection.queued_bytes() > 0 {
                session.seen_frames = frames;
                session.busy_at = now;
            } else if !connection.is_closing() && now.duration_since(session.busy_at) >= timeout {
                idle.push(id);
            }
        }
    }
    let message = ServerMessage::error(
        ErrorCode::IdleTimeout,
        format!("this connection was idle for {timeout:?}"),
    );
    for id in idle {
        close_from_timer(
            state,
            host,
            event_loop,
            id,
            Level::Debug,
            |peer| format!("closing the connection of {peer}: idle for {timeout:?}"),
            &message,
        )?;
    }
    Ok(())
}

/// The log line of a refused admin request, if it deserves one: a wrong cookie above all,
/// never with the proof.
fn refusal_line(
    peer: Peer,
    message: &ServerMessage,
    failures: u32,
    closing: bool,
) -> Option<String> {
    let ServerMessage::Error { code, message } = message else {
        return None;
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
        ErrorCode::AuthenticationRequired if closing => {
            format!("refused a query from {peer}: it has not authenticated{then}")
        }
        // Asking to stop before authenticating, or asking what a newer version offers, is no
        // offence.
        _ => return None,
    };
    Some(line)
}

/// Forgets a connection that ended; logs why when it ended for an error; when it was the last,
/// finishes a stop or starts counting the idle time.
fn disconnect_handler<W: SharedWorkerImpl>(state: &Shared) -> DisconnectHandler<W> {
    let state = Rc::clone(state);
    Box::new(move |_, connection, event_loop| {
        let mut st = state.borrow_mut();
        let session = st.sessions.remove(&connection.id());
        for timer in session
            .iter()
            .flat_map(|s| s.handshake.into_iter().chain(s.refused))
        {
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
            if let Some(timer) = st.sweep_timer.take() {
                event_loop.cancel_timer(timer);
            }
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
    let Some(idle) = st.settings.idle_timeout else {
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
        timers.extend(st.sweep_timer.take());
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
    let stopped = catch_panic("on_stop", || host.worker_mut().on_stop(event_loop));
    let failed = match stopped {
        Ok(Ok(())) => None,
        Ok(Err(source)) => Some(worker_core::Error::Handler {
            callback: "on_stop",
            source,
        }),
        Err(panicked) => Some(panicked),
    };
    if let Some(source) = failed {
        let mut st = state.borrow_mut();
        let address = st.settings.address.clone();
        st.record(Error::Serve { address, source });
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
    let drain = state.borrow().settings.drain_timeout;
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
