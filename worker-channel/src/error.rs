use std::{error, fmt, io};

use crate::Codec;

/// The error type of every channel operation.
///
/// End of stream between two frames ([`Error::Closed`]) is the peer's normal way of saying goodbye
/// and has a variant of its own, distinct from a stream that ends inside a frame
/// ([`Error::Truncated`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The peer closed the stream cleanly, between two frames.
    Closed,
    /// The stream ended inside a frame.
    Truncated {
        /// Bytes of the frame (header included) that should have arrived.
        expected: usize,
        /// Bytes of the frame that did arrive.
        received: usize,
    },
    /// A frame header announced a payload larger than the channel accepts.
    ///
    /// Nothing was allocated for it; the stream cannot be resynchronised after this error.
    FrameTooLarge {
        /// The announced (or, when sending, the encoded) payload length.
        len: u64,
        /// The channel's maximum payload length.
        max: u32,
    },
    /// A frame header carried a kind byte this version does not know.
    UnknownFrameKind(u8),
    /// A frame of a kind the caller did not expect here (a control frame where data was expected).
    UnexpectedFrameKind {
        /// What arrived.
        kind: crate::FrameKind,
    },
    /// A payload could not be decoded with the channel's codec.
    Decode {
        /// The codec that failed.
        codec: Codec,
        /// What the codec said.
        source: Box<dyn error::Error + Send + Sync>,
    },
    /// A payload nests arrays, maps or enum variants deeper than the decoding limit.
    ///
    /// Refused before decoding starts, so no input can exhaust the decoding thread's stack.
    TooDeep {
        /// The codec of the payload.
        codec: Codec,
        /// The limit it went past.
        max_depth: u32,
    },
    /// A value could not be encoded with the channel's codec.
    Encode {
        /// The codec that failed.
        codec: Codec,
        /// What the codec said.
        source: Box<dyn error::Error + Send + Sync>,
    },
    /// A frame was refused because the outgoing queue holds `limit` bytes or more already:
    /// the peer does not read fast enough. Nothing was queued; queue again once it drained.
    QueueFull {
        /// Bytes waiting to be written.
        queued: usize,
        /// The bound of the queue.
        limit: usize,
    },
    /// The peer sent more than `limit` bytes while this side waited to write
    /// ([`FramedConnection::read_ahead`](crate::FramedConnection::read_ahead)).
    ///
    /// What was read stays buffered and the connection usable.
    ReceiveBufferFull {
        /// Bytes buffered and not yet received.
        buffered: usize,
        /// The cap.
        limit: usize,
    },
    /// The underlying stream failed (a peer that is gone is a `BrokenPipe` or `ConnectionReset`
    /// here, when sending).
    Io(io::Error),
}

impl Error {
    /// Whether this is the clean end of the stream ([`Error::Closed`]).
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Closed)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Closed => f.write_str("channel closed by peer"),
            Error::Truncated { expected, received } => write!(
                f,
                "stream ended inside a frame ({received} of {expected} bytes received)"
            ),
            Error::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max} bytes")
            }
            Error::UnknownFrameKind(kind) => write!(f, "unknown frame kind {kind:#04x}"),
            Error::UnexpectedFrameKind { kind } => write!(f, "unexpected {kind} frame"),
            Error::Decode { codec, .. } => write!(f, "cannot decode {codec} payload"),
            Error::TooDeep { codec, max_depth } => {
                write!(f, "{codec} payload nested deeper than {max_depth} levels")
            }
            Error::Encode { codec, .. } => write!(f, "cannot encode {codec} payload"),
            Error::QueueFull { queued, limit } => write!(
                f,
                "outgoing queue full ({queued} bytes queued, limit {limit} bytes)"
            ),
            Error::ReceiveBufferFull { buffered, limit } => write!(
                f,
                "peer sent more than {limit} bytes while a send waited ({buffered} bytes buffered)"
            ),
            Error::Io(_) => f.write_str("channel i/o error"),
        }
    }
}

impl error::Error for Error {
    fn source(&self) -> Option<&(dyn error::Error + 'static)> {
        match self {
            Error::Decode { source, .. } | Error::Encode { source, .. } => Some(&**source),
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}
