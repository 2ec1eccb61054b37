use std::io::{self, Read};

use crate::{
    Error, FrameKind,
    frame::{DEFAULT_MAX_FRAME_LEN, HEADER_LEN},
};

/// The read a fresh decoder offers a stream: a connection that only ever carries small frames
/// (most of a shared worker's thousand clients) never holds more, nor pays for zeroing and
/// faulting in more when it starts.
const FIRST_READ: usize = 4 * 1024;

/// The read a busy decoder offers: each read that fills all it was offered doubles the offer up
/// to this, so frames that arrive together still cost few system calls.
const MIN_READ: usize = 64 * 1024;

/// Buffer memory kept between frames, for reading and for writing alike; more is given back
/// once the large frame that needed it is gone.
const RETAIN: usize = 4 * 1024 * 1024;

/// The one shrink rule of both buffers of a connection, applied once a buffer is empty: a past
/// very large frame need not pin its memory forever, while up to [`RETAIN`] is kept, so a stream
/// of large messages does not pay for allocating and faulting it in each time.
pub(crate) fn release_if_large(buf: &mut Vec<u8>) {
    if buf.capacity() > RETAIN {
        *buf = Vec::new();
    }
}

/// A frame taken out of a [`FrameDecoder`], borrowing its payload from the decoder's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// What the frame carries.
    pub kind: FrameKind,
    /// The encoded payload.
    pub payload: &'a [u8],
}

/// Splits a byte stream into frames, whatever the bytes come from.
///
/// Feed it bytes ([`FrameDecoder::extend_from_slice`]) or let it read from a stream
/// ([`FrameDecoder::read_from`]), then take every complete frame with
/// [`FrameDecoder::decode`] until it returns `Ok(None)`.
/// A header announcing more than the maximum frame length is refused from the header alone,
/// before any allocation.
///
/// ```
/// use worker_channel::{encode_raw_frame, FrameDecoder, FrameKind};
///
/// let mut wire = Vec::new();
/// encode_raw_frame(FrameKind::Data, b"one", 1024, &mut wire)?;
/// encode_raw_frame(FrameKind::Data, b"two", 1024, &mut wire)?;
///
/// let mut decoder = FrameDecoder::new(1024);
/// decoder.extend_from_slice(&wire[..7]); // a frame and a half at once
/// decoder.extend_from_slice(&wire[7..]);
/// assert_eq!(decoder.decode()?.unwrap().payload, b"one");
/// assert_eq!(decoder.decode()?.unwrap().payload, b"two");
/// assert!(decoder.decode()?.is_none());
/// # Ok::<(), worker_channel::Error>(())
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    /// Always fully initialised, so reads never pay for zeroing; the bytes live in `start..end`.
    buf: Vec<u8>,
    /// Start of the bytes not yet decoded.
    start: usize,
    /// End of the bytes received.
    end: usize,
    max_frame_len: u32,
    /// What a read offers the stream when no large frame is pending: [`FIRST_READ`], growing to
    /// [`MIN_READ`] while reads come back full.
    read_size: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    /// A decoder that refuses payloads over `max_frame_len` bytes.
    pub fn new(max_frame_len: u32) -> Self {
        FrameDecoder {
            read_size: FIRST_READ,
            buf: Vec::new(),
            start: 0,
            end: 0,
            max_frame_len,
        }
    }

    /// The largest payload this decoder accepts.
    pub fn max_frame_len(&self) -> u32 {
        self.max_frame_len
    }

    /// Changes the largest payload accepted from now on.
    pub fn set_max_frame_len(&mut self, max_frame_len: u32) {
        self.max_frame_len = max_frame_len;
    }

    /// Bytes received but not yet taken out as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Whether a complete frame is waiting, so that [`FrameDecoder::decode`] returns one
    /// (or the error that the waiting header deserves) without more input.
    pub fn has_frame(&self) -> bool {
        match self.peek_header() {
            Some((len, _)) => {
                len > self.max_frame_len as usize || self.buffered() >= HEADER_LEN + len
            }
            None => false,
        }
    }

    fn peek_header(&self) -> Option<(usize, u8)> {
        let pending = &self.buf[self.start..self.end];
        if pending.len() < HEADER_LEN {
            return None;
        }
        let len = u32::from_be_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
        Some((len, pending[4]))
    }

    /// Appends received bytes.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.reserve(data.len());
        self.buf[self.end..self.end + data.len()].copy_from_slice(data);
        self.end += data.len();
    }

    /// Reads once from `reader` into the buffer, returning what `read` returned
    /// (`Ok(0)` is end of stream).
    ///
    /// When the pending header announces a large frame, the buffer grows to hold all of it,
    /// so a big payload arrives in big reads; never beyond the maximum frame length.
    pub fn read_from<R: Read + ?Sized>(&mut self, reader: &mut R) -> io::Result<usize> {
        self.read_from_limited(reader, usize::MAX).map(|(n, _)| n)
    }

    /// As [`FrameDecoder::read_from`], offering the read at most `max` bytes (at least one);
    /// returns the bytes read and the room the read was offered, so a short read is recognised.
    pub(crate) fn read_from_limited<R: Read + ?Sized>(
        &mut self,
        reader: &mut R,
        max: usize,
    ) -> io::Result<(usize, usize)> {
        let want = match self.peek_header() {
            Some((len, _)) if len <= self.max_frame_len as usize => (HEADER_LEN + len)
                .saturating_sub(self.buffered())
                .max(self.read_size),
            _ => self.read_size,
        };
        self.reserve(want.min(max.max(1)));
        let room = (self.buf.len() - self.end).min(max.max(1));
        let n = reader.read(&mut self.buf[self.end..self.end + room])?;
        self.end += n;
        if n == room && room >= self.read_size {
            self.read_size = (self.read_size * 2).min(MIN_READ);
        }
        Ok((n, room))
    }

    /// Makes room for `additional` bytes after `end`, moving pending bytes to the front first.
    fn reserve(&mut self, additional: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if additional <= MIN_READ {
                release_if_large(&mut self.buf);
            }
        }
        if self.buf.len() - self.end >= additional {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let needed = self.end + additional;
        if self.buf.len() < needed {
            let new_len = needed
                .max(self.buf.len().saturating_mul(2))
                .max(self.read_size);
            self.buf.resize(new_len, 0);
        }
    }

    /// Takes the next complete frame out of the buffer, if one is there.
    ///
    /// An oversized header gives [`Error::FrameTooLarge`] and an unknown kind byte
    /// [`Error::UnknownFrameKind`]; both leave the decoder unable to go on, as the stream can no
    /// longer be trusted.
    pub fn decode(&mut self) -> Result<Option<FrameRef<'_>>, Error> {
        let Some((len, kind)) = self.peek_header() else {
            return Ok(None);
        };
        if len > self.max_frame_len as usize {
            return Err(Error::FrameTooLarge {
                len: len as u64,
                max: self.max_frame_len,
            });
        }
        let kind = FrameKind::from_byte(kind)?;
        if self.buffered() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload_start = self.start + HEADER_LEN;
        self.start = payload_start + len;
        Ok(Some(FrameRef {
            kind,
            payload: &self.buf[payload_start..payload_start + len],
        }))
    }

    /// The error for a stream that ended now: [`Error::Closed`] between frames,
    /// [`Error::Truncated`] inside one.
    pub fn end_of_stream_error(&self) -> Error {
        match self.buffered() {
            0 => Error::Closed,
            received => Error::Truncated {
                expected: self
                    .peek_header()
                    .map_or(HEADER_LEN, |(len, _)| HEADER_LEN + len),
                received,
            },
        }
    }
}
