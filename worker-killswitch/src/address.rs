use std::{
    cmp::Ordering,
    fmt,
    hash::{Hash, Hasher},
    io,
    net::{Ipv6Addr, SocketAddr, ToSocketAddrs},
    ops::Range,
    path::Path,
    str::FromStr,
    vec,
};

use crate::Error;

const UNIX: &str = "unix://";
const TCP: &str = "tcp://";

/// The address of a shared worker, always in canonical form: `unix:///absolute/path` or
/// `tcp://host:port`.
///
/// An `Address` can only be made by parsing, so every value is canonical: two values are equal
/// exactly when the kill switch treats them as the same worker, and [`Display`](fmt::Display)
/// (or [`as_str`](Self::as_str)) writes the form the kill switch stores.
/// See the [crate documentation](crate#addresses) for the normalisation rules.
///
/// # Examples
///
/// ```
/// use std::path::Path;
/// use worker_killswitch::Address;
///
/// let unix: Address = "UNIX:///run//app/./w.sock".parse()?;
/// assert_eq!(unix.to_string(), "unix:///run/app/w.sock");
/// assert_eq!(unix.unix_path(), Some(Path::new("/run/app/w.sock")));
/// assert_eq!(unix.tcp_port(), None);
///
/// let tcp = Address::parse("tcp://[0:0::1]:09000")?;
/// assert_eq!(tcp.as_str(), "tcp://[::1]:9000");
/// // The host comes without brackets, so `(host, port)` is what `std::net` expects.
/// assert_eq!((tcp.tcp_host(), tcp.tcp_port()), (Some("::1"), Some(9000)));
/// # Ok::<(), worker_killswitch::Error>(())
/// ```
#[derive(Clone)]
pub struct Address {
    /// Compared, hashed and ordered alone, so that addresses sort as the kill switch file
    /// lists them.
    canonical: String,
    /// Where the parts are in `canonical`; a function of it, so it adds nothing to `Eq`.
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    /// The path is `canonical[UNIX.len()..]`.
    Unix,
    /// The host is `canonical[host]`, without the brackets of an IPv6 literal.
    Tcp { host: Range<usize>, port: u16 },
}

impl Address {
    /// Parses a shared worker address and brings it to its canonical form.
    ///
    /// The normalisation is purely textual: no file system access and no name resolution.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddress`] for an unknown scheme, a relative or empty `unix://` path, a
    /// `tcp://` address without a valid host or port, or anything else that is not
    /// `unix:///absolute/path` or `tcp://host:port`.
    pub fn parse(address: &str) -> Result<Address, Error> {
        let invalid = |reason| Error::InvalidAddress {
            address: address.to_owned(),
            reason,
        };
        let (scheme, rest) = address
            .split_once("://")
            .ok_or_else(|| invalid("missing scheme (expected unix:// or tcp://)"))?;
        if scheme.eq_ignore_ascii_case("unix") {
            parse_unix(rest).map_err(invalid)
        } else if scheme.eq_ignore_ascii_case("tcp") {
            parse_tcp(rest).map_err(invalid)
        } else {
            Err(invalid("unsupported scheme (expected unix:// or tcp://)"))
        }
    }

    /// The canonical form, as the kill switch stores it.
    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    /// The socket's absolute path, for a `unix://` address.
    pub fn unix_path(&self) -> Option<&Path> {
        match self.kind {
            Kind::Unix => Some(Path::new(&self.canonical[UNIX.len()..])),
            Kind::Tcp { .. } => None,
        }
    }

    /// The host, for a `tcp://` address: a lowercase host name, an IPv4 address, or an IPv6
    /// address in RFC 5952 form without its brackets.
    pub fn tcp_host(&self) -> Option<&str> {
        match &self.kind {
            Kind::Tcp { host, .. } => Some(&self.canonical[host.clone()]),
            Kind::Unix => None,
        }
    }

    /// The port, for a `tcp://` address; never 0.
    pub fn tcp_port(&self) -> Option<u16> {
        match self.kind {
            Kind::Tcp { port, .. } => Some(port),
            Kind::Unix => None,
        }
    }
}

impl FromStr for Address {
    type Err = Error;

    /// As [`Address::parse`].
    fn from_str(address: &str) -> Result<Address, Error> {
        Address::parse(address)
    }
}

impl PartialEq for Address {
    fn eq(&self, other: &Address) -> bool {
        self.canonical == other.canonical
    }
}

impl Eq for Address {}

impl Hash for Address {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.canonical.hash(state);
    }
}

impl PartialOrd for Address {
    fn partial_cmp(&self, other: &Address) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Address {
    fn cmp(&self, other: &Address) -> Ordering {
        self.canonical.cmp(&other.canonical)
    }
}

impl fmt::Display for Address {
    /// Writes the canonical form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Address").field(&self.canonical).finish()
    }
}

impl ToSocketAddrs for Address {
    type Iter = vec::IntoIter<SocketAddr>;

    /// Resolves a `tcp://` address's host (IP addresses are taken as they are, names are
    /// looked up), so that an `Address` can be given to `TcpListener::bind` and
    /// `TcpStream::connect`.
    ///
    /// A `unix://` address has no IP socket address: it gives an error of kind
    /// [`InvalidInput`](io::ErrorKind::InvalidInput).
    fn to_socket_addrs(&self) -> io::Result<Self::Iter> {
        match (self.tcp_host(), self.tcp_port()) {
            (Some(host), Some(port)) => (host, port).to_socket_addrs(),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a unix socket address has no ip socket address",
            )),
        }
    }
}

/// Returns the canonical form of a shared worker address, the form in which the kill switch
/// stores and compares addresses.
///
/// Two spellings of the same address give the same canonical form, so disabling one spelling
/// disables the other.
/// This is [`Address::parse`] followed by [`Address::as_str`]; see the
/// [crate documentation](crate#addresses) for the exact rules.
///
/// # Errors
///
/// As for [`Address::parse`].
///
/// # Examples
///
/// ```
/// use worker_killswitch::canonical_address;
///
/// assert_eq!(canonical_address("unix:///run//app/./old/../w.sock")?, "unix:///run/app/w.sock");
/// assert_eq!(canonical_address("TCP://LocalHost.:080")?, "tcp://localhost:80");
/// assert_eq!(canonical_address("tcp://[0:0::1]:9000")?, "tcp://[::1]:9000");
/// assert!(canonical_address("unix://relative.sock").is_err());
/// # Ok::<(), worker_killswitch::Error>(())
/// ```
pub fn canonical_address(address: &str) -> Result<String, Error> {
    Address::parse(address).map(|address| address.canonical)
}

fn parse_unix(path: &str) -> Result<Address, &'static str> {
    Ok(Address {
        canonical: canonical_unix(path)?,
        kind: Kind::Unix,
    })
}

fn parse_tcp(authority: &str) -> Result<Address, &'static str> {
    let (host, bracketed, port) = canonical_tcp(authority)?;
    let start = TCP.len() + usize::from(bracketed);
    let canonical = if bracketed {
        format!("{TCP}[{host}]:{port}")
    } else {
        format!("{TCP}{host}:{port}")
    };
    Ok(Address {
        canonical,
        kind: Kind::Tcp {
            host: start..start + host.len(),
            port,
        },
    })
}

fn canonical_unix(path: &str) -> Result<String, &'static str> {
    if path.is_empty() {
        return Err("empty unix socket path");
    }
    if !path.starts_with('/') {
        // A relative path would name a different socket in every working directory.
        return Err("unix socket path is not absolute");
    }
    if path.contains('\0') {
        return Err("unix socket path contains a nul byte");
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            // Above the root, `..` is the root itself, as the kernel resolves it.
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err("unix socket path names the root directory");
    }
    let mut canonical = String::from(UNIX);
    for part in parts {
        canonical.push('/');
        canonical.push_str(part);
    }
    Ok(canonical)
}

/// The canonical host (without brackets), whether it is an IPv6 literal, and the port.
fn canonical_tcp(authority: &str) -> Result<(String, bool, u16), &'static str> {
    if let Some(bracketed) = authority.strip_prefix('[') {
        let (ip, after) = bracketed
            .split_once(']')
            .ok_or("unterminated ipv6 literal")?;
        let port = after.strip_prefix(':').ok_or("missing port")?;
        // Ipv6Addr's display is the RFC 5952 form: lowercase, zeros compressed.
        let ip: Ipv6Addr = ip.parse().map_err(|_| "invalid ipv6 literal")?;
        Ok((ip.to_string(), true, canonical_port(port)?))
    } else {
        let (host, port) = authority.rsplit_once(':').ok_or("missing port")?;
        if host.contains(':') {
            return Err("ipv6 literal is not in brackets");
        }
        Ok((canonical_host(host)?, false, canonical_port(port)?))
    }
}

fn canonical_host(host: &str) -> Result<String, &'static str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err("missing host");
    }
    let valid_label = |label: &str| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !host.split('.').all(valid_label) {
        return Err("host is not a host name or an ip address");
    }
    Ok(host.to_ascii_lowercase())
}

fn canonical_port(port: &str) -> Result<u16, &'static str> {
    if port.is_empty() {
        return Err("missing port");
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err("port is not a decimal number");
    }
    let digits = port.trim_start_matches('0');
    // Leading zeros are insignificant, however many there are, so only the rest can overflow.
    let port = if digits.is_empty() {
        0
    } else {
        digits.parse::<u16>().map_err(|_| "port is out of range")?
    };
    if port == 0 {
        // Port 0 asks the kernel for any free port: no two starts would share it.
        return Err("port 0 does not name a worker");
    }
    Ok(port)
}
