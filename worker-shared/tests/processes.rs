//! Servers in other processes: SIGTERM, systemd's socket activation, and the daemon that
//! `registry().shared::<W>()` runs.

use std::{os::fd::OwnedFd, os::unix::net::UnixListener};

use worker_bootstrap::{BootstrapProfile, DedicatedWorker, StderrMode};
use worker_shared::{
    AdminCookie, Error, SharedServerConfig, SharedWorker, daemon_extensions, wait_until_listening,
};

use crate::{
    children::{Helper, ROLE_VAR, SIGPIPE_VAR, SOCKET_ACTIVATION, exists},
    support::{COOKIE, timeout},
};

fn cookie() -> AdminCookie {
    AdminCookie::new(COOKIE).unwrap()
}

#[test]
fn sigterm_stops_a_server_gracefully_delivering_the_replies_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker.sock");
    let address = format!("unix://{}", path.display());
    let helper = Helper::spawn("serve", &address, None, None);
    assert_eq!(
        helper.expect("listening"),
        format!("{address} false env-clean")
    );
    let mut clients: Vec<SharedWorker> = (0..10)
        .map(|_| SharedWorker::connect(&address).unwrap())
        .collect();
    assert_eq!(clients[0].pid(), helper.pid());
    for (i, client) in clients.iter_mut().enumerate() {
        for j in 0..10 {
            client.send_message(&format!("{i}.{j}")).unwrap();
        }
    }
    helper.signal(libc::SIGTERM);
    let mut answered = 0;
    for client in &mut clients {
        loop {
            match client.receive_message::<String>() {
                Ok(reply) => {
                    assert!(reply.starts_with("Hello "), "{reply}");
                    answered += 1;
                }
                Err(Error::Stopping { .. }) => break,
                Err(e) => panic!("expected replies then the stopping notice, got {e:?}"),
            }
        }
    }
    assert_eq!(answered, 100);
    assert_eq!(helper.expect("exit"), "on_stop=1 terminate=1 ok");
    assert!(helper.wait().success());
    assert!(!exists(&path), "the socket file is removed");
}

#[test]
fn a_client_that_leaves_mid_reply_never_kills_a_server_whose_sigpipe_is_deadly() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix://{}/worker.sock", dir.path().display());
    let helper = Helper::spawn_with_env("serve", &address, None, None, &[(SIGPIPE_VAR, "1")]);
    helper.expect("listening");
    for _ in 0..3 {
        // Megabytes of replies asked for, and the client gone before they are written.
        let mut leaver = SharedWorker::connect(&address).unwrap();
        leaver.send_message("flood 64 65536").unwrap();
    }
    let mut worker = SharedWorker::connect(&address).unwrap();
    worker.send_message("survivor").unwrap();
    assert!(
        worker
            .receive_message::<String>()
            .unwrap()
            .starts_with("Hello survivor !")
    );
    helper.signal(libc::SIGTERM);
    assert_eq!(helper.expect("exit"), "on_stop=1 terminate=1 ok");
    assert!(helper.wait().success());
}

#[test]
fn socket_activation_serves_on_the_listener_handed_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("activated.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let address = format!("unix://{}", path.display());
    // The configured address is not where the server listens: systemd decides.
    let elsewhere = format!("unix://{}/elsewhere.sock", dir.path().display());
    let helper = Helper::spawn(
        "activated",
        &elsewhere,
        Some(OwnedFd::from(listener)),
        Some(SOCKET_ACTIVATION),
    );
    assert_eq!(
        helper.expect("listening"),
        format!("{address} true env-clean")
    );
    let mut worker = SharedWorker::connect(&address).unwrap();
    assert_eq!(worker.pid(), helper.pid());
    worker.send_message("systemd").unwrap();
    assert_eq!(
        worker.receive_message::<String>().unwrap(),
        "Hello systemd ! You're my 1st client."
    );
    worker.stop(&cookie()).unwrap();
    assert_eq!(helper.expect("exit"), "on_stop=1 terminate=1 ok");
    assert!(helper.wait().success());
    assert!(
        exists(&path),
        "systemd's socket file is systemd's to remove"
    );
    assert!(!exists(&dir.path().join("elsewhere.sock")));
}

/// A profile that starts this test binary as the `daemon` role, its channel moved out of
/// libtest's way (see `children::daemon`).
pub(crate) fn daemon_profile() -> BootstrapProfile {
    BootstrapProfile::new()
        .with_program("/bin/sh")
        .with_args([
            "-c",
            r#"exec 3>&1 1>&2; exec "$0" "$@""#,
            std::env::current_exe().unwrap().to_str().unwrap(),
            "--exact",
            "helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .with_env(ROLE_VAR, "daemon")
        .with_stderr(StderrMode::Capture)
        .with_close_grace(timeout(10.0))
}

/// Starts a greeter daemon at `address` through the registry, with the admin cookie; returns
/// its starter and its pid once it listens.
pub(crate) fn start_daemon(address: &str) -> (DedicatedWorker, u32) {
    let config = SharedServerConfig::default().with_cookie(cookie());
    let mut starter = DedicatedWorker::start_with_extensions(
        &daemon_profile(),
        "greeter",
        None,
        daemon_extensions(address, &config).unwrap(),
    )
    .unwrap();
    let pid = wait_until_listening(&mut starter, address, timeout(30.0)).unwrap();
    (starter, pid)
}

#[test]
fn a_daemon_started_through_the_registry_reports_listening_serves_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("daemon").join("worker.sock");
    let address = format!("unix://{}", path.display());
    let (starter, pid) = start_daemon(&address);
    assert_eq!(pid, starter.pid());
    for nth in ["1st", "2nd", "3rd"] {
        let mut worker = SharedWorker::connect(&address).unwrap();
        assert_eq!(worker.pid(), pid);
        worker.send_message("world").unwrap();
        assert_eq!(
            worker.receive_message::<String>().unwrap(),
            format!("Hello world ! You're my {nth} client.")
        );
    }
    let mut admin = SharedWorker::connect(&address).unwrap();
    let status = admin.query_privileged(&cookie()).unwrap();
    assert!(status.privileged);
    admin.stop(&cookie()).unwrap();
    let status = starter.close().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!exists(&path), "the socket file is removed");
}

#[test]
fn a_daemon_that_cannot_listen_reports_why_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker.sock");
    let _squatter = UnixListener::bind(&path).unwrap();
    let address = format!("unix://{}", path.display());
    let mut starter = DedicatedWorker::start_with_extensions(
        &daemon_profile(),
        "greeter",
        None,
        daemon_extensions(&address, &SharedServerConfig::default()).unwrap(),
    )
    .unwrap();
    match wait_until_listening(&mut starter, &address, timeout(30.0)) {
        Err(Error::StartFailed {
            address: failed,
            reason,
        }) => {
            assert_eq!(failed, address);
            assert!(
                reason.starts_with(&format!("cannot listen for shared worker at {address}: ")),
                "{reason}"
            );
            assert!(reason.contains("in use"), "{reason}");
        }
        other => panic!("expected the daemon's own words, got {other:?}"),
    }
    let status = starter.close().unwrap();
    assert_eq!(status.code(), Some(worker_bootstrap::EXIT_FAILURE));
    assert!(exists(&path), "someone else's socket is left alone");
}

#[test]
fn a_daemon_started_without_its_settings_says_so() {
    let mut starter = DedicatedWorker::start_with_extensions(
        &daemon_profile(),
        "greeter",
        None,
        Default::default(),
    )
    .unwrap();
    match wait_until_listening(&mut starter, "unix:///nowhere.sock", timeout(30.0)) {
        Err(Error::StartFailed { reason, .. }) => {
            assert!(
                reason.contains("without its shared-worker settings"),
                "{reason}"
            )
        }
        other => panic!("expected the daemon's own words, got {other:?}"),
    }
}

/// How a case of [`stop_and_wait_stops_a_local_worker_or_says_why_not`] reaches its worker.
#[derive(Clone, Copy, Debug)]
enum Route {
    /// Its own Unix socket: the peer is confirmed by `SO_PEERCRED`.
    Direct,
    /// A TCP relay in this process, as a forwarded port: the peer is the relay, not the pid
    /// the hello names.
    Relayed,
}

/// What a case expects of `stop_and_wait`.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Stopped, and the process is gone.
    Stopped,
    /// `Error::Unconfirmed`, and the worker still serves.
    Unconfirmed,
    /// `Error::Timeout` (operation `exit`), and the worker is still there.
    StillThere,
}

#[test]
fn stop_and_wait_stops_a_local_worker_or_says_why_not() {
    use std::time::Duration;

    use worker_shared::{StopBy, stop_and_wait};
    let cookie = cookie();
    let cases: &[(Route, StopBy<'_>, Duration, Expect)] = &[
        (
            Route::Direct,
            StopBy::Cookie(&cookie),
            Duration::MAX,
            Expect::Stopped,
        ),
        (
            Route::Direct,
            StopBy::Signal(libc::SIGTERM),
            Duration::MAX,
            Expect::Stopped,
        ),
        // Waited for until it closes the connection, its process not being confirmed.
        (
            Route::Relayed,
            StopBy::Cookie(&cookie),
            Duration::MAX,
            Expect::Stopped,
        ),
        (
            Route::Relayed,
            StopBy::Signal(libc::SIGTERM),
            Duration::MAX,
            Expect::Unconfirmed,
        ),
        // Stopped (SIGSTOP) but not gone, and not waited for.
        (
            Route::Direct,
            StopBy::Signal(libc::SIGSTOP),
            Duration::ZERO,
            Expect::StillThere,
        ),
    ];
    for &(route, by, wait, expect) in cases {
        let case = format!("{route:?} {by:?} {wait:?}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.sock");
        let address = format!("unix://{}", path.display());
        let (starter, pid) = start_daemon(&address);
        let relay = crate::support::Relay::start(crate::support::Endpoint::Unix(path.clone()));
        let target = match route {
            Route::Direct => address.clone(),
            Route::Relayed => relay.address.clone(),
        };
        let result = stop_and_wait(&target, by, timeout(30.0), wait);
        match expect {
            Expect::Stopped => {
                assert_eq!(result.unwrap(), pid, "{case}");
                // Gone: nothing listens there any more (its exit status is the starter's).
                assert!(
                    SharedWorker::connect(&address)
                        .unwrap_err()
                        .is_not_running(),
                    "{case}"
                );
                assert!(starter.close().unwrap().success(), "{case}");
                continue;
            }
            Expect::Unconfirmed => match result {
                Err(Error::Unconfirmed { pid: p, .. }) if p == pid => {}
                other => panic!("{case}: {other:?}"),
            },
            Expect::StillThere => match result {
                Err(Error::Timeout {
                    pid: Some(p),
                    operation: "exit",
                    ..
                }) if p == pid => {}
                other => panic!("{case}: {other:?}"),
            },
        }
        // Still there: stopped for good by the cookie, after a SIGCONT for a stopped one.
        crate::signals::kill(pid, libc::SIGCONT);
        assert_eq!(
            stop_and_wait(
                &address,
                StopBy::Cookie(&cookie),
                timeout(30.0),
                timeout(30.0)
            )
            .unwrap(),
            pid,
            "{case}"
        );
        assert!(starter.close().unwrap().success(), "{case}");
    }
    // Nothing there: not running, whichever way it would be stopped.
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("unix://{}", dir.path().join("none.sock").display());
    for by in [StopBy::Cookie(&cookie), StopBy::Signal(libc::SIGTERM)] {
        let e = stop_and_wait(&nowhere, by, Duration::ZERO, Duration::ZERO).unwrap_err();
        assert!(e.is_not_running(), "{by:?}: {e:?}");
    }
}
