//! A pretend user crate whose own unit tests start workers, through the one line of
//! [`exsyst_worker::enable_test_support!`] (unpublished).
//!
//! Its workers are what a user's library would ship: a raw [`Squarer`], an evented [`Echo`], a
//! task worker [`Doubler`]. Its `#[cfg(test)]` module starts them from `#[test]` functions, as
//! `cargo test` runs them (every test a thread of one process) and as `cargo nextest run` does
//! (every test a process of its own, `--exact NAME`); `tests-integration`'s `test_support`
//! module runs this crate's tests under nextest, and its test binary directly.

#![forbid(unsafe_code)]

use exsyst_worker::{
    BoxError, Connection, EventedWorker, RawWorker, Worker, WorkerChannel, WorkerLoop,
    pool::TaskWorker,
};

// The one line: the implementations the unit tests start. (The tests module adds its own
// test-only workers with a second line, which composes with this one.)
#[cfg(test)]
exsyst_worker::enable_test_support!(
    registry()
        .raw::<Squarer>()
        .evented::<Echo>()
        .task::<Doubler>()
);

/// `n` squared: library code that needs no worker.
pub fn square(n: i64) -> i64 {
    n * n
}

/// A raw worker: answers each number with its square.
///
/// A doctest is a test crate too: the same line starts its workers.
///
/// ```
/// use tests_support_demo::Squarer;
///
/// exsyst_worker::enable_test_support!(registry().raw::<Squarer>());
///
/// let mut worker = exsyst_worker::WorkerFactory::new().create_worker::<Squarer>()?;
/// worker.send_message(&4i64)?;
/// assert_eq!(worker.receive_message::<i64>()?, 16);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Squarer;

impl Worker for Squarer {
    const NAME: &'static str = "demo-squarer";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Squarer)
    }
}

impl RawWorker for Squarer {
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
        while let Some(n) = channel.next_message::<i64>()? {
            channel.send_message(&square(n))?;
        }
        Ok(())
    }
}

/// An evented worker: answers each text with `echo: ` and the text.
///
/// Rustdoc merges the doctests of a crate into one binary: each one's line adds to the others'.
///
/// ```
/// use tests_support_demo::Echo;
///
/// exsyst_worker::enable_test_support!(registry().evented::<Echo>());
///
/// let mut worker = exsyst_worker::WorkerFactory::new().create_worker::<Echo>()?;
/// worker.send_message("hi")?;
/// assert_eq!(worker.receive_message::<String>()?, "echo: hi");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Echo;

impl Worker for Echo {
    const NAME: &'static str = "demo-echo";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Echo)
    }
}

impl EventedWorker for Echo {
    type Message = String;
    type Reply = String;

    fn on_message(
        &mut self,
        message: String,
        channel: &mut Connection<String>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        channel.send(&format!("echo: {message}"))?;
        Ok(())
    }
}

/// A task worker: doubles numbers; 13 is a task error, and `u64::MAX` makes it panic.
#[derive(Debug)]
pub struct Doubler;

impl Worker for Doubler {
    const NAME: &'static str = "demo-doubler";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Doubler)
    }
}

impl TaskWorker for Doubler {
    type Item = u64;
    type Output = u64;
    fn handle(&mut self, n: u64) -> Result<u64, String> {
        match n {
            13 => Err("13 is unlucky".to_owned()),
            u64::MAX => panic!("asked to double u64::MAX"),
            n => Ok(2 * n),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{thread, time::Duration};

    use exsyst_worker::{
        BootstrapProfile, Registry, SharedWorkerImpl, WorkerFactory, bootstrap, pool,
    };

    use super::*;

    // A second line, for the workers only these tests use: every registry given to the macro
    // in the binary is there.
    exsyst_worker::enable_test_support!(
        registry()
            .raw::<Panicker>()
            .raw::<OneShot>()
            .raw::<Threaded>()
            .raw::<EnvReport>()
            .shared::<Counter>()
    );

    /// `secs` seconds, times `EXSYST_TEST_TIMEOUT_SCALE` for slow machines.
    fn timeout(secs: u64) -> Duration {
        let scale = std::env::var("EXSYST_TEST_TIMEOUT_SCALE")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .unwrap_or(1.0);
        Duration::from_secs(secs).mul_f64(scale)
    }

    /// Workers whose standard error is kept for their errors, not copied to the test's, and
    /// whose panics print no backtrace (which would push the message out of the kept tail
    /// when the developer's environment asks for backtraces).
    fn quiet() -> WorkerFactory {
        WorkerFactory::with_profile(
            BootstrapProfile::new()
                .with_stderr(exsyst_worker::StderrMode::Capture)
                .with_env("RUST_BACKTRACE", "0"),
        )
    }

    /// Panics with the text it receives.
    struct Panicker;

    impl Worker for Panicker {
        const NAME: &'static str = "demo-panicker";
        type Args = ();
        fn new((): ()) -> Result<Self, BoxError> {
            Ok(Panicker)
        }
    }

    impl RawWorker for Panicker {
        fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
            let text = channel.next_message::<String>()?.unwrap_or_default();
            panic!("{text}");
        }
    }

    /// Sends its constructor's text, then returns.
    struct OneShot(String);

    impl Worker for OneShot {
        const NAME: &'static str = "demo-one-shot";
        type Args = String;
        fn new(text: String) -> Result<Self, BoxError> {
            Ok(OneShot(text))
        }
    }

    impl RawWorker for OneShot {
        fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
            channel.send_message(&self.0)?;
            Ok(())
        }
    }

    /// Squares on a thread of its own: threads work in a worker that started before `main`.
    struct Threaded;

    impl Worker for Threaded {
        const NAME: &'static str = "demo-threaded";
        type Args = ();
        fn new((): ()) -> Result<Self, BoxError> {
            Ok(Threaded)
        }
    }

    impl RawWorker for Threaded {
        fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
            while let Some(n) = channel.next_message::<i64>()? {
                let squared = thread::spawn(move || square(n))
                    .join()
                    .map_err(|_| "the squaring thread panicked")?;
                channel.send_message(&squared)?;
            }
            Ok(())
        }
    }

    /// Answers with the names of the `EXSYST_WORKER_*` variables in its environment (what the
    /// processes it starts would inherit) and whether it is a worker by `Registry::is_worker`.
    struct EnvReport;

    impl Worker for EnvReport {
        const NAME: &'static str = "demo-env-report";
        type Args = ();
        fn new((): ()) -> Result<Self, BoxError> {
            Ok(EnvReport)
        }
    }

    impl RawWorker for EnvReport {
        fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
            let names: Vec<String> = std::env::vars_os()
                .filter_map(|(name, _)| name.into_string().ok())
                .filter(|name| name.starts_with("EXSYST_WORKER_"))
                .collect();
            channel.send_message(&(names, Registry::is_worker()))?;
            Ok(())
        }
    }

    /// A shared worker: answers each text with how many it has received, and the text.
    struct Counter(u64);

    impl Worker for Counter {
        const NAME: &'static str = "demo-counter";
        type Args = ();
        fn new((): ()) -> Result<Self, BoxError> {
            Ok(Counter(0))
        }
    }

    impl EventedWorker for Counter {
        type Message = String;
        type Reply = String;

        fn on_message(
            &mut self,
            message: String,
            connection: &mut Connection<String>,
            _: &mut WorkerLoop<Self>,
        ) -> Result<(), BoxError> {
            self.0 += 1;
            connection.send(&format!("{}: {message}", self.0))?;
            Ok(())
        }
    }

    impl SharedWorkerImpl for Counter {}

    /// Stops the shared worker at an address when dropped, so that a failed test leaves no
    /// daemon behind.
    struct StopOnDrop<'a>(&'a WorkerFactory, &'a str);

    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.stop_shared_worker(self.1);
        }
    }

    /// Not given to the macro.
    struct Unlisted;

    impl Worker for Unlisted {
        const NAME: &'static str = "demo-unlisted";
        type Args = ();
        fn new((): ()) -> Result<Self, BoxError> {
            Ok(Unlisted)
        }
    }

    #[test]
    fn a_raw_worker_squares() {
        let mut worker = WorkerFactory::new().create_worker::<Squarer>().unwrap();
        for n in [0, 12, -7] {
            worker.send_message(&n).unwrap();
            assert_eq!(
                worker.receive_message_timeout::<i64>(timeout(10)).unwrap(),
                n * n
            );
        }
        assert_eq!(worker.close().unwrap().code(), Some(0));
    }

    #[test]
    fn an_evented_worker_echoes() {
        let mut worker = WorkerFactory::new().create_worker::<Echo>().unwrap();
        for text in ["one", "two"] {
            worker.send_message(text).unwrap();
            assert_eq!(
                worker
                    .receive_message_timeout::<String>(timeout(10))
                    .unwrap(),
                format!("echo: {text}")
            );
        }
        assert_eq!(worker.close().unwrap().code(), Some(0));
    }

    #[test]
    fn a_task_pool_maps_and_reports_a_task_error() {
        let pool = WorkerFactory::new()
            .create_task_pool::<Doubler>(Some(2))
            .unwrap();
        let expected: Vec<u64> = (100..200).map(|n| 2 * n).collect();
        assert_eq!(pool.map(100..200).unwrap(), expected);
        match pool.submit(13).unwrap().wait() {
            Err(pool::Error::Task { message }) => assert_eq!(message, "13 is unlucky"),
            other => panic!("expected the task's error, got {other:?}"),
        }
        assert_eq!(pool.submit(21).unwrap().wait().unwrap(), 42);
    }

    #[test]
    fn a_worker_pool_answers_from_whichever_worker_is_ready() {
        let mut pool = WorkerFactory::new()
            .create_worker_pool::<Squarer>(Some(3))
            .unwrap();
        assert_eq!(pool.len(), 3);
        for index in 0..3 {
            pool.send_message(index, &(index as i64 + 2)).unwrap();
        }
        let mut answers: Vec<(usize, i64)> = (0..3)
            .map(|_| pool.receive_message_timeout::<i64>(timeout(10)).unwrap())
            .collect();
        answers.sort();
        assert_eq!(answers, [(0, 4), (1, 9), (2, 16)]);
    }

    #[test]
    fn workers_start_from_many_test_threads_at_once() {
        // libtest runs the other tests on threads of this process meanwhile.
        let threads: Vec<_> = (0..8i64)
            .map(|t| {
                thread::spawn(move || {
                    let mut worker = WorkerFactory::new().create_worker::<Squarer>().unwrap();
                    (0..20i64)
                        .map(|i| {
                            let n = t * 100 + i;
                            worker.send_message(&n).unwrap();
                            let got = worker.receive_message_timeout::<i64>(timeout(10)).unwrap();
                            (n, got)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for thread in threads {
            for (n, got) in thread.join().unwrap() {
                assert_eq!(got, n * n);
            }
        }
    }

    #[test]
    fn a_panicking_worker_is_a_typed_error_with_its_message() {
        let mut worker = quiet().create_worker::<Panicker>().unwrap();
        let pid = worker.pid();
        worker.send_message("the demo worker gave up").unwrap();
        match worker.receive_message_timeout::<String>(timeout(10)) {
            Err(bootstrap::Error::WorkerExited {
                pid: p,
                implementation,
                status,
                stderr_tail,
            }) => {
                assert_eq!(p, pid);
                assert_eq!(implementation, "demo-panicker");
                // What a panic out of `main` gives, though the worker ran before `main`.
                assert_eq!(status.code(), Some(101));
                assert!(
                    stderr_tail.contains("the demo worker gave up"),
                    "{stderr_tail:?}"
                );
            }
            other => panic!("expected the worker's exit, got {other:?}"),
        }
    }

    #[test]
    fn a_panicking_task_worker_fails_its_task_and_is_replaced() {
        let pool = quiet().create_task_pool::<Doubler>(Some(1)).unwrap();
        match pool.submit(u64::MAX).unwrap().wait() {
            Err(pool::Error::Worker { source, .. }) => match &*source {
                bootstrap::Error::WorkerExited {
                    status,
                    stderr_tail,
                    ..
                } => {
                    assert_eq!(status.code(), Some(101));
                    assert!(
                        stderr_tail.contains("asked to double u64::MAX"),
                        "{stderr_tail:?}"
                    );
                }
                other => panic!("expected the worker's exit, got {other:?}"),
            },
            other => panic!("expected the worker's death, got {other:?}"),
        }
        assert_eq!(pool.submit(5).unwrap().wait().unwrap(), 10);
    }

    #[test]
    fn the_channel_carries_the_workers_frames_and_nothing_else() {
        // Had libtest started in the worker, its `running 1 test` would come before the frame
        // and its summary after it, on the same standard output: the first receive would be a
        // framing error, or the second would not be the clean end of a worker that exited 0.
        let mut worker = quiet()
            .create_worker_with_args::<OneShot>(&"only this".to_owned())
            .unwrap();
        assert_eq!(
            worker
                .receive_message_timeout::<String>(timeout(10))
                .unwrap(),
            "only this"
        );
        match worker.receive_message_timeout::<String>(timeout(10)) {
            Err(bootstrap::Error::WorkerExited {
                status,
                stderr_tail,
                ..
            }) => {
                assert_eq!(status.code(), Some(0));
                assert_eq!(stderr_tail, "");
            }
            other => panic!("expected the worker's clean exit, got {other:?}"),
        }
    }

    #[test]
    fn threads_work_in_a_worker_started_before_main() {
        let mut worker = WorkerFactory::new().create_worker::<Threaded>().unwrap();
        worker.send_message(&9i64).unwrap();
        assert_eq!(
            worker.receive_message_timeout::<i64>(timeout(10)).unwrap(),
            81
        );
    }

    #[test]
    fn the_worker_markers_do_not_reach_what_a_worker_starts() {
        let mut worker = WorkerFactory::new().create_worker::<EnvReport>().unwrap();
        let (names, is_worker) = worker
            .receive_message_timeout::<(Vec<String>, bool)>(timeout(10))
            .unwrap();
        assert_eq!(names, Vec::<String>::new());
        assert!(!is_worker);
    }

    #[test]
    fn an_implementation_no_line_names_is_the_workers_error() {
        let mut worker = quiet().create_worker::<Unlisted>().unwrap();
        match worker.receive_message_timeout::<String>(timeout(10)) {
            Err(bootstrap::Error::WorkerExited {
                status,
                stderr_tail,
                ..
            }) => {
                assert_eq!(status.code(), Some(bootstrap::EXIT_FAILURE));
                assert!(
                    stderr_tail
                        .contains("no worker implementation named \"demo-unlisted\" is registered"),
                    "{stderr_tail:?}"
                );
            }
            other => panic!("expected the worker's failure, got {other:?}"),
        }
    }

    #[test]
    fn a_shared_worker_daemon_starts_from_a_test_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("unix://{}", dir.path().join("counter.sock").display());
        let factory = WorkerFactory::with_profile(
            BootstrapProfile::new()
                .with_admin_cookie("the demo's cookie")
                .with_output_path(dir.path().join("daemon.log")),
        );
        let _stop = StopOnDrop(&factory, &address);
        let mut first = factory
            .connect_to_shared_worker::<Counter>(&address)
            .unwrap();
        // The daemon is this test binary, detached: another process, which outlives none of
        // the test's work.
        let pid = first.pid();
        assert_ne!(pid, std::process::id());
        first.send_message("one").unwrap();
        assert_eq!(
            first
                .receive_message_timeout::<String>(timeout(10))
                .unwrap(),
            "1: one"
        );
        let mut second = factory
            .connect_to_shared_worker::<Counter>(&address)
            .unwrap();
        assert_eq!(second.pid(), pid);
        second.send_message("two").unwrap();
        assert_eq!(
            second
                .receive_message_timeout::<String>(timeout(10))
                .unwrap(),
            "2: two"
        );
        factory.stop_shared_worker(&address).unwrap();
        match factory.connect_to_running_shared_worker(&address) {
            Err(exsyst_worker::Error::Shared(e)) => assert!(e.is_not_running(), "{e}"),
            other => panic!("expected nothing at {address}, got {other:?}"),
        }
        // The daemon's output is its own lines only, never libtest's.
        let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
        assert!(
            log.lines()
                .all(|line| line.starts_with("exsyst-worker: shared worker ")),
            "{log}"
        );
        assert!(log.ends_with(": stopped\n"), "{log}");
    }

    #[test]
    fn a_test_without_workers_runs_as_usual() {
        // The test process itself is no worker: the lines did nothing in it.
        assert!(!Registry::is_worker());
        assert_eq!(square(12), 144);
    }
}
