//! Pool benchmarks: tiny tasks one by one against raw-pipe workers fed round-robin, the same
//! from async code (tokio) against the blocking calls, the default (adaptive) in-flight depth
//! against a pinned one and against the ideal makespan of uneven work, short tasks' p99 latency
//! among long ones with the default depth against a depth of one, a fresh process per task
//! forked from a zygote against the same executed afresh, and `map` against Python's
//! `multiprocessing.Pool.map`.
//!
//! The raw baseline peers are this binary re-executed with `EXSYST_BENCH_POOL_PEER` set; the
//! Python baseline is `tests-integration/bench/pool_map.py`, run with `python3`.

use std::{
    collections::VecDeque,
    io::{BufReader, Read, Write},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use exsyst_worker::{BootstrapProfile, SpawnMode, pool::WorkerPoolBuilder};

use exsyst_worker::channel::serde_bytes::ByteBuf;

use super::{Config, Line, alternate, dedicated::SPIN};
use crate::workers::{
    dedicated::Echo,
    pool::{Command as Task, Commands, Tiny},
};

/// Set in a raw baseline peer's environment.
const PEER_ENV: &str = "EXSYST_BENCH_POOL_PEER";
/// Workers in both benchmarks.
const WORKERS: usize = 2;
/// Tasks in flight per worker in `pool tiny tasks`, for ours and the baseline alike.
const DEPTH: usize = 16;

/// In a process started as a raw baseline peer, answers 8-byte `n` with `n + 1` until end of
/// input, one write per answer (as our task runner does), and exits; otherwise returns.
pub fn run_peer_if_asked() {
    if std::env::var_os(PEER_ENV).is_none() {
        return;
    }
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    let mut n = [0u8; 8];
    while input.read_exact(&mut n).is_ok() {
        let reply = (u64::from_le_bytes(n) + 1).to_le_bytes();
        if output
            .write_all(&reply)
            .and_then(|()| output.flush())
            .is_err()
        {
            break;
        }
    }
    std::process::exit(0);
}

/// Runs the pool benchmarks the configuration selects.
pub fn run(cfg: &Config) -> Vec<Line> {
    let mut lines = Vec::new();
    if cfg.wants("pool tiny tasks") {
        let mut line = Line::new(cfg.name("pool tiny tasks"), "tasks/s");
        for _ in 0..cfg.rounds {
            let ours = tiny_tasks(50_000);
            let base = raw_round_robin(50_000);
            line.rounds.push((ours, base));
        }
        lines.push(line);
    }
    if cfg.wants("pool async tiny tasks") {
        let mut line = Line::new(cfg.name("pool async tiny tasks"), "tasks/s");
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        for _ in 0..cfg.rounds {
            let ours = async_tiny_tasks(&runtime, 50_000);
            let base = tiny_tasks(50_000);
            line.rounds.push((ours, base));
        }
        lines.push(line);
    }
    if cfg.wants("pool async tiny tasks, a task per request") {
        let name = cfg.name("pool async tiny tasks, a task per request");
        let mut line = Line::new(name, "tasks/s");
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        for _ in 0..cfg.rounds {
            let ours = async_tiny_tasks_per_request(&runtime, 50_000);
            let base = tiny_tasks(50_000);
            line.rounds.push((ours, base));
        }
        lines.push(line);
    }
    if cfg.wants("pool tiny tasks default") {
        let mut line = Line::new(cfg.name("pool tiny tasks default"), "tasks/s");
        for _ in 0..cfg.rounds {
            let ours = tiny_tasks_with(builder(), 50_000);
            let pinned = tiny_tasks_with(builder().in_flight_per_worker(DEPTH), 50_000);
            line.rounds.push((ours, pinned));
        }
        lines.push(line);
    }
    if cfg.wants("pool uneven default") {
        let mut line = Line::new(cfg.name("pool uneven default"), "ms");
        for _ in 0..cfg.rounds {
            line.rounds.push(uneven());
        }
        lines.push(line);
    }
    if cfg.wants("pool short task p99 with long ones") {
        let name = cfg.name("pool short task p99 with long ones");
        let mut line = Line::new(name, "ms");
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        for round in 0..cfg.rounds {
            let ours = || short_p99_with_long_ones(&runtime, None);
            let base = || short_p99_with_long_ones(&runtime, Some(1));
            line.rounds.push(alternate(round, ours, base));
        }
        lines.push(line);
    }
    if cfg.wants("pool fresh process per task") {
        let mut line = Line::new(cfg.name("pool fresh process per task"), "tasks/s");
        for round in 0..cfg.rounds {
            let ours = || fresh_process_per_task(SpawnMode::Zygote, 400);
            let base = || fresh_process_per_task(SpawnMode::Exec, 400);
            line.rounds.push(alternate(round, ours, base));
        }
        lines.push(line);
    }
    if cfg.wants("pool round trip spin") {
        // A message pool's first-ready receive (its poller spins) from one echo worker (which
        // spins too), against the same pool without the latency mode.
        let mut line = Line::new(cfg.name("pool round trip spin"), "µs");
        for round in 0..cfg.rounds {
            let ours = || pool_round_trips(BootstrapProfile::new().with_spin(SPIN), 3000);
            let base = || pool_round_trips(BootstrapProfile::new(), 3000);
            line.rounds.push(alternate(round, ours, base));
        }
        lines.push(line);
    }
    if cfg.wants("map") {
        let mut line = Line::new(cfg.name("map vs python Pool(2).map"), "tasks/s");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/pool_map.py");
        for _ in 0..cfg.rounds {
            let ours = map(100_000);
            let Some(python) = python_map(script, 100_000) else {
                eprintln!("bench map: python3 {script} did not run; no baseline");
                break;
            };
            line.rounds.push((ours, python));
        }
        lines.push(line);
    }
    lines
}

fn builder() -> WorkerPoolBuilder {
    WorkerPoolBuilder::new()
        .profile(BootstrapProfile::new())
        .size(WORKERS)
}

/// Mean µs per round trip of `n` 16-byte messages through a fresh one-worker message pool
/// started with `profile`; the second of two runs counts.
fn pool_round_trips(profile: BootstrapProfile, n: u32) -> f64 {
    let mut pool = WorkerPoolBuilder::new()
        .profile(profile)
        .size(1)
        .build::<Echo>()
        .expect("message pool");
    let message = ByteBuf::from(vec![5u8; 16]);
    let mut run = || {
        super::dedicated::time_per(n, || {
            pool.send_message(0, &message).unwrap();
            let _: (usize, ByteBuf) = pool.receive_message().unwrap();
        })
    };
    run();
    run()
}

/// Tiny tasks submitted one by one, results awaited oldest first.
fn tiny_tasks(n: u64) -> f64 {
    tiny_tasks_with(builder().in_flight_per_worker(DEPTH), n)
}

/// [`tiny_tasks`] with the pool `builder` makes.
fn tiny_tasks_with(builder: WorkerPoolBuilder, n: u64) -> f64 {
    let pool = builder.build_tasks::<Tiny>().expect("task pool");
    // Warm up the workers and the dispatcher.
    pool.map(0..1000).expect("warm-up");
    let start = Instant::now();
    let mut handles = VecDeque::new();
    for i in 0..n {
        handles.push_back(pool.submit(i).expect("submit"));
        if handles.len() > WINDOW {
            std::hint::black_box(handles.pop_front().unwrap().wait().expect("result"));
        }
    }
    for h in handles {
        std::hint::black_box(h.wait().expect("result"));
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// [`tiny_tasks`] from async code: on tokio's default (multi-thread) runtime, in a task of its
/// own as a server's handler would be, submitting with `submit_async` and awaiting the
/// handles, oldest first, with [`WINDOW`] in flight (the blocking loop's shape exactly).
fn async_tiny_tasks(runtime: &tokio::runtime::Runtime, n: u64) -> f64 {
    let pool = Arc::new(
        builder()
            .in_flight_per_worker(DEPTH)
            .build_tasks::<Tiny>()
            .expect("task pool"),
    );
    pool.map(0..1000).expect("warm-up");
    let start = Instant::now();
    let run = runtime.spawn(async move {
        let mut handles = VecDeque::new();
        for i in 0..n {
            handles.push_back(pool.submit_async(i).await.expect("submit"));
            if handles.len() > WINDOW {
                let oldest = handles.pop_front().unwrap();
                std::hint::black_box(oldest.await.expect("result"));
            }
        }
        for h in handles {
            std::hint::black_box(h.await.expect("result"));
        }
    });
    runtime.block_on(run).expect("the bench task");
    n as f64 / start.elapsed().as_secs_f64()
}

/// [`async_tiny_tasks`] with a task per request, as a server has when each of its handlers
/// offloads one item: each task runs `pool.submit_async(i).await?.await`, [`WINDOW`] at once.
/// Every result wakes a task of its own, so this measures the executor's wake as well.
fn async_tiny_tasks_per_request(runtime: &tokio::runtime::Runtime, n: u64) -> f64 {
    let pool = Arc::new(
        builder()
            .in_flight_per_worker(DEPTH)
            .build_tasks::<Tiny>()
            .expect("task pool"),
    );
    pool.map(0..1000).expect("warm-up");
    let start = Instant::now();
    runtime.block_on(async {
        let mut requests = tokio::task::JoinSet::new();
        for i in 0..n {
            let pool = pool.clone();
            requests.spawn(async move { pool.submit_async(i).await?.await });
            if requests.len() > WINDOW {
                let done = requests.join_next().await.expect("a request");
                std::hint::black_box(done.expect("joined").expect("result"));
            }
        }
        while let Some(done) = requests.join_next().await {
            std::hint::black_box(done.expect("joined").expect("result"));
        }
    });
    n as f64 / start.elapsed().as_secs_f64()
}

/// Requests in flight at once in [`async_tiny_tasks`], as in [`tiny_tasks`].
const WINDOW: usize = 4096;

/// `n` tiny tasks on a pool that runs each in a fresh process (`recycle_after(1)`), workers
/// started as `mode` says, all submitted at once; tasks per second. The pool is warmed up first
/// (with a zygote, that starts it).
fn fresh_process_per_task(mode: SpawnMode, n: u64) -> f64 {
    let pool = WorkerPoolBuilder::new()
        .profile(BootstrapProfile::new().with_spawn_mode(mode))
        .size(WORKERS)
        .recycle_after(1)
        .build_tasks::<Tiny>()
        .expect("task pool");
    for i in 0..4 {
        pool.submit(i).expect("submit").wait().expect("warm-up");
    }
    let start = Instant::now();
    let handles: Vec<_> = (0..n).map(|i| pool.submit(i).expect("submit")).collect();
    for (i, h) in (0..n).zip(handles) {
        assert_eq!(h.wait().expect("result"), i + 1);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Tasks in `pool uneven default`, and their work: 1 in [`SLOW_EVERY`] takes [`SLOW_US`], the
/// others [`FAST_US`].
const UNEVEN_TASKS: u64 = 1000;
const SLOW_EVERY: u64 = 50;
const FAST_US: u64 = 200;
const SLOW_US: u64 = 20_000;

/// Uneven work on default settings, all submitted at once: (the makespan, the ideal makespan
/// of the same work spread evenly over the workers), in milliseconds.
fn uneven() -> (f64, f64) {
    let pool = builder().build_tasks::<Commands>().expect("task pool");
    pool.map((0..1000).map(Task::Echo)).expect("warm-up");
    let work: Vec<u64> = (0..UNEVEN_TASKS)
        .map(|i| {
            if i % SLOW_EVERY == 0 {
                SLOW_US
            } else {
                FAST_US
            }
        })
        .collect();
    let total = Duration::from_micros(work.iter().sum());
    let start = Instant::now();
    let handles: Vec<_> = work
        .iter()
        .map(|&us| pool.submit(Task::Work(us)).expect("submit"))
        .collect();
    for h in handles {
        h.wait().expect("result");
    }
    let makespan = start.elapsed();
    let ideal = total / WORKERS as u32;
    (makespan.as_secs_f64() * 1e3, ideal.as_secs_f64() * 1e3)
}

/// Tasks in `pool short task p99 with long ones`: they arrive [`BURST`] at a time every
/// [`BURST_EVERY`]; 1 in [`LONG_EVERY`] takes [`LONG_US`], the others [`SHORT_US`].
const BURSTY_TASKS: u64 = 1000;
const BURST: u64 = 5;
const BURST_EVERY: Duration = Duration::from_millis(40);
const LONG_EVERY: u64 = 50;
const LONG_US: u64 = 200_000;
const SHORT_US: u64 = 50;

/// Bursts of short tasks with a long one now and then, on a pool of [`WORKERS`] with the
/// in-flight depth pinned to `depth` (or the default): the 99th percentile of the short tasks'
/// latency (from submit to result), in milliseconds. Each task is submitted and awaited by a
/// tokio task of its own, so that each latency ends when its own result arrives.
fn short_p99_with_long_ones(runtime: &tokio::runtime::Runtime, depth: Option<usize>) -> f64 {
    let mut builder = builder();
    if let Some(depth) = depth {
        builder = builder.in_flight_per_worker(depth);
    }
    let pool = Arc::new(builder.build_tasks::<Commands>().expect("task pool"));
    pool.map((0..1000).map(Task::Echo)).expect("warm-up");
    let mut shorts = runtime.block_on(async {
        let start = tokio::time::Instant::now();
        let mut requests = tokio::task::JoinSet::new();
        for i in 0..BURSTY_TASKS {
            if i % BURST == 0 {
                let burst = u32::try_from(i / BURST).expect("few bursts");
                tokio::time::sleep_until(start + BURST_EVERY * burst).await;
            }
            let long = i % LONG_EVERY == LONG_EVERY / 2;
            let micros = if long { LONG_US } else { SHORT_US };
            let pool = pool.clone();
            requests.spawn(async move {
                let submitted = Instant::now();
                pool.submit(Task::Work(micros))
                    .expect("submit")
                    .await
                    .expect("result");
                (long, submitted.elapsed())
            });
        }
        let mut shorts = Vec::new();
        while let Some(done) = requests.join_next().await {
            let (long, latency) = done.expect("joined");
            if !long {
                shorts.push(latency);
            }
        }
        shorts
    });
    shorts.sort_unstable();
    let p99 = shorts[(shorts.len() * 99).div_ceil(100) - 1];
    p99.as_secs_f64() * 1e3
}

/// `map` over `n` tiny items with the default (Python's) chunking.
fn map(n: u64) -> f64 {
    let pool = builder().build_tasks::<Tiny>().expect("task pool");
    pool.map(0..1000).expect("warm-up");
    let start = Instant::now();
    let results = pool.map(0..n).expect("map");
    let rate = n as f64 / start.elapsed().as_secs_f64();
    assert_eq!(results.last(), Some(&n));
    rate
}

fn python_map(script: &str, n: u64) -> Option<f64> {
    let output = Command::new("python3")
        .arg(script)
        .arg(n.to_string())
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

struct Peer {
    child: Child,
    input: std::process::ChildStdin,
    output: BufReader<std::process::ChildStdout>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The hand-written baseline: two raw pipe workers, `DEPTH` tasks in flight each, fed
/// round-robin: read one answer from a worker (through a buffer), send it the next task.
fn raw_round_robin(n: u64) -> f64 {
    let mut peers: Vec<Peer> = (0..WORKERS)
        .map(|_| {
            let mut child = Command::new(std::env::current_exe().expect("current exe"))
                .env(PEER_ENV, "1")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start baseline peer");
            let input = child.stdin.take().unwrap();
            let output = BufReader::new(child.stdout.take().unwrap());
            Peer {
                child,
                input,
                output,
            }
        })
        .collect();
    let mut buf = [0u8; 8];
    // Warm up: one round trip each.
    for p in &mut peers {
        p.input.write_all(&0u64.to_le_bytes()).unwrap();
        p.output.read_exact(&mut buf).unwrap();
    }
    let start = Instant::now();
    let mut next = 0u64;
    let mut in_flight = vec![0usize; WORKERS];
    while next < n && in_flight.iter().any(|f| *f < DEPTH) {
        for (p, f) in peers.iter_mut().zip(&mut in_flight) {
            if *f < DEPTH && next < n {
                p.input.write_all(&next.to_le_bytes()).unwrap();
                next += 1;
                *f += 1;
            }
        }
    }
    let mut done = 0u64;
    while done < n {
        for (p, f) in peers.iter_mut().zip(&mut in_flight) {
            if *f == 0 {
                continue;
            }
            p.output.read_exact(&mut buf).unwrap();
            std::hint::black_box(u64::from_le_bytes(buf));
            *f -= 1;
            done += 1;
            if next < n {
                p.input.write_all(&next.to_le_bytes()).unwrap();
                next += 1;
                *f += 1;
            }
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}
