//! The canonical form of addresses.

use worker_killswitch::{Error, canonical_address};

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
