//! Master scenarios of the zygote tests ([`SpawnMode::Zygote`]), in a process of their own
//! because they hold locks on purpose, kill their zygote, or are killed.
//!
//! `hardening-master zygote-<scenario> [args]` runs one and prints its findings on standard
//! output, one `key=value` per line.

use std::{
    io::Write,
    path::Path,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context;
use exsyst_worker::{BootstrapProfile, DedicatedWorker, SpawnMode, StderrMode};

use crate::{
    scenarios::children,
    timeout,
    workers::{
        hardening::Stubborn,
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
        other => anyhow::bail!("unknown zygote scenario {other:?}"),
    }
}

/// The profile of every scenario here: workers forked from a zygote.
pub fn profile() -> BootstrapProfile {
    BootstrapProfile::new().with_spawn_mode(SpawnMode::Zygote)
}

fn ids(worker: &mut DedicatedWorker) -> anyhow::Result<Ids> {
    worker.send_message(&Ask::Ids)?;
    Ok(worker.receive_message()?)
}

/// The one child of this process that is not among `workers`: the zygote.
fn zygote(workers: &[u32]) -> anyhow::Result<u32> {
    let others: Vec<u32> = children()
        .into_iter()
        .filter(|(pid, state)| !workers.contains(pid) && *state != 'Z')
        .map(|(pid, _)| pid)
        .collect();
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
    let zygote = zygote(&[worker.pid()])?;
    println!("pid={}", worker.pid());
    println!("master={}", std::process::id());
    println!("master_pgid={}", crate::sys::pgid());
    println!("zygote={zygote}");
    println!("zygote_threads={}", threads_of(zygote)?);
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
    // Dead, not reaped yet: a zombie of ours until the next spawn finds it gone.
    let deadline = Instant::now() + timeout(Duration::from_secs(10));
    while !children().contains(&(old, 'Z')) {
        anyhow::ensure!(Instant::now() < deadline, "zygote {old} never died");
        std::thread::park_timeout(Duration::from_millis(5));
    }
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
