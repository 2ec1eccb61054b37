//! The library's diagnostics and its workers' standard error through the `log` facade (issue
//! 11, section 3), seen by a capturing logger.
//!
//! The logger is process-wide, so it is installed once for this whole test binary and every
//! test picks its own records out by target and pid: tests running in parallel never see each
//! other's.

use std::{
    sync::{Condvar, Mutex, OnceLock},
    time::{Duration, Instant},
};

use exsyst_worker::{
    AdminCookie, SharedServer, SharedServerConfig, SharedWorker, StderrMode, Worker, WorkerFactory,
    bootstrap::Error as Bootstrap, channel::serde_bytes::ByteBuf, pool,
};
use log::Level;
use tests_integration::workers::{
    dedicated::{Failer, Failure, Squarer, StderrWriter},
    pool::{Command, Commands},
    shared::{MySharedWorkerImpl, SHARED_COOKIE},
};

use crate::support::*;

/// One record as the logger saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    level: Level,
    target: String,
    message: String,
}

/// Keeps every record, and wakes those waiting for one.
struct Capture {
    entries: Mutex<Vec<Entry>>,
    added: Condvar,
}

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let entry = Entry {
            level: record.level(),
            target: record.target().to_owned(),
            message: record.args().to_string(),
        };
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry);
        self.added.notify_all();
    }

    fn flush(&self) {}
}

/// The logger of this test binary, installed on first use.
fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture: &'static Capture = Box::leak(Box::new(Capture {
            entries: Mutex::new(Vec::new()),
            added: Condvar::new(),
        }));
        log::set_logger(capture).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Trace);
        capture
    })
}

impl Capture {
    /// The records that `select` picks, in the order they were logged.
    fn matching(&self, select: impl Fn(&Entry) -> bool) -> Vec<Entry> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().filter(|e| select(e)).cloned().collect()
    }

    /// Waits until the records `select` picks are `count` or more, and returns them: logged by
    /// another thread (a worker's standard error is read by one), they may come a little after
    /// what the test waited for.
    fn wait_for(&self, count: usize, select: impl Fn(&Entry) -> bool) -> Vec<Entry> {
        let deadline = Instant::now() + timeout(Duration::from_secs(10));
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let picked: Vec<Entry> = entries.iter().filter(|e| select(e)).cloned().collect();
            let left = deadline.saturating_duration_since(Instant::now());
            if picked.len() >= count || left.is_zero() {
                return picked;
            }
            entries = self
                .added
                .wait_timeout(entries, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

fn entry(level: Level, target: &str, message: String) -> Entry {
    Entry {
        level,
        target: target.to_owned(),
        message,
    }
}

const BOOTSTRAP: &str = "exsyst_worker::bootstrap";

#[test]
fn every_line_a_worker_writes_to_stderr_is_one_record_in_order() {
    let capture = capture();
    let profile = profile().with_stderr(StderrMode::Log);
    let mut worker = WorkerFactory::with_profile(profile)
        .create_worker::<StderrWriter>()
        .unwrap();
    let pid = worker.pid();
    let long = "x".repeat(100_000);
    let mut expected: Vec<String> = (0..500).map(|i| format!("line {i}")).collect();
    expected.insert(250, long.clone());
    expected.push(String::new());
    expected.push("not UTF-8: \u{fffd}.".to_owned());
    expected.push("the last line, with no newline".to_owned());
    // Chunks cut across lines, and the long line in pieces: a record is a line, never a write.
    let mut bytes = Vec::new();
    for line in &expected[..expected.len() - 3] {
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(b"\nnot UTF-8: \xff.\nthe last line, with no newline");
    let chunks: Vec<ByteBuf> = bytes
        .chunks(7_777)
        .map(|c| ByteBuf::from(c.to_vec()))
        .collect();
    worker.send_message(&chunks).unwrap();
    assert_eq!(worker.receive_message::<usize>().unwrap(), chunks.len());
    // The last line is a record once the worker closes its standard error, when it exits.
    worker.close().unwrap();

    let target = "exsyst_worker::worker::stderr-writer";
    let prefix = format!("[pid {pid}] ");
    let records = capture.wait_for(expected.len(), |e| {
        e.target == target && e.message.starts_with(&prefix)
    });
    let want: Vec<Entry> = expected
        .iter()
        .map(|line| entry(Level::Info, target, format!("{prefix}{line}")))
        .collect();
    assert_eq!(records.len(), want.len());
    assert_eq!(records, want);
}

#[test]
fn the_log_mode_keeps_the_stderr_tail_for_errors_and_serializes() {
    let profile = profile().with_stderr(StderrMode::Log);
    assert_eq!(
        serde_json::to_value(StderrMode::Log).unwrap(),
        serde_json::json!("log")
    );
    let json = serde_json::to_string(&profile).unwrap();
    let back: exsyst_worker::BootstrapProfile = serde_json::from_str(&json).unwrap();
    assert_eq!(back.stderr(), StderrMode::Log);

    let capture = capture();
    let f = WorkerFactory::with_profile(profile);
    let mut w = f
        .create_worker_with_args::<Failer>(&Failure::Panic("gave up, logged".into()))
        .unwrap();
    let pid = w.pid();
    w.send_message("hello").unwrap();
    assert_eq!(w.receive_message::<String>().unwrap(), "hello");
    w.send_message("fail now").unwrap();
    match w.receive_message::<String>() {
        Err(Bootstrap::WorkerExited { stderr_tail, .. }) => {
            assert!(stderr_tail.contains("gave up, logged"), "{stderr_tail:?}")
        }
        other => panic!("expected the worker's death, got {other:?}"),
    }
    let prefix = format!("[pid {pid}] ");
    let records = capture.wait_for(1, |e| {
        e.target == "exsyst_worker::worker::failer"
            && e.message.starts_with(&prefix)
            && e.message.contains("gave up, logged")
    });
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].level, Level::Info);
}

#[test]
fn a_spawn_and_an_exit_are_debug_records_and_a_death_a_warning() {
    let capture = capture();
    let f = WorkerFactory::with_profile(profile().with_stderr(StderrMode::Capture));
    let worker = f.create_worker::<Squarer>().unwrap();
    let pid = worker.pid();
    assert!(worker.close().unwrap().success());
    let about =
        |e: &Entry| e.target == BOOTSTRAP && e.message.starts_with(&format!("worker {pid} "));
    assert_eq!(
        capture.matching(about),
        [
            entry(
                Level::Debug,
                BOOTSTRAP,
                format!("worker {pid} spawned, running squarer")
            ),
            entry(
                Level::Debug,
                BOOTSTRAP,
                format!("worker {pid} (squarer) exited: exit status: 0")
            ),
        ]
    );

    let mut w = f
        .create_worker_with_args::<Failer>(&Failure::Exit(7))
        .unwrap();
    let pid = w.pid();
    w.send_message("hello").unwrap();
    assert_eq!(w.receive_message::<String>().unwrap(), "hello");
    w.send_message("fail now").unwrap();
    assert!(matches!(
        w.receive_message::<String>(),
        Err(Bootstrap::WorkerExited { .. })
    ));
    drop(w);
    let about =
        |e: &Entry| e.target == BOOTSTRAP && e.message.starts_with(&format!("worker {pid} "));
    assert_eq!(
        capture.matching(about),
        [
            entry(
                Level::Debug,
                BOOTSTRAP,
                format!("worker {pid} spawned, running failer")
            ),
            entry(
                Level::Warn,
                BOOTSTRAP,
                format!("worker {pid} (failer) exited unexpectedly: exit status: 7")
            ),
        ]
    );
}

#[test]
fn a_pool_logs_a_replacement_and_the_restart_limit() {
    const POOL: &str = "exsyst_worker::pool";
    let capture = capture();
    // A window no other test uses, to tell this pool's restart-limit record from theirs.
    let window = Duration::from_secs(617);
    let pool = WorkerFactory::with_profile(profile())
        .create_worker_pool_builder()
        .size(1)
        .max_restarts(1, window)
        .build_tasks::<Commands>()
        .unwrap();
    let first = pool.pids()[0];
    assert!(pool.submit(Command::Exit(3)).unwrap().wait().is_err());
    // Replaced before the task failed: the record is there already.
    let second = pool.pids()[0];
    assert_ne!(second, first);
    let replaced = capture
        .matching(|e| e.target == POOL && e.message.starts_with(&format!("worker {first} ")));
    assert_eq!(
        replaced,
        [entry(
            Level::Warn,
            POOL,
            format!("worker {first} (slot 0) failed; replaced by worker {second}")
        )]
    );

    assert!(pool.submit(Command::Exit(3)).unwrap().wait().is_err());
    let refused = format!(
        "restart limit reached, the pool fails: workers failed more than 1 times within {window:?}"
    );
    let limit = capture.matching(|e| e.target == POOL && e.message == refused);
    assert_eq!(limit, [entry(Level::Error, POOL, refused.clone())]);
    assert!(matches!(pool.close(), Err(pool::Error::PoolFailed { .. })));
}

#[test]
fn a_wrong_cookie_on_a_shared_server_is_a_warning_without_the_cookie() {
    const SHARED: &str = "exsyst_worker::shared";
    let capture = capture();
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix://{}/worker.sock", dir.path().display());
    let config =
        SharedServerConfig::default().with_cookie(AdminCookie::new(SHARED_COOKIE).unwrap());
    let server = SharedServer::bind(&address, config)
        .unwrap()
        .spawn(|| MySharedWorkerImpl::new(()))
        .unwrap();
    let guess = "w40ng-guess-7c1d-e5a0";
    let mut worker = SharedWorker::connect(&address).unwrap();
    assert!(matches!(
        worker.stop(&AdminCookie::new(guess).unwrap()),
        Err(exsyst_worker::shared::Error::Unauthorized { .. })
    ));
    let pid = std::process::id();
    let prefix = format!("shared worker {address} (pid {pid}): ");
    let warned = capture.wait_for(1, |e| {
        e.target == SHARED && e.message.starts_with(&prefix) && e.message.contains("wrong")
    });
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0].level, Level::Warn);
    let said = &warned[0].message;
    assert!(
        said.starts_with(&format!(
            "{prefix}wrong admin cookie from unix:pid={pid},uid="
        )) && said.ends_with("(failure 1 of 3)"),
        "{said}"
    );
    drop(worker);
    server.stop();
    server.join().unwrap();
    // Neither cookie in any record this server logged.
    let all = capture.matching(|e| e.message.starts_with(&prefix));
    assert!(
        all.iter().any(|e| e.message.ends_with("listening")),
        "{all:?}"
    );
    for e in &all {
        assert!(!e.message.contains(guess), "{e:?}");
        assert!(!e.message.contains(SHARED_COOKIE), "{e:?}");
    }
}

#[test]
fn a_start_the_kill_switch_refuses_is_a_warning_and_a_question_is_silent() {
    const KILL_SWITCH: &str = "exsyst_worker::killswitch";
    let capture = capture();
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix://{}/refused.sock", dir.path().display());
    let switch = exsyst_worker::KillSwitch::new(dir.path().join("kill-switch.json"));
    switch.disable_address(&address).unwrap();
    assert!(switch.is_disabled(&address).unwrap());
    let about = |e: &Entry| e.target == KILL_SWITCH && e.message.contains(&address);
    assert_eq!(capture.matching(about), []);
    assert!(matches!(
        switch.check_start(&address),
        Err(exsyst_worker::killswitch::Error::Disabled {
            globally: false,
            ..
        })
    ));
    assert_eq!(
        capture.matching(about),
        [entry(
            Level::Warn,
            KILL_SWITCH,
            format!(
                "kill switch refused to start the shared worker at {address}: this worker disabled"
            )
        )]
    );
}
