use std::net::Ipv6Addr;

use crate::Error;

/// Returns the canonical form of a shared worker address, the form in which the kill switch
/// stores and compares addresses.
///
/// Two spellings of the same address give the same canonical form, so disabling one spelling
/// disables the other.
/// The normalisation is purely textual (see the [crate documentation](crate#addresses) for the
/// exact rules): no file system access and no name resolution.
///
/// # Errors
///
/// [`Error::InvalidAddress`] for an unknown scheme, a relative or empty `unix://` path, a
/// `tcp://` address without a valid host or port, or anything else that is not
/// `unix:///absolute/path` or `tcp://host:port`.
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
    let invalid = |reason| Error::InvalidAddress {
        address: address.to_owned(),
        reason,
    };
    let (scheme, rest) = address
        .split_once("://")
        .ok_or_else(|| invalid("missing scheme (expected unix:// or tcp://)"))?;
    if scheme.eq_ignore_ascii_case("unix") {
        canonical_unix(rest).map_err(invalid)
    } else if scheme.eq_ignore_ascii_case("tcp") {
        canonical_tcp(rest).map_err(invalid)
    } else {
        Err(invalid("unsupported scheme (expected unix:// or tcp://)"))
    }
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
    let mut canonical = String::from("unix://");
    for part in parts {
        canonical.push('/');
        canonical.push_str(part);
    }
    Ok(canonical)
}

fn canonical_tcp(authority: &str) -> Result<String, &'static str> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (ip, after) = bracketed
            .split_once(']')
            .ok_or("unterminated ipv6 literal")?;
        let port = after.strip_prefix(':').ok_or("missing port")?;
        // Ipv6Addr's display is the RFC 5952 form: lowercase, zeros compressed.
        let ip: Ipv6Addr = ip.parse().map_err(|_| "invalid ipv6 literal")?;
        (format!("[{ip}]"), port)
    } else {
        let (host, port) = authority.rsplit_once(':').ok_or("missing port")?;
        if host.contains(':') {
            return Err("ipv6 literal is not in brackets");
        }
        (canonical_host(host)?, port)
    };
    Ok(format!("tcp://{host}:{}", canonical_port(port)?))
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
