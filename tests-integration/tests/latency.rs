//! The latency mode (issue 12, part 2): spin, then park. The same replies and the same errors
//! as without it, in every topology; bounded budgets; an idle worker that does not burn its CPU.

use std::{os::unix::process::ExitStatusExt, time::Duration};

use exsyst_worker::{
    BootstrapProfile, DedicatedWorker, SharedServer, SharedServerConfig, SharedWorker, Spin,
    StderrMode, WorkerFactory, bootstrap::Error, channel::serde_bytes::ByteBuf,
};
use tests_integration::workers::{
    dedicated::{Echo, Failer, Failure, SpinReporter, Squarer},
    evented::{EventedEcho, EventedSpinReporter, EventedSquarer},
    hostile::{Act, Hostile},
    pool::{PidSquarer, Tiny},
    shared::SharedEcho,
};

use crate::support::*;

/// The budget of these scenarios: what the benchmarks use.
const SPIN: Duration = Duration::from_micros(100);

fn spinning() -> BootstrapProfile {
    profile().with_spin(SPIN)
}

/// What a reporter worker says its side's budget is, in microseconds.
fn reported(worker: &mut DedicatedWorker) -> u64 {
    worker.send_message(&()).unwrap();
    worker.receive_message::<u64>().unwrap()
}

#[test]
fn both_sides_of_a_raw_and_an_evented_worker_spin_as_the_profile_says() {
    let mut raw = DedicatedWorker::spawn::<SpinReporter>(&spinning()).unwrap();
    assert_eq!(raw.spin(), Spin::new(SPIN));
    assert_eq!(reported(&mut raw), 100);
    let mut evented = DedicatedWorker::spawn::<EventedSpinReporter>(&spinning()).unwrap();
    assert_eq!(reported(&mut evented), 100);
    // Off by default, on both sides.
    let mut plain = DedicatedWorker::spawn::<SpinReporter>(&profile()).unwrap();
    assert!(plain.spin().is_off());
    assert_eq!(reported(&mut plain), 0);
}

#[test]
fn extreme_budgets_are_capped_or_off_and_the_worker_still_answers() {
    // Duration::MAX is not "spin for ever": it is cut to the 10 ms cap, on both sides.
    let mut capped =
        DedicatedWorker::spawn::<SpinReporter>(&profile().with_spin(Duration::MAX)).unwrap();
    assert_eq!(capped.spin().budget(), Spin::MAX_BUDGET);
    assert_eq!(reported(&mut capped), 10_000);
    let mut evented =
        DedicatedWorker::spawn::<EventedSpinReporter>(&profile().with_spin(Duration::MAX)).unwrap();
    assert_eq!(reported(&mut evented), 10_000);
    // Zero is off.
    let mut zero =
        DedicatedWorker::spawn::<SpinReporter>(&profile().with_spin(Duration::ZERO)).unwrap();
    assert!(zero.spin().is_off());
    assert_eq!(reported(&mut zero), 0);
    // The master's side of one worker, changed on its own; a tiny budget still rounds to 1 µs.
    zero.set_spin(Duration::MAX);
    assert_eq!(zero.spin().budget(), Spin::MAX_BUDGET);
    zero.set_spin(Duration::from_nanos(1));
    assert_eq!(zero.spin().as_micros(), 1);
    assert_eq!(reported(&mut zero), 0);
    // A receive with a timeout shorter than the budget still times out on time, usable after.
    let mut w = DedicatedWorker::spawn::<Hostile>(&profile().with_spin(Duration::MAX)).unwrap();
    w.send_message(&Act::Sleep(200)).unwrap();
    match w.receive_message_timeout::<String>(Duration::from_millis(1)) {
        Err(Error::Timeout { waited, .. }) => assert_eq!(waited, Duration::from_millis(1)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(
        w.receive_message_timeout::<String>(timeout(Duration::from_secs(10)))
            .unwrap(),
        "done"
    );
    assert!(matches!(w.try_receive_message::<String>(), Ok(None)));
}

#[test]
fn a_spinning_conversation_gives_the_same_replies_raw_and_evented() {
    let mut raw = DedicatedWorker::spawn::<Squarer>(&spinning()).unwrap();
    let mut evented = DedicatedWorker::spawn::<EventedSquarer>(&spinning()).unwrap();
    for i in 0..200i64 {
        raw.send_message(&i).unwrap();
        evented.send_message(&i).unwrap();
        let expected = format!("{i} squared is {}", i * i);
        assert_eq!(raw.receive_message::<String>().unwrap(), expected);
        assert_eq!(evented.receive_message::<String>().unwrap(), expected);
    }
    // Large messages arrive in many reads, each after a spin.
    let mut echo = DedicatedWorker::spawn::<Echo>(&spinning()).unwrap();
    let mut evented_echo =
        DedicatedWorker::spawn_with_args::<EventedEcho>(&spinning(), &0).unwrap();
    let big = ByteBuf::from((0..4 << 20).map(|i| i as u8).collect::<Vec<u8>>());
    for w in [&mut echo, &mut evented_echo] {
        w.send_message(&big).unwrap();
        assert_eq!(w.receive_message::<ByteBuf>().unwrap(), big);
    }
    assert_eq!(raw.close().unwrap().code(), Some(0));
    assert_eq!(evented.close().unwrap().code(), Some(0));
}

#[test]
fn a_worker_that_dies_while_its_master_spins_is_the_same_typed_error() {
    let failing = spinning().with_stderr(StderrMode::Capture);
    let mut w = DedicatedWorker::spawn_with_args::<Failer>(&failing, &Failure::Exit(42)).unwrap();
    w.send_message("hello").unwrap();
    assert_eq!(w.receive_message::<String>().unwrap(), "hello");
    w.send_message("fail now").unwrap();
    let (status, _) = expect_exited(w.receive_message::<String>());
    assert_eq!(status.code(), Some(42));

    let mut w =
        DedicatedWorker::spawn_with_args::<Failer>(&failing, &Failure::Panic("gave up".into()))
            .unwrap();
    w.send_message("hello").unwrap();
    assert_eq!(w.receive_message::<String>().unwrap(), "hello");
    w.send_message("fail now").unwrap();
    let (status, stderr_tail) = expect_exited(w.receive_message::<String>());
    assert_eq!(status.code(), Some(101));
    assert!(stderr_tail.contains("gave up"), "{stderr_tail:?}");

    // Killed from outside while its master waits (before or during the spin: both must hold).
    let mut w = DedicatedWorker::spawn::<Hostile>(&spinning()).unwrap();
    w.send_message(&Act::Sleep(600_000)).unwrap();
    let pid = w.pid();
    let killer = std::thread::spawn(move || sigkill(pid));
    let (status, _) = expect_exited(w.receive_message::<String>());
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    killer.join().unwrap();
}

#[test]
fn a_death_behind_a_grandchild_holding_the_channel_is_seen_with_the_largest_budget() {
    // The end of the output never comes (the grandchild holds it for ten minutes): only the
    // pidfd tells, at the end of each spin at the latest.
    let profile = profile()
        .with_spin(Duration::MAX)
        .with_stderr(StderrMode::Capture);
    let worker = DedicatedWorker::spawn::<Hostile>(&profile).unwrap();
    let _ended = a7_last_words_then_exit_behind_a_grandchild(worker);
}

#[test]
fn pools_built_from_a_spinning_profile_give_the_same_results() {
    let factory = WorkerFactory::with_profile(spinning());
    let pool = factory.create_task_pool::<Tiny>(Some(2)).unwrap();
    let items: Vec<u64> = (0..5000).collect();
    let expected: Vec<u64> = (1..5001).collect();
    assert_eq!(pool.map(items).unwrap(), expected);

    let mut pool = factory.create_worker_pool::<PidSquarer>(Some(2)).unwrap();
    for round in 0..100i64 {
        let index = (round % 2) as usize;
        pool.send_message(index, &round).unwrap();
        let (from, (pid, n, text)) = pool
            .receive_message_timeout::<(u32, i64, String)>(timeout(Duration::from_secs(10)))
            .unwrap();
        assert_eq!((from, pid, n), (index, pool[index].pid(), round));
        assert_eq!(text, format!("{round} squared is {}", round * round));
    }
    // Nothing more comes: a receive that times out still does, spin or not.
    assert!(matches!(
        pool.receive_message_timeout::<(u32, i64, String)>(Duration::from_millis(5)),
        Err(exsyst_worker::pool::Error::Timeout { .. })
    ));
}

#[test]
fn a_shared_worker_with_spinning_server_and_client_answers_and_ends_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix://{}/spin.sock", dir.path().display());
    let config = SharedServerConfig::default().with_spin(SPIN);
    assert_eq!(config.spin(), Spin::new(SPIN));
    let server = SharedServer::bind(&address, config)
        .unwrap()
        .spawn(|| Ok(SharedEcho))
        .unwrap();
    let mut client = SharedWorker::connect(&address).unwrap();
    client.set_spin(SPIN);
    assert_eq!(client.spin(), Spin::new(SPIN));
    for i in 0..200u32 {
        let message = ByteBuf::from(i.to_be_bytes().to_vec());
        client.send_message(&message).unwrap();
        assert_eq!(client.receive_message::<ByteBuf>().unwrap(), message);
    }
    // A receive with a deadline shorter than the budget times out on time.
    assert!(matches!(
        client.receive_message_timeout::<ByteBuf>(Duration::from_millis(1)),
        Err(exsyst_worker::shared::Error::Timeout { .. })
    ));
    assert!(server.stop());
    server.join().unwrap();
    assert!(matches!(
        client.receive_message::<ByteBuf>(),
        Err(exsyst_worker::shared::Error::Stopping { .. })
    ));
}

#[test]
fn idle_spinning_workers_use_almost_no_cpu() {
    // One second of idleness, measured for a raw worker, an evented worker and a pool's
    // workers at once, each after a conversation in full flow.
    let profile = spinning();
    let mut raw = DedicatedWorker::spawn::<Squarer>(&profile).unwrap();
    let mut evented = DedicatedWorker::spawn::<EventedSquarer>(&profile).unwrap();
    let pool = WorkerFactory::with_profile(profile.clone())
        .create_task_pool::<Tiny>(Some(2))
        .unwrap();
    for i in 0..500i64 {
        raw.send_message(&i).unwrap();
        evented.send_message(&i).unwrap();
        raw.receive_message::<String>().unwrap();
        evented.receive_message::<String>().unwrap();
    }
    assert_eq!(pool.map(0..1000u64).unwrap().len(), 1000);
    let mut pids = vec![raw.pid(), evented.pid()];
    pids.extend(pool.pids());
    let cpu = |pid| tests_integration::sys::process_cpu_time(pid).unwrap();
    let before: Vec<Duration> = pids.iter().map(|&p| cpu(p)).collect();
    // The measurement itself, not a synchronisation: CPU used over one idle second.
    std::thread::sleep(Duration::from_secs(1));
    for (&pid, before) in pids.iter().zip(before) {
        let used = cpu(pid) - before;
        assert!(
            used < Duration::from_millis(50),
            "worker {pid} used {used:?} of CPU in an idle second"
        );
    }
}
