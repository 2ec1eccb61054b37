//! The async face of a dedicated worker, on tokio's reactor (feature `tokio`).

use std::{
    future::poll_fn,
    os::fd::OwnedFd,
    pin::Pin,
    process::ExitStatus,
    task::{Context, Poll, ready},
    time::Duration,
};

use serde::{Serialize, de::DeserializeOwned};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::Sleep,
};
use worker_channel::{Codec, FrameKind};

use crate::{
    DedicatedWorker, Error,
    dedicated::{EXIT_POLL_TICK, Wait, WriteStep},
};

/// A dedicated worker driven from async code: [`send_message`](Self::send_message) and
/// [`receive_message`](Self::receive_message) wait on tokio's reactor, with no thread per
/// worker.
///
/// It is a [`DedicatedWorker`] whose descriptors (the channel's two pipes and the process's
/// pidfd) are registered with the runtime's reactor through [`AsyncFd`]; the framing, buffers,
/// limits and errors are the handle's own, so every call fails exactly as the blocking one
/// does: [`Error::WorkerExited`] (with the same exit status and standard error tail) for a
/// worker that died, seen through its pidfd even while a grandchild holds the channel and
/// only after the messages it sent are received; [`Error::ChannelClosed`],
/// [`Error::Channel`] for a frame too large or that does not decode, and so on. Writes never
/// raise SIGPIPE.
///
/// Both calls are cancel-safe: a receive dropped before it returned (by
/// [`tokio::time::timeout`], or a `select!` that took another branch) loses nothing, and the
/// next receive returns the message; a send dropped before it returned queued either nothing
/// or its whole frame, which is taken back if none of it was written, and otherwise written
/// before anything else by the next send, receive or [`flush`](Self::flush), so the stream
/// stays whole.
///
/// The waits are the reactor's. What is left on the calling thread is what the blocking handle
/// does at a worker's death to name it exactly: reaping it, and waiting for the kernel to finish
/// tearing down a process that already closed its channel (microseconds; at most half a second
/// on an overloaded machine) and for the last bytes of its standard error.
///
/// Dropping it ends the worker as [`DedicatedWorker::close_in_background`] does, so a drop
/// never makes the runtime's thread wait; [`close`](Self::close) ends it and returns how it
/// exited, and [`into_inner`](Self::into_inner) gives the blocking handle back.
///
/// ```rust,standalone_crate,no_run
/// use std::time::Duration;
/// use worker_bootstrap::{BootstrapProfile, DedicatedWorker, registry};
/// # use worker_core::{BoxError, RawWorker, Worker, WorkerChannel};
/// # struct Squarer;
/// # impl Worker for Squarer {
/// #     const NAME: &'static str = "squarer";
/// #     type Args = ();
/// #     fn new((): ()) -> Result<Self, BoxError> { Ok(Squarer) }
/// # }
/// # impl RawWorker for Squarer {
/// #     fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
/// #         while let Some(n) = channel.next_message::<i64>()? {
/// #             channel.send_message(&format!("{n} squared is {}", n * n))?;
/// #         }
/// #         Ok(())
/// #     }
/// # }
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     // First thing in main: in the worker process, this runs Squarer and exits.
///     registry().raw::<Squarer>().run_if_worker();
///
///     let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
///     runtime.block_on(async {
///         // Spawning is quick; registering with the reactor needs the runtime.
///         let mut worker =
///             DedicatedWorker::spawn::<Squarer>(&BootstrapProfile::default())?.into_async()?;
///         worker.send_message(&12).await?;
///         assert_eq!(worker.receive_message::<String>().await?, "12 squared is 144");
///         // Bounded: Error::Timeout after a second, and the channel stays usable.
///         worker.send_message(&13).await?;
///         let reply: String = worker.receive_message_timeout(Duration::from_secs(1)).await?;
///         assert_eq!(reply, "13 squared is 169");
///         assert!(worker.close().await?.success());
///         Ok(())
///     })
/// }
/// ```
#[derive(Debug)]
pub struct AsyncDedicatedWorker {
    // Each registration owns a duplicate of the worker's descriptor. They come before the
    // worker, so they are closed first: the worker's input is then closed for good when the
    // worker closes its own.
    /// The worker's output, readable.
    output: AsyncFd<OwnedFd>,
    /// The worker's input, writable; `None` once closed.
    input: Option<AsyncFd<OwnedFd>>,
    /// The process's pidfd, readable once it exited; `None` on kernels without pidfd.
    pidfd: Option<AsyncFd<OwnedFd>>,
    worker: DedicatedWorker,
}

/// Takes back a send's frame when the send is dropped before any of it was written.
struct TakeBack<'a> {
    worker: &'a mut AsyncDedicatedWorker,
    frame_len: usize,
}

impl Drop for TakeBack<'_> {
    fn drop(&mut self) {
        // The queue held only this frame: all of it still queued means none of it left. A
        // frame partly written stays queued whole, written before anything else.
        if self.frame_len > 0 && self.worker.worker.queued_bytes() == self.frame_len {
            self.worker.worker.discard_queued();
        }
    }
}

impl DedicatedWorker {
    /// This worker, driven from async code on tokio's reactor: see [`AsyncDedicatedWorker`].
    ///
    /// [`Error::Io`] when the reactor refuses a descriptor (the worker is ended in the
    /// background then).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or in one built without IO (`enable_io`), as every
    /// registration with tokio's reactor does. The timeouts and
    /// [`close`](AsyncDedicatedWorker::close) also need the runtime's timer (`enable_time`;
    /// `enable_all` gives both).
    pub fn into_async(self) -> Result<AsyncDedicatedWorker, Error> {
        AsyncDedicatedWorker::new(self)
    }
}

impl AsyncDedicatedWorker {
    /// Registers `worker`'s descriptors with the current runtime's reactor
    /// (see [`DedicatedWorker::into_async`]).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or in one built without IO (`enable_io`), as every
    /// registration with tokio's reactor does. The timeouts and
    /// [`close`](AsyncDedicatedWorker::close) also need the runtime's timer (`enable_time`;
    /// `enable_all` gives both).
    pub fn new(mut worker: DedicatedWorker) -> Result<Self, Error> {
        // From here on, a drop (this function failing included) never waits.
        worker.set_background_drop(true);
        let pid = worker.pid();
        let io = |source| Error::Io { pid, source };
        let watch = |fd, interest| worker_core::os::register_async(fd, interest).map_err(io);
        let (output, input, pidfd) = worker.wait_fds();
        let output = watch(output, Interest::READABLE)?;
        let input = input.map(|fd| watch(fd, Interest::WRITABLE)).transpose()?;
        let pidfd = pidfd.map(|fd| watch(fd, Interest::READABLE)).transpose()?;
        Ok(AsyncDedicatedWorker {
            output,
            input,
            pidfd,
            worker,
        })
    }

    /// The blocking handle back, with every message buffered or queued; dropping it closes
    /// the worker as [`DedicatedWorker`]'s drop does (waiting up to the grace period).
    pub fn into_inner(self) -> DedicatedWorker {
        let AsyncDedicatedWorker {
            output,
            input,
            pidfd,
            mut worker,
        } = self;
        drop((output, input, pidfd));
        worker.set_background_drop(false);
        worker
    }

    /// The blocking handle, for what has no async form: [`DedicatedWorker::try_wait`],
    /// [`DedicatedWorker::try_receive_message`], [`DedicatedWorker::queue_message`]. Its
    /// blocking calls work too, and block the calling thread.
    pub fn get_mut(&mut self) -> &mut DedicatedWorker {
        &mut self.worker
    }

    /// The blocking handle.
    pub fn get_ref(&self) -> &DedicatedWorker {
        &self.worker
    }

    /// The worker's process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.worker.pid()
    }

    /// The name of the implementation the worker runs.
    pub fn implementation(&self) -> &str {
        self.worker.implementation()
    }

    /// The channel's codec.
    pub fn codec(&self) -> Codec {
        self.worker.codec()
    }

    /// Sends one message: as [`DedicatedWorker::send_message`], waiting asynchronously.
    ///
    /// While the worker's input is full, this reads what the worker sends meanwhile (kept for
    /// the next receives), up to twice the maximum frame length
    /// ([`Error::ReceiveBufferFull`] past it). Cancel-safe (see the type's documentation).
    pub async fn send_message<T: Serialize + ?Sized>(&mut self, message: &T) -> Result<(), Error> {
        if let Some(e) = self.worker.unusable() {
            return Err(e);
        }
        // What a cancelled send or `queue_message` left goes first, so this call's frame is all
        // that is queued when it is written, and a send that gives up before writing any of it
        // takes it back.
        if self.worker.queued_bytes() > 0 {
            self.write_out(false).await?;
        }
        self.worker.queue(FrameKind::Data, message)?;
        let frame_len = self.worker.queued_bytes();
        let send = TakeBack {
            worker: self,
            frame_len,
        };
        send.worker.write_out(true).await
        // A send that failed already took its frame back (or broke the channel): the guard
        // finds the queue otherwise and does nothing.
    }

    /// Sends one message, giving up after `timeout` with [`Error::Timeout`] if the worker does
    /// not take it.
    ///
    /// A send that gives up before writing anything leaves the channel as it was. Unlike the
    /// blocking [`DedicatedWorker::send_message_timeout`], one that gave up part-way through
    /// the message does not break the channel: the rest of the frame stays queued, written
    /// before anything else by the next send, receive or [`flush`](Self::flush).
    pub async fn send_message_timeout<T: Serialize + ?Sized>(
        &mut self,
        message: &T,
        timeout: Duration,
    ) -> Result<(), Error> {
        let pid = self.pid();
        tokio::time::timeout(timeout, self.send_message(message))
            .await
            .unwrap_or(Err(Error::Timeout {
                pid,
                waited: timeout,
            }))
    }

    /// Writes everything queued (by [`DedicatedWorker::queue_message`], or a cancelled send),
    /// waiting asynchronously; reads what the worker sends meanwhile, as a send does.
    pub async fn flush(&mut self) -> Result<(), Error> {
        if let Some(e) = self.worker.unusable() {
            return Err(e);
        }
        self.write_out(false).await
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.worker.queued_bytes()
    }

    /// Receives one message: as [`DedicatedWorker::receive_message`], waiting asynchronously.
    ///
    /// Messages the worker sent before it died come first, then [`Error::WorkerExited`].
    /// Cancel-safe: dropped before it returned, it loses nothing (part of a message that did
    /// arrive is kept). Bytes a cancelled send left queued are written meanwhile.
    pub async fn receive_message<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        let mut tick = None;
        loop {
            if let Some(message) = self.worker.receive_step(FrameKind::Data)? {
                return Ok(message);
            }
            let write = self.worker.queued_bytes() > 0 && self.worker.unusable().is_none();
            let read = self.worker.wait_interest(false);
            match poll_fn(|cx| self.poll_wait(cx, read, write, &mut tick)).await? {
                Wait::Writable => {
                    self.worker.flush()?;
                }
                ready => self.worker.note_wait(ready),
            }
        }
    }

    /// Receives one message, waiting at most `timeout`; [`Error::Timeout`] when nothing came.
    ///
    /// A timeout leaves the channel usable: part of a message that did arrive is kept. A zero
    /// timeout still takes a message that is already there.
    pub async fn receive_message_timeout<T: DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> Result<T, Error> {
        let pid = self.pid();
        tokio::time::timeout(timeout, self.receive_message())
            .await
            .unwrap_or(Err(Error::Timeout {
                pid,
                waited: timeout,
            }))
    }

    /// Whether a whole message is already buffered, so the next receive returns without
    /// waiting.
    pub fn has_buffered_message(&self) -> bool {
        self.worker.has_buffered_message()
    }

    /// Waits until the worker exits, and reaps it: how it exited. The messages it sent can
    /// still be received afterwards. [`Error::ExitStatusLost`] when another part of the
    /// program reaped it first.
    pub async fn wait(&mut self) -> Result<ExitStatus, Error> {
        let mut tick = None;
        loop {
            if let Some(status) = self.worker.try_wait()? {
                return Ok(status);
            }
            // The pidfd (or the exit poll) alone: the channel is left to the receives.
            poll_fn(|cx| self.poll_wait(cx, false, false, &mut tick)).await?;
        }
    }

    /// Ends the worker and returns how it exited: its input is closed, so it sees the end of
    /// its channel, and it is given the grace period
    /// ([`BootstrapProfile::with_close_grace`](crate::BootstrapProfile::with_close_grace)) to
    /// exit by itself, then killed with its process group. Queued messages are written first,
    /// within the grace period; what the worker still sends is read and dropped.
    ///
    /// The waits are the runtime's: only the final reaping of an exited (or killed) process
    /// happens on the calling thread.
    pub async fn close(mut self) -> Result<ExitStatus, Error> {
        let grace = self.worker.grace();
        let _ = tokio::time::timeout(grace, async {
            if self.worker.queued_bytes() > 0 && self.worker.unusable().is_none() {
                let _ = self.write_out(false).await;
            }
            // Deregistered before the descriptor closes.
            self.input = None;
            self.worker.close_input();
            // Once the output ended, the pidfd alone says when the process is gone.
            let mut ended = !self.worker.wait_interest(false);
            let mut tick = None;
            loop {
                match poll_fn(|cx| self.poll_wait(cx, !ended, false, &mut tick)).await {
                    Ok(Wait::Readable) if !ended => {
                        ended = self.worker.discard_output().unwrap_or(true);
                    }
                    _ => return,
                }
            }
        })
        .await;
        self.into_inner().kill()
    }

    /// Kills the worker and its process group at once and reaps it
    /// (as [`DedicatedWorker::kill`]).
    pub fn kill(&mut self) -> Result<ExitStatus, Error> {
        self.worker.kill()
    }

    /// Writes the queue whole, as [`DedicatedWorker`]'s blocking sends do, the waits being the
    /// reactor's: the same steps, the same failures.
    async fn write_out(&mut self, own_frame: bool) -> Result<(), Error> {
        let frame_len = self.worker.queued_bytes();
        let mut tick = None;
        loop {
            let failure = match self.worker.write_step()? {
                WriteStep::Done => return Ok(()),
                WriteStep::Failed(failure) => failure,
                WriteStep::Wait => {
                    let read = self.worker.wait_interest(true);
                    let ready = poll_fn(|cx| self.poll_wait(cx, read, true, &mut tick)).await?;
                    match self.worker.note_write_wait(ready)? {
                        Some(failure) => failure,
                        None => continue,
                    }
                }
            };
            return Err(self.worker.give_up(own_frame, frame_len, failure));
        }
    }

    /// The reactor's form of the blocking handle's wait: ready once the worker's input is
    /// writable (with `write`), its output readable (with `read`), or the process exited,
    /// checked in that order, so what it sent before it died is read before its death is
    /// reported. Readiness that is reported is cleared at once, before the caller reads or
    /// writes: an edge that comes after is a new wake-up.
    fn poll_wait(
        &self,
        cx: &mut Context<'_>,
        read: bool,
        write: bool,
        tick: &mut Option<Pin<Box<Sleep>>>,
    ) -> Poll<Result<Wait, Error>> {
        let pid = self.worker.pid();
        let io = |source| Error::Io { pid, source };
        let mut watched = false;
        if write {
            let Some(input) = &self.input else {
                // The worker's input is closed: a write finds it so at once.
                return Poll::Ready(Ok(Wait::Writable));
            };
            watched = true;
            if let Poll::Ready(guard) = input.poll_write_ready(cx) {
                guard.map_err(io)?.clear_ready();
                return Poll::Ready(Ok(Wait::Writable));
            }
        }
        if read {
            watched = true;
            if let Poll::Ready(guard) = self.output.poll_read_ready(cx) {
                guard.map_err(io)?.clear_ready();
                return Poll::Ready(Ok(Wait::Readable));
            }
        }
        match (self.worker.exit_watch(), &self.pidfd) {
            (Some(true), Some(pidfd)) => {
                // Readable for good once it exited: not cleared.
                if let Poll::Ready(guard) = pidfd.poll_read_ready(cx) {
                    guard.map_err(io)?.retain_ready();
                    return Poll::Ready(Ok(Wait::Exited));
                }
            }
            // Kernels without pidfd: ask now and then whether it exited.
            (Some(_), _) => loop {
                let sleep =
                    tick.get_or_insert_with(|| Box::pin(tokio::time::sleep(EXIT_POLL_TICK)));
                ready!(sleep.as_mut().poll(cx));
                *tick = None;
                if self.worker.has_exited_now() {
                    return Poll::Ready(Ok(Wait::Exited));
                }
            },
            // Nothing left to wait for: its output ended and it exited (a read finds the end).
            (None, _) if !watched => return Poll::Ready(Ok(Wait::Readable)),
            (None, _) => {}
        }
        Poll::Pending
    }
}
