//! The non-blocking framed channel that the event loop drives.

use std::{
    fmt,
    io::{self, Read, Write},
    os::fd::OwnedFd,
    time::Duration,
};

use mio::{
    Interest, Registry, Token,
    event::Source,
    net::{TcpStream, UnixStream},
    unix::pipe::{Receiver, Sender},
};
use serde::Serialize;
use worker_channel::{
    Codec, DEFAULT_MAX_QUEUED, FrameKind, FrameRef, FramedConnection, HEADER_LEN,
};

use crate::{ChannelOutput, Error, Readiness};

/// What an [`NbChannel`] reads from and writes to; it owns its descriptors and registers them
/// itself, as mio's own sources do.
enum Transport {
    /// Separate descriptors for each direction, as the child's standard input and output.
    /// The writing one may be a socket too (a master may give its worker one socket on both):
    /// [`ChannelOutput`] then writes with `MSG_NOSIGNAL`, so a peer that left is an error, never
    /// a SIGPIPE death.
    Pipes {
        rx: Receiver,
        tx: ChannelOutput,
        /// Which halves are in the registry now, so a change of interest adds or removes the
        /// right one.
        rx_registered: bool,
        tx_registered: bool,
    },
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Pipes { rx, tx, .. } => f
                .debug_struct("Pipes")
                .field("rx", rx)
                .field("tx", tx)
                .finish_non_exhaustive(),
            Transport::Unix(s) => f.debug_tuple("Unix").field(s).finish(),
            Transport::Tcp(s) => f.debug_tuple("Tcp").field(s).finish(),
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Pipes { rx, .. } => rx.read(buf),
            Transport::Unix(s) => s.read(buf),
            Transport::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Pipes { tx, .. } => tx.write(buf),
            Transport::Unix(s) => s.write(buf),
            Transport::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Source for Transport {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Transport::Pipes {
                rx,
                tx,
                rx_registered,
                tx_registered,
            } => {
                if interest.is_readable() {
                    rx.register(registry, token, Interest::READABLE)?;
                    *rx_registered = true;
                }
                if interest.is_writable() {
                    tx.register(registry, token, Interest::WRITABLE)?;
                    *tx_registered = true;
                }
                Ok(())
            }
            Transport::Unix(s) => s.register(registry, token, interest),
            Transport::Tcp(s) => s.register(registry, token, interest),
        }
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Transport::Pipes {
                rx,
                tx,
                rx_registered,
                tx_registered,
            } => {
                update_half(
                    rx,
                    rx_registered,
                    interest.is_readable(),
                    registry,
                    token,
                    Interest::READABLE,
                )?;
                update_half(
                    tx,
                    tx_registered,
                    interest.is_writable(),
                    registry,
                    token,
                    Interest::WRITABLE,
                )
            }
            Transport::Unix(s) => s.reregister(registry, token, interest),
            Transport::Tcp(s) => s.reregister(registry, token, interest),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Transport::Pipes {
                rx,
                tx,
                rx_registered,
                tx_registered,
            } => {
                if std::mem::take(rx_registered) {
                    rx.deregister(registry)?;
                }
                if std::mem::take(tx_registered) {
                    tx.deregister(registry)?;
                }
                Ok(())
            }
            Transport::Unix(s) => s.deregister(registry),
            Transport::Tcp(s) => s.deregister(registry),
        }
    }
}

/// Brings one half of a pipe pair in line with the interest wanted for it.
fn update_half<S: Source>(
    half: &mut S,
    registered: &mut bool,
    wanted: bool,
    registry: &Registry,
    token: Token,
    interest: Interest,
) -> io::Result<()> {
    match (wanted, *registered) {
        (true, true) => half.reregister(registry, token, interest),
        (true, false) => {
            half.register(registry, token, interest)?;
            *registered = true;
            Ok(())
        }
        (false, true) => {
            *registered = false;
            half.deregister(registry)
        }
        (false, false) => Ok(()),
    }
}

/// The event loop's face of a [`FramedConnection`]: a non-blocking framed channel over a pair
/// of pipes or one stream socket, which is itself the mio [`Source`] of its descriptors.
///
/// - Receiving ([`NbChannel::receive`]) hands out every complete frame, reading until the stream
///   would block, so frames that arrived together are never left waiting for another event.
/// - Sending ([`NbChannel::send`]) writes at once when nothing is queued (no wait for a writable
///   event), and queues what the stream does not take.
/// - Backpressure: while [`NbChannel::max_queued`] bytes or more wait for the peer
///   ([`NbChannel::is_backpressured`]), [`NbChannel::receive`] hands out nothing, so a peer that
///   sends but does not read its replies is slowed down to the pace at which it reads. The
///   bound never refuses one frame, whatever its size (up to the frame limit): a send is
///   refused with [`worker_channel::Error::QueueFull`] (in [`Error::Channel`]) only once the
///   bound plus one largest frame wait, so the queue holds at most the bound plus two frames.
///   Whether a peer still reads is judged by progress: [`NbChannel::written_bytes`] counts
///   what it took, and a [shared](crate::WorkerHost::shared) host drops a peer whose queue
///   stayed at the bound with nothing taken for [`NbChannel::stall_timeout`].
///
/// Register it with a [`Poller`](crate::Poller) or an
/// [`EventLoop`](crate::EventLoop::register_ref) like any mio source: it registers its
/// descriptors under one token, and deregistering it takes them out while they are still open.
/// Readiness is edge-triggered: tell the channel what an event reported with
/// [`NbChannel::note_readiness`], then call [`NbChannel::flush`] and [`NbChannel::receive`].
/// Writability is only worth watching while [`NbChannel::queued_bytes`] is not zero (turning
/// it on with a reregistration reports a stream that is writable already); a
/// [`WorkerHost`](crate::WorkerHost) watches it for its connections exactly then, so a peer
/// reading its replies wakes nobody up.
pub struct NbChannel {
    connection: FramedConnection<Transport>,
    /// Past it, nothing more is read from the peer (the connection's own bound, which refuses
    /// frames, is this plus one largest frame).
    max_queued: usize,
    /// How long a shared host lets a peer at the bound take nothing.
    stall_timeout: Duration,
    /// Bytes written to the peer so far: progress.
    written: u64,
}

/// How long a [shared](crate::WorkerHost::shared) host lets a peer whose queue is at its bound
/// take no byte before it drops it, unless told otherwise: 30 s.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

impl fmt::Debug for NbChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NbChannel")
            .field("connection", &self.connection)
            .field("max_queued", &self.max_queued)
            .field("stall_timeout", &self.stall_timeout)
            .finish_non_exhaustive()
    }
}

impl NbChannel {
    fn with_transport(transport: Transport, codec: Codec, max_frame_len: u32) -> Self {
        let connection = FramedConnection::new(transport, codec).with_max_frame_len(max_frame_len);
        Self::over(connection)
    }

    /// A channel over `connection`, with the default bound and stall timeout.
    fn over(connection: FramedConnection<Transport>) -> Self {
        NbChannel {
            connection,
            max_queued: 0,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            written: 0,
        }
        .with_max_queued(DEFAULT_MAX_QUEUED)
    }

    /// The two halves as a transport, both switched to non-blocking mode.
    fn pipes(rx: Receiver, tx: ChannelOutput) -> io::Result<Transport> {
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        Ok(Transport::Pipes {
            rx,
            tx,
            rx_registered: false,
            tx_registered: false,
        })
    }

    /// A channel over two pipes (or any two descriptors epoll accepts), reading from `rx` and
    /// writing to `tx`; both are switched to non-blocking mode.
    pub fn from_pipes(
        rx: Receiver,
        tx: Sender,
        codec: Codec,
        max_frame_len: u32,
    ) -> io::Result<Self> {
        let tx = ChannelOutput::new(OwnedFd::from(tx));
        Ok(Self::with_transport(
            Self::pipes(rx, tx)?,
            codec,
            max_frame_len,
        ))
    }

    /// The same connection as a blocking [`WorkerChannel`](crate::WorkerChannel) over the two
    /// files of [`take_stdio_channel`](crate::take_stdio_channel), made non-blocking: its codec,
    /// limits, and the bytes it already read (frames the bootstrap code read ahead, handed out
    /// first) are kept, and so is its [`ChannelOutput`] (writes to a socket never raise SIGPIPE;
    /// the descriptor stays open until exit).
    pub fn from_channel(channel: crate::WorkerChannel) -> io::Result<Self> {
        let connection = channel.into_connection().map_transport(|duplex| {
            let (input, output) = duplex.into_parts();
            Transport::Pipes {
                rx: Receiver::from(OwnedFd::from(input)),
                tx: output,
                rx_registered: false,
                tx_registered: false,
            }
        });
        if let Transport::Pipes { rx, tx, .. } = connection.transport() {
            rx.set_nonblocking(true)?;
            tx.set_nonblocking(true)?;
        }
        let max_queued = connection.max_queued();
        Ok(Self::over(connection).with_max_queued(max_queued))
    }

    /// A channel over one Unix stream socket (already non-blocking, as mio's are).
    pub fn from_unix_stream(stream: UnixStream, codec: Codec, max_frame_len: u32) -> Self {
        Self::with_transport(Transport::Unix(stream), codec, max_frame_len)
    }

    /// A channel over one TCP stream (already non-blocking, as mio's are).
    pub fn from_tcp_stream(stream: TcpStream, codec: Codec, max_frame_len: u32) -> Self {
        Self::with_transport(Transport::Tcp(stream), codec, max_frame_len)
    }

    /// Sets the bound of the outgoing queue (see the type's documentation); sends are refused
    /// only past it plus one frame of the channel's largest size, as it is now.
    pub fn with_max_queued(mut self, max_queued: usize) -> Self {
        let one_frame = self.connection.max_frame_len() as usize + HEADER_LEN;
        self.max_queued = max_queued;
        self.connection = self
            .connection
            .with_max_queued(max_queued.saturating_add(one_frame));
        self
    }

    /// Sets how long a [shared](crate::WorkerHost::shared) host lets this peer take no byte
    /// while its queue is at the bound, before it drops it ([`DEFAULT_STALL_TIMEOUT`] unless
    /// told otherwise; `Duration::MAX`: never).
    pub fn with_stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// How long a shared host lets this peer take no byte while its queue is at the bound.
    pub fn stall_timeout(&self) -> Duration {
        self.stall_timeout
    }

    /// Bytes written to the peer so far (dropped ones included once it is gone): whether it
    /// still reads.
    pub fn written_bytes(&self) -> u64 {
        self.written
    }

    /// The framed connection underneath: limits, buffered bytes, and its own methods.
    pub fn connection(&self) -> &FramedConnection<impl Read + Write + Source + fmt::Debug> {
        &self.connection
    }

    /// The framed connection underneath, mutably.
    pub fn connection_mut(
        &mut self,
    ) -> &mut FramedConnection<impl Read + Write + Source + fmt::Debug> {
        &mut self.connection
    }

    /// The bound of the outgoing queue: past it, nothing more is received from the peer.
    pub fn max_queued(&self) -> usize {
        self.max_queued
    }

    /// The channel's codec.
    pub fn codec(&self) -> Codec {
        self.connection.codec()
    }

    /// The largest payload the channel sends or accepts.
    pub fn max_frame_len(&self) -> u32 {
        self.connection.max_frame_len()
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.connection.queued_bytes()
    }

    /// Whether the queue is at its bound: nothing is received until it drains below.
    pub fn is_backpressured(&self) -> bool {
        self.queued_bytes() >= self.max_queued()
    }

    /// Whether the peer closed its writing side and every byte it sent has been read.
    pub fn is_read_closed(&self) -> bool {
        self.connection.is_read_closed()
    }

    /// Whether the peer is gone for writing (its reading side closed or reset); what was
    /// queued is dropped and later sends are dropped too.
    pub fn is_write_closed(&self) -> bool {
        self.connection.is_write_closed()
    }

    /// Whether the conversation is over: the peer stopped reading, or it stopped writing and
    /// every frame it sent has been received and every queued byte written.
    pub fn is_finished(&self) -> bool {
        self.is_write_closed()
            || (self.is_read_closed()
                && !self.connection.has_buffered_frame()
                && self.queued_bytes() == 0)
    }

    /// Records what an event reported for this channel's registration.
    pub fn note_readiness(&mut self, ready: Readiness) {
        if ready.read_closed {
            self.connection.note_hang_up();
        } else if ready.readable || ready.error {
            self.connection.note_readable();
        }
    }

    /// Sends one message as a frame of `kind`, writing at once when nothing is queued.
    ///
    /// Refused with [`worker_channel::Error::QueueFull`] when the bound plus one largest frame
    /// wait already, and
    /// with the channel's error when the message cannot be encoded or is too large (all in
    /// [`Error::Channel`]); nothing is queued then. Once the peer is gone
    /// ([`NbChannel::is_write_closed`]) sends succeed and are dropped, as a message in flight
    /// when a peer dies would be.
    pub fn send<T: Serialize + ?Sized>(
        &mut self,
        kind: FrameKind,
        message: &T,
    ) -> Result<(), Error> {
        if self.is_write_closed() {
            return Ok(());
        }
        let was_empty = self.queued_bytes() == 0;
        self.connection.queue(kind, message)?;
        if was_empty {
            self.flush()?;
        }
        Ok(())
    }

    /// As [`NbChannel::send`], with a payload already encoded (a control frame of a protocol
    /// whose codec is not the channel's, say).
    pub fn send_raw(&mut self, kind: FrameKind, payload: &[u8]) -> Result<(), Error> {
        if self.is_write_closed() {
            return Ok(());
        }
        let was_empty = self.queued_bytes() == 0;
        self.connection.queue_raw(kind, payload)?;
        if was_empty {
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
        let before = self.queued_bytes();
        let flushed = self.connection.flush();
        // Flushing only takes bytes out of the queue.
        self.written += (before - self.queued_bytes()) as u64;
        Ok(flushed?)
    }

    /// The next complete frame, reading from the stream when none is buffered.
    ///
    /// `Ok(None)` means nothing more can be had now: the stream would block, the queue is at
    /// its bound, or the stream ended ([`NbChannel::is_read_closed`]). A stream that ends
    /// inside a frame gives [`worker_channel::Error::Truncated`] (in [`Error::Channel`]), one
    /// that ends between frames just sets [`NbChannel::is_read_closed`]; a bad header gives its
    /// own channel error.
    pub fn receive(&mut self) -> Result<Option<FrameRef<'_>>, Error> {
        if self.is_backpressured() {
            return Ok(None);
        }
        match self.connection.try_receive_frame() {
            Ok(frame) => Ok(frame),
            Err(worker_channel::Error::Closed) => Ok(None),
            Err(e) => Err(Error::Channel(e)),
        }
    }
}

impl Source for NbChannel {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        self.connection
            .transport_mut()
            .register(registry, token, interest)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        self.connection
            .transport_mut()
            .reregister(registry, token, interest)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.connection.transport_mut().deregister(registry)
    }
}
