//! The client against the real server: the seed's example, queries, the admin plane, codecs.

use std::sync::mpsc;

use worker_channel::Codec;
use worker_shared::{AdminCookie, Error, Peer, SharedServerConfig, SharedWorker};

use crate::{
    support::{COOKIE, TRANSPORTS, Transport, timeout},
    workers::{Counts, Greeter, embedded, embedded_with},
};

fn cookie() -> AdminCookie {
    AdminCookie::new(COOKIE).unwrap()
}

fn with_cookie() -> SharedServerConfig {
    SharedServerConfig::default().with_cookie(cookie())
}

#[test]
fn the_seeds_three_clients_get_1st_2nd_3rd_over_every_transport() {
    for transport in TRANSPORTS {
        let served = embedded(transport, with_cookie());
        for nth in ["1st", "2nd", "3rd"] {
            // Each master connects, says its name, reads its greeting and leaves.
            let mut worker = SharedWorker::connect(&served.address).unwrap();
            worker.send_message("world").unwrap();
            assert_eq!(
                worker.receive_message::<String>().unwrap(),
                format!("Hello world ! You're my {nth} client."),
                "{transport:?}"
            );
        }
        // `--stop`.
        SharedWorker::connect(&served.address)
            .unwrap()
            .stop(&cookie())
            .unwrap();
        served.server.join().unwrap();
    }
}

#[test]
fn the_hello_names_the_pid_the_implementation_and_the_codec() {
    let served = embedded(Transport::Unix, SharedServerConfig::default());
    let worker = SharedWorker::connect(&served.address).unwrap();
    assert_eq!(worker.pid(), std::process::id());
    assert_eq!(worker.implementation(), "greeter");
    assert_eq!(worker.codec(), Codec::MessagePack);
    assert_eq!(worker.address(), served.address);
}

#[test]
fn a_query_tells_the_privileged_answer_from_the_public_one() {
    let served = embedded(Transport::Tcp4, with_cookie());
    let mut worker = SharedWorker::connect(&served.address).unwrap();
    worker.send_message("world").unwrap();
    worker.receive_message::<String>().unwrap();
    let public = worker.query().unwrap();
    assert!(!public.privileged);
    assert_eq!(public.status.unwrap().text(), "Current counter value : 1");
    let full = worker.query_privileged(&cookie()).unwrap();
    assert!(full.privileged);
    let status = full.status.unwrap();
    assert_eq!(status.text(), "full status");
    assert_eq!(status.counter("clients").unwrap().value(), Some(1.0));
    // Another connection has proved nothing: it gets the public answer.
    let mut other = SharedWorker::connect(&served.address).unwrap();
    assert!(!other.query().unwrap().privileged);
}

#[test]
fn messages_that_arrive_while_waiting_for_a_status_come_later_in_order() {
    let served = embedded(Transport::Unix, SharedServerConfig::default());
    let mut worker = SharedWorker::connect(&served.address).unwrap();
    // Both greetings are queued before the status: the query keeps them for later.
    worker.send_message("a").unwrap();
    worker.send_message("b").unwrap();
    let status = worker.query().unwrap().status.unwrap();
    assert_eq!(status.text(), "Current counter value : 2");
    worker.send_message("c").unwrap();
    let received: Vec<String> = (0..3).map(|_| worker.receive_message().unwrap()).collect();
    assert_eq!(
        received,
        [
            "Hello a ! You're my 1st client.",
            "Hello b ! You're my 2nd client.",
            "Hello c ! You're my 3rd client.",
        ]
    );
}

#[test]
fn a_json_worker_is_spoken_to_queried_and_stopped() {
    let served = embedded(Transport::Tcp6, with_cookie().with_codec(Codec::Json));
    let mut worker = SharedWorker::connect(&served.address).unwrap();
    assert_eq!(worker.codec(), Codec::Json);
    worker.send_message("json").unwrap();
    assert_eq!(
        worker.receive_message::<String>().unwrap(),
        "Hello json ! You're my 1st client."
    );
    assert!(worker.query_privileged(&cookie()).unwrap().privileged);
    worker.stop(&cookie()).unwrap();
    served.server.join().unwrap();
    assert_eq!(Counts::get(&served.counts.on_stop), 1);
    assert_eq!(Counts::get(&served.counts.terminate), 1);
}

#[test]
fn a_wrong_cookie_is_unauthorized_logged_without_the_cookie_and_the_worker_keeps_serving() {
    let served = embedded(Transport::Unix, with_cookie());
    let wrong = AdminCookie::new("w40ng-7c1d-GUESS-e5a0").unwrap();
    let mut worker = SharedWorker::connect(&served.address).unwrap();
    match worker.stop(&wrong) {
        Err(Error::Unauthorized { address, pid }) => {
            assert_eq!(address, served.address);
            assert_eq!(pid, std::process::id());
        }
        other => panic!("expected unauthorized, got {other:?}"),
    }
    let line = served.log.wait_for("wrong admin cookie");
    assert!(line.contains("failure 1 of 3"), "{line}");
    // The same connection goes on, and so does the worker.
    worker.send_message("still").unwrap();
    assert_eq!(
        worker.receive_message::<String>().unwrap(),
        "Hello still ! You're my 1st client."
    );
    assert!(!served.server.is_finished());
    // Neither cookie, nor anything that looks like a proof, was ever logged.
    for line in served.log.all() {
        for secret in [COOKIE, b"w40ng-7c1d-GUESS-e5a0"] {
            assert!(
                !line.contains(std::str::from_utf8(&secret[..8]).unwrap()),
                "{line}"
            );
        }
    }
    // The right cookie still stops it.
    worker.stop(&cookie()).unwrap();
    served.server.join().unwrap();
}

#[test]
fn three_wrong_cookies_close_that_connection_only() {
    let served = embedded(Transport::Unix, with_cookie());
    let wrong = AdminCookie::new("guess").unwrap();
    let mut bystander = SharedWorker::connect(&served.address).unwrap();
    let mut guesser = SharedWorker::connect(&served.address).unwrap();
    for _ in 0..3 {
        assert!(matches!(
            guesser.query_privileged(&wrong),
            Err(Error::Unauthorized { .. })
        ));
    }
    served
        .log
        .wait_for("(failure 3 of 3); closing its connection");
    assert!(matches!(
        guesser.receive_message::<String>(),
        Err(Error::Closed { .. })
    ));
    bystander.send_message("me").unwrap();
    assert_eq!(
        bystander.receive_message::<String>().unwrap(),
        "Hello me ! You're my 1st client."
    );
}

#[test]
fn a_worker_without_a_cookie_cannot_be_stopped_through_its_socket() {
    let served = embedded(Transport::Unix, SharedServerConfig::default());
    let mut worker = SharedWorker::connect(&served.address).unwrap();
    match worker.stop(&cookie()) {
        Err(Error::ServerHasNoCookie { address, pid }) => {
            assert_eq!(address, served.address);
            assert_eq!(pid, std::process::id());
        }
        other => panic!("expected no cookie on the server, got {other:?}"),
    }
    served.log.wait_for("has no admin cookie");
    worker.send_message("still").unwrap();
    worker.receive_message::<String>().unwrap();
}

#[test]
fn on_connect_gets_the_unix_peers_credentials_or_the_tcp_address() {
    let (tx, peers) = mpsc::channel();
    let unix = embedded_with(Transport::Unix, SharedServerConfig::default(), {
        let tx = tx.clone();
        move |greeter: Greeter| greeter.with_peers(tx)
    });
    let mut worker = SharedWorker::connect(&unix.address).unwrap();
    let peer = peers.recv_timeout(timeout(10.0)).unwrap();
    // SAFETY: getuid and getgid cannot fail and have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    assert_eq!(
        peer,
        Peer::Unix {
            pid: Some(std::process::id()),
            uid,
            gid
        }
    );
    worker.send_message("peer").unwrap();
    assert_eq!(
        worker.receive_message::<String>().unwrap(),
        peer.to_string()
    );

    let tcp = embedded_with(Transport::Tcp6, SharedServerConfig::default(), move |g| {
        g.with_peers(tx)
    });
    let _worker = SharedWorker::connect(&tcp.address).unwrap();
    match peers.recv_timeout(timeout(10.0)).unwrap() {
        Peer::Tcp(addr) => assert!(addr.ip().is_loopback() && addr.is_ipv6(), "{addr}"),
        other => panic!("expected a tcp peer, got {other:?}"),
    }
}
