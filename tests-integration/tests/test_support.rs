//! Workers in a user's own `#[test]`s (`enable_test_support!`): the unit and integration tests
//! of the `tests-support-demo` crate, run by cargo-nextest (a process per test, `--exact NAME`),
//! and its unit-test binary run by libtest directly (one process, one thread or many).
//!
//! `cargo test --workspace` runs them once more, as any member's unit tests.

use std::{
    collections::BTreeSet,
    fs::File,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use crate::support::wait_until;

/// Every unit test of `tests-support-demo`.
const DEMO_TESTS: [&str; 13] = [
    "tests::a_panicking_task_worker_fails_its_task_and_is_replaced",
    "tests::a_panicking_worker_is_a_typed_error_with_its_message",
    "tests::a_raw_worker_squares",
    "tests::a_shared_worker_daemon_starts_from_a_test_and_stops",
    "tests::a_task_pool_maps_and_reports_a_task_error",
    "tests::a_test_without_workers_runs_as_usual",
    "tests::a_worker_pool_answers_from_whichever_worker_is_ready",
    "tests::an_evented_worker_echoes",
    "tests::an_implementation_no_line_names_is_the_workers_error",
    "tests::the_channel_carries_the_workers_frames_and_nothing_else",
    "tests::the_worker_markers_do_not_reach_what_a_worker_starts",
    "tests::threads_work_in_a_worker_started_before_main",
    "tests::workers_start_from_many_test_threads_at_once",
];

fn demo_tests() -> BTreeSet<String> {
    DEMO_TESTS.iter().map(|&t| t.to_owned()).collect()
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// What the nested cargo builds: the CI's `cargo test --workspace --all-features`, narrowed to
/// the targets these tests need. The features are resolved over the whole workspace, as in CI
/// (`-p tests-support-demo` alone would resolve `serde` and `syn` with fewer features, and
/// rebuild every crate from them up while the other tests run): under the CI command, the
/// nested cargo finds everything built. Run alone (`cargo xtask test-integration`), it builds
/// the workspace's library tests once.
const SELECTION: [&str; 6] = [
    "--workspace",
    "--all-features",
    "--lib",
    "--test",
    "workers",
    "--color=never",
];

/// `--target <triple>` when these tests were built with one (the CI's musl run, say), else
/// nothing: the nested cargo builds and runs the demo for the same target, whose build the outer
/// command made (without it, a run for another target would repeat the host's).
///
/// Read from where cargo put this test binary: `<target dir>/<triple>/<profile>/deps/` with
/// `--target`, `<target dir>/<profile>/deps/` without.
fn outer_target() -> Vec<String> {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let target_dir = tmp.parent().unwrap().canonicalize().unwrap();
    let exe = std::env::current_exe().unwrap().canonicalize().unwrap();
    let inside: Vec<_> = exe
        .strip_prefix(&target_dir)
        .unwrap_or_else(|_| panic!("{exe:?} is not under {target_dir:?}"))
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    match inside.as_slice() {
        [triple, _profile, deps, _binary] if deps == "deps" => {
            vec!["--target".to_owned(), triple.clone()]
        }
        [_profile, deps, _binary] if deps == "deps" => Vec::new(),
        _ => panic!("{exe:?}: not where cargo puts test binaries"),
    }
}

/// The cargo that runs these tests (`$CARGO`), in the workspace, so that it finds the same
/// target directory (cargo does not hold its build lock while tests run).
fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root())
        .env("CARGO_TERM_COLOR", "never");
    // When these tests run under nextest themselves, the nested run is a run of its own.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("NEXTEST_") {
            command.env_remove(name);
        }
    }
    command
}

/// How a command ended, what it wrote, and how long it took.
#[derive(Debug)]
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `command` to its end, its output in files (no pipe to fill), in a process group of its
/// own that is killed if it takes longer than `limit` (scaled): a nested cargo that waits on a
/// lock forever fails the test instead of hanging it.
fn run(mut command: Command, limit: Duration) -> Finished {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let mut status = None;
    let ended = wait_until(limit, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let read = |path: &Path| String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned();
    if !ended {
        // SAFETY: kill(2) on the process group this test started; no memory is involved.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
        panic!(
            "{command:?} did not finish within {limit:?} (scaled); its stderr:\n{}",
            read(&err)
        );
    }
    Finished {
        status: status.unwrap(),
        stdout: read(&out),
        stderr: read(&err),
        took: started.elapsed(),
    }
}

/// A `cargo` that runs `cargo nextest`: the user's own when `cargo nextest` works, else one
/// installed on first use with `cargo install --root` under the target directory (nothing goes
/// into the user's `~/.cargo`), found first on the nested cargo's `PATH`.
fn nextest_cargo() -> Command {
    static PATH: OnceLock<Option<std::ffi::OsString>> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        let mut version = cargo();
        version.args(["nextest", "--version"]);
        if run(version, Duration::from_secs(120)).status.success() {
            return None;
        }
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tools");
        let mut install = cargo();
        install
            .args(["install", "cargo-nextest", "--locked", "--root"])
            .arg(&root);
        let installed = run(install, Duration::from_secs(1800));
        assert!(
            installed.status.success(),
            "cannot install cargo-nextest: {}",
            installed.stderr
        );
        let mut dirs = vec![root.join("bin")];
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        Some(std::env::join_paths(dirs).expect("a PATH"))
    });
    let mut command = cargo();
    if let Some(path) = path {
        command.env("PATH", path);
    }
    command
}

/// Builds the demo's unit-test binary (already built, in `cargo test --workspace`) and returns
/// its path.
fn demo_test_binary() -> PathBuf {
    let mut build = cargo();
    build
        .arg("test")
        .args(SELECTION)
        .args(outer_target())
        .args(["--no-run", "--message-format=json"]);
    let built = run(build, Duration::from_secs(600));
    assert!(built.status.success(), "{}", built.stderr);
    eprintln!("cargo test --no-run took {:?}", built.took);
    built
        .stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["target"]["name"] == "tests_support_demo")
        .filter(|message| message["profile"]["test"] == true)
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("no test executable in cargo's messages: {}", built.stdout))
}

#[test]
fn the_demo_crates_tests_start_workers_under_nextest() {
    let mut nextest = nextest_cargo();
    nextest
        .args(["nextest", "run"])
        .args(SELECTION)
        .args(outer_target())
        .args(["-E", "package(tests-support-demo)", "--no-fail-fast"]);
    let ran = run(nextest, Duration::from_secs(600));
    eprintln!("cargo nextest run took {:?}", ran.took);
    assert!(
        ran.status.success(),
        "nextest failed: {}\n{}",
        ran.stdout,
        ran.stderr
    );
    // `PASS [   0.009s] ( 1/14) tests-support-demo tests::a_raw_worker_squares`: one line per
    // test, each its own process, named by binary (the unit tests', `::workers` for
    // `tests/workers.rs`) and test.
    let passed: BTreeSet<String> = ran
        .stderr
        .lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with("PASS "))
        .filter_map(|line| line.find(" tests-support-demo").map(|at| &line[at + 1..]))
        .map(|test| test.trim().to_owned())
        .collect();
    let mut expected: BTreeSet<String> = DEMO_TESTS
        .iter()
        .map(|test| format!("tests-support-demo {test}"))
        .collect();
    expected.insert(
        "tests-support-demo::workers an_integration_test_starts_raw_evented_and_task_workers"
            .to_owned(),
    );
    assert_eq!(passed, expected, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("14 tests run: 14 passed"),
        "{}",
        ran.stderr
    );
}

#[test]
fn the_demo_crates_test_binary_starts_workers_on_one_thread_and_many() {
    let binary = demo_test_binary();
    for threads in ["--test-threads=1", "--test-threads=8"] {
        let mut libtest = Command::new(&binary);
        libtest
            .arg(threads)
            .current_dir(workspace_root().join("tests-support-demo"));
        let ran = run(libtest, Duration::from_secs(120));
        assert!(
            ran.status.success(),
            "{threads}: {}\n{}",
            ran.stdout,
            ran.stderr
        );
        let passed: BTreeSet<String> = ran
            .stdout
            .lines()
            .filter_map(|line| line.strip_prefix("test "))
            .filter_map(|line| line.strip_suffix(" ... ok"))
            .map(str::to_owned)
            .collect();
        assert_eq!(passed, demo_tests(), "{threads}: {}", ran.stdout);
        assert!(
            ran.stdout.contains("test result: ok. 13 passed; 0 failed"),
            "{threads}: {}",
            ran.stdout
        );
    }
}
