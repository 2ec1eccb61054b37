use std::io::{self, Read, Write};

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    Codec, Error, FrameDecoder, FrameKind,
    frame::{DEFAULT_MAX_FRAME_LEN, encode_frame},
};

/// A blocking, framed, typed channel over a byte stream: a reader and a writer.
///
/// Each message crosses as one frame (see the crate documentation) and leaves in a single write.
/// Reads go through the channel's buffer, so several messages that arrive together cost one
/// system call.
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
    reader: R,
    writer: W,
    codec: Codec,
    decoder: FrameDecoder,
    out: Vec<u8>,
    max_frame_len: u32,
}

impl<R: Read, W: Write> Channel<R, W> {
    /// A channel with the default maximum frame length (16 MiB).
    pub fn new(reader: R, writer: W, codec: Codec) -> Self {
        Self::with_max_frame_len(reader, writer, codec, DEFAULT_MAX_FRAME_LEN)
    }

    /// A channel that neither sends nor accepts payloads over `max_frame_len` bytes.
    pub fn with_max_frame_len(reader: R, writer: W, codec: Codec, max_frame_len: u32) -> Self {
        Channel {
            reader,
            writer,
            codec,
            decoder: FrameDecoder::new(max_frame_len),
            out: Vec::new(),
            max_frame_len,
        }
    }

    /// The channel's codec.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The largest payload the channel sends or accepts.
    pub fn max_frame_len(&self) -> u32 {
        self.max_frame_len
    }

    /// Switches the codec for the messages that follow; bytes already buffered are kept.
    pub fn set_codec(&mut self, codec: Codec) {
        self.codec = codec;
    }

    /// Changes the maximum frame length for the frames that follow; bytes already buffered are
    /// kept.
    pub fn set_max_frame_len(&mut self, max_frame_len: u32) {
        self.max_frame_len = max_frame_len;
        self.decoder.set_max_frame_len(max_frame_len);
    }

    /// Sends one message as a data frame.
    pub fn send_message<T: Serialize + ?Sized>(&mut self, message: &T) -> Result<(), Error> {
        self.send(FrameKind::Data, message)
    }

    /// Sends one message as a frame of the given kind.
    pub fn send<T: Serialize + ?Sized>(
        &mut self,
        kind: FrameKind,
        message: &T,
    ) -> Result<(), Error> {
        self.out.clear();
        encode_frame(self.codec, kind, message, self.max_frame_len, &mut self.out)?;
        self.write_out()
    }

    /// Sends one frame whose payload is already encoded (to relay a frame unchanged, say).
    pub fn send_raw(&mut self, kind: FrameKind, payload: &[u8]) -> Result<(), Error> {
        self.out.clear();
        crate::encode_raw_frame(kind, payload, self.max_frame_len, &mut self.out)?;
        self.write_out()
    }

    /// Writes the encoded frame in `out` in one go.
    fn write_out(&mut self) -> Result<(), Error> {
        let result = self
            .writer
            .write_all(&self.out)
            .and_then(|()| self.writer.flush());
        // Do not keep a very large frame's buffer around after it is gone.
        if self.out.capacity() > crate::decoder::RETAIN {
            self.out = Vec::new();
        }
        result.map_err(Error::Io)
    }

    /// Receives one data message, blocking until it arrives.
    ///
    /// The peer closing the channel between frames gives [`Error::Closed`]; a control frame gives
    /// [`Error::UnexpectedFrameKind`].
    pub fn receive_message<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        self.receive_kind(FrameKind::Data)
    }

    /// Receives one data message, or `None` when the peer closed the channel between frames.
    ///
    /// This is the usual loop of a raw worker: `while let Some(m) = channel.next_message()? {}`.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, Error> {
        match self.receive_message() {
            Ok(message) => Ok(Some(message)),
            Err(Error::Closed) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Receives one message that must be a frame of kind `kind`.
    pub fn receive_kind<T: DeserializeOwned>(&mut self, kind: FrameKind) -> Result<T, Error> {
        let codec = self.codec;
        let frame = self.receive_frame_inner()?;
        if frame.0 != kind {
            return Err(Error::UnexpectedFrameKind { kind: frame.0 });
        }
        codec.decode(frame.1)
    }

    /// Receives the next frame of any kind, returning its kind and its still-encoded payload.
    pub fn receive_frame(&mut self) -> Result<(FrameKind, Vec<u8>), Error> {
        let (kind, payload) = self.receive_frame_inner()?;
        Ok((kind, payload.to_vec()))
    }

    fn receive_frame_inner(&mut self) -> Result<(FrameKind, &[u8]), Error> {
        while !self.decoder.has_frame() {
            match self.decoder.read_from(&mut self.reader) {
                Ok(0) => return Err(self.decoder.end_of_stream_error()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
        let frame = self.decoder.decode()?.expect("has_frame promised a frame");
        Ok((frame.kind, frame.payload))
    }

    /// The decoder, for callers that wait for readiness themselves (with `poll`, say) and then
    /// read once with [`Channel::read_available`].
    pub fn decoder_mut(&mut self) -> &mut FrameDecoder {
        &mut self.decoder
    }

    /// Reads once from the stream into the channel's buffer; `Ok(0)` is end of stream.
    pub fn read_available(&mut self) -> io::Result<usize> {
        self.decoder.read_from(&mut self.reader)
    }

    /// The reader.
    pub fn reader(&self) -> &R {
        &self.reader
    }

    /// The writer.
    pub fn writer(&self) -> &W {
        &self.writer
    }

    /// The writer, mutably, for callers that write frames they encoded themselves.
    pub fn writer_mut(&mut self) -> &mut W {
        &mut self.writer
    }

    /// Takes the channel apart. Bytes already buffered but not yet received are dropped.
    pub fn into_parts(self) -> (R, W) {
        (self.reader, self.writer)
    }
}
