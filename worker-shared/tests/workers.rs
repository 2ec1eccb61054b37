//! The shared-worker implementations the tests serve, and how they start them.

use std::{
    net::TcpListener,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, Receiver, Sender},
    },
    time::Instant,
};

use tempfile::TempDir;
use worker_core::{BoxError, Connection, Counter, EventedWorker, Worker, WorkerLoop, WorkerStatus};
use worker_shared::{Peer, RunningServer, SharedServer, SharedServerConfig, SharedWorkerImpl};

use crate::support::{Transport, timeout};

/// What a [`Greeter`] did, counted across threads.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub on_stop: AtomicUsize,
    pub terminate: AtomicUsize,
    pub connects: AtomicUsize,
    pub disconnects: AtomicUsize,
}

impl Counts {
    pub(crate) fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

/// The seed's `MySharedWorkerImpl`: greets each message with the ordinal of its sender, and
/// tells its counter to anyone who queries. A few messages are commands, for the tests:
/// - `flood N SIZE`: sends N replies of SIZE bytes;
/// - `stop-current`: stops the worker from inside;
/// - `stop-after FIFO`: blocks until the FIFO is written and closed, then stops from inside;
/// - `peer`: replies with the connection's peer name.
#[derive(Debug, Default)]
pub(crate) struct Greeter {
    i: u64,
    counts: Arc<Counts>,
    /// Where `on_connect` reports each peer.
    peers: Option<Sender<Peer>>,
    /// Where `on_disconnect` reports each departure.
    departures: Option<Sender<()>>,
}

impl Greeter {
    pub(crate) fn new(counts: Arc<Counts>) -> Self {
        Greeter {
            i: 0,
            counts,
            peers: None,
            departures: None,
        }
    }

    pub(crate) fn with_departures(mut self, departures: Sender<()>) -> Self {
        self.departures = Some(departures);
        self
    }

    pub(crate) fn with_peers(mut self, peers: Sender<Peer>) -> Self {
        self.peers = Some(peers);
        self
    }
}

pub(crate) fn ordinal(n: u64) -> String {
    let suffix = match (n % 10, n % 100 / 10) {
        (_, 1) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

impl Worker for Greeter {
    const NAME: &'static str = "greeter";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Greeter::default())
    }
}

impl EventedWorker for Greeter {
    type Message = String;
    type Reply = String;

    fn on_connect(
        &mut self,
        connection: &mut Connection<String>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        self.counts.connects.fetch_add(1, Ordering::SeqCst);
        if let Some(peers) = &self.peers {
            let _ = peers.send(Peer::of(connection).ok_or("no peer")?);
        }
        Ok(())
    }

    fn on_message(
        &mut self,
        message: String,
        connection: &mut Connection<String>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        let mut words = message.split(' ');
        match (words.next(), words.next(), words.next()) {
            (Some("flood"), Some(n), Some(size)) => {
                let text = "x".repeat(size.parse()?);
                for _ in 0..n.parse::<u64>()? {
                    connection.send(&text)?;
                }
            }
            (Some("stop-current"), None, None) => {
                let stopping = worker_shared::stop_current();
                connection.send(&format!("stop_current: {stopping}"))?;
            }
            (Some("stop-after"), Some(fifo), None) => {
                // Blocks the whole loop until the test has written the FIFO and closed it.
                let _ = std::fs::read(fifo);
                let stopping = worker_shared::stop_current();
                connection.send(&format!("stop_current: {stopping}"))?;
            }
            (Some("peer"), None, None) => {
                connection.send(&connection.peer_name().to_owned())?;
            }
            _ => {
                self.i += 1;
                let reply = format!("Hello {message} ! You're my {} client.", ordinal(self.i));
                connection.send(&reply)?;
            }
        }
        Ok(())
    }

    fn on_disconnect(
        &mut self,
        _: &mut Connection<String>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        self.counts.disconnects.fetch_add(1, Ordering::SeqCst);
        if let Some(departures) = &self.departures {
            let _ = departures.send(());
        }
        Ok(())
    }

    fn terminate(&mut self, _: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
        self.counts.terminate.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl SharedWorkerImpl for Greeter {
    fn on_query(&mut self, privileged: bool) -> Option<WorkerStatus> {
        if privileged {
            Some(
                WorkerStatus::new("full status")
                    .with_counter(Counter::new("clients", self.i as f64).with_min(0.0)),
            )
        } else {
            Some(format!("Current counter value : {}", self.i).into())
        }
    }

    fn on_stop(&mut self, _: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
        self.counts.on_stop.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// The server's log lines, as they come.
pub(crate) struct Log {
    lines: Mutex<Receiver<String>>,
    seen: Mutex<Vec<String>>,
}

impl Log {
    pub(crate) fn new() -> (Arc<Log>, impl Fn(&str) + Send + Sync + 'static) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let log = Arc::new(Log {
            lines: Mutex::new(rx),
            seen: Mutex::new(Vec::new()),
        });
        (log, move |line: &str| {
            let _ = tx.lock().unwrap().send(line.to_owned());
        })
    }

    /// Waits for a line that contains `needle` and returns it.
    pub(crate) fn wait_for(&self, needle: &str) -> String {
        if let Some(line) = self
            .seen
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
        {
            return line.clone();
        }
        let deadline = Instant::now() + timeout(30.0);
        let lines = self.lines.lock().unwrap();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the server never logged {needle:?}"));
            self.seen.lock().unwrap().push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Every line logged so far.
    pub(crate) fn all(&self) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        let mut seen = self.seen.lock().unwrap();
        seen.extend(lines.try_iter());
        seen.clone()
    }
}

/// A [`Greeter`] served on a thread of the test, in its own temporary directory.
pub(crate) struct Embedded {
    pub server: RunningServer,
    pub address: String,
    pub counts: Arc<Counts>,
    pub log: Arc<Log>,
    pub dir: TempDir,
}

impl Embedded {
    /// The socket file, for a Unix server.
    pub(crate) fn socket_path(&self) -> PathBuf {
        self.dir.path().join("run").join("worker.sock")
    }
}

/// Serves a [`Greeter`] over `transport` with `config`; a Unix socket goes in a directory
/// that does not exist yet.
pub(crate) fn embedded(transport: Transport, config: SharedServerConfig) -> Embedded {
    embedded_with(transport, config, |greeter| greeter)
}

/// As [`embedded`], with the greeter adjusted by `adjust` (on the server's thread).
pub(crate) fn embedded_with(
    transport: Transport,
    config: SharedServerConfig,
    adjust: impl FnOnce(Greeter) -> Greeter + Send + 'static,
) -> Embedded {
    let dir = tempfile::tempdir().unwrap();
    let server = bind(transport, config, &dir);
    let (log, sink) = Log::new();
    let counts = Arc::new(Counts::default());
    let theirs = Arc::clone(&counts);
    let address = server.address().to_owned();
    let server = server
        .with_log(sink)
        .spawn(move || Ok(adjust(Greeter::new(theirs))))
        .unwrap();
    Embedded {
        server,
        address,
        counts,
        log,
        dir,
    }
}

/// A server over `transport` with `config`; a Unix socket goes in `dir/run`, which does not
/// exist yet.
pub(crate) fn bind(
    transport: Transport,
    config: SharedServerConfig,
    dir: &TempDir,
) -> SharedServer {
    match transport {
        Transport::Unix => {
            let address = format!("unix://{}/run/worker.sock", dir.path().display());
            SharedServer::bind(&address, config).unwrap()
        }
        Transport::Tcp4 => {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            SharedServer::from_tcp_listener(listener, config).unwrap()
        }
        Transport::Tcp6 => {
            let listener = TcpListener::bind("[::1]:0").unwrap();
            SharedServer::from_tcp_listener(listener, config).unwrap()
        }
    }
}

/// Sends every message back as it came: the size matrix's worker.
#[derive(Debug, Default)]
pub(crate) struct Echo;

impl Worker for Echo {
    const NAME: &'static str = "echo";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Echo)
    }
}

impl EventedWorker for Echo {
    type Message = String;
    type Reply = String;

    fn on_message(
        &mut self,
        message: String,
        connection: &mut Connection<String>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        connection.send(&message)?;
        Ok(())
    }
}

impl SharedWorkerImpl for Echo {
    fn on_query(&mut self, _privileged: bool) -> Option<WorkerStatus> {
        None
    }
}
