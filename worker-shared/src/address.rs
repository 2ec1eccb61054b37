//! Shared-worker addresses and the streams they connect to.
//!
//! Interim: an address is validated and normalised by the kill switch's
//! [`canonical_address`](worker_killswitch::canonical_address), so a worker has one spelling
//! everywhere, and its canonical text is then split here. Everything that knows the address
//! syntax is in this file, to be replaced by the kill switch's typed address once it lands.

use std::{
    io::{self, Read, Write},
    net::{TcpStream, ToSocketAddrs},
    os::unix::net::UnixStream,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::Error;

/// Where a shared worker listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// A Unix socket file, by absolute path.
    Unix(PathBuf),
    /// A TCP host (a name, an IPv4 address, or an IPv6 address without brackets) and port.
    Tcp { host: String, port: u16 },
}

/// A parsed address: its canonical text (for errors and the kill switch) and its endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Address {
    pub(crate) canonical: String,
    pub(crate) endpoint: Endpoint,
}

impl Address {
    pub(crate) fn parse(address: &str) -> Result<Self, Error> {
        let canonical = worker_killswitch::canonical_address(address).map_err(|source| {
            Error::InvalidAddress {
                address: address.to_owned(),
                source,
            }
        })?;
        // The canonical form is `unix:///path`, `tcp://name:port` or `tcp://[v6]:port`.
        let endpoint = if let Some(path) = canonical.strip_prefix("unix://") {
            Endpoint::Unix(PathBuf::from(path))
        } else {
            let authority = canonical
                .strip_prefix("tcp://")
                .expect("a canonical address is unix:// or tcp://");
            let (host, port) = authority
                .rsplit_once(':')
                .expect("a canonical tcp address has a port");
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            Endpoint::Tcp {
                host: host.to_owned(),
                port: port.parse().expect("a canonical port is a u16"),
            }
        };
        Ok(Address {
            canonical,
            endpoint,
        })
    }

    /// Connects, trying each address a host name resolves to until one answers or the deadline
    /// passes.
    pub(crate) fn connect(&self, deadline: Option<Instant>) -> io::Result<Stream> {
        match &self.endpoint {
            // A local connect does not wait on the network, so it needs no timeout.
            Endpoint::Unix(path) => UnixStream::connect(path).map(Stream::Unix),
            Endpoint::Tcp { host, port } => {
                let mut last = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    let attempt = match worker_core::time_left(deadline) {
                        None => TcpStream::connect(addr),
                        Some(left) if left.is_zero() => break,
                        Some(left) => TcpStream::connect_timeout(&addr, left),
                    };
                    match attempt {
                        Ok(stream) => {
                            // One frame is one write; the replies wait on no delayed ack.
                            stream.set_nodelay(true)?;
                            return Ok(Stream::Tcp(stream));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::TimedOut, "no address answered in time")
                }))
            }
        }
    }
}

/// A connected stream socket of either family.
#[derive(Debug)]
pub(crate) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    /// A second handle on the same socket, for the writing half of a channel.
    pub(crate) fn try_clone(&self) -> io::Result<Stream> {
        match self {
            Stream::Unix(s) => s.try_clone().map(Stream::Unix),
            Stream::Tcp(s) => s.try_clone().map(Stream::Tcp),
        }
    }

    /// Bounds each later read (`None`: no bound). Shared by every handle on the socket.
    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(timeout),
            Stream::Tcp(s) => s.set_read_timeout(timeout),
        }
    }

    /// Bounds each later write (`None`: no bound). Shared by every handle on the socket.
    pub(crate) fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(timeout),
            Stream::Tcp(s) => s.set_write_timeout(timeout),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_endpoints() {
        let unix = Address::parse("unix:///run//app/./w.sock").unwrap();
        assert_eq!(unix.canonical, "unix:///run/app/w.sock");
        assert_eq!(unix.endpoint, Endpoint::Unix("/run/app/w.sock".into()));
        let v4 = Address::parse("TCP://127.0.0.1:0080").unwrap();
        assert_eq!(v4.canonical, "tcp://127.0.0.1:80");
        assert_eq!(
            v4.endpoint,
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 80
            }
        );
        let v6 = Address::parse("tcp://[0:0::1]:9000").unwrap();
        assert_eq!(v6.canonical, "tcp://[::1]:9000");
        assert_eq!(
            v6.endpoint,
            Endpoint::Tcp {
                host: "::1".into(),
                port: 9000
            }
        );
        let name = Address::parse("tcp://LocalHost:7").unwrap();
        assert_eq!(
            name.endpoint,
            Endpoint::Tcp {
                host: "localhost".into(),
                port: 7
            }
        );
    }

    #[test]
    fn bad_addresses_are_typed_errors_naming_the_address() {
        for bad in [
            "unix://relative.sock",
            "http://x:1",
            "tcp://::1:80",
            "tcp://h:0",
            "",
        ] {
            match Address::parse(bad) {
                Err(Error::InvalidAddress { address, .. }) => assert_eq!(address, bad),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
