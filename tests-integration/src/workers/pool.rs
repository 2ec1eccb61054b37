//! Workers for the pool scenarios: raw workers for the seed's message pool, task workers for
//! the task pool.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::PathBuf,
    time::{Duration, Instant},
};

use exsyst_worker::channel::serde_bytes::ByteBuf;
use exsyst_worker::{
    BoxError, RawWorker, Registry, Worker, WorkerChannel,
    channel::{FrameKind, encode_frame},
    pool::{RegistryExt, TaskWorker},
};
use serde::{Deserialize, Serialize};

/// Registers this module's implementations.
pub fn register(registry: Registry) -> Registry {
    registry
        .raw::<PidSquarer>()
        .raw::<DoubleReply>()
        .task::<Tiny>()
        .task::<Commands>()
}

/// The seed's squarer, naming the process that answered: `n` becomes `(pid, n, "n squared is
/// n²")`.
#[derive(Debug)]
pub struct PidSquarer;

impl Worker for PidSquarer {
    const NAME: &'static str = "pool-pid-squarer";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(PidSquarer)
    }
}

impl RawWorker for PidSquarer {
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
        let pid = std::process::id();
        while let Some(n) = channel.next_message::<i64>()? {
            channel.send_message(&(pid, n, format!("{n} squared is {}", n * n)))?;
        }
        Ok(())
    }
}

/// Answers each message `n` with two replies, `(n, 1)` and `(n, 2)`, written in one system
/// call so that they arrive in the same instant.
#[derive(Debug)]
pub struct DoubleReply;

impl Worker for DoubleReply {
    const NAME: &'static str = "pool-double-reply";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(DoubleReply)
    }
}

impl RawWorker for DoubleReply {
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
        let mut out = Vec::new();
        while let Some(n) = channel.next_message::<i64>()? {
            out.clear();
            let max = channel.max_frame_len();
            for k in [1, 2] {
                // Appends, so both frames end up in one buffer for one write.
                encode_frame(channel.codec(), FrameKind::Data, &(n, k), max, &mut out)?;
            }
            channel.writer_mut().write_all(&out)?;
        }
        Ok(())
    }
}

/// The tiniest task: `n` becomes `n + 1`.
#[derive(Debug)]
pub struct Tiny;

impl Worker for Tiny {
    const NAME: &'static str = "pool-tiny";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Tiny)
    }
}

impl TaskWorker for Tiny {
    type Item = u64;
    type Output = u64;
    fn handle(&mut self, n: u64) -> Result<u64, String> {
        Ok(n + 1)
    }
}

/// What a [`Commands`] task does.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum Command {
    /// Answers `n`.
    Echo(u64),
    /// Answers the worker's pid.
    Pid,
    /// Sleeps this many milliseconds, then answers 0.
    Sleep(u64),
    /// Connects to the Unix socket at this path, writes its pid as one line, then waits for
    /// the other end to close before answering its pid: a task that runs until told.
    Hold(PathBuf),
    /// The handler returns this error.
    Fail(String),
    /// The worker exits with this code.
    Exit(i32),
    /// The worker panics with this text.
    Panic(String),
    /// Answers the length of a payload (large ones fill the worker's input pipe).
    Len(ByteBuf),
    /// Works this many microseconds (sleeping all but the last 100 µs, spinning those, so the
    /// time is exact without holding a CPU), then answers 0.
    Work(u64),
    /// Sleeps this many microseconds, then answers `n`: slow requests whose answers tell
    /// them apart.
    EchoAfter {
        /// The answer.
        n: u64,
        /// How long the task takes.
        micros: u64,
    },
}

/// A task worker driven by [`Command`]s.
#[derive(Debug)]
pub struct Commands;

impl Worker for Commands {
    const NAME: &'static str = "pool-commands";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Commands)
    }
}

impl TaskWorker for Commands {
    type Item = Command;
    type Output = u64;
    fn handle(&mut self, command: Command) -> Result<u64, String> {
        let pid = u64::from(std::process::id());
        match command {
            Command::Echo(n) => Ok(n),
            Command::Pid => Ok(pid),
            // A slow task is the behaviour under test here, not a way to wait for something.
            Command::Sleep(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                Ok(0)
            }
            Command::Hold(path) => {
                let mut stream = UnixStream::connect(path).map_err(|e| e.to_string())?;
                writeln!(stream, "{pid}").map_err(|e| e.to_string())?;
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).map_err(|e| e.to_string())?;
                Ok(pid)
            }
            Command::Fail(text) => Err(text),
            Command::Exit(code) => std::process::exit(code),
            Command::Panic(text) => panic!("{text}"),
            Command::Len(bytes) => Ok(bytes.len() as u64),
            // The work itself, as `Sleep`.
            Command::Work(micros) => {
                let start = Instant::now();
                let total = Duration::from_micros(micros);
                if let Some(rest) = total.checked_sub(Duration::from_micros(100)) {
                    std::thread::sleep(rest);
                }
                while start.elapsed() < total {
                    std::hint::spin_loop();
                }
                Ok(0)
            }
            Command::EchoAfter { n, micros } => {
                std::thread::sleep(Duration::from_micros(micros));
                Ok(n)
            }
        }
    }
}
