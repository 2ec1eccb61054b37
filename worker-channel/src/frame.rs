use std::fmt;

use serde::Serialize;

use crate::{Codec, Error};

/// Length of a frame header: a `u32` big-endian payload length, then one kind byte.
pub const HEADER_LEN: usize = 5;

/// The default maximum payload length of a frame: 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;

/// What a frame carries.
///
/// The kind byte keeps user data and control messages apart, so a user message can never be
/// mistaken for a control message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameKind {
    /// A user message.
    Data,
    /// A message of the library's own protocol (bootstrap, hello, query, stop, ...).
    Control,
}

impl FrameKind {
    /// The byte that stands for this kind on the wire.
    pub const fn to_byte(self) -> u8 {
        match self {
            FrameKind::Data => 0,
            FrameKind::Control => 1,
        }
    }

    /// The kind a wire byte stands for.
    pub const fn from_byte(byte: u8) -> Result<Self, Error> {
        match byte {
            0 => Ok(FrameKind::Data),
            1 => Ok(FrameKind::Control),
            other => Err(Error::UnknownFrameKind(other)),
        }
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameKind::Data => "data",
            FrameKind::Control => "control",
        })
    }
}

/// Appends one whole frame (header and payload) carrying `value` to `out`.
///
/// The header is written in place after encoding, so the frame leaves in a single buffer and can
/// go out in one write. A payload over `max_frame_len` is refused with [`Error::FrameTooLarge`]
/// and `out` is left as it was.
pub fn encode_frame<T: Serialize + ?Sized>(
    codec: Codec,
    kind: FrameKind,
    value: &T,
    max_frame_len: u32,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    // A `Serialize` that panics half-way leaves no half frame behind either: a host that
    // catches the panic may still write what was queued before it.
    let mut partial = Truncate {
        out: &mut *out,
        start,
        armed: true,
    };
    codec.encode_into(value, partial.out)?;
    partial.armed = false;
    drop(partial);
    finish_header(out, start, kind, max_frame_len)
}

/// Cuts a buffer back to where a frame began when dropped armed: on an error and on a panic
/// alike.
struct Truncate<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    armed: bool,
}

impl Drop for Truncate<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.out.truncate(self.start);
        }
    }
}

/// Appends one whole frame whose payload is `payload`, already encoded, to `out`.
pub fn encode_raw_frame(
    kind: FrameKind,
    payload: &[u8],
    max_frame_len: u32,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.extend_from_slice(payload);
    finish_header(out, start, kind, max_frame_len)
}

fn finish_header(
    out: &mut Vec<u8>,
    start: usize,
    kind: FrameKind,
    max_frame_len: u32,
) -> Result<(), Error> {
    let len = out.len() - start - HEADER_LEN;
    if len > max_frame_len as usize {
        out.truncate(start);
        return Err(Error::FrameTooLarge {
            len: len as u64,
            max: max_frame_len,
        });
    }
    // `max_frame_len` is a u32, so the length fits.
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    out[start + 4] = kind.to_byte();
    Ok(())
}
