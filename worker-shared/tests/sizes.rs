//! The size matrix: every client face, transport and codec, on a fresh connection and after a
//! timed receive that expired, carries messages of every size up to the frame limit, whole and
//! at once, against the crate's own server with its default limits.
//!
//! A new path is one line of [`PATHS`]; a new size one entry of [`SIZES`].

use std::{
    sync::{Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use worker_channel::{Codec, DEFAULT_MAX_FRAME_LEN};
use worker_core::Worker;
use worker_shared::{Error, SharedServerConfig, SharedWorker};

use crate::{
    support::{Transport, timeout},
    workers::{Echo, bind},
};

/// How a test drives its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Face {
    Blocking,
    /// [`SharedWorker::connect_with_codec`]: the first message leaves before the hello came.
    NoHelloWait,
    /// [`worker_shared::AsyncSharedWorker`] on a current-thread tokio runtime.
    Async,
    /// [`worker_shared::AsyncSharedWorker::connect_with_codec`].
    AsyncNoHelloWait,
}

/// One way a message travels.
#[derive(Clone, Copy, Debug)]
struct Path {
    face: Face,
    transport: Transport,
    codec: Codec,
}

const fn path(face: Face, transport: Transport, codec: Codec) -> Path {
    Path {
        face,
        transport,
        codec,
    }
}

const PATHS: &[Path] = &[
    path(Face::Blocking, Transport::Unix, Codec::MessagePack),
    path(Face::Blocking, Transport::Unix, Codec::Json),
    path(Face::Blocking, Transport::Tcp4, Codec::MessagePack),
    path(Face::Blocking, Transport::Tcp4, Codec::Json),
    path(Face::NoHelloWait, Transport::Unix, Codec::MessagePack),
    path(Face::NoHelloWait, Transport::Tcp4, Codec::MessagePack),
    path(Face::Async, Transport::Unix, Codec::MessagePack),
    path(Face::Async, Transport::Unix, Codec::Json),
    path(Face::Async, Transport::Tcp4, Codec::MessagePack),
    path(Face::Async, Transport::Tcp4, Codec::Json),
    path(Face::AsyncNoHelloWait, Transport::Unix, Codec::MessagePack),
    path(Face::AsyncNoHelloWait, Transport::Tcp4, Codec::MessagePack),
];

/// A message's size: its text's length in bytes, or the largest text whose payload fits the
/// frame limit in the path's codec.
#[derive(Clone, Copy, Debug)]
enum Size {
    Bytes(usize),
    Largest,
}

const MIB: usize = 1024 * 1024;

const SIZES: &[Size] = &[
    Size::Bytes(0),
    Size::Bytes(1),
    Size::Bytes(4095),
    Size::Bytes(4096),
    Size::Bytes(4097),
    Size::Bytes(65535),
    Size::Bytes(65536),
    Size::Bytes(65537),
    Size::Bytes(MIB),
    Size::Bytes(4 * MIB),
    Size::Largest,
];

impl Size {
    fn len(self, codec: Codec) -> usize {
        match self {
            Size::Bytes(n) => n,
            // A MessagePack str 32 has a 5-byte header; a JSON string two quotes.
            Size::Largest => {
                DEFAULT_MAX_FRAME_LEN as usize
                    - match codec {
                        Codec::MessagePack => 5,
                        _ => 2,
                    }
            }
        }
    }
}

/// A text of `len` bytes whose every position depends on `seed`: a reply cut, shifted or
/// mixed with another one does not compare equal.
fn text(len: usize, seed: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + ((i / 7 + seed) % 26) as u8))
        .collect()
}

/// What happened to one message: sent whole and echoed back whole, and how long that took.
type Outcome = Result<Duration, String>;

/// One message's report: what it was, what happened, and what its codec alone costs for the
/// round trip (encoded and decoded twice: by the client, and by the worker).
type Report = (String, Outcome, Duration);

/// How long encoding and decoding `message` twice takes here: a debug build's JSON codec
/// takes seconds over the largest messages, which is not the wait this test looks for.
/// Measured once per codec and size, for every path.
fn codec_cost(codec: Codec, message: &str) -> Duration {
    static COSTS: Mutex<Vec<(Codec, usize, Duration)>> = Mutex::new(Vec::new());
    let mut costs = COSTS.lock().unwrap();
    if let Some(&(.., cost)) = costs
        .iter()
        .find(|(c, len, _)| *c == codec && *len == message.len())
    {
        return cost;
    }
    let start = Instant::now();
    let payload = codec.encode(message).unwrap();
    let back: String = codec.decode(&payload).unwrap();
    assert_eq!(back.len(), message.len());
    let cost = start.elapsed() * 2;
    costs.push((codec, message.len(), cost));
    cost
}

/// The conversations of one path, run on a thread of their own that reports each message as
/// it comes back: a client that hangs makes the test fail at the limit, not hang.
fn conversations(path: Path, address: String, report: mpsc::Sender<Report>) {
    match path.face {
        Face::Blocking | Face::NoHelloWait => blocking(path, &address, &report),
        Face::Async | Face::AsyncNoHelloWait => asynchronous(path, &address, &report),
    }
}

/// The short timed receive that must expire and leave nothing behind.
fn expiring() -> Duration {
    Duration::from_millis(20)
}

fn blocking(path: Path, address: &str, report: &mpsc::Sender<Report>) {
    let exchange = |worker: &mut SharedWorker, message: &str| -> Outcome {
        let start = Instant::now();
        worker.send_message(message).map_err(|e| e.to_string())?;
        let back: String = worker.receive_message().map_err(|e| e.to_string())?;
        let took = start.elapsed();
        if back != message {
            return Err(format!("came back as {} other bytes", back.len()));
        }
        Ok(took)
    };
    let connect = || match path.face {
        Face::NoHelloWait => SharedWorker::connect_with_codec(address, path.codec).unwrap(),
        _ => SharedWorker::connect(address).unwrap(),
    };
    let mut after_timeout = connect();
    match after_timeout.receive_message_timeout::<String>(expiring()) {
        Err(Error::Timeout { .. }) => {}
        other => panic!("{path:?}: expected the timed receive to expire, got {other:?}"),
    }
    for (i, size) in SIZES.iter().enumerate() {
        let message = text(size.len(path.codec), i);
        let cost = codec_cost(path.codec, &message);
        let mut fresh = connect();
        let outcome = exchange(&mut fresh, &message);
        let _ = report.send((format!("{size:?} on a fresh connection"), outcome, cost));
        let outcome = exchange(&mut after_timeout, &message);
        let _ = report.send((
            format!("{size:?} after a timed receive expired"),
            outcome,
            cost,
        ));
    }
}

#[cfg(feature = "tokio")]
fn asynchronous(path: Path, address: &str, report: &mpsc::Sender<Report>) {
    use worker_shared::AsyncSharedWorker;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        async fn exchange(worker: &mut AsyncSharedWorker, message: &str) -> Outcome {
            let start = Instant::now();
            worker
                .send_message(message)
                .await
                .map_err(|e| e.to_string())?;
            let back: String = worker.receive_message().await.map_err(|e| e.to_string())?;
            let took = start.elapsed();
            if back != message {
                return Err(format!("came back as {} other bytes", back.len()));
            }
            Ok(took)
        }
        let connect = || async {
            match path.face {
                Face::AsyncNoHelloWait => {
                    AsyncSharedWorker::connect_with_codec(address, path.codec)
                        .await
                        .unwrap()
                }
                _ => AsyncSharedWorker::connect(address).await.unwrap(),
            }
        };
        let mut after_timeout = connect().await;
        match after_timeout
            .receive_message_timeout::<String>(expiring())
            .await
        {
            Err(Error::Timeout { .. }) => {}
            other => panic!("{path:?}: expected the timed receive to expire, got {other:?}"),
        }
        for (i, size) in SIZES.iter().enumerate() {
            let message = text(size.len(path.codec), i);
            let cost = codec_cost(path.codec, &message);
            let mut fresh = connect().await;
            let outcome = exchange(&mut fresh, &message).await;
            let _ = report.send((format!("{size:?} on a fresh connection"), outcome, cost));
            let outcome = exchange(&mut after_timeout, &message).await;
            let _ = report.send((
                format!("{size:?} after a timed receive expired"),
                outcome,
                cost,
            ));
        }
    });
}

#[cfg(not(feature = "tokio"))]
fn asynchronous(_: Path, _: &str, report: &mpsc::Sender<Report>) {
    // Without the feature there is no async client: every message of the path counts as done.
    for size in SIZES {
        for case in ["on a fresh connection", "after a timed receive expired"] {
            let _ = report.send((
                format!("{size:?} {case}"),
                Ok(Duration::ZERO),
                Duration::ZERO,
            ));
        }
    }
}

#[test]
fn every_size_up_to_the_frame_limit_arrives_whole_and_at_once_on_every_path() {
    // Each message has this, beyond what its codec costs; a reply left waiting for a read
    // timeout takes ten seconds.
    let limit = timeout(1.0);
    for &path in PATHS {
        let dir = tempfile::tempdir().unwrap();
        let config = SharedServerConfig::default().with_codec(path.codec);
        let server = bind(path.transport, config, &dir);
        let address = server.address().to_owned();
        let server = server.spawn(|| Echo::new(())).unwrap();
        let (report, reports) = mpsc::channel();
        let client = thread::spawn(move || conversations(path, address, report));
        for size in SIZES {
            for case in ["on a fresh connection", "after a timed receive expired"] {
                let what = format!("{size:?} {case}");
                // Generous: a message that never comes fails here, one that comes late below.
                let (seen, outcome, cost) = reports
                    .recv_timeout(limit * 20)
                    .unwrap_or_else(|_| panic!("{path:?}: no answer for {what}"));
                assert_eq!(seen, what, "{path:?}");
                match outcome {
                    // The codec's cost was measured once, maybe while the machine was calmer
                    // than now: twice it, on top of the limit.
                    Ok(took) => assert!(
                        took <= limit + cost * 2,
                        "{path:?}: {what} took {took:?}, more than {limit:?} and twice the \
                         codec's {cost:?}"
                    ),
                    Err(e) => panic!("{path:?}: {what} failed: {e}"),
                }
            }
        }
        client.join().unwrap();
        server.stop();
        server.join().unwrap();
    }
}

#[test]
fn a_client_that_does_not_wait_for_the_hello_sends_at_once_and_a_wrong_codec_reaches_nobody() {
    // (the worker's codec, the client's): the same, or not.
    for (theirs, ours) in [
        (Codec::MessagePack, Codec::MessagePack),
        (Codec::Json, Codec::Json),
        (Codec::Json, Codec::MessagePack),
        (Codec::MessagePack, Codec::Json),
    ] {
        let served = crate::workers::embedded(
            Transport::Unix,
            SharedServerConfig::default().with_codec(theirs),
        );
        let mut worker = SharedWorker::connect_with_codec(&served.address, ours).unwrap();
        assert!(!worker.has_hello());
        assert_eq!((worker.pid(), worker.implementation()), (0, ""));
        worker.send_message("early").unwrap();
        let reply = worker.receive_message::<String>();
        if theirs == ours {
            assert_eq!(reply.unwrap(), "Hello early ! You're my 1st client.");
            assert_eq!(worker.pid(), std::process::id());
            assert_eq!(worker.implementation(), "greeter");
            continue;
        }
        match reply {
            Err(Error::CodecMismatch {
                pid,
                expected,
                announced,
                ..
            }) => {
                assert_eq!(pid, std::process::id());
                assert_eq!((expected, announced), (ours, theirs));
            }
            other => panic!("expected a codec mismatch, got {other:?}"),
        }
        assert!(matches!(
            worker.send_message("more"),
            Err(Error::Broken { .. })
        ));
        // The message in the wrong codec never reached the worker: nobody was greeted.
        let mut other = SharedWorker::connect(&served.address).unwrap();
        let status = other.query().unwrap().status.unwrap();
        assert_eq!(
            status.text(),
            "Current counter value : 0",
            "{theirs} / {ours}"
        );
    }
}

#[test]
fn a_client_that_does_not_wait_for_the_hello_sends_to_a_worker_that_never_says_it() {
    let listener = crate::support::Listener::bind(Transport::Unix);
    let mut worker =
        SharedWorker::connect_with_codec(&listener.address(), Codec::MessagePack).unwrap();
    // Accepted, never greeted: the message leaves all the same.
    worker.send_message("no hello needed").unwrap();
    let conn = listener.accept();
    let mut channel =
        worker_channel::Channel::new(conn.try_clone(), conn.try_clone(), Codec::MessagePack);
    let (kind, _) = channel.receive_frame().unwrap();
    assert_eq!(
        kind,
        worker_channel::FrameKind::Control,
        "the codec comes first"
    );
    let (kind, payload) = channel.receive_frame().unwrap();
    assert_eq!(kind, worker_channel::FrameKind::Data);
    assert_eq!(
        Codec::MessagePack.decode::<String>(&payload).unwrap(),
        "no hello needed"
    );
    // A receive then waits for the hello, and a timed one says so.
    match worker.receive_message_timeout::<String>(Duration::from_millis(50)) {
        Err(Error::Timeout {
            operation: "message",
            ..
        }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    conn.shutdown_write();
    match worker.receive_message::<String>() {
        Err(Error::Closed { pid: None, .. }) => {}
        other => panic!("expected the end of the stream, got {other:?}"),
    }
}
