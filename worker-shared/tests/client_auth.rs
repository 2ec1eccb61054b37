//! The data plane behind the client cookie: on a TCP address that is not loopback (by
//! default) or wherever it is asked for, a connection proves it knows the client cookie (or
//! the admin cookie) before the worker takes a data message or a query from it.

use std::net::TcpListener;

use worker_bootstrap::BootstrapProfile;
use worker_shared::{
    AdminCookie, ClientAuth, Error, SharedServer, SharedServerConfig, SharedWorker,
    connect_or_start,
};

use crate::{
    support::{COOKIE, Endpoint, Relay, contains},
    workers::{Counts, Embedded, Greeter, Log},
};

const CLIENT_COOKIE: &[u8] = b"the-CLIENT-cookie-5c1e";

fn admin_cookie() -> AdminCookie {
    AdminCookie::new(COOKIE).unwrap()
}

fn client_cookie() -> AdminCookie {
    AdminCookie::new(CLIENT_COOKIE).unwrap()
}

fn cookies() -> SharedServerConfig {
    SharedServerConfig::default()
        .with_cookie(admin_cookie())
        .with_client_cookie(client_cookie())
}

/// Where a server listens, and with which setting: each requires authentication.
#[derive(Clone, Copy, Debug)]
enum Place {
    /// Every IPv4 address (not loopback), by default.
    AnyV4,
    /// Every IPv6 address (not loopback), by default.
    AnyV6,
    /// Loopback, asked for.
    LoopbackAlways,
    /// A Unix socket, asked for.
    UnixAlways,
}

const PLACES: [Place; 4] = [
    Place::AnyV4,
    Place::AnyV6,
    Place::LoopbackAlways,
    Place::UnixAlways,
];

/// Serves a greeter at `place` with `config`.
fn serve(place: Place, config: SharedServerConfig) -> Result<Embedded, Error> {
    let dir = tempfile::tempdir().unwrap();
    let tcp =
        |at: &str| SharedServer::from_tcp_listener(TcpListener::bind(at).unwrap(), config.clone());
    let server = match place {
        Place::AnyV4 => tcp("0.0.0.0:0")?,
        Place::AnyV6 => tcp("[::]:0")?,
        Place::LoopbackAlways => SharedServer::from_tcp_listener(
            TcpListener::bind("127.0.0.1:0").unwrap(),
            config.with_client_auth(ClientAuth::Always),
        )?,
        Place::UnixAlways => SharedServer::bind(
            &format!("unix://{}/run/worker.sock", dir.path().display()),
            config.with_client_auth(ClientAuth::Always),
        )?,
    };
    assert!(server.requires_client_auth(), "{place:?}");
    let (log, sink) = Log::new();
    let counts = std::sync::Arc::new(Counts::default());
    let theirs = std::sync::Arc::clone(&counts);
    let address = server.address().to_owned();
    let server = server
        .with_log(sink)
        .spawn(move || Ok(Greeter::new(theirs)))
        .unwrap();
    Ok(Embedded {
        server,
        address,
        counts,
        log,
        dir,
    })
}

fn greeted(worker: &mut SharedWorker, nth: &str) {
    worker.send_message("world").unwrap();
    assert_eq!(
        worker.receive_message::<String>().unwrap(),
        format!("Hello world ! You're my {nth} client.")
    );
}

/// Expects the refusal of an unauthenticated peer, then the end of the stream.
fn refused_then_closed(result: Result<String, Error>, worker: &mut SharedWorker) {
    match result {
        Err(Error::AuthenticationRequired { pid, .. }) => assert_eq!(pid, std::process::id()),
        other => panic!("expected AuthenticationRequired, got {other:?}"),
    }
    match worker.receive_message::<String>() {
        Err(Error::Closed { .. }) => {}
        other => panic!("expected the end of the stream, got {other:?}"),
    }
}

#[test]
fn an_unauthenticated_peer_can_send_no_data_message_and_ask_nothing() {
    for place in PLACES {
        let served = serve(place, cookies()).unwrap();
        // A data message: refused with the typed error, and the worker never saw it.
        let mut stranger = SharedWorker::connect(&served.address).unwrap();
        assert!(stranger.requires_auth(), "{place:?}");
        stranger.send_message("world").unwrap();
        let result = stranger.receive_message::<String>();
        refused_then_closed(result, &mut stranger);
        // Several at once, pipelined: none gets through, and the refusal is read, not lost to
        // a reset.
        let mut stranger = SharedWorker::connect(&served.address).unwrap();
        for _ in 0..10 {
            stranger.send_message("world").unwrap();
        }
        let result = stranger.receive_message::<String>();
        refused_then_closed(result, &mut stranger);
        // A query.
        let mut stranger = SharedWorker::connect(&served.address).unwrap();
        let result = stranger.query().map(|_| String::new());
        refused_then_closed(result, &mut stranger);
        // The worker never met them: no on_connect, no on_disconnect.
        assert_eq!(Counts::get(&served.counts.connects), 0, "{place:?}");
        assert_eq!(Counts::get(&served.counts.disconnects), 0, "{place:?}");
        // The first authenticated client is the worker's first client, and its first
        // connection.
        let mut client = SharedWorker::connect_with_cookie(&served.address, &client_cookie())
            .unwrap_or_else(|e| panic!("{place:?}: {e:?}"));
        greeted(&mut client, "1st");
        assert_eq!(Counts::get(&served.counts.connects), 1, "{place:?}");
        let line = served.log.wait_for("refused a data message from");
        assert!(!line.contains("CLIENT"), "{line}");
    }
}

#[test]
fn a_peer_that_does_not_authenticate_within_the_handshake_deadline_is_closed() {
    // Scaled: a loaded machine must not make the honest client late.
    let deadline = crate::support::timeout(0.5);
    for place in PLACES {
        let served = serve(place, cookies().with_handshake_timeout(Some(deadline))).unwrap();
        // It talks (a wrong cookie keeps its connection open), but never authenticates.
        // Before the connect: the server's deadline runs from its accept, which comes before
        // the hello reaches this side.
        let connected = std::time::Instant::now();
        let mut stranger = SharedWorker::connect(&served.address).unwrap();
        match stranger.stop(&AdminCookie::new("a guess").unwrap()) {
            Err(Error::Unauthorized { .. }) => {}
            other => panic!("{place:?}: expected Unauthorized, got {other:?}"),
        }
        let result = stranger.receive_message::<String>();
        refused_then_closed(result, &mut stranger);
        assert!(connected.elapsed() >= deadline, "{place:?}");
        // One that authenticated in time stays (checked once: it takes two deadlines).
        if let Place::AnyV4 = place {
            let mut client =
                SharedWorker::connect_with_cookie(&served.address, &client_cookie()).unwrap();
            match client.receive_message_timeout::<String>(2 * deadline) {
                Err(Error::Timeout { .. }) => {}
                other => panic!("{place:?}: expected the client kept, got {other:?}"),
            }
            greeted(&mut client, "1st");
        }
    }
}

#[test]
fn the_client_cookie_opens_the_data_plane_and_only_the_admin_cookie_stops() {
    for place in PLACES {
        let served = serve(place, cookies()).unwrap();
        let mut client = SharedWorker::connect_with_cookie(&served.address, &client_cookie())
            .unwrap_or_else(|e| panic!("{place:?}: {e:?}"));
        greeted(&mut client, "1st");
        let status = client.query().unwrap();
        assert!(!status.privileged, "{place:?}");
        // The client cookie is no admin cookie.
        match client.stop(&client_cookie()) {
            Err(Error::Unauthorized { .. }) => {}
            other => panic!("{place:?}: expected the stop refused, got {other:?}"),
        }
        // The admin cookie opens the data plane too.
        let mut admin =
            SharedWorker::connect_with_cookie(&served.address, &admin_cookie()).unwrap();
        greeted(&mut admin, "2nd");
        assert!(admin.query_privileged(&admin_cookie()).unwrap().privileged);
        // A wrong cookie opens nothing.
        match SharedWorker::connect_with_cookie(
            &served.address,
            &AdminCookie::new("a guess").unwrap(),
        ) {
            Err(Error::Unauthorized { .. }) => {}
            other => panic!("{place:?}: expected Unauthorized, got {other:?}"),
        }
        admin.stop(&admin_cookie()).unwrap();
        served.server.join().unwrap();
    }
}

#[test]
fn a_server_with_only_an_admin_cookie_takes_it_for_data_and_one_without_cookies_cannot_require_auth()
 {
    let only_admin = SharedServerConfig::default().with_cookie(admin_cookie());
    let served = serve(Place::AnyV4, only_admin).unwrap();
    match SharedWorker::connect_with_cookie(&served.address, &client_cookie()) {
        Err(Error::Unauthorized { .. }) => {}
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    let mut admin = SharedWorker::connect_with_cookie(&served.address, &admin_cookie()).unwrap();
    greeted(&mut admin, "1st");
    for place in PLACES {
        match serve(place, SharedServerConfig::default()) {
            Err(Error::Config { what, .. }) => assert_eq!(what, "client_auth", "{place:?}"),
            Err(other) => panic!("{place:?}: expected a configuration error, got {other:?}"),
            Ok(_) => panic!("{place:?}: a server nobody could use was bound"),
        }
    }
}

#[test]
fn loopback_and_unix_sockets_stay_open_by_default_and_anywhere_on_request() {
    let open = [
        SharedServer::from_tcp_listener(TcpListener::bind("127.0.0.1:0").unwrap(), cookies()),
        SharedServer::from_tcp_listener(TcpListener::bind("[::1]:0").unwrap(), cookies()),
        SharedServer::from_tcp_listener(
            TcpListener::bind("0.0.0.0:0").unwrap(),
            SharedServerConfig::default().with_client_auth(ClientAuth::Never),
        ),
    ];
    for server in open {
        let server = server.unwrap();
        assert!(!server.requires_client_auth());
        let address = server.address().to_owned();
        let running = server
            .spawn(|| Ok(Greeter::new(Default::default())))
            .unwrap();
        let mut client = SharedWorker::connect(&address).unwrap();
        assert!(!client.requires_auth());
        greeted(&mut client, "1st");
        running.stop();
        running.join().unwrap();
    }
}

#[test]
fn connect_or_start_authenticates_with_its_configurations_cookie() {
    let served = serve(Place::AnyV4, cookies()).unwrap();
    let profile = BootstrapProfile::new();
    // (the starter's configuration, what it gets)
    let cases: [(SharedServerConfig, bool); 4] = [
        (
            SharedServerConfig::default().with_client_cookie(client_cookie()),
            true,
        ),
        (
            SharedServerConfig::default().with_cookie(admin_cookie()),
            true,
        ),
        (cookies(), true),
        (SharedServerConfig::default(), false),
    ];
    let mut nth = 0;
    for (config, gets_in) in cases {
        match connect_or_start(&profile, &served.address, "greeter", &config) {
            Ok(mut worker) if gets_in => {
                nth += 1;
                greeted(&mut worker, &crate::workers::ordinal(nth));
            }
            Err(Error::AuthenticationRequired { .. }) if !gets_in => {}
            other => panic!("{config:?}: got {other:?}"),
        }
    }
}

#[test]
fn the_client_cookie_never_crosses_the_wire() {
    let served = serve(Place::LoopbackAlways, cookies()).unwrap();
    let target = Endpoint::Tcp(served.address.trim_start_matches("tcp://").parse().unwrap());
    let relay = Relay::start(target);
    let mut client = SharedWorker::connect_with_cookie(&relay.address, &client_cookie()).unwrap();
    greeted(&mut client, "1st");
    drop(client);
    assert!(!contains(&relay.all_bytes(), CLIENT_COOKIE));
    assert!(
        contains(&relay.all_bytes(), b"client"),
        "the role is on the wire"
    );
}

#[cfg(feature = "tokio")]
#[tokio::test]
async fn the_async_client_gives_its_cookie_on_connect() {
    let served = serve(Place::AnyV6, cookies()).unwrap();
    let mut stranger = worker_shared::AsyncSharedWorker::connect(&served.address)
        .await
        .unwrap();
    stranger.send_message("world").await.unwrap();
    match stranger.receive_message::<String>().await {
        Err(Error::AuthenticationRequired { .. }) => {}
        other => panic!("expected AuthenticationRequired, got {other:?}"),
    }
    let mut client =
        worker_shared::AsyncSharedWorker::connect_with_cookie(&served.address, &client_cookie())
            .await
            .unwrap();
    client.send_message("world").await.unwrap();
    assert_eq!(
        client.receive_message::<String>().await.unwrap(),
        "Hello world ! You're my 1st client."
    );
}
