//! Draining a worker's standard error: forwarded to the master's or to `log`, and its tail kept
//! for errors.

use std::{
    io::{Read, Write},
    os::fd::OwnedFd,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

/// How much of a worker's standard error is kept for the error its master gets.
const TAIL_LEN: usize = 4096;

/// The longest line forwarded to `log` whole: past it the rest of the line is counted, not
/// kept, so a worker writing without newlines cannot make its master hold unbounded memory.
const MAX_LOG_LINE: usize = 1 << 20;

/// Where a worker's standard error goes besides its tail.
#[derive(Debug)]
pub(crate) enum Sink {
    /// Nowhere.
    None,
    /// Copied to the master's standard error as it arrives.
    Stderr,
    /// One `log` record per line, with this target.
    Log(String),
}

/// Cuts a worker's standard error into lines, each one `log` record whatever the reads' sizes.
struct LineLogger {
    target: String,
    pid: u32,
    line: Vec<u8>,
    /// Bytes of the current line past `MAX_LOG_LINE`, dropped.
    cut: usize,
}

impl LineLogger {
    fn feed(&mut self, mut bytes: &[u8]) {
        while let Some(i) = bytes.iter().position(|&b| b == b'\n') {
            self.append(&bytes[..i]);
            self.emit();
            bytes = &bytes[i + 1..];
        }
        self.append(bytes);
    }

    fn append(&mut self, bytes: &[u8]) {
        let room = MAX_LOG_LINE - self.line.len();
        let kept = bytes.len().min(room);
        self.line.extend_from_slice(&bytes[..kept]);
        self.cut += bytes.len() - kept;
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.line);
        let (target, pid) = (self.target.as_str(), self.pid);
        if self.cut == 0 {
            log::info!(target: target, "[pid {pid}] {line}");
        } else {
            let cut = self.cut;
            log::info!(target: target, "[pid {pid}] {line} ({cut} more bytes cut)");
        }
        self.line.clear();
        self.cut = 0;
    }

    /// The last line, when the worker closed its standard error without ending it.
    fn finish(&mut self) {
        if !self.line.is_empty() || self.cut > 0 {
            self.emit();
        }
    }
}

#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    done: bool,
}

/// The tail of a worker's standard error, filled by a thread that drains the pipe, so a chatty
/// worker never blocks on a full pipe.
#[derive(Clone)]
pub(crate) struct StderrTail {
    shared: Arc<(Mutex<Tail>, Condvar)>,
}

impl std::fmt::Debug for StderrTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StderrTail")
    }
}

impl StderrTail {
    /// Starts draining `stderr`, sending it to `sink` as well.
    pub(crate) fn start(stderr: OwnedFd, sink: Sink, pid: u32) -> std::io::Result<Self> {
        let mut stderr = std::fs::File::from(stderr);
        let tail = StderrTail {
            shared: Arc::new((Mutex::new(Tail::default()), Condvar::new())),
        };
        let shared = Arc::clone(&tail.shared);
        std::thread::Builder::new()
            .name(format!("worker-{pid}-stderr"))
            .spawn(move || {
                let (forward, mut lines) = match sink {
                    Sink::None => (false, None),
                    Sink::Stderr => (true, None),
                    Sink::Log(target) => (
                        false,
                        Some(LineLogger {
                            target,
                            pid,
                            line: Vec::new(),
                            cut: 0,
                        }),
                    ),
                };
                let mut buf = [0u8; 8192];
                loop {
                    let n = match stderr.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    };
                    if forward {
                        // The master's stderr being gone must not stop the draining.
                        let _ = std::io::stderr().lock().write_all(&buf[..n]);
                    }
                    if let Some(lines) = &mut lines {
                        lines.feed(&buf[..n]);
                    }
                    let mut tail = shared.0.lock().unwrap_or_else(|e| e.into_inner());
                    tail.bytes.extend_from_slice(&buf[..n]);
                    if tail.bytes.len() > 2 * TAIL_LEN {
                        let cut = tail.bytes.len() - TAIL_LEN;
                        tail.bytes.drain(..cut);
                    }
                }
                if let Some(lines) = &mut lines {
                    lines.finish();
                }
                // Closed before `done` is told, so a master that saw the worker reaped and its
                // stderr drained holds no descriptor of it any more.
                drop(stderr);
                let mut tail = shared.0.lock().unwrap_or_else(|e| e.into_inner());
                tail.done = true;
                shared.1.notify_all();
            })?;
        Ok(tail)
    }

    /// The last lines written, waiting up to `wait` for the worker's last bytes to be drained.
    pub(crate) fn text(&self, wait: Duration) -> String {
        let deadline = worker_core::deadline_after(wait);
        let mut tail = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
        while !tail.done {
            let left = deadline.map_or(wait, |d| d.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                break;
            }
            tail = self
                .shared
                .1
                .wait_timeout(tail, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let bytes = &tail.bytes[tail.bytes.len().saturating_sub(TAIL_LEN)..];
        // Start at a line boundary when the tail was cut.
        let bytes = if tail.bytes.len() > TAIL_LEN {
            bytes
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes, |i| &bytes[i + 1..])
        } else {
            bytes
        };
        String::from_utf8_lossy(bytes).into_owned()
    }
}
