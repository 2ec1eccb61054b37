//! What the tests share: transports, a protocol server written from the `protocol` guide alone
//! (its own message types and its own HMAC, so that a mistake shared by the crate's client and
//! server halves cannot hide), and a relay that records every byte.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::unix::net::{UnixListener, UnixStream},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, Sender},
    },
    thread,
    time::Duration,
};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tempfile::TempDir;
use worker_channel::{Channel, Codec, FrameKind};
use worker_core::{Counter, WorkerStatus};

/// `secs` seconds, times `EXSYST_TEST_TIMEOUT_SCALE` (default 1) for slow machines.
pub(crate) fn timeout(secs: f64) -> Duration {
    let scale = std::env::var("EXSYST_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(1.0);
    Duration::from_secs_f64(secs * scale)
}

/// The socket families a shared worker listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Unix,
    Tcp4,
    Tcp6,
}

pub(crate) const TRANSPORTS: [Transport; 3] = [Transport::Unix, Transport::Tcp4, Transport::Tcp6];

/// A connected socket of either family.
#[derive(Debug)]
pub(crate) enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    pub(crate) fn try_clone(&self) -> Conn {
        match self {
            Conn::Unix(s) => Conn::Unix(s.try_clone().unwrap()),
            Conn::Tcp(s) => Conn::Tcp(s.try_clone().unwrap()),
        }
    }

    pub(crate) fn shutdown_write(&self) {
        let _ = match self {
            Conn::Unix(s) => s.shutdown(Shutdown::Write),
            Conn::Tcp(s) => s.shutdown(Shutdown::Write),
        };
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where a listener is, to connect to it raw.
#[derive(Clone, Debug)]
pub(crate) enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Endpoint {
    pub(crate) fn connect(&self) -> Conn {
        match self {
            Endpoint::Unix(path) => Conn::Unix(UnixStream::connect(path).unwrap()),
            Endpoint::Tcp(addr) => Conn::Tcp(TcpStream::connect(addr).unwrap()),
        }
    }

    /// The shared-worker address of the endpoint.
    pub(crate) fn address(&self) -> String {
        match self {
            Endpoint::Unix(path) => format!("unix://{}", path.display()),
            Endpoint::Tcp(addr) => format!("tcp://{addr}"),
        }
    }
}

/// A listening socket of either family, in its own temporary directory.
#[derive(Debug)]
pub(crate) struct Listener {
    unix: Option<UnixListener>,
    tcp: Option<TcpListener>,
    pub endpoint: Endpoint,
    _dir: TempDir,
}

impl Listener {
    pub(crate) fn bind(transport: Transport) -> Listener {
        let dir = tempfile::tempdir().unwrap();
        let (unix, tcp, endpoint) = match transport {
            Transport::Unix => {
                let path = dir.path().join("worker.sock");
                let listener = UnixListener::bind(&path).unwrap();
                (Some(listener), None, Endpoint::Unix(path))
            }
            Transport::Tcp4 | Transport::Tcp6 => {
                let host = if transport == Transport::Tcp4 {
                    "127.0.0.1:0"
                } else {
                    "[::1]:0"
                };
                let listener = TcpListener::bind(host).unwrap();
                let addr = listener.local_addr().unwrap();
                (None, Some(listener), Endpoint::Tcp(addr))
            }
        };
        Listener {
            unix,
            tcp,
            endpoint,
            _dir: dir,
        }
    }

    pub(crate) fn address(&self) -> String {
        self.endpoint.address()
    }

    pub(crate) fn accept(&self) -> Conn {
        match (&self.unix, &self.tcp) {
            (Some(l), _) => Conn::Unix(l.accept().unwrap().0),
            (_, Some(l)) => Conn::Tcp(l.accept().unwrap().0),
            _ => unreachable!(),
        }
    }

    /// Runs `handle` on a thread for each connection, for ever.
    ///
    /// The listener lives on in the accepting thread; the temporary directory goes with the
    /// returned value, so the socket file is removed when the test is done.
    pub(crate) fn serve_each(self, handle: impl Fn(Conn) + Send + Sync + 'static) -> Served {
        let Listener {
            unix,
            tcp,
            endpoint,
            _dir,
        } = self;
        let handle = Arc::new(handle);
        thread::spawn(move || {
            loop {
                let conn = match (&unix, &tcp) {
                    (Some(l), _) => l.accept().map(|(s, _)| Conn::Unix(s)),
                    (_, Some(l)) => l.accept().map(|(s, _)| Conn::Tcp(s)),
                    _ => unreachable!(),
                };
                let Ok(conn) = conn else { continue };
                let handle = Arc::clone(&handle);
                thread::spawn(move || handle(conn));
            }
        });
        Served {
            address: endpoint.address(),
            endpoint,
            _dir,
        }
    }
}

/// A listener handed to [`Listener::serve_each`].
#[derive(Debug)]
pub(crate) struct Served {
    pub address: String,
    pub endpoint: Endpoint,
    _dir: TempDir,
}

// ---- The protocol, written again from the guide ----

pub(crate) const NONCE_LEN: usize = 32;
const CLIENT_LABEL: &[u8] = b"exsyst-worker admin v1 client";
const SERVER_LABEL: &[u8] = b"exsyst-worker admin v1 server";

/// What a server sends.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Out {
    Hello {
        version: u32,
        pid: u32,
        implementation: String,
        codec: Codec,
        max_frame_len: u32,
        #[serde(with = "serde_bytes")]
        nonce: Vec<u8>,
    },
    Authenticated {
        #[serde(with = "serde_bytes")]
        proof: Vec<u8>,
    },
    Status {
        privileged: bool,
        status: Option<WorkerStatus>,
    },
    Stopping,
    Error {
        code: String,
        message: String,
    },
}

/// What a client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum In {
    Authenticate {
        #[serde(with = "serde_bytes")]
        nonce: Vec<u8>,
        #[serde(with = "serde_bytes")]
        proof: Vec<u8>,
    },
    Query,
    Stop,
}

/// Any control message, read loosely: its type and error code, if any.
#[derive(Debug, Deserialize)]
pub(crate) struct Loose {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub code: Option<String>,
}

pub(crate) fn proof(cookie: &[u8], label: &[u8], ns: &[u8], nc: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(cookie).unwrap();
    for part in [label, &[0][..], ns, nc] {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

pub(crate) fn send_control<R: Read, W: Write>(
    channel: &mut Channel<R, W>,
    message: &Out,
) -> Result<(), worker_channel::Error> {
    let payload = Codec::MessagePack.encode(message)?;
    channel.send_raw(FrameKind::Control, &payload)
}

pub(crate) fn hello(codec: Codec, nonce: &[u8]) -> Out {
    Out::Hello {
        version: 1,
        pid: std::process::id(),
        implementation: "counter".into(),
        codec,
        max_frame_len: worker_channel::DEFAULT_MAX_FRAME_LEN,
        nonce: nonce.to_vec(),
    }
}

pub(crate) fn public_status() -> WorkerStatus {
    "public status".into()
}

pub(crate) fn full_status() -> WorkerStatus {
    WorkerStatus::new("full status")
        .with_counter(Counter::new("clients", 3.0).with_min(0.0))
        .with_counter(Counter::new("memory", 1024.0).with_unit("B"))
}

/// How the test server behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// As the guide says.
    Honest,
    /// Accepts, says nothing, keeps the connection open until the client leaves.
    Silent,
    /// Sends a data frame before its hello.
    DataFirst,
    /// Announces protocol version 2, with a hello of another shape.
    FutureVersion,
    /// Says hello, then never answers a control request.
    Mute,
    /// Refuses every control request with a code no client knows yet.
    Grumpy,
    /// Does not know the cookie, and claims success to any authentication.
    Impostor,
}

/// What the test server saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    Authenticated,
    AuthFailed,
    Query { privileged: bool },
    StopReceived,
}

pub(crate) struct Config {
    pub cookie: Option<Vec<u8>>,
    pub codec: Codec,
    pub mode: Mode,
    /// Data messages sent before each status reply.
    pub before_status: Vec<String>,
    /// When set, a stop is acknowledged only once this receives.
    pub stop_gate: Option<Mutex<Receiver<()>>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cookie: Some(COOKIE.to_vec()),
            codec: Codec::MessagePack,
            mode: Mode::Honest,
            before_status: Vec::new(),
            stop_gate: None,
        }
    }
}

/// The cookie the test servers know unless told otherwise: distinctive bytes, to search for.
pub(crate) const COOKIE: &[u8] = b"c00kie-4e1f-SECRET-9b27";

/// A test server: its address, and what it saw.
pub(crate) struct Server {
    pub address: String,
    pub endpoint: Endpoint,
    pub events: Receiver<Event>,
    _served: Served,
}

impl Server {
    pub(crate) fn start(transport: Transport, config: Config) -> Server {
        let (tx, events) = mpsc::channel();
        let config = Arc::new(config);
        let tx = Mutex::new(tx);
        let served = Listener::bind(transport).serve_each(move |conn| {
            let tx = tx.lock().unwrap().clone();
            serve(conn, &config, &tx);
        });
        Server {
            address: served.address.clone(),
            endpoint: served.endpoint.clone(),
            events,
            _served: served,
        }
    }

    /// The next thing the server saw.
    pub(crate) fn next_event(&self) -> Event {
        self.events
            .recv_timeout(timeout(10.0))
            .expect("the server saw nothing")
    }
}

/// Serves one connection; a client that leaves ends it, whatever the server was doing.
fn serve(conn: Conn, config: &Config, events: &Sender<Event>) {
    let _ = serve_until_error(conn, config, events);
}

fn serve_until_error(
    conn: Conn,
    config: &Config,
    events: &Sender<Event>,
) -> Result<(), worker_channel::Error> {
    let mut channel = Channel::new(conn.try_clone(), conn, config.codec);
    let mut nonce = vec![0; NONCE_LEN];
    getrandom::fill(&mut nonce).unwrap();
    match config.mode {
        Mode::Silent => {
            // Until the client leaves.
            let _ = channel.receive_frame();
            return Ok(());
        }
        Mode::DataFirst => channel.send_message("too early")?,
        Mode::FutureVersion => {
            #[derive(Serialize)]
            struct FutureHello {
                #[serde(rename = "type")]
                kind: &'static str,
                version: u32,
                nonce: &'static str,
            }
            let hello = FutureHello {
                kind: "hello",
                version: 2,
                nonce: "not bytes any more",
            };
            return channel.send_raw(FrameKind::Control, &Codec::MessagePack.encode(&hello)?);
        }
        Mode::Honest | Mode::Impostor | Mode::Mute | Mode::Grumpy => {}
    }
    send_control(&mut channel, &hello(config.codec, &nonce))?;
    let mut authenticated = false;
    loop {
        let (kind, payload) = channel.receive_frame()?;
        if kind == FrameKind::Data {
            let text: String = config.codec.decode(&payload)?;
            channel.send_message(&format!("echo: {text}"))?;
            continue;
        }
        if config.mode == Mode::Mute {
            continue;
        }
        let reply = match Codec::MessagePack.decode::<In>(&payload)? {
            _ if config.mode == Mode::Grumpy => Out::Error {
                code: "rate_limited".into(),
                message: "slow down".into(),
            },
            In::Authenticate { .. } if config.mode == Mode::Impostor => {
                Out::Authenticated { proof: vec![0; 32] }
            }
            In::Authenticate {
                nonce: nc,
                proof: p,
            } => match &config.cookie {
                None => Out::Error {
                    code: "no_cookie".into(),
                    message: "no cookie here".into(),
                },
                Some(cookie) => {
                    let expected = proof(cookie, CLIENT_LABEL, &nonce, &nc);
                    if expected == p {
                        authenticated = true;
                        let _ = events.send(Event::Authenticated);
                        Out::Authenticated {
                            proof: proof(cookie, SERVER_LABEL, &nonce, &nc),
                        }
                    } else {
                        let _ = events.send(Event::AuthFailed);
                        Out::Error {
                            code: "unauthorized".into(),
                            message: "wrong admin cookie".into(),
                        }
                    }
                }
            },
            In::Query => {
                let _ = events.send(Event::Query {
                    privileged: authenticated,
                });
                for message in &config.before_status {
                    channel.send_message(message)?;
                }
                Out::Status {
                    privileged: authenticated,
                    status: Some(if authenticated {
                        full_status()
                    } else {
                        public_status()
                    }),
                }
            }
            In::Stop => {
                let _ = events.send(Event::StopReceived);
                if !authenticated {
                    Out::Error {
                        code: "authentication_required".into(),
                        message: "stop needs an authenticated connection".into(),
                    }
                } else {
                    if let Some(gate) = &config.stop_gate {
                        let _ = gate.lock().unwrap().recv();
                    }
                    return send_control(&mut channel, &Out::Stopping);
                }
            }
        };
        send_control(&mut channel, &reply)?;
    }
}

/// A TCP relay in front of an endpoint that records what crosses it, each direction apart.
pub(crate) struct Relay {
    pub address: String,
    _served: Served,
    /// Client to server.
    pub up: Arc<Mutex<Vec<u8>>>,
    /// Server to client.
    pub down: Arc<Mutex<Vec<u8>>>,
}

impl Relay {
    /// Relays every connection made to the relay's address to `target`.
    pub(crate) fn start(target: Endpoint) -> Relay {
        let up = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(Mutex::new(Vec::new()));
        let (up2, down2) = (Arc::clone(&up), Arc::clone(&down));
        let served = Listener::bind(Transport::Tcp4).serve_each(move |client| {
            let server = target.connect();
            let (client2, server2) = (client.try_clone(), server.try_clone());
            let up = Arc::clone(&up2);
            thread::spawn(move || copy(client2, server2, &up));
            copy(server, client, &down2);
        });
        Relay {
            address: served.address.clone(),
            _served: served,
            up,
            down,
        }
    }

    /// Every byte that crossed, both ways.
    pub(crate) fn all_bytes(&self) -> Vec<u8> {
        let mut all = self.up.lock().unwrap().clone();
        all.extend_from_slice(&self.down.lock().unwrap());
        all
    }
}

/// Copies until end of stream, recording each chunk before it is forwarded, so a reply that
/// reached its reader has been recorded, as has everything the reply answered.
fn copy(mut from: Conn, mut to: Conn, record: &Mutex<Vec<u8>>) {
    let mut buf = [0; 4096];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                record.lock().unwrap().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    to.shutdown_write();
}

/// Whether `needle` occurs in `haystack`.
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Raises this process's soft limit on open descriptors to at least `wanted` (or to the hard
/// limit, if lower), for tests that hold many connections.
pub(crate) fn raise_fd_limit(wanted: u64) {
    // SAFETY: an all-zero rlimit is a valid value for getrlimit to fill.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `limit` is valid for writes.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(got, 0);
    if limit.rlim_cur >= wanted {
        return;
    }
    limit.rlim_cur = wanted.min(limit.rlim_max);
    // SAFETY: `limit` is a valid rlimit; raising the soft limit up to the hard one is allowed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}
