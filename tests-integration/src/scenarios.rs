//! Master-side scenarios that need a master process of their own (to be killed, or to count
//! its own descriptors and children without other tests running beside it).
//!
//! `test-worker master <scenario> [args]` runs one and prints its findings on standard output,
//! one `key=value` per line.

use std::time::Duration;

use exsyst_worker::{BootstrapProfile, WorkerFactory};

use crate::workers::dedicated::{Echo, Squarer};

/// Runs the scenario named by `args[0]`.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("cycles") => cycles(args.get(1).map_or(Ok(200), |n| n.parse())?),
        Some("hold") => hold(args.get(1).map_or(Ok(3), |n| n.parse())?),
        Some("self-and-map") => self_and_map(args.get(1).expect("other executable")),
        Some("evented-hold") => evented_hold(args.get(1).expect("log path")),
        Some("pool-hold") => pool_hold(args.get(1).map_or(Ok(3), |n| n.parse())?),
        Some("pool-crash") => pool_crash(),
        Some("async-many") => {
            crate::async_scenarios::many(args.get(1).map_or(Ok(16), |n| n.parse())?)
        }
        Some(shared) if shared.starts_with("shared-") => crate::shared_scenarios::run(args),
        other => anyhow::bail!("unknown scenario {other:?}"),
    }
}

/// Open descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// A process as `/proc/<pid>/stat` shows it.
#[derive(Clone, Copy, Debug)]
pub struct ProcStat {
    /// Its pid.
    pub pid: u32,
    /// Its state (`R`, `S`, `Z`...).
    pub state: char,
    /// Its parent's pid.
    pub ppid: u32,
    /// Its process group.
    pub pgrp: u32,
}

/// Every process of the system.
pub fn processes() -> Vec<ProcStat> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let mut fields = rest.split(' ');
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let mut number = || fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let (ppid, pgrp) = (number(), number());
        found.push(ProcStat {
            pid,
            state,
            ppid,
            pgrp,
        });
    }
    found
}

/// This process's children, with their state.
pub fn children() -> Vec<(u32, char)> {
    let me = std::process::id();
    processes()
        .into_iter()
        .filter(|p| p.ppid == me)
        .map(|p| (p.pid, p.state))
        .collect()
}

/// The living processes (not zombies) of process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|p| p.pgrp == pgid && !matches!(p.state, 'Z' | 'X'))
        .map(|p| p.pid)
        .collect()
}

/// Creates and drops workers `n` times; reports descriptors and children before and after.
fn cycles(n: usize) -> anyhow::Result<()> {
    let factory = WorkerFactory::new();
    // One cycle first, so lazily opened descriptors of the runtime are counted in "before".
    drop(factory.create_worker::<Squarer>()?);
    let before = open_fds();
    for i in 0..n as i64 {
        let mut worker = factory.create_worker::<Squarer>()?;
        if i % 2 == 0 {
            worker.send_message(&i)?;
            anyhow::ensure!(
                worker.receive_message::<String>()? == format!("{i} squared is {}", i * i)
            );
        }
    }
    println!("fds_before={before}");
    println!("fds_after={}", open_fds());
    println!("children={:?}", children());
    Ok(())
}

/// Starts `n` workers, prints their pids, then waits for its standard input to close.
fn hold(n: usize) -> anyhow::Result<()> {
    let factory = WorkerFactory::new();
    let mut workers = Vec::new();
    for i in 0..n as i64 {
        let mut worker = factory.create_worker::<Squarer>()?;
        worker.send_message(&i)?;
        worker.receive_message::<String>()?;
        println!("pid={}", worker.pid());
        workers.push(worker);
    }
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(())
}

/// The same conversation with a self-re-executed worker and with one from another executable
/// chosen through the profile's map.
fn self_and_map(other: &str) -> anyhow::Result<()> {
    let own = WorkerFactory::new();
    let mapped = WorkerFactory::with_profile(
        BootstrapProfile::new()
            .with_executable("echo", other)
            .with_close_grace(Duration::from_secs(5)),
    );
    for (label, factory) in [("self", own), ("map", mapped)] {
        let mut worker = factory.create_worker::<Echo>()?;
        worker.send_message(&("ping", 1))?;
        let reply: (String, i32) = worker.receive_message()?;
        let exe = std::fs::read_link(format!("/proc/{}/exe", worker.pid()))?;
        println!("{label}_reply={reply:?}");
        println!("{label}_exe={}", exe.display());
        println!("{label}_status={}", worker.close()?);
    }
    Ok(())
}

/// Starts a callback-recording evented worker, has three messages answered, prints its pid,
/// then waits for its standard input to close (the test kills it instead).
fn evented_hold(log: &str) -> anyhow::Result<()> {
    let factory = WorkerFactory::new();
    let mut worker = factory
        .create_worker_with_args::<crate::workers::evented::CallbackRecorder>(&log.to_owned())?;
    for i in 0..3u32 {
        worker.send_message(&i)?;
        anyhow::ensure!(worker.receive_message::<u32>()? == i);
    }
    println!("pid={}", worker.pid());
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(())
}

/// Starts a task pool of `n` workers with a task running on each, prints their pids, then
/// waits for its standard input to close (the test kills it instead).
fn pool_hold(n: usize) -> anyhow::Result<()> {
    use crate::workers::pool::{Command, Commands};
    let pool = WorkerFactory::new().create_task_pool::<Commands>(Some(n))?;
    let _running: Vec<_> = (0..n)
        .map(|_| pool.submit(Command::Sleep(600_000)))
        .collect::<Result<_, _>>()?;
    for pid in pool.pids() {
        println!("pid={pid}");
    }
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(())
}

/// Kills one worker of four, waits for the pool to replace it, and reports this process's
/// children then and after the pool is dropped: no zombie at any point.
fn pool_crash() -> anyhow::Result<()> {
    use crate::workers::pool::{Command, Commands};
    let pool = WorkerFactory::new().create_task_pool::<Commands>(Some(4))?;
    let victim = pool.pids()[1];
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()?;
    anyhow::ensure!(killed.success(), "kill -KILL {victim} failed");
    let deadline = std::time::Instant::now() + crate::timeout(Duration::from_secs(10));
    while pool.stats().restarted < 1 {
        anyhow::ensure!(std::time::Instant::now() < deadline, "no restart");
        // The dispatcher replaces the worker on its own; the task round trip is the wait. A
        // probe that lands on the dead worker before its death is seen fails, as it should.
        let _ = pool.submit(Command::Echo(1))?.wait();
    }
    let answers: Vec<u64> = (0..8)
        .map(|_| pool.submit(Command::Pid)?.wait())
        .collect::<Result<_, _>>()?;
    println!("victim={victim}");
    println!("pids={:?}", pool.pids());
    println!(
        "answered={}",
        answers.iter().all(|p| *p != u64::from(victim))
    );
    println!("children_running={:?}", children());
    drop(pool);
    println!("children_after={:?}", children());
    Ok(())
}
