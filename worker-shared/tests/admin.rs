//! The admin plane: queries, authentication and stop, against the protocol server.

use std::{
    sync::{Mutex, mpsc},
    thread,
};

use worker_channel::{Channel, Codec, FrameDecoder, FrameKind};
use worker_shared::{AdminCookie, Error, SharedWorker};

use crate::support::{
    COOKIE, Config, Event, Loose, Mode, Relay, Server, TRANSPORTS, Transport, contains,
    full_status, public_status,
};

fn cookie() -> AdminCookie {
    AdminCookie::new(COOKIE).unwrap()
}

/// Distinctive too, so that a search for it finds nothing else.
const WRONG_COOKIE: &[u8] = b"w40ng-7c1d-GUESS-e5a0";

fn wrong_cookie() -> AdminCookie {
    AdminCookie::new(WRONG_COOKIE).unwrap()
}

#[test]
fn a_query_without_privilege_says_so() {
    let server = Server::start(Transport::Unix, Config::default());
    let mut worker = SharedWorker::connect(&server.address).unwrap();
    let reply = worker.query().unwrap();
    assert!(!reply.privileged);
    assert_eq!(reply.status, Some(public_status()));
    assert_eq!(server.next_event(), Event::Query { privileged: false });
}

#[test]
fn a_privileged_query_with_the_right_cookie_says_so_over_every_transport() {
    for transport in TRANSPORTS {
        let server = Server::start(transport, Config::default());
        let mut worker = SharedWorker::connect(&server.address).unwrap();
        let reply = worker.query_privileged(&cookie()).unwrap();
        assert!(reply.privileged, "{transport:?}");
        assert_eq!(reply.status, Some(full_status()));
        assert_eq!(server.next_event(), Event::Authenticated);
        assert_eq!(server.next_event(), Event::Query { privileged: true });
        // Once per connection: the next privileged query does not authenticate again.
        assert!(worker.query_privileged(&cookie()).unwrap().privileged);
        assert_eq!(server.next_event(), Event::Query { privileged: true });
    }
}

#[test]
fn messages_that_arrive_while_waiting_for_a_status_come_later_in_order() {
    let server = Server::start(
        Transport::Tcp4,
        Config {
            before_status: vec!["during 1".into(), "during 2".into()],
            ..Config::default()
        },
    );
    let mut worker = SharedWorker::connect(&server.address).unwrap();
    worker.send_message("before").unwrap();
    assert_eq!(worker.query().unwrap().status, Some(public_status()));
    worker.send_message("after").unwrap();
    let received: Vec<String> = (0..4).map(|_| worker.receive_message().unwrap()).collect();
    assert_eq!(
        received,
        ["echo: before", "during 1", "during 2", "echo: after"]
    );
}

#[test]
fn a_wrong_cookie_is_unauthorized_and_the_worker_keeps_serving() {
    let server = Server::start(Transport::Unix, Config::default());
    let mut worker = SharedWorker::connect(&server.address).unwrap();
    match worker.query_privileged(&wrong_cookie()) {
        Err(Error::Unauthorized { address, pid }) => {
            assert_eq!(address, server.address);
            assert_eq!(pid, std::process::id());
        }
        other => panic!("expected unauthorized, got {other:?}"),
    }
    assert_eq!(server.next_event(), Event::AuthFailed);
    // The same connection goes on, without privilege.
    worker.send_message("still here").unwrap();
    assert_eq!(
        worker.receive_message::<String>().unwrap(),
        "echo: still here"
    );
    assert!(!worker.query().unwrap().privileged);
    // And the right cookie still works.
    assert!(worker.query_privileged(&cookie()).unwrap().privileged);
}

#[test]
fn stop_returns_once_the_worker_acknowledged() {
    let (open_gate, gate) = mpsc::channel();
    let server = Server::start(
        Transport::Unix,
        Config {
            stop_gate: Some(Mutex::new(gate)),
            ..Config::default()
        },
    );
    let mut worker = SharedWorker::connect(&server.address).unwrap();
    let (done_tx, done) = mpsc::channel();
    let stopping = thread::spawn(move || done_tx.send(worker.stop(&cookie())).unwrap());
    assert_eq!(server.next_event(), Event::Authenticated);
    assert_eq!(server.next_event(), Event::StopReceived);
    // The server holds its acknowledgement until the gate opens, so stop cannot have returned.
    assert!(matches!(done.try_recv(), Err(mpsc::TryRecvError::Empty)));
    open_gate.send(()).unwrap();
    done.recv().unwrap().unwrap();
    stopping.join().unwrap();
}

#[test]
fn stop_with_a_wrong_cookie_is_unauthorized_and_sends_no_stop() {
    let server = Server::start(Transport::Tcp6, Config::default());
    let mut worker = SharedWorker::connect(&server.address).unwrap();
    assert!(matches!(
        worker.stop(&wrong_cookie()),
        Err(Error::Unauthorized { .. })
    ));
    assert_eq!(server.next_event(), Event::AuthFailed);
    worker.query().unwrap();
    // The query is the next thing the server saw: no stop came before it.
    assert_eq!(server.next_event(), Event::Query { privileged: false });
}

#[test]
fn a_server_that_does_not_know_the_cookie_is_detected_and_sent_no_stop() {
    let server = Server::start(
        Transport::Unix,
        Config {
            mode: Mode::Impostor,
            ..Config::default()
        },
    );
    let mut worker = SharedWorker::connect(&server.address).unwrap();
    match worker.stop(&cookie()) {
        Err(Error::ServerNotAuthenticated { address, pid }) => {
            assert_eq!(address, server.address);
            assert_eq!(pid, std::process::id());
        }
        other => panic!("expected the server unmasked, got {other:?}"),
    }
    worker.query().unwrap();
    assert_eq!(server.next_event(), Event::Query { privileged: false });
}

#[test]
fn a_worker_without_a_cookie_says_so() {
    let server = Server::start(
        Transport::Unix,
        Config {
            cookie: None,
            ..Config::default()
        },
    );
    let mut worker = SharedWorker::connect(&server.address).unwrap();
    match worker.stop(&cookie()) {
        Err(Error::ServerHasNoCookie { address, pid }) => {
            assert_eq!(address, server.address);
            assert_eq!(pid, std::process::id());
        }
        other => panic!("expected no cookie on the server, got {other:?}"),
    }
}

#[test]
fn the_cookie_never_crosses_the_wire() {
    let server = Server::start(Transport::Unix, Config::default());
    let relay = Relay::start(server.endpoint.clone());
    let mut worker = SharedWorker::connect(&relay.address).unwrap();
    assert!(matches!(
        worker.query_privileged(&wrong_cookie()),
        Err(Error::Unauthorized { .. })
    ));
    assert!(worker.query_privileged(&cookie()).unwrap().privileged);
    worker.stop(&cookie()).unwrap();
    let captured = relay.all_bytes();
    // The exchange did cross the relay ...
    assert!(contains(&captured, b"authenticate"));
    assert!(contains(&captured, b"stopping"));
    // ... and neither cookie did, in whole or in part.
    for secret in [COOKIE, WRONG_COOKIE] {
        for piece in secret.windows(6) {
            assert!(
                !contains(&captured, piece),
                "{:?} crossed the wire",
                String::from_utf8_lossy(piece)
            );
        }
    }
}

#[test]
fn a_captured_authentication_is_refused_on_another_connection() {
    let server = Server::start(Transport::Tcp4, Config::default());
    let relay = Relay::start(server.endpoint.clone());
    let mut worker = SharedWorker::connect(&relay.address).unwrap();
    assert!(worker.query_privileged(&cookie()).unwrap().privileged);
    assert_eq!(server.next_event(), Event::Authenticated);
    assert_eq!(server.next_event(), Event::Query { privileged: true });

    // The authenticate frame, as it crossed.
    let up = relay.up.lock().unwrap().clone();
    let mut decoder = FrameDecoder::default();
    decoder.extend_from_slice(&up);
    let mut captured = None;
    while let Some(frame) = decoder.decode().unwrap() {
        if frame.kind == FrameKind::Control && contains(frame.payload, b"authenticate") {
            captured = Some(frame.payload.to_vec());
        }
    }
    let captured = captured.expect("an authenticate frame crossed the relay");

    // Replayed word for word on a new connection, whose hello has a new nonce.
    let conn = server.endpoint.connect();
    let mut attacker = Channel::new(conn.try_clone(), conn, Codec::MessagePack);
    let (kind, _hello) = attacker.receive_frame().unwrap();
    assert_eq!(kind, FrameKind::Control);
    attacker.send_raw(FrameKind::Control, &captured).unwrap();
    let reply: Loose = attacker.receive_kind(FrameKind::Control).unwrap();
    assert_eq!(reply.kind, "error");
    assert_eq!(reply.code.as_deref(), Some("unauthorized"));
    assert_eq!(server.next_event(), Event::AuthFailed);
}
