//! Dedicated raw workers end to end (issue 2).

use std::{os::unix::process::ExitStatusExt, time::Duration};

use exsyst_worker::{
    BootstrapProfile, Codec, StderrMode, WorkerFactory, bootstrap::Error,
    channel::serde_bytes::ByteBuf,
};
use serde::{Deserialize, Serialize};
use tests_integration::workers::dedicated::{
    BigFirst, Echo, EnvironmentReport, Failer, Failure, FdLister, Fds, IgnoresEof, Squarer,
    StdoutPolluter,
};

use crate::support::*;

fn factory() -> WorkerFactory {
    WorkerFactory::with_profile(profile())
}

#[test]
fn the_seeds_example_ten_round_trips_in_order() {
    let mut w = factory().create_worker::<Squarer>().unwrap();
    for i in 0..10i64 {
        w.send_message(&i).unwrap();
        assert_eq!(
            w.receive_message::<String>().unwrap(),
            format!("{i} squared is {}", i * i)
        );
    }
    let status = w.close().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Kind {
    Unit,
    Newtype(i32),
    Tuple(bool, String),
    Struct { f: f64 },
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Shapes {
    s: String,
    i: i64,
    u: u64,
    f: f64,
    n: Option<i32>,
    b: (bool, bool),
    list: Vec<Vec<u8>>,
    map: std::collections::BTreeMap<String, Option<String>>,
    kinds: Vec<Kind>,
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
}

#[test]
fn every_serde_shape_through_a_worker_with_both_codecs() {
    let value = Shapes {
        s: "héllo \"w\" \n".into(),
        i: i64::MIN,
        u: u64::MAX,
        f: 0.1 + 0.2,
        n: None,
        b: (true, false),
        list: vec![vec![], vec![1, 2, 255]],
        map: [("k".to_string(), Some("v".to_string())), ("".into(), None)].into(),
        kinds: vec![
            Kind::Unit,
            Kind::Newtype(-3),
            Kind::Tuple(true, "t".into()),
            Kind::Struct { f: 1e-300 },
        ],
        bytes: vec![0, 1, 254, 255],
    };
    for codec in [Codec::MessagePack, Codec::Json] {
        let f = WorkerFactory::with_profile(profile().with_codec(codec));
        let mut w = f.create_worker::<Echo>().unwrap();
        w.send_message(&value).unwrap();
        assert_eq!(w.receive_message::<Shapes>().unwrap(), value, "{codec}");
        w.send_message(&()).unwrap();
        w.receive_message::<()>().unwrap();
        w.send_message(&Option::<u8>::None).unwrap();
        assert_eq!(w.receive_message::<Option<u8>>().unwrap(), None);
        w.send_message(&Kind::Unit).unwrap();
        assert_eq!(w.receive_message::<Kind>().unwrap(), Kind::Unit);
        let x = 2.0f64.sqrt();
        w.send_message(&x).unwrap();
        assert_eq!(w.receive_message::<f64>().unwrap().to_bits(), x.to_bits());
    }
}

#[test]
fn dropping_the_handle_ends_and_reaps_the_worker() {
    let mut w = factory().create_worker::<Squarer>().unwrap();
    w.send_message(&3).unwrap();
    w.receive_message::<String>().unwrap();
    let pid = w.pid();
    drop(w);
    // Drop reaps before it returns: nothing may be left, not even a zombie.
    assert!(process_gone(pid), "worker {pid} still present after drop");
}

#[test]
fn two_hundred_create_drop_cycles_leak_nothing() {
    let lines = run_master(&["cycles", "200"]);
    assert_eq!(value(&lines, "fds_before"), value(&lines, "fds_after"));
    assert_eq!(value(&lines, "children"), "[]");
}

#[test]
fn a_master_killed_with_sigkill_takes_its_workers_along() {
    let mut master = MasterProcess::start(&["hold", "3"]);
    let mut pids = Vec::new();
    loop {
        let line = master.next_line().expect("master output");
        if line == "ready" {
            break;
        }
        pids.push(line.strip_prefix("pid=").unwrap().parse::<u32>().unwrap());
    }
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|&p| !process_gone(p)));
    sigkill(master.child.id());
    // The bound is the requirement: one second, on any machine.
    assert!(
        wait_within(Duration::from_secs(1), || pids
            .iter()
            .all(|&p| process_gone(p))),
        "workers {pids:?} outlived their master"
    );
}

fn failer(failure: Failure) -> exsyst_worker::DedicatedWorker {
    let f = WorkerFactory::with_profile(profile().with_stderr(StderrMode::Capture));
    let mut w = f.create_worker_with_args::<Failer>(&failure).unwrap();
    w.send_message("hello").unwrap();
    assert_eq!(w.receive_message::<String>().unwrap(), "hello");
    w.send_message("fail now").unwrap();
    w
}

/// A worker run with `RUST_BACKTRACE=full` writes a backtrace of many kilobytes after its panic
/// message; the tail keeps the message and the first frames, and says how many lines it left out.
#[test]
fn a_full_backtrace_does_not_push_the_panic_message_out_of_the_tail() {
    let f = WorkerFactory::with_profile(
        profile()
            .with_stderr(StderrMode::Capture)
            .with_env("RUST_BACKTRACE", "full"),
    );
    let mut w = f
        .create_worker_with_args::<Failer>(&Failure::Panic("the worker gave up".into()))
        .unwrap();
    w.send_message("hello").unwrap();
    assert_eq!(w.receive_message::<String>().unwrap(), "hello");
    w.send_message("fail now").unwrap();
    match w.receive_message::<String>() {
        Err(Error::WorkerExited {
            status,
            stderr_tail,
            ..
        }) => {
            assert_eq!(status.code(), Some(101));
            assert!(
                stderr_tail.contains("the worker gave up\nstack backtrace:\n"),
                "{stderr_tail:?}"
            );
            assert!(
                stderr_tail.contains(" more backtrace lines]\n"),
                "{stderr_tail:?}"
            );
        }
        other => panic!("expected WorkerExited, got {other:?}"),
    }
}

#[test]
fn a_panicking_worker_is_a_typed_error_with_its_stderr() {
    let mut w = failer(Failure::Panic("the worker gave up".into()));
    let pid = w.pid();
    match w.receive_message::<String>() {
        Err(Error::WorkerExited {
            pid: p,
            implementation,
            status,
            stderr_tail,
        }) => {
            assert_eq!(p, pid);
            assert_eq!(implementation, "failer");
            assert_eq!(status.code(), Some(101));
            assert!(
                stderr_tail.contains("the worker gave up"),
                "{stderr_tail:?}"
            );
        }
        other => panic!("expected WorkerExited, got {other:?}"),
    }
    // Every later call says the same, and writing does not kill the master with SIGPIPE.
    assert!(matches!(
        w.send_message("more"),
        Err(Error::WorkerExited { .. })
    ));
    assert!(matches!(
        w.receive_message::<String>(),
        Err(Error::WorkerExited { .. })
    ));
}

#[test]
fn a_worker_exiting_with_a_code_is_a_typed_error() {
    let mut w = failer(Failure::Exit(42));
    let err = w.receive_message::<String>().unwrap_err();
    assert_eq!(err.exit_status().and_then(|s| s.code()), Some(42), "{err}");
    assert!(err.to_string().contains("exited with code 42"), "{err}");
}

#[test]
fn a_worker_returning_an_error_exits_with_failure_and_says_why() {
    let mut w = failer(Failure::Error("bad input".into()));
    let (status, stderr_tail) = expect_exited(w.receive_message::<String>());
    assert_eq!(status.code(), Some(exsyst_worker::bootstrap::EXIT_FAILURE));
    assert!(stderr_tail.contains("bad input"), "{stderr_tail:?}");
}

#[test]
fn a_failing_constructor_is_reported_at_the_first_call() {
    let f = WorkerFactory::with_profile(profile().with_stderr(StderrMode::Capture));
    let mut w = f
        .create_worker_with_args::<Failer>(&Failure::Constructor("no database".into()))
        .unwrap();
    let (status, stderr_tail) = expect_exited(w.receive_message::<String>());
    assert_eq!(status.code(), Some(exsyst_worker::bootstrap::EXIT_FAILURE));
    assert!(stderr_tail.contains("no database"), "{stderr_tail:?}");
}

#[test]
fn a_worker_killed_mid_conversation_names_the_signal() {
    let mut w = failer(Failure::KillSelf);
    let (status, _) = expect_exited(w.receive_message::<String>());
    assert_eq!(status.signal(), Some(9));
}

#[test]
fn writing_to_a_worker_killed_from_outside_is_an_error_not_sigpipe() {
    let mut w = factory().create_worker::<Squarer>().unwrap();
    w.send_message(&1).unwrap();
    w.receive_message::<String>().unwrap();
    sigkill(w.pid());
    // Keep writing until the broken pipe shows; a large message fills the pipe quickly.
    let big = ByteBuf::from(vec![0u8; 1 << 20]);
    let err = loop {
        if let Err(e) = w.send_message(&big) {
            break e;
        }
    };
    match err {
        Error::WorkerExited { status, .. } => assert_eq!(status.signal(), Some(9)),
        other => panic!("expected WorkerExited, got {other:?}"),
    }
}

#[test]
fn receive_with_a_timeout_times_out_and_the_channel_stays_usable() {
    let mut w = factory().create_worker::<Echo>().unwrap();
    let waited = Duration::from_millis(50);
    match w.receive_message_timeout::<String>(waited) {
        Err(Error::Timeout { pid, waited: d }) => {
            assert_eq!(pid, w.pid());
            assert_eq!(d, waited);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(w.try_receive_message::<String>().unwrap().is_none());
    w.send_message("late").unwrap();
    assert_eq!(
        w.receive_message_timeout::<String>(timeout(Duration::from_secs(10)))
            .unwrap(),
        "late"
    );
}

#[test]
fn eight_mib_each_way_with_the_worker_sending_first_does_not_deadlock() {
    const LEN: usize = 8 << 20;
    let mut w = factory().create_worker_with_args::<BigFirst>(&LEN).unwrap();
    // The worker is busy sending 8 MiB and reads nothing meanwhile: a naive master would block
    // here forever with both pipes full.
    w.send_message(&ByteBuf::from(vec![0xcd; LEN])).unwrap();
    let first: ByteBuf = w.receive_message().unwrap();
    assert_eq!(first.len(), LEN);
    assert!(first.iter().all(|&b| b == 0xab));
    assert_eq!(w.receive_message::<(usize, bool)>().unwrap(), (LEN, true));
}

#[test]
fn an_oversized_message_is_refused_before_it_is_sent() {
    let f = WorkerFactory::with_profile(profile().with_max_frame_len(1024));
    let mut w = f.create_worker::<Echo>().unwrap();
    match w.send_message(&ByteBuf::from(vec![0u8; 2000])) {
        Err(Error::Channel {
            source: exsyst_worker::channel::Error::FrameTooLarge { len, max: 1024 },
            ..
        }) => assert!(len > 2000),
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    // Nothing reached the worker, which still answers.
    w.send_message("small").unwrap();
    assert_eq!(w.receive_message::<String>().unwrap(), "small");
}

#[test]
fn a_worker_printing_to_stdout_does_not_corrupt_the_channel() {
    let f = WorkerFactory::with_profile(profile().with_stderr(StderrMode::Capture));
    let mut w = f.create_worker::<StdoutPolluter>().unwrap();
    for i in 0..20 {
        let m = format!("message {i}");
        w.send_message(&m).unwrap();
        assert_eq!(w.receive_message::<String>().unwrap(), m);
    }
}

#[test]
fn the_worker_holds_only_fds_0_1_2_and_its_channel() {
    let mut w = factory().create_worker::<FdLister>().unwrap();
    w.send_message(&()).unwrap();
    let fds: Fds = w.receive_message().unwrap();
    assert_eq!(fds.fds, vec![0, 1, 2, 3, 4], "{fds:?}");
    assert_eq!(fds.targets[0], "/dev/null", "{fds:?}");
    // fd 1 now writes where fd 2 does; the channel is on 3 and 4, both pipes.
    assert_eq!(fds.targets[1], fds.targets[2], "{fds:?}");
    assert!(fds.targets[3].starts_with("pipe:"), "{fds:?}");
    assert!(fds.targets[4].starts_with("pipe:"), "{fds:?}");
}

#[test]
fn a_separate_executable_from_the_profiles_map_works_like_self_reexecution() {
    let other = other_worker();
    let lines = run_master(&["self-and-map", other.to_str().unwrap()]);
    assert_eq!(value(&lines, "self_reply"), r#"("ping", 1)"#);
    assert_eq!(value(&lines, "map_reply"), r#"("ping", 1)"#);
    assert_eq!(
        value(&lines, "self_exe"),
        test_worker().canonicalize().unwrap().display().to_string()
    );
    assert_eq!(
        value(&lines, "map_exe"),
        other.canonicalize().unwrap().display().to_string()
    );
    assert_eq!(value(&lines, "self_status"), "exit status: 0");
    assert_eq!(value(&lines, "map_status"), "exit status: 0");
}

#[test]
fn an_unknown_implementation_is_a_typed_error_naming_it() {
    let f = WorkerFactory::with_profile(profile().with_stderr(StderrMode::Capture));
    let mut w = f.create_worker_named::<()>("no-such-worker", None).unwrap();
    let (status, stderr_tail) = expect_exited(w.receive_message::<String>());
    assert_eq!(status.code(), Some(exsyst_worker::bootstrap::EXIT_FAILURE));
    assert!(
        stderr_tail.contains("\"no-such-worker\""),
        "{stderr_tail:?}"
    );
}

#[test]
fn a_missing_executable_is_a_spawn_error() {
    let f =
        WorkerFactory::with_profile(BootstrapProfile::new().with_program("/nonexistent/worker"));
    match f.create_worker::<Echo>() {
        Err(exsyst_worker::Error::Bootstrap(Error::Spawn { program, source })) => {
            assert_eq!(program, std::path::Path::new("/nonexistent/worker"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Spawn, got {other:?}"),
    }
}

#[test]
fn a_worker_that_ignores_the_end_of_its_channel_is_killed_after_the_grace_period() {
    let f = WorkerFactory::with_profile(profile().with_close_grace(Duration::from_millis(200)));
    let mut w = f.create_worker::<IgnoresEof>().unwrap();
    w.send_message("hi").unwrap();
    assert_eq!(w.receive_message::<String>().unwrap(), "hi");
    let pid = w.pid();
    let status = w.close().unwrap();
    assert_eq!(status.signal(), Some(9));
    assert!(process_gone(pid));
}

#[test]
fn the_profile_sets_arguments_environment_directory_umask_and_hooks() {
    let dir = tempfile::tempdir().unwrap();
    let f = WorkerFactory::with_profile(
        profile()
            .with_args(["--flag", "value"])
            .with_env("PROFILE_VAR", "set")
            .with_env("HOOK_MARK_DIR", dir.path().to_str().unwrap())
            .with_current_dir(dir.path())
            .with_umask(0o027)
            .with_before_hook("mark-before")
            .with_after_hook("mark-after"),
    );
    let mut w = f
        .create_worker_with_args::<tests_integration::workers::dedicated::Environment>(&vec![
            "a".to_string(),
        ])
        .unwrap();
    w.send_message(&()).unwrap();
    let report: EnvironmentReport = w.receive_message().unwrap();
    assert_eq!(report.args, ["a"]);
    assert_eq!(report.argv, ["--flag", "value"]);
    assert_eq!(report.profile_var.as_deref(), Some("set"));
    assert!(report.markers_cleared);
    assert_eq!(
        report.cwd,
        dir.path().canonicalize().unwrap().display().to_string()
    );
    assert_eq!(report.umask, 0o027);
    assert!(report.after_hook_ran);
    assert_eq!(std::fs::read(dir.path().join("before")).unwrap(), b"before");
}

#[test]
fn an_unknown_hook_stops_the_worker_with_a_clear_error() {
    let f = WorkerFactory::with_profile(
        profile()
            .with_stderr(StderrMode::Capture)
            .with_before_hook("no-such-hook"),
    );
    let mut w = f.create_worker::<Squarer>().unwrap();
    let err = w.receive_message::<String>().unwrap_err();
    assert!(
        err.to_string()
            .contains("no before-construction hook named \"no-such-hook\""),
        "{err}"
    );
}

#[test]
fn a_worker_executable_without_run_if_worker_cannot_start_workers_in_a_loop() {
    let profile = BootstrapProfile::new()
        .with_program(env!("CARGO_BIN_EXE_forgetful-master"))
        .with_stderr(StderrMode::Capture);
    // The child may die before or after it reads its bootstrap frame: either way its master
    // sees it exit, at once or at the first receive.
    let result = exsyst_worker::DedicatedWorker::spawn::<Squarer>(&profile)
        .and_then(|mut w| w.receive_message::<String>());
    let (status, stderr_tail) = expect_exited(result);
    assert_eq!(status.code(), Some(4), "{stderr_tail}");
    assert!(stderr_tail.contains("RegistryNotRun"), "{stderr_tail:?}");
}

#[test]
fn huge_timeouts_and_grace_periods_mean_wait_not_panic() {
    let f = WorkerFactory::with_profile(profile().with_close_grace(Duration::MAX));
    let mut w = f.create_worker::<Echo>().unwrap();
    w.send_message("forever is fine").unwrap();
    assert_eq!(
        w.receive_message_timeout::<String>(Duration::MAX).unwrap(),
        "forever is fine"
    );
    assert_eq!(w.close().unwrap().code(), Some(0));
}

#[test]
fn a_send_to_a_stuck_worker_times_out_and_a_cut_frame_breaks_the_channel() {
    let mut w = factory().create_worker::<IgnoresEof>().unwrap();
    w.send_message("hi").unwrap();
    assert_eq!(w.receive_message::<String>().unwrap(), "hi");
    // The worker reads nothing more: 1 MiB cannot fit in its input pipe.
    let waited = Duration::from_millis(100);
    match w.send_message_timeout(&ByteBuf::from(vec![0u8; 1 << 20]), waited) {
        Err(Error::Timeout { pid, waited: d }) => assert_eq!((pid, d), (w.pid(), waited)),
        other => panic!("expected Timeout, got {other:?}"),
    }
    let pid = w.pid();
    assert!(matches!(w.send_message("more"), Err(Error::ChannelBroken { pid: p }) if p == pid));
    assert!(matches!(
        w.receive_message::<String>(),
        Err(Error::ChannelBroken { pid: p }) if p == pid
    ));
    assert_eq!(w.kill().unwrap().signal(), Some(9));
}
