//! What a hostile or careless peer can take: idle connections are released after the
//! per-connection idle timeout, and wrong cookies are checked at most 100 times a second per
//! peer, however many connections it opens.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use worker_shared::{AdminCookie, Error, SharedServerConfig, SharedWorker};

use crate::{
    support::{COOKIE, Transport, timeout},
    workers::embedded,
};

/// Expects the server's goodbye to an idle connection, then the end of the stream.
fn released_as_idle(client: &mut SharedWorker) {
    match client.receive_message_timeout::<String>(timeout(30.0)) {
        Err(Error::Rejected { code, .. }) => assert_eq!(code, "idle_timeout"),
        other => panic!("expected the idle timeout, got {other:?}"),
    }
    match client.receive_message_timeout::<String>(timeout(30.0)) {
        Err(Error::Closed { .. }) => {}
        other => panic!("expected the end of the stream, got {other:?}"),
    }
}

/// How an idle peer got idle: what it did after the hello.
type Idler = fn(&mut SharedWorker);

const IDLERS: [(&str, Idler); 3] = [
    ("nothing after the hello", |_| {}),
    ("one message", |client| {
        client.send_message("world").unwrap();
        client.receive_message::<String>().unwrap();
    }),
    ("one query", |client| {
        client.query().unwrap();
    }),
];

#[test]
fn idle_peers_are_released_after_the_connection_idle_timeout_and_free_their_slots() {
    let idle = timeout(0.3);
    for transport in [Transport::Unix, Transport::Tcp4] {
        for (how, idler) in IDLERS {
            let config = SharedServerConfig::default()
                .with_max_connections(2)
                .with_connection_idle_timeout(Some(idle));
            let served = embedded(transport, config);
            // Before the peers' last activity, which the timeout counts from.
            let idle_since = Instant::now();
            let mut peers: Vec<SharedWorker> = (0..2)
                .map(|_| SharedWorker::connect(&served.address).unwrap())
                .collect();
            for peer in &mut peers {
                idler(peer);
            }
            // Both slots are taken: a third peer is turned away before its hello.
            match SharedWorker::connect(&served.address) {
                Err(Error::Closed { .. }) => {}
                other => panic!("{transport:?}, {how}: expected the limit, got {other:?}"),
            }
            for peer in &mut peers {
                released_as_idle(peer);
            }
            let waited = idle_since.elapsed();
            assert!(
                waited >= idle,
                "{transport:?}, {how}: released after {waited:?}"
            );
            // The slots are free again.
            let mut newcomer = SharedWorker::connect(&served.address).unwrap();
            newcomer.send_message("newcomer").unwrap();
            assert!(
                newcomer
                    .receive_message::<String>()
                    .unwrap()
                    .starts_with("Hello newcomer"),
                "{transport:?}, {how}"
            );
            let line = served.log.wait_for("idle for");
            assert!(!line.contains("SECRET"), "{line}");
        }
    }
}

#[test]
fn a_peer_that_keeps_talking_is_never_idle() {
    // Scaled: a loaded machine must not make the talker look idle.
    let idle = timeout(0.2);
    let config = SharedServerConfig::default().with_connection_idle_timeout(Some(idle));
    let served = embedded(Transport::Unix, config);
    let mut talker = SharedWorker::connect(&served.address).unwrap();
    let mut quiet = SharedWorker::connect(&served.address).unwrap();
    // The talker queries at a third of the timeout, for three timeouts; the quiet one's
    // release paces it.
    let started = Instant::now();
    while started.elapsed() < 3 * idle {
        talker.query().unwrap();
        match quiet.receive_message_timeout::<String>(idle / 3) {
            Err(Error::Timeout { .. }) => {}
            Err(Error::Rejected { code, .. }) if code == "idle_timeout" => {}
            Err(Error::Closed { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    talker.send_message("still here").unwrap();
    assert!(
        talker
            .receive_message::<String>()
            .unwrap()
            .starts_with("Hello still here")
    );
}

#[test]
fn no_idle_timeout_and_durations_past_the_clock_keep_idle_peers() {
    // `Duration::MAX` is no timeout at all (and never a panic in the server's arithmetic).
    for setting in [None, Some(Duration::MAX)] {
        let config = SharedServerConfig::default().with_connection_idle_timeout(setting);
        let served = embedded(Transport::Unix, config);
        let mut peer = SharedWorker::connect(&served.address).unwrap();
        peer.query().unwrap();
        match peer.receive_message_timeout::<String>(Duration::from_millis(300)) {
            Err(Error::Timeout { .. }) => {}
            other => panic!("{setting:?}: expected the peer kept, got {other:?}"),
        }
        peer.query().unwrap();
    }
}

#[test]
fn a_zero_connection_idle_timeout_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix://{}/w.sock", dir.path().display());
    let config = SharedServerConfig::default().with_connection_idle_timeout(Some(Duration::ZERO));
    match worker_shared::SharedServer::bind(&address, config) {
        Err(Error::Config { what, .. }) => assert_eq!(what, "connection_idle_timeout"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

/// What the attackers' connections saw.
#[derive(Default)]
struct Tally {
    /// Proofs the server checked and refused.
    checked: AtomicUsize,
    /// Proofs it refused unchecked.
    throttled: AtomicUsize,
}

#[test]
fn wrong_cookies_are_checked_at_most_100_times_a_second_per_peer_over_fresh_connections() {
    for transport in [Transport::Unix, Transport::Tcp4] {
        let served = embedded(
            transport,
            SharedServerConfig::default().with_cookie(AdminCookie::new(COOKIE).unwrap()),
        );
        let wrong = AdminCookie::new("a guess").unwrap();
        let tally = Arc::new(Tally::default());
        let run_for = Duration::from_millis(2500);
        let started = Instant::now();
        let attackers: Vec<_> = (0..4)
            .map(|_| {
                let (address, wrong, tally) =
                    (served.address.clone(), wrong.clone(), Arc::clone(&tally));
                thread::spawn(move || {
                    while started.elapsed() < run_for {
                        // A fresh connection for every guess, as a brute force would.
                        let mut guess = SharedWorker::connect(&address).unwrap();
                        guess.set_control_timeout(timeout(30.0));
                        match guess.query_privileged(&wrong) {
                            Err(Error::Unauthorized { .. }) => &tally.checked,
                            Err(Error::Throttled { .. }) => &tally.throttled,
                            other => panic!("expected a refusal, got {other:?}"),
                        }
                        .fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for attacker in attackers {
            attacker.join().unwrap();
        }
        let elapsed = started.elapsed();
        let checked = tally.checked.load(Ordering::SeqCst);
        let throttled = tally.throttled.load(Ordering::SeqCst);
        // One window of 100 at most per second begun.
        let windows = elapsed.as_secs() as usize + 1;
        eprintln!(
            "{transport:?}: {checked} wrong cookies checked and {throttled} refused unchecked \
             in {elapsed:?} ({:.0} checked/s)",
            checked as f64 / elapsed.as_secs_f64()
        );
        assert!(
            checked <= 100 * windows,
            "{transport:?}: {checked} checked in {elapsed:?}"
        );
        assert!(
            throttled > 0,
            "{transport:?}: the attackers never reached the limit"
        );
        // Logged once per window, not once per refusal.
        let lines = served
            .log
            .all()
            .into_iter()
            .filter(|l| l.contains("failed to authenticate 100 times"))
            .count();
        assert!(
            (1..=windows).contains(&lines),
            "{transport:?}: {lines} lines"
        );
        // The cookie's holder gets in once the window is over.
        let deadline = Instant::now() + timeout(10.0);
        loop {
            let mut admin = SharedWorker::connect(&served.address).unwrap();
            admin.set_control_timeout(timeout(30.0));
            match admin.query_privileged(&AdminCookie::new(COOKIE).unwrap()) {
                Ok(status) => {
                    assert!(status.privileged);
                    break;
                }
                Err(Error::Throttled { .. }) if Instant::now() < deadline => {}
                other => panic!("{transport:?}: expected the holder let in, got {other:?}"),
            }
        }
    }
}
