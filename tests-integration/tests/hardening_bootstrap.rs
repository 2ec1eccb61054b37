//! The spawn path and dedicated workers against hostile workers and careless environments
//! (issue 8, part A, and the non-blocking face the pools build on).

use std::{
    io::{Read, Write},
    os::unix::process::ExitStatusExt,
    os::{fd::OwnedFd, unix::net::UnixStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use exsyst_worker::{
    BootstrapProfile, DedicatedWorker,
    bootstrap::Error,
    channel::{FrameKind, serde_bytes::ByteBuf},
    worker::{
        Poller,
        mio::{Interest, Token},
    },
};
use tests_integration::{
    hardening_scenarios::variant,
    scenarios::group_members,
    workers::{
        dedicated::Squarer,
        hardening::DEFAULT_SIGPIPE,
        hostile::{Act, Hostile},
    },
};

use crate::support::*;

/// The master of the hardening scenarios (also a worker executable for every test
/// implementation).
fn hardening_master() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hardening-master"))
}

/// Runs `program <args>` to its end: exit status and `key=value` lines.
fn run_scenario(
    program: &std::path::Path,
    args: &[&str],
) -> (std::process::ExitStatus, Vec<(String, String)>, String) {
    let output = Command::new(program)
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .expect("start the scenario master");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (
        output.status,
        parse_lines(&stdout),
        format!("{stdout}\n{stderr}"),
    )
}

/// Runs a scenario of `hardening-master` that must succeed, and returns its lines.
fn scenario(args: &[&str]) -> Vec<(String, String)> {
    let (status, lines, output) = run_scenario(&hardening_master(), args);
    assert!(
        status.success(),
        "scenario {args:?} ended with {status:?}:\n{output}"
    );
    lines
}

fn hostile(profile: &BootstrapProfile) -> DedicatedWorker {
    let mut worker = DedicatedWorker::spawn::<Hostile>(profile).unwrap();
    worker.send_message(&Act::Reply("hello".into())).unwrap();
    assert_eq!(worker.receive_message::<String>().unwrap(), "hello");
    worker
}

// A1: SIGPIPE.

#[test]
fn a1_a_master_with_default_sigpipe_survives_writing_to_a_dead_worker() {
    let lines = scenario(&["sigpipe-default"]);
    assert_eq!(value(&lines, "error"), "WorkerExited");
    assert_eq!(value(&lines, "status"), "Some(3)");
}

/// A master written by hand over a socket pair, as the library's own master now is: the worker
/// restores SIGPIPE's default action and streams; the master goes away. The worker's failing send
/// must be an error it can report (exit status 70), not a death by signal 13.
#[test]
fn a1_a_worker_with_default_sigpipe_survives_writing_to_a_master_that_left() {
    let (mut master, child) = start_on_socket_pair(InitFrame {
        version: 1,
        implementation: "hostile",
        args: None,
        before_hooks: Vec::new(),
    });
    let act = frame(FrameKind::Data, &Act::StreamWithDefaultSigpipe);
    master.write_all(&act).unwrap();
    // The worker is streaming once its first bytes arrive; then the master stops reading (a
    // plain close would reset the connection, as unread bytes are left: no SIGPIPE then).
    let mut first = [0u8; 64];
    master.read_exact(&mut first).unwrap();
    master.shutdown(std::net::Shutdown::Read).unwrap();
    let (exit, stderr) = signal_and_code(child);
    drop(master);
    assert_eq!(exit, (None, Some(70)), "{stderr}");
}

/// The same for an evented worker, whose replies go out through the event loop's non-blocking
/// channel: the master stops reading, then asks for one more reply. Writing it must be an error
/// the worker handles (its master is gone: it ends with status 0), not a death by signal 13.
#[test]
fn a1_an_evented_worker_with_default_sigpipe_survives_replying_to_a_master_that_left() {
    let (mut master, child) = start_on_socket_pair(InitFrame {
        version: 1,
        implementation: "evented-echo",
        // Nothing sent before the first message.
        args: Some(ByteBuf::from(
            exsyst_worker::Codec::MessagePack.encode(&0usize).unwrap(),
        )),
        before_hooks: vec![DEFAULT_SIGPIPE],
    });
    let request = frame(FrameKind::Data, &ByteBuf::from(vec![1u8; 16]));
    master.write_all(&request).unwrap();
    // The worker answers: it runs, with SIGPIPE's default action.
    let mut reply = vec![0u8; request.len()];
    master.read_exact(&mut reply).unwrap();
    assert_eq!(reply, request);
    // The master stops reading (its writing side stays open, so the worker sees no end of its
    // input), then asks again: the reply meets a reader that is gone.
    master.shutdown(std::net::Shutdown::Read).unwrap();
    master.write_all(&request).unwrap();
    let (exit, stderr) = signal_and_code(child);
    drop(master);
    assert_eq!(exit, (None, Some(0)), "{stderr}");
}

/// Starts a worker as a hand-written master would, over a socket pair (what a foreign master may
/// give its workers), and sends it `init`; returns the master's end.
fn start_on_socket_pair(init: InitFrame) -> (UnixStream, std::process::Child) {
    let (mut master, child_end) = UnixStream::pair().unwrap();
    let child_out = child_end.try_clone().unwrap();
    let child = Command::new(test_worker())
        .env("EXSYST_WORKER_IMPLEMENTATION", init.implementation)
        .stdin(Stdio::from(OwnedFd::from(child_end)))
        .stdout(Stdio::from(OwnedFd::from(child_out)))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    master.write_all(&frame(FrameKind::Control, &init)).unwrap();
    (master, child)
}

/// Waits for `child` to end: (signal, exit code), and its standard error.
fn signal_and_code(child: std::process::Child) -> ((Option<i32>, Option<i32>), String) {
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ((output.status.signal(), output.status.code()), stderr)
}

/// One MessagePack frame of `kind` carrying `message`, as a hand-written master writes it.
fn frame<T: serde::Serialize>(kind: FrameKind, message: &T) -> Vec<u8> {
    let mut bytes = Vec::new();
    exsyst_worker::channel::encode_frame(
        exsyst_worker::Codec::MessagePack,
        kind,
        message,
        1 << 20,
        &mut bytes,
    )
    .unwrap();
    bytes
}

/// The init frame of the protocol guide, with what these tests need of it.
#[derive(serde::Serialize)]
struct InitFrame {
    version: u32,
    implementation: &'static str,
    args: Option<ByteBuf>,
    before_hooks: Vec<&'static str>,
}

// A3: a worker that closes its channel and lingers.

#[test]
fn a3_a_worker_that_closes_its_channel_and_lingers_freezes_no_receive() {
    // A grace period far longer than any bound below: a receive that waited for it would show.
    let profile = profile().with_close_grace(Duration::from_secs(30));
    let mut worker = hostile(&profile);
    worker.send_message(&Act::CloseAndLinger(600_000)).unwrap();
    // Each receive returns promptly; the end of the channel is a typed error at once.
    let error = loop {
        let start = Instant::now();
        let result = worker.receive_message_timeout::<String>(Duration::from_millis(100));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "receive_message_timeout(100 ms) took {:?}",
            start.elapsed()
        );
        match result {
            Err(Error::Timeout { .. }) => continue,
            other => break other.unwrap_err(),
        }
    };
    assert_eq!(variant(&error), "ChannelClosed", "{error:?}");
    let start = Instant::now();
    let again = worker.try_receive_message::<String>();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "try_receive_message waited"
    );
    assert_eq!(variant(&again.unwrap_err()), "ChannelClosed");
    let pid = worker.pid();
    assert_eq!(worker.kill().unwrap().signal(), Some(libc::SIGKILL));
    assert!(process_gone(pid));
}

// A7: a dead worker whose grandchild holds the channel.

#[test]
fn a7_a_dead_worker_is_seen_while_its_grandchild_holds_the_channel() {
    let worker = hostile(&profile().with_stderr(exsyst_worker::StderrMode::Capture));
    let pid = worker.pid();
    let _ended = a7_last_words_then_exit_behind_a_grandchild(worker);
    // The grandchild was in the worker's process group: killed with it.
    assert!(
        wait_until(Duration::from_secs(5), || group_members(pid).is_empty()),
        "left in the worker's group: {:?}",
        group_members(pid)
    );
}

// A8: bounded memory during a send.

#[test]
fn a8_a_send_to_a_worker_that_streams_and_never_reads_buffers_a_bounded_amount() {
    let max_frame_len = 8 << 20;
    let profile = profile().with_max_frame_len(max_frame_len);
    let mut worker = hostile(&profile);
    worker
        .send_message(&Act::Stream {
            count: u64::MAX,
            len: 64 << 10,
        })
        .unwrap();
    let big = ByteBuf::from(vec![1u8; max_frame_len as usize - 64]);
    let error = worker
        .send_message_timeout(&big, timeout(Duration::from_secs(1)))
        .unwrap_err();
    // The bound: twice the maximum frame length; one read may go past it.
    let bound = 2 * (max_frame_len as usize + 5);
    match error {
        Error::ReceiveBufferFull {
            pid,
            buffered,
            limit,
        } => {
            assert_eq!((pid, limit), (worker.pid(), bound));
            assert!(
                buffered >= limit && buffered < limit + (1 << 20),
                "{buffered}"
            );
        }
        other => panic!("expected ReceiveBufferFull, got {other:?}"),
    }
    worker.kill().unwrap();
}

// A9: pid reuse and lost exit statuses.

#[test]
fn a9_with_sigchld_ignored_errors_say_that_the_exit_status_was_lost() {
    let lines = scenario(&["sigchld-ignored"]);
    assert_eq!(value(&lines, "receive"), "ExitStatusLost", "{lines:?}");
    assert_eq!(value(&lines, "close"), "ExitStatusLost", "{lines:?}");
    assert_eq!(value(&lines, "kill"), "ExitStatusLost", "{lines:?}");
    assert!(
        value(&lines, "receive_message").contains("exit status was lost"),
        "{lines:?}"
    );
}

#[test]
fn a9_a_handle_whose_worker_another_thread_reaped_spares_the_process_that_got_its_pid() {
    let lines = scenario(&["reaper-thread"]);
    assert_eq!(value(&lines, "receive"), "ExitStatusLost", "{lines:?}");
    // Giving the decoy the reaped worker's pid takes writing `ns_last_pid` (CAP_SYS_ADMIN or
    // CAP_CHECKPOINT_RESTORE); without it the scenario says so and the rest still holds.
    match lines.iter().find(|(k, _)| k == "decoy") {
        Some((_, why)) => eprintln!("pid reuse not forced: {why}"),
        None => assert_eq!(value(&lines, "decoy_alive"), "true", "{lines:?}"),
    }
}

// A10: a deleted executable.

#[test]
fn a10_a_master_whose_executable_was_deleted_still_starts_workers() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("master-copy");
    std::fs::copy(hardening_master(), &copy).unwrap();
    let (status, lines, output) = run_scenario(&copy, &["deleted-exe"]);
    assert!(status.success(), "{output}");
    assert!(
        value(&lines, "current_exe_after_delete").ends_with(" (deleted)"),
        "{lines:?}"
    );
    assert_eq!(value(&lines, "reply"), "7 squared is 49");
    assert_eq!(value(&lines, "argv0"), copy.to_str().unwrap());
    assert_eq!(value(&lines, "status"), "exit status: 0");
}

// A11: the spawning thread's death.

#[test]
fn a11_a_worker_created_on_a_thread_that_exits_lives_as_long_as_its_handle() {
    let (mut worker, tid) = std::thread::spawn(|| {
        let worker = DedicatedWorker::spawn::<Squarer>(&profile()).unwrap();
        // SAFETY: gettid has no preconditions.
        (worker, unsafe { libc::gettid() })
    })
    .join()
    .unwrap();
    // Joined, and gone from the kernel's thread list: a parent-death signal tied to that thread
    // has been sent by now.
    assert!(
        wait_until(Duration::from_secs(10), || !std::path::Path::new(&format!(
            "/proc/self/task/{tid}"
        ))
        .exists()),
        "thread {tid} never went away"
    );
    for n in 0..20i64 {
        worker.send_message(&n).unwrap();
        assert_eq!(
            worker.receive_message::<String>().unwrap(),
            format!("{n} squared is {}", n * n)
        );
    }
    assert_eq!(worker.close().unwrap().code(), Some(0));
}

// A14: an evented worker ignoring SIGTERM, its master SIGKILLed.

#[test]
fn a14_an_evented_worker_ignoring_sigterm_ends_within_a_bound_after_its_master_is_killed() {
    let mut master = Command::new(hardening_master())
        .arg("stubborn-hold")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(master.stdout.take().unwrap());
    let mut pid = None;
    loop {
        let mut line = String::new();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "master ended"
        );
        match line.trim().split_once('=') {
            Some(("pid", p)) => pid = Some(p.parse::<u32>().unwrap()),
            _ if line.trim() == "ready" => break,
            _ => {}
        }
    }
    let pid = pid.expect("the master printed its worker's pid");
    sigkill(master.id());
    master.wait().unwrap();
    // The bound is the requirement: the one-second grace after the master's death, plus one
    // second for the machine.
    assert!(
        wait_within(Duration::from_secs(2), || process_gone(pid)),
        "evented worker {pid} outlived its master"
    );
}

// B8: a detached daemon.

#[test]
fn b8_a_detached_worker_outlives_its_starter_in_a_session_of_its_own_holding_none_of_its_pipes() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("daemon.sock");
    let mut master = Command::new(hardening_master())
        .args(["detach", socket.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(master.stdout.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "master ended"
        );
        if line.trim() == "ready" {
            break;
        }
        lines.extend(parse_lines(&line));
    }
    let daemon: u32 = value(&lines, "daemon").parse().unwrap();
    // The process that detached was reaped by the starter: no child, not even a zombie.
    assert_eq!(value(&lines, "children"), "[]");
    let starter = master.id();
    sigkill(starter);
    master.wait().unwrap();
    // It answers on its own socket after its starter's death.
    let ask = |line: &str| -> Option<String> {
        let mut stream = UnixStream::connect(&socket).ok()?;
        let mut reply = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&stream), &mut reply).ok()?;
        stream.write_all(line.as_bytes()).ok()?;
        Some(reply.trim().to_owned())
    };
    let mut reply = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            reply = ask("hello\n");
            reply.is_some()
        }),
        "the daemon never answered"
    );
    assert_eq!(reply.unwrap(), format!("pid={daemon}"));
    assert_detached(daemon, starter);
    let fds = fds_of(daemon);
    for (fd, target) in &fds {
        assert!(
            !target.starts_with("pipe:"),
            "the daemon holds a pipe: {fds:?}"
        );
        if *fd <= 2 {
            assert_eq!(target, "/dev/null", "{fds:?}");
        }
    }
    assert!(ask("stop\n").is_some());
    assert!(
        wait_until(Duration::from_secs(10), || process_gone(daemon)),
        "the daemon did not stop"
    );
}

// The non-blocking face the pools build on.

/// Waits for an event on `token`, up to the scaled `limit`.
fn wait_event(poller: &mut Poller, token: Token, limit: Duration) {
    let deadline = Instant::now() + timeout(limit);
    loop {
        let mut seen = false;
        poller
            .wait(Some(deadline), |t, _| seen |= t == token)
            .unwrap();
        if seen {
            return;
        }
        assert!(Instant::now() < deadline, "no event on {token:?}");
    }
}

#[test]
fn nb_a_dedicated_worker_is_a_mio_source_for_its_replies_and_for_its_death() {
    let mut poller = Poller::new().unwrap();
    let mut worker = hostile(&profile());
    let token = Token(7);
    poller
        .register(&mut worker, token, Interest::READABLE)
        .unwrap();
    worker.queue_message(&Act::Reply("one".into())).unwrap();
    assert_eq!(worker.queued_bytes(), 0);
    let reply = loop {
        wait_event(&mut poller, token, Duration::from_secs(10));
        if let Some(reply) = worker.try_receive_message::<String>().unwrap() {
            break reply;
        }
    };
    assert_eq!(reply, "one");
    assert!(worker.try_wait().unwrap().is_none());
    // A death no end of stream shows (a grandchild holds the channel): the pidfd's event.
    worker
        .queue_message(&Act::ForkAndExit {
            code: 9,
            millis: 600_000,
        })
        .unwrap();
    let status = loop {
        wait_event(&mut poller, token, Duration::from_secs(10));
        if let Some(status) = worker.try_wait().unwrap() {
            break status;
        }
    };
    assert_eq!(status.code(), Some(9));
    let (status, _) = expect_exited(worker.try_receive_message::<String>());
    assert_eq!(status.code(), Some(9));
    poller.deregister(&mut worker);
}

#[test]
fn nb_try_receive_and_try_wait_never_wait() {
    let mut worker = hostile(&profile());
    let start = Instant::now();
    assert!(worker.try_receive_message::<String>().unwrap().is_none());
    assert!(worker.try_wait().unwrap().is_none());
    assert!(start.elapsed() < Duration::from_secs(1));
    worker.send_message(&Act::Exit(3)).unwrap();
    let mut status = None;
    assert!(wait_until(Duration::from_secs(10), || {
        status = worker.try_wait().unwrap();
        status.is_some()
    }));
    assert_eq!(status.unwrap().code(), Some(3));
    // Reaped by try_wait: the handle keeps the status for every later call.
    let (status, _) = expect_exited(worker.receive_message::<String>());
    assert_eq!(status.code(), Some(3));
    assert_eq!(worker.kill().unwrap().code(), Some(3));
}

#[test]
fn nb_queue_message_and_flush_never_wait_and_the_queue_is_bounded() {
    let max_frame_len = 1 << 20;
    let profile = profile()
        .with_max_frame_len(max_frame_len)
        .with_close_grace(Duration::from_millis(200));
    let mut worker = hostile(&profile);
    worker.send_message(&Act::StopReading).unwrap();
    let blob = ByteBuf::from(vec![0u8; 256 << 10]);
    let bound = 2 * (max_frame_len as usize + 5);
    let mut refused = None;
    for _ in 0..1000 {
        let start = Instant::now();
        let result = worker.queue_message(&blob);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "queue_message waited"
        );
        if let Err(e) = result {
            refused = Some(e);
            break;
        }
    }
    match refused {
        Some(Error::QueueFull { pid, queued, limit }) => {
            assert_eq!((pid, limit), (worker.pid(), bound));
            assert!(
                queued >= limit && queued < limit + blob.len() + 64,
                "{queued}"
            );
            assert_eq!(worker.queued_bytes(), queued);
        }
        other => panic!("expected QueueFull, got {other:?}"),
    }
    let start = Instant::now();
    assert!(!worker.flush().unwrap());
    assert!(start.elapsed() < Duration::from_secs(1), "flush waited");
    // Ended without the caller waiting for the grace period, the kill and the reaping.
    let pid = worker.pid();
    let start = Instant::now();
    worker.close_in_background();
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "close_in_background took {:?}",
        start.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(10), || process_gone(pid)),
        "worker {pid} was not reaped in the background"
    );
}

// Issue 17 §3: one I/O thread for every worker.

#[test]
fn a_dropped_worker_whose_grandchild_holds_its_stderr_leaves_no_thread_and_no_descriptor() {
    for mode in ["forward", "capture", "log"] {
        let lines = scenario(&["stderr-held", mode]);
        let not_back: Vec<_> = lines.iter().filter(|(k, _)| k == "not_back").collect();
        assert!(not_back.is_empty(), "{mode}: {lines:?}");
        let backs = lines.iter().filter(|(k, _)| k == "back_after_ms").count();
        assert_eq!(backs, 6, "{mode}: {lines:?}");
        // The error of a worker that exits behind such a grandchild still has its stderr.
        assert_eq!(value(&lines, "exit_code"), "Some(3)", "{mode}: {lines:?}");
        assert_eq!(
            value(&lines, "tail"),
            "a grandchild holds this stderr",
            "{mode}: {lines:?}"
        );
    }
}

#[test]
fn two_hundred_dedicated_workers_start_no_thread() {
    // The main thread, the spawner and the I/O thread; forwarding adds the thread that writes
    // to the master's standard error.
    for (mode, threads) in [("capture", "3"), ("log", "3"), ("forward", "4")] {
        let lines = scenario(&["many-workers", "200", mode]);
        assert_eq!(value(&lines, "workers"), "200", "{mode}");
        assert_eq!(
            value(&lines, "threads_before"),
            threads,
            "{mode}: {lines:?}"
        );
        assert_eq!(
            value(&lines, "threads_with_workers"),
            threads,
            "{mode}: {lines:?}"
        );
        assert_eq!(value(&lines, "threads_after"), threads, "{mode}: {lines:?}");
    }
}

// Issue 17 §4: a blocking receive without deadline reads the output directly; the I/O thread
// ends that read when the worker dies, whoever holds the pipe.

#[test]
fn a_receive_without_deadline_sees_every_death_after_every_message() {
    struct Case {
        name: &'static str,
        /// Acts sent; then `replies` messages are received, then the exit.
        acts: Vec<Act>,
        /// The pid of a grandchild that outlives the worker comes first.
        escaped: bool,
        replies: usize,
        code: i32,
    }
    let words = "w".repeat(100);
    let cases = [
        Case {
            name: "nobody else holds the pipe",
            acts: vec![Act::Reply("last words".into()), Act::Exit(4)],
            escaped: false,
            replies: 1,
            code: 4,
        },
        Case {
            name: "a grandchild in its process group holds the pipe",
            acts: vec![
                Act::Reply("last words".into()),
                Act::ForkAndExit {
                    code: 7,
                    millis: 600_000,
                },
            ],
            escaped: false,
            replies: 1,
            code: 7,
        },
        Case {
            name: "a grandchild out of its process group holds the pipe",
            acts: vec![Act::ForkHoldingStderr(600_000), Act::Exit(3)],
            escaped: true,
            replies: 0,
            code: 3,
        },
        Case {
            name: "the pipe is full when it dies, a grandchild holding it",
            acts: vec![
                Act::Burst {
                    count: 5000,
                    text: Some(words.clone()),
                },
                Act::ForkAndExit {
                    code: 5,
                    millis: 600_000,
                },
            ],
            escaped: false,
            replies: 5000,
            code: 5,
        },
    ];
    for case in cases {
        let mut worker = hostile(&profile().with_stderr(exsyst_worker::StderrMode::Capture));
        let (tx, rx) = std::sync::mpsc::channel();
        let expected = if case.replies == 1 {
            "last words".to_owned()
        } else {
            words.clone()
        };
        // The receives run on a thread of their own, so that a hang fails the test.
        std::thread::spawn(move || {
            for act in &case.acts {
                worker.send_message(act).unwrap();
            }
            let grandchild = case
                .escaped
                .then(|| worker.receive_message::<i32>().unwrap());
            let received: Vec<String> = (0..case.replies)
                .map(|_| worker.receive_message::<String>().unwrap())
                .collect();
            let ended = worker.receive_message::<String>();
            if let Some(pid) = grandchild {
                let _ = tests_integration::sys::kill(pid, libc::SIGKILL);
            }
            let _ = tx.send((received, ended));
        });
        let (received, ended) = rx
            .recv_timeout(timeout(Duration::from_secs(20)))
            .unwrap_or_else(|_| panic!("{}: the receive never ended", case.name));
        assert_eq!(received.len(), case.replies, "{}", case.name);
        assert!(received.iter().all(|r| *r == expected), "{}", case.name);
        let (status, _) = expect_exited(ended);
        assert_eq!(status.code(), Some(case.code), "{}", case.name);
    }
}

#[test]
fn a_master_whose_stderr_is_stuck_still_sees_deaths_and_reaps_in_the_background() {
    let lines = scenario(&["stderr-stuck"]);
    assert_eq!(value(&lines, "dying"), "Ok(Some(7))", "{lines:?}");
    assert_eq!(value(&lines, "background_reaped"), "true", "{lines:?}");
    assert_eq!(value(&lines, "flooder_dropped"), "true", "{lines:?}");
}

#[test]
fn a_logger_that_panics_on_a_workers_line_stops_no_other_worker() {
    let lines = scenario(&["panicking-logger"]);
    assert_eq!(value(&lines, "dying"), "Ok(Some(7))", "{lines:?}");
    assert_eq!(value(&lines, "background_reaped"), "true", "{lines:?}");
}
