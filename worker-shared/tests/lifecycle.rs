//! Stopping: by a client with the cookie, from inside the worker, through a handle, after an
//! idle time; replies in flight are delivered, `on_stop` and `terminate` run once, and the
//! socket file goes only while it is still the server's.

use std::{
    os::unix::net::{UnixListener, UnixStream},
    sync::mpsc,
    time::Instant,
};

use worker_shared::{AdminCookie, Error, SharedServerConfig, SharedWorker};

use crate::{
    support::{COOKIE, Transport, timeout},
    workers::{Counts, embedded, embedded_with},
};

fn cookie() -> AdminCookie {
    AdminCookie::new(COOKIE).unwrap()
}

/// Reads `n` greetings, then the stopping worker's notice; returns the ordinals.
fn greetings_then_end(client: &mut SharedWorker, n: usize) -> Vec<String> {
    let mut ordinals = Vec::new();
    for _ in 0..n {
        let reply: String = client.receive_message().unwrap();
        let ordinal = reply
            .rsplit_once("my ")
            .and_then(|(_, rest)| rest.strip_suffix(" client."))
            .expect(&reply);
        ordinals.push(ordinal.to_owned());
    }
    match client.receive_message::<String>() {
        Err(Error::Stopping { .. }) => {}
        other => panic!("expected the stopping notice after the replies, got {other:?}"),
    }
    ordinals
}

#[test]
fn a_graceful_stop_delivers_all_100_replies_in_flight_and_runs_on_stop_and_terminate_once() {
    let served = embedded(
        Transport::Unix,
        SharedServerConfig::default().with_cookie(cookie()),
    );
    let mut clients: Vec<SharedWorker> = (0..10)
        .map(|_| SharedWorker::connect(&served.address).unwrap())
        .collect();
    // 100 requests sent, none of their replies read yet.
    for (i, client) in clients.iter_mut().enumerate() {
        for j in 0..10 {
            client.send_message(&format!("{i}.{j}")).unwrap();
        }
    }
    let socket = served.socket_path();
    assert!(socket.exists());
    SharedWorker::connect(&served.address)
        .unwrap()
        .stop(&cookie())
        .unwrap();
    let mut ordinals: Vec<String> = clients
        .iter_mut()
        .flat_map(|client| greetings_then_end(client, 10))
        .collect();
    ordinals.sort();
    ordinals.dedup();
    assert_eq!(ordinals.len(), 100, "every request answered once");
    served.server.join().unwrap();
    assert_eq!(Counts::get(&served.counts.on_stop), 1);
    assert_eq!(Counts::get(&served.counts.terminate), 1);
    assert!(!socket.exists(), "the socket file is removed");
    served.log.wait_for("stopping: asked to stop by unix:pid=");
    served.log.wait_for("stopped");
}

#[test]
fn stop_current_stops_the_worker_from_inside() {
    let served = embedded(Transport::Tcp4, SharedServerConfig::default());
    let mut client = SharedWorker::connect(&served.address).unwrap();
    client.send_message("stop-current").unwrap();
    assert_eq!(
        client.receive_message::<String>().unwrap(),
        "stop_current: true"
    );
    assert!(matches!(
        client.receive_message::<String>(),
        Err(Error::Stopping { .. })
    ));
    served.server.join().unwrap();
    served.log.wait_for("stopping: asked to stop by the worker");
    assert_eq!(Counts::get(&served.counts.on_stop), 1);
    assert_eq!(Counts::get(&served.counts.terminate), 1);
    // Outside a server's thread there is nothing to stop.
    assert!(!worker_shared::stop_current());
}

#[test]
fn a_stop_handle_stops_an_embedded_server_from_another_thread() {
    let served = embedded(Transport::Unix, SharedServerConfig::default());
    let handle = served.server.stop_handle();
    let mut client = SharedWorker::connect(&served.address).unwrap();
    client.send_message("last").unwrap();
    let stopper = std::thread::spawn(move || handle.stop());
    assert!(stopper.join().unwrap());
    assert_eq!(greetings_then_end(&mut client, 1), ["1st"]);
    let handle = served.server.stop_handle();
    let socket = served.socket_path();
    served.server.join().unwrap();
    assert!(!handle.stop(), "a stopped server cannot be stopped again");
    assert!(!socket.exists());
    served
        .log
        .wait_for("stopping: asked to stop by its embedder");
}

#[test]
fn an_idle_server_stops_itself_only_once_nobody_is_connected() {
    let idle = timeout(0.3);
    let (tx, departures) = mpsc::channel();
    let served = embedded_with(
        Transport::Unix,
        SharedServerConfig::default().with_idle_timeout(Some(idle)),
        move |greeter| greeter.with_departures(tx),
    );
    let mut client = SharedWorker::connect(&served.address).unwrap();
    // Connected for twice the idle time, and busy: the server stays.
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < idle * 2 {
        client.send_message("busy").unwrap();
        client.receive_message::<String>().unwrap();
        n += 1;
    }
    assert!(n > 0 && !served.server.is_finished());
    drop(client);
    departures.recv_timeout(timeout(10.0)).unwrap();
    let left = Instant::now();
    let line = served.log.wait_for("stopping: no connection for");
    assert!(left.elapsed() >= idle / 2, "{line}");
    served.server.join().unwrap();
    assert_eq!(Counts::get(&served.counts.on_stop), 1);
    assert_eq!(Counts::get(&served.counts.terminate), 1);
}

#[test]
fn the_socket_file_is_removed_on_stop_only_while_it_is_still_the_servers() {
    let served = embedded(Transport::Unix, SharedServerConfig::default());
    let path = served.socket_path();
    // Someone else took the path meanwhile (a newer server, after reclaiming it).
    std::fs::remove_file(&path).unwrap();
    let newer = UnixListener::bind(&path).unwrap();
    served.server.stop();
    served.server.join().unwrap();
    assert!(path.exists(), "the newer socket file is left alone");
    UnixStream::connect(&path).unwrap();
    drop(newer);
}

#[test]
fn the_drain_deadline_closes_clients_that_do_not_take_their_last_replies() {
    let served = embedded(
        Transport::Unix,
        SharedServerConfig::default()
            .with_max_queued(64 << 20)
            .with_drain_timeout(timeout(0.3)),
    );
    let mut deaf = SharedWorker::connect(&served.address).unwrap();
    let mut polite = SharedWorker::connect(&served.address).unwrap();
    // 6.4 MiB of replies, far more than the socket holds, and never read.
    deaf.send_message("flood 100 65536").unwrap();
    polite.send_message("polite").unwrap();
    served.server.stop();
    assert_eq!(greetings_then_end(&mut polite, 1), ["1st"]);
    served
        .log
        .wait_for("1 connections still had replies to take after");
    served.server.join().unwrap();
    assert_eq!(Counts::get(&served.counts.terminate), 1);
    let mut read = 0;
    loop {
        match deaf.receive_message::<String>() {
            Ok(_) => read += 1,
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
    assert!(
        read < 100,
        "the deadline cut the replies short ({read} read)"
    );
}
