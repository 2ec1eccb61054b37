use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    process::ExitStatus,
    time::{Duration, Instant},
};

use serde::{Serialize, de::DeserializeOwned};
use serde_bytes::ByteBuf;
use worker_channel::{Codec, FrameKind, FramedConnection, Spin};
use worker_core::{
    Worker,
    mio::{Interest, Registry, Token, event::Source, unix::SourceFd},
};

use crate::{
    BootstrapProfile, Error, LOG_TARGET,
    init::MAX_INIT_FRAME_LEN,
    process::{EXITING_WAIT, Fate, Process},
    profile::encode_args,
    reaper,
    spawn::{self, Mode, Spawned},
    stderr::StderrTail,
    sys::{self, Pipes},
};

/// How often a blocking wait checks for the worker's exit on kernels without pidfd.
pub(crate) const EXIT_POLL_TICK: Duration = Duration::from_millis(20);

/// The bound of what is buffered in either direction beyond what the caller asked for: received
/// bytes during a send, queued bytes of [`DedicatedWorker::queue_message`] (the connection's
/// queue bound). Twice the maximum frame length, so two large messages can always cross, and at
/// least 1 MiB.
fn buffer_bound(max_frame_len: u32) -> usize {
    (2 * (max_frame_len as usize + worker_channel::HEADER_LEN)).max(1 << 20)
}

/// A worker process with one master: this handle (the seed's dedicated `Worker`).
///
/// Messages cross the worker's standard input and output, two pipes, one frame each.
/// Dropping the handle closes the worker's input, so it sees the end of its channel and
/// finishes; after a grace period ([`BootstrapProfile::with_close_grace`]) its whole process
/// group is killed, and it is always reaped: no zombie, no orphan.
/// [`DedicatedWorker::close_in_background`] does the same without making the caller wait.
///
/// The process is tracked through a pidfd taken at spawn: its death is seen even while a
/// grandchild it forked still holds the channel, and signals never reach another process that
/// reused its pid. A worker that dies turns every later call into [`Error::WorkerExited`],
/// which names its exit status or signal and carries the tail of its standard error
/// (or [`Error::ExitStatusLost`] when another part of the program reaped it first); messages it
/// sent before dying are delivered first. Writes never raise SIGPIPE, whatever the program did
/// with that signal.
///
/// Besides the blocking calls, the handle has a non-blocking face for event loops: it is a
/// [`mio::event::Source`](worker_core::mio::event::Source) (the channel's pipes and the pidfd,
/// under one token), with [`try_receive_message`](Self::try_receive_message),
/// [`queue_message`](Self::queue_message), [`flush`](Self::flush) and
/// [`try_wait`](Self::try_wait).
#[derive(Debug)]
pub struct DedicatedWorker {
    implementation: String,
    pid: u32,
    process: Process,
    /// The framing, over the channel's pipes: the one read buffer and decoder, the one queue,
    /// the codec and the limits. The blocking calls wait for readiness with `poll(2)` (on the
    /// pipes and the pidfd) between its non-blocking calls, except a receive without deadline
    /// of a worker the I/O thread watches, which reads the output directly (see `exit_watch`).
    connection: FramedConnection<Pipes>,
    /// Whether the worker's input is registered in a `mio` registry (see the `Source` impl).
    input_registered: bool,
    stderr: Option<StderrTail>,
    grace: Duration,
    /// Set once the worker is reaped (or found reaped by someone else).
    exited: Option<Exited>,
    /// The bound of received bytes buffered during a send (the queue's bound is the same).
    buffer_bound: usize,
    /// A send gave up half-way through a frame: the stream can no longer be trusted.
    broken: bool,
    /// An event came that the process's exit may explain (its pidfd shares the token): look
    /// once whether it exited, when the output has nothing more.
    exit_check: bool,
    /// Dropping the handle ends the worker as
    /// [`close_in_background`](DedicatedWorker::close_in_background) does, not making the
    /// dropping thread wait (an async handle's, which may be a runtime's only thread).
    background_drop: bool,
    /// The latency mode of the blocking receives.
    spin: Spin,
    /// The I/O thread watching the worker's exit, so that a blocking receive without deadline
    /// reads the output directly instead of polling it with the pidfd (see
    /// [`ExitWatch`](reaper::ExitWatch)); `None` once reaped, for daemons' starters, and where
    /// it cannot be had (no pidfd, no `/proc`, no descriptor to spare).
    exit_watch: Option<reaper::ExitWatch>,
}

/// How a reaped worker ended, with the tail of its standard error.
#[derive(Debug)]
enum Exited {
    Status(ExitStatus, String),
    Lost(String),
}

/// What [`DedicatedWorker::receive_from_descendants`] found.
pub(crate) enum FromDescendants<T> {
    /// A frame of the kind asked for.
    Message(T),
    /// The end of the stream: nobody holds the channel's writing end any more.
    End,
    /// Nothing by the deadline.
    Timeout,
}

/// What one attempt of a write found.
pub(crate) enum WriteStep {
    /// The queue is written.
    Done,
    /// The channel takes no more now: wait for it.
    Wait,
    /// The write cannot go on.
    Failed(Error),
}

/// What a wait on the channel and the process found.
pub(crate) enum Wait {
    /// The channel is readable (data, or its end).
    Readable,
    /// The channel is writable.
    Writable,
    /// The process exited.
    Exited,
    /// The deadline passed.
    Timeout,
}

impl DedicatedWorker {
    /// Starts a worker running `W`, with the profile's constructor arguments (or none).
    pub fn spawn<W: Worker>(profile: &BootstrapProfile) -> Result<Self, Error> {
        Self::start(profile, W::NAME, None)
    }

    /// Starts a worker running `W`, built from `args`.
    pub fn spawn_with_args<W: Worker>(
        profile: &BootstrapProfile,
        args: &W::Args,
    ) -> Result<Self, Error> {
        Self::start(profile, W::NAME, Some(encode_args(args)?))
    }

    /// Starts a worker running the implementation registered under `implementation` in the worker
    /// executable, for masters that do not link the implementation's type.
    pub fn spawn_named<A: Serialize + ?Sized>(
        profile: &BootstrapProfile,
        implementation: &str,
        args: Option<&A>,
    ) -> Result<Self, Error> {
        let args = args.map(encode_args).transpose()?;
        Self::start(profile, implementation, args)
    }

    fn start(
        profile: &BootstrapProfile,
        implementation: &str,
        args: Option<ByteBuf>,
    ) -> Result<Self, Error> {
        Self::start_with_extensions(profile, implementation, args, BTreeMap::new())
    }

    /// Starts a worker with settings for layers above this crate in its bootstrap frame
    /// (read in the worker with [`WorkerContext::extension`](crate::WorkerContext::extension)).
    pub fn start_with_extensions(
        profile: &BootstrapProfile,
        implementation: &str,
        args: Option<ByteBuf>,
        extensions: BTreeMap<String, ByteBuf>,
    ) -> Result<Self, Error> {
        Self::launch(profile, implementation, args, extensions, Mode::Dedicated)
    }

    /// Starts a worker process and sends it its init frame.
    pub(crate) fn launch(
        profile: &BootstrapProfile,
        implementation: &str,
        args: Option<ByteBuf>,
        extensions: BTreeMap<String, ByteBuf>,
        mode: Mode,
    ) -> Result<Self, Error> {
        let Spawned {
            process,
            pipes,
            stderr,
            init,
        } = spawn::spawn(profile, implementation, args, extensions, mode)?;
        log::debug!(
            target: LOG_TARGET,
            "worker {} spawned, running {implementation}",
            process.pid()
        );
        let buffer_bound = buffer_bound(profile.max_frame_len());
        // The init frame is always MessagePack, within its own limit; the profile's codec and
        // limit apply to every frame after it.
        let connection = FramedConnection::new(pipes, Codec::MessagePack)
            .with_max_frame_len(MAX_INIT_FRAME_LEN)
            .with_max_depth(profile.max_depth())
            .with_max_queued(buffer_bound);
        // Built before anything can fail, so that a failure ends and reaps the process.
        let mut worker = DedicatedWorker {
            implementation: implementation.to_owned(),
            pid: process.pid(),
            process,
            connection,
            input_registered: false,
            stderr,
            grace: profile.close_grace(),
            exited: None,
            buffer_bound,
            broken: false,
            exit_check: false,
            background_drop: false,
            spin: profile.spin(),
            exit_watch: None,
        };
        if mode == Mode::Dedicated {
            worker.watch_exit();
        }
        worker.queue(FrameKind::Control, &init)?;
        worker.connection.set_codec(profile.codec());
        worker.connection.set_max_frame_len(profile.max_frame_len());
        worker.write_out(None, true)?;
        Ok(worker)
    }

    /// Has the I/O thread watch the worker's exit, with the blocking description of its output
    /// that the blocking receives then read; without it, they poll as before.
    fn watch_exit(&mut self) {
        let Some(pidfd) = self.process.pidfd() else {
            return;
        };
        let output = self.connection.transport().output();
        self.exit_watch = reaper::ExitWatch::start(pidfd, output);
    }

    /// Prepares a blocking receive without deadline to read the worker's output directly, the
    /// read blocking until bytes come, the output ends, or the I/O thread's notice of the
    /// worker's death arrives; returns false when it must wait with [`wait`](Self::wait)
    /// instead. A death the I/O thread has seen is taken in here (the worker is reaped).
    fn block_on_read(&mut self) -> bool {
        let Some(watch) = &self.exit_watch else {
            return false;
        };
        if self.exited.is_some() || self.connection.is_read_closed() {
            return false;
        }
        if watch.is_dead() {
            self.died();
            // Reaped now: the receive hands out what is left, then the exit.
            return self.exited.is_some();
        }
        let blocking = watch.blocking_output();
        self.connection
            .transport_mut()
            .block_next_read(Some(blocking));
        self.connection.note_readable();
        true
    }

    /// The worker's process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The name of the implementation the worker runs.
    pub fn implementation(&self) -> &str {
        &self.implementation
    }

    /// The channel's codec.
    pub fn codec(&self) -> Codec {
        self.connection.codec()
    }

    /// Sets the latency mode of this handle's blocking receives (see [`Spin`]): a receive that
    /// finds nothing looks again without blocking for up to `budget` (at most
    /// [`Spin::MAX_BUDGET`]; zero is off) before it blocks. The worker's own side keeps what
    /// its profile said at spawn ([`BootstrapProfile::with_spin`]).
    ///
    /// A worker's death is still seen: by the wait that follows the spin, one budget later at
    /// most, or at once when the end of its output shows it.
    pub fn set_spin(&mut self, budget: Duration) {
        self.spin = Spin::new(budget);
    }

    /// The latency mode of this handle's blocking receives.
    pub fn spin(&self) -> Spin {
        self.spin
    }

    /// Sends one message.
    ///
    /// While the worker's input is full, this reads what the worker sends meanwhile (kept for the
    /// next receives), so two large messages crossing each other cannot deadlock; but no more
    /// than twice the maximum frame length: a worker that streams and never reads gets
    /// [`Error::ReceiveBufferFull`] instead of the master's memory.
    pub fn send_message<T: Serialize + ?Sized>(&mut self, message: &T) -> Result<(), Error> {
        self.send_until(message, None)
    }

    /// Sends one message, giving up after `timeout` if the worker does not take it (it is stuck
    /// and its input is full).
    ///
    /// A send that gives up before writing anything returns [`Error::Timeout`] and leaves the
    /// channel as it was. One that gave up part-way through the message returns
    /// [`Error::Timeout`] too, but the worker would read a cut frame: every later call then
    /// fails with [`Error::ChannelBroken`], and the worker should be killed.
    pub fn send_message_timeout<T: Serialize + ?Sized>(
        &mut self,
        message: &T,
        timeout: Duration,
    ) -> Result<(), Error> {
        self.send_until(message, worker_core::deadline_after(timeout))
            .map_err(|e| match e {
                Error::Timeout { pid, .. } => Error::Timeout {
                    pid,
                    waited: timeout,
                },
                other => other,
            })
    }

    fn send_until<T: Serialize + ?Sized>(
        &mut self,
        message: &T,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        if let Some(e) = self.unusable() {
            return Err(e);
        }
        // What `queue_message` left goes first, so the frame of this call is all that is queued
        // when it is written, and a send that gives up before writing any of it takes it back.
        if self.connection.queued_bytes() > 0 {
            self.write_out(deadline, false)?;
        }
        self.queue(FrameKind::Data, message)?;
        self.write_out(deadline, true)
    }

    /// Queues one message and writes what the channel takes now, without waiting.
    ///
    /// The rest is written by later calls to [`flush`](Self::flush) (or by any blocking send).
    /// Refused with [`Error::QueueFull`] when the queue already holds twice the maximum frame
    /// length (at least 1 MiB), and with [`Error::Channel`] when the message cannot be encoded;
    /// nothing is queued then.
    pub fn queue_message<T: Serialize + ?Sized>(&mut self, message: &T) -> Result<(), Error> {
        if let Some(e) = self.unusable() {
            return Err(e);
        }
        self.queue(FrameKind::Data, message)?;
        self.flush().map(drop)
    }

    /// Writes queued bytes until none is left or the channel would block; returns whether the
    /// queue is empty. Never waits.
    pub fn flush(&mut self) -> Result<bool, Error> {
        if let Some(e) = self.unusable() {
            return Err(e);
        }
        let empty = self.connection.flush().map_err(|e| error(self.pid, e))?;
        if self.connection.is_write_closed() {
            return Err(self.ended());
        }
        Ok(empty)
    }

    /// Bytes queued by [`queue_message`](Self::queue_message) and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.connection.queued_bytes()
    }

    /// Receives one message, blocking until it arrives or the worker ends.
    pub fn receive_message<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        self.receive_until(None, FrameKind::Data)?
            .ok_or_else(|| unreachable_timeout(self.pid))
    }

    /// Receives one message, waiting at most `timeout`; [`Error::Timeout`] when nothing came.
    ///
    /// A timeout leaves the channel usable: part of a message that did arrive is kept.
    pub fn receive_message_timeout<T: DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> Result<T, Error> {
        self.receive_until(worker_core::deadline_after(timeout), FrameKind::Data)?
            .ok_or(Error::Timeout {
                pid: self.pid,
                waited: timeout,
            })
    }

    /// Receives one message if one is already buffered or readable, without waiting.
    ///
    /// The end of the channel is an error at once: [`Error::WorkerExited`] (or
    /// [`Error::ExitStatusLost`]) when the worker has exited, [`Error::ChannelClosed`] when it
    /// closed its channel and lives on. A worker the kernel is already tearing down (it
    /// closed its channel by exiting, a moment before it can be reaped) is given up to 100 ms to
    /// finish, so its exit status can be reported; a living one is never waited for.
    pub fn try_receive_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, Error> {
        self.receive_until(Some(Instant::now()), FrameKind::Data)
    }

    /// Receives one message if the worker's output has one since the last
    /// [`note_event`](Self::note_event), without asking the system whether it is readable: the
    /// non-blocking receive for callers whose poller watches this worker (as a [`Source`]).
    ///
    /// After an event it reads until the output is drained (a reply costs the poller's one
    /// wake-up and one `read`); once the output has nothing more, it looks once whether the
    /// process exited, since the token also stands for its pidfd. Without an event it returns
    /// `Ok(None)` without a system call. On kernels without pidfd it is
    /// [`try_receive_message`](Self::try_receive_message).
    pub fn try_receive_noted<T: DeserializeOwned>(&mut self) -> Result<Option<T>, Error> {
        if self.process.pidfd().is_none() {
            return self.try_receive_message();
        }
        if self.broken {
            return Err(Error::ChannelBroken { pid: self.pid });
        }
        loop {
            if self.exited.is_some() {
                // A dead worker's last bytes (or a grandchild's) are read without waiting.
                self.connection.note_readable();
            }
            if let Some(message) = self.try_receive(FrameKind::Data)? {
                return Ok(Some(message));
            }
            if self.exited.is_some() {
                return Err(self.ended());
            }
            if !std::mem::take(&mut self.exit_check) {
                return Ok(None);
            }
            let exited = self.process.has_exited().map_err(|source| Error::Io {
                pid: self.pid,
                source,
            })?;
            if !exited {
                return Ok(None);
            }
            self.died();
        }
    }

    /// Tells the handle that the poller it is registered with (as a [`Source`]) reported an
    /// event for its token: the next [`try_receive_noted`](Self::try_receive_noted) reads.
    pub fn note_event(&mut self) {
        self.exit_check = true;
        self.connection.note_readable();
    }

    /// Whether a whole message is already buffered, so the next receive returns without reading.
    pub fn has_buffered_message(&self) -> bool {
        self.connection.has_buffered_frame()
    }

    /// How the worker exited, if it has, without waiting: it is reaped then (its remaining
    /// messages can still be received). [`Error::ExitStatusLost`] when another part of the
    /// program reaped it first.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, Error> {
        if self.exited.is_none() {
            let exited = self.process.has_exited().map_err(|source| Error::Io {
                pid: self.pid,
                source,
            })?;
            if !exited {
                return Ok(None);
            }
            let _ = self.died();
        }
        match &self.exited {
            Some(Exited::Status(status, _)) => Ok(Some(*status)),
            _ => Err(self
                .exited_error()
                .unwrap_or(Error::ChannelClosed { pid: self.pid })),
        }
    }

    /// Receives one frame of `kind`, until `deadline`.
    pub(crate) fn receive_until<T: DeserializeOwned>(
        &mut self,
        deadline: Option<Instant>,
        kind: FrameKind,
    ) -> Result<Option<T>, Error> {
        loop {
            let step = self.receive_step(kind);
            // A read set up to block that did not happen (a frame was buffered) must not make
            // a later, non-blocking one block.
            self.connection.transport_mut().block_next_read(None);
            if let Some(message) = step? {
                return Ok(Some(message));
            }
            // The latency mode: read again without blocking for up to the budget before the
            // wait blocks. The pidfd is only looked at by that wait, so a death that no end of
            // stream shows (a grandchild holds the output) is seen one budget later at most.
            let spin = self.spin;
            let spun = spin.run(deadline, || {
                self.connection.note_readable();
                self.try_receive(kind)
            })?;
            if let Some(message) = spun {
                return Ok(Some(message));
            }
            if deadline.is_none() && self.block_on_read() {
                continue;
            }
            match self.wait(deadline, false)? {
                Wait::Timeout => return Ok(None),
                Wait::Writable => unreachable!("not asked for"),
                ready => self.note_wait(ready),
            }
        }
    }

    /// One attempt of a receive (blocking or async): the next message of `kind` if one is
    /// buffered or readable, the error that says how the channel ended, or `Ok(None)`: wait for
    /// the output to be readable or the process to exit, then [`note_wait`](Self::note_wait).
    pub(crate) fn receive_step<T: DeserializeOwned>(
        &mut self,
        kind: FrameKind,
    ) -> Result<Option<T>, Error> {
        if self.broken {
            return Err(Error::ChannelBroken { pid: self.pid });
        }
        if self.exited.is_some() {
            // A dead worker's last bytes (or a grandchild's) are read without waiting.
            self.connection.note_readable();
        }
        if let Some(message) = self.try_receive(kind)? {
            return Ok(Some(message));
        }
        if self.exited.is_some() {
            return Err(self.ended());
        }
        Ok(None)
    }

    /// Takes in what a receive's wait found: the output is readable, or the process exited
    /// (it is reaped then; the messages it sent are still received first).
    pub(crate) fn note_wait(&mut self, ready: Wait) {
        match ready {
            Wait::Readable => self.connection.note_readable(),
            Wait::Exited => {
                self.died();
            }
            Wait::Writable | Wait::Timeout => {}
        }
    }

    /// The next message of `kind`: one already buffered, or one the channel gives without
    /// waiting. The end of the worker's output is the error that says how its channel ended.
    fn try_receive<T: DeserializeOwned>(&mut self, kind: FrameKind) -> Result<Option<T>, Error> {
        let pid = self.pid;
        let (codec, max_depth) = (self.connection.codec(), self.connection.max_depth());
        let mut frame = self.connection.try_receive_frame();
        // The I/O thread's notice of the worker's death (never a worker's frame) is skipped.
        while let Ok(Some(f)) = &frame
            && is_exit_notice(f.kind, f.payload)
        {
            frame = self.connection.try_receive_frame();
        }
        match frame {
            Ok(Some(frame)) if frame.kind == kind => codec
                .decode_with_max_depth(frame.payload, max_depth)
                .map(Some)
                .map_err(|source| Error::Channel { pid, source }),
            Ok(Some(frame)) => Err(Error::Channel {
                pid,
                source: worker_channel::Error::UnexpectedFrameKind { kind: frame.kind },
            }),
            Ok(None) => Ok(None),
            // Between frames or inside one: the worker is done with its channel either way.
            Err(worker_channel::Error::Closed | worker_channel::Error::Truncated { .. }) => {
                Err(self.ended())
            }
            Err(e) => Err(error(pid, e)),
        }
    }

    /// Receives one frame of `kind` from whichever process holds the channel's writing end (the
    /// worker, or the daemon it forked and left), until `deadline`. Unlike the other receives,
    /// the worker's exit is not the end here: only the end of the stream is, once every holder
    /// has closed it.
    pub(crate) fn receive_from_descendants<T: DeserializeOwned>(
        &mut self,
        deadline: Option<Instant>,
        kind: FrameKind,
    ) -> Result<FromDescendants<T>, Error> {
        let pid = self.pid;
        self.connection.note_readable();
        loop {
            let (codec, max_depth) = (self.connection.codec(), self.connection.max_depth());
            match self.connection.try_receive_frame() {
                Ok(Some(frame)) if frame.kind == kind => {
                    return codec
                        .decode_with_max_depth(frame.payload, max_depth)
                        .map(FromDescendants::Message)
                        .map_err(|source| Error::Channel { pid, source });
                }
                Ok(Some(frame)) => {
                    return Err(Error::Channel {
                        pid,
                        source: worker_channel::Error::UnexpectedFrameKind { kind: frame.kind },
                    });
                }
                Ok(None) => {}
                // A frame cut by the end: its writer died while writing it.
                Err(worker_channel::Error::Closed | worker_channel::Error::Truncated { .. }) => {
                    return Ok(FromDescendants::End);
                }
                Err(e) => return Err(error(pid, e)),
            }
            let output = self.connection.transport().output();
            match sys::poll(&[(output, true, false)], deadline) {
                Ok(Some(_)) => self.connection.note_readable(),
                Ok(None) => return Ok(FromDescendants::Timeout),
                Err(source) => return Err(Error::Io { pid, source }),
            }
        }
    }

    /// Whether every process that held the channel's writing end has closed it.
    pub(crate) fn output_hung_up(&self) -> bool {
        sys::is_hung_up(self.connection.transport().output()).unwrap_or(true)
    }

    /// Reaps the worker once it has exited, waiting until `deadline`, then killing it.
    pub(crate) fn reap_within(&mut self, deadline: Option<Instant>) -> Result<(), Error> {
        if self.exited.is_some() {
            return Ok(());
        }
        let pid = self.pid;
        let io = |source| Error::Io { pid, source };
        let fate = match self.process.reap_until(deadline).map_err(io)? {
            Some(fate) => fate,
            None => self.process.kill_and_reap().map_err(io)?,
        };
        self.record(fate, true);
        Ok(())
    }

    /// Kills the worker and its process group at once and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus, Error> {
        if self.exited.is_none() {
            let fate = self.process.kill_and_reap().map_err(|source| Error::Io {
                pid: self.pid,
                source,
            })?;
            self.record(fate, true);
        }
        self.exit_status()
    }

    /// Closes the channel and waits for the worker to finish, returning how it exited.
    ///
    /// Queued messages are written first, within the grace period. Messages the worker still
    /// sends are read and discarded, so it cannot block on a full channel. A worker still
    /// running after the grace period is killed (`Ok` with the signal status).
    pub fn close(mut self) -> Result<ExitStatus, Error> {
        self.shutdown()
    }

    /// Ends the worker without making the caller wait: a process-wide reaper thread closes its
    /// channel, gives it the grace period, kills its process group if it is still running and
    /// reaps it, for as many workers at once as are handed to it.
    ///
    /// Queued messages not yet written are dropped. Returns at once, so a pool's `Drop` can end
    /// all of its workers in well under a second whatever state they are in.
    pub fn close_in_background(mut self) {
        self.hand_to_reaper();
    }

    /// What [`close_in_background`](Self::close_in_background) does; the handle is left with
    /// nothing to end.
    fn hand_to_reaper(&mut self) {
        if self.exited.is_some() {
            return;
        }
        let deadline = worker_core::deadline_after(self.grace);
        match self.connection.transport().try_clone() {
            Ok(pipes) => reaper::hand_over(
                self.process.hand_over(),
                pipes,
                self.stderr.take(),
                deadline,
            ),
            // Without a descriptor to spare, end it here, at once.
            Err(_) => {
                let _ = self.process.kill_and_reap();
            }
        }
    }

    /// Queues one frame; nothing is queued when it is refused.
    pub(crate) fn queue<T: Serialize + ?Sized>(
        &mut self,
        kind: FrameKind,
        message: &T,
    ) -> Result<(), Error> {
        if self.connection.is_write_closed() {
            return Err(self.ended());
        }
        self.connection
            .queue(kind, message)
            .map_err(|e| error(self.pid, e))
    }

    /// Writes the queue whole, reading the worker's output whenever the channel is full (up to
    /// the buffer bound), until `deadline`. With `own_frame`, the queue is one frame of this
    /// call: giving up before any of it was written takes it back, whole, and giving up
    /// part-way through it breaks the channel.
    fn write_out(&mut self, deadline: Option<Instant>, own_frame: bool) -> Result<(), Error> {
        let frame_len = self.connection.queued_bytes();
        loop {
            let failure = match self.write_step()? {
                WriteStep::Done => return Ok(()),
                WriteStep::Failed(failure) => failure,
                WriteStep::Wait => match self.wait(deadline, true)? {
                    Wait::Timeout => Error::Timeout {
                        pid: self.pid,
                        waited: Duration::ZERO,
                    },
                    ready => match self.note_write_wait(ready)? {
                        Some(failure) => failure,
                        None => continue,
                    },
                },
            };
            return Err(self.give_up(own_frame, frame_len, failure));
        }
    }

    /// One attempt of a write (blocking or async): writes what the channel takes now, and says
    /// whether the queue is written, why it cannot be, or that the caller must wait (with
    /// [`wait_interest`](Self::wait_interest) for a write) and then
    /// [`note_write_wait`](Self::note_write_wait).
    pub(crate) fn write_step(&mut self) -> Result<WriteStep, Error> {
        let pid = self.pid;
        let empty = self.connection.flush().map_err(|e| error(pid, e))?;
        if self.connection.is_write_closed() {
            return Err(self.ended());
        }
        if empty {
            return Ok(WriteStep::Done);
        }
        let buffered = self.connection.buffered_bytes();
        Ok(if self.connection.is_read_closed() {
            // Its output ended and it takes no input: it is done (or exiting).
            WriteStep::Failed(self.ended())
        } else if buffered >= self.buffer_bound {
            WriteStep::Failed(Error::ReceiveBufferFull {
                pid,
                buffered,
                limit: self.buffer_bound,
            })
        } else {
            WriteStep::Wait
        })
    }

    /// Takes in what a write's wait found: the channel is writable (`None`: write again), the
    /// worker sent something (read ahead, up to the buffer bound), or it exited.
    pub(crate) fn note_write_wait(&mut self, ready: Wait) -> Result<Option<Error>, Error> {
        let pid = self.pid;
        Ok(match ready {
            Wait::Writable | Wait::Timeout => None,
            Wait::Readable => match self.connection.read_ahead(self.buffer_bound) {
                Ok(_) => None,
                Err(e @ worker_channel::Error::ReceiveBufferFull { .. }) => Some(error(pid, e)),
                Err(e) => return Err(error(pid, e)),
            },
            // A dead worker reads nothing more: what it sent stays for the receives.
            Wait::Exited => Some(self.died()),
        })
    }

    /// A write that fails: with `own_frame` (the queue held only this call's frame, of
    /// `frame_len` bytes), the frame is taken back when none of it left, and the channel is
    /// broken when part of it did.
    pub(crate) fn give_up(&mut self, own_frame: bool, frame_len: usize, failure: Error) -> Error {
        if own_frame {
            if self.connection.queued_bytes() == frame_len {
                self.connection.discard_queued();
            } else {
                self.broken = true;
            }
        }
        failure
    }

    /// Waits until the channel is readable (or, with `write`, writable), the process exits, or
    /// `deadline` passes. Once the worker's output has ended, or the receive buffer is at its
    /// bound during a send, only writability and exit are waited for.
    fn wait(&self, deadline: Option<Instant>, write: bool) -> Result<Wait, Error> {
        let pid = self.pid;
        let pipes = self.connection.transport();
        let read = self.wait_interest(write);
        let mut fds = [(pipes.output(), false, false); sys::MAX_POLL_FDS];
        let mut n = 0;
        let mut slot = |fd, r, w| {
            fds[n] = (fd, r, w);
            n += 1;
            n - 1
        };
        let output = read.then(|| slot(pipes.output(), true, false));
        let input = match pipes.input() {
            Some(input) if write => Some(slot(input, false, true)),
            _ => None,
        };
        let pidfd = match self.process.pidfd() {
            Some(pidfd) if self.exited.is_none() => Some(slot(pidfd, true, false)),
            _ => None,
        };
        // Without a pidfd (old kernels), wake up now and then to ask whether it exited.
        let polling = pidfd.is_none() && self.exited.is_none() && self.process.needs_polling();
        loop {
            let until = match (polling, deadline) {
                (false, d) => d,
                (true, Some(d)) => {
                    Some(worker_core::deadline_after(EXIT_POLL_TICK).map_or(d, |tick| d.min(tick)))
                }
                (true, None) => worker_core::deadline_after(EXIT_POLL_TICK),
            };
            let ready = sys::poll(&fds[..n], until).map_err(|source| Error::Io { pid, source })?;
            let Some(ready) = ready else {
                if polling && self.process.has_exited().unwrap_or(false) {
                    return Ok(Wait::Exited);
                }
                if polling && deadline.is_none_or(|d| Instant::now() < d) {
                    continue;
                }
                return Ok(Wait::Timeout);
            };
            // Data first: what the worker sent before it died is delivered before its death.
            if let Some(i) = input
                && (ready[i].writable || ready[i].hangup)
            {
                return Ok(Wait::Writable);
            }
            if let Some(i) = output
                && ready[i].can_read()
            {
                return Ok(Wait::Readable);
            }
            if let Some(i) = pidfd
                && ready[i].readable
            {
                return Ok(Wait::Exited);
            }
            if n == 0 || input.is_none() && write {
                // Nothing left to wait for: the worker's input is closed.
                return Ok(Wait::Writable);
            }
        }
    }

    /// The descriptors a wait watches, for an async handle to register: the worker's output, its
    /// input (until closed) and its pidfd (on kernels with pidfds). They live as long as the
    /// handle (the input until [`close`](Self::close)).
    #[cfg(feature = "tokio")]
    pub(crate) fn wait_fds(
        &self,
    ) -> (
        BorrowedFd<'_>,
        Option<BorrowedFd<'_>>,
        Option<BorrowedFd<'_>>,
    ) {
        let pipes = self.connection.transport();
        (pipes.output(), pipes.input(), self.process.pidfd())
    }

    /// How a wait learns of the process's exit now: its pidfd (`Some(true)`), polling every
    /// [`EXIT_POLL_TICK`] (`Some(false)`, kernels without pidfd), or not at all (`None`: it is
    /// known to have exited).
    #[cfg(feature = "tokio")]
    pub(crate) fn exit_watch(&self) -> Option<bool> {
        if self.exited.is_some() {
            None
        } else if self.process.pidfd().is_some() {
            Some(true)
        } else if self.process.needs_polling() {
            Some(false)
        } else {
            None
        }
    }

    /// Whether the process has exited, asked without waiting (for the exit polls of kernels
    /// without pidfd).
    #[cfg(feature = "tokio")]
    pub(crate) fn has_exited_now(&self) -> bool {
        self.process.has_exited().unwrap_or(false)
    }

    /// Takes back what is queued and not yet written (see
    /// [`FramedConnection::discard_queued`]).
    #[cfg(feature = "tokio")]
    pub(crate) fn discard_queued(&mut self) -> usize {
        self.connection.discard_queued()
    }

    /// The grace period of [`close`](Self::close).
    #[cfg(feature = "tokio")]
    pub(crate) fn grace(&self) -> Duration {
        self.grace
    }

    /// Closes the worker's input: it reads the end of its channel, and can still write.
    #[cfg(feature = "tokio")]
    pub(crate) fn close_input(&mut self) {
        self.connection.transport_mut().close_input();
    }

    /// Reads and drops what the worker's output holds now (see `Pipes::discard_output`);
    /// returns whether it ended.
    #[cfg(feature = "tokio")]
    pub(crate) fn discard_output(&mut self) -> io::Result<bool> {
        self.connection.transport_mut().discard_output()
    }

    /// Makes dropping the handle end the worker in the background (`true`), or as
    /// [`close`](Self::close) does (`false`, the default).
    #[cfg(feature = "tokio")]
    pub(crate) fn set_background_drop(&mut self, background: bool) {
        self.background_drop = background;
    }

    /// Whether a wait (for a write, with `write`) watches the worker's output: not once it has
    /// ended, nor while the receive buffer is at its bound during a send.
    pub(crate) fn wait_interest(&self, write: bool) -> bool {
        let full = write && self.connection.buffered_bytes() >= self.buffer_bound;
        !(self.connection.is_read_closed() || full)
    }

    /// The process exited (its pidfd said so): reaps it and returns the error that says how it
    /// ended, which every later call returns too once the messages it sent are received.
    fn died(&mut self) -> Error {
        if self.exited.is_none() {
            match self.process.try_reap() {
                Ok(Some(fate)) => self.record(fate, false),
                Ok(None) => return Error::ChannelClosed { pid: self.pid },
                Err(source) => {
                    return Error::Io {
                        pid: self.pid,
                        source,
                    };
                }
            }
        }
        self.exited_error().expect("just recorded")
    }

    /// The error for a worker whose channel ended (end of stream, or it stopped reading): how it
    /// exited when it has, or is exiting; [`Error::ChannelClosed`] at once when it lives on.
    fn ended(&mut self) -> Error {
        if let Some(e) = self.exited_error() {
            return e;
        }
        if self.process.exits_within(EXITING_WAIT) {
            self.died()
        } else {
            Error::ChannelClosed { pid: self.pid }
        }
    }

    /// Records how the reaped process ended, with the tail of its standard error, and logs it:
    /// at `debug` when the master ended it (`requested`) or it exited successfully on its own,
    /// at `warn` when it died on its own (a signal, a failure status, or a status lost).
    fn record(&mut self, fate: Fate, requested: bool) {
        let (pid, implementation) = (self.pid, &self.implementation);
        match fate {
            Fate::Unreaped => {}
            Fate::Reaped(status) if requested || status.success() => log::debug!(
                target: LOG_TARGET,
                "worker {pid} ({implementation}) exited: {status}"
            ),
            Fate::Reaped(status) => log::warn!(
                target: LOG_TARGET,
                "worker {pid} ({implementation}) exited unexpectedly: {status}"
            ),
            Fate::Lost if requested => log::debug!(
                target: LOG_TARGET,
                "worker {pid} ({implementation}) exited, reaped elsewhere"
            ),
            Fate::Lost => log::warn!(
                target: LOG_TARGET,
                "worker {pid} ({implementation}) exited unexpectedly, reaped elsewhere"
            ),
        }
        // Reaped, it can write no more: what it wrote is all in the pipe, read now, and the
        // pipe is closed whatever its descendants hold.
        let tail = || {
            self.stderr
                .as_ref()
                .map(StderrTail::finish)
                .unwrap_or_default()
        };
        self.exited = match fate {
            Fate::Reaped(status) => Some(Exited::Status(status, tail())),
            Fate::Lost => Some(Exited::Lost(tail())),
            Fate::Unreaped => return,
        };
        self.exit_watch = None;
    }

    /// The recorded exit status, or the error that says it was lost.
    fn exit_status(&self) -> Result<ExitStatus, Error> {
        match &self.exited {
            Some(Exited::Status(status, _)) => Ok(*status),
            _ => Err(self
                .exited_error()
                .unwrap_or(Error::ChannelClosed { pid: self.pid })),
        }
    }

    /// Why nothing can be sent any more, if so.
    pub(crate) fn unusable(&self) -> Option<Error> {
        self.exited_error().or_else(|| {
            self.broken
                .then_some(Error::ChannelBroken { pid: self.pid })
        })
    }

    pub(crate) fn exited_error(&self) -> Option<Error> {
        let pid = self.pid;
        // Checked on every send: nothing is allocated while the worker lives.
        let exited = self.exited.as_ref()?;
        let implementation = self.implementation.clone();
        match exited {
            Exited::Status(status, stderr_tail) => Some(Error::WorkerExited {
                pid,
                implementation,
                status: *status,
                stderr_tail: stderr_tail.clone(),
            }),
            Exited::Lost(stderr_tail) => Some(Error::ExitStatusLost {
                pid,
                implementation,
                stderr_tail: stderr_tail.clone(),
            }),
        }
    }

    fn shutdown(&mut self) -> Result<ExitStatus, Error> {
        if self.exited.is_some() || self.process.fate() != Fate::Unreaped {
            return self.exit_status();
        }
        let pid = self.pid;
        let io = |source| Error::Io { pid, source };
        let deadline = worker_core::deadline_after(self.grace);
        if self.connection.queued_bytes() > 0 && !self.broken {
            let _ = self.write_out(deadline, false);
        }
        self.connection.transport_mut().close_input();
        // Read and drop what the worker still sends, until it exits or the grace period ends.
        let mut ended = self.connection.is_read_closed();
        loop {
            if ended {
                self.process.wait_exited(deadline).map_err(io)?;
                break;
            }
            match self.wait(deadline, false)? {
                Wait::Readable => {
                    ended = self
                        .connection
                        .transport_mut()
                        .discard_output()
                        .map_err(io)?;
                }
                Wait::Exited | Wait::Timeout => break,
                Wait::Writable => unreachable!("not asked for"),
            }
        }
        // Exited or not, it is killed now: with its process group, which also ends what a worker
        // that exited left behind (its grandchildren).
        let fate = self.process.kill_and_reap().map_err(io)?;
        self.record(fate, true);
        self.exit_status()
    }
}

/// The bootstrap error for a channel error: the bounds and system errors have variants of their
/// own, everything else is [`Error::Channel`].
fn error(pid: u32, e: worker_channel::Error) -> Error {
    match e {
        worker_channel::Error::Io(source) => Error::Io { pid, source },
        worker_channel::Error::QueueFull { queued, limit } => {
            Error::QueueFull { pid, queued, limit }
        }
        worker_channel::Error::ReceiveBufferFull { buffered, limit } => Error::ReceiveBufferFull {
            pid,
            buffered,
            limit,
        },
        source => Error::Channel { pid, source },
    }
}

/// Whether a frame is the I/O thread's notice of a worker's death (see
/// [`EXIT_NOTICE`](reaper::EXIT_NOTICE)): a control frame with an empty payload.
fn is_exit_notice(kind: FrameKind, payload: &[u8]) -> bool {
    kind == FrameKind::Control && payload.is_empty()
}

fn unreachable_timeout(pid: u32) -> Error {
    Error::Timeout {
        pid,
        waited: Duration::MAX,
    }
}

/// The channel and the process under one token: the worker's output as readable, its input as
/// writable when the interests ask for it (and it is not closed), and the pidfd (when the kernel
/// has pidfds) as readable once the worker has exited. On any event, call
/// [`try_receive_message`](DedicatedWorker::try_receive_message) until it returns `Ok(None)`,
/// [`flush`](DedicatedWorker::flush) when something is queued, and
/// [`try_wait`](DedicatedWorker::try_wait) to learn of an exit. The handle owns the
/// descriptors, which stay open (and registered) until it is closed or dropped.
impl Source for DedicatedWorker {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        let output = self.connection.transport().output().as_raw_fd();
        SourceFd(&output).register(registry, token, Interest::READABLE)?;
        let mut rest = || -> io::Result<()> {
            if let Some(pidfd) = self.process.pidfd() {
                SourceFd(&pidfd.as_raw_fd()).register(registry, token, Interest::READABLE)?;
            }
            if let Some(input) = self
                .connection
                .transport()
                .input()
                .filter(|_| interests.is_writable())
            {
                let registered =
                    SourceFd(&input.as_raw_fd()).register(registry, token, Interest::WRITABLE);
                if let Err(e) = registered {
                    if let Some(pidfd) = self.process.pidfd() {
                        let _ = SourceFd(&pidfd.as_raw_fd()).deregister(registry);
                    }
                    return Err(e);
                }
                self.input_registered = true;
            }
            Ok(())
        };
        rest().inspect_err(|_| {
            let _ = SourceFd(&output).deregister(registry);
        })
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        SourceFd(&self.connection.transport().output().as_raw_fd()).reregister(
            registry,
            token,
            Interest::READABLE,
        )?;
        if let Some(pidfd) = self.process.pidfd() {
            SourceFd(&pidfd.as_raw_fd()).reregister(registry, token, Interest::READABLE)?;
        }
        match self.connection.transport().input() {
            Some(input) if interests.is_writable() => {
                let fd = input.as_raw_fd();
                let mut input = SourceFd(&fd);
                if self.input_registered {
                    input.reregister(registry, token, Interest::WRITABLE)?;
                } else {
                    input.register(registry, token, Interest::WRITABLE)?;
                    self.input_registered = true;
                }
            }
            Some(input) if self.input_registered => {
                SourceFd(&input.as_raw_fd()).deregister(registry)?;
                self.input_registered = false;
            }
            _ => {}
        }
        Ok(())
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        let output =
            SourceFd(&self.connection.transport().output().as_raw_fd()).deregister(registry);
        let pidfd = match self.process.pidfd() {
            Some(pidfd) => SourceFd(&pidfd.as_raw_fd()).deregister(registry),
            None => Ok(()),
        };
        let input = match self.connection.transport().input() {
            Some(input) if self.input_registered => {
                SourceFd(&input.as_raw_fd()).deregister(registry)
            }
            _ => Ok(()),
        };
        self.input_registered = false;
        output.and(pidfd).and(input)
    }
}

impl AsFd for DedicatedWorker {
    /// The worker's output, for waiting on several workers at once; read it only through the
    /// handle's methods. Registering the handle itself as a
    /// [`Source`](worker_core::mio::event::Source) also watches the process's death.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.connection.transport().output()
    }
}

impl AsRawFd for DedicatedWorker {
    fn as_raw_fd(&self) -> RawFd {
        self.connection.transport().output().as_raw_fd()
    }
}

impl Drop for DedicatedWorker {
    fn drop(&mut self) {
        if self.background_drop {
            self.hand_to_reaper();
        } else {
            let _ = self.shutdown();
        }
    }
}
