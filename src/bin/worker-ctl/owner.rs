//! Whether a pid is really the worker listening at an address, from `/proc`, before
//! `worker-ctl` signals it or waits for it.
//!
//! The pid comes from the worker's hello, which is the worker's word: a worker in another pid
//! namespace (a container whose socket is mounted here) gives a pid that names some other
//! process of this machine, pid 1 perhaps. So the pid counts only when that process holds the
//! listening socket that `/proc/net` shows at the address.

use std::{collections::HashSet, io, path::Path};

use exsyst_worker::killswitch::Address;

/// Whether process `pid` holds a socket listening at `address`.
///
/// Errors when `/proc` cannot tell (another user's process, say).
pub(crate) fn listens_at(pid: u32, address: &Address) -> io::Result<bool> {
    let inodes = match (address.unix_path(), address.tcp_port()) {
        (Some(path), _) => unix_listeners(&std::fs::read_to_string("/proc/net/unix")?, path),
        (None, Some(port)) => {
            let mut inodes = HashSet::new();
            for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
                match std::fs::read_to_string(table) {
                    Ok(text) => inodes.extend(tcp_listeners(&text, port)),
                    // No IPv6 on this machine.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            inodes
        }
        (None, None) => return Ok(false),
    };
    if inodes.is_empty() {
        return Ok(false);
    }
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        // A descriptor closed while we look is no socket of interest.
        let Ok(target) = std::fs::read_link(fd?.path()) else {
            continue;
        };
        let inode = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok());
        if inode.is_some_and(|i| inodes.contains(&i)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The inodes of the listening Unix sockets bound at `path`, from `/proc/net/unix`:
/// `Num RefCount Protocol Flags Type St Inode Path`, listening when `Flags` has
/// `__SO_ACCEPTCON` (0x10000).
fn unix_listeners(table: &str, path: &Path) -> HashSet<u64> {
    let path = path.to_str().unwrap_or("");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
            let listening = flags & 0x10000 != 0;
            (listening && *fields.get(7)? == path).then(|| fields[6].parse().ok())?
        })
        .collect()
}

/// The inodes of the TCP sockets listening on `port`, from `/proc/net/tcp` or `tcp6`:
/// `sl local_address rem_address st ... uid timeout inode`, listening when `st` is `0A`.
fn tcp_listeners(table: &str, port: u16) -> HashSet<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (_, local_port) = fields.get(1)?.rsplit_once(':')?;
            let listening = *fields.get(3)? == "0A";
            let on_port = u16::from_str_radix(local_port, 16).ok()? == port;
            (listening && on_port).then(|| fields.get(9)?.parse().ok())?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{
        net::TcpListener,
        os::unix::net::{UnixListener, UnixStream},
    };

    use super::*;

    #[test]
    fn the_tables_are_read_as_the_kernel_writes_them() {
        let unix = "Num       RefCount Protocol Flags    Type St Inode Path\n\
                    0000000000000000: 00000002 00000000 00010000 0001 01 31 /run/w.sock\n\
                    0000000000000000: 00000003 00000000 00000000 0001 03 32 /run/w.sock\n\
                    0000000000000000: 00000002 00000000 00010000 0001 01 33 /run/other.sock\n\
                    0000000000000000: 00000002 00000000 00010000 0001 01 34\n";
        assert_eq!(
            unix_listeners(unix, Path::new("/run/w.sock")),
            HashSet::from([31])
        );
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41 1 0 100 0 0 10 0\n\
                   1: 0100007F:1F90 0100007F:E5EC 01 00000000:00000000 00:00000000 00000000     0        0 42 1 0 100 0 0 10 0\n";
        assert_eq!(tcp_listeners(tcp, 8080), HashSet::from([41]));
        assert!(tcp_listeners(tcp, 8081).is_empty());
    }

    #[test]
    fn this_process_holds_its_listeners_and_pid_1_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let unix = Address::parse(&format!("unix://{}", path.display())).unwrap();
        let me = std::process::id();
        assert!(listens_at(me, &unix).unwrap());
        // A connection to it is no listener.
        let _client = UnixStream::connect(&path).unwrap();
        drop(listener);
        assert!(!listens_at(me, &unix).unwrap());

        let tcp_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp_listener.local_addr().unwrap().port();
        let tcp = Address::parse(&format!("tcp://127.0.0.1:{port}")).unwrap();
        assert!(listens_at(me, &tcp).unwrap());
        if me != 1 {
            assert!(!listens_at(1, &tcp).unwrap_or(false));
        }
    }
}
