//! Worker pools end to end (issue 4): first-ready receive, tasks, crash recovery, shutdown.

use std::{
    collections::{HashSet, VecDeque},
    os::unix::process::ExitStatusExt,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Duration,
};

use exsyst_worker::channel::serde_bytes::ByteBuf;
use exsyst_worker::{
    WorkerFactory,
    bootstrap::Error as Bootstrap,
    pool::{Error, TrySubmitError, WorkerPoolBuilder},
};
use tests_integration::workers::pool::{Command, Commands, DoubleReply, PidSquarer, Tiny};

use crate::support::*;

fn builder() -> WorkerPoolBuilder {
    WorkerFactory::with_profile(profile()).create_worker_pool_builder()
}

#[test]
fn the_seeds_pool_example_every_reply_once_from_the_worker_it_names() {
    let mut pool = WorkerFactory::with_profile(profile())
        .create_worker_pool::<PidSquarer>(Some(4))
        .unwrap();
    assert_eq!(pool.len(), 4);
    let mut replies = Vec::new();
    let mut check = |pool: &exsyst_worker::WorkerPool,
                     (index, reply): (usize, (u32, i64, String))| {
        assert_eq!(reply.0, pool[index].pid(), "the reply names its worker");
        assert_eq!(
            reply.2,
            format!("{} squared is {}", reply.1, reply.1 * reply.1)
        );
        replies.push(reply.1);
    };
    let mut i = 0i64;
    let mut busy = 0;
    for w in &mut pool {
        if i >= 10 {
            break;
        }
        w.send_message(&i).unwrap();
        busy += 1;
        i += 1;
    }
    while i < 10 {
        let got = pool.receive_message().unwrap();
        let index = got.0;
        check(&pool, got);
        pool.send_message(index, &i).unwrap();
        i += 1;
    }
    while busy > 0 {
        let got = pool
            .receive_message_timeout(timeout(Duration::from_secs(10)))
            .unwrap();
        check(&pool, got);
        busy -= 1;
    }
    replies.sort();
    assert_eq!(replies, (0..10).collect::<Vec<_>>());
    // Nothing more: a receive times out with the typed error.
    assert!(matches!(
        pool.receive_message_timeout::<(u32, i64, String)>(Duration::from_millis(50)),
        Err(Error::Timeout { .. })
    ));
}

#[test]
fn two_replies_in_one_instant_are_both_delivered_without_new_input() {
    let mut pool = builder().size(2).build::<DoubleReply>().unwrap();
    pool.send_message(1, &7i64).unwrap();
    let limit = timeout(Duration::from_secs(10));
    let first: (usize, (i64, i32)) = pool.receive_message_timeout(limit).unwrap();
    let second: (usize, (i64, i32)) = pool.receive_message_timeout(limit).unwrap();
    assert_eq!((first, second), ((1, (7, 1)), (1, (7, 2))));
}

#[test]
fn a_dead_worker_of_the_message_pool_is_reported_and_replaced_in_place() {
    let mut pool = builder().size(2).build::<PidSquarer>().unwrap();
    let victim = pool[0].pid();
    sigkill(victim);
    match pool.receive_message_timeout::<(u32, i64, String)>(timeout(Duration::from_secs(10))) {
        Err(Error::Worker {
            index: 0,
            pid,
            source,
        }) => match &*source {
            Bootstrap::WorkerExited { status, .. } => {
                assert_eq!(pid, victim);
                assert_eq!(status.signal(), Some(9));
            }
            other => panic!("expected the worker's death, got {other:?}"),
        },
        other => panic!("expected the worker's death, got {other:?}"),
    }
    assert_ne!(pool[0].pid(), victim);
    assert!(process_gone(victim));
    pool.send_message(0, &3i64).unwrap();
    let (index, (pid, n, _)): (usize, (u32, i64, String)) = pool.receive_message().unwrap();
    assert_eq!((index, pid, n), (0, pool[0].pid(), 3));
    assert_eq!(pool.restarted(), 1);
}

#[test]
fn impossible_settings_are_configuration_errors() {
    assert!(matches!(
        builder().size(0).build::<PidSquarer>(),
        Err(Error::Config { what: "size", .. })
    ));
    assert!(matches!(
        builder()
            .size(1)
            .in_flight_per_worker(0)
            .build_tasks::<Tiny>(),
        Err(Error::Config {
            what: "in_flight_per_worker",
            ..
        })
    ));
    assert!(matches!(
        builder()
            .size(1)
            .task_timeout(Duration::from_secs(1))
            .build::<PidSquarer>(),
        Err(Error::Config {
            what: "task_timeout",
            ..
        })
    ));
    assert!(matches!(
        WorkerFactory::with_profile(profile()).create_task_pool::<Tiny>(Some(0)),
        Err(exsyst_worker::Error::Pool(Error::Config {
            what: "size",
            ..
        }))
    ));
}

#[test]
fn tasks_map_and_errors() {
    let pool = builder()
        .size(2)
        .in_flight_per_worker(4)
        .build_tasks::<Commands>()
        .unwrap();
    assert_eq!(pool.submit(Command::Echo(5)).unwrap().wait().unwrap(), 5);
    match pool.submit(Command::Fail("no".into())).unwrap().wait() {
        Err(Error::Task { message }) => assert_eq!(message, "no"),
        other => panic!("expected the task's error, got {other:?}"),
    }
    let handle = pool.submit(Command::Echo(9)).unwrap();
    assert_eq!(
        handle
            .wait_timeout(timeout(Duration::from_secs(10)))
            .unwrap(),
        9
    );
    assert!(matches!(handle.try_result(), Some(Err(Error::Closed))));

    let items: Vec<Command> = (0..1000).map(Command::Echo).collect();
    assert_eq!(
        pool.map(items.clone()).unwrap(),
        (0..1000).collect::<Vec<_>>()
    );
    let mut seen: Vec<usize> = pool
        .map_unordered(items)
        .map(|(i, r)| {
            assert_eq!(r.unwrap(), i as u64);
            i
        })
        .collect();
    seen.sort();
    assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    let mut failing: Vec<Command> = (0..100).map(Command::Echo).collect();
    failing[40] = Command::Fail("item 40".into());
    assert!(matches!(pool.map(failing), Err(Error::Task { message }) if message == "item 40"));
    let stats = pool.stats();
    assert_eq!(
        (stats.workers, stats.in_flight, stats.queued, stats.failed),
        (2, 0, 0, 0)
    );
    pool.close().unwrap();
}

#[test]
fn sigkill_of_a_worker_fails_only_its_task_and_the_pool_is_back_to_four() {
    let pool = builder()
        .size(4)
        .max_restarts(3, Duration::from_secs(60))
        .build_tasks::<Commands>()
        .unwrap();
    let held = Held::new();
    let running = pool.submit(held.command()).unwrap();
    let (victim, _stream) = held.started();
    assert!(pool.pids().contains(&victim));
    let others: Vec<_> = (0..30)
        .map(|n| pool.submit(Command::Echo(n)).unwrap())
        .collect();
    sigkill(victim);
    match running.wait_timeout(timeout(Duration::from_secs(5))) {
        Err(Error::Worker { pid, source, .. }) => match &*source {
            Bootstrap::WorkerExited { status, .. } => {
                assert_eq!(pid, victim);
                assert_eq!(status.signal(), Some(9));
            }
            other => panic!("expected the worker's death, got {other:?}"),
        },
        other => panic!("expected the worker's death, got {other:?}"),
    }
    for (n, h) in others.into_iter().enumerate() {
        assert_eq!(
            h.wait_timeout(timeout(Duration::from_secs(10))).unwrap(),
            n as u64
        );
    }
    assert!(wait_until(Duration::from_secs(10), || pool
        .stats()
        .restarted
        == 1));
    let pids = pool.pids();
    assert_eq!(pids.len(), 4);
    assert!(!pids.contains(&victim));
    assert!(process_gone(victim), "the killed worker was reaped");
    let stats = pool.stats();
    assert_eq!((stats.workers, stats.failed), (4, 1));
    // Every worker, the replacement too, serves.
    let answered: HashSet<u64> = pool
        .map((0..64).map(|_| Command::Pid))
        .unwrap()
        .into_iter()
        .collect();
    assert!(answered.iter().all(|p| pids.contains(&(*p as u32))));
}

#[test]
fn a_worker_that_panics_fails_its_task_with_its_stderr_tail() {
    let pool = builder().size(1).build_tasks::<Commands>().unwrap();
    match pool
        .submit(Command::Panic("boom 42".into()))
        .unwrap()
        .wait()
    {
        Err(Error::Worker { source, .. }) => match &*source {
            Bootstrap::WorkerExited {
                status,
                stderr_tail,
                ..
            } => {
                assert_eq!(status.code(), Some(101));
                assert!(stderr_tail.contains("boom 42"), "{stderr_tail:?}");
            }
            other => panic!("expected the worker's death, got {other:?}"),
        },
        other => panic!("expected the worker's death, got {other:?}"),
    }
    assert_eq!(pool.submit(Command::Echo(1)).unwrap().wait().unwrap(), 1);
}

#[test]
fn no_master_or_zombie_left_in_a_master_whose_worker_was_killed() {
    let lines = run_master(&["pool-crash"]);
    assert_eq!(value(&lines, "answered"), "true");
    let running = value(&lines, "children_running");
    assert_eq!(running.matches('(').count(), 4, "{running}");
    assert!(!running.contains("'Z'"), "{running}");
    assert_eq!(value(&lines, "children_after"), "[]");
}

#[test]
fn a_hundred_thousand_tiny_tasks_each_once_within_the_queue_bound() {
    const N: u64 = 100_000;
    const BOUND: usize = 64;
    let pool = builder()
        .size(2)
        .in_flight_per_worker(16)
        .queue_bound(BOUND)
        .build_tasks::<Tiny>()
        .unwrap();
    let done = AtomicBool::new(false);
    let max_queued = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                max_queued.fetch_max(pool.stats().queued, Ordering::Relaxed);
                std::thread::yield_now();
            }
        });
        let mut handles = VecDeque::new();
        let mut seen = vec![false; N as usize];
        let mut check = |n: u64, r: u64| {
            assert_eq!(r, n + 1);
            assert!(!std::mem::replace(&mut seen[n as usize], true), "{n} twice");
        };
        for n in 0..N {
            handles.push_back((n, pool.submit(n).unwrap()));
            if handles.len() > 4096 {
                let (n, h) = handles.pop_front().unwrap();
                check(n, h.wait().unwrap());
            }
            max_queued.fetch_max(pool.stats().queued, Ordering::Relaxed);
        }
        for (n, h) in handles {
            check(n, h.wait().unwrap());
        }
        done.store(true, Ordering::Relaxed);
        assert!(seen.iter().all(|s| *s));
    });
    let max = max_queued.load(Ordering::Relaxed);
    assert!(max <= BOUND, "{max} queued, bound {BOUND}");
    assert!(max > 0, "the producer outran the workers at least once");
    let stats = pool.stats();
    assert_eq!((stats.completed, stats.failed, stats.in_flight), (N, 0, 0));
}

#[test]
fn tiny_tasks_one_at_a_time_are_each_answered() {
    // One task in flight at a time: every reply is its own wake-up of the dispatcher (the
    // shape `strace -c` measures the cost of a reply with).
    let pool = builder().size(2).build_tasks::<Tiny>().unwrap();
    for n in 0..2000u64 {
        assert_eq!(pool.submit(n).unwrap().wait().unwrap(), n + 1);
    }
    let stats = pool.stats();
    assert_eq!(
        (stats.completed, stats.failed, stats.restarted),
        (2000, 0, 0)
    );
}

#[test]
fn try_submit_hands_the_item_back_when_the_queue_is_full() {
    let pool = builder()
        .size(1)
        .queue_bound(2)
        .build_tasks::<Commands>()
        .unwrap();
    let held = Held::new();
    let running = pool.submit(held.command()).unwrap();
    let (_, stream) = held.started();
    let queued: Vec<_> = (0..2)
        .map(|n| pool.try_submit(Command::Echo(n)).unwrap())
        .collect();
    assert_eq!(pool.stats().queued, 2);
    match pool.try_submit(Command::Echo(99)) {
        Err(TrySubmitError::Full(Command::Echo(99))) => {}
        other => panic!("expected the item back, got {other:?}"),
    }
    drop(stream);
    assert!(running.wait().is_ok());
    for (n, h) in queued.into_iter().enumerate() {
        assert_eq!(h.wait().unwrap(), n as u64);
    }
}

#[test]
fn a_task_timeout_kills_only_that_worker_and_the_pool_goes_on() {
    let pool = builder()
        .size(2)
        .task_timeout(Duration::from_millis(300))
        .build_tasks::<Commands>()
        .unwrap();
    let before = pool.pids();
    let slow = pool.submit(Command::Sleep(600_000)).unwrap();
    let quick: Vec<_> = (0..10)
        .map(|n| pool.submit(Command::Echo(n)).unwrap())
        .collect();
    let killed = match slow.wait_timeout(timeout(Duration::from_secs(10))) {
        Err(Error::TaskTimeout { pid, timeout, .. }) => {
            assert_eq!(timeout, Duration::from_millis(300));
            pid
        }
        other => panic!("expected the task timeout, got {other:?}"),
    };
    for (n, h) in quick.into_iter().enumerate() {
        assert_eq!(h.wait().unwrap(), n as u64);
    }
    assert!(process_gone(killed));
    let after = pool.pids();
    assert_eq!(after.len(), 2);
    assert_eq!(
        before.iter().filter(|p| after.contains(p)).count(),
        1,
        "only the worker that timed out was replaced"
    );
    assert_eq!(pool.submit(Command::Echo(7)).unwrap().wait().unwrap(), 7);
    assert_eq!(pool.stats().restarted, 1);
}

#[test]
fn repeated_crashes_past_the_restart_limit_fail_the_pool() {
    let pool = builder()
        .size(1)
        .max_restarts(2, Duration::from_secs(60))
        .build_tasks::<Commands>()
        .unwrap();
    for _ in 0..3 {
        match pool.submit(Command::Exit(3)).unwrap().wait() {
            Err(Error::Worker { source, .. }) => match &*source {
                Bootstrap::WorkerExited { status, .. } => assert_eq!(status.code(), Some(3)),
                other => panic!("expected the worker's exit, got {other:?}"),
            },
            other => panic!("expected the worker's exit, got {other:?}"),
        }
    }
    // The third crash was one too many: the pool fails instead of restarting forever.
    let next = pool.submit(Command::Echo(1)).and_then(|h| h.wait());
    assert!(matches!(next, Err(Error::PoolFailed { .. })), "{next:?}");
    assert!(matches!(
        pool.submit(Command::Echo(1)),
        Err(Error::PoolFailed { .. })
    ));
    assert_eq!(pool.stats().workers, 0);
    assert!(matches!(pool.close(), Err(Error::PoolFailed { .. })));
}

#[test]
fn recycling_replaces_a_worker_after_its_quota() {
    let pool = builder()
        .size(1)
        .recycle_after(3)
        .build_tasks::<Commands>()
        .unwrap();
    let pids: Vec<u64> = (0..9)
        .map(|_| pool.submit(Command::Pid).unwrap().wait().unwrap())
        .collect();
    for chunk in pids.chunks(3) {
        assert!(chunk.iter().all(|p| *p == chunk[0]), "{pids:?}");
    }
    let distinct: HashSet<_> = pids.iter().collect();
    assert_eq!(distinct.len(), 3, "{pids:?}");
    assert!(wait_until(Duration::from_secs(10), || pool
        .stats()
        .recycled
        == 3));
    assert_eq!(pool.stats().restarted, 0);
    // Closed in the background: each ends on end of input, and is reaped.
    assert!(wait_until(Duration::from_secs(10), || pids
        .iter()
        .all(|p| process_gone(*p as u32))));
}

#[test]
fn close_finishes_queued_and_in_flight_tasks_and_reaps_every_worker() {
    let pool = builder()
        .size(2)
        .in_flight_per_worker(2)
        .build_tasks::<Commands>()
        .unwrap();
    let pids = pool.pids();
    let handles: Vec<_> = (0..20)
        .map(|n| {
            pool.submit(if n % 5 == 0 {
                Command::Sleep(20)
            } else {
                Command::Echo(n)
            })
            .unwrap()
        })
        .collect();
    pool.close().unwrap();
    for (n, h) in handles.into_iter().enumerate() {
        let expected = if n % 5 == 0 { 0 } else { n as u64 };
        assert_eq!(h.try_result().unwrap().unwrap(), expected);
    }
    assert!(pids.iter().all(|p| process_gone(*p)));
}

#[test]
fn dropping_the_pool_while_tasks_run_kills_every_worker_at_once() {
    let pool = builder().size(2).build_tasks::<Commands>().unwrap();
    let pids = pool.pids();
    let handles: Vec<_> = (0..4)
        .map(|_| pool.submit(Command::Sleep(600_000)).unwrap())
        .collect();
    assert!(wait_until(Duration::from_secs(10), || pool.stats().busy == 2));
    let start = std::time::Instant::now();
    drop(pool);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(pids.iter().all(|p| process_gone(*p)));
    for h in handles {
        assert!(matches!(h.wait(), Err(Error::Closed)));
    }
}

#[test]
fn killing_the_master_leaves_no_worker_behind() {
    let mut master = MasterProcess::start(&["pool-hold", "3"]);
    let mut pids = Vec::new();
    loop {
        let line = master.next_line().expect("scenario output");
        if line == "ready" {
            break;
        }
        if let Some(pid) = line.strip_prefix("pid=") {
            pids.push(pid.parse::<u32>().unwrap());
        }
    }
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|p| !process_gone(*p)));
    sigkill(master.child.id());
    let _ = master.child.wait();
    assert!(
        wait_within(Duration::from_secs(1), || pids
            .iter()
            .all(|p| process_gone(*p))),
        "workers {pids:?} outlived their master"
    );
}

#[test]
fn a_worker_too_stuck_to_take_its_input_does_not_hold_the_dispatcher() {
    // One worker, two tasks in flight: the first never ends, the second is larger than the
    // worker's input pipe, so sending it blocks until the dispatcher gives up on the worker.
    let pool = builder()
        .size(1)
        .in_flight_per_worker(2)
        .task_timeout(Duration::from_millis(300))
        .build_tasks::<Commands>()
        .unwrap();
    let before = pool.pids();
    let stuck = pool.submit(Command::Sleep(600_000)).unwrap();
    // Sent on its own, not batched with the large one, which the worker would read whole.
    assert!(wait_until(Duration::from_secs(10), || pool
        .stats()
        .in_flight
        == 1));
    let big = pool
        .submit(Command::Len(ByteBuf::from(vec![7u8; 4 << 20])))
        .unwrap();
    let limit = timeout(Duration::from_secs(10));
    assert!(
        matches!(stuck.wait_timeout(limit), Err(Error::TaskTimeout { pid, .. }) if pid == before[0]),
        "the stuck task fails"
    );
    // The task the stuck worker never started goes to its replacement.
    assert_eq!(big.wait_timeout(limit).unwrap(), 4 << 20);
    assert!(wait_until(Duration::from_secs(10), || pool.pids() != before));
    assert!(process_gone(before[0]));
    // The replacement serves, large payloads included.
    let len = pool
        .submit(Command::Len(ByteBuf::from(vec![7u8; 4 << 20])))
        .unwrap()
        .wait_timeout(limit)
        .unwrap();
    assert_eq!(len, 4 << 20);
}

/// Submits `n` tiny tasks at once and checks every answer.
fn tiny_burst(pool: &exsyst_worker::pool::TaskPool<Tiny>, n: u64) {
    let handles: VecDeque<_> = (0..n).map(|i| pool.submit(i).unwrap()).collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.wait().unwrap(), i as u64 + 1);
    }
}

#[test]
fn the_default_depth_grows_for_tiny_tasks_and_stays_one_for_slow_ones() {
    let tiny = builder().size(2).build_tasks::<Tiny>().unwrap();
    for _ in 0..4 {
        tiny_burst(&tiny, 5_000);
    }
    let stats = tiny.stats();
    assert!(
        stats.max_in_flight > 1,
        "tiny tasks got {} in flight at most",
        stats.max_in_flight
    );
    assert_eq!((stats.completed, stats.failed), (20_000, 0));

    // Slow tasks all submitted at once: each worker holds one at a time.
    let slow = builder().size(2).build_tasks::<Commands>().unwrap();
    let handles: Vec<_> = (0..16)
        .map(|_| slow.submit(Command::Sleep(10)).unwrap())
        .collect();
    for h in handles {
        assert_eq!(h.wait().unwrap(), 0);
    }
    assert_eq!(slow.stats().max_in_flight, 1);
}

#[test]
fn an_explicit_in_flight_per_worker_still_pins_the_depth() {
    for depth in [1, 3] {
        let pool = builder()
            .size(2)
            .in_flight_per_worker(depth)
            .build_tasks::<Tiny>()
            .unwrap();
        for _ in 0..4 {
            tiny_burst(&pool, 5_000);
        }
        let stats = pool.stats();
        assert_eq!(stats.max_in_flight, depth, "pinned at {depth}");
        assert_eq!((stats.completed, stats.failed), (20_000, 0));
    }
}

#[test]
fn a_slow_task_holds_no_tiny_tasks_behind_it_while_another_worker_serves() {
    let pool = builder().size(2).build_tasks::<Commands>().unwrap();
    warm_up(&pool);
    assert!(
        pool.stats().max_in_flight > 1,
        "tiny tasks travel several at once"
    );
    // The slow task: it runs until the test lets it go.
    let held = Held::new();
    let slow = pool.submit(held.command()).unwrap();
    let (slow_pid, stream) = held.started();
    // Tiny tasks one at a time, each to the idle worker, until the slow one is clearly slow
    // (far past the time its worker's tiny tasks took).
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(50) {
        let pid = pool.submit(Command::Pid).unwrap().wait().unwrap();
        assert_ne!(pid, u64::from(slow_pid));
    }
    // A burst of tiny tasks: every one is answered while the slow task still runs, by the
    // other worker, so none waited behind it.
    let limit = timeout(Duration::from_secs(20));
    let burst: Vec<_> = (0..2000)
        .map(|_| pool.submit(Command::Pid).unwrap())
        .collect();
    for h in burst {
        let pid = h
            .wait_timeout(limit)
            .expect("answered while the slow task runs");
        assert_ne!(
            pid,
            u64::from(slow_pid),
            "a tiny task ran behind the slow one"
        );
    }
    assert_eq!(slow.try_result().map(|r| r.is_ok()), None, "still running");
    drop(stream);
    assert_eq!(slow.wait_timeout(limit).unwrap(), u64::from(slow_pid));
    assert_eq!(pool.stats().failed, 0);
}

#[test]
fn long_work_reports_its_progress_exactly_and_keeps_its_order() {
    let pool = builder().size(2).build_tasks::<Tiny>().unwrap();
    let mut results = pool.map_unordered(0..5_000u64);
    assert_eq!(
        (results.total(), results.completed(), results.len()),
        (5_000, 0, 5_000)
    );
    let mut seen = vec![false; 5_000];
    while let Some((index, result)) = results.next() {
        assert_eq!(result.unwrap(), index as u64 + 1);
        assert!(
            !std::mem::replace(&mut seen[index], true),
            "item {index} twice"
        );
        assert_eq!(results.completed() + results.len(), 5_000);
    }
    assert!(seen.iter().all(|s| *s));
    assert_eq!(results.completed(), 5_000);

    let mut calls = Vec::new();
    let outputs = pool
        .map_with_progress(0..3_000u64, |done, total| calls.push((done, total)))
        .unwrap();
    assert_eq!(outputs, (1..=3_000u64).collect::<Vec<_>>());
    assert_eq!(
        calls,
        (1..=3_000).map(|done| (done, 3_000)).collect::<Vec<_>>()
    );
    // Nothing to do: no call, an empty result.
    let outputs = pool
        .map_with_progress(std::iter::empty(), |_, _| panic!("no item, no progress"))
        .unwrap();
    assert!(outputs.is_empty());
}

// ---- Issue 17, section 1: no task stranded behind a long one ----

/// A task pool of `size` workers of [`Commands`], its depth pinned to `depth` (or adaptive).
fn commands_pool(
    size: usize,
    depth: Option<usize>,
    task_timeout: Option<Duration>,
) -> exsyst_worker::pool::TaskPool<Commands> {
    let mut b = builder().size(size);
    if let Some(depth) = depth {
        b = b.in_flight_per_worker(depth);
    }
    if let Some(t) = task_timeout {
        b = b.task_timeout(t);
    }
    b.build_tasks::<Commands>().unwrap()
}

/// Runs tiny tasks until every worker knows their pace.
fn warm_up(pool: &exsyst_worker::pool::TaskPool<Commands>) {
    for _ in 0..4 {
        let warm: Vec<_> = (0..500)
            .map(|n| pool.submit(Command::Echo(n)).unwrap())
            .collect();
        for (n, h) in warm.into_iter().enumerate() {
            assert_eq!(h.wait().unwrap(), n as u64);
        }
    }
}

#[test]
fn a_short_task_never_waits_behind_a_long_one_while_another_worker_is_idle() {
    const SHORT: usize = 6;
    for depth in [Some(2), Some(8), None] {
        let pool = commands_pool(2, depth, None);
        warm_up(&pool);
        let resent_before = pool.stats().resent;
        // Both workers run a long task, which runs until the test lets it go.
        let (first, second) = (Held::new(), Held::new());
        let one = pool.submit(first.command()).unwrap();
        let (pid_one, release_one) = first.started();
        let two = pool.submit(second.command()).unwrap();
        let (pid_two, release_two) = second.started();
        assert_ne!(pid_one, pid_two, "depth {depth:?}");
        // Short tasks meanwhile, one at a time: with a pinned depth, the least loaded worker
        // takes each while it has room, so both have some queued behind their long task.
        let mut shorts = Vec::new();
        for k in 0..SHORT {
            shorts.push(pool.submit(Command::Pid).unwrap());
            if let Some(depth) = depth.filter(|d| k < 2 * (d - 1)) {
                assert!(
                    wait_until(Duration::from_secs(10), || pool.stats().in_flight == 3 + k),
                    "depth {depth}: {:?}",
                    pool.stats()
                );
            }
        }
        // The first worker becomes free: every short task is answered by it while the second
        // long task still runs, those that waited behind it included.
        drop(release_one);
        assert_eq!(one.wait().unwrap(), u64::from(pid_one));
        let limit = timeout(Duration::from_secs(10));
        for short in shorts {
            let pid = short
                .wait_timeout(limit)
                .unwrap_or_else(|e| panic!("depth {depth:?}: a short task waited: {e:?}"));
            assert_eq!(pid, u64::from(pid_one), "depth {depth:?}");
        }
        assert!(two.try_result().is_none(), "depth {depth:?}: still running");
        let stats = pool.stats();
        if depth.is_some() {
            assert!(
                stats.resent > resent_before,
                "depth {depth:?}: nothing was taken back: {stats:?}"
            );
        }
        drop(release_two);
        assert_eq!(two.wait().unwrap(), u64::from(pid_two));
        assert_eq!((pool.stats().failed, pool.stats().restarted), (0, 0));
    }
}

#[test]
fn a_task_timeout_never_fires_on_a_task_that_waited_behind_others() {
    // Each task takes a quarter of the timeout; together, more than the timeout per worker.
    let limit = timeout(Duration::from_millis(400));
    let micros = u64::try_from((limit / 4).as_micros()).unwrap();
    for (size, depth) in [(1, Some(16)), (2, Some(16)), (1, None)] {
        let pool = commands_pool(size, depth, Some(limit));
        let handles: Vec<_> = (0..12)
            .map(|n| pool.submit(Command::EchoAfter { n, micros }).unwrap())
            .collect();
        for (n, h) in handles.into_iter().enumerate() {
            assert_eq!(
                h.wait_timeout(timeout(Duration::from_secs(30))).unwrap(),
                n as u64,
                "size {size}, depth {depth:?}"
            );
        }
        let stats = pool.stats();
        assert_eq!(
            (stats.failed, stats.restarted),
            (0, 0),
            "size {size}, depth {depth:?}"
        );
    }
}

#[test]
fn a_worker_killed_for_a_timeout_has_the_tasks_it_had_not_started_run_elsewhere() {
    const BEHIND: usize = 3;
    for size in [1, 2] {
        let pool = commands_pool(
            size,
            Some(BEHIND + 1),
            Some(timeout(Duration::from_millis(300))),
        );
        // Every worker runs a task that never ends, with short tasks queued behind it.
        let held: Vec<_> = (0..size).map(|_| Held::new()).collect();
        let mut long = Vec::new();
        let mut long_pids = Vec::new();
        let mut streams = Vec::new();
        for h in &held {
            long.push(pool.submit(h.command()).unwrap());
            let (pid, stream) = h.started();
            long_pids.push(pid);
            streams.push(stream);
        }
        let shorts: Vec<_> = (0..BEHIND * size)
            .map(|_| pool.submit(Command::Pid).unwrap())
            .collect();
        // The precondition, seen: every short task is at a worker, behind a long one.
        assert!(
            wait_until(Duration::from_secs(10), || pool.stats().in_flight
                == (BEHIND + 1) * size),
            "size {size}: {:?}",
            pool.stats()
        );
        let limit = timeout(Duration::from_secs(20));
        for h in long {
            match h.wait_timeout(limit) {
                Err(Error::TaskTimeout { pid, .. }) => assert!(long_pids.contains(&pid)),
                other => panic!("size {size}: expected the task timeout, got {other:?}"),
            }
        }
        for short in shorts {
            let pid = short
                .wait_timeout(limit)
                .unwrap_or_else(|e| panic!("size {size}: a task not started failed: {e:?}"));
            assert!(!long_pids.contains(&(pid as u32)), "size {size}");
        }
        let stats = pool.stats();
        assert_eq!(
            (stats.failed, stats.restarted),
            (size as u64, size as u64),
            "size {size}: {stats:?}"
        );
        // Each was sent again at least once; with two workers, some twice (to the other long
        // task's worker, before it timed out too).
        assert!(
            stats.resent >= (BEHIND * size) as u64,
            "size {size}: {stats:?}"
        );
        drop(streams);
    }
}

#[test]
fn each_task_is_answered_when_it_is_done_not_when_its_batch_mates_are() {
    const BEFORE: usize = 3;
    for depth in [BEFORE + 2, 16] {
        // One worker: nothing can be taken back, the results come from it alone.
        let pool = commands_pool(1, Some(depth), None);
        let (first, second) = (Held::new(), Held::new());
        let one = pool.submit(first.command()).unwrap();
        let (pid, release_one) = first.started();
        // These travel to the worker together while it runs the first long task: short tasks,
        // then a second long one.
        let shorts: Vec<_> = (0..BEFORE)
            .map(|n| pool.submit(Command::Echo(n as u64)).unwrap())
            .collect();
        let two = pool.submit(second.command()).unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || pool.stats().in_flight
                == BEFORE + 2),
            "depth {depth}: {:?}",
            pool.stats()
        );
        drop(release_one);
        assert_eq!(one.wait().unwrap(), u64::from(pid));
        // The second long task runs: the short ones before it are done, and answered.
        let (_, release_two) = second.started();
        let limit = timeout(Duration::from_secs(10));
        for (n, short) in shorts.into_iter().enumerate() {
            let answer = short
                .wait_timeout(limit)
                .unwrap_or_else(|e| panic!("depth {depth}: waited for its batch-mate: {e:?}"));
            assert_eq!(answer, n as u64);
        }
        assert!(two.try_result().is_none(), "depth {depth}: still running");
        drop(release_two);
        assert_eq!(two.wait().unwrap(), u64::from(pid));
    }
}

#[test]
fn a_worker_that_dies_fails_only_the_task_it_ran_and_the_others_run_elsewhere() {
    const BEHIND: usize = 3;
    // Killed while a long task runs; or exits in a task of its own, queued behind a long one
    // with the short ones.
    for (name, code, signal) in [("killed", None, Some(9)), ("exits", Some(3), None)] {
        let pool = commands_pool(1, Some(BEHIND + 2), None);
        let pid = pool.pids()[0];
        let held = Held::new();
        let long = pool.submit(held.command()).unwrap();
        let (_, release) = held.started();
        let dying = (name == "exits").then(|| pool.submit(Command::Exit(3)).unwrap());
        let shorts: Vec<_> = (0..BEHIND)
            .map(|_| pool.submit(Command::Pid).unwrap())
            .collect();
        let sent = BEHIND + 1 + usize::from(dying.is_some());
        assert!(
            wait_until(Duration::from_secs(10), || pool.stats().in_flight == sent),
            "{name}: {:?}",
            pool.stats()
        );
        let limit = timeout(Duration::from_secs(10));
        let died = match dying {
            None => {
                sigkill(pid);
                long
            }
            Some(dying) => {
                drop(release);
                assert_eq!(long.wait_timeout(limit).unwrap(), u64::from(pid), "{name}");
                dying
            }
        };
        match died.wait_timeout(limit) {
            Err(Error::Worker { pid: p, source, .. }) => match &*source {
                Bootstrap::WorkerExited { status, .. } => {
                    assert_eq!(p, pid, "{name}");
                    assert_eq!((status.code(), status.signal()), (code, signal), "{name}");
                }
                other => panic!("{name}: expected the worker's death, got {other:?}"),
            },
            other => panic!("{name}: expected the worker's death, got {other:?}"),
        }
        for short in shorts {
            let answer = short
                .wait_timeout(limit)
                .unwrap_or_else(|e| panic!("{name}: a task it had not started failed: {e:?}"));
            assert_ne!(answer, u64::from(pid), "{name}");
        }
        let stats = pool.stats();
        assert_eq!(
            (stats.failed, stats.restarted, stats.resent),
            (1, 1, BEHIND as u64),
            "{name}: {stats:?}"
        );
    }
}
