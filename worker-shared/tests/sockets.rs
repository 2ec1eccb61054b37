//! The listening socket: file and directory modes, who may connect, addresses in use, TCP on
//! both loopbacks.

use std::{
    fs,
    net::TcpListener,
    os::unix::fs::{FileTypeExt, PermissionsExt},
};

use worker_shared::{Error, PeerUids, SharedServer, SharedServerConfig, SharedWorker};

use crate::{
    support::Transport,
    workers::{Greeter, embedded},
};

fn mode(path: &std::path::Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_unix_socket_is_mode_0600_in_a_directory_created_0700() {
    let served = embedded(Transport::Unix, SharedServerConfig::default());
    let path = served.socket_path();
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
}

#[test]
fn the_socket_mode_is_configurable_and_an_existing_directory_is_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("worker.sock");
    let server = SharedServer::bind(
        &format!("unix://{}", path.display()),
        SharedServerConfig::default().with_socket_mode(0o660),
    )
    .unwrap();
    assert_eq!(mode(&path), 0o660);
    assert_eq!(mode(dir.path()), 0o755);
    drop(server);
    assert!(
        !path.exists(),
        "a server dropped before it ran removes its socket"
    );
}

#[test]
fn a_unix_peer_of_another_user_is_refused_unless_allowed() {
    // SAFETY: geteuid cannot fail and has no preconditions.
    let me = unsafe { libc::geteuid() };
    let strangers_only = embedded(
        Transport::Unix,
        SharedServerConfig::default().with_peer_uids(PeerUids::Only(vec![me.wrapping_add(1)])),
    );
    match SharedWorker::connect(&strangers_only.address) {
        Err(Error::Closed { pid: None, .. }) => {}
        other => panic!("expected the connection closed before any hello, got {other:?}"),
    }
    let line = strangers_only.log.wait_for("may not connect");
    assert!(
        line.contains(&format!("user {me} may not connect")),
        "{line}"
    );

    for uids in [PeerUids::Owner, PeerUids::Any, PeerUids::Only(vec![me])] {
        let served = embedded(
            Transport::Unix,
            SharedServerConfig::default().with_peer_uids(uids.clone()),
        );
        let mut worker = SharedWorker::connect(&served.address).unwrap();
        worker.send_message("me").unwrap();
        assert!(worker.receive_message::<String>().is_ok(), "{uids:?}");
    }
}

#[test]
fn binding_where_a_socket_file_already_is_refused_and_leaves_it() {
    let served = embedded(Transport::Unix, SharedServerConfig::default());
    match SharedServer::bind(&served.address, SharedServerConfig::default()) {
        Err(Error::Bind { address, source }) => {
            assert_eq!(address, served.address);
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
        }
        other => panic!("expected the address in use, got {other:?}"),
    }
    // The first server's socket is still there, and still answers.
    let mut worker = SharedWorker::connect(&served.address).unwrap();
    worker.send_message("still").unwrap();
    worker.receive_message::<String>().unwrap();
}

#[test]
fn tcp_addresses_on_127_0_0_1_and_the_ipv6_loopback_are_bound_and_served() {
    for host in ["127.0.0.1", "[::1]"] {
        // A port that was free a moment ago.
        let port = TcpListener::bind(format!("{host}:0"))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("tcp://{host}:{port}");
        let server = SharedServer::bind(&address, SharedServerConfig::default()).unwrap();
        assert_eq!(server.address(), address);
        let server = server.spawn(|| Ok(Greeter::default())).unwrap();
        let mut worker = SharedWorker::connect(&address).unwrap();
        worker.send_message("tcp").unwrap();
        assert_eq!(
            worker.receive_message::<String>().unwrap(),
            "Hello tcp ! You're my 1st client."
        );
        server.stop();
        server.join().unwrap();
    }
}

#[test]
fn impossible_configurations_and_addresses_are_refused_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix://{}/worker.sock", dir.path().display());
    match SharedServer::bind(
        &address,
        SharedServerConfig::default().with_max_connections(0),
    ) {
        Err(Error::Config {
            what: "max_connections",
            ..
        }) => {}
        other => panic!("expected a configuration error, got {other:?}"),
    }
    match SharedServer::bind("unix://relative.sock", SharedServerConfig::default()) {
        Err(Error::InvalidAddress { address, .. }) => assert_eq!(address, "unix://relative.sock"),
        other => panic!("expected an invalid address, got {other:?}"),
    }
    let long = format!("unix://{}/{}/w.sock", dir.path().display(), "x".repeat(120));
    match SharedServer::bind(&long, SharedServerConfig::default()) {
        Err(Error::Bind { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::InvalidInput)
        }
        other => panic!("expected a path too long, got {other:?}"),
    }
    assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
}
