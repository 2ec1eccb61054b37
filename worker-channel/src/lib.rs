//! Frames, codecs and the blocking channel that every `exsyst-worker` topology speaks.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use worker_channel::{Channel, Codec};
//!
//! #[derive(Serialize, Deserialize, PartialEq, Debug)]
//! struct Job { id: u32, text: String }
//!
//! let mut wire = Vec::new();
//! Channel::new(std::io::empty(), &mut wire, Codec::MessagePack)
//!     .send_message(&Job { id: 7, text: "squared".into() })?;
//!
//! let mut rx = Channel::new(&wire[..], std::io::sink(), Codec::MessagePack);
//! assert_eq!(rx.receive_message::<Job>()?, Job { id: 7, text: "squared".into() });
//! # Ok::<(), worker_channel::Error>(())
//! ```
//!
//! # The frame
//!
//! Every message crosses as one frame: a `u32` big-endian payload length, one kind byte
//! ([`FrameKind`]: data or control), then the payload encoded by the channel's [`Codec`].
//! The maximum payload length (16 MiB by default) is checked from the header alone, before
//! anything is allocated.
//!
//! The core types:
//! - [`FramedConnection`], the one framed connection: a transport, its read buffer and frame
//!   decoder, its outgoing buffer, the codec and the limits, with a blocking face and a
//!   non-blocking face (for callers that wait for readiness themselves: event loops, pools,
//!   dedicated-worker handles);
//! - [`Channel`], its blocking face over any reader and writer;
//! - [`Codec`], MessagePack (the default) or JSON;
//! - [`Spin`], the latency mode: how long a receive that finds nothing keeps looking before it
//!   blocks (the one spin loop of every topology).
//!
//! [`FrameDecoder`] splits bytes from anywhere into frames, for those who bring their own
//! buffer.
//!
//! # Bytes travel as bytes
//!
//! serde sees a `Vec<u8>` as a sequence of integers, which MessagePack encodes one integer at a
//! time (a 1 MiB payload costs hundreds of times more than it should). Wrap binary payloads in
//! [`serde_bytes::ByteBuf`] (or mark fields `#[serde(with = "serde_bytes")]`), and they cross as
//! one byte string:
//!
//! ```
//! use worker_channel::{serde_bytes::ByteBuf, Channel, Codec};
//!
//! let mut wire = Vec::new();
//! Channel::new(std::io::empty(), &mut wire, Codec::MessagePack)
//!     .send_message(&ByteBuf::from(vec![0u8; 1 << 20]))?;
//! assert!(wire.len() < (1 << 20) + 16);
//! # Ok::<(), worker_channel::Error>(())
//! ```
//!
//! # Errors
//!
//! The clean end of the stream between frames is [`Error::Closed`] (the seed's "master closed
//! the connection"); a stream that ends inside a frame is [`Error::Truncated`]; an oversized
//! header is [`Error::FrameTooLarge`]; a payload the codec cannot read is [`Error::Decode`],
//! naming the codec. The bounds of a non-blocking connection are [`Error::QueueFull`] (sending)
//! and [`Error::ReceiveBufferFull`] (reading ahead while a send waits).
//!
//! # Untrusted payloads
//!
//! Decoding is bounded: a payload nested deeper than [`DEFAULT_MAX_DEPTH`] (128) arrays, maps
//! and enum variants is refused with [`Error::TooDeep`] before the codec recurses into it, so a
//! peer cannot overflow the stack of the thread that decodes its messages
//! ([`Codec::decode_with_max_depth`] sets another limit).

#![forbid(unsafe_code)]

mod channel;
mod codec;
mod connection;
mod decoder;
mod depth;
mod error;
mod frame;
mod spin;

pub use channel::Channel;
pub use codec::{Codec, DEFAULT_MAX_DEPTH};
pub use connection::{DEFAULT_MAX_QUEUED, Duplex, FramedConnection};
pub use decoder::{FrameDecoder, FrameRef};
pub use error::Error;
pub use frame::{DEFAULT_MAX_FRAME_LEN, FrameKind, HEADER_LEN, encode_frame, encode_raw_frame};
#[doc(no_inline)]
pub use serde_bytes;
pub use spin::Spin;
