//! The non-blocking framed channel that the event loop drives.

use std::{
    fmt,
    fs::File,
    io::{self, Read, Write},
    os::fd::{AsRawFd, OwnedFd, RawFd},
};

use mio::{
    Interest, Registry, Token,
    event::Source,
    net::{TcpStream, UnixStream},
    unix::{
        SourceFd,
        pipe::{Receiver, Sender},
    },
};
use serde::Serialize;
use worker_channel::{Codec, FrameDecoder, FrameKind, FrameRef, encode_frame};

use crate::{Error, Readiness};

/// The default bound of a channel's outgoing queue: 8 MiB.
pub const DEFAULT_MAX_QUEUED: usize = 8 * 1024 * 1024;

/// A queue that drained keeps its buffer unless it grew past this (a past large frame need not
/// pin its memory).
const KEEP_OUT_CAPACITY: usize = 1 << 20;

enum Transport {
    /// Separate descriptors for each direction, as the child's standard input and output.
    Pipes {
        rx: Receiver,
        tx: Sender,
    },
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Transport {
    fn fds(&self) -> (RawFd, RawFd) {
        match self {
            Transport::Pipes { rx, tx } => (rx.as_raw_fd(), tx.as_raw_fd()),
            Transport::Unix(s) => (s.as_raw_fd(), s.as_raw_fd()),
            Transport::Tcp(s) => (s.as_raw_fd(), s.as_raw_fd()),
        }
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Pipes { tx, .. } => (&*tx).write(buf),
            Transport::Unix(s) => (&*s).write(buf),
            Transport::Tcp(s) => (&*s).write(buf),
        }
    }
}

/// Reads from the transport and remembers how much room the read was offered, so a short read
/// is recognised.
struct Reader<'a> {
    transport: &'a Transport,
    offered: usize,
}

impl Read for Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.offered = buf.len();
        match self.transport {
            Transport::Pipes { rx, .. } => (&*rx).read(buf),
            Transport::Unix(s) => (&*s).read(buf),
            Transport::Tcp(s) => (&*s).read(buf),
        }
    }
}

/// The loop's registration of a channel: its descriptors by number, both under one token.
///
/// The channel owns the descriptors, so the loop must not outlive their registration:
/// [`NbChannel::deregister`] takes them out of epoll while they are still open, and this
/// source's own `deregister` does nothing (by the time the loop drops it, the numbers may
/// belong to new descriptors).
pub(crate) struct ChannelSource {
    read: RawFd,
    write: RawFd,
}

impl Source for ChannelSource {
    fn register(&mut self, registry: &Registry, token: Token, _: Interest) -> io::Result<()> {
        if self.read == self.write {
            let interest = Interest::READABLE | Interest::WRITABLE;
            return SourceFd(&self.read).register(registry, token, interest);
        }
        SourceFd(&self.read).register(registry, token, Interest::READABLE)?;
        SourceFd(&self.write).register(registry, token, Interest::WRITABLE)
    }

    fn reregister(&mut self, registry: &Registry, token: Token, _: Interest) -> io::Result<()> {
        if self.read == self.write {
            let interest = Interest::READABLE | Interest::WRITABLE;
            return SourceFd(&self.read).reregister(registry, token, interest);
        }
        SourceFd(&self.read).reregister(registry, token, Interest::READABLE)?;
        SourceFd(&self.write).reregister(registry, token, Interest::WRITABLE)
    }

    fn deregister(&mut self, _: &Registry) -> io::Result<()> {
        Ok(())
    }
}

/// A non-blocking, framed channel for the event loop: a frame decoder on the reading side and a
/// bounded queue on the writing side, over a pair of pipes or one stream socket.
///
/// - Receiving ([`NbChannel::receive`]) reads until the stream would block and hands out every
///   complete frame, so frames that arrived together are never left waiting for another event.
/// - Sending ([`NbChannel::send`]) writes at once when nothing is queued (no wait for a writable
///   event), and queues what the stream does not take.
/// - Backpressure: a send that finds [`NbChannel::max_queued`] bytes or more already queued is
///   refused with [`Error::QueueFull`], and [`NbChannel::receive`] hands out nothing
///   while the queue is at its bound, so a peer that sends but never reads cannot make this
///   side grow without bound. The queue holds at most the bound plus one frame.
///
/// Readiness is edge-triggered: tell the channel what an event reported with
/// [`NbChannel::note_readiness`], then call [`NbChannel::flush`] and [`NbChannel::receive`].
pub struct NbChannel {
    transport: Transport,
    decoder: FrameDecoder,
    codec: Codec,
    max_frame_len: u32,
    /// Outgoing bytes; the unsent ones are `out[out_pos..]`.
    out: Vec<u8>,
    out_pos: usize,
    max_queued: usize,
    /// The stream may have bytes to read (no read has said otherwise since the last event).
    read_ready: bool,
    /// The last event said the peer hung up, so reads go on until end of stream even after a
    /// short read.
    peer_hung_up: bool,
    read_closed: bool,
    write_closed: bool,
}

impl fmt::Debug for NbChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NbChannel")
            .field("codec", &self.codec)
            .field("buffered", &self.decoder.buffered())
            .field("queued", &self.queued_bytes())
            .field("read_closed", &self.read_closed)
            .field("write_closed", &self.write_closed)
            .finish_non_exhaustive()
    }
}

impl NbChannel {
    fn with_transport(transport: Transport, codec: Codec, max_frame_len: u32) -> Self {
        NbChannel {
            transport,
            decoder: FrameDecoder::new(max_frame_len),
            codec,
            max_frame_len,
            out: Vec::new(),
            out_pos: 0,
            max_queued: DEFAULT_MAX_QUEUED,
            read_ready: true,
            peer_hung_up: false,
            read_closed: false,
            write_closed: false,
        }
    }

    /// A channel over two pipes (or any two descriptors epoll accepts), reading from `rx` and
    /// writing to `tx`; both are switched to non-blocking mode.
    pub fn from_pipes(
        rx: Receiver,
        tx: Sender,
        codec: Codec,
        max_frame_len: u32,
    ) -> io::Result<Self> {
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        Ok(Self::with_transport(
            Transport::Pipes { rx, tx },
            codec,
            max_frame_len,
        ))
    }

    /// A channel over the two files of [`take_stdio_channel`](crate::take_stdio_channel)
    /// (pipes or sockets, not regular files, which epoll refuses).
    pub fn from_files(
        input: File,
        output: File,
        codec: Codec,
        max_frame_len: u32,
    ) -> io::Result<Self> {
        let rx = Receiver::from(OwnedFd::from(input));
        let tx = Sender::from(OwnedFd::from(output));
        Self::from_pipes(rx, tx, codec, max_frame_len)
    }

    /// A channel over one Unix stream socket (already non-blocking, as mio's are).
    pub fn from_unix_stream(stream: UnixStream, codec: Codec, max_frame_len: u32) -> Self {
        Self::with_transport(Transport::Unix(stream), codec, max_frame_len)
    }

    /// A channel over one TCP stream (already non-blocking, as mio's are).
    pub fn from_tcp_stream(stream: TcpStream, codec: Codec, max_frame_len: u32) -> Self {
        Self::with_transport(Transport::Tcp(stream), codec, max_frame_len)
    }

    /// Replaces the decoder by one that may already hold received bytes (those a blocking
    /// [`Channel`](worker_channel::Channel) read before handing over), which are then received
    /// first.
    pub fn with_decoder(mut self, mut decoder: FrameDecoder) -> Self {
        decoder.set_max_frame_len(self.max_frame_len);
        self.decoder = decoder;
        self
    }

    /// Sets the bound of the outgoing queue (see the type's documentation).
    pub fn with_max_queued(mut self, max_queued: usize) -> Self {
        self.max_queued = max_queued;
        self
    }

    /// The bound of the outgoing queue.
    pub fn max_queued(&self) -> usize {
        self.max_queued
    }

    /// The channel's codec.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The largest payload the channel sends or accepts.
    pub fn max_frame_len(&self) -> u32 {
        self.max_frame_len
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Whether the queue is at its bound: sends are refused and nothing is received until it
    /// drains.
    pub fn is_backpressured(&self) -> bool {
        self.queued_bytes() >= self.max_queued
    }

    /// Whether the peer closed its writing side and every byte it sent has been read.
    pub fn is_read_closed(&self) -> bool {
        self.read_closed
    }

    /// Whether the peer is gone for writing (its reading side closed or reset); what was
    /// queued is dropped and later sends are dropped too.
    pub fn is_write_closed(&self) -> bool {
        self.write_closed
    }

    /// Whether the conversation is over: the peer stopped reading, or it stopped writing and
    /// every frame it sent has been received and every queued byte written.
    pub fn is_finished(&self) -> bool {
        self.write_closed
            || (self.read_closed && !self.decoder.has_frame() && self.queued_bytes() == 0)
    }

    /// Records what an event reported for this channel's registration.
    pub fn note_readiness(&mut self, ready: Readiness) {
        if ready.readable || ready.read_closed || ready.error {
            self.read_ready = true;
        }
        if ready.read_closed {
            self.peer_hung_up = true;
        }
    }

    /// Sends one message as a frame of `kind`, writing at once when nothing is queued.
    ///
    /// Refused with [`Error::QueueFull`] when the queue is at its bound, and with
    /// [`Error::Channel`] when the message cannot be encoded or is too large; nothing
    /// is queued then. Once the peer is gone ([`NbChannel::is_write_closed`]) sends succeed
    /// and are dropped, as a message in flight when a peer dies would be.
    pub fn send<T: Serialize + ?Sized>(
        &mut self,
        kind: FrameKind,
        message: &T,
    ) -> Result<(), Error> {
        if self.write_closed {
            return Ok(());
        }
        let queued = self.queued_bytes();
        if queued >= self.max_queued {
            return Err(Error::QueueFull {
                queued,
                limit: self.max_queued,
            });
        }
        // Keep the queue's unsent part at the front once most of it is sent, so it cannot creep.
        if self.out_pos > 0 && self.out_pos >= self.out.len() / 2 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        encode_frame(self.codec, kind, message, self.max_frame_len, &mut self.out)
            .map_err(Error::Channel)?;
        if queued == 0 {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes queued bytes until the queue is empty or the stream would block; returns whether
    /// the queue is empty.
    ///
    /// The peer having closed its end is not an error here: the queue is dropped and
    /// [`NbChannel::is_write_closed`] turns true.
    pub fn flush(&mut self) -> Result<bool, Error> {
        while self.out_pos < self.out.len() {
            let pending = &self.out[self.out_pos..];
            match self.transport.write(pending) {
                Ok(n) => {
                    self.out_pos += n;
                    // A short write means the stream's buffer is full; trying again would only
                    // cost a system call that says so.
                    if n < pending.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    self.write_closed = true;
                    self.out_pos = self.out.len();
                }
                Err(source) => {
                    return Err(Error::Io {
                        op: "write",
                        source,
                    });
                }
            }
        }
        if self.out_pos < self.out.len() {
            return Ok(false);
        }
        self.out.clear();
        self.out_pos = 0;
        if self.out.capacity() > KEEP_OUT_CAPACITY {
            self.out = Vec::new();
        }
        Ok(true)
    }

    /// The next complete frame, reading from the stream when none is buffered.
    ///
    /// `Ok(None)` means nothing more can be had now: the stream would block, the queue is at
    /// its bound, or the stream ended ([`NbChannel::is_read_closed`]). A stream that ends
    /// inside a frame gives [`worker_channel::Error::Truncated`] (in
    /// [`Error::Channel`]), one that ends between frames just sets
    /// [`NbChannel::is_read_closed`]; a bad header gives its own channel error.
    pub fn receive(&mut self) -> Result<Option<FrameRef<'_>>, Error> {
        loop {
            if self.is_backpressured() {
                return Ok(None);
            }
            if self.decoder.has_frame() {
                return self.decoder.decode().map_err(Error::Channel);
            }
            if self.read_closed {
                if self.decoder.buffered() != 0 {
                    return Err(Error::Channel(self.decoder.end_of_stream_error()));
                }
                return Ok(None);
            }
            if !self.read_ready {
                return Ok(None);
            }
            let mut reader = Reader {
                transport: &self.transport,
                offered: 0,
            };
            match self.decoder.read_from(&mut reader) {
                Ok(0) => self.read_closed = true,
                Ok(n) => {
                    // A short read emptied the stream's buffer, and epoll reports the next
                    // arrival as a new edge, so the read that would say WouldBlock is skipped.
                    // After a hang-up no new edge comes: read on to the end of stream.
                    if n < reader.offered && !self.peer_hung_up {
                        self.read_ready = false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.read_ready = false,
                // A reset peer is gone as surely as one that closed.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => self.read_closed = true,
                Err(source) => return Err(Error::Io { op: "read", source }),
            }
        }
    }

    pub(crate) fn source(&self) -> ChannelSource {
        let (read, write) = self.transport.fds();
        ChannelSource { read, write }
    }

    /// Takes the channel's descriptors out of `registry`, while they are still open.
    pub(crate) fn deregister(&self, registry: &Registry) {
        let (read, write) = self.transport.fds();
        // Errors mean the descriptor was not registered, which is the state wanted.
        let _ = SourceFd(&read).deregister(registry);
        if write != read {
            let _ = SourceFd(&write).deregister(registry);
        }
    }
}
