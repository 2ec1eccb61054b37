//! A worker whose callbacks panic: by default the panic ends the connection it was serving
//! (with a typed error, never a cut frame) and the other clients are served on; the panic
//! policy can stop the server gracefully instead.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde::{Serialize, Serializer, ser::SerializeSeq};
use worker_core::{BoxError, Connection, EventedWorker, Worker, WorkerLoop, WorkerStatus};
use worker_shared::{
    Error, PanicPolicy, RunningServer, SharedServer, SharedServerConfig, SharedWorker,
    SharedWorkerImpl,
};

use crate::{support::timeout, workers::Log};

/// A reply, one of which panics half-way through its encoding.
enum Reply {
    Text(String),
    Poison,
}

impl Serialize for Reply {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Reply::Text(text) => serializer.serialize_str(text),
            Reply::Poison => {
                let mut seq = serializer.serialize_seq(Some(2))?;
                seq.serialize_element("half a reply is already encoded")?;
                panic!("panic in a reply's encoding");
            }
        }
    }
}

#[derive(Debug, Default)]
struct Calls {
    on_stop: AtomicUsize,
    terminate: AtomicUsize,
}

/// Echoes, unless told to panic: `panic`, `poison`, or `arm X` to make callback X panic next.
#[derive(Default)]
struct Fragile {
    query: bool,
    connect: bool,
    disconnect: bool,
    stop: bool,
    calls: Arc<Calls>,
}

impl Worker for Fragile {
    const NAME: &'static str = "fragile";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Fragile::default())
    }
}

impl EventedWorker for Fragile {
    type Message = String;
    type Reply = Reply;

    fn on_connect(
        &mut self,
        _: &mut Connection<Reply>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        if std::mem::take(&mut self.connect) {
            panic!("panic in on_connect");
        }
        Ok(())
    }

    fn on_message(
        &mut self,
        message: String,
        connection: &mut Connection<Reply>,
        event_loop: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        match message.as_str() {
            "panic" => panic!("panic in on_message"),
            "poison" => {
                connection.send(&Reply::Text("before".into()))?;
                connection.send(&Reply::Poison)?;
            }
            "arm query" => self.query = true,
            "arm connect" => self.connect = true,
            "arm disconnect" => self.disconnect = true,
            "arm stop" => self.stop = true,
            "arm timer" => {
                event_loop.add_timer(Duration::ZERO, |_, _| panic!("panic in a timer"));
            }
            _ => {}
        }
        connection.send(&Reply::Text(format!("echo {message}")))?;
        Ok(())
    }

    fn on_disconnect(
        &mut self,
        _: &mut Connection<Reply>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        if std::mem::take(&mut self.disconnect) {
            panic!("panic in on_disconnect");
        }
        Ok(())
    }

    fn terminate(&mut self, _: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
        self.calls.terminate.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl SharedWorkerImpl for Fragile {
    fn on_query(&mut self, _: bool) -> Option<WorkerStatus> {
        if std::mem::take(&mut self.query) {
            panic!("panic in on_query");
        }
        Some("fine".into())
    }

    fn on_stop(&mut self, _: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
        self.calls.on_stop.fetch_add(1, Ordering::SeqCst);
        if self.stop {
            panic!("panic in on_stop");
        }
        Ok(())
    }
}

struct Served {
    server: RunningServer,
    address: String,
    calls: Arc<Calls>,
    log: Arc<Log>,
    _dir: tempfile::TempDir,
}

fn serve(config: SharedServerConfig) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix://{}/fragile.sock", dir.path().display());
    let (log, sink) = Log::new();
    let calls = Arc::new(Calls::default());
    let theirs = Arc::clone(&calls);
    let server = SharedServer::bind(&address, config)
        .unwrap()
        .with_log(sink)
        .spawn(move || {
            Ok(Fragile {
                calls: theirs,
                ..Fragile::default()
            })
        })
        .unwrap();
    Served {
        server,
        address,
        calls,
        log,
        _dir: dir,
    }
}

fn client(address: &str) -> SharedWorker {
    let mut client = SharedWorker::connect(address).unwrap();
    client.set_control_timeout(timeout(30.0));
    client
}

/// Sends `message` and reads its echo.
fn echo(client: &mut SharedWorker, message: &str) {
    client.send_message(message).unwrap();
    assert_eq!(
        client.receive_message::<String>().unwrap(),
        format!("echo {message}")
    );
}

/// The victim's next receive is the typed error, then the end of the stream.
fn failed_then_closed(victim: &mut SharedWorker) {
    match victim.receive_message::<String>() {
        Err(Error::WorkerFailed { pid, .. }) => assert_eq!(pid, std::process::id()),
        other => panic!("expected WorkerFailed, got {other:?}"),
    }
    match victim.receive_message::<String>() {
        Err(Error::Closed { .. }) => {}
        other => panic!("expected the end of the stream, got {other:?}"),
    }
}

/// Makes one callback panic; returns what the log must then say.
type Trigger = fn(&str) -> &'static str;

/// Each callback that can panic while clients are connected, and how its victim sees it.
const TRIGGERS: [(&str, Trigger); 6] = [
    ("on_message", |address| {
        let mut victim = client(address);
        victim.send_message("panic").unwrap();
        failed_then_closed(&mut victim);
        "on_message panicked: panic in on_message"
    }),
    ("on_query", |address| {
        let mut victim = client(address);
        echo(&mut victim, "arm query");
        match victim.query() {
            Err(Error::WorkerFailed { .. }) => {}
            other => panic!("expected WorkerFailed, got {other:?}"),
        }
        "on_query panicked: panic in on_query"
    }),
    ("a reply's encoding", |address| {
        let mut victim = client(address);
        victim.send_message("poison").unwrap();
        // What was queued before is delivered whole; the half-encoded reply never leaves.
        assert_eq!(victim.receive_message::<String>().unwrap(), "before");
        failed_then_closed(&mut victim);
        "on_message panicked: panic in a reply's encoding"
    }),
    ("on_connect", |address| {
        echo(&mut client(address), "arm connect");
        let mut victim = client(address);
        failed_then_closed(&mut victim);
        "on_connect panicked: panic in on_connect"
    }),
    ("on_disconnect", |address| {
        let mut victim = client(address);
        echo(&mut victim, "arm disconnect");
        drop(victim);
        "on_disconnect panicked: panic in on_disconnect"
    }),
    ("a timer", |address| {
        echo(&mut client(address), "arm timer");
        "timer panicked: panic in a timer"
    }),
];

#[test]
fn a_panicking_callback_ends_its_own_connection_and_everyone_else_is_served_on() {
    for (name, trigger) in TRIGGERS {
        let served = serve(SharedServerConfig::default());
        let mut bystander = client(&served.address);
        echo(&mut bystander, "before");
        let logged = trigger(&served.address);
        let line = served.log.wait_for(logged);
        assert!(line.contains("serving the others on"), "{name}: {line}");
        echo(&mut bystander, "after");
        assert_eq!(
            bystander.query().unwrap().status.unwrap().text(),
            "fine",
            "{name}"
        );
        echo(&mut client(&served.address), "a newcomer");
        served.server.stop();
        served.server.join().unwrap();
        assert_eq!(served.calls.on_stop.load(Ordering::SeqCst), 1, "{name}");
        assert_eq!(served.calls.terminate.load(Ordering::SeqCst), 1, "{name}");
    }
}

/// The server stopped because of panics: the bystander got every reply to what it had sent,
/// then the notice that the worker is stopping; `on_stop` and `terminate` ran once; the run
/// says why.
fn stopped_gracefully(served: Served, mut bystander: SharedWorker, in_flight: usize) {
    for i in 0..in_flight {
        assert_eq!(
            bystander.receive_message::<String>().unwrap(),
            format!("echo {i}")
        );
    }
    match bystander.receive_message::<String>() {
        Err(Error::Stopping { .. }) => {}
        other => panic!("expected the stopping notice, got {other:?}"),
    }
    match served.server.join() {
        Err(Error::Serve {
            source: worker_core::Error::Panicked { callback, message },
            ..
        }) => {
            assert_eq!(callback, "on_message");
            assert_eq!(message, "panic in on_message");
        }
        other => panic!("expected the panic as the run's error, got {other:?}"),
    }
    assert_eq!(served.calls.on_stop.load(Ordering::SeqCst), 1);
    assert_eq!(served.calls.terminate.load(Ordering::SeqCst), 1);
}

#[test]
fn the_stop_policy_stops_gracefully_at_the_first_panic() {
    let served = serve(SharedServerConfig::default().with_panic_policy(PanicPolicy::Stop));
    let mut bystander = client(&served.address);
    echo(&mut bystander, "connected");
    for i in 0..10 {
        bystander.send_message(&i.to_string()).unwrap();
    }
    let mut victim = client(&served.address);
    victim.send_message("panic").unwrap();
    failed_then_closed(&mut victim);
    served.log.wait_for("stopping, as the panic policy says");
    stopped_gracefully(served, bystander, 10);
}

#[test]
fn isolated_panics_stop_the_server_once_they_reach_the_policys_count() {
    // (max_panics, within): the server stops at the max_panics-th panic.
    for max_panics in [1, 2, 3] {
        let policy = PanicPolicy::Isolate {
            max_panics,
            within: Duration::MAX,
        };
        let served = serve(SharedServerConfig::default().with_panic_policy(policy));
        let mut bystander = client(&served.address);
        for _ in 1..max_panics {
            let mut victim = client(&served.address);
            victim.send_message("panic").unwrap();
            failed_then_closed(&mut victim);
            echo(&mut bystander, "still served");
        }
        for i in 0..5 {
            bystander.send_message(&i.to_string()).unwrap();
        }
        let mut victim = client(&served.address);
        victim.send_message("panic").unwrap();
        failed_then_closed(&mut victim);
        stopped_gracefully(served, bystander, 5);
    }
}

#[test]
fn a_panic_in_on_stop_does_not_stop_the_stop() {
    let served = serve(SharedServerConfig::default());
    let mut bystander = client(&served.address);
    echo(&mut bystander, "arm stop");
    served.server.stop();
    match bystander.receive_message::<String>() {
        Err(Error::Stopping { .. }) => {}
        other => panic!("expected the stopping notice, got {other:?}"),
    }
    match served.server.join() {
        Err(Error::Serve {
            source: worker_core::Error::Panicked { callback, message },
            ..
        }) => assert_eq!(
            (callback, message.as_str()),
            ("on_stop", "panic in on_stop")
        ),
        other => panic!("expected on_stop's panic as the run's error, got {other:?}"),
    }
    assert_eq!(served.calls.terminate.load(Ordering::SeqCst), 1);
}

#[test]
fn panic_counts_that_cannot_work_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix://{}/w.sock", dir.path().display());
    for (max_panics, within, accepted) in [
        (0, Duration::from_secs(1), false),
        (1, Duration::ZERO, true),
        (65536, Duration::MAX, true),
        (65537, Duration::from_secs(1), false),
        (u32::MAX, Duration::MAX, false),
    ] {
        let config = SharedServerConfig::default()
            .with_panic_policy(PanicPolicy::Isolate { max_panics, within });
        match (SharedServer::bind(&address, config), accepted) {
            (Ok(_), true) => {}
            (Err(Error::Config { what, .. }), false) => assert_eq!(what, "panic_policy"),
            (other, _) => panic!("{max_panics} within {within:?}: got {other:?}"),
        }
    }
}
