//! Servers in child processes: this test binary re-executed to play one role (see the `helper`
//! test in `tests.rs`), reporting on its standard output.

use std::{
    io::{BufRead, BufReader, Write},
    os::fd::OwnedFd,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::Instant,
};

use worker_shared::{AdminCookie, SharedRegistryExt, SharedServer, SharedServerConfig};

use crate::{
    support::{COOKIE, timeout},
    workers::{Counts, Greeter},
};

/// Tells the `helper` test which role to play; absent in a normal run.
pub(crate) const ROLE_VAR: &str = "EXSYST_SHARED_TEST_ROLE";
/// The address a role serves.
pub(crate) const ADDRESS_VAR: &str = "EXSYST_SHARED_TEST_ADDRESS";
/// Present: the role restores SIGPIPE's default action (death) before it serves, as some
/// programs do.
pub(crate) const SIGPIPE_VAR: &str = "EXSYST_SHARED_TEST_SIGPIPE_DEFAULT";
/// Reports start with this, as libtest shares the standard output.
const MARKER: &str = "@@shared@@ ";

/// The arguments that make this test binary run the `helper` test alone.
pub(crate) const HELPER_ARGS: [&str; 4] = ["--exact", "helper", "--nocapture", "--test-threads=1"];

pub(crate) fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{MARKER}{line}").unwrap();
    out.flush().unwrap();
}

/// Plays `role`, in the child.
pub(crate) fn play(role: &str) {
    match role {
        "serve" => serve(false),
        "activated" => serve(true),
        "daemon" => daemon(),
        "impostor" => crate::trust::impostor(),
        "stale" => crate::trust::stale(),
        "runtime-dir" => crate::trust::runtime_dir_role(),
        other => panic!("unknown role {other:?}"),
    }
}

/// Serves a greeter embedded, stopping on SIGTERM; reports `listening ADDRESS ACTIVATED ENV`,
/// then `exit on_stop=N terminate=N RESULT`.
fn serve(activated: bool) {
    if std::env::var_os(SIGPIPE_VAR).is_some() {
        // SAFETY: sets a signal's action to its default; no handler is involved.
        let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        assert_ne!(previous, libc::SIG_ERR);
    }
    let address = std::env::var(ADDRESS_VAR).unwrap();
    let config = SharedServerConfig::default()
        .with_cookie(AdminCookie::new(COOKIE).unwrap())
        .with_stop_on_signals(true)
        .with_socket_activation(activated);
    let server = SharedServer::bind(&address, config).unwrap();
    let env_left =
        std::env::var_os("LISTEN_PID").is_some() || std::env::var_os("LISTEN_FDS").is_some();
    report(&format!(
        "listening {} {} {}",
        server.address(),
        server.is_socket_activated(),
        if env_left { "env-left" } else { "env-clean" }
    ));
    let counts = Arc::new(Counts::default());
    let result = server
        .with_log(|line| eprintln!("server: {line}"))
        .run(Greeter::new(Arc::clone(&counts)));
    let count = |c: &AtomicUsize| c.load(Ordering::SeqCst);
    report(&format!(
        "exit on_stop={} terminate={} {}",
        count(&counts.on_stop),
        count(&counts.terminate),
        match result {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("error {e}"),
        }
    ));
}

/// Runs as a daemon started through the registry: the channel is on descriptor 3 (the
/// standard output carried libtest's own words), so it goes back to 1 first.
fn daemon() {
    // SAFETY: plain descriptor calls at the start of the child, before anything reads or
    // writes the standard output again; descriptor 3 is the channel the shell moved there.
    unsafe {
        assert_eq!(libc::dup2(3, 1), 1);
        libc::close(3);
    }
    worker_bootstrap::registry()
        .shared::<Greeter>()
        .run_if_worker();
    panic!("the daemon role runs only in a worker process");
}

/// A helper process, killed and reaped on drop.
pub(crate) struct Helper {
    child: Child,
    reports: Receiver<String>,
}

impl Helper {
    /// Starts this binary playing `role`, serving `address`; `stdin` becomes its standard
    /// input, and `shell` (a `sh -c` script, `$0` being this binary) runs it when given.
    pub(crate) fn spawn(
        role: &str,
        address: &str,
        stdin: Option<OwnedFd>,
        shell: Option<&str>,
    ) -> Helper {
        Self::spawn_with_env(role, address, stdin, shell, &[])
    }

    /// As [`Helper::spawn`], with more environment variables.
    pub(crate) fn spawn_with_env(
        role: &str,
        address: &str,
        stdin: Option<OwnedFd>,
        shell: Option<&str>,
        env: &[(&str, &str)],
    ) -> Helper {
        Self::spawn_configured(role, address, stdin, shell, env, |_| {})
    }

    /// As [`Helper::spawn`], with `XDG_RUNTIME_DIR` set to `dir`.
    pub(crate) fn spawn_with_runtime_dir(role: &str, dir: &Path) -> Helper {
        Self::spawn_configured(role, "", None, None, &[], |command| {
            command.env("XDG_RUNTIME_DIR", dir);
        })
    }

    /// As [`Helper::spawn`], running as user and group `uid` (the tests run as root).
    pub(crate) fn spawn_as(role: &str, address: &str, uid: u32) -> Helper {
        Self::spawn_configured(role, address, None, None, &[], |command| {
            std::os::unix::process::CommandExt::uid(command, uid);
            std::os::unix::process::CommandExt::gid(command, uid);
        })
    }

    fn spawn_configured(
        role: &str,
        address: &str,
        stdin: Option<OwnedFd>,
        shell: Option<&str>,
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Helper {
        let exe = std::env::current_exe().unwrap();
        let mut command = match shell {
            Some(script) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(script).arg(&exe).args(HELPER_ARGS);
                c
            }
            None => {
                let mut c = Command::new(&exe);
                c.args(HELPER_ARGS);
                c
            }
        };
        command
            .envs(env.iter().copied())
            .env(ROLE_VAR, role)
            .env(ADDRESS_VAR, address)
            .stdin(stdin.map_or_else(Stdio::null, Stdio::from))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        configure(&mut command);
        let mut child = command.spawn().unwrap();
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
        Helper { child, reports }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the next report, which must start with `word`; returns the rest.
    pub(crate) fn expect(&self, word: &str) -> String {
        let within = timeout(30.0);
        let deadline = Instant::now() + within;
        let line = match self
            .reports
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!("no {word:?} report within {within:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the helper ended before {word:?}"),
        };
        line.strip_prefix(word)
            .unwrap_or_else(|| panic!("the helper reported {line:?}, not {word:?}"))
            .trim()
            .to_owned()
    }

    /// Sends `signal` to the helper.
    pub(crate) fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill only sends a signal, to a child of ours that is not reaped yet.
        let sent = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(sent, 0);
    }

    /// Waits for the helper to exit.
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

/// The script that starts a child the way systemd's socket activation does: its standard
/// input becomes descriptor 3, and `LISTEN_PID` names the process itself.
pub(crate) const SOCKET_ACTIVATION: &str =
    r#"export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" "$@" 3<&0 0</dev/null"#;

/// Whether `path` exists.
pub(crate) fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}
