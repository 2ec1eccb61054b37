//! Real shared workers (on a thread of this process, or in a child process), the programs run
//! as an operator runs them, and what the tests look at.

use std::{
    collections::HashSet,
    fs::OpenOptions,
    io::{BufRead, BufReader, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::Duration,
};

use exsyst_worker::{
    AdminCookie, BoxError, Connection, EventedWorker, SharedServer, SharedServerConfig,
    SharedWorkerImpl, Worker, WorkerLoop, shared::RunningServer, worker::WorkerStatus,
};

/// The admin cookie of the tests' workers; it must never show on a command line.
pub(crate) const SECRET: &str = "cli-test-secret-7f3a9c";

/// Timeouts for waiting on events, scaled by `EXSYST_TEST_TIMEOUT_SCALE` for slow machines.
pub(crate) fn timeout(secs: f64) -> Duration {
    let scale = std::env::var("EXSYST_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(1.0);
    Duration::from_secs_f64(secs * scale)
}

/// A shared worker that reports what it is given: one status for anyone, another for the
/// holder of the admin cookie.
#[derive(Debug, Default)]
pub(crate) struct Reporter {
    pub public: Option<WorkerStatus>,
    pub privileged: Option<WorkerStatus>,
}

impl Worker for Reporter {
    const NAME: &'static str = "reporter";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Reporter::default())
    }
}

impl EventedWorker for Reporter {
    type Message = String;
    type Reply = String;

    fn on_message(
        &mut self,
        message: String,
        connection: &mut Connection<String>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        connection.send(&message)?;
        Ok(())
    }
}

impl SharedWorkerImpl for Reporter {
    fn on_query(&mut self, privileged: bool) -> Option<WorkerStatus> {
        if privileged {
            self.privileged.clone()
        } else {
            self.public.clone()
        }
    }
}

pub(crate) fn cookie() -> AdminCookie {
    AdminCookie::new(SECRET).unwrap()
}

/// `unix://DIR/NAME.sock`.
pub(crate) fn address_in(dir: &Path, name: &str) -> String {
    format!("unix://{}/{name}.sock", dir.display())
}

/// Serves a [`Reporter`] on a thread of this process, with the admin cookie; stopped when
/// dropped.
pub(crate) fn serve(
    address: &str,
    public: WorkerStatus,
    privileged: WorkerStatus,
) -> RunningServer {
    serve_with(
        address,
        SharedServerConfig::default().with_cookie(cookie()),
        public,
        privileged,
    )
}

pub(crate) fn serve_with(
    address: &str,
    config: SharedServerConfig,
    public: WorkerStatus,
    privileged: WorkerStatus,
) -> RunningServer {
    SharedServer::bind(address, config)
        .unwrap()
        .with_log(|_| {})
        .spawn(move || {
            Ok(Reporter {
                public: Some(public),
                privileged: Some(privileged),
            })
        })
        .unwrap()
}

/// Writes `secret` to DIR/NAME, readable by its owner only (or with `mode`).
pub(crate) fn secret_file(dir: &Path, name: &str, secret: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .unwrap();
    writeln!(file, "{secret}").unwrap();
    path
}

/// What a program run said and did.
#[derive(Debug)]
pub(crate) struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A program of this package, run with a clean environment: no admin cookie, no config but
/// the one given.
pub(crate) struct Program {
    command: Command,
}

impl Program {
    pub(crate) fn check() -> Program {
        Program::new(env!("CARGO_BIN_EXE_check_shared_worker"))
    }

    pub(crate) fn ctl() -> Program {
        Program::new(env!("CARGO_BIN_EXE_worker-ctl"))
    }

    fn new(path: &str) -> Program {
        let mut command = Command::new(path);
        command
            .env_remove("EXSYST_WORKER_ADMIN_COOKIE")
            .env_remove("EXSYST_WORKER_CONFIG")
            .env("XDG_CONFIG_HOME", "/nonexistent/exsyst-worker-cli-tests")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Program { command }
    }

    pub(crate) fn args<S: AsRef<std::ffi::OsStr>>(
        mut self,
        args: impl IntoIterator<Item = S>,
    ) -> Self {
        self.command.args(args);
        self
    }

    pub(crate) fn env(mut self, key: &str, value: &str) -> Self {
        self.command.env(key, value);
        self
    }

    pub(crate) fn spawn(mut self) -> Child {
        self.command.spawn().unwrap()
    }

    pub(crate) fn run(self) -> Run {
        let output = self.spawn().wait_with_output().unwrap();
        Run {
            code: output
                .status
                .code()
                .expect("the program exited, not killed"),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }
}

/// The command lines of process `root` and its descendants now, by pid.
pub(crate) fn command_lines(root: u32) -> Vec<(u32, String)> {
    let mut parents = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The name in parentheses may hold spaces: the fields after its last `)` are split.
        let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        if let Some(ppid) = after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
        {
            parents.insert(pid, ppid);
        }
    }
    let mut family = HashSet::from([root]);
    loop {
        let before = family.len();
        for (pid, ppid) in &parents {
            if family.contains(ppid) {
                family.insert(*pid);
            }
        }
        if family.len() == before {
            break;
        }
    }
    let mut lines: Vec<(u32, String)> = family
        .into_iter()
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&raw).replace('\0', " ")))
        })
        .collect();
    lines.sort();
    lines
}

/// Tells the `helper` test which role to play; absent in a normal run.
pub(crate) const ROLE_VAR: &str = "EXSYST_CLI_TEST_ROLE";
const ADDRESS_VAR: &str = "EXSYST_CLI_TEST_ADDRESS";
const COOKIE_FILE_VAR: &str = "EXSYST_CLI_TEST_COOKIE_FILE";
/// Reports start with this, as libtest shares the standard output.
const MARKER: &str = "@@cli@@ ";

/// Plays `role` in a child: `serve` serves a [`Reporter`] whose cookie comes from a file, stops
/// on SIGTERM too, and reports `listening PID`, then `exit RESULT`.
pub(crate) fn play(role: &str) {
    assert_eq!(role, "serve", "unknown role");
    let report = |line: &str| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "\n{MARKER}{line}").unwrap();
        out.flush().unwrap();
    };
    let address = std::env::var(ADDRESS_VAR).unwrap();
    let cookie = AdminCookie::from_file(std::env::var(COOKIE_FILE_VAR).unwrap()).unwrap();
    let config = SharedServerConfig::default()
        .with_cookie(cookie)
        .with_stop_on_signals(true);
    let server = SharedServer::bind(&address, config).unwrap();
    report(&format!("listening {}", std::process::id()));
    let result = server.with_log(|_| {}).run(Reporter {
        public: Some("helper up".into()),
        privileged: Some("helper up, privileged".into()),
    });
    report(&format!("exit {result:?}"));
}

/// A shared worker in a child process (this test binary in the `serve` role), killed and
/// reaped on drop.
pub(crate) struct Helper {
    child: Child,
    reports: Receiver<String>,
}

impl Helper {
    /// Starts a worker at `address` whose admin cookie is in `cookie_file`, and waits until it
    /// listens.
    pub(crate) fn start(address: &str, cookie_file: &Path) -> Helper {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "helper", "--nocapture", "--test-threads=1"])
            .env(ROLE_VAR, "serve")
            .env(ADDRESS_VAR, address)
            .env(COOKIE_FILE_VAR, cookie_file)
            .stdin(Stdio::null())
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
        let helper = Helper { child, reports };
        assert_eq!(helper.expect("listening"), helper.pid().to_string());
        helper
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the next report, which must start with `word`; returns the rest.
    pub(crate) fn expect(&self, word: &str) -> String {
        let within = timeout(30.0);
        let line = match self.reports.recv_timeout(within) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!("no {word:?} report within {within:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the helper ended before {word:?}"),
        };
        line.strip_prefix(word)
            .unwrap_or_else(|| panic!("the helper reported {line:?}, not {word:?}"))
            .trim()
            .to_owned()
    }

    /// Waits for the helper's exit, which it reported already.
    pub(crate) fn wait(mut self) -> ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Cells in columns two spaces apart, the last one unpadded: what `worker-ctl list` prints.
pub(crate) fn columns(rows: &[&[&str]]) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap())
        .collect();
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
                .collect();
            format!("{}\n", cells.join("  ").trim_end())
        })
        .collect()
}
