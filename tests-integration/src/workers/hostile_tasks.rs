//! Task workers that break the task protocol, or push it to its limits, on command: the peers
//! of the task pool's hardening scenarios.
//!
//! [`Pranks`] runs the real task runner behind a relay in its own process, so whatever the
//! protocol looks like on the wire, the relay can send a genuine reply twice, or a stale one.

use std::{
    collections::VecDeque,
    fs::File,
    io::{Read, Write},
    os::{
        fd::{AsFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    path::PathBuf,
    sync::{Condvar, Mutex},
};

use exsyst_worker::{
    BoxError, RawWorker, Registry, Worker, WorkerChannel,
    channel::{Channel, Error as ChannelError, encode_raw_frame, serde_bytes::ByteBuf},
    pool::{RegistryExt, TaskWorker, run_task_worker},
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::hostile::{channel_fds, close_and_linger, fork_and_exit};

/// Registers this module's implementations.
pub fn register(registry: Registry) -> Registry {
    registry
        .raw::<Pranks>()
        .raw::<Stunts>()
        .task::<Blob>()
        .task::<Fragile>()
        .raw::<Rogue>()
}

/// What the relay does to a [`Trick`]'s reply.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub enum Prank {
    /// Passes it on, as a well-behaved worker would.
    AsIs,
    /// Sends it twice.
    Twice,
    /// Sends the reply before it again instead (an answer to another task).
    Stale,
    /// Sends a frame header announcing 4 GiB instead.
    BadHeader,
}

/// What a [`Pranks`] task does: answers `n`, after holding if asked, and plays `prank` with
/// the reply.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Trick {
    /// The answer.
    pub n: u64,
    /// What becomes of the reply.
    pub prank: Prank,
    /// Connect to the Unix socket at this path, write the worker's pid as one line and wait
    /// for the other end to close before answering: a task that runs until told.
    pub hold: Option<PathBuf>,
    /// Bytes that only add weight to the task.
    pub padding: ByteBuf,
}

impl Trick {
    /// Answers `n` with `prank` played on the reply.
    pub fn new(n: u64, prank: Prank) -> Self {
        Trick {
            n,
            prank,
            hold: None,
            padding: ByteBuf::new(),
        }
    }

    /// The same, `bytes` heavier.
    pub fn padded(mut self, bytes: usize) -> Self {
        self.padding = ByteBuf::from(vec![0u8; bytes]);
        self
    }

    /// The same, once the socket at `path` lets it go.
    pub fn held(mut self, path: PathBuf) -> Self {
        self.hold = Some(path);
        self
    }
}

/// Pranks played and not yet applied, oldest first: the handler queues its prank before the
/// runner writes the reply, and the relay applies it to the next reply it reads. (Tests wait
/// for earlier replies before they submit a prank, so that "next" is the prank's own.)
static PRANKS: Mutex<VecDeque<Prank>> = Mutex::new(VecDeque::new());

/// A task worker whose replies pass through a relay that plays [`Trick`]s on its master.
///
/// Registered as a raw worker (the relay); the task runner serves behind it on a thread.
#[derive(Debug)]
pub struct Pranks;

impl Worker for Pranks {
    const NAME: &'static str = "pool-pranks";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Pranks)
    }
}

impl TaskWorker for Pranks {
    type Item = Trick;
    type Output = u64;
    fn handle(&mut self, trick: Trick) -> Result<u64, String> {
        if let Some(path) = trick.hold {
            let mut stream = UnixStream::connect(path).map_err(|e| e.to_string())?;
            writeln!(stream, "{}", std::process::id()).map_err(|e| e.to_string())?;
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).map_err(|e| e.to_string())?;
        }
        if trick.prank != Prank::AsIs {
            PRANKS
                .lock()
                .map_err(|e| e.to_string())?
                .push_back(trick.prank);
        }
        Ok(trick.n)
    }
}

impl RawWorker for Pranks {
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
        let (codec, max) = (channel.codec(), channel.max_frame_len());
        let (mut relay, runner_end) = UnixStream::pair()?;
        let runner = std::thread::spawn(move || -> Result<(), String> {
            let reader = File::from(OwnedFd::from(
                runner_end.try_clone().map_err(|e| e.to_string())?,
            ));
            let writer = exsyst_worker::worker::ChannelOutput::new(runner_end);
            let mut inner = Channel::with_max_frame_len(reader, writer, codec, max);
            run_task_worker(&mut Pranks, &mut inner).map_err(|e| e.to_string())
        });
        let mut replies = Channel::with_max_frame_len(
            relay.try_clone()?,
            File::from(channel.writer().as_fd().try_clone_to_owned()?),
            codec,
            max,
        );
        let relay_replies = std::thread::spawn(move || -> Result<(), String> {
            let mut previous: Option<Vec<u8>> = None;
            loop {
                let (kind, payload) = match replies.receive_frame() {
                    Ok(frame) => frame,
                    Err(ChannelError::Closed) => return Ok(()),
                    Err(e) => return Err(e.to_string()),
                };
                let send = |replies: &mut Channel<_, _>, payload: &[u8]| {
                    replies.send_raw(kind, payload).map_err(|e| e.to_string())
                };
                let prank = PRANKS
                    .lock()
                    .map_err(|e| e.to_string())?
                    .pop_front()
                    .unwrap_or(Prank::AsIs);
                match prank {
                    Prank::AsIs => send(&mut replies, &payload)?,
                    Prank::Twice => {
                        send(&mut replies, &payload)?;
                        send(&mut replies, &payload)?;
                    }
                    Prank::Stale => send(&mut replies, previous.as_deref().unwrap_or(&payload))?,
                    Prank::BadHeader => {
                        let writer = replies.writer_mut();
                        writer
                            .write_all(&[0xff, 0xff, 0xff, 0xff, 0])
                            .and_then(|()| writer.flush())
                            .map_err(|e| e.to_string())?;
                    }
                }
                previous = Some(payload);
            }
        });
        // Requests go to the runner unchanged.
        let mut frame = Vec::new();
        loop {
            let (kind, payload) = match channel.receive_frame() {
                Ok(frame) => frame,
                Err(ChannelError::Closed) => break,
                Err(e) => return Err(e.into()),
            };
            frame.clear();
            encode_raw_frame(kind, &payload, max, &mut frame)?;
            relay.write_all(&frame)?;
        }
        relay.shutdown(std::net::Shutdown::Write)?;
        runner.join().map_err(|_| "the runner panicked")??;
        relay_replies.join().map_err(|_| "the relay panicked")??;
        Ok(())
    }
}

/// Answers `n` with `n` bytes: results as large as asked, to cross the frame limit.
#[derive(Debug)]
pub struct Blob;

impl Worker for Blob {
    const NAME: &'static str = "pool-blob";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Blob)
    }
}

impl TaskWorker for Blob {
    type Item = u32;
    type Output = ByteBuf;
    fn handle(&mut self, n: u32) -> Result<ByteBuf, String> {
        Ok(ByteBuf::from(vec![7u8; n as usize]))
    }
}

/// An item that travels as a number, except [`Item::Boom`], whose `Serialize` panics: user
/// code that fails on the master's side of the channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// Travels as `n`.
    Fine(u64),
    /// Panics when serialized.
    Boom,
    /// Its `Serialize` waits until [`release_stalls`] is called, then it travels as 0: user
    /// code that holds the master's dispatcher thread.
    Stall,
}

/// Whether [`Item::Stall`]s may go on.
static STALLS_RELEASED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// Lets every [`Item::Stall`] go on, now and later.
pub fn release_stalls() {
    let (released, changed) = &STALLS_RELEASED;
    *released.lock().unwrap_or_else(|e| e.into_inner()) = true;
    changed.notify_all();
}

impl Serialize for Item {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Item::Fine(n) => n.serialize(serializer),
            Item::Boom => panic!("Item::Boom refuses to be serialized"),
            Item::Stall => {
                let (released, changed) = &STALLS_RELEASED;
                let mut go = released.lock().unwrap_or_else(|e| e.into_inner());
                while !*go {
                    go = changed.wait(go).unwrap_or_else(|e| e.into_inner());
                }
                0u64.serialize(serializer)
            }
        }
    }
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u64::deserialize(deserializer).map(Item::Fine)
    }
}

/// Answers [`Item::Fine`]`(n)` with `n`.
#[derive(Debug)]
pub struct Fragile;

impl Worker for Fragile {
    const NAME: &'static str = "pool-fragile";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Fragile)
    }
}

impl TaskWorker for Fragile {
    type Item = Item;
    type Output = u64;
    fn handle(&mut self, item: Item) -> Result<u64, String> {
        match item {
            Item::Fine(n) => Ok(n),
            Item::Boom => Err("a Boom arrived".into()),
            Item::Stall => Err("a Stall arrived".into()),
        }
    }
}

/// What a [`Stunts`] task does: the [`Hostile`](super::hostile::Hostile) worker's acts on
/// the channel, played by a task worker in the middle of a task.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Stunt {
    /// Answers `n`, as a well-behaved worker would.
    Echo(u64),
    /// Points both channel descriptors at `/dev/null` (closing the channel) and lives on for
    /// `millis`, then exits 0.
    CloseAndLinger(u64),
    /// Forks a grandchild that keeps the channel open and sleeps `millis`, then exits with
    /// `code` at once.
    ForkAndExit {
        /// The worker's exit code.
        code: i32,
        /// How long the grandchild sleeps holding the channel.
        millis: u64,
    },
}

/// A task worker that plays [`Stunt`]s on its master. Registered as a raw worker, to learn its
/// channel's descriptors, and serves tasks with the real task runner.
#[derive(Debug)]
pub struct Stunts {
    /// The channel's descriptors, once the runner starts.
    channel: Option<[RawFd; 2]>,
}

impl Worker for Stunts {
    const NAME: &'static str = "pool-stunts";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Stunts { channel: None })
    }
}

impl TaskWorker for Stunts {
    type Item = Stunt;
    type Output = u64;
    fn handle(&mut self, stunt: Stunt) -> Result<u64, String> {
        match stunt {
            Stunt::Echo(n) => Ok(n),
            Stunt::CloseAndLinger(millis) => {
                let fds = self.channel.ok_or("no channel")?;
                close_and_linger(fds, millis).map_err(|e| e.to_string())?;
                std::process::exit(0);
            }
            Stunt::ForkAndExit { code, millis } => fork_and_exit(code, millis),
        }
    }
}

impl RawWorker for Stunts {
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
        self.channel = Some(channel_fds(channel));
        run_task_worker(self, channel)
    }
}

/// What a [`Rogue`] does with a take-back that comes while it holds a [`RogueTask::Hold`].
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub enum GiveBack {
    /// Gives back a task it was never sent.
    Unknown,
    /// Gives back the tasks it holds behind the held one, as it should, then answers once
    /// more, unasked.
    Twice,
    /// Never answers.
    Never,
}

/// What a [`Rogue`] task does.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum RogueTask {
    /// Answers `n`.
    Echo(u64),
    /// Connects to the Unix socket at this path, writes its pid as one line and waits for the
    /// other end to close, reading nothing from the pool meanwhile, then answers its pid.
    Wait(PathBuf),
    /// Never answers, and keeps every task sent after it; answers a take-back as said.
    Hold(GiveBack),
}

/// A task worker that speaks the task protocol by hand, to break its take-back step on
/// command: each request's tasks are answered in order, except from a [`RogueTask::Hold`] on.
#[derive(Debug)]
pub struct Rogue;

impl Worker for Rogue {
    const NAME: &'static str = "pool-rogue";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Rogue)
    }
}

/// The pool's side of the types; the worker's side is [`Rogue`]'s raw loop.
impl TaskWorker for Rogue {
    type Item = RogueTask;
    type Output = u64;
    fn handle(&mut self, _: RogueTask) -> Result<u64, String> {
        Err("served by the raw loop".into())
    }
}

/// A message from the pool, as the protocol guide writes it.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum FromPool {
    Run(u8, u64, Vec<RogueTask>),
    TakeBack([u8; 1]),
}

/// An outcome, as the protocol guide writes it.
#[derive(Serialize, Debug)]
enum Answer {
    Ok(u64),
}

impl RawWorker for Rogue {
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
        let pid = u64::from(std::process::id());
        let mut held: Option<GiveBack> = None;
        let mut behind = Vec::new();
        while let Some(message) = channel.next_message::<FromPool>()? {
            match message {
                FromPool::Run(tag, _, _) if tag != 0 => return Err("only single tasks".into()),
                FromPool::TakeBack([tag]) if tag != 2 => return Err("an unknown request".into()),
                FromPool::Run(_, id, tasks) => {
                    for (k, task) in (id..).zip(tasks) {
                        if held.is_some() {
                            behind.push(k);
                            continue;
                        }
                        let answer = match task {
                            RogueTask::Echo(n) => n,
                            RogueTask::Wait(path) => {
                                let mut stream = UnixStream::connect(path)?;
                                writeln!(stream, "{pid}")?;
                                stream.read_to_end(&mut Vec::new())?;
                                pid
                            }
                            RogueTask::Hold(give_back) => {
                                held = Some(give_back);
                                continue;
                            }
                        };
                        channel.send_message(&(0u8, k, [Answer::Ok(answer)]))?;
                    }
                }
                FromPool::TakeBack(_) => match held {
                    Some(GiveBack::Unknown) => channel.send_message(&(1u8, [u64::MAX]))?,
                    Some(GiveBack::Twice) => {
                        channel.send_message(&(1u8, std::mem::take(&mut behind)))?;
                        channel.send_message(&(1u8, [0u64; 0]))?;
                    }
                    Some(GiveBack::Never) | None => {}
                },
            }
        }
        Ok(())
    }
}
