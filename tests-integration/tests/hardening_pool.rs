//! Pools against hostile workers and extreme settings (issue 8: A3, A4, A5, A6, A7, A11, A12,
//! A13, B6).

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    time::{Duration, Instant},
};

use exsyst_worker::channel::serde_bytes::ByteBuf;
use exsyst_worker::{
    WorkerFactory,
    bootstrap::Error as Bootstrap,
    channel::Error as ChannelError,
    pool::{Error, WorkerPool, WorkerPoolBuilder},
};
use tests_integration::workers::{
    hostile::{Act, Hostile},
    hostile_tasks::{Blob, Fragile, Item, Prank, Pranks, Stunt, Stunts, Trick},
    pool::{Command, Commands, PidSquarer, Tiny},
};

use crate::support::*;

fn builder() -> WorkerPoolBuilder {
    WorkerFactory::with_profile(profile()).create_worker_pool_builder()
}

/// Runs `f` on a thread of its own and gives its result if it ends within `limit` (exactly:
/// a bound that is the requirement), or `None` if it is still running then (it is left to
/// run: the point is that the caller is not held).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

/// The bootstrap error a pool error carries as its source.
fn bootstrap_source(e: &Error) -> &Bootstrap {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<Bootstrap>())
        .unwrap_or_else(|| panic!("{e:?} has no bootstrap error as its source"))
}

/// The frame limit an [`Error::Encode`] of `what` names.
fn too_large(result: Result<impl std::fmt::Debug, Error>, what: &str) -> u32 {
    match result {
        Err(Error::Encode { what: w, source }) if w == what => match &*source {
            ChannelError::FrameTooLarge { max, .. } => *max,
            other => panic!("expected a frame over the limit, got {other:?}"),
        },
        other => panic!("expected the {what} to be too large, got {other:?}"),
    }
}

/// The channel error inside a bootstrap error.
fn channel_error(e: &Bootstrap) -> &ChannelError {
    match e {
        Bootstrap::Channel { source, .. } => source,
        other => panic!("expected a channel error, got {other:?}"),
    }
}

/// Waits until the worker's output has something to read.
fn wait_readable(fd: BorrowedFd<'_>) -> bool {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout(Duration::from_secs(10)).as_millis() as libc::c_int;
    // SAFETY: one valid pollfd, for the length given; the descriptor outlives the call.
    let n = unsafe { libc::poll(&mut pollfd, 1, ms) };
    n == 1
}

// ---- A5: a worker that sends a bad header cannot starve the pool ----

fn hostile_pool(size: usize) -> WorkerPool {
    builder().size(size).build::<Hostile>().unwrap()
}

#[test]
fn a_bad_header_replaces_that_worker_and_the_others_are_delivered() {
    // An oversized frame, and one of a kind that does not exist.
    for (len, kind) in [(u32::MAX, 0u8), (0, 9)] {
        let mut pool = hostile_pool(2);
        let bad = pool[0].pid();
        pool.send_message(0, &Act::Header { len, kind }).unwrap();
        pool.send_message(1, &Act::Reply("fine".into())).unwrap();
        let limit = timeout(Duration::from_secs(10));
        let mut replies = Vec::new();
        for _ in 0..2 {
            match pool.receive_message_timeout::<String>(limit) {
                Ok(reply) => replies.push(reply),
                Err(e @ Error::Worker { index: 0, pid, .. }) => {
                    assert_eq!(pid, bad);
                    match channel_error(bootstrap_source(&e)) {
                        ChannelError::FrameTooLarge { len: got, .. } => {
                            assert_eq!(*got, u64::from(len))
                        }
                        ChannelError::UnknownFrameKind(got) => assert_eq!(*got, kind),
                        other => panic!("expected a framing error, got {other:?}"),
                    }
                }
                Err(other) => panic!("expected worker 0's framing error, got {other:?}"),
            }
        }
        assert_eq!(replies, [(1, "fine".to_owned())]);
        // The worker whose channel broke was replaced as if it had died.
        assert_ne!(pool[0].pid(), bad);
        assert!(wait_until(Duration::from_secs(10), || process_gone(bad)));
        assert_eq!(pool.restarted(), 1);
        // Both serve again, the replacement included.
        for i in [1, 0] {
            pool.send_message(i, &Act::Reply(format!("again {i}")))
                .unwrap();
            assert_eq!(
                pool.receive_message_timeout::<String>(limit).unwrap(),
                (i, format!("again {i}"))
            );
        }
    }
}

#[test]
fn killing_a_worker_that_sent_a_bad_header_unblocks_the_pool() {
    let mut pool = hostile_pool(2);
    pool.send_message(0, &Act::Header { len: 0, kind: 9 })
        .unwrap();
    assert!(wait_readable(pool[0].as_fd()));
    pool[0].kill().unwrap();
    pool.send_message(1, &Act::Reply("fine".into())).unwrap();
    let limit = timeout(Duration::from_secs(10));
    let mut errors = 0;
    let reply = loop {
        match pool.receive_message_timeout::<String>(limit) {
            Ok(reply) => break reply,
            Err(Error::Worker { index: 0, .. }) if errors == 0 => errors += 1,
            Err(other) => panic!("expected worker 1's reply, got {other:?}"),
        }
    };
    assert_eq!(reply, (1, "fine".to_owned()));
}

#[test]
fn receives_take_turns_even_when_one_worker_only_sends_what_does_not_decode() {
    let mut pool = hostile_pool(2);
    let pids = pool.pids();
    pool.send_message(
        0,
        &Act::Burst {
            count: 3,
            text: None,
        },
    )
    .unwrap();
    pool.send_message(
        1,
        &Act::Burst {
            count: 3,
            text: Some("b".into()),
        },
    )
    .unwrap();
    assert!(wait_readable(pool[0].as_fd()) && wait_readable(pool[1].as_fd()));
    let limit = timeout(Duration::from_secs(10));
    let mut order = Vec::new();
    for _ in 0..6 {
        match pool.receive_message_timeout::<String>(limit) {
            Ok((index, text)) => {
                assert_eq!((index, text.as_str()), (1, "b"));
                order.push(1);
            }
            Err(e @ Error::Worker { index: 0, .. }) => {
                assert!(
                    matches!(
                        channel_error(bootstrap_source(&e)),
                        ChannelError::Decode { .. }
                    ),
                    "{e:?}"
                );
                order.push(0);
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(order, [0, 1, 0, 1, 0, 1], "each worker in turn");
    // A message that does not decode leaves the channel in step: nobody was replaced.
    assert_eq!(pool.pids(), pids);
    assert_eq!(pool.restarted(), 0);
}

// ---- A6: extreme durations and settings ----

#[test]
fn duration_max_is_no_deadline_and_zero_is_no_wait_in_the_message_pool() {
    let mut pool = builder().size(1).build::<PidSquarer>().unwrap();
    assert!(matches!(
        pool.receive_message_timeout::<(u32, i64, String)>(Duration::ZERO),
        Err(Error::Timeout {
            waited: Duration::ZERO
        })
    ));
    // Zero takes what is there.
    pool.send_message(0, &2i64).unwrap();
    assert!(wait_readable(pool[0].as_fd()));
    let (index, (_, n, _)): (usize, (u32, i64, String)) =
        pool.receive_message_timeout(Duration::ZERO).unwrap();
    assert_eq!((index, n), (0, 2));
    // The longest timeout there is waits as long as it takes.
    pool.send_message(0, &3i64).unwrap();
    let (index, (_, n, _)): (usize, (u32, i64, String)) =
        within(timeout(Duration::from_secs(10)), move || {
            pool.receive_message_timeout(Duration::MAX)
        })
        .expect("the receive returns")
        .unwrap();
    assert_eq!((index, n), (0, 3));
}

#[test]
fn a_task_timeout_of_duration_max_is_no_timeout() {
    let results = within(timeout(Duration::from_secs(20)), || {
        let pool = builder()
            .size(2)
            .task_timeout(Duration::MAX)
            .build_tasks::<Tiny>()
            .unwrap();
        let handle = pool.submit(41).unwrap();
        let one = handle.wait_timeout(Duration::MAX);
        (one, pool.map(0..100))
    })
    .expect("the pool answers");
    assert_eq!(results.0.unwrap(), 42);
    assert_eq!(results.1.unwrap(), (1..=100).collect::<Vec<u64>>());
}

#[test]
fn a_dead_dispatcher_fails_every_call_at_once() {
    let pool = std::sync::Arc::new(builder().size(1).build_tasks::<Fragile>().unwrap());
    assert_eq!(pool.submit(Item::Fine(1)).unwrap().wait().unwrap(), 1);
    // The item's own Serialize panics on the dispatcher thread.
    let mapped = within(timeout(Duration::from_secs(10)), {
        let pool = pool.clone();
        move || pool.map([Item::Fine(2), Item::Boom, Item::Fine(3)])
    })
    .expect("map returns");
    assert!(
        matches!(mapped, Err(Error::PoolFailed { .. })),
        "{mapped:?}"
    );
    let start = Instant::now();
    let next = pool.submit(Item::Fine(4)).and_then(|h| h.wait());
    assert!(matches!(next, Err(Error::PoolFailed { .. })), "{next:?}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn extreme_settings_are_configuration_errors_not_panics() {
    let refused: Vec<(WorkerPoolBuilder, &str)> = vec![
        (builder().size(0), "size"),
        (builder().size(u32::MAX as usize), "size"),
        (builder().size(usize::MAX), "size"),
        (builder().in_flight_per_worker(0), "in_flight_per_worker"),
        (builder().queue_bound(0), "queue_bound"),
        (builder().queue_bound(usize::MAX), "queue_bound"),
        (builder().task_timeout(Duration::ZERO), "task_timeout"),
        (builder().max_restarts(3, Duration::ZERO), "max_restarts"),
        (builder().recycle_after(0), "recycle_after"),
        (builder().chunk_size(0), "chunk_size"),
    ];
    for (b, setting) in refused {
        let what = format!("{b:?}");
        let built = within(timeout(Duration::from_secs(10)), move || {
            b.build_tasks::<Tiny>().map(drop)
        })
        .unwrap_or_else(|| panic!("{what} hangs or panics"));
        match built {
            Err(Error::Config { what: s, .. }) => assert_eq!(s, setting, "{what}"),
            other => panic!("{what}: expected a configuration error, got {other:?}"),
        }
    }
    // The largest values that make sense are accepted and work.
    let pool = builder()
        .size(1)
        .in_flight_per_worker(usize::MAX)
        .max_restarts(u32::MAX, Duration::MAX)
        .recycle_after(u64::MAX)
        .chunk_size(usize::MAX)
        .task_timeout(Duration::MAX)
        .build_tasks::<Tiny>()
        .unwrap();
    assert_eq!(pool.map(0..10).unwrap(), (1..=10).collect::<Vec<u64>>());
    assert!(pool.map(Vec::new()).unwrap().is_empty());
    let handle = pool.submit(1).unwrap();
    assert_eq!(handle.wait_timeout(Duration::MAX).unwrap(), 2);
    assert!(matches!(
        pool.submit(1).unwrap().wait_timeout(Duration::ZERO),
        Ok(2) | Err(Error::Timeout { .. })
    ));
    let pool = builder()
        .size(1)
        .max_restarts(0, Duration::from_nanos(1))
        .build_tasks::<Commands>()
        .unwrap();
    // No restart allowed: the first failure fails the pool, with the typed error.
    match pool.submit(Command::Exit(3)).unwrap().wait() {
        Err(Error::Worker { source, .. }) => assert!(
            matches!(&*source, Bootstrap::WorkerExited { status, .. } if status.code() == Some(3)),
            "{source:?}"
        ),
        other => panic!("expected the worker's exit, got {other:?}"),
    }
    assert!(matches!(
        pool.submit(Command::Echo(1)).and_then(|h| h.wait()),
        Err(Error::PoolFailed { .. })
    ));
}

// ---- A12: one bad item fails alone ----

#[test]
fn a_message_over_the_frame_limit_fails_alone_and_its_worker_stays() {
    let mut pool = small_frames().size(1).build::<Hostile>().unwrap();
    let pid = pool[0].pid();
    let big = Act::Reply("x".repeat(100 << 10));
    assert_eq!(too_large(pool.send_message(0, &big), "message"), 64 << 10);
    pool.send_message(0, &Act::Reply("small".into())).unwrap();
    let reply = pool.receive_message_timeout::<String>(timeout(Duration::from_secs(10)));
    assert_eq!(reply.unwrap(), (0, "small".to_owned()));
    assert_eq!((pool[0].pid(), pool.restarted()), (pid, 0));
}

/// A profile whose frames carry at most 64 KiB.
fn small_frames() -> WorkerPoolBuilder {
    WorkerFactory::with_profile(profile().with_max_frame_len(64 << 10)).create_worker_pool_builder()
}

fn big() -> Command {
    Command::Len(ByteBuf::from(vec![7u8; 100 << 10]))
}

#[test]
fn an_item_over_the_frame_limit_fails_alone_in_a_map_chunk() {
    let pool = small_frames()
        .size(1)
        .chunk_size(4)
        .build_tasks::<Commands>()
        .unwrap();
    let pids = pool.pids();
    let mut results: Vec<_> = pool
        .map_unordered([Command::Echo(0), big(), Command::Echo(2), Command::Echo(3)])
        .collect();
    results.sort_by_key(|(i, _)| *i);
    for (i, result) in results {
        match i {
            1 => assert_eq!(too_large(result, "item"), 64 << 10),
            i => assert_eq!(result.unwrap(), i as u64),
        }
    }
    assert_eq!(pool.pids(), pids, "the worker is healthy and stays");
    assert_eq!(pool.stats().restarted, 0);
}

#[test]
fn an_item_over_the_frame_limit_fails_alone_among_tasks_that_travel_together() {
    // One worker that takes four tasks at a time and is replaced after each message: the
    // tasks submitted while it retires wait together, and travel to its successor in one
    // message.
    let pool = small_frames()
        .size(1)
        .in_flight_per_worker(4)
        .recycle_after(1)
        .build_tasks::<Pranks>()
        .unwrap();
    let held = Held::new();
    let first = pool
        .submit(Trick::new(0, Prank::AsIs).held(held.path.clone()))
        .unwrap();
    let (_, release) = held.started();
    let handles: Vec<_> = (1..=4u64)
        .map(|n| {
            let trick = Trick::new(n, Prank::AsIs);
            let trick = if n == 2 {
                trick.padded(100 << 10)
            } else {
                trick
            };
            pool.submit(trick).unwrap()
        })
        .collect();
    assert!(wait_until(Duration::from_secs(10), || pool.stats().queued == 4));
    drop(release);
    assert_eq!(first.wait().unwrap(), 0);
    for (n, handle) in (1..=4u64).zip(handles) {
        let result = handle.wait_timeout(timeout(Duration::from_secs(10)));
        if n == 2 {
            assert_eq!(too_large(result, "item"), 64 << 10);
        } else {
            assert_eq!(
                result.unwrap(),
                n,
                "task {n} fails only if it is the bad one"
            );
        }
    }
    assert_eq!(pool.stats().restarted, 0);
}

#[test]
fn a_result_over_the_frame_limit_fails_alone() {
    let pool = small_frames()
        .size(1)
        .chunk_size(3)
        .build_tasks::<Blob>()
        .unwrap();
    let pids = pool.pids();
    let mut results: Vec<_> = pool.map_unordered([10, 100 << 10, 20]).collect();
    results.sort_by_key(|(i, _)| *i);
    let mut results = results.into_iter().map(|(_, r)| r);
    assert_eq!(results.next().unwrap().unwrap().len(), 10);
    assert_eq!(too_large(results.next().unwrap(), "result"), 64 << 10);
    assert_eq!(results.next().unwrap().unwrap().len(), 20);
    // Results that fit one by one but not together all arrive.
    let lens: Vec<usize> = pool
        .map([40 << 10, 40 << 10, 40 << 10])
        .unwrap()
        .iter()
        .map(|b| b.len())
        .collect();
    assert_eq!(lens, [40 << 10; 3]);
    assert_eq!(pool.pids(), pids, "the worker is healthy and stays");
}

// ---- A13: a reply nobody asked for is a protocol error ----

#[test]
fn an_extra_reply_is_a_protocol_error_not_the_next_tasks_result() {
    let pool = builder()
        .size(1)
        .in_flight_per_worker(2)
        .build_tasks::<Pranks>()
        .unwrap();
    let held = Held::new();
    let first = pool
        .submit(Trick::new(1, Prank::Twice).held(held.path.clone()))
        .unwrap();
    let (pid, release) = held.started();
    let second = pool.submit(Trick::new(2, Prank::AsIs)).unwrap();
    assert!(wait_until(Duration::from_secs(10), || pool
        .stats()
        .in_flight
        == 2));
    drop(release);
    let limit = timeout(Duration::from_secs(10));
    assert_eq!(first.wait_timeout(limit).unwrap(), 1);
    match second.wait_timeout(limit) {
        Err(Error::Protocol {
            index: 0, pid: p, ..
        }) => assert_eq!(p, pid),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert!(wait_until(Duration::from_secs(10), || process_gone(pid)));
    assert_eq!(pool.stats().restarted, 1);
    assert_eq!(
        pool.submit(Trick::new(3, Prank::AsIs))
            .unwrap()
            .wait()
            .unwrap(),
        3
    );
}

#[test]
fn a_reply_to_another_task_is_a_protocol_error() {
    let pool = builder().size(1).build_tasks::<Pranks>().unwrap();
    let pid = pool.pids()[0];
    assert_eq!(
        pool.submit(Trick::new(1, Prank::AsIs))
            .unwrap()
            .wait()
            .unwrap(),
        1
    );
    match pool.submit(Trick::new(2, Prank::Stale)).unwrap().wait() {
        Err(Error::Protocol {
            index: 0, pid: p, ..
        }) => assert_eq!(p, pid),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert_eq!(pool.stats().restarted, 1);
    assert_eq!(
        pool.submit(Trick::new(3, Prank::AsIs))
            .unwrap()
            .wait()
            .unwrap(),
        3
    );
}

// ---- B6: every task a broken worker held sees the same error ----

#[test]
fn every_task_on_a_worker_whose_channel_broke_gets_the_framing_error() {
    let pool = builder()
        .size(1)
        .in_flight_per_worker(2)
        .build_tasks::<Pranks>()
        .unwrap();
    let held = Held::new();
    let first = pool
        .submit(Trick::new(1, Prank::BadHeader).held(held.path.clone()))
        .unwrap();
    let (pid, release) = held.started();
    let second = pool.submit(Trick::new(2, Prank::AsIs)).unwrap();
    assert!(wait_until(Duration::from_secs(10), || pool
        .stats()
        .in_flight
        == 2));
    drop(release);
    let limit = timeout(Duration::from_secs(10));
    for handle in [first, second] {
        match handle.wait_timeout(limit) {
            Err(
                e @ Error::Worker {
                    index: 0, pid: p, ..
                },
            ) => {
                assert_eq!(p, pid);
                assert!(
                    matches!(
                        channel_error(bootstrap_source(&e)),
                        ChannelError::FrameTooLarge { .. }
                    ),
                    "{e:?}"
                );
            }
            other => panic!("expected the framing error, got {other:?}"),
        }
    }
}

// ---- A4: dropping a pool never hangs ----

#[test]
fn dropping_a_pool_whose_worker_takes_no_input_and_has_no_task_timeout_is_quick() {
    // One worker, two tasks in flight, no task timeout: the first never ends, the second is
    // larger than the worker's input pipe, so sending it waits for a worker that never reads.
    let pool = builder()
        .size(1)
        .in_flight_per_worker(2)
        .build_tasks::<Commands>()
        .unwrap();
    let worker = pool.pids()[0];
    let stuck = pool.submit(Command::Sleep(600_000)).unwrap();
    assert!(wait_until(Duration::from_secs(10), || pool
        .stats()
        .in_flight
        == 1));
    let big = pool
        .submit(Command::Len(ByteBuf::from(vec![7u8; 4 << 20])))
        .unwrap();
    // The dispatcher took it from the queue: it is sending.
    assert!(wait_until(Duration::from_secs(10), || pool.stats().queued == 0));
    let start = Instant::now();
    let dropped = within(Duration::from_secs(1), move || drop(pool));
    assert!(
        dropped.is_some(),
        "drop still running after {:?}",
        start.elapsed()
    );
    // Their results will not come: waiting for them ends at once.
    for handle in [stuck, big] {
        let start = Instant::now();
        assert!(matches!(handle.wait(), Err(Error::Closed)));
        assert!(start.elapsed() < Duration::from_secs(1));
    }
    // Nothing was left behind: the dispatcher was not held by the send, and killed the worker.
    assert!(
        wait_until(Duration::from_secs(10), || process_gone(worker)),
        "worker {worker} outlived its pool"
    );
}

#[test]
fn a_request_a_busy_worker_cannot_take_yet_holds_up_no_other_worker() {
    // Two workers, each running a task until released; no task timeout.
    let pool = builder()
        .size(2)
        .in_flight_per_worker(2)
        .build_tasks::<Commands>()
        .unwrap();
    let (first, second) = (Held::new(), Held::new());
    let a = pool.submit(Command::Hold(first.path.clone())).unwrap();
    let (a_pid, release_a) = first.started();
    let b = pool.submit(Command::Hold(second.path.clone())).unwrap();
    let (b_pid, release_b) = second.started();
    assert_ne!(a_pid, b_pid);
    // Equally loaded, so this goes to the first: far more than its input pipe takes, while
    // it reads nothing.
    let big = pool
        .submit(Command::Len(ByteBuf::from(vec![7u8; 4 << 20])))
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || pool.stats().queued == 0));
    // The other worker is answered, and serves on, while that request waits for room.
    drop(release_b);
    let limit = timeout(Duration::from_secs(10));
    assert_eq!(b.wait_timeout(limit).unwrap(), u64::from(b_pid));
    for n in 0..20 {
        let echo = pool.submit(Command::Echo(n)).unwrap();
        assert_eq!(echo.wait_timeout(limit).unwrap(), n);
    }
    assert!(
        big.try_result().is_none(),
        "the large request went to the idle worker"
    );
    // Once the first worker reads again, the rest of the request goes as its input finds room.
    drop(release_a);
    assert_eq!(a.wait_timeout(limit).unwrap(), u64::from(a_pid));
    assert_eq!(big.wait_timeout(limit).unwrap(), 4 << 20);
    let stats = pool.stats();
    assert_eq!((stats.restarted, stats.failed), (0, 0));
}

// ---- A7: a worker's death is seen while a grandchild it forked holds its channel ----

/// The exit code of the worker whose death `e` reports.
fn exit_code(e: &Error) -> Option<i32> {
    match bootstrap_source(e) {
        Bootstrap::WorkerExited { status, .. } => status.code(),
        other => panic!("expected the worker's exit, got {other:?}"),
    }
}

#[test]
fn a_message_pool_sees_a_worker_die_while_its_grandchild_holds_the_channel() {
    let mut pool = hostile_pool(2);
    let dead = pool[0].pid();
    pool.send_message(
        0,
        &Act::ForkAndExit {
            code: 7,
            millis: 600_000,
        },
    )
    .unwrap();
    // Well before the grandchild lets the channel go.
    match pool.receive_message_timeout::<String>(timeout(Duration::from_secs(10))) {
        Err(e @ Error::Worker { index: 0, pid, .. }) => {
            assert_eq!(pid, dead);
            assert_eq!(exit_code(&e), Some(7), "{e:?}");
        }
        other => panic!("expected worker 0's exit, got {other:?}"),
    }
    assert_ne!(pool[0].pid(), dead);
    assert_eq!(pool.restarted(), 1);
    assert!(wait_until(Duration::from_secs(10), || process_gone(dead)));
    for i in [0, 1] {
        pool.send_message(i, &Act::Reply(format!("still here {i}")))
            .unwrap();
        assert_eq!(
            pool.receive_message_timeout::<String>(timeout(Duration::from_secs(10)))
                .unwrap(),
            (i, format!("still here {i}"))
        );
    }
}

#[test]
fn a_task_pool_sees_a_worker_die_while_its_grandchild_holds_the_channel() {
    let pool = builder().size(2).build_tasks::<Stunts>().unwrap();
    let before = pool.pids();
    let task = pool
        .submit(Stunt::ForkAndExit {
            code: 7,
            millis: 600_000,
        })
        .unwrap();
    // Well before the grandchild lets the channel go.
    let dead = match task.wait_timeout(timeout(Duration::from_secs(10))) {
        Err(e @ Error::Worker { pid, .. }) => {
            assert_eq!(exit_code(&e), Some(7), "{e:?}");
            pid
        }
        other => panic!("expected the worker's exit, got {other:?}"),
    };
    assert!(before.contains(&dead));
    let stats = pool.stats();
    assert_eq!((stats.restarted, stats.workers), (1, 2));
    let after = pool.pids();
    assert!(!after.contains(&dead), "{after:?}");
    assert!(wait_until(Duration::from_secs(10), || process_gone(dead)));
    assert_eq!(
        pool.map((0..20).map(Stunt::Echo)).unwrap(),
        (0..20).collect::<Vec<u64>>()
    );
}

// ---- A3: a task worker that closes its channel and lingers holds up nothing ----

#[test]
fn a_task_worker_that_closes_its_channel_and_lingers_holds_up_no_other_task() {
    // A grace period far longer than any wait below: a dispatcher that waited for it would
    // show.
    let pool = WorkerFactory::with_profile(profile().with_close_grace(Duration::from_secs(600)))
        .create_worker_pool_builder()
        .size(2)
        .task_timeout(Duration::from_secs(600))
        .build_tasks::<Stunts>()
        .unwrap();
    let before = pool.pids();
    let lingering = pool.submit(Stunt::CloseAndLinger(600_000)).unwrap();
    let limit = timeout(Duration::from_secs(10));
    // The other worker's tasks (and then the replacement's) keep completing, one by one.
    for n in 0..50 {
        let echo = pool.submit(Stunt::Echo(n)).unwrap();
        assert_eq!(echo.wait_timeout(limit).unwrap(), n);
    }
    let gone = match lingering.wait_timeout(limit) {
        Err(e @ Error::Worker { pid, .. }) => {
            assert!(
                matches!(bootstrap_source(&e), Bootstrap::ChannelClosed { pid: p } if *p == pid),
                "{e:?}"
            );
            pid
        }
        other => panic!("expected the end of the worker's channel, got {other:?}"),
    };
    assert!(before.contains(&gone));
    assert!(!pool.pids().contains(&gone));
    assert_eq!(pool.stats().restarted, 1);
    // It lingered: it was killed, not waited for.
    assert!(wait_until(Duration::from_secs(10), || process_gone(gone)));
}

// ---- A11: a message pool used across threads that exit ----

/// Runs `f` on a thread of its own, and returns its result once that thread is gone from the
/// kernel's thread list (so a parent-death signal tied to it would have been sent).
fn on_a_thread_that_exits<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (result, tid) = std::thread::spawn(move || {
        let result = f();
        // SAFETY: gettid has no preconditions.
        (result, unsafe { libc::gettid() })
    })
    .join()
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !std::path::Path::new(&format!(
            "/proc/self/task/{tid}"
        ))
        .exists()),
        "thread {tid} never went away"
    );
    result
}

#[test]
fn a_message_pool_built_and_repaired_on_threads_that_exit_keeps_its_workers() {
    let pool = on_a_thread_that_exits(|| builder().size(2).build::<PidSquarer>().unwrap());
    let first = pool.pids();
    // The replacement is made on another short-lived thread.
    let mut pool = on_a_thread_that_exits(move || {
        let mut pool = pool;
        pool[0].kill().unwrap();
        match pool.receive_message_timeout::<(u32, i64, String)>(timeout(Duration::from_secs(10))) {
            Err(Error::Worker { index: 0, .. }) => {}
            other => panic!("expected worker 0's death, got {other:?}"),
        }
        pool
    });
    let now = pool.pids();
    assert_ne!(now[0], first[0]);
    assert_eq!(now[1], first[1]);
    // Both threads are gone; every worker, the replacement included, serves on.
    let limit = timeout(Duration::from_secs(10));
    for n in 0..20i64 {
        let i = (n % 2) as usize;
        pool.send_message(i, &n).unwrap();
        let (index, (pid, m, _)): (usize, (u32, i64, String)) =
            pool.receive_message_timeout(limit).unwrap();
        assert_eq!((index, pid, m), (i, now[i], n));
    }
    assert_eq!(pool.restarted(), 1);
}

// ---- Issue 17: a worker that breaks the take-back step ----

#[test]
fn a_worker_that_breaks_the_take_back_step_is_replaced_and_holds_nothing_up() {
    use tests_integration::workers::hostile_tasks::{GiveBack, Rogue, RogueTask};
    for give_back in [GiveBack::Unknown, GiveBack::Twice, GiveBack::Never] {
        let pool = builder()
            .size(2)
            .in_flight_per_worker(4)
            .build_tasks::<Rogue>()
            .unwrap();
        // One worker waits for the test, the other holds a task for good.
        let waiting = Held::new();
        let first = pool.submit(RogueTask::Wait(waiting.path.clone())).unwrap();
        let (waiter, release) = waiting.started();
        let hold = pool.submit(RogueTask::Hold(give_back)).unwrap();
        let holder = *pool.pids().iter().find(|p| **p != waiter).unwrap();
        // Two short tasks behind each (the least loaded worker takes each).
        let mut shorts = Vec::new();
        for n in 0..4 {
            shorts.push(pool.submit(RogueTask::Echo(n)).unwrap());
            assert!(
                wait_until(Duration::from_secs(10), || pool.stats().in_flight
                    == 3 + n as usize),
                "{give_back:?}: {:?}",
                pool.stats()
            );
        }
        // The waiting worker becomes idle: the pool asks the holder for its tasks back.
        drop(release);
        let limit = timeout(Duration::from_secs(10));
        assert_eq!(first.wait_timeout(limit).unwrap(), u64::from(waiter));
        let expected = match give_back {
            GiveBack::Unknown => Some("a task given back that it does not hold"),
            GiveBack::Twice => Some("tasks given back unasked"),
            GiveBack::Never => None,
        };
        let Some(what) = expected else {
            // No answer: nothing is given back, and the other worker goes on serving.
            for n in 10..30 {
                let echo = pool.submit(RogueTask::Echo(n)).unwrap();
                assert_eq!(echo.wait_timeout(limit).unwrap(), n, "{give_back:?}");
            }
            assert!(hold.try_result().is_none());
            assert_eq!((pool.stats().restarted, pool.stats().resent), (0, 0));
            continue;
        };
        match hold.wait_timeout(limit) {
            Err(Error::Protocol { pid, what: w, .. }) => {
                assert_eq!((pid, w), (holder, what), "{give_back:?}");
            }
            other => panic!("{give_back:?}: expected a protocol error, got {other:?}"),
        }
        let answers: Vec<_> = shorts.into_iter().map(|h| h.wait_timeout(limit)).collect();
        let ok = answers.iter().filter(|a| a.is_ok()).count();
        let refused = answers
            .iter()
            .filter(|a| matches!(a, Err(Error::Protocol { pid, .. }) if *pid == holder))
            .count();
        // Given back before the worker broke the protocol: they ran on the other worker.
        let given_back = if give_back == GiveBack::Twice { 2 } else { 0 };
        assert_eq!(
            (ok, refused),
            (2 + given_back, 2 - given_back),
            "{give_back:?}: {answers:?}"
        );
        assert!(wait_until(Duration::from_secs(10), || process_gone(holder)));
        assert_eq!(pool.stats().restarted, 1, "{give_back:?}");
    }
}
