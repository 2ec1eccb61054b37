//! Connecting to a shared worker's address, and the stream that gives.
//!
//! Addresses are the kill switch's typed [`Address`]: parsed once, always canonical, so a
//! worker has one spelling everywhere (in errors, in the kill switch, in the server's logs).

use std::{
    io::{self, Read, Write},
    net::{TcpStream, ToSocketAddrs},
    os::{
        fd::{AsFd, BorrowedFd},
        unix::net::UnixStream,
    },
    time::Instant,
};

use worker_killswitch::Address;

use crate::Error;

/// Parses an address, naming it in the error as it was given.
pub(crate) fn parse(address: &str) -> Result<Address, Error> {
    Address::parse(address).map_err(|source| Error::InvalidAddress {
        address: address.to_owned(),
        source,
    })
}

/// Connects, trying each address a host name resolves to until one answers or the deadline
/// passes.
pub(crate) fn connect(address: &Address, deadline: Option<Instant>) -> io::Result<Stream> {
    if let Some(path) = address.unix_path() {
        // A local connect does not wait on the network, so it needs no timeout.
        return UnixStream::connect(path).map(Stream::Unix);
    }
    let mut last = None;
    for addr in address.to_socket_addrs()? {
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
    Err(last
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "no address answered in time")))
}

/// Connects without blocking the runtime's thread, trying each address a host name resolves to
/// until one answers; the stream comes back non-blocking. The caller bounds the time.
#[cfg(feature = "tokio")]
pub(crate) async fn connect_async(address: &Address) -> io::Result<Stream> {
    if let Some(path) = address.unix_path() {
        let stream = tokio::net::UnixStream::connect(path).await?;
        return stream.into_std().map(Stream::Unix);
    }
    let (Some(host), Some(port)) = (address.tcp_host(), address.tcp_port()) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => {
                // One frame is one write; the replies wait on no delayed ack.
                stream.set_nodelay(true)?;
                return stream.into_std().map(Stream::Tcp);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address to connect to")))
}

/// A connected stream socket of either family.
#[derive(Debug)]
pub(crate) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    /// Makes reads and writes return `WouldBlock` rather than wait (`true`), or wait again.
    pub(crate) fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(nonblocking),
            Stream::Tcp(s) => s.set_nonblocking(nonblocking),
        }
    }

    /// Writes without ever raising SIGPIPE (std's TCP writes already pass `MSG_NOSIGNAL`; its
    /// Unix socket writes do not): a peer that went away is `EPIPE`, whatever the program did
    /// with SIGPIPE's disposition.
    fn write_nosignal(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => worker_core::os::send_nosignal(s.as_fd(), buf),
            Stream::Tcp(s) => (&*s).write(buf),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
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
        self.write_nosignal(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One stream shared by a channel's reading and writing sides, without a second descriptor:
/// both halves read and write through the same socket.
///
/// The socket itself blocks, and every call on it says whether it may wait: reads and writes
/// pass `MSG_DONTWAIT` (they take what the socket has or has room for, and say `WouldBlock`
/// otherwise), except the one read [`wait_in_next_read`](Half::wait_in_next_read) asks for,
/// which waits in the kernel for the first bytes, as a raw blocking `recv` does: a receive
/// without a deadline costs no `poll` before its read. Writes never raise SIGPIPE.
#[derive(Debug)]
pub(crate) struct Half {
    pub(crate) stream: std::sync::Arc<Stream>,
    wait_once: bool,
}

impl Half {
    pub(crate) fn new(stream: std::sync::Arc<Stream>) -> Self {
        Half {
            stream,
            wait_once: false,
        }
    }

    /// The next read waits for bytes (or the end of the stream) instead of saying
    /// `WouldBlock`; the reads after it do not wait again.
    pub(crate) fn wait_in_next_read(&mut self, wait: bool) {
        self.wait_once = wait;
    }
}

impl Clone for Half {
    fn clone(&self) -> Self {
        Half::new(std::sync::Arc::clone(&self.stream))
    }
}

impl std::ops::Deref for Half {
    type Target = Stream;

    fn deref(&self) -> &Stream {
        &self.stream
    }
}

impl Read for Half {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use rustix::net::RecvFlags;
        let flags = if std::mem::take(&mut self.wait_once) {
            RecvFlags::empty()
        } else {
            RecvFlags::DONTWAIT
        };
        let (n, _) = rustix::net::recv(self.stream.as_fd(), buf, flags)?;
        Ok(n)
    }
}

impl Write for Half {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use rustix::net::SendFlags;
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        Ok(rustix::net::send(self.stream.as_fd(), buf, flags)?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_canonical() {
        assert_eq!(
            parse("unix:///run//app/./w.sock").unwrap().as_str(),
            "unix:///run/app/w.sock"
        );
        assert_eq!(
            parse("TCP://127.0.0.1:0080").unwrap().as_str(),
            "tcp://127.0.0.1:80"
        );
        assert_eq!(
            parse("tcp://[0:0::1]:9000").unwrap().as_str(),
            "tcp://[::1]:9000"
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
            match parse(bad) {
                Err(Error::InvalidAddress { address, .. }) => assert_eq!(address, bad),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
