//! Connecting: the hello, and every way it can go wrong.

use std::{thread, time::Instant};

use worker_channel::{Codec, FrameKind};
use worker_shared::{Error, SharedWorker};

use crate::support::{Config, Listener, Mode, Server, TRANSPORTS, Transport, timeout};

#[test]
fn the_hello_tells_pid_implementation_and_codec_over_every_transport() {
    for transport in TRANSPORTS {
        let server = Server::start(transport, Config::default());
        let worker = SharedWorker::connect(&server.address).unwrap();
        assert_eq!(worker.pid(), std::process::id(), "{transport:?}");
        assert_eq!(worker.implementation(), "counter");
        assert_eq!(worker.codec(), Codec::MessagePack);
        assert_eq!(worker.address(), server.address);
    }
}

#[test]
fn addresses_are_reported_in_canonical_form() {
    let server = Server::start(Transport::Tcp6, Config::default());
    let port = server.address.rsplit_once(':').unwrap().1;
    let worker = SharedWorker::connect(&format!("TCP://[0:0::1]:0{port}")).unwrap();
    assert_eq!(worker.address(), format!("tcp://[::1]:{port}"));
}

#[test]
fn a_worker_that_never_says_hello_is_a_timeout() {
    let server = Server::start(
        Transport::Unix,
        Config {
            mode: Mode::Silent,
            ..Config::default()
        },
    );
    let wait = timeout(0.2);
    let started = Instant::now();
    match SharedWorker::connect_timeout(&server.address, wait) {
        Err(Error::Timeout {
            address,
            pid: None,
            operation: "hello",
            waited,
        }) => {
            assert_eq!(address, server.address);
            assert_eq!(waited, wait);
        }
        other => panic!("expected a hello timeout, got {other:?}"),
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= wait, "gave up early, after {elapsed:?}");
    assert!(
        elapsed < wait + timeout(5.0),
        "gave up late, after {elapsed:?}"
    );
}

#[test]
fn connecting_where_nothing_listens_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let absent = format!("unix://{}/absent.sock", dir.path().display());
    match SharedWorker::connect(&absent) {
        Err(Error::Connect { address, source }) => {
            assert_eq!(address, absent);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    // A port that was just free: nothing listens there any more.
    let closed = Listener::bind(Transport::Tcp4).address();
    match SharedWorker::connect(&closed) {
        Err(Error::Connect { address, source }) => {
            assert_eq!(address, closed);
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("expected a refused connection, got {other:?}"),
    }
}

#[test]
fn invalid_addresses_are_refused_before_connecting() {
    for bad in [
        "unix://relative.sock",
        "tcp://localhost",
        "http://h:1",
        "tcp://::1:80",
    ] {
        match SharedWorker::connect(bad) {
            Err(Error::InvalidAddress { address, .. }) => assert_eq!(address, bad),
            other => panic!("{bad}: expected an invalid address, got {other:?}"),
        }
    }
}

#[test]
fn a_first_frame_that_is_not_a_hello_is_a_protocol_error() {
    let server = Server::start(
        Transport::Unix,
        Config {
            mode: Mode::DataFirst,
            ..Config::default()
        },
    );
    assert!(matches!(
        SharedWorker::connect(&server.address),
        Err(Error::Protocol { pid: None, .. })
    ));
}

#[test]
fn another_protocol_version_is_refused() {
    let server = Server::start(
        Transport::Unix,
        Config {
            mode: Mode::FutureVersion,
            ..Config::default()
        },
    );
    assert!(matches!(
        SharedWorker::connect(&server.address),
        Err(Error::UnsupportedVersion { version: 2, .. })
    ));
}

#[test]
fn a_query_to_a_worker_that_never_answers_is_a_timeout() {
    let server = Server::start(
        Transport::Tcp4,
        Config {
            mode: Mode::Mute,
            ..Config::default()
        },
    );
    let mut worker = SharedWorker::connect(&server.address).unwrap();
    let wait = timeout(0.2);
    worker.set_control_timeout(wait);
    assert_eq!(worker.control_timeout(), wait);
    let started = Instant::now();
    match worker.query() {
        Err(Error::Timeout {
            operation: "query",
            pid: Some(pid),
            waited,
            ..
        }) => {
            assert_eq!(pid, std::process::id());
            assert_eq!(waited, wait);
        }
        other => panic!("expected a query timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= wait);
    // The connection is still usable for data.
    worker.send_message("anyone?").unwrap();
    assert_eq!(worker.receive_message::<String>().unwrap(), "echo: anyone?");
}

#[test]
fn a_refusal_this_client_does_not_know_keeps_its_code() {
    let server = Server::start(
        Transport::Unix,
        Config {
            mode: Mode::Grumpy,
            ..Config::default()
        },
    );
    let mut worker = SharedWorker::connect(&server.address).unwrap();
    match worker.query() {
        Err(Error::Rejected { code, message, .. }) => {
            assert_eq!(code, "rate_limited");
            assert_eq!(message, "slow down");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_worker_that_closes_at_once_is_closed() {
    // What a worker at its connection limit does.
    let listener = Listener::bind(Transport::Unix);
    let address = listener.address();
    let accepting = thread::spawn(move || drop(listener.accept()));
    assert!(matches!(
        SharedWorker::connect(&address),
        Err(Error::Closed { pid: None, .. })
    ));
    accepting.join().unwrap();
}

#[test]
fn a_control_frame_that_is_not_a_message_is_a_protocol_error() {
    let listener = Listener::bind(Transport::Tcp4);
    let address = listener.address();
    let serving = thread::spawn(move || {
        let conn = listener.accept();
        let mut channel = worker_channel::Channel::new(conn.try_clone(), conn, Codec::MessagePack);
        channel.send_raw(FrameKind::Control, b"\xc1").unwrap();
        // Until the client leaves.
        let _ = channel.receive_frame();
    });
    assert!(matches!(
        SharedWorker::connect(&address),
        Err(Error::Protocol { pid: None, .. })
    ));
    serving.join().unwrap();
}
