//! Dedicated workers and shared-worker clients driven from tokio (issue 11, feature `tokio`).

use std::{os::unix::process::ExitStatusExt, time::Duration};

use exsyst_worker::{
    AsyncDedicatedWorker, BootstrapProfile, DedicatedWorker, StderrMode, Worker, bootstrap::Error,
    channel::serde_bytes::ByteBuf,
};
use tests_integration::workers::{
    dedicated::{Echo, Failer, Failure, Squarer},
    evented::EventedSquarer,
    hostile::{Act, Hostile},
};

use crate::support::*;

fn spawn<W: Worker<Args = ()>>(profile: &BootstrapProfile) -> AsyncDedicatedWorker {
    DedicatedWorker::spawn::<W>(profile)
        .unwrap()
        .into_async()
        .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn raw_and_evented_workers_answer_in_order_from_a_current_thread_runtime() {
    let profile = profile();
    for mut worker in [
        spawn::<Squarer>(&profile),
        spawn::<EventedSquarer>(&profile),
    ] {
        for i in 0..10i64 {
            worker.send_message(&i).await.unwrap();
            assert_eq!(
                worker.receive_message::<String>().await.unwrap(),
                format!("{i} squared is {}", i * i)
            );
        }
        // Several in flight, answered in order.
        for i in 0..5i64 {
            worker.send_message(&i).await.unwrap();
        }
        for i in 0..5i64 {
            let reply: String = worker.receive_message().await.unwrap();
            assert_eq!(reply, format!("{i} squared is {}", i * i));
        }
        let pid = worker.pid();
        assert_eq!(worker.close().await.unwrap().code(), Some(0));
        assert!(process_gone(pid));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn eight_mib_each_way_crossing_do_not_deadlock() {
    // The echo worker writes its reply while the master is still writing: each side's send
    // must read what the other sends meanwhile.
    let mut worker = spawn::<Echo>(&profile());
    let big = ByteBuf::from(vec![5u8; 8 << 20]);
    for _ in 0..2 {
        worker.send_message(&(big.clone(), 1)).await.unwrap();
    }
    for _ in 0..2 {
        let (back, n): (ByteBuf, i32) = worker.receive_message().await.unwrap();
        assert_eq!((back.len(), n), (big.len(), 1));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_cancelled_receive_loses_nothing() {
    let mut worker = spawn::<Hostile>(&profile());
    // Nothing comes: the receive is cancelled by the timeout.
    let waited = tokio::time::timeout(
        Duration::from_millis(50),
        worker.receive_message::<String>(),
    )
    .await;
    assert!(waited.is_err(), "{waited:?}");
    // The same through the handle's own timeout: the blocking API's error.
    match worker
        .receive_message_timeout::<String>(Duration::ZERO)
        .await
    {
        Err(Error::Timeout { pid, waited }) => {
            assert_eq!((pid, waited), (worker.pid(), Duration::ZERO))
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    worker.send_message(&Act::Sleep(0)).await.unwrap();
    assert_eq!(worker.receive_message::<String>().await.unwrap(), "done");
    worker
        .send_message(&Act::Burst {
            count: 3,
            text: Some("burst".into()),
        })
        .await
        .unwrap();
    // One of three: the others stay buffered, and a cancelled receive does not lose them.
    assert_eq!(worker.receive_message::<String>().await.unwrap(), "burst");
    assert!(worker.has_buffered_message());
    for _ in 0..2 {
        let reply = tokio::time::timeout(
            timeout(Duration::from_secs(10)),
            worker.receive_message::<String>(),
        )
        .await;
        assert_eq!(reply.unwrap().unwrap(), "burst");
    }
    // Cancelled while the reply is on its way (the worker sleeps first), then received.
    let pause = timeout(Duration::from_secs(1)).as_millis() as u64;
    worker.send_message(&Act::Sleep(pause)).await.unwrap();
    let early = tokio::time::timeout(
        Duration::from_millis(20),
        worker.receive_message::<String>(),
    )
    .await;
    assert!(early.is_err(), "{early:?}");
    let reply = worker
        .receive_message_timeout::<String>(timeout(Duration::from_secs(10)))
        .await;
    assert_eq!(reply.unwrap(), "done");
    // Duration::MAX means no limit, not a panic.
    worker
        .send_message_timeout(&Act::Reply("max".into()), Duration::MAX)
        .await
        .unwrap();
    let reply = worker
        .receive_message_timeout::<String>(Duration::MAX)
        .await;
    assert_eq!(reply.unwrap(), "max");
}

#[tokio::test(flavor = "current_thread")]
async fn a_send_cancelled_before_any_of_it_left_is_taken_back() {
    let mut worker = spawn::<Hostile>(&profile());
    let pid = worker.pid();
    worker.send_message(&Act::StopReading).await.unwrap();
    // Fill the worker's input with 1 KiB frames: a pipe takes each whole or not at all (a
    // write of at most `PIPE_BUF` bytes is atomic).
    let small = Act::Reply("x".repeat(1000));
    let limit = Duration::from_millis(50);
    let mut sent = 0;
    loop {
        match worker.send_message_timeout(&small, limit).await {
            Ok(()) => sent += 1,
            Err(Error::Timeout { pid: p, waited }) => {
                assert_eq!((p, waited), (pid, limit));
                break;
            }
            Err(other) => panic!("expected a timeout, got {other:?}"),
        }
        assert!(sent < 10_000, "the pipe never filled");
    }
    // None of it left: taken back, nothing queued.
    assert_eq!(worker.queued_bytes(), 0);
    // The same for a send cancelled from outside while the pipe is full.
    let cancelled = tokio::time::timeout(limit, worker.send_message(&small)).await;
    assert!(cancelled.is_err(), "{cancelled:?}");
    assert_eq!(worker.queued_bytes(), 0);
    // The channel is whole: a send still just waits (not ChannelBroken).
    match worker.send_message_timeout(&small, Duration::ZERO).await {
        Err(Error::Timeout { waited, .. }) => assert_eq!(waited, Duration::ZERO),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(worker.kill().unwrap().signal(), Some(libc::SIGKILL));
}

#[tokio::test(flavor = "current_thread")]
async fn a_send_cancelled_half_way_is_finished_by_the_next_receive() {
    // The worker does not read for a (scaled) second: a 4 MiB send fills the pipe and is cancelled
    // with part of its frame written. The rest stays queued, and the receive that waits for
    // the worker's answers writes it when the worker reads again: nothing is cut.
    let mut worker = spawn::<Hostile>(&profile());
    let pause = timeout(Duration::from_secs(1)).as_millis() as u64;
    worker.send_message(&Act::Sleep(pause)).await.unwrap();
    let message = Act::Reply("x".repeat(4 << 20));
    let cancelled =
        tokio::time::timeout(Duration::from_millis(20), worker.send_message(&message)).await;
    assert!(cancelled.is_err(), "a 4 MiB send cannot fit in a pipe");
    let queued = worker.queued_bytes();
    assert!(queued > 0 && queued < 4 << 20, "{queued} bytes queued");
    let limit = timeout(Duration::from_secs(10));
    let done = worker.receive_message_timeout::<String>(limit).await;
    assert_eq!(done.unwrap(), "done");
    let reply = worker.receive_message_timeout::<String>(limit).await;
    assert_eq!(reply.unwrap().len(), 4 << 20);
    assert_eq!(worker.queued_bytes(), 0);
}

// The same scenarios through the blocking API and the async one: the same results.

/// What a scenario does, in order.
#[derive(Clone, Debug)]
enum Op {
    /// Sends an act.
    Act(Act),
    /// Sends a message.
    Send(&'static str),
    /// Receives a text, waiting at most the scaled 10 s.
    Receive,
    /// Sends 1 MiB messages until one fails (a dead worker's pipe fills up).
    SendUntilError,
    /// Kills the worker from outside.
    Sigkill,
}

struct Scenario {
    name: &'static str,
    /// The worker: the hostile one, or a failer with this failure.
    failer: Option<Failure>,
    ops: Vec<Op>,
    /// What the first failure must contain, so two identical timeouts cannot pass.
    expected: &'static str,
}

fn scenarios() -> Vec<Scenario> {
    use Op::*;
    vec![
        Scenario {
            name: "the worker exits after its last words",
            failer: None,
            ops: vec![
                Act(self::Act::Reply("last words".into())),
                Act(self::Act::Exit(3)),
                Receive,
                Receive,
                Send("more"),
                Receive,
            ],
            expected: "WorkerExited",
        },
        Scenario {
            name: "the worker panics",
            failer: Some(Failure::Panic("the worker gave up".into())),
            ops: vec![Send("hello"), Receive, Send("fail now"), Receive, Receive],
            expected: "the worker gave up",
        },
        Scenario {
            name: "the worker is killed from outside",
            failer: None,
            ops: vec![
                Act(self::Act::Reply("alive".into())),
                Receive,
                Sigkill,
                Receive,
                Send("more"),
            ],
            expected: "unix_wait_status(9)",
        },
        Scenario {
            name: "a grandchild holds the channel",
            failer: None,
            ops: vec![
                Act(self::Act::Reply("last words".into())),
                Act(self::Act::ForkAndExit {
                    code: 7,
                    millis: 600_000,
                }),
                Receive,
                Receive,
                Receive,
            ],
            expected: "WorkerExited",
        },
        Scenario {
            name: "a send to a dead worker",
            failer: None,
            ops: vec![Act(self::Act::Exit(4)), SendUntilError, Receive],
            expected: "WorkerExited",
        },
        Scenario {
            name: "an oversized frame",
            failer: None,
            ops: vec![
                Act(self::Act::Header {
                    len: u32::MAX,
                    kind: 0,
                }),
                Receive,
            ],
            expected: "FrameTooLarge",
        },
        Scenario {
            name: "garbage: a frame kind that does not exist",
            failer: None,
            ops: vec![Act(self::Act::Header { len: 0, kind: 9 }), Receive],
            expected: "UnknownFrameKind(9)",
        },
        Scenario {
            name: "a message that does not decode",
            failer: None,
            ops: vec![
                Act(self::Act::Burst {
                    count: 2,
                    text: None,
                }),
                Receive,
            ],
            expected: "Decode",
        },
        Scenario {
            name: "a frame cut by the worker's death",
            failer: None,
            ops: vec![Act(self::Act::StallMidFrame), Sigkill, Receive, Receive],
            expected: "unix_wait_status(9)",
        },
        Scenario {
            name: "the worker closes its channel and lives on",
            failer: None,
            ops: vec![Act(self::Act::CloseAndLinger(600_000)), Receive, Receive],
            expected: "ChannelClosed",
        },
    ]
}

fn spawn_for(scenario: &Scenario) -> DedicatedWorker {
    let profile = profile().with_stderr(StderrMode::Capture);
    match &scenario.failer {
        Some(failure) => DedicatedWorker::spawn_with_args::<Failer>(&profile, failure).unwrap(),
        None => DedicatedWorker::spawn::<Hostile>(&profile).unwrap(),
    }
}

/// A result as text, the pid (which differs between the two runs) left out.
fn outcome<T: std::fmt::Debug>(pid: u32, result: &Result<T, Error>) -> String {
    // A panic message names the worker's main thread, whose id is its pid.
    format!("{result:?}")
        .replace(&format!("pid: {pid}"), "pid: _")
        .replace(&format!("({pid})"), "(_)")
}

fn run_blocking(scenario: &Scenario) -> Vec<String> {
    let mut worker = spawn_for(scenario);
    let pid = worker.pid();
    let big = ByteBuf::from(vec![0u8; 1 << 20]);
    let mut outcomes = Vec::new();
    for op in &scenario.ops {
        let result = match op {
            Op::Act(act) => outcome(pid, &worker.send_message(act)),
            Op::Send(text) => outcome(pid, &worker.send_message(text)),
            Op::Receive => outcome(
                pid,
                &worker.receive_message_timeout::<String>(timeout(Duration::from_secs(10))),
            ),
            Op::SendUntilError => loop {
                if let Err(e) = worker.send_message(&big) {
                    break outcome::<()>(pid, &Err(e));
                }
            },
            Op::Sigkill => {
                sigkill(pid);
                continue;
            }
        };
        outcomes.push(result);
    }
    outcomes
}

async fn run_async(scenario: &Scenario) -> Vec<String> {
    let mut worker = spawn_for(scenario).into_async().unwrap();
    let pid = worker.pid();
    let big = ByteBuf::from(vec![0u8; 1 << 20]);
    let mut outcomes = Vec::new();
    for op in &scenario.ops {
        let result = match op {
            Op::Act(act) => outcome(pid, &worker.send_message(act).await),
            Op::Send(text) => outcome(pid, &worker.send_message(text).await),
            Op::Receive => outcome(
                pid,
                &worker
                    .receive_message_timeout::<String>(timeout(Duration::from_secs(10)))
                    .await,
            ),
            Op::SendUntilError => loop {
                if let Err(e) = worker.send_message(&big).await {
                    break outcome::<()>(pid, &Err(e));
                }
            },
            Op::Sigkill => {
                sigkill(pid);
                continue;
            }
        };
        outcomes.push(result);
    }
    outcomes
}

#[tokio::test(flavor = "current_thread")]
async fn the_async_face_fails_exactly_as_the_blocking_one() {
    for scenario in scenarios() {
        let blocking = run_blocking(&scenario);
        let nonblocking = run_async(&scenario).await;
        assert_eq!(blocking, nonblocking, "{}", scenario.name);
        let first_failure = blocking
            .iter()
            .find(|o| o.starts_with("Err"))
            .unwrap_or_else(|| panic!("{}: no failure in {blocking:?}", scenario.name));
        assert!(
            first_failure.contains(scenario.expected),
            "{}: expected {:?} in {first_failure}",
            scenario.name,
            scenario.expected
        );
        assert!(
            !blocking.iter().any(|o| o.contains("Timeout")),
            "{}: {blocking:?}",
            scenario.name
        );
    }
}

#[test]
fn many_workers_at_once_from_one_thread_start_no_thread() {
    let lines = run_master(&["async-many", "16"]);
    let before: usize = value(&lines, "threads_before").parse().unwrap();
    let max: usize = value(&lines, "threads_max").parse().unwrap();
    assert_eq!(value(&lines, "round_trips"), "800");
    assert_eq!(
        max, before,
        "threads while 16 workers were driven at once: {max}, before: {before}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn dropping_an_async_worker_does_not_wait_for_its_grace_period() {
    // A worker that ignores the end of its channel, with a long grace period: a drop that
    // waited for it would hold the runtime's thread for 30 s.
    let profile = profile().with_close_grace(Duration::from_secs(30));
    let mut worker = spawn::<Hostile>(&profile);
    worker.send_message(&Act::StopReading).await.unwrap();
    let pid = worker.pid();
    let start = std::time::Instant::now();
    drop(worker);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "drop took {:?}",
        start.elapsed()
    );
    // A worker that reads sees the end of its channel and is reaped at once, in the
    // background.
    let worker = spawn::<Squarer>(&profile);
    let pid2 = worker.pid();
    drop(worker);
    assert!(wait_until(Duration::from_secs(10), || process_gone(pid2)));
    // The one that ignores it is killed after the grace period.
    assert!(!process_gone(pid));
}

#[tokio::test(flavor = "current_thread")]
async fn close_and_wait_report_how_the_worker_exited() {
    // close: the worker sees the end of its channel and exits 0.
    let mut worker = spawn::<Squarer>(&profile());
    worker.send_message(&2i64).await.unwrap();
    assert_eq!(worker.close().await.unwrap().code(), Some(0));
    // close: a worker that does not read is killed after the grace period.
    let profile = profile().with_close_grace(Duration::from_millis(100));
    let mut worker = spawn::<Hostile>(&profile);
    worker.send_message(&Act::StopReading).await.unwrap();
    assert_eq!(worker.close().await.unwrap().signal(), Some(libc::SIGKILL));
    // wait: the exit of a worker that exits by itself, then its last words still received.
    let mut worker = spawn::<Hostile>(&profile);
    worker
        .send_message(&Act::Reply("bye".into()))
        .await
        .unwrap();
    worker.send_message(&Act::Exit(6)).await.unwrap();
    let status = tokio::time::timeout(timeout(Duration::from_secs(10)), worker.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(6));
    assert_eq!(worker.receive_message::<String>().await.unwrap(), "bye");
    assert_eq!(
        worker
            .receive_message::<String>()
            .await
            .unwrap_err()
            .exit_status()
            .and_then(|s| s.code()),
        Some(6)
    );
    // into_inner: the blocking handle back, with what is buffered.
    let mut worker = spawn::<Squarer>(&profile);
    worker.send_message(&3i64).await.unwrap();
    let mut blocking = worker.into_inner();
    assert_eq!(
        blocking.receive_message::<String>().unwrap(),
        "3 squared is 9"
    );
    assert_eq!(blocking.close().unwrap().code(), Some(0));
}

// The shared-worker client from async code.

#[tokio::test(flavor = "current_thread")]
async fn async_clients_of_an_embedded_shared_worker_greet_query_and_stop_it() {
    use exsyst_worker::{
        AdminCookie, AsyncSharedWorker, SharedServer, SharedServerConfig, SharedWorker,
    };
    use tests_integration::workers::shared::{MySharedWorkerImpl, ordinal};

    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix://{}/Worker.sock", dir.path().display());
    let cookie = AdminCookie::new("the async tests' cookie").unwrap();
    let config = SharedServerConfig::default().with_cookie(cookie.clone());
    let server = SharedServer::bind(&address, config)
        .unwrap()
        .spawn(|| MySharedWorkerImpl::new(()))
        .unwrap();
    // Eight clients at once from this one thread; each greeting takes a number.
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(AsyncSharedWorker::connect(&address).await.unwrap());
    }
    // Each on a task of its own, all on this thread.
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            tokio::spawn(async move {
                client.send_message(&format!("client{i}")).await.unwrap();
                let greeting: String = client.receive_message().await.unwrap();
                (client, greeting)
            })
        })
        .collect();
    let (mut clients, mut numbers) = (Vec::new(), Vec::new());
    for task in tasks {
        let (client, greeting) = task.await.unwrap();
        let nth = (1..=8u64)
            .find(|n| greeting.ends_with(&format!("You're my {} client.", ordinal(*n))))
            .unwrap_or_else(|| panic!("{greeting}"));
        numbers.push(nth);
        clients.push(client);
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=8).collect::<Vec<_>>());
    let status = clients[0].query().await.unwrap().status.unwrap();
    assert_eq!(status.text(), "Current counter value : 8");
    // A blocking client converted, the same worker.
    let mut converted = SharedWorker::connect(&address)
        .unwrap()
        .into_async()
        .unwrap();
    converted.send_message("late").await.unwrap();
    assert_eq!(
        converted.receive_message::<String>().await.unwrap(),
        format!("Hello late ! You're my {} client.", ordinal(9))
    );
    converted.stop(&cookie).await.unwrap();
    // The stop ends every connection with its notice.
    match clients[1].receive_message::<String>().await {
        Err(exsyst_worker::shared::Error::Stopping { pid, .. }) => {
            assert_eq!(pid, Some(std::process::id()))
        }
        other => panic!("expected the stopping notice, got {other:?}"),
    }
    server.join().unwrap();
}
