//! What goes wrong with one client ends that client's connection only; many clients at once.

use std::{
    io::{Read, Write},
    net::Shutdown,
    os::unix::net::UnixStream,
    sync::mpsc,
    time::Instant,
};

use worker_channel::{Channel, Codec, FrameKind};
use worker_shared::{Error, SharedServerConfig, SharedWorker};

use crate::{
    support::{Loose, Transport, timeout},
    workers::{Embedded, embedded, embedded_with},
};

/// A raw connection that has read the server's hello.
fn raw(served: &Embedded) -> UnixStream {
    let stream = UnixStream::connect(served.socket_path()).unwrap();
    stream.set_read_timeout(Some(timeout(30.0))).unwrap();
    let mut channel = Channel::new(&stream, &stream, Codec::MessagePack);
    let hello: Loose = channel.receive_kind(FrameKind::Control).unwrap();
    assert_eq!(hello.kind, "hello");
    stream
}

/// Reads until the server closes the connection; what it sent meanwhile.
fn read_to_end(mut stream: &UnixStream) -> Vec<u8> {
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("the server closes the connection");
    rest
}

/// A client that keeps being answered.
fn assert_served(worker: &mut SharedWorker, name: &str) {
    worker.send_message(name).unwrap();
    let reply: String = worker.receive_message().unwrap();
    assert!(reply.starts_with(&format!("Hello {name} !")), "{reply}");
}

#[test]
fn garbage_an_oversized_header_and_a_half_sent_frame_end_only_their_own_connection() {
    let served = embedded(Transport::Unix, SharedServerConfig::default());
    let mut good = SharedWorker::connect(&served.address).unwrap();
    assert_served(&mut good, "before");

    // Not a frame at all: the "header" announces a gigabyte.
    let http = raw(&served);
    (&http).write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    read_to_end(&http);
    let line = served.log.wait_for("exceeds the limit");
    assert!(line.contains("dropped connection from unix:pid="), "{line}");
    assert_served(&mut good, "after-http");

    // An oversized header, from the header alone.
    let oversized = raw(&served);
    let mut header = (64u32 << 20).to_be_bytes().to_vec();
    header.push(FrameKind::Data.to_byte());
    (&oversized).write_all(&header).unwrap();
    read_to_end(&oversized);
    served.log.wait_for("frame of 67108864 bytes exceeds");
    assert_served(&mut good, "after-oversized");

    // A data frame whose payload is not a message.
    let garbage = raw(&served);
    (&garbage).write_all(&[0, 0, 0, 2, 0, 0xc1, 0xc1]).unwrap();
    read_to_end(&garbage);
    served.log.wait_for("cannot decode messagepack payload");
    assert_served(&mut good, "after-garbage");

    // A control frame that is not a control message: the server says why, then closes.
    let protocol = raw(&served);
    (&protocol).write_all(&[0, 0, 0, 1, 1, 0xc1]).unwrap();
    let mut channel = Channel::new(&protocol, &protocol, Codec::MessagePack);
    let reply: Loose = channel.receive_kind(FrameKind::Control).unwrap();
    assert_eq!(
        (reply.kind.as_str(), reply.code.as_deref()),
        ("error", Some("protocol_error"))
    );
    assert!(matches!(
        channel.receive_frame(),
        Err(worker_channel::Error::Closed)
    ));
    served.log.wait_for("broke the admin protocol");
    assert_served(&mut good, "after-protocol");

    // Half a frame, then the end of the stream.
    let half = raw(&served);
    (&half).write_all(&[0, 0, 0, 20, 0, 1, 2, 3]).unwrap();
    half.shutdown(Shutdown::Write).unwrap();
    read_to_end(&half);
    served
        .log
        .wait_for("stream ended inside a frame (8 of 25 bytes received)");
    assert_served(&mut good, "after-half");
    assert!(!served.server.is_finished());
}

#[test]
fn five_hundred_silent_connections_are_closed_by_the_handshake_deadline() {
    let deadline = timeout(0.3);
    let served = embedded(
        Transport::Unix,
        SharedServerConfig::default().with_handshake_timeout(Some(deadline)),
    );
    let started = Instant::now();
    let silent: Vec<UnixStream> = (0..500).map(|_| raw(&served)).collect();
    // A client that speaks in time stays, however long it then waits.
    let mut speaker = SharedWorker::connect(&served.address).unwrap();
    assert_served(&mut speaker, "speaker");
    for stream in &silent {
        assert!(read_to_end(stream).is_empty(), "nothing after the hello");
    }
    assert!(started.elapsed() >= deadline);
    assert!(
        served
            .log
            .wait_for("said nothing within")
            .contains("of connecting")
    );
    let dropped = served
        .log
        .all()
        .iter()
        .filter(|l| l.contains("said nothing within"))
        .count();
    assert_eq!(dropped, 500);
    // The speaker outlived the deadline.
    assert_served(&mut speaker, "still");
}

#[test]
fn a_client_that_never_reads_is_dropped_at_its_queue_bound_and_others_are_unaffected() {
    let served = embedded(
        Transport::Unix,
        SharedServerConfig::default().with_max_queued(256 * 1024),
    );
    let mut deaf = SharedWorker::connect(&served.address).unwrap();
    let mut other = SharedWorker::connect(&served.address).unwrap();
    // 64 MiB of replies asked for, and never read: far past the socket's buffer and the bound.
    deaf.send_message("flood 1024 65536").unwrap();
    let line = served.log.wait_for("outgoing queue full");
    assert!(line.contains("dropped connection from unix:"), "{line}");
    assert_served(&mut other, "other");
    // The deaf client finds what the socket held, then the end.
    loop {
        match deaf.receive_message::<String>() {
            Ok(flood) => assert_eq!(flood.len(), 65536),
            // Dropped at once: the last frame may be cut.
            Err(
                Error::Closed { .. }
                | Error::Channel {
                    source: worker_channel::Error::Truncated { .. },
                    ..
                },
            ) => break,
            Err(e) => panic!("expected the end of the stream, got {e:?}"),
        }
    }
    assert_served(&mut other, "other again");
}

#[test]
fn replies_far_past_the_queue_bound_reach_a_client_that_reads() {
    // (bound, replies, bytes each): one reply, or several in a row, each larger than the bound.
    for (bound, replies, size) in [
        (1024 * 1024, 1, 2 * 1024 * 1024),
        (1024 * 1024, 1, 15 * 1024 * 1024),
        (64 * 1024, 3, 4 * 1024 * 1024),
        (1, 2, 1024 * 1024),
    ] {
        let served = embedded(
            Transport::Unix,
            SharedServerConfig::default().with_max_queued(bound),
        );
        let mut reader = SharedWorker::connect(&served.address).unwrap();
        reader
            .send_message(&format!("flood {replies} {size}"))
            .unwrap();
        for _ in 0..replies {
            let reply: String = reader
                .receive_message_timeout(timeout(30.0))
                .unwrap_or_else(|e| panic!("bound {bound}, {replies} x {size}: {e:?}"));
            assert_eq!(reply.len(), size);
        }
        assert_served(&mut reader, "after the flood");
        assert!(
            !served.log.all().iter().any(|l| l.contains("dropped")),
            "{:?}",
            served.log.all()
        );
    }
}

#[test]
fn a_client_that_stops_reading_is_dropped_after_the_stall_timeout_and_others_are_unaffected() {
    let stall = timeout(0.3);
    let served = embedded(
        Transport::Unix,
        SharedServerConfig::default()
            .with_max_queued(64 * 1024)
            .with_stall_timeout(stall),
    );
    let mut deaf = SharedWorker::connect(&served.address).unwrap();
    let mut other = SharedWorker::connect(&served.address).unwrap();
    // One reply, within every size limit, that the client never reads.
    let started = Instant::now();
    deaf.send_message("flood 1 8388608").unwrap();
    let line = served.log.wait_for("peer stopped reading");
    assert!(
        started.elapsed() >= stall,
        "dropped before the stall timeout: {line}"
    );
    assert!(line.contains("dropped connection from unix:"), "{line}");
    assert_served(&mut other, "other");
}

#[test]
fn a_thousand_clients_are_served_at_once() {
    crate::support::raise_fd_limit(4096);
    let served = embedded(Transport::Unix, SharedServerConfig::default());
    let mut clients: Vec<SharedWorker> = (0..1000)
        .map(|_| SharedWorker::connect(&served.address).unwrap())
        .collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.send_message(&format!("client-{i}")).unwrap();
    }
    let mut ordinals = Vec::new();
    for (i, client) in clients.iter_mut().enumerate() {
        let reply: String = client.receive_message().unwrap();
        let prefix = format!("Hello client-{i} ! You're my ");
        let rest = reply.strip_prefix(&prefix).expect(&reply);
        ordinals.push(rest.to_owned());
    }
    ordinals.sort();
    ordinals.dedup();
    assert_eq!(
        ordinals.len(),
        1000,
        "each greeted once, each with its own ordinal"
    );
}

#[test]
fn connections_past_the_limit_are_refused_cleanly() {
    let (tx, departures) = mpsc::channel();
    let served = embedded_with(
        Transport::Unix,
        SharedServerConfig::default().with_max_connections(3),
        move |greeter| greeter.with_departures(tx),
    );
    let mut first: Vec<SharedWorker> = (0..3)
        .map(|_| SharedWorker::connect(&served.address).unwrap())
        .collect();
    match SharedWorker::connect_timeout(&served.address, timeout(10.0)) {
        Err(Error::Closed { address, pid: None }) => assert_eq!(address, served.address),
        other => panic!("expected the connection closed before any hello, got {other:?}"),
    }
    served.log.wait_for("3 connections already, the limit");
    for (i, client) in first.iter_mut().enumerate() {
        assert_served(client, &format!("first-{i}"));
    }
    // One leaves: once the server saw it go, there is room again.
    drop(first.pop());
    departures.recv_timeout(timeout(10.0)).unwrap();
    let mut again = SharedWorker::connect(&served.address).unwrap();
    assert_served(&mut again, "again");
}
