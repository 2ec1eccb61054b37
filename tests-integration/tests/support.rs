//! What every scenario needs: the helper executables, scaled timeouts, process checks.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub(crate) use tests_integration::timeout;

/// The executable that registers every test implementation.
pub(crate) fn test_worker() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_test-worker"))
}

/// A separate worker executable registering only `echo`.
pub(crate) fn other_worker() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_other-worker"))
}

/// A profile that starts workers from `test-worker` (the test harness cannot be a worker).
pub(crate) fn profile() -> exsyst_worker::BootstrapProfile {
    exsyst_worker::BootstrapProfile::new().with_program(test_worker())
}

/// Whether process `pid` is gone: not running, and not a zombie of ours.
///
/// A zombie whose parent is another process (init, after its master died) is dead for our
/// purpose: reaping it is its new parent's business, which this sandbox's init does lazily.
pub(crate) fn process_gone(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return true;
    };
    let mut fields = rest.split(' ');
    let state = fields.next().and_then(|s| s.chars().next());
    let ppid: Option<u32> = fields.next().and_then(|p| p.parse().ok());
    match state {
        Some('X') => true,
        Some('Z') => ppid != Some(std::process::id()),
        _ => false,
    }
}

/// Waits until `cond` holds, polling with a short back-off, up to `limit` exactly: for bounds
/// that are the requirement itself ("gone within one second"), which no machine may stretch.
pub(crate) fn wait_within(limit: Duration, cond: impl FnMut() -> bool) -> bool {
    poll_until(Instant::now() + limit, cond)
}

/// Waits until `cond` holds, polling with a short back-off, up to the scaled `limit`.
/// Returns whether it held in time. Polling here replaces a fixed sleep: it ends as soon as the
/// condition is true.
pub(crate) fn wait_until(limit: Duration, cond: impl FnMut() -> bool) -> bool {
    poll_until(Instant::now() + timeout(limit), cond)
}

fn poll_until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    let mut pause = Duration::from_millis(1);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::park_timeout(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Runs `test-worker master <args>` and collects its `key=value` lines.
pub(crate) fn run_master(args: &[&str]) -> Vec<(String, String)> {
    let output = Command::new(test_worker())
        .arg("master")
        .args(args)
        .output()
        .expect("start test-worker master");
    assert!(
        output.status.success(),
        "master scenario {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    parse_lines(&String::from_utf8_lossy(&output.stdout))
}

/// Splits `key=value` lines.
pub(crate) fn parse_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The value of `key` in scenario output.
pub(crate) fn value<'a>(lines: &'a [(String, String)], key: &str) -> &'a str {
    lines
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {lines:?}"))
}

/// A master process running a long scenario, read line by line.
pub(crate) struct MasterProcess {
    pub child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl MasterProcess {
    /// Starts `test-worker master <args>`.
    pub(crate) fn start(args: &[&str]) -> Self {
        let mut child = Command::new(test_worker())
            .arg("master")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start test-worker master");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        MasterProcess { child, lines }
    }

    /// The next line of its output (blocking; the scenario writes it promptly).
    pub(crate) fn next_line(&mut self) -> Option<String> {
        self.lines.next().map(|l| l.expect("read master output"))
    }
}

impl Drop for MasterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGKILL to `pid` with the system's `kill`.
pub(crate) fn sigkill(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -KILL {pid} failed");
}

/// The exit status and standard error tail of a worker that died, or a panic naming what came
/// instead.
pub(crate) fn expect_exited<T: std::fmt::Debug>(
    result: Result<T, exsyst_worker::bootstrap::Error>,
) -> (std::process::ExitStatus, String) {
    match result {
        Err(exsyst_worker::bootstrap::Error::WorkerExited {
            status,
            stderr_tail,
            ..
        }) => (status, stderr_tail),
        other => panic!("expected WorkerExited, got {other:?}"),
    }
}

/// The fields of `/proc/<pid>/stat` after the command name: state, ppid, pgrp, session, ...
pub(crate) fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').map(str::to_owned).collect()
}

/// Asserts that `daemon` left `starter` for good: another parent, a session of its own that
/// is not ours, and that it does not lead (so it cannot acquire a controlling terminal).
pub(crate) fn assert_detached(daemon: u32, starter: u32) {
    let stat = stat_fields(daemon);
    let (ppid, session): (u32, u32) = (stat[1].parse().unwrap(), stat[3].parse().unwrap());
    // SAFETY: getsid(0) only reads this process's session id.
    let our_session = unsafe { libc::getsid(0) } as u32;
    assert_ne!(ppid, starter);
    assert_ne!(
        session, our_session,
        "the daemon is still in the starter's session"
    );
    assert_ne!(session, daemon, "a session leader could acquire a terminal");
}

/// The descriptors of process `pid`, by number, with what they point at.
pub(crate) fn fds_of(pid: u32) -> Vec<(u32, String)> {
    let mut fds: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            (
                e.file_name().to_string_lossy().parse().unwrap(),
                target.display().to_string(),
            )
        })
        .collect();
    fds.sort();
    fds
}

/// A task that runs until released (the `Hold` command, or a hostile task's `held` path): the
/// test holds a Unix socket the task connects to, and the task ends when the stream
/// [`Held::started`] returns is dropped.
pub(crate) struct Held {
    listener: std::os::unix::net::UnixListener,
    pub(crate) path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Held {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hold.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        Held {
            listener,
            path,
            _dir: dir,
        }
    }

    /// The task pool command that runs until released.
    pub(crate) fn command(&self) -> tests_integration::workers::pool::Command {
        tests_integration::workers::pool::Command::Hold(self.path.clone())
    }

    /// Waits for the task to start; returns its worker's pid and the stream that holds it.
    pub(crate) fn started(&self) -> (u32, std::os::unix::net::UnixStream) {
        let (stream, _) = self.listener.accept().unwrap();
        stream
            .set_read_timeout(Some(timeout(Duration::from_secs(10))))
            .unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        (line.trim().parse().unwrap(), stream)
    }
}

/// A7's scenario: the worker sends a last reply, forks a grandchild that keeps the channel open
/// for ten minutes, and exits with status 7 at once. The reply must come first, then the exit
/// status, seen through the pidfd although the channel stays open. Returns the ended handle.
pub(crate) fn a7_last_words_then_exit_behind_a_grandchild(
    mut worker: exsyst_worker::DedicatedWorker,
) -> exsyst_worker::DedicatedWorker {
    use tests_integration::workers::hostile::Act;
    // Both acts at once: the reply is on its way when the worker dies; it must not be lost.
    worker
        .send_message(&Act::Reply("last words".into()))
        .unwrap();
    worker
        .send_message(&Act::ForkAndExit {
            code: 7,
            millis: 600_000,
        })
        .unwrap();
    assert_eq!(worker.receive_message::<String>().unwrap(), "last words");
    let result = worker.receive_message_timeout::<String>(timeout(Duration::from_secs(10)));
    let (status, _) = expect_exited(result);
    assert_eq!(status.code(), Some(7));
    worker
}
