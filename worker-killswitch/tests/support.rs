//! Child processes for the tests: the test binary re-executed to run one helper role.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

/// Tells the `helper` test which role to play; absent in a normal test run.
pub(crate) const ROLE_VAR: &str = "EXSYST_KILLSWITCH_TEST_HELPER";
pub(crate) const PATH_VAR: &str = "EXSYST_KILLSWITCH_TEST_PATH";
pub(crate) const ARG_VAR: &str = "EXSYST_KILLSWITCH_TEST_ARG";
/// Helpers prefix their reports with this, because libtest shares their stdout (with
/// `--nocapture` it may print `test helper ... ` on the same line).
pub(crate) const MARKER: &str = "@@killswitch@@ ";

/// `secs`, multiplied by `EXSYST_TEST_TIMEOUT_SCALE` for slow machines.
pub(crate) fn timeout(secs: u64) -> Duration {
    let scale = std::env::var("EXSYST_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(1.0);
    Duration::from_secs_f64(secs as f64 * scale)
}

/// Prints a report for the parent to wait on.
pub(crate) fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{MARKER}{line}").unwrap();
    out.flush().unwrap();
}

pub(crate) struct Helper {
    role: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    reports: Receiver<String>,
}

impl Helper {
    /// Starts the test binary as a helper playing `role` on the kill switch at `path`.
    pub(crate) fn spawn(role: &str, path: &Path, arg: &str) -> Helper {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "helper", "--nocapture", "--test-threads=1"])
            .env(ROLE_VAR, role)
            .env(PATH_VAR, path)
            .env(ARG_VAR, arg)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, reports) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find(MARKER) {
                    if tx.send(line[at + MARKER.len()..].to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        Helper {
            role: role.to_owned(),
            stdin: child.stdin.take(),
            child: Some(child),
            reports,
        }
    }

    /// Waits for the next report, which must start with `word`; returns the rest of it.
    pub(crate) fn expect(&self, word: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let line = match self
            .reports
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "helper {} did not report {word:?} within {within:?}",
                    self.role
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("helper {} exited before reporting {word:?}", self.role)
            }
        };
        let rest = line
            .strip_prefix(word)
            .unwrap_or_else(|| panic!("helper {} reported {line:?}, not {word:?}", self.role));
        rest.trim().to_owned()
    }

    /// Sends one line to the helper's stdin.
    pub(crate) fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Kills the helper with SIGKILL and reaps it.
    pub(crate) fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "helper {} was not killed by SIGKILL: {status}",
            self.role
        );
    }

    /// Closes the helper's stdin (its cue to stop, for the roles that wait), waits for it to
    /// exit successfully, and returns the reports it has not been asked for.
    pub(crate) fn finish(mut self, within: Duration) -> Vec<String> {
        drop(self.stdin.take());
        let mut child = self.child.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // std has no wait with a timeout; a stuck helper exits by itself once this process
        // dies, because every blocking role ends at the end of its stdin.
        thread::spawn(move || tx.send(child.wait()));
        let status = match rx.recv_timeout(within) {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("helper {} did not exit within {within:?}", self.role),
        };
        assert!(status.success(), "helper {} failed: {status}", self.role);
        self.reports.iter().collect()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // A failed assertion must not leave helpers running.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
