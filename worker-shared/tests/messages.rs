//! Data messages: both ways, in the worker's codec, and what a receive does when they do not
//! come whole.

use std::{io::Write, sync::mpsc, thread};

use worker_channel::{Channel, Codec, FrameKind, encode_frame};
use worker_shared::{Error, SharedWorker};

use crate::support::{
    Config, Listener, NONCE_LEN, Relay, Server, TRANSPORTS, Transport, contains, hello,
    send_control, timeout,
};

#[test]
fn messages_round_trip_over_every_transport() {
    for transport in TRANSPORTS {
        let server = Server::start(transport, Config::default());
        let mut worker = SharedWorker::connect(&server.address).unwrap();
        // Several in flight at once: replies come back in order.
        for word in ["one", "two", "three"] {
            worker.send_message(word).unwrap();
        }
        for word in ["one", "two", "three"] {
            assert_eq!(
                worker.receive_message::<String>().unwrap(),
                format!("echo: {word}"),
                "{transport:?}"
            );
        }
    }
}

#[test]
fn a_json_worker_is_spoken_to_in_json_and_queried_in_messagepack() {
    let server = Server::start(
        Transport::Unix,
        Config {
            codec: Codec::Json,
            ..Config::default()
        },
    );
    let relay = Relay::start(server.endpoint.clone());
    let mut worker = SharedWorker::connect(&relay.address).unwrap();
    assert_eq!(worker.codec(), Codec::Json);
    worker.send_message("hi").unwrap();
    assert_eq!(worker.receive_message::<String>().unwrap(), "echo: hi");
    let reply = worker.query().unwrap();
    assert_eq!(reply.status.unwrap().text(), "public status");
    // The data crossed as JSON text, the control messages as MessagePack maps.
    assert!(contains(&relay.up.lock().unwrap(), br#""hi""#));
    assert!(contains(&relay.down.lock().unwrap(), br#""echo: hi""#));
    assert!(contains(
        &relay.up.lock().unwrap(),
        b"\x81\xa4type\xa5query"
    ));
}

/// A server that says hello, then sends `first` and waits for the test: a message sends `rest`,
/// dropping the sender closes the connection.
pub(crate) fn staged_server(first: Vec<u8>, rest: Vec<u8>) -> (String, mpsc::Sender<()>) {
    let listener = Listener::bind(Transport::Unix);
    let (go, wait) = mpsc::channel::<()>();
    let (address_tx, address_rx) = mpsc::channel();
    thread::spawn(move || {
        address_tx.send(listener.address()).unwrap();
        let mut conn = listener.accept();
        let mut channel = Channel::new(conn.try_clone(), conn.try_clone(), Codec::MessagePack);
        send_control(&mut channel, &hello(Codec::MessagePack, &[7; NONCE_LEN])).unwrap();
        conn.write_all(&first).unwrap();
        // The test dropping its sender closes the connection here.
        if wait.recv().is_ok() {
            let _ = conn.write_all(&rest);
            // Until the client leaves.
            let _ = channel.receive_frame();
        }
    });
    (address_rx.recv().unwrap(), go)
}

pub(crate) fn frame(message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(
        Codec::MessagePack,
        FrameKind::Data,
        message,
        u32::MAX,
        &mut out,
    )
    .unwrap();
    out
}

#[test]
fn a_receive_timeout_mid_frame_keeps_the_part_that_arrived() {
    let whole = frame("a message cut in two by the network");
    let (first, rest) = whole.split_at(whole.len() / 2);
    let (address, go) = staged_server(first.to_vec(), rest.to_vec());
    let mut worker = SharedWorker::connect(&address).unwrap();
    let wait = timeout(0.1);
    match worker.receive_message_timeout::<String>(wait) {
        Err(Error::Timeout {
            operation: "message",
            pid: Some(pid),
            waited,
            ..
        }) => {
            assert_eq!(pid, std::process::id());
            assert_eq!(waited, wait);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    go.send(()).unwrap();
    assert_eq!(
        worker.receive_message::<String>().unwrap(),
        "a message cut in two by the network"
    );
}

#[test]
fn a_receive_timeout_with_nothing_sent_leaves_the_connection_usable() {
    let server = Server::start(Transport::Tcp4, Config::default());
    let mut worker = SharedWorker::connect(&server.address).unwrap();
    assert!(matches!(
        worker.receive_message_timeout::<String>(timeout(0.05)),
        Err(Error::Timeout {
            operation: "message",
            ..
        })
    ));
    worker.send_message("still there?").unwrap();
    assert_eq!(
        worker
            .receive_message_timeout::<String>(timeout(10.0))
            .unwrap(),
        "echo: still there?"
    );
}

#[test]
fn a_worker_that_closes_the_connection_is_closed() {
    let (address, go) = staged_server(frame("last words"), Vec::new());
    let mut worker = SharedWorker::connect(&address).unwrap();
    assert_eq!(worker.receive_message::<String>().unwrap(), "last words");
    drop(go); // the server stops waiting and leaves
    match worker.receive_message::<String>() {
        Err(Error::Closed {
            address: closed,
            pid,
        }) => {
            assert_eq!(closed, address);
            assert_eq!(pid, Some(std::process::id()));
        }
        other => panic!("expected the connection closed, got {other:?}"),
    }
}

#[test]
fn a_frame_cut_by_the_end_of_the_stream_is_a_channel_error() {
    let whole = frame("never finished");
    let (address, go) = staged_server(whole[..7].to_vec(), Vec::new());
    let mut worker = SharedWorker::connect(&address).unwrap();
    drop(go);
    assert!(matches!(
        worker.receive_message::<String>(),
        Err(Error::Channel {
            source: worker_channel::Error::Truncated { received: 7, .. },
            ..
        })
    ));
}

#[test]
fn an_oversized_header_is_refused_from_the_header_alone() {
    let mut header = u32::MAX.to_be_bytes().to_vec();
    header.push(FrameKind::Data.to_byte());
    let (address, _go) = staged_server(header, Vec::new());
    let mut worker = SharedWorker::connect(&address).unwrap();
    assert!(matches!(
        worker.receive_message::<String>(),
        Err(Error::Channel {
            source: worker_channel::Error::FrameTooLarge { .. },
            ..
        })
    ));
}

#[test]
fn a_failed_send_breaks_the_connection_for_good() {
    let (address, go) = staged_server(Vec::new(), Vec::new());
    let mut worker = SharedWorker::connect(&address).unwrap();
    drop(go);
    // The end of the stream shows that the worker is gone.
    assert!(matches!(
        worker.receive_message::<String>(),
        Err(Error::Closed { .. })
    ));
    assert!(matches!(
        worker.send_message("into the void"),
        Err(Error::Io { pid: Some(_), .. })
    ));
    match worker.send_message("again") {
        Err(Error::Broken {
            address: broken,
            pid,
        }) => {
            assert_eq!(broken, address);
            assert_eq!(pid, std::process::id());
        }
        other => panic!("expected a broken connection, got {other:?}"),
    }
    assert!(matches!(worker.query(), Err(Error::Broken { .. })));
}
