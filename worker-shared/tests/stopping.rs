//! Masters that race a stop: one typed error, [`Error::Stopping`], whatever they were doing,
//! and `connect_or_start` onto a stopping worker ends up on a fresh daemon.

use std::{
    fs::{self, File},
    process::Command,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use worker_shared::{
    AdminCookie, Error, SharedServerConfig, SharedWorker, connect_or_start_timeout, stop,
};

use crate::{
    processes::daemon_profile,
    support::{COOKIE, Transport, timeout},
    workers::embedded,
};

fn cookie() -> AdminCookie {
    AdminCookie::new(COOKIE).unwrap()
}

/// What a master does when the stop comes.
#[derive(Clone, Copy, Debug)]
enum Doing {
    /// Sends, and reads the reply, until a call fails.
    Sending,
    /// Waits for a message.
    Receiving,
}

/// Whether `result` is the one error of a stopping worker, naming it.
fn assert_stopping<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, Error>,
    address: &str,
    pid: u32,
) {
    match result {
        Err(Error::Stopping {
            address: said,
            pid: Some(said_pid),
        }) => assert_eq!((said.as_str(), said_pid), (address, pid), "{what}"),
        other => panic!("{what}: expected Error::Stopping, got {other:?}"),
    }
}

#[test]
fn masters_racing_a_stop_all_get_the_one_stopping_error() {
    for transport in [Transport::Unix, Transport::Tcp4] {
        for doing in [Doing::Sending, Doing::Receiving] {
            let what = format!("{transport:?} {doing:?}");
            let config = SharedServerConfig::default().with_cookie(cookie());
            let server = embedded(transport, config);
            let mut masters: Vec<SharedWorker> = (0..6)
                .map(|_| {
                    let mut master = SharedWorker::connect(&server.address).unwrap();
                    master.send_message("world").unwrap();
                    master.receive_message::<String>().unwrap();
                    master
                })
                .collect();
            let pid = masters[0].pid();
            let mut stopper = SharedWorker::connect(&server.address).unwrap();
            stopper.stop(&cookie()).unwrap();
            let (tx, rx) = mpsc::channel();
            // The even masters block, the odd ones are async.
            for (n, master) in masters.drain(..).enumerate() {
                let (tx, address, what) = (tx.clone(), server.address.clone(), what.clone());
                thread::spawn(move || {
                    let what = format!("{what} master {n}");
                    let (end, send, receive) = if n % 2 == 0 {
                        race(master, doing)
                    } else {
                        race_async(master, doing)
                    };
                    assert_stopping(&what, end, &address, pid);
                    // And so on, for every later call.
                    assert_stopping(&what, send, &address, pid);
                    assert_stopping(&what, receive, &address, pid);
                    tx.send(()).unwrap();
                });
            }
            drop(tx);
            for _ in 0..6 {
                rx.recv_timeout(timeout(30.0))
                    .unwrap_or_else(|e| panic!("{what}: a master did not finish: {e}"));
            }
            server.server.join().unwrap();
        }
    }
}

/// What a blocking master racing a stop gets: the call that failed first, then a send and a
/// receive after it.
fn race(mut master: SharedWorker, doing: Doing) -> Outcome {
    let end = match doing {
        Doing::Sending => loop {
            if let Err(e) = master.send_message("racing") {
                break Err::<String, _>(e);
            }
            if let Err(e) = master.receive_message::<String>() {
                break Err(e);
            }
        },
        Doing::Receiving => master.receive_message::<String>(),
    };
    (
        end,
        master.send_message("again"),
        master.receive_message::<String>(),
    )
}

type Outcome = (
    Result<String, Error>,
    Result<(), Error>,
    Result<String, Error>,
);

/// As [`race`], for the async client (the odd masters; the blocking one without tokio).
#[cfg(feature = "tokio")]
fn race_async(master: SharedWorker, doing: Doing) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut master = master.into_async().unwrap();
        let end = match doing {
            Doing::Sending => loop {
                if let Err(e) = master.send_message("racing").await {
                    break Err::<String, _>(e);
                }
                if let Err(e) = master.receive_message::<String>().await {
                    break Err(e);
                }
            },
            Doing::Receiving => master.receive_message::<String>().await,
        };
        (
            end,
            master.send_message("again").await,
            master.receive_message::<String>().await,
        )
    })
}

#[cfg(not(feature = "tokio"))]
fn race_async(master: SharedWorker, doing: Doing) -> Outcome {
    race(master, doing)
}

/// How many connections wait in the backlog of the Unix listener at `path` (`ss`'s Recv-Q).
fn backlog(path: &std::path::Path) -> usize {
    let out = Command::new("ss")
        .args(["-xlH", "src"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn connect_or_start_onto_a_stopping_worker_ends_up_on_a_fresh_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker.sock");
    let address = format!("unix://{}", path.display());
    let log_path = dir.path().join("daemon.log");
    let profile = daemon_profile().with_output_path(&log_path);
    let config = SharedServerConfig::default().with_cookie(cookie());
    let mut first =
        connect_or_start_timeout(&profile, &address, "greeter", &config, timeout(30.0)).unwrap();
    let old = first.pid();
    // The old daemon's loop blocks on a FIFO until the test writes it.
    let fifo = dir.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    first
        .send_message(&format!("stop-after {}", fifo.display()))
        .unwrap();
    // Opens once the daemon opened it: its loop is blocked from now on.
    let writer = File::options().write(true).open(&fifo).unwrap();
    let (tx, rx) = mpsc::channel();
    let (starting, started_config) = (address.clone(), config.clone());
    thread::spawn(move || {
        let started = connect_or_start_timeout(
            &daemon_profile(),
            &starting,
            "greeter",
            &started_config,
            timeout(30.0),
        );
        let _ = tx.send(started);
    });
    // Its connection waits in the old daemon's backlog.
    let deadline = Instant::now() + timeout(30.0);
    let mut pause = Duration::from_millis(1);
    while backlog(&path) == 0 {
        assert!(
            Instant::now() < deadline,
            "the connection never reached the backlog"
        );
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    // The old daemon stops, with that connection still unaccepted.
    drop(writer);
    let mut fresh = rx
        .recv_timeout(timeout(60.0))
        .unwrap()
        .unwrap_or_else(|e| panic!("expected a fresh daemon, got {e:?}"));
    assert_ne!(
        fresh.pid(),
        old,
        "a new daemon, not the stopping one; the old one's log:\n{}",
        fs::read_to_string(&log_path).unwrap_or_default()
    );
    fresh.send_message("world").unwrap();
    assert_eq!(
        fresh.receive_message::<String>().unwrap(),
        "Hello world ! You're my 1st client."
    );
    assert_eq!(
        first.receive_message::<String>().unwrap(),
        "stop_current: true"
    );
    assert_stopping(
        "the old daemon's master",
        first.receive_message::<String>(),
        &address,
        old,
    );
    stop(&address, &cookie(), timeout(30.0)).unwrap();
}
