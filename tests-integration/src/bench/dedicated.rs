//! Dedicated-worker benchmarks: round trip, spawn (executed, and forked from a zygote),
//! bandwidth, spawn from a big master, and the latency mode (spin, then park) against the
//! default and against raw busy-polling.
//!
//! The baselines are the same binary started with a bare pipe (no library): a raw ping-pong
//! peer (blocking, or busy-polling its non-blocking input) and a one-byte handshake.

use std::{
    io::{Read, Write},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use exsyst_worker::{BootstrapProfile, DedicatedWorker, SpawnMode, channel::serde_bytes::ByteBuf};

use super::{Config, Line, alternate};
use crate::workers::dedicated::Echo;

/// Set in a baseline peer's environment: `pingpong:<len>`, `busypoll:<len>` or
/// `submaster:<mib>:<spawns>`.
const PEER_ENV: &str = "EXSYST_BENCH_PEER";

/// The spin budget of the latency-mode benchmarks.
pub(crate) const SPIN: Duration = Duration::from_micros(100);

/// In a process started as a baseline peer, plays that part and exits; otherwise returns.
pub fn run_baseline_peer_if_asked() {
    let Ok(role) = std::env::var(PEER_ENV) else {
        return;
    };
    let parts: Vec<&str> = role.split(':').collect();
    let result = match parts.as_slice() {
        ["pingpong", len] => pingpong_peer(len.parse().expect("length")),
        ["busypoll", len] => busypoll_peer(len.parse().expect("length")),
        ["submaster", mib, spawns] => {
            submaster(mib.parse().expect("MiB"), spawns.parse().expect("spawns"))
        }
        _ => panic!("unknown peer role {role:?}"),
    };
    std::process::exit(if result.is_ok() { 0 } else { 1 });
}

/// Handshake byte, then echo `len`-byte blocks until end of input.
fn pingpong_peer(len: usize) -> std::io::Result<()> {
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    let mut buf = vec![0u8; len.max(1)];
    input.read_exact(&mut buf[..1])?;
    output.write_all(&buf[..1])?;
    output.flush()?;
    loop {
        if input.read_exact(&mut buf[..len]).is_err() {
            return Ok(());
        }
        output.write_all(&buf[..len])?;
        output.flush()?;
    }
}

/// Handshake byte, then echo `len`-byte blocks until end of input, reading a non-blocking
/// input in a busy loop: never asleep in the kernel (see [`busy_read_exact`]).
fn busypoll_peer(len: usize) -> std::io::Result<()> {
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    let mut buf = vec![0u8; len.max(1)];
    input.read_exact(&mut buf[..1])?;
    output.write_all(&buf[..1])?;
    output.flush()?;
    crate::sys::set_nonblocking(std::io::stdin())?;
    while busy_read_exact(&mut input, &mut buf[..len])? {
        output.write_all(&buf[..len])?;
        output.flush()?;
    }
    Ok(())
}

/// Fills `buf` from a non-blocking reader, trying again at once while it has nothing; `false`
/// at the end of input.
///
/// A process allowed only one CPU (pinned) yields it between tries: a busy-poller that never
/// yields leaves its peer on the same CPU waiting for a whole time slice, a figure that says
/// nothing about either side's code.
fn busy_read_exact(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    static ONE_CPU: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let one_cpu =
        *ONE_CPU.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() == 1));
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && one_cpu => {
                std::thread::yield_now()
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Touches `mib` MiB, then times `spawns` spawns until the first reply; prints the mean in µs.
fn submaster(mib: usize, spawns: usize) -> std::io::Result<()> {
    let ballast = vec![1u8; mib << 20];
    let profile = BootstrapProfile::new();
    let mut total = Duration::ZERO;
    for _ in 0..spawns {
        total += spawn_to_first_reply(&profile);
    }
    std::hint::black_box(&ballast);
    println!("{}", total.as_secs_f64() * 1e6 / spawns as f64);
    Ok(())
}

fn spawn_to_first_reply(profile: &BootstrapProfile) -> Duration {
    let start = Instant::now();
    let mut w = DedicatedWorker::spawn::<Echo>(profile).expect("spawn");
    w.send_message(&1u8).expect("send");
    let _: u8 = w.receive_message().expect("reply");
    let elapsed = start.elapsed();
    drop(w);
    elapsed
}

fn start_peer(role: &str) -> Child {
    Command::new(std::env::current_exe().expect("current exe"))
        .env(PEER_ENV, role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start baseline peer")
}

/// A raw peer after its handshake, with its pipes.
struct RawPeer {
    child: Child,
    input: std::process::ChildStdin,
    output: std::process::ChildStdout,
}

impl RawPeer {
    /// A blocking ping-pong peer.
    fn start(len: usize) -> Self {
        Self::start_as(&format!("pingpong:{len}"))
    }

    /// A busy-polling ping-pong peer, whose output this side reads busy-polling too.
    fn start_busy(len: usize) -> Self {
        let peer = Self::start_as(&format!("busypoll:{len}"));
        crate::sys::set_nonblocking(&peer.output).expect("non-blocking output");
        peer
    }

    fn start_as(role: &str) -> Self {
        let mut child = start_peer(role);
        let mut input = child.stdin.take().unwrap();
        let mut output = child.stdout.take().unwrap();
        let mut b = [7u8];
        input.write_all(&b).unwrap();
        output.read_exact(&mut b).unwrap();
        RawPeer {
            child,
            input,
            output,
        }
    }
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the dedicated benchmarks the configuration selects.
pub fn run(cfg: &Config) -> Vec<Line> {
    let mut lines = Vec::new();
    let profile = BootstrapProfile::new();
    if cfg.wants("dedicated round trip") {
        let spawn = || DedicatedWorker::spawn::<Echo>(&profile).expect("spawn");
        lines.push(echo_bench(
            cfg,
            spawn,
            "dedicated round trip",
            16,
            3000,
            1,
            |us| us,
        ));
    }
    if cfg.wants("dedicated round trip spin") {
        // The latency mode against the same worker without it: fresh workers each round.
        let spinning = BootstrapProfile::new().with_spin(SPIN);
        let mut line = Line::new(cfg.name("dedicated round trip spin"), "µs");
        for round in 0..cfg.rounds {
            let ours = || worker_round_trips::<Echo>(&spinning, &(), 16, 3000);
            let base = || worker_round_trips::<Echo>(&profile, &(), 16, 3000);
            line.rounds.push(alternate(round, ours, base));
        }
        lines.push(line);
    }
    if cfg.wants("dedicated round trip spin vs busy-poll") {
        let spinning = BootstrapProfile::new().with_spin(SPIN);
        let mut line = Line::new(cfg.name("dedicated round trip spin vs busy-poll"), "µs");
        for round in 0..cfg.rounds {
            let ours = || worker_round_trips::<Echo>(&spinning, &(), 16, 3000);
            let base = || busy_round_trips(16, 3000);
            line.rounds.push(alternate(round, ours, base));
        }
        lines.push(line);
    }
    if cfg.wants("dedicated idle cpu spin") {
        // CPU time an idle worker burns in the second after its last message, against a whole
        // CPU: the ratio is the share of a CPU it takes.
        let mut line = Line::new(cfg.name("dedicated idle cpu spin"), "ms/s");
        let spinning = BootstrapProfile::new().with_spin(SPIN);
        for _ in 0..cfg.rounds {
            line.rounds.push((idle_cpu_ms(&spinning), 1000.0));
        }
        lines.push(line);
    }
    if cfg.wants("dedicated paced cpu spin") {
        // The CPU cost in a conversation that is not in full flow: a request every millisecond
        // for a second; the worker's CPU time with the latency mode against without it.
        let mut line = Line::new(cfg.name("dedicated paced cpu spin"), "ms/s");
        let spinning = BootstrapProfile::new().with_spin(SPIN);
        for round in 0..cfg.rounds {
            let ours = || paced_cpu_ms(&spinning);
            let base = || paced_cpu_ms(&profile);
            line.rounds.push(alternate(round, ours, base));
        }
        lines.push(line);
    }
    if cfg.wants("dedicated spawn") && !cfg.wants_only("big master") {
        let mut line = Line::new(cfg.name("dedicated spawn"), "µs");
        const N: u32 = 20;
        for _ in 0..cfg.rounds {
            let ours = time_each(N, || spawn_to_first_reply(&profile));
            let base = time_each(N, || {
                let start = Instant::now();
                let mut child = start_peer("pingpong:1");
                let mut b = [7u8];
                child.stdin.as_mut().unwrap().write_all(&b).unwrap();
                child.stdout.as_mut().unwrap().read_exact(&mut b).unwrap();
                let elapsed = start.elapsed();
                drop(child.stdin.take());
                let _ = child.wait();
                elapsed
            });
            line.rounds.push((ours, base));
        }
        lines.push(line);
    }
    if cfg.wants("dedicated spawn zygote") {
        // Ours forks from a zygote already running (the first spawn below starts it, before
        // any round); the baseline is the library's own default spawn, which executes the
        // worker afresh. Both to the first reply, then closed.
        let zygote = BootstrapProfile::new().with_spawn_mode(SpawnMode::Zygote);
        spawn_to_first_reply(&zygote);
        let mut line = Line::new(cfg.name("dedicated spawn zygote"), "µs");
        const N: u32 = 20;
        for round in 0..cfg.rounds {
            let ours = || time_each(N, || spawn_to_first_reply(&zygote));
            let base = || time_each(N, || spawn_to_first_reply(&profile));
            let (o, b) = if round % 2 == 0 {
                let o = ours();
                (o, base())
            } else {
                let b = base();
                (ours(), b)
            };
            line.rounds.push((o, b));
        }
        lines.push(line);
    }
    if cfg.wants("dedicated 1MiB") {
        // Bandwidth, higher is better: two MiB cross per round trip.
        // Bandwidth, higher is better: two MiB cross per round trip.
        let spawn = || DedicatedWorker::spawn::<Echo>(&profile).expect("spawn");
        lines.push(echo_bench(
            cfg,
            spawn,
            "dedicated 1MiB",
            1 << 20,
            40,
            1,
            |us| 2.0 / (us / 1e6),
        ));
    }
    if cfg.wants("dedicated spawn big master") {
        let mut line = Line::new(cfg.name("dedicated spawn big master"), "µs");
        for _ in 0..cfg.rounds {
            let big = run_submaster(512, 10);
            let small = run_submaster(0, 10);
            line.rounds.push((big, small));
        }
        lines.push(line);
    }
    lines
}

/// Mean µs per round trip of `n` `len`-byte messages through a fresh worker running `W` (a
/// worker that echoes), started with `profile`; the second of two runs, warm, counts.
pub(crate) fn worker_round_trips<W: exsyst_worker::Worker>(
    profile: &BootstrapProfile,
    args: &W::Args,
    len: usize,
    n: u32,
) -> f64 {
    let message = ByteBuf::from(vec![5u8; len]);
    let mut w = DedicatedWorker::spawn_with_args::<W>(profile, args).expect("spawn");
    let mut run = || {
        time_per(n, || {
            w.send_message(&message).unwrap();
            let _: ByteBuf = w.receive_message().unwrap();
        })
    };
    run();
    run()
}

/// Mean µs per round trip of `n` `len`-byte blocks through a fresh raw peer where both sides
/// busy-poll non-blocking pipes; the second of two runs counts.
fn busy_round_trips(len: usize, n: u32) -> f64 {
    let mut peer = RawPeer::start_busy(len);
    let mut raw = vec![5u8; len];
    let mut run = || {
        time_per(n, || {
            peer.input.write_all(&raw).unwrap();
            assert!(busy_read_exact(&mut peer.output, &mut raw).unwrap());
        })
    };
    run();
    run()
}

/// Milliseconds of CPU a worker started with `profile` uses in the second after a short
/// conversation, while its master does nothing.
pub fn idle_cpu_ms(profile: &BootstrapProfile) -> f64 {
    let mut w = DedicatedWorker::spawn::<Echo>(profile).expect("spawn");
    for _ in 0..100 {
        w.send_message(&1u8).unwrap();
        let _: u8 = w.receive_message().unwrap();
    }
    let pid = w.pid();
    let before = crate::sys::process_cpu_time(pid).expect("cpu time");
    // The measurement itself: a second of idleness.
    std::thread::sleep(Duration::from_secs(1));
    let after = crate::sys::process_cpu_time(pid).expect("cpu time");
    (after - before).as_secs_f64() * 1e3
}

/// Milliseconds of CPU a worker started with `profile` uses over one second of requests sent
/// one per millisecond (each answered before the pause that follows).
fn paced_cpu_ms(profile: &BootstrapProfile) -> f64 {
    let mut w = DedicatedWorker::spawn::<Echo>(profile).expect("spawn");
    w.send_message(&1u8).unwrap();
    let _: u8 = w.receive_message().unwrap();
    let before = crate::sys::process_cpu_time(w.pid()).expect("cpu time");
    let start = Instant::now();
    for i in 1..=1000u32 {
        w.send_message(&1u8).unwrap();
        let _: u8 = w.receive_message().unwrap();
        // The pace of the requests, not a synchronisation.
        if let Some(pause) =
            (start + Duration::from_millis(u64::from(i))).checked_duration_since(Instant::now())
        {
            std::thread::sleep(pause);
        }
    }
    let used = crate::sys::process_cpu_time(w.pid()).expect("cpu time") - before;
    used.as_secs_f64() * 1e3 / start.elapsed().as_secs_f64()
}

/// Round trips of `len`-byte messages through an echo worker against a raw pipe peer, with
/// `window` messages in flight (1: ping-pong); `figure` turns µs per message into the unit.
///
/// Where the scheduler puts two ping-ponging processes on this 2-CPU machine changes a round trip
/// by an order of magnitude, and a process tends to stay where it landed; so each round starts a
/// fresh worker and a fresh peer, one after the other, and the median of per-round ratios is over
/// fresh placements.
pub(crate) fn echo_bench(
    cfg: &Config,
    spawn: impl Fn() -> DedicatedWorker,
    name: &str,
    len: usize,
    n: u32,
    window: u32,
    figure: impl Fn(f64) -> f64,
) -> Line {
    let unit = if len > 1024 {
        "MiB/s"
    } else if window > 1 {
        "msgs/s"
    } else {
        "µs"
    };
    let mut line = Line::new(cfg.name(name), unit);
    let message = ByteBuf::from(vec![5u8; len]);
    let mut raw = vec![5u8; len];
    for round in 0..cfg.rounds {
        // Only one pair exists at a time: with two partners alive, the master shares a CPU with
        // whichever the scheduler settled next to first, and the other pair pays cross-CPU
        // wake-ups (on this VM, 5 µs against 20-50 µs a round trip), which says nothing about
        // either side's code.
        let ours = || {
            let mut w = spawn();
            let mut run = || {
                time_windowed(n, window, |sending| {
                    if sending {
                        w.send_message(&message).unwrap();
                    } else {
                        let _: ByteBuf = w.receive_message().unwrap();
                    }
                })
            };
            run();
            run()
        };
        let base = || {
            let mut peer = RawPeer::start(len);
            let mut run = || {
                time_windowed(n, window, |sending| {
                    if sending {
                        peer.input.write_all(&raw).unwrap();
                    } else {
                        peer.output.read_exact(&mut raw).unwrap();
                    }
                })
            };
            run();
            run()
        };
        let (o, b) = alternate(round, ours, base);
        line.rounds.push((figure(o), figure(b)));
    }
    line
}

/// Mean µs per message for `n` messages with up to `window` in flight; `op(true)` sends one,
/// `op(false)` receives one.
fn time_windowed(n: u32, window: u32, mut op: impl FnMut(bool)) -> f64 {
    let start = Instant::now();
    let (mut sent, mut received) = (0, 0);
    while received < n {
        while sent < n && sent - received < window {
            op(true);
            sent += 1;
        }
        op(false);
        received += 1;
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

fn run_submaster(mib: usize, spawns: usize) -> f64 {
    let out = Command::new(std::env::current_exe().expect("current exe"))
        .env(PEER_ENV, format!("submaster:{mib}:{spawns}"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run sub-master");
    assert!(out.status.success(), "sub-master failed: {}", out.status);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("sub-master prints a number")
}

/// Mean µs per call of `f` over `n` calls.
pub fn time_per(n: u32, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

/// Mean µs of the durations `f` reports over `n` calls.
pub fn time_each(n: u32, mut f: impl FnMut() -> Duration) -> f64 {
    let total: Duration = (0..n).map(|_| f()).sum();
    total.as_secs_f64() * 1e6 / f64::from(n)
}
