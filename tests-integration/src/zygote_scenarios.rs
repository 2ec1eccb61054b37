//! Master scenarios of the zygote tests ([`SpawnMode::Zygote`]), in a process of their own
//! because they hold locks on purpose, kill their zygote, or are killed.
//!
//! `hardening-master zygote-<scenario> [args]` runs one and prints its findings on standard
//! output, one `key=value` per line.

use std::{
    collections::BTreeMap,
    io::Write,
    path::Path,
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use exsyst_worker::{
    BootstrapProfile, DedicatedWorker, SpawnMode, StderrMode, WorkerFactory, bootstrap::Error,
};

use crate::{
    hardening_scenarios::variant,
    scenarios::{children, group_members},
    timeout,
    workers::{
        hardening::Stubborn,
        pool::{Command as Task, Commands},
        zygote::{Ask, Ids, Probe, SHARED},
    },
};

/// Runs the scenario named by `args[0]`.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("zygote-hold") => hold(args.get(1).map(String::as_str) == Some("evented")),
        Some("zygote-restart") => restart(),
        Some("zygote-locks") => locks(Path::new(
            args.get(1).context("usage: zygote-locks <lock file>")?,
        )),
        Some("zygote-storm") => storm(
            number(args, 1, "usage: zygote-storm <spawns> <kills>")?,
            number(args, 2, "usage: zygote-storm <spawns> <kills>")?,
        ),
        Some("zygote-fd-limit") => fd_limit(args.get(1).map(String::as_str) == Some("zygote")),
        Some("zygote-fd-limit-in-zygote") => fd_limit_in_zygote(),
        Some("zygote-stall") => stall(),
        Some("zygote-stall-pool") => stall_pool(),
        Some("zygote-fork") => fork(number(args, 1, "usage: zygote-fork <forks>")?),
        Some("zygote-bounds") => bounds(),
        other => anyhow::bail!("unknown zygote scenario {other:?}"),
    }
}

fn number(args: &[String], i: usize, usage: &str) -> anyhow::Result<usize> {
    Ok(args.get(i).context(usage.to_owned())?.parse()?)
}

/// The profile of every scenario here: workers forked from a zygote.
pub fn profile() -> BootstrapProfile {
    BootstrapProfile::new().with_spawn_mode(SpawnMode::Zygote)
}

fn ids(worker: &mut DedicatedWorker) -> anyhow::Result<Ids> {
    worker.send_message(&Ask::Ids)?;
    Ok(worker.receive_message()?)
}

/// The living children of this process that are not among `workers`.
fn others_than(workers: &[u32]) -> Vec<u32> {
    children()
        .into_iter()
        .filter(|(pid, state)| !workers.contains(pid) && *state != 'Z')
        .map(|(pid, _)| pid)
        .collect()
}

/// The one child of this process that is not among `workers`: the zygote.
fn zygote(workers: &[u32]) -> anyhow::Result<u32> {
    let others = others_than(workers);
    match others.as_slice() {
        [zygote] => Ok(*zygote),
        _ => anyhow::bail!("expected one zygote among the children, found {others:?}"),
    }
}

fn threads_of(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/task"))?.count())
}

/// Starts a worker from a zygote (a [`Probe`], or with `evented` a [`Stubborn`] evented worker
/// that ignores SIGTERM), prints what it and the zygote are, then waits for its standard input
/// to close (the test kills it instead).
fn hold(evented: bool) -> anyhow::Result<()> {
    let profile = profile();
    let worker = if evented {
        let mut worker = DedicatedWorker::spawn::<Stubborn>(&profile)?;
        worker.send_message(&7u32)?;
        anyhow::ensure!(worker.receive_message::<u32>()? == 7);
        worker
    } else {
        let mut worker = DedicatedWorker::spawn::<Probe>(&profile)?;
        let ids = ids(&mut worker)?;
        println!("ppid={}", ids.ppid);
        println!("pgid={}", ids.pgid);
        println!("threads_at_start={}", ids.threads_at_start);
        println!("libc_tid_is_own={}", ids.libc_tid_is_own);
        worker
    };
    println!("pid={}", worker.pid());
    println!("master={}", std::process::id());
    println!("master_pgid={}", crate::sys::pgid());
    // The zygote, where there is one (Linux with glibc); elsewhere the worker was executed, and
    // the master has no other child.
    let others = others_than(&[worker.pid()]);
    println!("other_children={others:?}");
    if let [zygote] = others[..] {
        println!("zygote={zygote}");
        println!("zygote_threads={}", threads_of(zygote)?);
    }
    println!("ready");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    drop(worker);
    Ok(())
}

/// Starts a worker, kills the zygote (SIGKILL), then starts another worker: it must come from
/// a new zygote, the old one reaped.
fn restart() -> anyhow::Result<()> {
    let profile = profile();
    let mut first = DedicatedWorker::spawn::<Probe>(&profile)?;
    ids(&mut first)?;
    let old = zygote(&[first.pid()])?;
    crate::sys::kill(old as i32, libc::SIGKILL)?;
    // Reaped as it dies, by the background thread, without waiting for a spawn.
    let deadline = Instant::now() + timeout(Duration::from_secs(10));
    while children().iter().any(|(pid, _)| *pid == old) {
        anyhow::ensure!(Instant::now() < deadline, "zygote {old} was never reaped");
        std::thread::park_timeout(Duration::from_millis(5));
    }
    println!("old_zygote_reaped_before_next_spawn=true");
    // The worker it forked is the master's child, not the zygote's: it lives on.
    let first_ids = ids(&mut first)?;
    println!("first_alive={}", first_ids.pid == first.pid());
    let mut second = DedicatedWorker::spawn::<Probe>(&profile)?;
    let second_ids = ids(&mut second)?;
    let new = zygote(&[first.pid(), second.pid()])?;
    println!("old_zygote={old}");
    println!("new_zygote={new}");
    println!("second_ppid={}", second_ids.ppid);
    println!("master={}", std::process::id());
    println!(
        "old_zygote_left={}",
        children().iter().any(|(pid, _)| *pid == old)
    );
    println!("first_status={}", first.close()?);
    println!("second_status={}", second.close()?);
    Ok(())
}

/// While another thread holds [`SHARED`] and the standard error lock, and this thread holds a
/// `flock` on `path` through a descriptor without close-on-exec, starts a worker from a (new)
/// zygote; the worker takes [`SHARED`], writes to standard error, allocates and logs. Then the
/// master closes its descriptor, and the worker (and a second one) must get the `flock`: neither
/// the zygote nor its workers kept the master's descriptor.
fn locks(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)?;
    let path = &path.canonicalize()?;
    crate::sys::clear_cloexec(&file)?;
    crate::sys::try_flock_exclusive(&file)?;
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let shared = SHARED.lock().unwrap();
        let stderr = std::io::stderr().lock();
        held_tx.send(()).unwrap();
        let _ = release_rx.recv();
        drop((shared, stderr));
    });
    held_rx.recv()?;
    // The standard error lock is held: the master must not need it (its workers' standard
    // error is captured, not forwarded).
    let profile = profile().with_stderr(StderrMode::Capture);
    let mut worker = DedicatedWorker::spawn::<Probe>(&profile)?;
    let worker_ids = ids(&mut worker)?;
    println!("threads_at_start={}", worker_ids.threads_at_start);
    println!(
        "worker_holds_lock_file={}",
        worker_ids.fds.iter().any(|t| Path::new(t) == path)
    );
    let zygote = zygote(&[worker.pid()])?;
    println!(
        "zygote_holds_lock_file={}",
        std::fs::read_dir(format!("/proc/{zygote}/fd"))?
            .flatten()
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| &t == path))
    );
    worker.send_message(&Ask::UseLocks)?;
    let used = worker.receive_message_timeout::<String>(timeout(Duration::from_secs(10)));
    println!(
        "use_locks={}",
        used.unwrap_or_else(|e| format!("failed: {e}"))
    );
    drop(file);
    worker.send_message(&Ask::Flock(path.to_owned()))?;
    let locked: Result<(), String> = worker.receive_message()?;
    println!("worker_flock={locked:?}");
    drop(worker);
    let mut second = DedicatedWorker::spawn::<Probe>(&profile)?;
    second.send_message(&Ask::Flock(path.to_owned()))?;
    let locked: Result<(), String> = second.receive_message()?;
    println!("second_flock={locked:?}");
    release_tx.send(())?;
    holder
        .join()
        .map_err(|_| anyhow::anyhow!("holder panicked"))?;
    Ok(())
}

/// The zygotes among this process's children: living children whose standard input is a socket
/// (a worker's is its channel's pipe, once it has put it in place).
fn zygotes() -> Vec<u32> {
    children()
        .into_iter()
        .filter(|(pid, state)| {
            *state != 'Z'
                && std::fs::read_link(format!("/proc/{pid}/fd/0"))
                    .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// Waits (bounded) until every child of this process is a living zygote, then prints what is
/// left besides: `zombies`, `orphans` (children that are not zygotes) and `group_members`
/// (processes in the groups of the workers `pids`).
fn report_leftovers(pids: &[u32]) {
    let deadline = Instant::now() + timeout(Duration::from_secs(10));
    let leftovers = || {
        let zygotes = zygotes();
        let (zombies, orphans): (Vec<_>, Vec<_>) = children()
            .into_iter()
            .filter(|(pid, _)| !zygotes.contains(pid))
            .partition(|(_, state)| *state == 'Z');
        let members: Vec<u32> = pids.iter().flat_map(|p| group_members(*p)).collect();
        (zombies, orphans, members)
    };
    let mut left = leftovers();
    while (!left.0.is_empty() || !left.1.is_empty() || !left.2.is_empty())
        && Instant::now() < deadline
    {
        std::thread::park_timeout(Duration::from_millis(10));
        left = leftovers();
    }
    println!("zombies={:?}", left.0);
    println!("orphans={:?}", left.1);
    println!("group_members={:?}", left.2);
}

/// A small generator for the storm's timing: no dependency for a few random delays.
struct Jitter(u64);

impl Jitter {
    fn below(&mut self, n: u64) -> u64 {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// `spawns` workers forked from a zygote, one after the other, each asked who it is, while
/// another thread SIGKILLs the zygote at random moments, `kills` times at most. Prints how the
/// spawns went (`ok`, `mismatches`: a handle whose `pid()` is not the process that answers on
/// its channel, the errors by variant), then what is left behind once every handle is dropped.
fn storm(spawns: usize, kills: usize) -> anyhow::Result<()> {
    let profile = profile().with_stderr(StderrMode::Capture);
    let me = std::process::id();
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (stop, killed) = (Arc::clone(&stop), Arc::clone(&killed));
        std::thread::spawn(move || {
            let mut jitter = Jitter(u64::from(std::process::id()) | 1);
            while !stop.load(Ordering::Relaxed) && killed.load(Ordering::Relaxed) < kills {
                // Random moments, not synchronisation: anywhere in a spawn or between two.
                std::thread::sleep(Duration::from_micros(jitter.below(4000)));
                for zygote in zygotes() {
                    if crate::sys::kill(zygote as i32, libc::SIGKILL).is_ok() {
                        killed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let mut pids = Vec::new();
    let mut outcomes = BTreeMap::<String, usize>::new();
    for _ in 0..spawns {
        let outcome = match DedicatedWorker::spawn::<Probe>(&profile) {
            Ok(mut worker) => {
                pids.push(worker.pid());
                match ids(&mut worker) {
                    Ok(ids) if ids.pid == worker.pid() && ids.ppid == me => "ok".to_owned(),
                    Ok(ids) => {
                        eprintln!("handle {} talks to {ids:?}", worker.pid());
                        "mismatches".to_owned()
                    }
                    // Its worker was killed too (a zygote's fresh fork looks like a zygote).
                    Err(e) => match e.downcast_ref::<Error>() {
                        Some(e) => format!("worker_{}", variant(e)),
                        None => format!("worker_other: {e}"),
                    },
                }
            }
            Err(e) => format!("spawn_{}", variant(&e)),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    stop.store(true, Ordering::Relaxed);
    killer
        .join()
        .map_err(|_| anyhow::anyhow!("killer panicked"))?;
    println!("killed={}", killed.load(Ordering::Relaxed));
    for (outcome, n) in &outcomes {
        println!("{outcome}={n}");
    }
    report_leftovers(&pids);
    Ok(())
}

/// The descriptor limit under which this process can open exactly `free` more descriptors
/// (the lowest free numbers are taken first, so holes below the highest count).
fn limit_with_free(free: u64) -> anyhow::Result<u64> {
    use std::os::fd::AsRawFd;
    // The listing takes the lowest free number, which a probe learns first: not an open one.
    let listing = std::fs::File::open("/dev/null")?.as_raw_fd() as u64;
    let open: std::collections::BTreeSet<u64> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .filter(|fd| *fd != listing)
        .collect();
    let (mut limit, mut free_below) = (0u64, 0u64);
    while free_below < free || open.contains(&limit) {
        if !open.contains(&limit) {
            free_below += 1;
        }
        limit += 1;
    }
    Ok(limit)
}

/// Spawns under descriptor limits from the highest descriptor up: `k<n>=ok` or
/// `k<n>=emfile` (an `Error::Spawn` saying EMFILE) or the error, for each; with `zygote`, the
/// zygotes after each (`zygote<n>=`, a list) and before (`zygote=`); then what is left behind.
fn fd_limit(zygote: bool) -> anyhow::Result<()> {
    let mode = if zygote {
        SpawnMode::Zygote
    } else {
        SpawnMode::Exec
    };
    let profile = BootstrapProfile::new()
        .with_spawn_mode(mode)
        .with_stderr(StderrMode::Capture);
    let mut first = DedicatedWorker::spawn::<Probe>(&profile)?;
    ids(&mut first)?;
    if zygote {
        // Empty where workers are executed whatever the mode (see `SpawnMode::Zygote`).
        println!("zygote={:?}", zygotes());
    }
    first.close()?;
    let mut pids = Vec::new();
    for k in 0..14u64 {
        crate::sys::set_fd_limit(limit_with_free(k)?)?;
        let spawned = DedicatedWorker::spawn::<Probe>(&profile);
        crate::sys::raise_fd_limit();
        let outcome = match spawned {
            Ok(mut worker) => {
                pids.push(worker.pid());
                let ids = ids(&mut worker)?;
                anyhow::ensure!(ids.pid == worker.pid(), "{ids:?} from {}", worker.pid());
                worker.close()?;
                "ok".to_owned()
            }
            Err(Error::Spawn { source, .. }) if source.raw_os_error() == Some(libc::EMFILE) => {
                "emfile".to_owned()
            }
            Err(e) => format!("{}: {e}", variant(&e)),
        };
        println!("k{k}={outcome}");
        if zygote {
            println!("zygote{k}={:?}", zygotes());
        }
    }
    report_leftovers(&pids);
    Ok(())
}

/// The zygote's own descriptor limit lowered to 4 (`prlimit`), so that it cannot take a
/// worker's three descriptors: prints what the spawn got (`at_limit`: `emfile` for an
/// `Error::Spawn` saying EMFILE), then with the limit raised again (`after`); the zygote before
/// (`zygote`) and after each (`zygote_at_limit`, `zygote_after`); then what is left behind.
fn fd_limit_in_zygote() -> anyhow::Result<()> {
    let profile = profile().with_stderr(StderrMode::Capture);
    let mut first = DedicatedWorker::spawn::<Probe>(&profile)?;
    ids(&mut first)?;
    let zygote = zygote(&[first.pid()])?;
    println!("zygote={zygote}");
    first.close()?;
    let outcome = |spawned: Result<DedicatedWorker, Error>, pids: &mut Vec<u32>| match spawned {
        Ok(mut worker) => {
            pids.push(worker.pid());
            match ids(&mut worker) {
                Ok(ids) if ids.pid == worker.pid() => "ok".to_owned(),
                other => format!("{other:?}"),
            }
        }
        Err(Error::Spawn { source, .. }) if source.raw_os_error() == Some(libc::EMFILE) => {
            "emfile".to_owned()
        }
        Err(e) => format!("{}: {e}", variant(&e)),
    };
    let mut pids = Vec::new();
    crate::sys::set_fd_limit_of(zygote, 4)?;
    let at_limit = outcome(DedicatedWorker::spawn::<Probe>(&profile), &mut pids);
    println!("at_limit={at_limit}");
    println!("zygote_at_limit={:?}", zygotes());
    crate::sys::set_fd_limit_of(zygote, 1024)?;
    let after = outcome(DedicatedWorker::spawn::<Probe>(&profile), &mut pids);
    println!("after={after}");
    println!("zygote_after={:?}", zygotes());
    report_leftovers(&pids);
    Ok(())
}

/// Stops the zygote (SIGSTOP), then two threads spawn at once with a zygote timeout of 1 s
/// (scaled): prints how long the quicker (`fast_ms`) and the slower (`slow_ms`) took, the
/// timeout (`timeout_ms`), whether both workers are who their handles say (`both_ok`), whether
/// the stopped zygote is gone (`old_zygote_gone`) and another runs (`new_zygote`).
fn stall() -> anyhow::Result<()> {
    let bound = timeout(Duration::from_secs(1));
    let profile = profile().with_zygote_timeout(bound);
    let mut first = DedicatedWorker::spawn::<Probe>(&profile)?;
    ids(&mut first)?;
    let old = zygote(&[first.pid()])?;
    crate::sys::kill(old as i32, libc::SIGSTOP)?;
    let barrier = Arc::new(Barrier::new(2));
    let spawners: Vec<_> = (0..2)
        .map(|_| {
            let (barrier, profile) = (Arc::clone(&barrier), profile.clone());
            std::thread::spawn(
                move || -> anyhow::Result<(Duration, DedicatedWorker, bool)> {
                    barrier.wait();
                    let start = Instant::now();
                    let mut worker = DedicatedWorker::spawn::<Probe>(&profile)?;
                    let took = start.elapsed();
                    let ids = ids(&mut worker)?;
                    let ok = ids.pid == worker.pid() && ids.ppid == std::process::id();
                    Ok((took, worker, ok))
                },
            )
        })
        .collect();
    let mut results = Vec::new();
    for spawner in spawners {
        results.push(
            spawner
                .join()
                .map_err(|_| anyhow::anyhow!("spawner panicked"))??,
        );
    }
    results.sort_by_key(|(took, _, _)| *took);
    println!("timeout_ms={}", bound.as_millis());
    println!("fast_ms={}", results[0].0.as_millis());
    println!("slow_ms={}", results[1].0.as_millis());
    println!("both_ok={}", results.iter().all(|(_, _, ok)| *ok));
    let deadline = Instant::now() + timeout(Duration::from_secs(10));
    while children().iter().any(|(pid, _)| *pid == old) && Instant::now() < deadline {
        std::thread::park_timeout(Duration::from_millis(5));
    }
    println!(
        "old_zygote_gone={}",
        !children().iter().any(|(pid, _)| *pid == old)
    );
    let now = zygotes();
    println!(
        "new_zygote={}",
        now.len() == 1 && now.iter().all(|pid| *pid != old)
    );
    let mut pids = vec![first.pid()];
    for (_, worker, _) in results {
        pids.push(worker.pid());
        worker.close()?;
    }
    first.close()?;
    report_leftovers(&pids);
    Ok(())
}

/// A pool of one, its workers forked from a zygote with a timeout of 1 s (scaled): the zygote
/// is stopped (SIGSTOP), then a task makes the worker exit, so the pool respawns through the
/// stopped zygote. Prints the answers of the tasks after (`after`), and whether the pool still
/// has its worker.
fn stall_pool() -> anyhow::Result<()> {
    let profile = profile().with_zygote_timeout(timeout(Duration::from_secs(1)));
    let pool = WorkerFactory::with_profile(profile)
        .create_worker_pool_builder()
        .size(1)
        .build_tasks::<Commands>()?;
    let pid: u64 = pool.submit(Task::Pid)?.wait()?;
    let old = zygote(&[pid as u32])?;
    crate::sys::kill(old as i32, libc::SIGSTOP)?;
    let exit = pool.submit(Task::Exit(3))?.wait();
    println!("exit_task={}", exit.is_err());
    let after: Vec<Result<u64, String>> = (0..3)
        .map(|n| {
            pool.submit(Task::Echo(n))
                .and_then(|h| h.wait())
                .map_err(|e| e.to_string())
        })
        .collect();
    println!("after={after:?}");
    println!(
        "old_zygote_gone={}",
        !children()
            .iter()
            .any(|(p, state)| *p == old && *state != 'Z')
    );
    Ok(())
}

/// While another thread spawns through the zygote without pause, forks this process `forks`
/// times; each copy spawns a worker through a zygote, checks who it is, and exits 0 (1 on an
/// error, 2 on a worker that is not who its handle says). Prints `ok`, `hung` (a copy that did
/// not end within 10 s, scaled) and `failed`.
fn fork(forks: usize) -> anyhow::Result<()> {
    let profile = profile().with_stderr(StderrMode::Capture);
    let mut first = DedicatedWorker::spawn::<Probe>(&profile)?;
    ids(&mut first)?;
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (stop, profile) = (Arc::clone(&stop), profile.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut worker) = DedicatedWorker::spawn::<Probe>(&profile) {
                    let _ = ids(&mut worker);
                }
            }
        })
    };
    let (mut ok, mut hung, mut failed) = (0, 0, 0);
    for _ in 0..forks {
        let profile = profile.clone();
        let child = crate::sys::fork_and_run(move || {
            let me = std::process::id();
            let checked = DedicatedWorker::spawn::<Probe>(&profile)
                .map_err(anyhow::Error::from)
                .and_then(|mut worker| {
                    let ids = ids(&mut worker)?;
                    Ok(ids.pid == worker.pid() && ids.ppid == me)
                });
            match checked {
                Ok(true) => 0,
                Ok(false) => 2,
                Err(_) => 1,
            }
        })?;
        match crate::sys::wait_child_within(child, timeout(Duration::from_secs(10)))? {
            Some(0) => ok += 1,
            None => hung += 1,
            Some(_) => failed += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    busy.join()
        .map_err(|_| anyhow::anyhow!("spawner panicked"))?;
    println!("ok={ok}");
    println!("hung={hung}");
    println!("failed={failed}");
    Ok(())
}

/// Zygotes are bounded: workers of twelve profiles that differ by their environment (each its
/// own zygote), never idle long enough to expire, then one whose zygote expires after 300 ms
/// (scaled). Prints the most zygotes seen at once (`most_zygotes`), how long the last one
/// lived unused (`expired_after_ms`, or `never`) and the idle timeout (`idle_ms`).
fn bounds() -> anyhow::Result<()> {
    let mut most = 0;
    for n in 0..12 {
        let profile = profile()
            .with_env("EXSYST_TEST_ZYGOTE_PROFILE", n.to_string())
            .with_zygote_idle_timeout(Duration::MAX);
        let mut worker = DedicatedWorker::spawn::<Probe>(&profile)?;
        ids(&mut worker)?;
        worker.close()?;
        most = most.max(zygotes().len());
    }
    println!("most_zygotes={most}");
    let idle = timeout(Duration::from_millis(300));
    let profile = profile()
        .with_env("EXSYST_TEST_ZYGOTE_PROFILE", "idle")
        .with_zygote_idle_timeout(idle);
    let before = zygotes();
    let mut worker = DedicatedWorker::spawn::<Probe>(&profile)?;
    ids(&mut worker)?;
    let pid = worker.pid();
    worker.close()?;
    let closed = Instant::now();
    let fresh: Vec<u32> = zygotes()
        .into_iter()
        .filter(|z| !before.contains(z) && *z != pid)
        .collect();
    anyhow::ensure!(fresh.len() == 1, "no one new zygote: {fresh:?}");
    let deadline = closed + idle + timeout(Duration::from_secs(10));
    while children().iter().any(|(p, _)| *p == fresh[0]) && Instant::now() < deadline {
        std::thread::park_timeout(Duration::from_millis(5));
    }
    println!("idle_ms={}", idle.as_millis());
    if children().iter().any(|(p, _)| *p == fresh[0]) {
        println!("expired_after_ms=never");
    } else {
        println!("expired_after_ms={}", closed.elapsed().as_millis());
    }
    println!("zygotes_after={}", zygotes().len());
    Ok(())
}
