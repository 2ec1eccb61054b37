//! Master scenarios of the bootstrap hardening tests, in a process of their own because they
//! change process-wide settings (signal dispositions, a reaper thread, a deleted executable)
//! or are killed.
//!
//! `hardening-master <scenario> [args]` runs one and prints its findings on standard output,
//! one `key=value` per line.

use std::{
    io::Write,
    os::unix::process::CommandExt,
    process::Command,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use exsyst_worker::{
    BootstrapProfile, DedicatedWorker, StderrMode, WorkerFactory, bootstrap::Error,
};

use crate::{
    timeout,
    workers::{
        dedicated::Squarer,
        hardening::Stubborn,
        hostile::{Act, Hostile},
    },
};

/// Runs the scenario named by `args[0]`.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("sigpipe-default") => sigpipe_default(),
        Some("sigchld-ignored") => sigchld_ignored(profile_for(args.get(1))),
        Some("sigchld-ignored-storm") => sigchld_ignored_storm(
            profile_for(args.get(1)),
            args.get(2)
                .context("usage: sigchld-ignored-storm <exec|zygote> <count>")?
                .parse()?,
        ),
        Some("reaper-thread") => reaper_thread(),
        Some("deleted-exe") => deleted_exe(),
        Some("stubborn-hold") => stubborn_hold(),
        Some("stderr-held") => stderr_held(stderr_mode(args.get(1))?),
        Some("stderr-stuck") => stderr_stuck(),
        Some("panicking-logger") => panicking_logger(),
        Some("many-workers") => many_workers(
            args.get(1).map_or(Ok(200), |n| n.parse())?,
            stderr_mode(args.get(2))?,
        ),
        Some("detach") => detach(args.get(1).context("usage: detach <socket path>")?),
        Some(zygote) if zygote.starts_with("zygote-") => crate::zygote_scenarios::run(args),
        other => anyhow::bail!("unknown scenario {other:?}"),
    }
}

/// The default profile, or with `zygote` the same forking workers from a zygote.
fn profile_for(mode: Option<&String>) -> BootstrapProfile {
    match mode.map(String::as_str) {
        Some("zygote") => crate::zygote_scenarios::profile(),
        _ => BootstrapProfile::new(),
    }
}

/// The standard error mode named `forward`, `capture` or `log`.
fn stderr_mode(name: Option<&String>) -> anyhow::Result<StderrMode> {
    Ok(match name.map(String::as_str) {
        Some("forward") => StderrMode::Forward,
        Some("capture") => StderrMode::Capture,
        Some("log") => StderrMode::Log,
        other => anyhow::bail!("unknown stderr mode {other:?}"),
    })
}

/// Threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Waits until this process's threads and descriptors are back to `baseline`, for up to a
/// second (scaled); prints how long that took (`back_after_ms`), or what is left (`not_back`).
fn report_back_to(baseline: (usize, usize)) {
    let limit = timeout(Duration::from_secs(1));
    let start = Instant::now();
    loop {
        let now = (threads(), crate::scenarios::open_fds());
        if now == baseline {
            println!("back_after_ms={}", start.elapsed().as_millis());
            return;
        }
        if start.elapsed() > limit {
            println!("not_back=threads {} fds {}", now.0, now.1);
            return;
        }
        // Nothing signals that a descriptor was closed: look again shortly.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Five times: a worker whose grandchild (out of its process group) holds its standard error
/// for 20 s is created and dropped; after each drop, this process's threads and descriptors
/// must come back to what they were. Then a worker that exits behind such a grandchild: its
/// error carries its last stderr line.
fn stderr_held(mode: StderrMode) -> anyhow::Result<()> {
    let profile = BootstrapProfile::new().with_stderr(mode);
    let mut grandchildren = Vec::new();
    // One cycle first: the library's threads (spawner, I/O thread) and their descriptors
    // start on first use.
    drop(hostile(&profile)?);
    let baseline = (threads(), crate::scenarios::open_fds());
    println!("threads_before={}", baseline.0);
    println!("fds_before={}", baseline.1);
    for _ in 0..5 {
        let mut worker = hostile(&profile)?;
        worker.send_message(&Act::ForkHoldingStderr(20_000))?;
        grandchildren.push(worker.receive_message::<i32>()?);
        drop(worker);
        report_back_to(baseline);
    }
    let mut worker = hostile(&profile)?;
    worker.send_message(&Act::ForkHoldingStderr(20_000))?;
    grandchildren.push(worker.receive_message::<i32>()?);
    worker.send_message(&Act::Exit(3))?;
    let start = Instant::now();
    match worker.receive_message::<String>() {
        Err(Error::WorkerExited {
            status,
            stderr_tail,
            ..
        }) => {
            println!("exit_code={:?}", status.code());
            println!("tail={}", stderr_tail.trim_end().replace('\n', "|"));
        }
        other => println!("exit=unexpected {other:?}"),
    }
    println!("exit_seen_ms={}", start.elapsed().as_millis());
    drop(worker);
    report_back_to(baseline);
    // Cleaning up: a grandchild already gone is no failure of the master's.
    for pid in grandchildren {
        let _ = crate::sys::kill(pid, libc::SIGKILL);
    }
    Ok(())
}

/// The master's standard error is a pipe nobody reads, and a worker floods its own standard
/// error (forwarded there) until everything on the way is full: another worker's death behind a
/// grandchild must still be seen, and a third closed in the background still reaped.
fn stderr_stuck() -> anyhow::Result<()> {
    let (_reader, writer) = std::io::pipe()?;
    crate::sys::dup_onto_stderr(&writer)?;
    let profile = BootstrapProfile::new().with_stderr(StderrMode::Forward);
    let mut flooder = hostile(&profile)?;
    flooder.send_message(&Act::FloodStderr(16 << 20))?;
    // Whether the flood is under way when the other worker dies does not matter: both orders
    // must work. Its reply cannot come while the master's stderr is stuck.
    others_still_served(&profile)?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(flooder);
        let _ = tx.send(());
    });
    println!(
        "flooder_dropped={}",
        rx.recv_timeout(timeout(Duration::from_secs(20))).is_ok()
    );
    // Whatever is stuck, the findings are out: end here.
    std::io::stdout().flush()?;
    std::process::exit(0)
}

/// While something holds up the standard error of other workers: a worker started with
/// `profile` dies behind a grandchild holding its channel (`dying`: its exit code, or `hung`),
/// and another is closed in the background (`background_reaped`).
fn others_still_served(profile: &BootstrapProfile) -> anyhow::Result<()> {
    let mut dying = hostile(profile)?;
    dying.send_message(&Act::ForkAndExit {
        code: 7,
        millis: 600_000,
    })?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ended = match dying.receive_message::<String>() {
            Err(Error::WorkerExited { status, .. }) => Ok(status.code()),
            other => Err(format!("{other:?}")),
        };
        let _ = tx.send(ended);
    });
    match rx.recv_timeout(timeout(Duration::from_secs(10))) {
        Ok(ended) => println!("dying={ended:?}"),
        Err(_) => println!("dying=hung"),
    }
    let background = hostile(profile)?;
    let pid = background.pid();
    background.close_in_background();
    let gone = || !crate::scenarios::children().iter().any(|(p, _)| *p == pid);
    let deadline = Instant::now() + timeout(Duration::from_secs(10));
    while !gone() && Instant::now() < deadline {
        // Nothing signals the I/O thread's reaping: look again shortly.
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("background_reaped={}", gone());
    Ok(())
}

/// A logger that panics on every record of a worker's standard error.
struct PanickingLogger;

impl log::Log for PanickingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if record.target().starts_with("exsyst_worker::worker::") {
            panic!("this logger panics on a worker's line");
        }
    }

    fn flush(&self) {}
}

/// A `log` implementation that panics on the lines of a worker's standard error (the I/O
/// thread calls it): another worker's death behind a grandchild must still be seen, and one
/// closed in the background reaped.
fn panicking_logger() -> anyhow::Result<()> {
    log::set_logger(&PanickingLogger).map_err(|e| anyhow::anyhow!("{e}"))?;
    log::set_max_level(log::LevelFilter::Info);
    // The panics' messages are expected: kept out of the findings.
    std::panic::set_hook(Box::new(|_| {}));
    let profile = BootstrapProfile::new().with_stderr(StderrMode::Log);
    let mut talker = hostile(&profile)?;
    // Its line reaches the logger on the I/O thread, which panics.
    talker.send_message(&Act::ForkHoldingStderr(1))?;
    let _grandchild: i32 = talker.receive_message()?;
    others_still_served(&BootstrapProfile::new().with_stderr(StderrMode::Capture))?;
    std::io::stdout().flush()?;
    std::process::exit(0)
}

/// `n` dedicated workers at once, each answering, their standard error in `mode`: this
/// process's threads after a first one, with all of them running, and after.
fn many_workers(n: usize, mode: StderrMode) -> anyhow::Result<()> {
    crate::sys::raise_fd_limit();
    let profile = BootstrapProfile::new().with_stderr(mode);
    drop(hostile(&profile)?);
    println!("threads_before={}", threads());
    let mut workers = Vec::with_capacity(n);
    for i in 0..n {
        let mut worker = DedicatedWorker::spawn::<Squarer>(&profile)?;
        worker.send_message(&(i as i64))?;
        workers.push(worker);
    }
    for (i, worker) in workers.iter_mut().enumerate() {
        let i = i as i64;
        anyhow::ensure!(worker.receive_message::<String>()? == format!("{i} squared is {}", i * i));
    }
    println!("workers={}", workers.len());
    println!("threads_with_workers={}", threads());
    drop(workers);
    println!("threads_after={}", threads());
    Ok(())
}

/// The name of an error's variant (`WorkerExited`, `ChannelClosed`, ...).
pub fn variant(e: &Error) -> String {
    let debug = format!("{e:?}");
    let end = debug.find([' ', '{', '(']).unwrap_or(debug.len());
    debug[..end].to_owned()
}

fn hostile(profile: &BootstrapProfile) -> anyhow::Result<DedicatedWorker> {
    let mut worker = DedicatedWorker::spawn::<Hostile>(profile)?;
    worker.send_message(&Act::Reply("hello".into()))?;
    anyhow::ensure!(worker.receive_message::<String>()? == "hello");
    Ok(worker)
}

/// With SIGPIPE's default action restored (death), keeps sending to a worker that exited until
/// a send fails; the process must live to print the error.
fn sigpipe_default() -> anyhow::Result<()> {
    crate::sys::set_signal(libc::SIGPIPE, crate::sys::Disposition::Default)?;
    let mut worker = hostile(&BootstrapProfile::new())?;
    worker.send_message(&Act::Exit(3))?;
    let deadline = Instant::now() + timeout(Duration::from_secs(10));
    let error = loop {
        match worker.send_message(&Act::Reply("more".into())) {
            Ok(()) => anyhow::ensure!(Instant::now() < deadline, "sends never failed"),
            Err(e) => break e,
        }
    };
    println!("error={}", variant(&error));
    println!("status={:?}", error.exit_status().and_then(|s| s.code()));
    Ok(())
}

/// With SIGCHLD ignored (children are reaped by the kernel), what the handle says when its
/// worker exits, is closed, or is killed.
fn sigchld_ignored(profile: BootstrapProfile) -> anyhow::Result<()> {
    crate::sys::set_signal(libc::SIGCHLD, crate::sys::Disposition::Ignore)?;
    let profile = profile.with_close_grace(Duration::from_secs(5));
    let mut worker = hostile(&profile)?;
    worker.send_message(&Act::Exit(5))?;
    let received = worker.receive_message::<String>();
    println!(
        "receive={}",
        received.as_ref().map_or_else(variant, |_| "Ok".into())
    );
    if let Err(e) = &received {
        println!("receive_message={e}");
    }
    let mut worker = hostile(&profile)?;
    worker.send_message(&Act::Exit(6))?;
    let closed = worker.close();
    println!(
        "close={}",
        closed.as_ref().map_or_else(variant, |_| "Ok".into())
    );
    let mut worker = hostile(&profile)?;
    let killed = worker.kill();
    println!(
        "kill={}",
        killed.as_ref().map_or_else(variant, |_| "Ok".into())
    );
    Ok(())
}

/// With SIGCHLD ignored and two threads spinning (so that this thread is preempted between any
/// two system calls, as on a loaded machine), `count` workers exit on request, each received
/// from once its channel ended: prints how many receives said what.
///
/// A receive that sees the end of the channel asks whether the worker exited: a worker that
/// the kernel finished reaping between two of those questions was once taken for one that
/// closed its channel and lives on (`ChannelClosed`, issue 17).
fn sigchld_ignored_storm(profile: BootstrapProfile, count: u32) -> anyhow::Result<()> {
    crate::sys::set_signal(libc::SIGCHLD, crate::sys::Disposition::Ignore)?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    let run = (|| -> anyhow::Result<()> {
        for _ in 0..count {
            let mut worker = hostile(&profile)?;
            worker.send_message(&Act::Exit(5))?;
            let received = worker.receive_message::<String>();
            *seen
                .entry(received.as_ref().map_or_else(variant, |_| "Ok".into()))
                .or_default() += 1;
        }
        Ok(())
    })();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for spinner in spinners {
        let _ = spinner.join();
    }
    run?;
    for (variant, n) in seen {
        println!("{variant}={n}");
    }
    Ok(())
}

/// Another thread reaps every child with `waitpid(-1)`. A worker exits and is reaped there; a
/// new process group leader then gets the worker's pid (forced through `ns_last_pid`). The
/// handle must report the lost exit status, and dropping it must not touch the newcomer.
fn reaper_thread() -> anyhow::Result<()> {
    let reaped = Arc::new((Mutex::new(Vec::<i32>::new()), Condvar::new()));
    let shared = Arc::clone(&reaped);
    std::thread::spawn(move || {
        loop {
            if let Some(pid) = crate::sys::reap_any_child() {
                shared.0.lock().unwrap().push(pid);
                shared.1.notify_all();
            } else {
                // No child right now: this stands for a program's SIGCHLD handler, idle.
                std::thread::park_timeout(Duration::from_millis(2));
            }
        }
    });
    let profile = BootstrapProfile::new().with_close_grace(Duration::from_millis(300));
    for attempt in 0..10 {
        let mut worker = hostile(&profile)?;
        let pid = worker.pid() as i32;
        worker.send_message(&Act::Exit(4))?;
        {
            let deadline = Instant::now() + timeout(Duration::from_secs(10));
            let mut done = reaped.0.lock().unwrap();
            while !done.contains(&pid) {
                let left = deadline.saturating_duration_since(Instant::now());
                anyhow::ensure!(!left.is_zero(), "the reaper thread never reaped {pid}");
                done = reaped.1.wait_timeout(done, left).unwrap().0;
            }
        }
        let decoy = match spawn_with_pid(pid) {
            Ok(Some(decoy)) => Some(decoy),
            // Another process took the pid first: try again with a new worker.
            Ok(None) => continue,
            Err(e) => {
                println!("decoy=unsupported ({e})");
                None
            }
        };
        let received = worker.receive_message::<String>();
        println!(
            "receive={}",
            received.as_ref().map_or_else(variant, |_| "Ok".into())
        );
        drop(worker);
        if let Some(decoy) = decoy {
            println!("attempt={attempt}");
            println!("decoy_alive={}", is_alive_sleeper(decoy));
            crate::sys::kill(decoy, libc::SIGKILL)?;
        }
        return Ok(());
    }
    anyhow::bail!("could not give a decoy the pid of a reaped worker in ten attempts")
}

/// Starts `sleep` as a process group leader with pid `pid`; `None` when another process took
/// that pid first.
fn spawn_with_pid(pid: i32) -> anyhow::Result<Option<i32>> {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/kernel/ns_last_pid")
        .and_then(|mut f| f.write_all((pid - 1).to_string().as_bytes()))
        .context("write ns_last_pid")?;
    let child = Command::new("sleep")
        .arg("600")
        .process_group(0)
        .spawn()
        .context("start sleep")?;
    let got = child.id() as i32;
    if got == pid {
        return Ok(Some(got));
    }
    // Our own child: the reaper thread reaps it.
    crate::sys::kill(got, libc::SIGKILL)?;
    Ok(None)
}

/// Whether `pid` is still a running `sleep`.
fn is_alive_sleeper(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 2..].chars().next())
        .unwrap_or('?');
    stat.contains("(sleep)") && !matches!(state, 'Z' | 'X')
}

/// Deletes this process's own executable, then starts a worker with the default profile
/// (re-executing the running image) and talks to it.
fn deleted_exe() -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    std::fs::remove_file(&exe)?;
    println!(
        "current_exe_after_delete={}",
        std::env::current_exe()?.display()
    );
    let mut worker = WorkerFactory::new().create_worker::<Squarer>()?;
    worker.send_message(&7)?;
    println!("reply={}", worker.receive_message::<String>()?);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", worker.pid()))?;
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    println!("argv0={}", String::from_utf8_lossy(argv0));
    println!("status={}", worker.close()?);
    Ok(())
}

/// Starts a [`Stubborn`] evented worker, has one message answered, prints its pid, then waits
/// for its standard input to close (the test kills it instead).
fn stubborn_hold() -> anyhow::Result<()> {
    let mut worker = WorkerFactory::new().create_worker::<Stubborn>()?;
    worker.send_message(&7u32)?;
    anyhow::ensure!(worker.receive_message::<u32>()? == 7);
    println!("pid={}", worker.pid());
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(())
}

/// Starts a [`Daemon`](crate::workers::hardening::Daemon) detached, listening on `socket`;
/// prints its pid and this process's children, then waits for its standard input to close (the
/// test kills it instead).
fn detach(socket: &str) -> anyhow::Result<()> {
    let profile = BootstrapProfile::new().with_constructor_args(&socket.to_owned())?;
    let pid =
        exsyst_worker::bootstrap::spawn_detached(&profile, "daemon", None, Default::default())?;
    println!("daemon={pid}");
    println!("children={:?}", crate::scenarios::children());
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(())
}
