//! The async client (feature `tokio`): the blocking client's behaviour and errors, from a
//! current-thread runtime.

use std::time::Duration;

use worker_channel::FrameKind;
use worker_shared::{AdminCookie, AsyncSharedWorker, Error, SharedWorker};

use crate::{
    messages::{frame, staged_server},
    support::{
        COOKIE, Config, Event, Mode, Server, TRANSPORTS, Transport, full_status, public_status,
        timeout,
    },
};

fn cookie() -> AdminCookie {
    AdminCookie::new(COOKIE).unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn messages_round_trip_over_every_transport_both_ways_of_connecting() {
    for transport in TRANSPORTS {
        let server = Server::start(transport, Config::default());
        let connected = AsyncSharedWorker::connect(&server.address).await.unwrap();
        let converted = SharedWorker::connect(&server.address)
            .unwrap()
            .into_async()
            .unwrap();
        for mut worker in [connected, converted] {
            assert_eq!(worker.pid(), std::process::id());
            assert_eq!(worker.address(), server.address);
            for word in ["one", "two", "three"] {
                worker.send_message(word).await.unwrap();
            }
            for word in ["one", "two", "three"] {
                let reply: String = worker.receive_message().await.unwrap();
                assert_eq!(reply, format!("echo: {word}"), "{transport:?}");
            }
            // Back to blocking, and on.
            let mut blocking = worker.into_inner().unwrap();
            blocking.send_message("blocking").unwrap();
            assert_eq!(
                blocking.receive_message::<String>().unwrap(),
                "echo: blocking"
            );
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn messages_that_arrive_while_waiting_for_a_status_come_later_in_order() {
    let server = Server::start(
        Transport::Tcp4,
        Config {
            before_status: vec!["during 1".into(), "during 2".into()],
            ..Config::default()
        },
    );
    let mut worker = AsyncSharedWorker::connect(&server.address).await.unwrap();
    worker.send_message("before").await.unwrap();
    assert_eq!(worker.query().await.unwrap().status, Some(public_status()));
    worker.send_message("after").await.unwrap();
    let mut received = Vec::new();
    for _ in 0..4 {
        received.push(worker.receive_message::<String>().await.unwrap());
    }
    assert_eq!(
        received,
        ["echo: before", "during 1", "during 2", "echo: after"]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn privileged_queries_and_the_stop_prove_the_cookie() {
    let server = Server::start(Transport::Unix, Config::default());
    let mut worker = AsyncSharedWorker::connect(&server.address).await.unwrap();
    let wrong = AdminCookie::new(b"w40ng-7c1d-GUESS-e5a0").unwrap();
    match worker.query_privileged(&wrong).await {
        Err(Error::Unauthorized { address, pid }) => {
            assert_eq!((address, pid), (server.address.clone(), std::process::id()))
        }
        other => panic!("expected unauthorized, got {other:?}"),
    }
    assert_eq!(server.next_event(), Event::AuthFailed);
    let reply = worker.query_privileged(&cookie()).await.unwrap();
    assert!(reply.privileged);
    assert_eq!(reply.status, Some(full_status()));
    assert_eq!(server.next_event(), Event::Authenticated);
    assert_eq!(server.next_event(), Event::Query { privileged: true });
    worker.stop(&cookie()).await.unwrap();
    assert_eq!(server.next_event(), Event::StopReceived);
}

#[tokio::test(flavor = "current_thread")]
async fn a_cancelled_receive_keeps_the_part_of_a_message_that_arrived() {
    let whole = frame("a message cut in two by the network");
    let (first, rest) = whole.split_at(whole.len() / 2);
    let (address, go) = staged_server(first.to_vec(), rest.to_vec());
    let mut worker = AsyncSharedWorker::connect(&address).await.unwrap();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(100),
        worker.receive_message::<String>(),
    )
    .await;
    assert!(cancelled.is_err(), "{cancelled:?}");
    match worker
        .receive_message_timeout::<String>(Duration::ZERO)
        .await
    {
        Err(Error::Timeout {
            operation: "message",
            waited,
            ..
        }) => assert_eq!(waited, Duration::ZERO),
        other => panic!("expected a timeout, got {other:?}"),
    }
    go.send(()).unwrap();
    assert_eq!(
        worker
            .receive_message_timeout::<String>(timeout(10.0))
            .await
            .unwrap(),
        "a message cut in two by the network"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_cancelled_send_is_taken_back_or_finished_never_cut() {
    // The echo server blocks writing replies nobody reads, then stops reading: the sends fill
    // the socket until one is cancelled by its timeout.
    let server = Server::start(Transport::Unix, Config::default());
    let mut worker = AsyncSharedWorker::connect(&server.address).await.unwrap();
    let message = "x".repeat(64 << 10);
    let mut sent = 0;
    loop {
        match tokio::time::timeout(Duration::from_millis(50), worker.send_message(&message)).await {
            Ok(result) => result.unwrap(),
            Err(_) => break,
        }
        sent += 1;
        assert!(sent < 10_000, "the socket never filled");
    }
    // Part of the cancelled frame may have left: then the rest is queued, whole.
    let partial = worker.queued_bytes() > 0;
    // Every echo comes back, the cancelled frame's too if part of it had left: the receives
    // write the rest of it meanwhile.
    for _ in 0..sent + usize::from(partial) {
        let echo: String = worker.receive_message_timeout(timeout(10.0)).await.unwrap();
        assert_eq!(echo.len(), message.len() + "echo: ".len());
    }
    assert_eq!(worker.queued_bytes(), 0);
    // Nothing more, nothing cut: the stream goes on.
    worker.send_message("last").await.unwrap();
    let last: String = worker.receive_message_timeout(timeout(10.0)).await.unwrap();
    assert_eq!(last, "echo: last");
}

// The same conversations through the blocking client and the async one: the same results.

/// What a conversation does, in order.
#[derive(Clone, Copy, Debug)]
enum Op {
    Send(&'static str),
    Receive,
    Query,
    Stop,
    /// Lets a staged server send the rest of what it has.
    Go,
    /// Makes a staged server leave.
    Leave,
}

/// Who the client talks to.
enum Peer {
    /// The protocol server, in this mode.
    Server(Mode),
    /// A staged server: its hello, these bytes, then (on `Go`) those.
    Staged(Vec<u8>, Vec<u8>),
}

struct Conversation {
    name: &'static str,
    peer: Peer,
    control_timeout: Duration,
    ops: Vec<Op>,
    /// What the first failure must contain, so that two identical timeouts cannot pass.
    expected: &'static str,
}

fn conversations() -> Vec<Conversation> {
    let mut oversized = u32::MAX.to_be_bytes().to_vec();
    oversized.push(FrameKind::Data.to_byte());
    let cut = frame("never finished")[..7].to_vec();
    let long = Duration::from_secs(10);
    use Op::*;
    vec![
        Conversation {
            name: "the worker leaves after its last words",
            peer: Peer::Staged(frame("last words"), Vec::new()),
            control_timeout: long,
            ops: vec![
                Receive,
                Leave,
                Receive,
                Receive,
                Send("into the void"),
                Send("again"),
                Query,
            ],
            expected: "Closed",
        },
        Conversation {
            name: "a frame cut by the end of the stream",
            peer: Peer::Staged(cut, Vec::new()),
            control_timeout: long,
            ops: vec![Leave, Receive, Receive],
            expected: "Truncated",
        },
        Conversation {
            name: "an oversized header",
            peer: Peer::Staged(oversized, Vec::new()),
            control_timeout: long,
            ops: vec![Receive],
            expected: "FrameTooLarge",
        },
        Conversation {
            name: "a data message that does not decode",
            peer: Peer::Staged(frame_of(&42u64), frame("fine")),
            control_timeout: long,
            ops: vec![Receive, Go, Receive],
            expected: "Decode",
        },
        Conversation {
            name: "a worker that never answers a query",
            peer: Peer::Server(Mode::Mute),
            control_timeout: Duration::from_millis(100),
            ops: vec![Send("hi"), Query, Receive],
            expected: "Timeout",
        },
        Conversation {
            name: "a worker that refuses every request",
            peer: Peer::Server(Mode::Grumpy),
            control_timeout: long,
            ops: vec![Query, Stop, Send("hi"), Receive],
            expected: "rate_limited",
        },
        Conversation {
            name: "an impostor that does not know the cookie",
            peer: Peer::Server(Mode::Impostor),
            control_timeout: long,
            ops: vec![Stop, Send("hi"), Receive],
            expected: "ServerNotAuthenticated",
        },
    ]
}

fn frame_of(value: &u64) -> Vec<u8> {
    let mut out = Vec::new();
    worker_channel::encode_frame(
        worker_channel::Codec::MessagePack,
        FrameKind::Data,
        value,
        u32::MAX,
        &mut out,
    )
    .unwrap();
    out
}

/// A peer for one run: its address, and (for a staged server) its gate.
fn start(peer: &Peer) -> (String, Option<std::sync::mpsc::Sender<()>>, Option<Server>) {
    match peer {
        Peer::Server(mode) => {
            let server = Server::start(
                Transport::Unix,
                Config {
                    mode: *mode,
                    ..Config::default()
                },
            );
            (server.address.clone(), None, Some(server))
        }
        Peer::Staged(first, rest) => {
            let (address, go) = staged_server(first.clone(), rest.clone());
            (address, Some(go), None)
        }
    }
}

/// A result as text, the address (which differs between the two runs) left out.
fn outcome<T: std::fmt::Debug>(address: &str, result: &Result<T, Error>) -> String {
    format!("{result:?}").replace(address, "ADDRESS")
}

fn run_blocking(conversation: &Conversation) -> Vec<String> {
    let (address, mut go, _server) = start(&conversation.peer);
    let mut worker = SharedWorker::connect(&address).unwrap();
    worker.set_control_timeout(conversation.control_timeout);
    let mut outcomes = Vec::new();
    for op in &conversation.ops {
        outcomes.push(match op {
            Op::Send(text) => outcome(&address, &worker.send_message(text)),
            Op::Receive => outcome(
                &address,
                &worker.receive_message_timeout::<String>(timeout(10.0)),
            ),
            Op::Query => outcome(&address, &worker.query()),
            Op::Stop => outcome(&address, &worker.stop(&cookie())),
            Op::Go => {
                go.as_ref().unwrap().send(()).unwrap();
                continue;
            }
            Op::Leave => {
                go = None;
                continue;
            }
        });
    }
    drop(go);
    outcomes
}

async fn run_async(conversation: &Conversation) -> Vec<String> {
    let (address, mut go, _server) = start(&conversation.peer);
    let mut worker = AsyncSharedWorker::connect(&address).await.unwrap();
    worker.set_control_timeout(conversation.control_timeout);
    let mut outcomes = Vec::new();
    for op in &conversation.ops {
        outcomes.push(match op {
            Op::Send(text) => outcome(&address, &worker.send_message(text).await),
            Op::Receive => outcome(
                &address,
                &worker
                    .receive_message_timeout::<String>(timeout(10.0))
                    .await,
            ),
            Op::Query => outcome(&address, &worker.query().await),
            Op::Stop => outcome(&address, &worker.stop(&cookie()).await),
            Op::Go => {
                go.as_ref().unwrap().send(()).unwrap();
                continue;
            }
            Op::Leave => {
                go = None;
                continue;
            }
        });
    }
    drop(go);
    outcomes
}

#[tokio::test(flavor = "current_thread")]
async fn the_async_client_fails_exactly_as_the_blocking_one() {
    for conversation in conversations() {
        let blocking = run_blocking(&conversation);
        let nonblocking = run_async(&conversation).await;
        assert_eq!(blocking, nonblocking, "{}", conversation.name);
        let first_failure = blocking
            .iter()
            .find(|o| o.starts_with("Err"))
            .unwrap_or_else(|| panic!("{}: no failure in {blocking:?}", conversation.name));
        assert!(
            first_failure.contains(conversation.expected),
            "{}: expected {:?} in {first_failure}",
            conversation.name,
            conversation.expected
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn connecting_fails_as_the_blocking_connect_does() {
    // Nothing listens; a worker that never says hello; one that speaks data first; a future
    // protocol version.
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("unix://{}/none.sock", dir.path().display());
    let wait = Duration::from_millis(200);
    let blocking = outcome(
        &nowhere,
        &SharedWorker::connect_timeout(&nowhere, wait).map(drop),
    );
    let nonblocking = outcome(
        &nowhere,
        &AsyncSharedWorker::connect_timeout(&nowhere, wait)
            .await
            .map(drop),
    );
    assert_eq!(blocking, nonblocking);
    assert!(blocking.contains("Connect"), "{blocking}");
    for mode in [Mode::Silent, Mode::DataFirst, Mode::FutureVersion] {
        let server = Server::start(
            Transport::Tcp4,
            Config {
                mode,
                ..Config::default()
            },
        );
        let blocking = SharedWorker::connect_timeout(&server.address, wait).map(drop);
        let nonblocking = AsyncSharedWorker::connect_timeout(&server.address, wait)
            .await
            .map(drop);
        assert_eq!(
            format!("{blocking:?}"),
            format!("{nonblocking:?}"),
            "{mode:?}"
        );
        assert!(blocking.is_err(), "{mode:?}");
    }
    // Invalid addresses, before any connection.
    let blocking = SharedWorker::connect("http://x:1").map(drop);
    let nonblocking = AsyncSharedWorker::connect("http://x:1").await.map(drop);
    assert_eq!(format!("{blocking:?}"), format!("{nonblocking:?}"));
    assert!(matches!(nonblocking, Err(Error::InvalidAddress { .. })));
}
