//! Shared-worker benchmarks: round trip, 1 MiB messages, connect, auto-start, and 1,000
//! concurrent clients.
//!
//! Ours is a [`SharedEcho`] daemon started on demand (this binary re-executed); the baselines
//! are this binary re-executed with `EXSYST_BENCH_SHARED_PEER` set, serving the same Unix
//! socket with no library: a blocking echo, and a minimal mio echo server. Each round starts
//! fresh servers, one after the other, as the other benchmarks do.

use std::{
    collections::HashMap,
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use exsyst_worker::{
    AdminCookie, BootstrapProfile, Codec, DedicatedWorker, SharedServerConfig, SharedWorker,
    Worker, channel::serde_bytes::ByteBuf,
};
use mio::{Events, Interest, Poll, Token};

use super::{
    Config, Line, alternate,
    dedicated::{SPIN, time_each},
};
use crate::workers::{dedicated::Echo, shared::SharedEcho};

/// Set in a baseline peer's environment: `echo:<socket path>` or `mio:<socket path>`.
const PEER_ENV: &str = "EXSYST_BENCH_SHARED_PEER";
/// The message of every benchmark, as the issue asks: 16 bytes.
const LEN: usize = 16;
/// The message of `shared 1 MiB`, each way.
const MIB: usize = 1024 * 1024;
/// Concurrent clients of `shared 1000 clients`.
const CLIENTS: usize = 1000;
/// Messages each of them exchanges, one at a time, per round.
const PER_CLIENT: usize = 50;

/// In a process started as a baseline peer, serves and never returns; otherwise returns.
pub fn run_peer_if_asked() {
    let Ok(role) = std::env::var(PEER_ENV) else {
        return;
    };
    let result = match role.split_once(':') {
        Some(("echo", path)) => blocking_echo(Path::new(path)),
        Some(("mio", path)) => mio_echo(Path::new(path)),
        _ => panic!("unknown peer role {role:?}"),
    };
    std::process::exit(if result.is_ok() { 0 } else { 1 });
}

/// Binds `path`, says `ready` on standard output, then echoes each connection in turn until it
/// ends: the raw Unix-socket ping-pong and connect baseline.
fn blocking_echo(path: &Path) -> io::Result<()> {
    let listener = UnixListener::bind(path)?;
    println!("ready");
    io::stdout().flush()?;
    // Large enough that a 1 MiB message costs few system calls here either.
    let mut buf = vec![0u8; 64 * 1024];
    for stream in listener.incoming() {
        let mut stream = stream?;
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Binds `path`, says `ready`, then echoes every connection at once on one mio loop: the
/// minimal raw server of `shared 1000 clients`.
fn mio_echo(path: &Path) -> io::Result<()> {
    const LISTENER: Token = Token(usize::MAX);
    let mut poll = Poll::new()?;
    let mut listener = mio::net::UnixListener::bind(path)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("ready");
    io::stdout().flush()?;
    let mut events = Events::with_capacity(1024);
    let mut conns: HashMap<usize, (mio::net::UnixStream, Vec<u8>)> = HashMap::new();
    let mut next = 0;
    let mut buf = [0u8; 4096];
    loop {
        poll.poll(&mut events, None)?;
        for event in &events {
            if event.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            poll.registry().register(
                                &mut stream,
                                Token(next),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            conns.insert(next, (stream, Vec::new()));
                            next += 1;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                continue;
            }
            let Some((stream, pending)) = conns.get_mut(&event.token().0) else {
                continue;
            };
            let mut closed = false;
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            while !pending.is_empty() {
                match stream.write(pending) {
                    Ok(n) => {
                        pending.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            if closed {
                conns.remove(&event.token().0);
            }
        }
    }
}

/// A baseline peer serving a socket in `dir`, killed on drop.
struct Peer {
    child: Child,
    path: PathBuf,
}

impl Peer {
    fn start(role: &str, dir: &Path) -> Peer {
        let path = dir.join(format!("{role}.sock"));
        let mut child = Command::new(std::env::current_exe().expect("current exe"))
            .env(PEER_ENV, format!("{role}:{}", path.display()))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start baseline peer");
        let mut ready = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut ready)
            .expect("peer ready");
        assert_eq!(ready.trim(), "ready");
        Peer { child, path }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A scratch directory for this run's sockets, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("exsyst-bench-shared-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cookie() -> AdminCookie {
    AdminCookie::new("the benchmarks' cookie").expect("cookie")
}

/// A shared echo daemon, started on demand at a fresh address, stopped on drop.
struct Daemon {
    address: String,
}

impl Daemon {
    fn start(dir: &Path, round: usize) -> Daemon {
        Self::start_with(
            dir,
            &format!("shared-{round}"),
            SharedServerConfig::default(),
        )
    }

    /// A daemon at `dir/name.sock` with `config` (and the benchmarks' cookie).
    fn start_with(dir: &Path, name: &str, config: SharedServerConfig) -> Daemon {
        let address = format!("unix://{}/{name}.sock", dir.display());
        let config = config.with_cookie(cookie());
        exsyst_worker::shared::start(
            &BootstrapProfile::new(),
            &address,
            SharedEcho::NAME,
            &config,
        )
        .expect("start the shared echo daemon");
        Daemon { address }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = exsyst_worker::shared::stop(&self.address, &cookie(), Duration::from_secs(30));
    }
}

/// Runs the shared-worker benchmarks the configuration selects.
pub fn run(cfg: &Config) -> Vec<Line> {
    let scratch = Scratch::new();
    let dir = scratch.0.as_path();
    let mut lines = Vec::new();
    let message = ByteBuf::from(vec![5u8; LEN]);
    if cfg.wants("shared round trip") {
        const N: u32 = 3000;
        lines.push(against_raw_echo(
            cfg,
            dir,
            "shared round trip",
            "µs",
            |address| {
                let mut w = SharedWorker::connect(address).expect("connect");
                time_round_trips(N, || {
                    w.send_message(&message).unwrap();
                    let _: ByteBuf = w.receive_message().unwrap();
                })
            },
            |path| {
                let mut s = UnixStream::connect(path).expect("connect");
                let mut raw = [5u8; LEN];
                time_round_trips(N, || {
                    s.write_all(&raw).unwrap();
                    s.read_exact(&mut raw).unwrap();
                })
            },
        ));
    }
    if cfg.wants("shared 1 MiB") {
        // MiB/s moved (request and reply): higher is better, so the ratio is ours / baseline.
        const N: u32 = 200;
        let big = ByteBuf::from(vec![5u8; MIB]);
        lines.push(against_raw_echo(
            cfg,
            dir,
            "shared 1 MiB",
            "MiB/s",
            |address| {
                let mut w = SharedWorker::connect(address).expect("connect");
                let each = time_round_trips(N, || {
                    w.send_message(&big).unwrap();
                    let back: ByteBuf = w.receive_message().unwrap();
                    assert_eq!(back.len(), MIB);
                });
                2.0 * 1e6 / each
            },
            |path| 2.0 * 1e6 / raw_round_trips_of(path, MIB, N),
        ));
    }
    if cfg.wants("shared round trip spin") {
        // A spinning server loop and client against the same daemon without the latency mode.
        const N: u32 = 3000;
        let mut line = Line::new(cfg.name("shared round trip spin"), "µs");
        let round_trips = |daemon: Daemon, spin: Duration| {
            let mut w = SharedWorker::connect(&daemon.address).expect("connect");
            w.set_spin(spin);
            let mut run = || {
                time_round_trips(N, || {
                    w.send_message(&message).unwrap();
                    let _: ByteBuf = w.receive_message().unwrap();
                })
            };
            run();
            run()
        };
        for round in 0..cfg.rounds {
            let ours = || {
                let config = SharedServerConfig::default().with_spin(SPIN);
                let daemon = Daemon::start_with(dir, &format!("spin-{round}"), config);
                round_trips(daemon, SPIN)
            };
            let base = || {
                let config = SharedServerConfig::default();
                let daemon = Daemon::start_with(dir, &format!("nospin-{round}"), config);
                round_trips(daemon, Duration::ZERO)
            };
            line.rounds.push(alternate(round, ours, base));
        }
        lines.push(line);
    }
    if cfg.wants("shared connect") {
        const N: u32 = 300;
        lines.push(against_raw_echo(
            cfg,
            dir,
            "shared connect",
            "µs",
            |address| {
                time_round_trips(N, || {
                    // The client knows the worker's codec: its message need not wait for the
                    // hello.
                    let mut w = SharedWorker::connect_with_codec(address, Codec::MessagePack)
                        .expect("connect");
                    w.send_message(&message).unwrap();
                    let _: ByteBuf = w.receive_message().unwrap();
                })
            },
            |path| {
                let mut raw = [5u8; LEN];
                time_round_trips(N, || {
                    let mut s = UnixStream::connect(path).expect("connect");
                    s.write_all(&raw).unwrap();
                    s.read_exact(&mut raw).unwrap();
                })
            },
        ));
    }
    if cfg.wants("shared autostart") {
        const N: u32 = 10;
        let mut line = Line::new(cfg.name("shared autostart"), "µs");
        let profile = BootstrapProfile::new();
        let config = SharedServerConfig::default().with_cookie(cookie());
        let mut n = 0;
        for round in 0..cfg.rounds {
            let ours = || {
                time_each(N, || {
                    n += 1;
                    let address = format!("unix://{}/autostart-{n}.sock", dir.display());
                    let start = Instant::now();
                    let mut w = exsyst_worker::shared::connect_or_start(
                        &profile,
                        &address,
                        SharedEcho::NAME,
                        &config,
                    )
                    .expect("connect or start");
                    w.send_message(&message).unwrap();
                    let _: ByteBuf = w.receive_message().unwrap();
                    let elapsed = start.elapsed();
                    drop(w);
                    exsyst_worker::shared::stop(&address, &cookie(), Duration::from_secs(30))
                        .expect("stop");
                    elapsed
                })
            };
            let base = || {
                time_each(N, || {
                    let start = Instant::now();
                    let mut w = DedicatedWorker::spawn::<Echo>(&profile).expect("spawn");
                    w.send_message(&1u8).expect("send");
                    let _: u8 = w.receive_message().expect("reply");
                    let elapsed = start.elapsed();
                    drop(w);
                    elapsed
                })
            };
            line.rounds.push(alternate(round, ours, base));
        }
        lines.push(line);
    }
    if cfg.wants("shared 1000 clients") {
        raise_fd_limit();
        let mut line = Line::new(cfg.name("shared 1000 clients"), "msgs/s");
        // Our frame of the message, which the echo sends back unchanged.
        let frame = data_frame(&message);
        for round in 0..cfg.rounds {
            let ours = || {
                let daemon = Daemon::start(dir, round);
                let path = daemon.address.trim_start_matches("unix://").to_owned();
                many_clients(Path::new(&path), &frame, true)
            };
            let base = || {
                let peer = Peer::start("mio", dir);
                many_clients(&peer.path, &frame[..LEN], false)
            };
            line.rounds.push(alternate(round, ours, base));
        }
        lines.push(line);
    }
    lines
}

/// Mean µs per round trip of a `len`-byte message through the raw echo at `path`: a thread
/// writes each message while this one reads the echo, as the echo sends it back while it still
/// reads.
fn raw_round_trips_of(path: &Path, len: usize, n: u32) -> f64 {
    let mut reader = UnixStream::connect(path).expect("connect");
    let mut writer = reader.try_clone().expect("clone");
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let writing = std::thread::spawn(move || {
        let message = vec![5u8; len];
        while wait.recv().is_ok() {
            writer.write_all(&message).unwrap();
        }
    });
    let mut back = vec![0u8; len];
    let each = time_round_trips(n, || {
        go.send(()).unwrap();
        reader.read_exact(&mut back).unwrap();
    });
    drop(go);
    writing.join().unwrap();
    each
}

/// A line in `unit`: each round, `ours` runs twice against a fresh daemon (given its
/// address) and `base` twice against a fresh raw echo peer (given its socket's path); the
/// second, warm, run of each counts.
fn against_raw_echo(
    cfg: &Config,
    dir: &Path,
    name: &str,
    unit: &'static str,
    ours: impl Fn(&str) -> f64,
    base: impl Fn(&Path) -> f64,
) -> Line {
    let mut line = Line::new(cfg.name(name), unit);
    for round in 0..cfg.rounds {
        let ours = || {
            let daemon = Daemon::start(dir, round);
            ours(&daemon.address);
            ours(&daemon.address)
        };
        let base = || {
            let peer = Peer::start("echo", dir);
            base(&peer.path);
            base(&peer.path)
        };
        line.rounds.push(alternate(round, ours, base));
    }
    line
}

/// Mean µs per call of `f` over `n` calls.
fn time_round_trips(n: u32, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

/// The bytes of one data frame holding `message`, as a shared worker's client sends it.
fn data_frame(message: &ByteBuf) -> Vec<u8> {
    let payload = Codec::MessagePack.encode(message).expect("encode");
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.push(0); // data
    frame.extend_from_slice(&payload);
    frame
}

/// Raises the soft limit of open descriptors to the hard one (1,000 clients on each side).
fn raise_fd_limit() {
    crate::sys::raise_fd_limit();
}

/// One of the 1,000 clients.
struct Client {
    stream: mio::net::UnixStream,
    /// Bytes of the reply (or of the hello) still to read.
    to_read: usize,
    /// Whether the hello is still being read (ours only).
    in_hello: bool,
    /// Header bytes of the hello read so far.
    header: Vec<u8>,
    /// Bytes of the current message still to write.
    to_write: usize,
    sent: usize,
}

/// Connects [`CLIENTS`] clients to `path`, reads each one's hello when `hello`, then has each
/// exchange [`PER_CLIENT`] copies of `message` (echoed back as they are), one at a time, all
/// clients at once on one mio loop; returns the aggregate messages per second of that
/// exchange.
fn many_clients(path: &Path, message: &[u8], hello: bool) -> f64 {
    let mut poll = Poll::new().expect("poll");
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|i| {
            let stream = UnixStream::connect(path).expect("connect");
            stream.set_nonblocking(true).expect("non-blocking");
            let mut stream = mio::net::UnixStream::from_std(stream);
            poll.registry()
                .register(&mut stream, Token(i), Interest::READABLE)
                .expect("register");
            Client {
                stream,
                to_read: 0,
                in_hello: hello,
                header: Vec::new(),
                to_write: 0,
                sent: 0,
            }
        })
        .collect();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    // The hellos first: they are not part of the exchange.
    let mut greeted = if hello { 0 } else { CLIENTS };
    while greeted < CLIENTS {
        poll.poll(&mut events, None).expect("poll");
        for event in &events {
            let client = &mut clients[event.token().0];
            if client.in_hello && read_hello(client, &mut buf) {
                greeted += 1;
            }
        }
    }
    let start = Instant::now();
    for client in &mut clients {
        client.to_write = message.len();
        write_some(client, message);
    }
    let mut done = 0;
    while done < CLIENTS {
        poll.poll(&mut events, None).expect("poll");
        for event in &events {
            let client = &mut clients[event.token().0];
            if client.to_write > 0 {
                write_some(client, message);
            }
            while client.to_read > 0 {
                match client.stream.read(&mut buf[..client.to_read]) {
                    Ok(0) => panic!("the server closed a client"),
                    Ok(n) => {
                        client.to_read -= n;
                        if client.to_read == 0 {
                            client.sent += 1;
                            if client.sent == PER_CLIENT {
                                done += 1;
                                break;
                            }
                            client.to_write = message.len();
                            write_some(client, message);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
        }
    }
    (CLIENTS * PER_CLIENT) as f64 / start.elapsed().as_secs_f64()
}

/// Writes what the socket takes of the current message; once all of it is written, expects
/// its echo.
fn write_some(client: &mut Client, message: &[u8]) {
    let from = message.len() - client.to_write;
    match client.stream.write(&message[from..]) {
        Ok(n) => {
            client.to_write -= n;
            if client.to_write == 0 {
                client.to_read = message.len();
            }
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => panic!("write: {e}"),
    }
}

/// Reads what is there of a hello frame; returns whether it is complete.
fn read_hello(client: &mut Client, buf: &mut [u8]) -> bool {
    loop {
        if client.header.len() < 5 {
            let want = 5 - client.header.len();
            match client.stream.read(&mut buf[..want]) {
                Ok(0) => panic!("the server closed a client before its hello"),
                Ok(n) => {
                    client.header.extend_from_slice(&buf[..n]);
                    if client.header.len() == 5 {
                        let len = u32::from_be_bytes(client.header[..4].try_into().unwrap());
                        client.to_read = len as usize;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => panic!("read: {e}"),
            }
            continue;
        }
        if client.to_read == 0 {
            client.in_hello = false;
            return true;
        }
        let want = client.to_read.min(buf.len());
        match client.stream.read(&mut buf[..want]) {
            Ok(0) => panic!("the server closed a client in its hello"),
            Ok(n) => client.to_read -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) => panic!("read: {e}"),
        }
    }
}
