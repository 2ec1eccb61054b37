use std::io::{Read, Write};

use serde::{Serialize, de::DeserializeOwned};

use crate::{Codec, Duplex, Error, FrameKind, FramedConnection};

/// A blocking, framed, typed channel over a byte stream: a reader and a writer.
///
/// This is the blocking face of a [`FramedConnection`] over the two halves: each message
/// crosses as one frame (see the crate documentation) and leaves in a single write; reads go
/// through the connection's buffer, so several messages that arrive together cost one system
/// call. [`Channel::connection_mut`] reaches the connection itself.
///
/// ```
/// use worker_channel::{Channel, Codec};
///
/// let mut wire = Vec::new();
/// let mut tx = Channel::new(std::io::empty(), &mut wire, Codec::Json);
/// tx.send_message(&("hello", 42))?;
/// drop(tx);
///
/// let mut rx = Channel::new(&wire[..], std::io::sink(), Codec::Json);
/// let (word, n): (String, u32) = rx.receive_message()?;
/// assert_eq!((word.as_str(), n), ("hello", 42));
/// // The stream ended between frames: the peer closed the channel.
/// assert!(rx.next_message::<u32>()?.is_none());
/// # Ok::<(), worker_channel::Error>(())
/// ```
#[derive(Debug)]
pub struct Channel<R, W> {
    connection: FramedConnection<Duplex<R, W>>,
}

impl<R: Read, W: Write> Channel<R, W> {
    /// A channel with the default maximum frame length (16 MiB).
    pub fn new(reader: R, writer: W, codec: Codec) -> Self {
        Channel {
            connection: FramedConnection::new(Duplex::new(reader, writer), codec),
        }
    }

    /// A channel that neither sends nor accepts payloads over `max_frame_len` bytes.
    pub fn with_max_frame_len(reader: R, writer: W, codec: Codec, max_frame_len: u32) -> Self {
        let mut channel = Self::new(reader, writer, codec);
        channel.set_max_frame_len(max_frame_len);
        channel
    }

    /// The channel's codec.
    pub fn codec(&self) -> Codec {
        self.connection.codec()
    }

    /// The largest payload the channel sends or accepts.
    pub fn max_frame_len(&self) -> u32 {
        self.connection.max_frame_len()
    }

    /// Switches the codec for the messages that follow; bytes already buffered are kept.
    pub fn set_codec(&mut self, codec: Codec) {
        self.connection.set_codec(codec);
    }

    /// Changes the maximum frame length for the frames that follow; bytes already buffered are
    /// kept.
    pub fn set_max_frame_len(&mut self, max_frame_len: u32) {
        self.connection.set_max_frame_len(max_frame_len);
    }

    /// Sends one message as a data frame.
    pub fn send_message<T: Serialize + ?Sized>(&mut self, message: &T) -> Result<(), Error> {
        self.connection.send_message(message)
    }

    /// Sends one message as a frame of the given kind.
    pub fn send<T: Serialize + ?Sized>(
        &mut self,
        kind: FrameKind,
        message: &T,
    ) -> Result<(), Error> {
        self.connection.send(kind, message)
    }

    /// Sends one frame whose payload is already encoded (to relay a frame unchanged, say).
    pub fn send_raw(&mut self, kind: FrameKind, payload: &[u8]) -> Result<(), Error> {
        self.connection.send_raw(kind, payload)
    }

    /// Receives one data message, blocking until it arrives.
    ///
    /// The peer closing the channel between frames gives [`Error::Closed`]; a control frame gives
    /// [`Error::UnexpectedFrameKind`]; a payload nested too deep [`Error::TooDeep`].
    pub fn receive_message<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        self.connection.receive_message()
    }

    /// Receives one data message, or `None` when the peer closed the channel between frames.
    ///
    /// This is the usual loop of a raw worker: `while let Some(m) = channel.next_message()? {}`.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, Error> {
        self.connection.next_message()
    }

    /// Receives one message that must be a frame of kind `kind`.
    pub fn receive_kind<T: DeserializeOwned>(&mut self, kind: FrameKind) -> Result<T, Error> {
        self.connection.receive_kind(kind)
    }

    /// Receives the next frame of any kind, returning its kind and its still-encoded payload.
    pub fn receive_frame(&mut self) -> Result<(FrameKind, Vec<u8>), Error> {
        self.connection.receive_frame()
    }

    /// The reader.
    pub fn reader(&self) -> &R {
        self.connection.transport().reader()
    }

    /// The reader, mutably, for callers that set up how its next read behaves.
    pub fn reader_mut(&mut self) -> &mut R {
        self.connection.transport_mut().reader_mut()
    }

    /// The writer.
    pub fn writer(&self) -> &W {
        self.connection.transport().writer()
    }

    /// The writer, mutably, for callers that write frames they encoded themselves.
    pub fn writer_mut(&mut self) -> &mut W {
        self.connection.transport_mut().writer_mut()
    }

    /// The connection underneath: limits, buffered bytes, the non-blocking face.
    pub fn connection(&self) -> &FramedConnection<Duplex<R, W>> {
        &self.connection
    }

    /// The connection underneath, mutably.
    pub fn connection_mut(&mut self) -> &mut FramedConnection<Duplex<R, W>> {
        &mut self.connection
    }

    /// The connection underneath, with every byte it buffered, to go on over another transport
    /// made from the same halves ([`FramedConnection::map_transport`]).
    pub fn into_connection(self) -> FramedConnection<Duplex<R, W>> {
        self.connection
    }

    /// Takes the channel apart. Bytes already buffered but not yet received are dropped.
    pub fn into_parts(self) -> (R, W) {
        self.connection.into_transport().into_parts()
    }
}
