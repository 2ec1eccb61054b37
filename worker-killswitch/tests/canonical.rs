//! Addresses: their canonical form, their parts, and the sockets they name.

use std::{
    collections::HashSet,
    io::{self, Read, Write},
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs},
    os::unix::net::{UnixListener, UnixStream},
    path::Path,
};

use worker_killswitch::{Address, Error};

/// The canonical form of `given`, checking that every way of asking for it agrees.
fn canonical_address(given: &str) -> Result<String, Error> {
    let canonical = worker_killswitch::canonical_address(given);
    let parsed = Address::parse(given);
    let from_str = given.parse::<Address>();
    match (&canonical, &parsed, &from_str) {
        (Ok(canonical), Ok(parsed), Ok(from_str)) => {
            assert_eq!(parsed.as_str(), canonical);
            assert_eq!(parsed.to_string(), *canonical);
            assert_eq!(format!("{parsed:?}"), format!("Address({canonical:?})"));
            assert_eq!(from_str, parsed);
        }
        (Err(canonical), Err(parsed), Err(from_str)) => {
            assert_eq!(canonical.to_string(), parsed.to_string());
            assert_eq!(canonical.to_string(), from_str.to_string());
        }
        _ => panic!("{given:?}: {canonical:?}, {parsed:?}, {from_str:?}"),
    }
    canonical
}

#[test]
fn unix_paths_are_normalised_lexically() {
    for (given, canonical) in [
        ("unix:///tmp/w.sock", "unix:///tmp/w.sock"),
        ("unix:///a//b/../c.sock", "unix:///a/c.sock"),
        ("unix:///a/c.sock", "unix:///a/c.sock"),
        ("unix:////a///c.sock", "unix:///a/c.sock"),
        ("unix:///a/./b/./c.sock", "unix:///a/b/c.sock"),
        ("unix:///a/b/c/../../d.sock", "unix:///a/d.sock"),
        ("unix:///../../a.sock", "unix:///a.sock"),
        ("unix:///a/b.sock/", "unix:///a/b.sock"),
        ("UNIX:///Run/W.sock", "unix:///Run/W.sock"),
        ("unix:///a/%2e%2e/b.sock", "unix:///a/%2e%2e/b.sock"),
        ("unix:///a/...sock", "unix:///a/...sock"),
    ] {
        assert_eq!(canonical_address(given).unwrap(), canonical, "{given}");
    }
}

#[test]
fn tcp_hosts_and_ports_are_normalised_without_resolution() {
    for (given, canonical) in [
        ("tcp://localhost:80", "tcp://localhost:80"),
        ("tcp://LOCALHOST:080", "tcp://localhost:80"),
        ("tcp://LocalHost.:8080", "tcp://localhost:8080"),
        ("TCP://Example.COM:0000443", "tcp://example.com:443"),
        ("tcp://127.0.0.1:9000", "tcp://127.0.0.1:9000"),
        (
            "tcp://worker_1.internal:65535",
            "tcp://worker_1.internal:65535",
        ),
        ("tcp://[::1]:9000", "tcp://[::1]:9000"),
        ("tcp://[0:0:0:0:0:0:0:1]:9000", "tcp://[::1]:9000"),
        ("tcp://[2001:DB8::A]:09000", "tcp://[2001:db8::a]:9000"),
        ("tcp://[::ffff:127.0.0.1]:1", "tcp://[::ffff:127.0.0.1]:1"),
    ] {
        assert_eq!(canonical_address(given).unwrap(), canonical, "{given}");
    }
    // No name resolution: these are different workers.
    let names: Vec<String> = ["tcp://localhost:80", "tcp://127.0.0.1:80", "tcp://[::1]:80"]
        .iter()
        .map(|a| canonical_address(a).unwrap())
        .collect();
    assert_ne!(names[0], names[1]);
    assert_ne!(names[0], names[2]);
    assert_ne!(names[1], names[2]);
}

#[test]
fn canonical_forms_are_fixed_points() {
    for given in [
        "unix:///a//b/../c.sock",
        "tcp://LOCALHOST.:080",
        "tcp://[0::1]:1",
    ] {
        let once = canonical_address(given).unwrap();
        assert_eq!(canonical_address(&once).unwrap(), once);
    }
}

#[test]
fn invalid_addresses_are_refused() {
    for given in [
        "",
        "/tmp/w.sock",
        "w.sock",
        "udp://localhost:80",
        "tls://localhost:443",
        "http://localhost:80",
        "unix://",
        "unix://relative/w.sock",
        "unix://./w.sock",
        "unix:///",
        "unix:///a/..",
        "unix:///a\0b.sock",
        "tcp://",
        "tcp://localhost",
        "tcp://localhost:",
        "tcp://:80",
        "tcp://.:80",
        "tcp://localhost:0",
        "tcp://localhost:000",
        "tcp://localhost:65536",
        "tcp://localhost:99999999999999999999",
        "tcp://localhost:+80",
        "tcp://localhost:8 0",
        "tcp://localhost:80/path",
        "tcp://user@localhost:80",
        "tcp://a..b:80",
        "tcp://.a:80",
        "tcp://héte:80",
        "tcp://::1:80",
        "tcp://[::1]",
        "tcp://[::1:80",
        "tcp://[::1]80",
        "tcp://[fe80::1%eth0]:80",
        "tcp://[127.0.0.1]:80",
    ] {
        match canonical_address(given) {
            Err(Error::InvalidAddress { address, reason }) => {
                assert_eq!(address, given);
                assert!(!reason.is_empty());
            }
            other => panic!("{given:?} gave {other:?}"),
        }
    }
}

#[test]
fn an_address_gives_its_parts() {
    let unix = Address::parse("unix:///run//app/../w.sock").unwrap();
    assert_eq!(unix.unix_path(), Some(Path::new("/run/w.sock")));
    assert_eq!((unix.tcp_host(), unix.tcp_port()), (None, None));

    for (given, host, port) in [
        ("tcp://LocalHost.:080", "localhost", 80),
        ("tcp://127.0.0.1:9000", "127.0.0.1", 9000),
        ("tcp://worker_1.internal:65535", "worker_1.internal", 65535),
        ("tcp://[0:0::1]:1", "::1", 1),
        ("tcp://[2001:DB8::A]:09000", "2001:db8::a", 9000),
        ("tcp://[::ffff:127.0.0.1]:1", "::ffff:127.0.0.1", 1),
    ] {
        let tcp = Address::parse(given).unwrap();
        assert_eq!(tcp.tcp_host(), Some(host), "{given}");
        assert_eq!(tcp.tcp_port(), Some(port), "{given}");
        assert_eq!(tcp.unix_path(), None, "{given}");
    }
}

#[test]
fn spellings_of_one_address_are_equal_and_sort_as_the_file_does() {
    let spellings = [
        "unix:///a//b/../c.sock",
        "UNIX:///a/c.sock/",
        "unix:///a/./c.sock",
    ];
    let set: HashSet<Address> = spellings.iter().map(|a| a.parse().unwrap()).collect();
    assert_eq!(set.len(), 1);
    assert_ne!(
        Address::parse("tcp://localhost:80").unwrap(),
        Address::parse("tcp://127.0.0.1:80").unwrap()
    );

    let given = [
        "unix:///b.sock",
        "tcp://[::1]:80",
        "unix:///a.sock",
        "tcp://localhost:80",
        "tcp://127.0.0.1:80",
    ];
    let mut addresses: Vec<Address> = given.iter().map(|a| a.parse().unwrap()).collect();
    addresses.sort();
    let mut strings: Vec<String> = given.iter().map(|a| a.to_string()).collect();
    strings.sort();
    assert_eq!(
        addresses.iter().map(Address::to_string).collect::<Vec<_>>(),
        strings
    );
}

#[test]
fn a_tcp_address_resolves_to_the_socket_it_names() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let address = Address::parse(&format!("TCP://127.0.0.1:0{port}")).unwrap();
    let mut client = TcpStream::connect(&address).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"ping").unwrap();
    let mut received = [0; 4];
    server.read_exact(&mut received).unwrap();
    assert_eq!(&received, b"ping");

    // An IPv6 literal is taken as it is, without a lookup.
    let v6 = Address::parse("tcp://[0::1]:9000").unwrap();
    assert_eq!(
        v6.to_socket_addrs().unwrap().collect::<Vec<_>>(),
        [SocketAddr::from((Ipv6Addr::LOCALHOST, 9000))]
    );
    // A name is looked up.
    let resolved: Vec<SocketAddr> = Address::parse("tcp://LOCALHOST:9000")
        .unwrap()
        .to_socket_addrs()
        .unwrap()
        .collect();
    assert!(!resolved.is_empty());
    assert!(
        resolved
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 9000),
        "{resolved:?}"
    );
}

#[test]
fn a_unix_address_names_its_socket_file_and_no_ip_address() {
    let dir = tempfile::tempdir().unwrap();
    let address = Address::parse(&format!("unix://{}/./w.sock", dir.path().display())).unwrap();
    let path = address.unix_path().unwrap();
    assert_eq!(path, dir.path().join("w.sock"));
    let listener = UnixListener::bind(path).unwrap();
    let mut client = UnixStream::connect(address.unix_path().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"ping").unwrap();
    let mut received = [0; 4];
    server.read_exact(&mut received).unwrap();
    assert_eq!(&received, b"ping");

    let error = address.to_socket_addrs().unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(
        TcpStream::connect(&address).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
}
