use std::{
    collections::BTreeMap,
    io::{self, Read, Write},
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    process::{Child, ChildStdin, ChildStdout, ExitStatus},
    time::{Duration, Instant},
};

use serde::{Serialize, de::DeserializeOwned};
use serde_bytes::ByteBuf;
use worker_channel::{Codec, FrameDecoder, FrameKind, encode_frame};
use worker_core::Worker;

use crate::{
    BootstrapProfile, Error,
    init::MAX_INIT_FRAME_LEN,
    profile::encode_args,
    spawn::{self, Spawned},
    stderr::StderrTail,
    sys,
};

/// How long the master waits for a dead worker's last standard error bytes.
const STDERR_DRAIN_WAIT: Duration = Duration::from_millis(500);

/// A worker process with one master: this handle (the seed's dedicated `Worker`).
///
/// Messages go to the worker's standard input and come back from its standard output, one frame
/// each. Dropping the handle closes the worker's input, so it sees the end of its channel and
/// finishes; after a grace period ([`BootstrapProfile::with_close_grace`]) its whole process
/// group is killed, and it is always reaped: no zombie, no orphan.
///
/// A worker that dies turns every later call into [`Error::WorkerExited`], which names its exit
/// status or signal and carries the tail of its standard error.
#[derive(Debug)]
pub struct DedicatedWorker {
    implementation: String,
    pid: u32,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    decoder: FrameDecoder,
    /// The worker closed its standard output.
    eof: bool,
    codec: Codec,
    max_frame_len: u32,
    out: Vec<u8>,
    stderr: Option<StderrTail>,
    grace: Duration,
    /// Set once the worker is reaped.
    exited: Option<(ExitStatus, String)>,
    /// A send gave up half-way through a frame: the stream can no longer be trusted.
    broken: bool,
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
        let Spawned {
            child,
            stdin,
            stdout,
            stderr,
            init,
        } = spawn::spawn(profile, implementation, args, extensions)?;
        let mut worker = DedicatedWorker {
            implementation: implementation.to_owned(),
            pid: child.id(),
            child,
            stdin: Some(stdin),
            stdout,
            decoder: FrameDecoder::new(profile.max_frame_len()),
            eof: false,
            codec: profile.codec(),
            max_frame_len: profile.max_frame_len(),
            out: Vec::new(),
            stderr,
            grace: profile.close_grace(),
            exited: None,
            broken: false,
        };
        encode_frame(
            Codec::MessagePack,
            FrameKind::Control,
            &init,
            MAX_INIT_FRAME_LEN,
            &mut worker.out,
        )
        .map_err(|source| Error::Channel {
            pid: worker.pid,
            source,
        })?;
        worker.write_out(None)?;
        Ok(worker)
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
        self.codec
    }

    /// Sends one message.
    ///
    /// While the worker's input is full, this reads what the worker sends meanwhile (kept for the
    /// next receives), so two large messages crossing each other cannot deadlock.
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
        self.out.clear();
        encode_frame(
            self.codec,
            FrameKind::Data,
            message,
            self.max_frame_len,
            &mut self.out,
        )
        .map_err(|source| Error::Channel {
            pid: self.pid,
            source,
        })?;
        let result = self.write_out(deadline);
        if self.out.capacity() > 4 << 20 {
            self.out = Vec::new();
        }
        result
    }

    /// Receives one message, blocking until it arrives or the worker ends.
    pub fn receive_message<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        self.receive_until(None)?
            .ok_or_else(|| unreachable_timeout(self.pid))
    }

    /// Receives one message, waiting at most `timeout`; [`Error::Timeout`] when nothing came.
    ///
    /// A timeout leaves the channel usable: part of a message that did arrive is kept.
    pub fn receive_message_timeout<T: DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> Result<T, Error> {
        self.receive_until(worker_core::deadline_after(timeout))?
            .ok_or(Error::Timeout {
                pid: self.pid,
                waited: timeout,
            })
    }

    /// Receives one message if one is already buffered or readable without waiting.
    pub fn try_receive_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, Error> {
        self.receive_until(Some(Instant::now()))
    }

    /// Whether a whole message is already buffered, so the next receive returns without reading.
    pub fn has_buffered_message(&self) -> bool {
        self.decoder.has_frame()
    }

    fn receive_until<T: DeserializeOwned>(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<T>, Error> {
        if self.broken {
            return Err(Error::ChannelBroken { pid: self.pid });
        }
        loop {
            let pid = self.pid;
            let channel = |source| Error::Channel { pid, source };
            if let Some(frame) = self.decoder.decode().map_err(channel)? {
                if frame.kind != FrameKind::Data {
                    return Err(channel(worker_channel::Error::UnexpectedFrameKind {
                        kind: frame.kind,
                    }));
                }
                return self.codec.decode(frame.payload).map(Some).map_err(channel);
            }
            if self.eof {
                return Err(self.ended());
            }
            if let Some(deadline) = deadline {
                let ready = sys::poll(&[(self.stdout.as_fd(), true, false)], Some(deadline))
                    .map_err(|source| Error::Io { pid, source })?;
                if ready.is_none() {
                    return Ok(None);
                }
            }
            self.read_once()?;
        }
    }

    /// Reads once from the worker's output (which must be readable or blocking is fine).
    fn read_once(&mut self) -> Result<(), Error> {
        loop {
            match self.decoder.read_from(&mut self.stdout) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::Io {
                        pid: self.pid,
                        source,
                    });
                }
            }
        }
    }

    /// Writes `self.out` whole to the worker's non-blocking input, reading the worker's output
    /// whenever the input is full, until `deadline`.
    fn write_out(&mut self, deadline: Option<Instant>) -> Result<(), Error> {
        let pid = self.pid;
        let mut written = 0;
        while written < self.out.len() {
            let Some(stdin) = self.stdin.as_mut() else {
                return Err(Error::Closed);
            };
            match stdin.write(&self.out[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let stdin = self.stdin.as_ref().expect("checked above").as_fd();
                    // Once the worker's output has ended there is nothing to read meanwhile.
                    let fds = [(stdin, false, true), (self.stdout.as_fd(), true, false)];
                    let fds = if self.eof { &fds[..1] } else { &fds[..] };
                    let Some(ready) =
                        sys::poll(fds, deadline).map_err(|source| Error::Io { pid, source })?
                    else {
                        self.broken = written > 0;
                        return Err(Error::Timeout {
                            pid,
                            waited: Duration::ZERO,
                        });
                    };
                    if !self.eof && (ready[1].readable || ready[1].hangup) {
                        self.read_once()?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(self.ended()),
                Err(source) => return Err(Error::Io { pid, source }),
            }
        }
        Ok(())
    }

    /// The error for a worker whose channel ended: it exited (the usual case), or it closed its
    /// output and lingers.
    fn ended(&mut self) -> Error {
        match self.wait_exit(self.grace) {
            Ok(Some(_)) => self.exited_error().expect("just reaped"),
            Ok(None) => Error::ChannelClosed { pid: self.pid },
            Err(source) => Error::Io {
                pid: self.pid,
                source,
            },
        }
    }

    /// Why nothing can be sent any more, if so.
    fn unusable(&self) -> Option<Error> {
        self.exited_error().or_else(|| {
            self.broken
                .then_some(Error::ChannelBroken { pid: self.pid })
        })
    }

    fn exited_error(&self) -> Option<Error> {
        self.exited
            .as_ref()
            .map(|(status, stderr_tail)| Error::WorkerExited {
                pid: self.pid,
                implementation: self.implementation.clone(),
                status: *status,
                stderr_tail: stderr_tail.clone(),
            })
    }

    /// Waits up to `wait` for the worker to exit; then kills what is left of its process group and
    /// reaps it. `None` when it is still running.
    fn wait_exit(&mut self, wait: Duration) -> io::Result<Option<ExitStatus>> {
        if let Some((status, _)) = &self.exited {
            return Ok(Some(*status));
        }
        if !sys::wait_exited_no_reap(self.pid, worker_core::deadline_after(wait))? {
            return Ok(None);
        }
        Ok(Some(self.reap()?))
    }

    /// Kills the process group (the unreaped leader keeps its id reserved, so this cannot hit
    /// another group), then reaps the worker.
    fn reap(&mut self) -> io::Result<ExitStatus> {
        let _ = sys::kill_group(self.pid);
        let status = self.child.wait()?;
        let tail = self
            .stderr
            .as_ref()
            .map(|t| t.text(STDERR_DRAIN_WAIT))
            .unwrap_or_default();
        self.exited = Some((status, tail));
        Ok(status)
    }

    /// Kills the worker and its process group at once and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus, Error> {
        if let Some((status, _)) = &self.exited {
            return Ok(*status);
        }
        self.stdin = None;
        self.reap().map_err(|source| Error::Io {
            pid: self.pid,
            source,
        })
    }

    /// Closes the channel and waits for the worker to finish, returning how it exited.
    ///
    /// Messages the worker still sends are read and discarded, so it cannot block on a full pipe.
    /// A worker still running after the grace period is killed (`Ok` with the signal status).
    pub fn close(mut self) -> Result<ExitStatus, Error> {
        self.shutdown().map_err(|source| Error::Io {
            pid: self.pid,
            source,
        })
    }

    fn shutdown(&mut self) -> io::Result<ExitStatus> {
        if let Some((status, _)) = &self.exited {
            return Ok(*status);
        }
        self.stdin = None;
        let deadline = worker_core::deadline_after(self.grace);
        let mut scratch = [0u8; 16 * 1024];
        while !self.eof {
            match sys::poll(&[(self.stdout.as_fd(), true, false)], deadline)? {
                None => break,
                Some(_) => match self.stdout.read(&mut scratch) {
                    Ok(0) => self.eof = true,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                },
            }
        }
        if !sys::wait_exited_no_reap(self.pid, deadline)? {
            sys::kill_group(self.pid)?;
        }
        self.reap()
    }
}

fn unreachable_timeout(pid: u32) -> Error {
    Error::Timeout {
        pid,
        waited: Duration::MAX,
    }
}

impl AsFd for DedicatedWorker {
    /// The worker's output, for waiting on several workers at once; read only through the
    /// handle's methods.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stdout.as_fd()
    }
}

impl AsRawFd for DedicatedWorker {
    fn as_raw_fd(&self) -> RawFd {
        self.stdout.as_raw_fd()
    }
}

impl Drop for DedicatedWorker {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
