//! Raw workers for the dedicated-worker scenarios.

use std::io::Write;

use exsyst_worker::{
    BoxError, RawWorker, Registry, Worker, WorkerChannel, channel::serde_bytes::ByteBuf,
};
use serde::{Deserialize, Serialize};

/// Registers this module's implementations.
pub fn register(registry: Registry) -> Registry {
    registry
        .raw::<Squarer>()
        .raw::<Echo>()
        .raw::<Failer>()
        .raw::<StdoutPolluter>()
        .raw::<StderrWriter>()
        .raw::<FdLister>()
        .raw::<BigFirst>()
        .raw::<IgnoresEof>()
        .raw::<Environment>()
        .raw::<SpinReporter>()
        .before_hook("mark-before", || {
            std::fs::write(std::env::var("HOOK_MARK_DIR")? + "/before", b"before")?;
            Ok(())
        })
        .after_hook("mark-after", |worker| {
            let env = worker
                .downcast_mut::<Environment>()
                .ok_or("after hook expected the Environment worker")?;
            env.after_hook_ran = true;
            Ok(())
        })
}

/// The seed's `MyWorkerImpl`: `n` becomes `"n squared is n²"`.
#[derive(Debug)]
pub struct Squarer;

impl Worker for Squarer {
    const NAME: &'static str = "squarer";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Squarer)
    }
}

impl RawWorker for Squarer {
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
        while let Some(n) = channel.next_message::<i64>()? {
            channel.send_message(&format!("{n} squared is {}", n * n))?;
        }
        Ok(())
    }
}

/// Sends every frame back unchanged, whatever the codec; optionally with a prefix message first.
#[derive(Debug)]
pub struct Echo;

impl Worker for Echo {
    const NAME: &'static str = "echo";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Echo)
    }
}

impl RawWorker for Echo {
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
        loop {
            let (kind, payload) = match channel.receive_frame() {
                Ok(frame) => frame,
                Err(e) if e.is_closed() => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            channel.send_raw(kind, &payload)?;
        }
    }
}

/// How [`Failer`] fails, after answering its first message.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum Failure {
    /// `panic!` with this text.
    Panic(String),
    /// `std::process::exit` with this code.
    Exit(i32),
    /// Return this error from `run`.
    Error(String),
    /// SIGKILL itself.
    KillSelf,
    /// Fail in the constructor.
    Constructor(String),
}

/// Answers one message, then fails as told on the second.
#[derive(Debug)]
pub struct Failer(Failure);

impl Worker for Failer {
    const NAME: &'static str = "failer";
    type Args = Failure;
    fn new(failure: Failure) -> Result<Self, BoxError> {
        if let Failure::Constructor(text) = &failure {
            return Err(text.clone().into());
        }
        Ok(Failer(failure))
    }
}

impl RawWorker for Failer {
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
        let first: String = channel.receive_message()?;
        channel.send_message(&first)?;
        let _second: String = channel.receive_message()?;
        match &self.0 {
            Failure::Panic(text) => panic!("{text}"),
            Failure::Exit(code) => std::process::exit(*code),
            Failure::Error(text) => Err(text.clone().into()),
            Failure::KillSelf => {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &std::process::id().to_string()])
                    .status();
                unreachable!("SIGKILL does not return")
            }
            Failure::Constructor(_) => unreachable!("failed in the constructor"),
        }
    }
}

/// Prints to standard output (what a careless worker does) around every echo.
#[derive(Debug)]
pub struct StdoutPolluter;

impl Worker for StdoutPolluter {
    const NAME: &'static str = "stdout-polluter";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        println!("constructor printing to stdout");
        Ok(StdoutPolluter)
    }
}

impl RawWorker for StdoutPolluter {
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
        while let Some(message) = channel.next_message::<String>()? {
            println!("garbage \x00\x00\x00\x05\x00 that looks like a frame header");
            print!("no newline");
            std::io::stdout().flush()?;
            let _ = std::io::stdout().write_all(&[0xff; 100]);
            channel.send_message(&message)?;
        }
        Ok(())
    }
}

/// Writes each chunk it receives to its standard error as it is, one `write` each, and answers
/// with the number of chunks written.
#[derive(Debug)]
pub struct StderrWriter;

impl Worker for StderrWriter {
    const NAME: &'static str = "stderr-writer";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(StderrWriter)
    }
}

impl RawWorker for StderrWriter {
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
        while let Some(chunks) = channel.next_message::<Vec<ByteBuf>>()? {
            let mut stderr = std::io::stderr().lock();
            for chunk in &chunks {
                stderr.write_all(chunk)?;
                stderr.flush()?;
            }
            channel.send_message(&chunks.len())?;
        }
        Ok(())
    }
}

/// Replies with the descriptors the worker holds and where fd 0 and 1 lead.
#[derive(Debug)]
pub struct FdLister;

/// [`FdLister`]'s answer.
#[derive(Serialize, Deserialize, Debug)]
pub struct Fds {
    /// Open descriptors.
    pub fds: Vec<i32>,
    /// `readlink /proc/self/fd/N` for each.
    pub targets: Vec<String>,
}

impl Worker for FdLister {
    const NAME: &'static str = "fd-lister";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(FdLister)
    }
}

impl RawWorker for FdLister {
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
        while channel.next_message::<()>()?.is_some() {
            let mut fds: Vec<i32> = Vec::new();
            for entry in std::fs::read_dir("/proc/self/fd")? {
                fds.push(entry?.file_name().to_string_lossy().parse()?);
            }
            fds.sort();
            // The directory listing had one descriptor of its own open: drop those now closed.
            fds.retain(|fd| std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok());
            let targets = fds
                .iter()
                .map(|fd| {
                    std::fs::read_link(format!("/proc/self/fd/{fd}"))
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                })
                .collect();
            channel.send_message(&Fds { fds, targets })?;
        }
        Ok(())
    }
}

/// Sends a large message before reading anything, then answers with the length of what it
/// received.
#[derive(Debug)]
pub struct BigFirst(usize);

impl Worker for BigFirst {
    const NAME: &'static str = "big-first";
    type Args = usize;
    fn new(len: usize) -> Result<Self, BoxError> {
        Ok(BigFirst(len))
    }
}

impl RawWorker for BigFirst {
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
        channel.send_message(&ByteBuf::from(vec![0xab; self.0]))?;
        while let Some(got) = channel.next_message::<ByteBuf>()? {
            let ok = got.iter().all(|&b| b == 0xcd);
            channel.send_message(&(got.len(), ok))?;
        }
        Ok(())
    }
}

/// Answers once, then keeps running after its master lets go (to exercise the kill after the
/// grace period).
#[derive(Debug)]
pub struct IgnoresEof;

impl Worker for IgnoresEof {
    const NAME: &'static str = "ignores-eof";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(IgnoresEof)
    }
}

impl RawWorker for IgnoresEof {
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
        let message: String = channel.receive_message()?;
        channel.send_message(&message)?;
        loop {
            std::thread::park();
        }
    }
}

/// Replies with what the bootstrap set up: arguments, environment, directory, umask, hooks.
#[derive(Debug)]
pub struct Environment {
    args: Vec<String>,
    after_hook_ran: bool,
}

/// [`Environment`]'s answer.
#[derive(Serialize, Deserialize, Debug)]
pub struct EnvironmentReport {
    /// Constructor arguments.
    pub args: Vec<String>,
    /// Command-line arguments.
    pub argv: Vec<String>,
    /// `PROFILE_VAR`.
    pub profile_var: Option<String>,
    /// Whether the marker variables of the bootstrap are gone.
    pub markers_cleared: bool,
    /// Working directory.
    pub cwd: String,
    /// Current umask.
    pub umask: u32,
    /// Whether the after-construction hook ran.
    pub after_hook_ran: bool,
    /// The executable.
    pub exe: String,
}

impl Worker for Environment {
    const NAME: &'static str = "environment";
    type Args = Vec<String>;
    fn new(args: Vec<String>) -> Result<Self, BoxError> {
        Ok(Environment {
            args,
            after_hook_ran: false,
        })
    }
}

impl RawWorker for Environment {
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
        while channel.next_message::<()>()?.is_some() {
            let umask = std::fs::read_to_string("/proc/self/status")?
                .lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
                .unwrap_or(u32::MAX);
            channel.send_message(&EnvironmentReport {
                args: self.args.clone(),
                argv: std::env::args().skip(1).collect(),
                profile_var: std::env::var("PROFILE_VAR").ok(),
                markers_cleared: std::env::vars().all(|(k, _)| !k.starts_with("EXSYST_WORKER_")),
                cwd: std::env::current_dir()?.display().to_string(),
                umask,
                after_hook_ran: self.after_hook_ran,
                exe: std::env::current_exe()?.display().to_string(),
            })?;
        }
        Ok(())
    }
}

/// Answers every message with its channel's latency mode, in microseconds (0: off).
#[derive(Debug)]
pub struct SpinReporter;

impl Worker for SpinReporter {
    const NAME: &'static str = "spin-reporter";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(SpinReporter)
    }
}

impl RawWorker for SpinReporter {
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
        while channel.next_message::<()>()?.is_some() {
            let spin = channel.connection().spin().as_micros();
            channel.send_message(&spin)?;
        }
        Ok(())
    }
}
