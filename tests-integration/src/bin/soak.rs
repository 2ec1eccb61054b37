//! `cargo xtask soak shared --minutes N` runs this: a shared worker under churn for N minutes.
//!
//! Usage: `soak shared [--minutes N] [--clients N] [--seed N] [--tcp]`.
//!
//! One echo daemon, started on demand as a master would, serves `--clients` client threads
//! (100 by default) in rounds of about 15 seconds. In a round each client connects and
//! disconnects again and again; on each connection it sends random sizes up to 4 MiB, waits
//! for every reply with a blocking receive or with a timed receive that may expire first (then
//! receives again), and checks every reply byte for byte. About one connection in a hundred
//! is instead a child process that writes part of a frame and is killed (SIGKILL) mid-frame.
//!
//! Between rounds every client has disconnected: the daemon's descriptors and resident memory
//! are sampled then. It fails (exit 1) when a reply was lost, late (30 s) or altered, when the
//! daemon's descriptor count at the end differs from that after the first round, or when its
//! resident memory grew by more than a quarter (plus 16 MiB of slack) from the first quiet
//! sample to the last.

// No `sys` module here: the OS is reached through the crates' safe APIs.
#![forbid(unsafe_code)]
// Test harnesses and chores start their helper processes directly (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::unix::net::UnixStream,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use exsyst_worker::{
    AdminCookie, BootstrapProfile, SharedServerConfig, SharedWorker, Worker,
    channel::serde_bytes::ByteBuf,
};
use tests_integration::{rng::Rng, workers::shared::SharedEcho};

/// Set in the environment of a client process that is to be killed mid-frame: its address.
const HALF_FRAME_ENV: &str = "EXSYST_SOAK_HALF_FRAME";
/// The largest message a client sends.
const MAX_LEN: usize = 4 * 1024 * 1024;
/// How long a reply may take before it counts as lost.
const LOST_AFTER: Duration = Duration::from_secs(30);
/// How long a round lasts, at most.
const ROUND: Duration = Duration::from_secs(15);
const COOKIE: &str = "the soak's admin cookie, 0b7e5d21";

fn main() -> anyhow::Result<()> {
    tests_integration::registry().run_if_worker();
    if let Ok(address) = std::env::var(HALF_FRAME_ENV) {
        return half_frame(&address);
    }
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("shared") {
        bail!("usage: soak shared [--minutes N] [--clients N] [--seed N] [--tcp]");
    }
    let mut minutes = 1.0f64;
    let mut clients = 100usize;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let mut tcp = false;
    while let Some(arg) = args.next() {
        let mut value = || args.next().context("a value after the option");
        match arg.as_str() {
            "--minutes" => minutes = value()?.parse()?,
            "--clients" => clients = value()?.parse()?,
            "--seed" => seed = value()?.parse()?,
            "--tcp" => tcp = true,
            _ => bail!("unknown option {arg:?}"),
        }
    }
    println!("soak shared: {minutes} min, {clients} clients, seed {seed}, tcp {tcp}");
    soak(Duration::from_secs_f64(minutes * 60.0), clients, seed, tcp)
}

/// The totals of a run.
#[derive(Default)]
struct Totals {
    connections: AtomicU64,
    exchanges: AtomicU64,
    bytes: AtomicU64,
    timed_out_then_received: AtomicU64,
    killed: AtomicU64,
    failures: AtomicU64,
}

fn soak(length: Duration, clients: usize, seed: u64, tcp: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let address = if tcp {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        format!("tcp://127.0.0.1:{port}")
    } else {
        format!("unix://{}/soak.sock", dir.path().display())
    };
    let cookie = AdminCookie::new(COOKIE)?;
    let profile = BootstrapProfile::new();
    let config = SharedServerConfig::default().with_cookie(cookie.clone());
    let first =
        exsyst_worker::shared::connect_or_start(&profile, &address, SharedEcho::NAME, &config)?;
    let pid = first.pid();
    drop(first);
    println!("daemon pid {pid} at {address}");

    let totals = Arc::new(Totals::default());
    let end = Instant::now() + length;
    let mut samples: Vec<(u64, usize)> = Vec::new();
    let mut round = 0u64;
    loop {
        let round_end = (Instant::now() + ROUND).min(end);
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..clients)
            .map(|i| {
                let address = address.clone();
                let totals = totals.clone();
                let stop = stop.clone();
                let seed = seed ^ (round << 32) ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                std::thread::spawn(move || client(&address, seed, round_end, &stop, &totals))
            })
            .collect();
        for thread in threads {
            if thread.join().is_err() {
                totals.failures.fetch_add(1, Relaxed);
            }
        }
        stop.store(true, Relaxed);
        round += 1;
        // Every client has disconnected; the daemon may still be closing the last ones.
        let sample = quiet_sample(pid)?;
        println!(
            "round {round}: rss {} KiB, {} descriptors; {} connections, {} exchanges, {} MiB, {} killed mid-frame, {} failures",
            sample.0,
            sample.1,
            totals.connections.load(Relaxed),
            totals.exchanges.load(Relaxed),
            totals.bytes.load(Relaxed) >> 20,
            totals.killed.load(Relaxed),
            totals.failures.load(Relaxed),
        );
        samples.push(sample);
        if Instant::now() >= end {
            break;
        }
    }
    exsyst_worker::shared::stop(&address, &cookie, Duration::from_secs(60))?;

    let mut failed = Vec::new();
    let failures = totals.failures.load(Relaxed);
    if failures > 0 {
        failed.push(format!("{failures} replies lost, late or altered"));
    }
    let (first_rss, first_fds) = samples[0];
    let (last_rss, last_fds) = *samples.last().expect("one round at least");
    if last_fds != first_fds {
        failed.push(format!(
            "the daemon's descriptors went from {first_fds} to {last_fds}"
        ));
    }
    if last_rss > first_rss + first_rss / 4 + 16 * 1024 {
        failed.push(format!(
            "the daemon's resident memory grew from {first_rss} KiB to {last_rss} KiB"
        ));
    }
    println!(
        "soak shared: {} connections, {} exchanges ({} after an expired timed receive), {} MiB, {} clients killed mid-frame",
        totals.connections.load(Relaxed),
        totals.exchanges.load(Relaxed),
        totals.timed_out_then_received.load(Relaxed),
        totals.bytes.load(Relaxed) >> 20,
        totals.killed.load(Relaxed),
    );
    if failed.is_empty() {
        println!("soak shared: passed");
        Ok(())
    } else {
        bail!("soak shared failed: {}", failed.join("; "))
    }
}

/// One client thread: connections one after the other until the round ends.
fn client(address: &str, seed: u64, round_end: Instant, stop: &AtomicBool, totals: &Totals) {
    let mut rng = Rng::new(seed);
    while Instant::now() < round_end && !stop.load(Relaxed) {
        totals.connections.fetch_add(1, Relaxed);
        if rng.below(100) == 0 {
            match kill_mid_frame(address) {
                Ok(()) => totals.killed.fetch_add(1, Relaxed),
                Err(e) => {
                    eprintln!("a client to be killed mid-frame failed: {e:#}");
                    totals.failures.fetch_add(1, Relaxed)
                }
            };
            continue;
        }
        if let Err(e) = connection(address, &mut rng, round_end, totals) {
            eprintln!("client: {e:#}");
            totals.failures.fetch_add(1, Relaxed);
        }
    }
}

/// One connection: a few exchanges of random sizes, each reply checked.
fn connection(
    address: &str,
    rng: &mut Rng,
    round_end: Instant,
    totals: &Totals,
) -> anyhow::Result<()> {
    let mut worker = SharedWorker::connect_timeout(address, LOST_AFTER)?;
    for _ in 0..1 + rng.below(8) {
        if Instant::now() >= round_end {
            break;
        }
        let len = random_len(rng);
        let fill = rng.bits() as u8;
        let message = ByteBuf::from(pattern(len, fill));
        worker.send_message(&message)?;
        let reply: ByteBuf = if rng.below(5) == 0 {
            let wait = Duration::from_micros(rng.below(2000) as u64);
            match worker.receive_message_timeout::<ByteBuf>(wait) {
                Ok(reply) => reply,
                Err(exsyst_worker::shared::Error::Timeout { .. }) => {
                    totals.timed_out_then_received.fetch_add(1, Relaxed);
                    worker.receive_message_timeout(LOST_AFTER)?
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            worker.receive_message_timeout(LOST_AFTER)?
        };
        if reply.as_slice() != message.as_slice() {
            bail!(
                "a reply of {} bytes came back as {} bytes, or altered",
                message.len(),
                reply.len()
            );
        }
        totals.exchanges.fetch_add(1, Relaxed);
        totals.bytes.fetch_add(2 * len as u64, Relaxed);
    }
    Ok(())
}

/// Mostly small messages, some large, a few up to [`MAX_LEN`].
fn random_len(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..70 => rng.below(64 * 1024),
        70..95 => rng.below(1024 * 1024),
        _ => rng.below(MAX_LEN + 1),
    }
}

fn pattern(len: usize, fill: u8) -> Vec<u8> {
    (0..len)
        .map(|i| fill.wrapping_add((i % 251) as u8))
        .collect()
}

/// Starts a client process that writes part of a frame, and kills it once it said so.
fn kill_mid_frame(address: &str) -> anyhow::Result<()> {
    let mut child = Command::new(std::env::current_exe()?)
        .env(HALF_FRAME_ENV, address)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    child.kill()?;
    child.wait()?;
    if line.trim() != "sent" {
        bail!("the half-frame client said {line:?}");
    }
    Ok(())
}

/// In the client process to be killed: connects, reads the hello, writes the header of a
/// 1 MiB data frame and a tenth of its payload, says `sent`, and waits to be killed.
fn half_frame(address: &str) -> anyhow::Result<()> {
    let mut stream: Box<dyn ReadWrite> = match address.strip_prefix("unix://") {
        Some(path) => Box::new(UnixStream::connect(Path::new(path))?),
        None => Box::new(TcpStream::connect(
            address.strip_prefix("tcp://").context("an address")?,
        )?),
    };
    let mut header = [0u8; 5];
    stream.read_exact(&mut header)?;
    let len = u32::from_be_bytes(header[..4].try_into()?) as usize;
    let mut hello = vec![0u8; len];
    stream.read_exact(&mut hello)?;
    let payload_len = 1024 * 1024u32;
    let mut frame = payload_len.to_be_bytes().to_vec();
    frame.push(0); // a data frame
    frame.extend(std::iter::repeat_n(7u8, payload_len as usize / 10));
    stream.write_all(&frame)?;
    println!("sent");
    std::io::stdout().flush()?;
    loop {
        std::thread::park();
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The daemon's resident memory (KiB) and descriptor count once its connections are closed:
/// sampled until the descriptor count holds still for a moment (the daemon closes the last
/// connections as it notices them go).
fn quiet_sample(pid: u32) -> anyhow::Result<(u64, usize)> {
    let mut last = sample(pid)?;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = sample(pid)?;
        if now.1 == last.1 {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

fn sample(pid: u32) -> anyhow::Result<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok((rss, fds))
}
