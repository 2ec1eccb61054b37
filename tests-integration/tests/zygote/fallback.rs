//! Where zygotes are not supported (musl: see `SpawnMode::Zygote`), the mode is the documented
//! fallback: each worker is executed, with the results and the errors of `SpawnMode::Exec`, and
//! no zygote is ever started.

use super::*;

#[test]
fn a_worker_asked_of_a_zygote_is_executed_as_its_masters_child_and_dies_with_it() {
    let (mut master, lines) = start_master(&["zygote-hold"]);
    let pid = number(&lines, "pid");
    // No zygote: the worker is the master's only child.
    assert_eq!(value(&lines, "other_children"), "[]", "{lines:?}");
    assert!(lines.iter().all(|(k, _)| k != "zygote"), "{lines:?}");
    assert_eq!(number(&lines, "ppid"), master.0.id(), "{lines:?}");
    assert_eq!(number(&lines, "pgid"), pid, "{lines:?}");
    assert_ne!(number(&lines, "pgid"), number(&lines, "master_pgid"));
    assert_eq!(number(&lines, "threads_at_start"), 1, "{lines:?}");
    // Why there is no zygote here: musl tells the kernel to write a thread's id into a lock word
    // of its own, not into its record of the thread, so a zygote's fork could not set the
    // worker's record right (glibc's can: see worker-bootstrap's `ForkContext`).
    assert_eq!(value(&lines, "libc_tid_is_own"), "false", "{lines:?}");
    sigkill(master.0.id());
    master.0.wait().unwrap();
    assert!(
        wait_within(Duration::from_secs(1), || process_gone(pid)),
        "worker {pid} outlived its master"
    );
}

/// What a worker of `profile` gives: its start-up thread count (it is the test's child, and
/// closes with status 0), or the variant of the error of its spawn or its first answer.
fn spawned(profile: &BootstrapProfile) -> Result<usize, String> {
    let mut worker = DedicatedWorker::spawn::<Probe>(profile).map_err(|e| variant(&e))?;
    worker.send_message(&Ask::Ids).map_err(|e| variant(&e))?;
    let ids: Ids = worker.receive_message().map_err(|e| variant(&e))?;
    assert_eq!(ids.pid, worker.pid());
    assert_eq!(ids.ppid, std::process::id());
    assert_eq!(worker.close().unwrap().code(), Some(0));
    Ok(ids.threads_at_start)
}

#[test]
fn what_a_zygote_would_refuse_spawns_as_it_does_when_executed() {
    // (profile, what the spawn gives in both modes): where a zygote would be an
    // `Error::Zygote` (a program that exits at once, a main that starts a thread before
    // `run_if_worker`), the worker is executed, and its spawn is the executed one's.
    let cases = [
        (
            BootstrapProfile::new()
                .with_program("/bin/true")
                .with_stderr(StderrMode::Capture),
            Err("WorkerExited".to_owned()),
        ),
        (
            BootstrapProfile::new()
                .with_program(hardening_master())
                .with_env("EXSYST_TEST_THREAD_BEFORE_RUN_IF_WORKER", "1")
                .with_stderr(StderrMode::Capture),
            Ok(2),
        ),
        (profile(), Ok(1)),
    ];
    for (profile, expected) in cases {
        let executed = spawned(&profile.clone().with_spawn_mode(SpawnMode::Exec));
        let asked_of_a_zygote = spawned(&profile.clone().with_spawn_mode(SpawnMode::Zygote));
        assert_eq!(executed, expected, "{profile:?}");
        assert_eq!(asked_of_a_zygote, expected, "{profile:?}");
    }
}
