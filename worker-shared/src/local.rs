//! Whether a worker is on this machine: an address a starter may start a daemon at, and a pid
//! a stopper may wait for.

use std::{
    net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket},
    os::fd::AsFd,
};

use worker_killswitch::Address;

use crate::{Error, PeerUids, address::Stream, sys};

/// Whether the worker at `address` is on this machine, so that a daemon may be started there
/// and its pid means something here: a Unix socket, or TCP on a host whose every address is a
/// loopback, unspecified or local one (an IPv4-mapped IPv6 address counts as its IPv4 one).
/// The one answer the library and the operators' programs share.
///
/// A host name is resolved by the system's resolver (`localhost`, this machine's name and any
/// name that resolves to its addresses are local); an address is local when a socket can be
/// bound to it, which asks the kernel rather than a list of interfaces.
///
/// ```
/// assert!(worker_shared::is_local("unix:///run/app/w.sock")?);
/// assert!(worker_shared::is_local("tcp://127.0.0.1:7000")?);
/// // TEST-NET-3 (RFC 5737): never assigned to anyone.
/// assert!(!worker_shared::is_local("tcp://203.0.113.7:7000")?);
/// # Ok::<(), worker_shared::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::InvalidAddress`] for an address that does not parse, [`Error::Connect`] when the
/// host name does not resolve.
pub fn is_local(address: &str) -> Result<bool, Error> {
    is_local_address(&crate::address::parse(address)?)
}

/// [`is_local`] for a parsed address.
pub(crate) fn is_local_address(address: &Address) -> Result<bool, Error> {
    if address.unix_path().is_some() {
        return Ok(true);
    }
    let addrs: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|source| Error::Connect {
            address: address.to_string(),
            source,
        })?
        .collect();
    Ok(!addrs.is_empty() && addrs.iter().all(|a| is_local_ip(a.ip())))
}

fn is_local_ip(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    ip.is_loopback() || ip.is_unspecified() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Checks, before anything is sent, that the process serving a Unix socket runs as a user in
/// `servers` (the kernel's `SO_PEERCRED`, recorded when the server listened):
/// [`PeerUids::Owner`] is this process's effective user or root. TCP has no such answer: its
/// servers are authenticated by the admin cookie alone.
pub(crate) fn check_server(
    stream: &Stream,
    address: &str,
    servers: &PeerUids,
) -> Result<(), Error> {
    let Stream::Unix(socket) = stream else {
        return Ok(());
    };
    let uid = sys::peer_cred(socket.as_fd())
        .map_err(|source| Error::Connect {
            address: address.to_owned(),
            source,
        })?
        .uid;
    let trusted = match servers {
        PeerUids::Owner => uid == sys::geteuid() || uid == 0,
        PeerUids::Any => true,
        PeerUids::Only(uids) => uids.contains(&uid),
    };
    if !trusted {
        return Err(Error::UntrustedServer {
            address: address.to_owned(),
            uid,
        });
    }
    Ok(())
}

/// Whether the process at the other end of `stream` is `pid` as this process names it: the
/// pid a hello announced is only waited for once confirmed, since a worker in another pid
/// namespace (a container behind a forwarded port) announces a number that names another
/// process here.
///
/// A Unix peer is confirmed by the kernel (`SO_PEERCRED`); a TCP peer by finding the server's
/// end of this very connection among `pid`'s descriptors (through `/proc`, which shows another
/// user's descriptors to root only).
pub(crate) fn peer_is(stream: &Stream, pid: u32) -> bool {
    match stream {
        Stream::Unix(s) => sys::peer_cred(s.as_fd()).is_ok_and(|cred| cred.pid as u32 == pid),
        Stream::Tcp(s) => match (s.peer_addr(), s.local_addr()) {
            (Ok(server), Ok(client)) => tcp_connection_held_by(pid, server, client),
            _ => false,
        },
    }
}

/// Whether `pid` holds the server's end of the TCP connection between `server` and `client`.
fn tcp_connection_held_by(pid: u32, server: SocketAddr, client: SocketAddr) -> bool {
    // The kernel's tables list a socket by its local and remote addresses; the server's end of
    // an IPv4 connection shows in the IPv6 table, mapped, when it listens on an IPv6 socket.
    let mut tables = Vec::new();
    if let (IpAddr::V4(s), IpAddr::V4(c)) = (server.ip(), client.ip()) {
        tables.push((
            "/proc/net/tcp",
            v4_key(s.octets(), server.port()),
            v4_key(c.octets(), client.port()),
        ));
    }
    let v6 = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    tables.push((
        "/proc/net/tcp6",
        v6_key(v6(server.ip()).octets(), server.port()),
        v6_key(v6(client.ip()).octets(), client.port()),
    ));
    for (table, local, remote) in tables {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:tm retrnsmt uid timeout inode
            if fields.len() > 9 && fields[1] == local && fields[2] == remote {
                return holds_socket(pid, fields[9]);
            }
        }
    }
    false
}

/// An IPv4 socket address as `/proc/net/tcp` prints it: the address's bytes as one native
/// 32-bit word, then the port, in uppercase hexadecimal.
fn v4_key(octets: [u8; 4], port: u16) -> String {
    format!("{:08X}:{port:04X}", u32::from_ne_bytes(octets))
}

/// An IPv6 socket address as `/proc/net/tcp6` prints it: four native 32-bit words.
fn v6_key(octets: [u8; 16], port: u16) -> String {
    let mut key = String::with_capacity(37);
    for word in octets.chunks_exact(4) {
        let word = u32::from_ne_bytes([word[0], word[1], word[2], word[3]]);
        key.push_str(&format!("{word:08X}"));
    }
    key + &format!(":{port:04X}")
}

/// Whether one of `pid`'s descriptors is the socket with inode `inode`.
fn holds_socket(pid: u32, inode: &str) -> bool {
    let target = format!("socket:[{inode}]");
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == target.as_str())
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener, TcpStream};

    use super::*;

    #[test]
    fn loopback_and_unix_addresses_are_local_and_others_are_not() {
        let cases = [
            ("unix:///run/x.sock", true),
            ("tcp://127.0.0.1:9", true),
            ("tcp://127.1.2.3:9", true),
            ("tcp://[::1]:9", true),
            ("tcp://[::ffff:127.0.0.1]:9", true),
            ("tcp://0.0.0.0:9", true),
            ("tcp://[::]:9", true),
            ("tcp://localhost:9", true),
            // TEST-NET-3 (RFC 5737): never assigned to anyone.
            ("tcp://203.0.113.7:9", false),
            ("tcp://[::ffff:203.0.113.7]:9", false),
            ("tcp://[2001:db8::1]:9", false),
        ];
        for (address, expected) in cases {
            assert_eq!(is_local(address).unwrap(), expected, "{address}");
        }
        // This machine's own name, when the resolver knows it.
        if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname")
            && let Ok(local) = is_local(&format!("tcp://{}:9", name.trim()))
        {
            assert!(local, "{name}");
        }
        // A name that does not resolve (`.invalid`, RFC 2606) and an address that does not
        // parse: errors, not answers.
        assert!(matches!(
            is_local("tcp://worker.invalid:9"),
            Err(Error::Connect { .. })
        ));
        assert!(matches!(
            is_local("udp://127.0.0.1:9"),
            Err(Error::InvalidAddress { .. })
        ));
    }

    #[test]
    fn a_tcp_peer_is_confirmed_by_the_socket_it_holds() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server_end, _) = listener.accept().unwrap();
        let stream = Stream::Tcp(client);
        assert!(peer_is(&stream, std::process::id()));
        assert!(!peer_is(&stream, 1));
    }
}
