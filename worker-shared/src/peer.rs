//! Who is at the other end of a server's connection.

use std::{fmt, net::SocketAddr, str::FromStr};

use serde::Serialize;
use worker_core::Connection;

/// The client of one connection, as the kernel knows it: for a Unix socket the process that
/// connected (from `SO_PEERCRED`), for TCP its address.
///
/// It is also the connection's [`peer_name`](Connection::peer_name), in the form its `Display`
/// writes: `unix:pid=1234,uid=1000,gid=1000` (`pid=?` when the peer is in another pid
/// namespace), or `tcp://192.0.2.7:50312` and `tcp://[2001:db8::7]:50312`.
///
/// ```
/// use worker_shared::Peer;
///
/// let peer: Peer = "unix:pid=1234,uid=1000,gid=100".parse()?;
/// assert_eq!(peer, Peer::Unix { pid: Some(1234), uid: 1000, gid: 100 });
/// assert_eq!(peer.to_string(), "unix:pid=1234,uid=1000,gid=100");
/// let tcp: Peer = "tcp://[::1]:5000".parse()?;
/// assert_eq!(tcp, Peer::Tcp("[::1]:5000".parse()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Peer {
    /// A process on this machine, connected to a Unix socket.
    Unix {
        /// Its process id, unless it is in another pid namespace.
        pid: Option<u32>,
        /// The user it ran as when it connected.
        uid: u32,
        /// The group it ran as when it connected.
        gid: u32,
    },
    /// A TCP client.
    Tcp(SocketAddr),
}

impl Peer {
    /// The peer of a server's connection, from its peer name; `None` for a connection that a
    /// shared-worker server did not make (a dedicated worker's `master`).
    pub fn of<R: Serialize>(connection: &Connection<R>) -> Option<Peer> {
        connection.peer_name().parse().ok()
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Unix { pid, uid, gid } => {
                f.write_str("unix:pid=")?;
                match pid {
                    Some(pid) => write!(f, "{pid}")?,
                    None => f.write_str("?")?,
                }
                write!(f, ",uid={uid},gid={gid}")
            }
            Peer::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

/// A text that is not a peer name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsePeerError(String);

impl fmt::Display for ParsePeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a shared-worker peer name: {:?}", self.0)
    }
}

impl std::error::Error for ParsePeerError {}

impl FromStr for Peer {
    type Err = ParsePeerError;

    fn from_str(text: &str) -> Result<Peer, ParsePeerError> {
        let bad = || ParsePeerError(text.to_owned());
        if let Some(addr) = text.strip_prefix("tcp://") {
            return addr.parse().map(Peer::Tcp).map_err(|_| bad());
        }
        let fields = text.strip_prefix("unix:").ok_or_else(bad)?;
        let mut parts = fields.split(',');
        let mut field = |name: &str| {
            parts
                .next()
                .and_then(|part| part.strip_prefix(name))
                .and_then(|part| part.strip_prefix('='))
                .ok_or_else(bad)
        };
        let pid = match field("pid")? {
            "?" => None,
            pid => Some(pid.parse().map_err(|_| bad())?),
        };
        let uid = field("uid")?.parse().map_err(|_| bad())?;
        let gid = field("gid")?.parse().map_err(|_| bad())?;
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Peer::Unix { pid, uid, gid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_names_round_trip() {
        for peer in [
            Peer::Unix {
                pid: Some(1),
                uid: 0,
                gid: 0,
            },
            Peer::Unix {
                pid: None,
                uid: 65534,
                gid: 65534,
            },
            Peer::Tcp("127.0.0.1:80".parse().unwrap()),
            Peer::Tcp("[2001:db8::1]:65535".parse().unwrap()),
        ] {
            assert_eq!(peer.to_string().parse::<Peer>().unwrap(), peer);
        }
    }

    #[test]
    fn other_names_are_not_peers() {
        for text in [
            "master",
            "unix:pid=1,uid=2",
            "unix:pid=1,uid=2,gid=3,x=4",
            "unix:uid=1,pid=2,gid=3",
            "tcp://nope",
            "",
        ] {
            assert!(text.parse::<Peer>().is_err(), "{text}");
        }
    }
}
