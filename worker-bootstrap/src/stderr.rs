//! Draining a worker's standard error: forwarded to the master's or to `log`, and its tail kept
//! for errors.

use std::{
    io::{Read, Write},
    os::fd::{AsFd, AsRawFd, OwnedFd, RawFd},
    sync::{Arc, Condvar, Mutex, mpsc},
    time::{Duration, Instant},
};

/// How much of a worker's standard error is kept for the error its master gets.
const TAIL_LEN: usize = 4096;

/// Lines of a backtrace (after `stack backtrace:`) kept in the tail; the rest are counted, so a
/// worker run with `RUST_BACKTRACE=full` does not push its panic message out of the tail.
const BACKTRACE_LINES_KEPT: usize = 12;

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

/// Calls `piece(bytes, ends_line)` for each run of `bytes` up to and including a newline
/// (`ends_line` true, the newline left out) and for the unfinished rest (`ends_line` false): the
/// one line splitter of a worker's standard error, for `log` and for the tail.
fn split_lines(mut bytes: &[u8], mut piece: impl FnMut(&[u8], bool)) {
    while let Some(i) = bytes.iter().position(|&b| b == b'\n') {
        piece(&bytes[..i], true);
        bytes = &bytes[i + 1..];
    }
    if !bytes.is_empty() {
        piece(bytes, false);
    }
}

impl LineLogger {
    fn feed(&mut self, bytes: &[u8]) {
        split_lines(bytes, |piece, ends_line| {
            self.append(piece);
            if ends_line {
                self.emit();
            }
        });
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
    /// Whole lines kept, each ending with a newline; trimmed to about `TAIL_LEN` from the front.
    bytes: Vec<u8>,
    /// The line being written (at most `TAIL_LEN` of it).
    line: Vec<u8>,
    /// Inside a backtrace: its lines so far.
    backtrace: Option<usize>,
    done: bool,
}

impl Tail {
    fn feed(&mut self, bytes: &[u8]) {
        split_lines(bytes, |piece, ends_line| {
            let room = TAIL_LEN.saturating_sub(self.line.len());
            self.line.extend_from_slice(&piece[..piece.len().min(room)]);
            if ends_line {
                self.end_line();
            }
        });
        if self.bytes.len() > 2 * TAIL_LEN {
            let cut = self.bytes.len() - TAIL_LEN;
            self.bytes.drain(..cut);
        }
    }

    /// Keeps the line just ended, unless it is a backtrace's line past the first
    /// `BACKTRACE_LINES_KEPT` (frames are indented; the backtrace ends at the first line that
    /// is not).
    fn end_line(&mut self) {
        let indented = self.line.first().is_some_and(u8::is_ascii_whitespace);
        match self.backtrace {
            Some(n) if indented => {
                self.backtrace = Some(n + 1);
                if n >= BACKTRACE_LINES_KEPT {
                    self.line.clear();
                    return;
                }
            }
            Some(_) => {
                if let Some(note) = self.elided() {
                    self.bytes.extend_from_slice(&note);
                }
                self.backtrace = None;
            }
            None => {}
        }
        if self.line == b"stack backtrace:" {
            self.backtrace = Some(0);
        }
        self.bytes.append(&mut self.line);
        self.bytes.push(b'\n');
    }

    /// The line that says how many lines of the current backtrace were left out, if any.
    fn elided(&self) -> Option<Vec<u8>> {
        let elided = self.backtrace?.checked_sub(BACKTRACE_LINES_KEPT)?;
        (elided > 0).then(|| format!("      [{elided} more backtrace lines]\n").into_bytes())
    }

    /// The kept text: whole lines, then the unfinished one.
    fn text(&self) -> Vec<u8> {
        let mut text = self.bytes.clone();
        if let Some(note) = self.elided() {
            text.extend_from_slice(&note);
        }
        text.extend_from_slice(&self.line);
        text
    }
}

/// Reads of one turn of the I/O thread on one worker's standard error (8 KiB each): past them,
/// the other workers get their turn before this one is read again, so one that writes without
/// pause cannot starve them.
pub(crate) const TURN_READS: usize = 16;

/// Reads of the last look at a reaped worker's standard error: enough for everything a worker
/// can have left in its pipe (1 MiB), bounded so that a descendant that goes on writing cannot
/// hold the caller.
const FINISH_READS: usize = 128;

/// What one turn of reading found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pumped {
    /// The pipe is empty for now.
    Empty,
    /// The turn's reads were all used: there may be more.
    More,
    /// Nothing more will be read: the pipe ended, or the worker was reaped.
    Ended,
    /// The master's standard error takes no more for now: read again a little later (the
    /// worker meanwhile waits on its full pipe, as it would writing to a slow terminal).
    Held,
}

/// Chunks of workers' standard error waiting for the master's own.
const FORWARD_QUEUE: usize = 64;

/// How long a reaped worker's last forwarded bytes may take to reach the master's standard
/// error before its exit is reported (a master that exits at once keeps them).
const FORWARD_FLUSH_WAIT: Duration = Duration::from_millis(500);

/// What the forwarding thread is given.
enum Forward {
    Bytes(Vec<u8>),
    /// Set once everything queued before it is written.
    Flushed(Arc<(Mutex<bool>, Condvar)>),
}

/// The forwarding thread of this process and the process id it was started in.
static FORWARDER: Mutex<Option<(u32, mpsc::SyncSender<Forward>)>> = Mutex::new(None);

/// The one thread that copies workers' standard error to the master's (started on first use):
/// that write may block for as long as the master's standard error does (a pipe nobody reads,
/// a terminal on hold), so it is kept off the I/O thread, which must go on watching and
/// reaping the other workers meanwhile.
fn forwarder() -> std::io::Result<mpsc::SyncSender<Forward>> {
    let mut forwarder = FORWARDER.lock().unwrap_or_else(|e| e.into_inner());
    let me = std::process::id();
    if let Some((pid, tx)) = &*forwarder
        && *pid == me
    {
        return Ok(tx.clone());
    }
    let (tx, rx) = mpsc::sync_channel::<Forward>(FORWARD_QUEUE);
    std::thread::Builder::new()
        .name("exsyst-worker-stderr".into())
        .spawn(move || {
            for forward in rx {
                match forward {
                    // The master's stderr being gone must not stop the draining.
                    Forward::Bytes(bytes) => {
                        let _ = std::io::stderr().lock().write_all(&bytes);
                    }
                    Forward::Flushed(flushed) => {
                        *flushed.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
                        flushed.1.notify_all();
                    }
                }
            }
        })?;
    *forwarder = Some((me, tx.clone()));
    Ok(tx)
}

/// A worker's standard error as the I/O thread drains it: the pipe, where its bytes go, and
/// their tail.
pub(crate) struct Stream {
    state: Mutex<State>,
    ended: Condvar,
}

struct State {
    /// Our end of the pipe (non-blocking), until the I/O thread closes it.
    pipe: Option<std::fs::File>,
    /// Where the I/O thread watches the pipe, once it does.
    token: Option<usize>,
    /// Copied to the master's standard error, through the forwarding thread.
    forward: Option<mpsc::SyncSender<Forward>>,
    /// Bytes read that the forwarding thread had no room for yet.
    held: Option<Vec<u8>>,
    /// Cut into `log` records.
    lines: Option<LineLogger>,
    tail: Tail,
}

impl Stream {
    /// Reads what the pipe holds, at most `reads` times (on the I/O thread).
    pub(crate) fn pump(&self, reads: usize) -> Pumped {
        self.lock().pump(reads, true)
    }

    /// Has `register` watch the pipe under `token`, unless it is closed already; returns
    /// whether it does.
    pub(crate) fn register(
        &self,
        token: usize,
        register: impl FnOnce(RawFd) -> std::io::Result<()>,
    ) -> bool {
        let mut state = self.lock();
        let Some(pipe) = &state.pipe else {
            return false;
        };
        if register(pipe.as_raw_fd()).is_err() {
            return false;
        }
        state.token = Some(token);
        true
    }

    /// Closes the pipe, after `deregister` was given its descriptor, and stops the reading for
    /// good; returns the token it was watched under, the first time (whoever gets it frees the
    /// I/O thread's slot).
    pub(crate) fn close(&self, deregister: impl FnOnce(RawFd)) -> Option<usize> {
        let mut state = self.lock();
        if let Some(pipe) = state.pipe.take() {
            deregister(pipe.as_raw_fd());
        }
        state.end();
        self.ended.notify_all();
        state.token.take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Reads what the pipe holds, at most `reads` times. With `hold`, bytes the forwarding
    /// thread has no room for are kept and the reading stops ([`Pumped::Held`]); without, they
    /// are dropped (a reaped worker's last bytes, which must not make its handle wait).
    fn pump(&mut self, reads: usize, hold: bool) -> Pumped {
        if self.tail.done {
            return Pumped::Ended;
        }
        if let Some(bytes) = self.held.take()
            && !self.forward(bytes, hold)
        {
            return Pumped::Held;
        }
        let mut buf = [0u8; 8192];
        for _ in 0..reads {
            let Some(pipe) = &mut self.pipe else {
                return Pumped::Ended;
            };
            let n = match pipe.read(&mut buf) {
                Ok(0) => {
                    self.end();
                    return Pumped::Ended;
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Pumped::Empty,
                Err(_) => {
                    self.end();
                    return Pumped::Ended;
                }
            };
            if let Some(lines) = &mut self.lines {
                lines.feed(&buf[..n]);
            }
            self.tail.feed(&buf[..n]);
            if self.forward.is_some() && !self.forward(buf[..n].to_vec(), hold) {
                return Pumped::Held;
            }
        }
        Pumped::More
    }

    /// Queues `bytes` for the master's standard error; false when they are held for later.
    fn forward(&mut self, bytes: Vec<u8>, hold: bool) -> bool {
        let Some(tx) = &self.forward else {
            return true;
        };
        match tx.try_send(Forward::Bytes(bytes)) {
            Err(mpsc::TrySendError::Full(Forward::Bytes(bytes))) if hold => {
                self.held = Some(bytes);
                false
            }
            _ => true,
        }
    }

    /// Nothing more is read: the last unfinished line goes to `log`.
    fn end(&mut self) {
        if !self.tail.done
            && let Some(lines) = &mut self.lines
        {
            lines.finish();
        }
        self.tail.done = true;
    }
}

/// The tail of a worker's standard error, drained by the process's one I/O thread (see
/// [`reaper`](crate::reaper)), so a chatty worker never blocks on a full pipe and no thread is
/// started per worker.
///
/// The pipe is closed when the pipe ends, when the worker is reaped
/// ([`finish`](Self::finish)), or when this is dropped, whichever comes first: a descendant
/// that keeps the worker's standard error open holds nothing of ours.
pub(crate) struct StderrTail {
    stream: Arc<Stream>,
}

impl std::fmt::Debug for StderrTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StderrTail")
    }
}

impl StderrTail {
    /// Starts draining `stderr`, sending it to `sink` as well.
    pub(crate) fn start(stderr: OwnedFd, sink: Sink, pid: u32) -> std::io::Result<Self> {
        worker_core::os::set_nonblocking(stderr.as_fd(), true)?;
        let (forward, lines) = match sink {
            Sink::None => (None, None),
            Sink::Stderr => (Some(forwarder()?), None),
            Sink::Log(target) => (
                None,
                Some(LineLogger {
                    target,
                    pid,
                    line: Vec::new(),
                    cut: 0,
                }),
            ),
        };
        let stream = Arc::new(Stream {
            state: Mutex::new(State {
                pipe: Some(stderr.into()),
                token: None,
                forward,
                held: None,
                lines,
                tail: Tail::default(),
            }),
            ended: Condvar::new(),
        });
        crate::reaper::watch_stderr(Arc::clone(&stream))?;
        Ok(StderrTail { stream })
    }

    /// The worker was reaped: reads what it left in the pipe (everything it wrote, since it can
    /// write no more), stops reading and has the pipe closed, whatever its descendants still
    /// hold; returns the last lines.
    pub(crate) fn finish(&self) -> String {
        let forward = {
            let mut state = self.stream.lock();
            state.pump(FINISH_READS, false);
            state.end();
            state.forward.clone()
        };
        self.stream.ended.notify_all();
        crate::reaper::close_stderr(&self.stream);
        if let Some(tx) = forward {
            // What the worker wrote reaches the master's standard error before its exit is
            // reported, unless that takes long.
            let flushed = Arc::new((Mutex::new(false), Condvar::new()));
            if tx.try_send(Forward::Flushed(Arc::clone(&flushed))).is_ok() {
                let deadline = worker_core::deadline_after(FORWARD_FLUSH_WAIT);
                let mut done = flushed.0.lock().unwrap_or_else(|e| e.into_inner());
                while !*done {
                    let Some(left) = worker_core::time_left(deadline).filter(|l| !l.is_zero())
                    else {
                        break;
                    };
                    done = flushed
                        .1
                        .wait_timeout(done, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        self.text(Duration::ZERO)
    }

    /// The last lines written, waiting up to `wait` for the pipe to end.
    pub(crate) fn text(&self, wait: Duration) -> String {
        let deadline = worker_core::deadline_after(wait);
        let mut state = self.stream.lock();
        while !state.tail.done {
            let left = deadline.map_or(wait, |d| d.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                break;
            }
            state = self
                .stream
                .ended
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let text = state.tail.text();
        drop(state);
        let bytes = &text[text.len().saturating_sub(TAIL_LEN)..];
        // Start at a line boundary when the tail was cut.
        let bytes = if text.len() > TAIL_LEN {
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

impl Drop for StderrTail {
    fn drop(&mut self) {
        crate::reaper::close_stderr(&self.stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(text: &str, chunk: usize) -> String {
        let mut tail = Tail::default();
        for piece in text.as_bytes().chunks(chunk) {
            tail.feed(piece);
        }
        String::from_utf8(tail.text()).unwrap()
    }

    #[test]
    fn a_long_backtrace_leaves_the_panic_message_in_the_tail() {
        let mut text = String::from("starting\nthread 'main' panicked at src/w.rs:3:5:\nboom\n");
        text.push_str("stack backtrace:\n");
        for i in 0..400 {
            text.push_str(&format!(
                "  {i:3}:     0x55d0c7f5c0a2 - std::frame::number_{i}\n"
            ));
            text.push_str("                               at /rustc/library/std/src/x.rs:1:1\n");
        }
        text.push_str("note: Some details are omitted\n");
        for chunk in [1, 7, 4096, 1 << 20] {
            let tail = fed(&text, chunk);
            assert!(tail.contains("boom\nstack backtrace:\n"), "{tail}");
            assert!(tail.contains("number_5\n"), "{tail}");
            assert!(!tail.contains("number_6\n"), "{tail}");
            assert!(
                tail.ends_with(
                    "      [788 more backtrace lines]\nnote: Some details are omitted\n"
                ),
                "{tail}"
            );
        }
    }

    #[test]
    fn a_backtrace_still_being_written_says_what_was_left_out() {
        let mut text = String::from("boom\nstack backtrace:\n");
        for i in 0..20 {
            text.push_str(&format!("   {i}: f{i}\n"));
        }
        text.push_str("   20: unfinish");
        assert_eq!(
            fed(&text, 5),
            format!(
                "boom\nstack backtrace:\n{}      [8 more backtrace lines]\n   20: unfinish",
                (0..12)
                    .map(|i| format!("   {i}: f{i}\n"))
                    .collect::<String>()
            )
        );
    }

    #[test]
    fn other_output_keeps_its_last_lines_whole() {
        let text: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
        let tail = fed(&text, 333);
        assert!(tail.ends_with("line 9999\n"));
        assert!(tail.len() >= TAIL_LEN, "{}", tail.len());
        assert!(text.ends_with(&tail));
    }
}
