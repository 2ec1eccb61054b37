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
    /// The underlying stream failed.
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
