use std::{
    fmt,
    io::{self, Read, Write},
};

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    Codec, DEFAULT_MAX_DEPTH, Error, FrameDecoder, FrameKind, FrameRef, Spin,
    decoder::release_if_large,
    frame::{DEFAULT_MAX_FRAME_LEN, encode_frame, encode_raw_frame},
};

/// The default bound of a connection's outgoing queue for [`FramedConnection::queue`]: 8 MiB.
pub const DEFAULT_MAX_QUEUED: usize = 8 * 1024 * 1024;

/// One framed connection over a byte transport: the one read buffer and frame decoder, the one
/// outgoing buffer, the codec, the limits, and the read and write loops, with a blocking face
/// and a non-blocking face over them.
///
/// The transport is anything that reads and writes: a socket, a pair of pipes in a
/// [`Duplex`], an in-memory buffer. Over a blocking transport use the blocking face (what
/// [`Channel`](crate::Channel) offers); over a non-blocking one, the non-blocking face, waiting
/// for readiness yourself (with `poll(2)`, epoll or mio) between calls.
///
/// # The blocking face
///
/// [`send`](Self::send), [`send_message`](Self::send_message), [`send_raw`](Self::send_raw)
/// write a whole frame before they return; [`receive_message`](Self::receive_message),
/// [`next_message`](Self::next_message), [`receive_kind`](Self::receive_kind) and
/// [`receive_frame`](Self::receive_frame) block until a whole frame is there. With a
/// [`Spin`] budget and a readiness probe ([`set_spin`](Self::set_spin)), they look for bytes
/// without blocking for up to the budget before they block.
///
/// # The non-blocking face
///
/// - [`try_receive_frame`](Self::try_receive_frame) and
///   [`try_receive_message`](Self::try_receive_message) hand out the next complete frame,
///   reading only when none is buffered, until the transport would block: frames that arrived
///   together are handed out one by one without another system call, and a read that came back
///   short (the transport had nothing more) counts as "would block", so a reply costs one
///   wake-up and one read. After that they read again only once told the transport is readable
///   ([`note_readable`](Self::note_readable)), as edge-triggered readiness requires.
/// - [`queue`](Self::queue) appends a frame to the outgoing buffer, refused with
///   [`Error::QueueFull`] once [`max_queued`](Self::max_queued) bytes wait; it writes
///   nothing. [`flush`](Self::flush) writes until the buffer is empty or the transport would
///   block.
/// - [`read_ahead`](Self::read_ahead) reads what the peer sends while this side waits to
///   write, without handing it out, and refuses with [`Error::ReceiveBufferFull`] to keep more
///   than a cap: two peers sending large messages to each other cannot deadlock, and a peer
///   that streams without reading cannot make this side buffer without bound.
/// - End of stream: [`is_read_closed`](Self::is_read_closed) once the peer closed its writing
///   side (or reset the connection) and every byte was read, [`is_write_closed`](Self::is_write_closed)
///   once a write found the peer gone (`EPIPE` or `ECONNRESET`; the queue is dropped then).
///
/// Both faces retry reads and writes interrupted by a signal.
///
/// # A master over a socket pair, waiting for readiness itself
///
/// This is the shape of a dedicated-worker handle: a blocking send that reads what the worker
/// sends meanwhile (up to a cap), and a receive that waits for readiness between attempts.
/// mio stands in for the handle's own `poll(2)` on the socket and the worker's pidfd; with
/// level-triggered `poll(2)` the calls are the same. A send with a deadline that passes takes
/// its frame back with [`discard_queued`](Self::discard_queued) when none of it left
/// ([`queued_bytes`](Self::queued_bytes) still equals what [`queue`](Self::queue) added), and
/// otherwise leaves a cut frame behind: the stream is broken then.
///
/// ```
/// use std::{os::unix::net::UnixStream, time::Duration};
/// use mio::{Events, Interest, Poll, Token};
/// use worker_channel::{Channel, Codec, Error, FrameKind, FramedConnection};
///
/// // The worker: a blocking channel on its end of the socket pair.
/// let (master_end, worker_end) = UnixStream::pair()?;
/// let worker = std::thread::spawn(move || -> Result<(), Error> {
///     let mut channel = Channel::new(worker_end.try_clone()?, worker_end, Codec::MessagePack);
///     while let Some(n) = channel.next_message::<u64>()? {
///         channel.send_message(&(n * n))?;
///     }
///     Ok(())
/// });
///
/// // The master: the non-blocking face over its end.
/// master_end.set_nonblocking(true)?;
/// let stream = mio::net::UnixStream::from_std(master_end);
/// let mut conn = FramedConnection::new(stream, Codec::MessagePack);
/// let mut poll = Poll::new()?;
/// let mut events = Events::with_capacity(8);
/// let both = Interest::READABLE | Interest::WRITABLE;
/// poll.registry().register(conn.transport_mut(), Token(0), both)?;
/// let limit = Some(Duration::from_secs(30));
///
/// for n in 1..=3u64 {
///     // A blocking send: write what the socket takes, and while it takes no more, read what
///     // the worker sends meanwhile, keeping at most 1 MiB of it.
///     conn.queue(FrameKind::Data, &n)?;
///     while !conn.flush()? {
///         poll.poll(&mut events, limit)?;
///         if events.iter().any(|e| e.is_readable() || e.is_read_closed()) {
///             conn.read_ahead(1 << 20)?; // Error::ReceiveBufferFull past the cap
///         }
///     }
///     // A blocking receive: every frame already buffered first; otherwise wait and read.
///     let square = loop {
///         if let Some(square) = conn.try_receive_message::<u64>()? {
///             break square;
///         }
///         poll.poll(&mut events, limit)?;
///         conn.note_readable();
///     };
///     assert_eq!(square, n * n);
/// }
/// drop(conn); // the worker sees the end of its channel and returns
/// worker.join().unwrap()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct FramedConnection<T> {
    transport: T,
    codec: Codec,
    max_frame_len: u32,
    max_depth: u32,
    decoder: FrameDecoder,
    /// Outgoing bytes; the unsent ones are `out[out_pos..]`.
    out: Vec<u8>,
    out_pos: usize,
    max_queued: usize,
    /// A read may find bytes: no read said otherwise since the last readiness note.
    read_ready: bool,
    /// The peer hung up, so no new readiness will come: reads go on to the end of stream.
    hung_up: bool,
    read_closed: bool,
    write_closed: bool,
    /// How the write that found the peer gone failed (its kind, and its OS error number).
    write_closed_by: Option<(io::ErrorKind, Option<i32>)>,
    /// The latency mode; the blocking receives spin only with `readable` to ask.
    spin: Spin,
    /// Whether the transport has bytes to read now, without blocking.
    readable: Option<fn(&T) -> io::Result<bool>>,
}

impl<T: fmt::Debug> fmt::Debug for FramedConnection<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FramedConnection")
            .field("transport", &self.transport)
            .field("codec", &self.codec)
            .field("buffered", &self.decoder.buffered())
            .field("queued", &self.queued_bytes())
            .field("read_closed", &self.read_closed)
            .field("write_closed", &self.write_closed)
            .field("spin", &self.spin)
            .finish_non_exhaustive()
    }
}

/// What one read did.
enum ReadStep {
    /// Bytes arrived; `short` when fewer than there was room for (the transport is drained).
    Data { n: usize, short: bool },
    /// The transport has nothing now.
    WouldBlock,
    /// End of stream, or the peer reset the connection.
    End,
}

impl<T> FramedConnection<T> {
    /// A connection over `transport` with the default limits: frames up to
    /// [`DEFAULT_MAX_FRAME_LEN`], nesting up to [`DEFAULT_MAX_DEPTH`], a queue bound of
    /// [`DEFAULT_MAX_QUEUED`].
    pub fn new(transport: T, codec: Codec) -> Self {
        FramedConnection {
            transport,
            codec,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_depth: DEFAULT_MAX_DEPTH,
            decoder: FrameDecoder::new(DEFAULT_MAX_FRAME_LEN),
            out: Vec::new(),
            out_pos: 0,
            max_queued: DEFAULT_MAX_QUEUED,
            read_ready: true,
            hung_up: false,
            read_closed: false,
            write_closed: false,
            write_closed_by: None,
            spin: Spin::OFF,
            readable: None,
        }
    }

    /// Neither sends nor accepts payloads over `max_frame_len` bytes.
    pub fn with_max_frame_len(mut self, max_frame_len: u32) -> Self {
        self.set_max_frame_len(max_frame_len);
        self
    }

    /// Refuses payloads nested deeper than `max_depth` levels ([`Error::TooDeep`]).
    pub fn with_max_depth(mut self, max_depth: u32) -> Self {
        self.max_depth = max_depth;
        self
    }

    /// Refuses [`queue`](Self::queue) once `max_queued` bytes wait to be written.
    pub fn with_max_queued(mut self, max_queued: usize) -> Self {
        self.max_queued = max_queued;
        self
    }

    /// The codec.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Switches the codec for the messages that follow; bytes already buffered are kept.
    pub fn set_codec(&mut self, codec: Codec) {
        self.codec = codec;
    }

    /// The largest payload the connection sends or accepts.
    pub fn max_frame_len(&self) -> u32 {
        self.max_frame_len
    }

    /// Changes the largest payload for the frames that follow; bytes already buffered are kept.
    pub fn set_max_frame_len(&mut self, max_frame_len: u32) {
        self.max_frame_len = max_frame_len;
        self.decoder.set_max_frame_len(max_frame_len);
    }

    /// How deep a received payload may nest (see [`Codec::decode_with_max_depth`]).
    pub fn max_depth(&self) -> u32 {
        self.max_depth
    }

    /// Changes how deep received payloads may nest.
    pub fn set_max_depth(&mut self, max_depth: u32) {
        self.max_depth = max_depth;
    }

    /// The latency mode (see [`Spin`]); [`Spin::OFF`] unless [`set_spin`](Self::set_spin) said
    /// otherwise.
    pub fn spin(&self) -> Spin {
        self.spin
    }

    /// Sets the latency mode of the blocking receives: while no whole frame is buffered, they
    /// ask `readable`, without blocking, whether the transport has bytes to read, again and
    /// again for up to the budget (see [`Spin::run`]), and only then read, blocking if nothing
    /// came. `readable` answers `true` for an end of stream too; an error from it just ends the
    /// spin (the read says what is wrong).
    ///
    /// Without a probe (`None`) the setting is only kept, for an owner that waits for
    /// readiness itself and spins its own way (an event loop); it stays with the connection
    /// through [`map_transport`](Self::map_transport), which drops the probe.
    ///
    /// ```
    /// use std::{io::Sink, time::Duration};
    /// use worker_channel::{Channel, Codec, Duplex, FramedConnection, Spin};
    ///
    /// let mut wire = Vec::new();
    /// Channel::new(std::io::empty(), &mut wire, Codec::MessagePack).send_message(&7u32)?;
    ///
    /// let mut conn = FramedConnection::new(Duplex::new(&wire[..], std::io::sink()), Codec::MessagePack);
    /// // Bytes in memory are always there; a pipe's probe asks poll(2) with no timeout (what
    /// // worker-core's `set_spin` installs on a worker's channel).
    /// let always = |_: &Duplex<&[u8], Sink>| Ok(true);
    /// conn.set_spin(Spin::new(Duration::from_micros(100)), Some(always));
    /// assert_eq!(conn.receive_message::<u32>()?, 7);
    /// assert_eq!(conn.spin().budget(), Duration::from_micros(100));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_spin(&mut self, spin: Spin, readable: Option<fn(&T) -> io::Result<bool>>) {
        self.spin = spin;
        self.readable = readable;
    }

    /// The bound of the outgoing queue.
    pub fn max_queued(&self) -> usize {
        self.max_queued
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Bytes received and not yet handed out as frames.
    pub fn buffered_bytes(&self) -> usize {
        self.decoder.buffered()
    }

    /// Whether a complete frame (or a bad header, whose error is due) waits in the buffer, so the
    /// next receive returns without reading.
    pub fn has_buffered_frame(&self) -> bool {
        self.decoder.has_frame()
    }

    /// Whether the peer closed its writing side (or reset the connection) and every byte it
    /// sent has been read; frames still buffered are handed out first.
    pub fn is_read_closed(&self) -> bool {
        self.read_closed
    }

    /// Whether a write found the peer gone; what was queued was dropped.
    pub fn is_write_closed(&self) -> bool {
        self.write_closed
    }

    /// The error of the write that found the peer gone (`EPIPE` or `ECONNRESET`), once
    /// [`is_write_closed`](Self::is_write_closed): what a blocking send would have returned,
    /// for a non-blocking [`flush`](Self::flush), which reports it as `Ok(true)`.
    pub fn write_closed_error(&self) -> Option<io::Error> {
        self.write_closed_by.map(|(kind, code)| match code {
            Some(code) => io::Error::from_raw_os_error(code),
            None => kind.into(),
        })
    }

    /// Records that the transport was reported readable, so the next non-blocking receive
    /// reads again.
    pub fn note_readable(&mut self) {
        self.read_ready = true;
    }

    /// Records that the peer hung up: no readiness will be reported again, so the non-blocking
    /// receives read on to the end of stream instead of stopping after a short read.
    pub fn note_hang_up(&mut self) {
        self.read_ready = true;
        self.hung_up = true;
    }

    /// Decodes a payload with this connection's codec and depth limit.
    pub fn decode<M: DeserializeOwned>(&self, payload: &[u8]) -> Result<M, Error> {
        self.codec.decode_with_max_depth(payload, self.max_depth)
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably: to register it with a poller, or to write bytes that bypass the
    /// framing on purpose.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Takes the transport out; bytes buffered either way are dropped.
    pub fn into_transport(self) -> T {
        self.transport
    }

    /// The same connection over another transport made from this one (a blocking pair of files
    /// turned non-blocking, say): buffered and queued bytes, codec, limits and state are kept.
    pub fn map_transport<U>(self, f: impl FnOnce(T) -> U) -> FramedConnection<U> {
        FramedConnection {
            transport: f(self.transport),
            codec: self.codec,
            max_frame_len: self.max_frame_len,
            max_depth: self.max_depth,
            decoder: self.decoder,
            out: self.out,
            out_pos: self.out_pos,
            max_queued: self.max_queued,
            read_ready: self.read_ready,
            hung_up: self.hung_up,
            read_closed: self.read_closed,
            write_closed: self.write_closed,
            write_closed_by: self.write_closed_by,
            spin: self.spin,
            // A probe of the old transport cannot look at the new one.
            readable: None,
        }
    }

    /// Why nothing more can be queued for the peer, if so.
    fn check_writable(&self) -> Result<(), Error> {
        if self.write_closed {
            return Err(Error::Io(io::ErrorKind::BrokenPipe.into()));
        }
        Ok(())
    }

    fn check_bound(&self) -> Result<(), Error> {
        let queued = self.queued_bytes();
        if queued >= self.max_queued {
            return Err(Error::QueueFull {
                queued,
                limit: self.max_queued,
            });
        }
        Ok(())
    }

    /// Moves the unsent bytes to the front once most of the buffer is sent, so a queue that
    /// never quite drains cannot creep.
    fn compact(&mut self) {
        if self.out_pos > 0 && self.out_pos >= self.out.len() / 2 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// Empties the outgoing buffer, releasing it if a large frame grew it.
    fn clear_out(&mut self) {
        self.out.clear();
        self.out_pos = 0;
        release_if_large(&mut self.out);
    }
}

impl<T: Read + Write> FramedConnection<T> {
    // ---- the non-blocking face: writing --------------------------------------------------

    /// Appends one message as a frame of `kind` to the outgoing buffer, without writing.
    ///
    /// Refused with [`Error::QueueFull`] when [`max_queued`](Self::max_queued) bytes or more
    /// already wait (so the queue holds at most the bound plus one frame), with
    /// [`Error::FrameTooLarge`] or [`Error::Encode`] when the message cannot be framed, and
    /// with a `BrokenPipe` [`Error::Io`] once the peer is gone; nothing is queued then.
    pub fn queue<M: Serialize + ?Sized>(
        &mut self,
        kind: FrameKind,
        message: &M,
    ) -> Result<(), Error> {
        self.check_writable()?;
        self.check_bound()?;
        self.compact();
        encode_frame(self.codec, kind, message, self.max_frame_len, &mut self.out)
    }

    /// As [`queue`](Self::queue), with a payload already encoded.
    pub fn queue_raw(&mut self, kind: FrameKind, payload: &[u8]) -> Result<(), Error> {
        self.check_writable()?;
        self.check_bound()?;
        self.compact();
        encode_raw_frame(kind, payload, self.max_frame_len, &mut self.out)
    }

    /// Writes queued bytes until none is left or the transport would block; returns whether
    /// the queue is empty.
    ///
    /// A short write counts as "would block" (the transport's buffer is full). The peer being
    /// gone is not an error here: the queue is dropped, [`is_write_closed`](Self::is_write_closed)
    /// turns true, and `Ok(true)` comes back.
    pub fn flush(&mut self) -> Result<bool, Error> {
        self.write_queued(false)
    }

    /// Writes the queue; a blocking write goes on after short writes and fails on `WouldBlock`
    /// and on a peer that is gone.
    fn write_queued(&mut self, blocking: bool) -> Result<bool, Error> {
        while self.out_pos < self.out.len() {
            let pending = &self.out[self.out_pos..];
            match self.transport.write(pending) {
                Ok(0) => return Err(Error::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.out_pos += n;
                    // The transport's buffer is full: trying again would only cost a system
                    // call that says so.
                    if n < pending.len() && !blocking {
                        return Ok(false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !blocking => return Ok(false),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    self.write_closed = true;
                    self.write_closed_by = Some((e.kind(), e.raw_os_error()));
                    self.clear_out();
                    return if blocking {
                        Err(Error::Io(e))
                    } else {
                        Ok(true)
                    };
                }
                Err(e) => return Err(Error::Io(e)),
            }
        }
        self.clear_out();
        Ok(true)
    }

    /// Drops what is queued and not yet written, returning how many bytes that was: a send
    /// that gives up before its frame left takes it back this way.
    ///
    /// A frame already partly written stays cut: the peer would read garbage after it, so the
    /// stream cannot be trusted any more (compare [`queued_bytes`](Self::queued_bytes) before
    /// and after a [`flush`](Self::flush) to know).
    pub fn discard_queued(&mut self) -> usize {
        let dropped = self.queued_bytes();
        self.clear_out();
        dropped
    }

    // ---- the non-blocking face: reading --------------------------------------------------

    /// Reads once into the buffer, at most `max` bytes, retrying interrupted reads.
    fn read_once(&mut self, max: usize) -> Result<ReadStep, Error> {
        loop {
            match self.decoder.read_from_limited(&mut self.transport, max) {
                Ok((0, _)) => {
                    self.read_closed = true;
                    return Ok(ReadStep::End);
                }
                Ok((n, offered)) => {
                    return Ok(ReadStep::Data {
                        n,
                        short: n < offered,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadStep::WouldBlock),
                // A reset peer is gone as surely as one that closed.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    self.read_closed = true;
                    return Ok(ReadStep::End);
                }
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    /// The next complete frame, reading only when none is buffered; `Ok(None)` when the
    /// transport has nothing more for now.
    ///
    /// Reads go on until a frame is complete, the transport would block (or a read comes back
    /// short), or the stream ends. Once the transport would block, no read is tried again
    /// until [`note_readable`](Self::note_readable). The peer closing between frames gives
    /// [`Error::Closed`] (after every buffered frame), inside one [`Error::Truncated`]; a bad
    /// header gives its own error and the stream cannot be trusted after it.
    pub fn try_receive_frame(&mut self) -> Result<Option<FrameRef<'_>>, Error> {
        loop {
            if self.decoder.has_frame() {
                return self.decoder.decode();
            }
            if self.read_closed {
                return Err(self.decoder.end_of_stream_error());
            }
            if !self.read_ready {
                return Ok(None);
            }
            match self.read_once(usize::MAX)? {
                // After a hang-up no new readiness comes: read on to the end of stream.
                ReadStep::Data { short: true, .. } if !self.hung_up => self.read_ready = false,
                ReadStep::Data { .. } | ReadStep::End => {}
                ReadStep::WouldBlock => self.read_ready = false,
            }
        }
    }

    /// The next data message, as [`try_receive_frame`](Self::try_receive_frame); a control
    /// frame is [`Error::UnexpectedFrameKind`].
    pub fn try_receive_message<M: DeserializeOwned>(&mut self) -> Result<Option<M>, Error> {
        let (codec, max_depth) = (self.codec, self.max_depth);
        match self.try_receive_frame()? {
            Some(FrameRef {
                kind: FrameKind::Data,
                payload,
            }) => codec.decode_with_max_depth(payload, max_depth).map(Some),
            Some(frame) => Err(Error::UnexpectedFrameKind { kind: frame.kind }),
            None => Ok(None),
        }
    }

    /// Reads what the transport has into the buffer without handing frames out, until it would
    /// block or the stream ends; returns the bytes read.
    ///
    /// This is what a sender does while the peer does not take its frame: read what the peer
    /// sends meanwhile, so neither side blocks on a full buffer. More than `limit` bytes
    /// buffered is refused with [`Error::ReceiveBufferFull`] (never more than `limit + 1` are
    /// kept); the connection stays usable, and what is buffered is handed out by the receives.
    /// Call it when the transport is readable: it reads whatever the readiness notes say.
    pub fn read_ahead(&mut self, limit: usize) -> Result<usize, Error> {
        let mut total = 0;
        loop {
            if self.read_closed {
                return Ok(total);
            }
            let buffered = self.decoder.buffered();
            if buffered > limit {
                return Err(Error::ReceiveBufferFull { buffered, limit });
            }
            match self.read_once(limit - buffered + 1)? {
                ReadStep::Data { n, short } => {
                    total += n;
                    if short && !self.hung_up {
                        self.read_ready = false;
                        return Ok(total);
                    }
                }
                ReadStep::WouldBlock => {
                    self.read_ready = false;
                    return Ok(total);
                }
                ReadStep::End => return Ok(total),
            }
        }
    }

    // ---- the blocking face -------------------------------------------------------------

    /// Sends one message as a data frame, blocking until it is written.
    pub fn send_message<M: Serialize + ?Sized>(&mut self, message: &M) -> Result<(), Error> {
        self.send(FrameKind::Data, message)
    }

    /// Sends one message as a frame of `kind`, blocking until it is written (header and
    /// payload in one write where the transport takes it).
    ///
    /// The peer being gone is a `BrokenPipe` (or `ConnectionReset`) [`Error::Io`].
    pub fn send<M: Serialize + ?Sized>(
        &mut self,
        kind: FrameKind,
        message: &M,
    ) -> Result<(), Error> {
        self.check_writable()?;
        self.compact();
        encode_frame(self.codec, kind, message, self.max_frame_len, &mut self.out)?;
        self.write_blocking()
    }

    /// Sends one frame whose payload is already encoded (to relay a frame unchanged, say).
    pub fn send_raw(&mut self, kind: FrameKind, payload: &[u8]) -> Result<(), Error> {
        self.check_writable()?;
        self.compact();
        encode_raw_frame(kind, payload, self.max_frame_len, &mut self.out)?;
        self.write_blocking()
    }

    fn write_blocking(&mut self) -> Result<(), Error> {
        self.write_queued(true)?;
        self.transport.flush().map_err(Error::Io)
    }

    /// Receives one data message, blocking until it arrives.
    ///
    /// The peer closing the connection between frames gives [`Error::Closed`]; a control frame
    /// gives [`Error::UnexpectedFrameKind`].
    pub fn receive_message<M: DeserializeOwned>(&mut self) -> Result<M, Error> {
        self.receive_kind(FrameKind::Data)
    }

    /// Receives one data message, or `None` when the peer closed the connection between frames.
    ///
    /// This is the usual loop of a raw worker: `while let Some(m) = channel.next_message()? {}`.
    pub fn next_message<M: DeserializeOwned>(&mut self) -> Result<Option<M>, Error> {
        match self.receive_message() {
            Ok(message) => Ok(Some(message)),
            Err(Error::Closed) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Receives one message that must be a frame of kind `kind`.
    pub fn receive_kind<M: DeserializeOwned>(&mut self, kind: FrameKind) -> Result<M, Error> {
        let (codec, max_depth) = (self.codec, self.max_depth);
        let frame = self.receive_frame_ref()?;
        if frame.kind != kind {
            return Err(Error::UnexpectedFrameKind { kind: frame.kind });
        }
        codec.decode_with_max_depth(frame.payload, max_depth)
    }

    /// Receives the next frame of any kind, returning its kind and its still-encoded payload.
    pub fn receive_frame(&mut self) -> Result<(FrameKind, Vec<u8>), Error> {
        let frame = self.receive_frame_ref()?;
        Ok((frame.kind, frame.payload.to_vec()))
    }

    /// Blocks until a whole frame is buffered, then takes it out.
    fn receive_frame_ref(&mut self) -> Result<FrameRef<'_>, Error> {
        while !self.decoder.has_frame() {
            if self.read_closed {
                return Err(self.decoder.end_of_stream_error());
            }
            if let Some(readable) = self.readable {
                let transport = &self.transport;
                // Bytes came, or the budget is spent: the read comes next either way.
                let _ = self.spin.run(None, || {
                    Ok::<_, ()>(readable(transport).unwrap_or(true).then_some(()))
                });
            }
            if let ReadStep::WouldBlock = self.read_once(usize::MAX)? {
                return Err(Error::Io(io::ErrorKind::WouldBlock.into()));
            }
        }
        Ok(self
            .decoder
            .decode()?
            .expect("has_frame promised a frame or an error"))
    }
}

/// A transport made of two halves, one to read from and one to write to: a child's standard
/// output and input, say.
#[derive(Debug)]
pub struct Duplex<R, W> {
    reader: R,
    writer: W,
}

impl<R, W> Duplex<R, W> {
    /// A transport reading from `reader` and writing to `writer`.
    pub fn new(reader: R, writer: W) -> Self {
        Duplex { reader, writer }
    }

    /// The reading half.
    pub fn reader(&self) -> &R {
        &self.reader
    }

    /// The reading half, mutably.
    pub fn reader_mut(&mut self) -> &mut R {
        &mut self.reader
    }

    /// The writing half.
    pub fn writer(&self) -> &W {
        &self.writer
    }

    /// The writing half, mutably.
    pub fn writer_mut(&mut self) -> &mut W {
        &mut self.writer
    }

    /// The two halves.
    pub fn into_parts(self) -> (R, W) {
        (self.reader, self.writer)
    }
}

impl<R: Read, W> Read for Duplex<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl<R, W: Write> Write for Duplex<R, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}
