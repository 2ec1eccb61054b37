//! Signals a long-running server meets: SIGHUP (a closed terminal, `kill -HUP`) leaves a server
//! that owns its signals serving; SIGTERM still stops it gracefully afterwards.

use worker_shared::SharedWorker;

use crate::{
    children::{Helper, exists},
    processes::start_daemon,
};

/// One round trip on a fresh connection: the server is alive and serving.
fn served(address: &str, pid: u32) -> String {
    let mut client = SharedWorker::connect(address)
        .unwrap_or_else(|e| panic!("no server at {address} after the hangup: {e:?}"));
    assert_eq!(client.pid(), pid);
    client.send_message("world").unwrap();
    client
        .receive_message::<String>()
        .unwrap_or_else(|e| panic!("no reply after the hangup: {e:?}"))
}

/// Sends `signal` to `pid`.
pub(crate) fn kill(pid: u32, signal: libc::c_int) {
    // SAFETY: kill only sends a signal, to a child of this test that is not reaped yet.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
}

/// How many hangups each case sends before it checks: one, and a burst (one byte each on the
/// stop line, read together).
const HANGUPS: [usize; 2] = [1, 5];

#[test]
fn a_daemon_survives_sighup_keeps_serving_and_still_stops_on_sigterm() {
    for hangups in HANGUPS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.sock");
        let address = format!("unix://{}", path.display());
        let (starter, pid) = start_daemon(&address);
        assert_eq!(served(&address, pid), "Hello world ! You're my 1st client.");
        for _ in 0..hangups {
            kill(pid, libc::SIGHUP);
        }
        // The handler runs before the daemon returns to its loop: a reply now is a reply from
        // a daemon that has had its hangup.
        assert_eq!(
            served(&address, pid),
            "Hello world ! You're my 2nd client.",
            "{hangups} hangups"
        );
        assert_eq!(served(&address, pid), "Hello world ! You're my 3rd client.");
        kill(pid, libc::SIGTERM);
        let status = starter.close().unwrap();
        assert!(status.success(), "{hangups} hangups: {status:?}");
        assert!(!exists(&path), "the socket file is removed by the stop");
    }
}

#[test]
fn an_embedded_server_that_takes_the_signals_ignores_sighup_and_stops_on_sigterm() {
    for hangups in HANGUPS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.sock");
        let address = format!("unix://{}", path.display());
        let helper = Helper::spawn("serve", &address, None, None);
        helper.expect("listening");
        assert_eq!(
            served(&address, helper.pid()),
            "Hello world ! You're my 1st client."
        );
        for _ in 0..hangups {
            helper.signal(libc::SIGHUP);
        }
        assert_eq!(
            served(&address, helper.pid()),
            "Hello world ! You're my 2nd client.",
            "{hangups} hangups"
        );
        helper.signal(libc::SIGTERM);
        assert_eq!(helper.expect("exit"), "on_stop=1 terminate=1 ok");
        assert!(helper.wait().success());
        assert!(!exists(&path));
    }
}
