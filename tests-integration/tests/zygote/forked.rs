//! What only a real zygote shows (Linux with glibc): the zygote is a process of its own, with
//! one thread, that the master restarts, bounds and replaces, and that refuses what it cannot
//! fork; a forked worker's C library knows its own thread id.

use super::*;

#[test]
fn a_forked_worker_is_its_masters_child_in_a_group_of_its_own_and_dies_with_it() {
    let (mut master, lines) = start_master(&["zygote-hold"]);
    let (pid, zygote) = (number(&lines, "pid"), number(&lines, "zygote"));
    assert_eq!(number(&lines, "ppid"), master.0.id(), "{lines:?}");
    assert_eq!(number(&lines, "pgid"), pid, "{lines:?}");
    assert_ne!(number(&lines, "pgid"), number(&lines, "master_pgid"));
    assert_ne!(pid, zygote);
    // Nothing but the worker's own main thread when its constructor runs; the zygote has one.
    assert_eq!(number(&lines, "threads_at_start"), 1, "{lines:?}");
    assert_eq!(number(&lines, "zygote_threads"), 1, "{lines:?}");
    // glibc's record of the thread id is the worker's, as after its own fork.
    assert_eq!(value(&lines, "libc_tid_is_own"), "true", "{lines:?}");
    sigkill(master.0.id());
    master.0.wait().unwrap();
    // The bound is the requirement: one second, on any machine, as for an executed worker.
    assert!(
        wait_within(Duration::from_secs(1), || process_gone(pid)
            && process_gone(zygote)),
        "worker {pid} or zygote {zygote} outlived their master"
    );
}

#[test]
fn a_zygote_killed_mid_run_is_reaped_at_once_and_replaced_at_the_next_spawn() {
    let lines = scenario(&["zygote-restart"]);
    assert_eq!(
        value(&lines, "old_zygote_reaped_before_next_spawn"),
        "true",
        "{lines:?}"
    );
    assert_eq!(value(&lines, "first_alive"), "true", "{lines:?}");
    assert_ne!(value(&lines, "old_zygote"), value(&lines, "new_zygote"));
    assert_eq!(value(&lines, "second_ppid"), value(&lines, "master"));
    assert_eq!(value(&lines, "old_zygote_left"), "false", "{lines:?}");
    assert_eq!(value(&lines, "first_status"), "exit status: 0");
    assert_eq!(value(&lines, "second_status"), "exit status: 0");
}

#[test]
fn a_forked_worker_inherits_none_of_its_masters_locks_or_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held.lock");
    let lines = scenario(&["zygote-locks", path.to_str().unwrap()]);
    assert_eq!(value(&lines, "threads_at_start"), "1", "{lines:?}");
    assert_eq!(
        value(&lines, "worker_holds_lock_file"),
        "false",
        "{lines:?}"
    );
    assert_eq!(
        value(&lines, "zygote_holds_lock_file"),
        "false",
        "{lines:?}"
    );
    assert_eq!(value(&lines, "use_locks"), "done", "{lines:?}");
    assert_eq!(value(&lines, "worker_flock"), "Ok(())", "{lines:?}");
    assert_eq!(value(&lines, "second_flock"), "Ok(())", "{lines:?}");
}

#[test]
fn a_zygote_that_ends_before_it_answers_is_a_typed_error() {
    // `true` is no zygote: it exits at once.
    let profile = BootstrapProfile::new()
        .with_program("/bin/true")
        .with_spawn_mode(SpawnMode::Zygote);
    match DedicatedWorker::spawn::<Probe>(&profile) {
        Err(Error::Zygote { pid, reason, .. }) => {
            assert!(reason.contains("exited with code 0"), "{reason}");
            assert!(process_gone(pid));
        }
        other => panic!("expected Error::Zygote, got {other:?}"),
    }
}

#[test]
fn a_zygote_whose_main_started_a_thread_refuses_with_a_typed_error() {
    let profile = BootstrapProfile::new()
        .with_program(hardening_master())
        .with_env("EXSYST_TEST_THREAD_BEFORE_RUN_IF_WORKER", "1")
        .with_stderr(StderrMode::Capture)
        .with_spawn_mode(SpawnMode::Zygote);
    match DedicatedWorker::spawn::<Probe>(&profile) {
        Err(Error::Zygote { pid, reason, .. }) => {
            assert!(reason.contains("has 2 threads"), "{reason}");
            assert!(process_gone(pid));
        }
        other => panic!("expected Error::Zygote, got {other:?}"),
    }
    // The same executable, executed, runs workers all the same.
    let mut worker =
        DedicatedWorker::spawn::<Probe>(&profile.clone().with_spawn_mode(SpawnMode::Exec)).unwrap();
    worker.send_message(&Ask::Ids).unwrap();
    let ids: Ids = worker.receive_message().unwrap();
    assert_eq!(ids.threads_at_start, 2);
}

#[test]
fn a_storm_of_zygote_kills_leaves_every_handle_on_its_own_process_and_nothing_behind() {
    // (spawns, kills at most): kills are at random moments, so several rates.
    for (spawns, kills) in [(300, 30), (300, 100)] {
        let lines = scenario(&["zygote-storm", &spawns.to_string(), &kills.to_string()]);
        assert!(number(&lines, "killed") > 0, "{lines:?}");
        assert!(
            lines.iter().all(|(k, _)| k != "mismatches"),
            "a handle talked to another process: {lines:?}"
        );
        // Every spawn gave a handle on its own process (whose worker a kill may have hit too,
        // as it looks like a zygote until it put its channel in place): a killed zygote is
        // replaced, then the worker is executed.
        let accounted: u32 = lines
            .iter()
            .filter(|(k, _)| {
                k == "ok" || k == "worker_WorkerExited" || k == "worker_ExitStatusLost"
            })
            .map(|(_, v)| v.parse::<u32>().unwrap())
            .sum();
        assert_eq!(accounted, spawns, "{lines:?}");
        assert!(number(&lines, "ok") > spawns / 2, "{lines:?}");
        assert_nothing_left(&lines);
    }
}

#[test]
fn a_zygote_at_its_own_descriptor_limit_refuses_with_emfile_and_lives_on() {
    let lines = scenario(&["zygote-fd-limit-in-zygote"]);
    let zygote = format!("[{}]", value(&lines, "zygote"));
    assert_eq!(value(&lines, "at_limit"), "emfile", "{lines:?}");
    assert_eq!(value(&lines, "zygote_at_limit"), zygote, "{lines:?}");
    assert_eq!(value(&lines, "after"), "ok", "{lines:?}");
    assert_eq!(value(&lines, "zygote_after"), zygote, "{lines:?}");
    assert_nothing_left(&lines);
}

#[test]
fn a_stopped_zygote_blocks_no_other_spawn_and_is_killed_and_replaced_after_its_bound() {
    let lines = scenario(&["zygote-stall"]);
    let bound = number(&lines, "timeout_ms");
    // The spawn that met the stopped zygote waited its bound, then got a worker from a new
    // one; the other did not wait for it.
    let (fast, slow) = (number(&lines, "fast_ms"), number(&lines, "slow_ms"));
    assert!(fast < bound / 2, "{lines:?}");
    assert!(slow >= bound, "{lines:?}");
    assert!(slow < bound + 10_000, "{lines:?}");
    assert_eq!(value(&lines, "both_ok"), "true", "{lines:?}");
    assert_eq!(value(&lines, "old_zygote_gone"), "true", "{lines:?}");
    assert_eq!(value(&lines, "new_zygote"), "true", "{lines:?}");
    assert_nothing_left(&lines);
}

#[test]
fn a_pool_whose_respawn_meets_a_stopped_zygote_goes_on() {
    let lines = scenario(&["zygote-stall-pool"]);
    assert_eq!(value(&lines, "exit_task"), "true", "{lines:?}");
    assert_eq!(value(&lines, "after"), "[Ok(0), Ok(1), Ok(2)]", "{lines:?}");
    assert_eq!(value(&lines, "old_zygote_gone"), "true", "{lines:?}");
}

#[test]
fn zygotes_are_capped_and_an_idle_one_expires() {
    let lines = scenario(&["zygote-bounds"]);
    // Twelve profiles, never more than the cap at once, and the cap reached.
    assert_eq!(
        number(&lines, "most_zygotes") as usize,
        exsyst_worker::bootstrap::MAX_ZYGOTES,
        "{lines:?}"
    );
    let (idle, expired) = (number(&lines, "idle_ms"), value(&lines, "expired_after_ms"));
    let expired: u32 = expired.parse().unwrap_or_else(|_| panic!("{lines:?}"));
    assert!(expired >= idle, "{lines:?}");
    assert!(number(&lines, "zygotes_after") < 8, "{lines:?}");
}
