//! How deep a payload nests, measured without recursion before the codec sees it.
//!
//! serde's derived decoders recurse once per nested array, map and enum variant, and neither
//! codec counts every shape (rmp-serde does not count enum variants), so a peer could overflow
//! the decoding thread's stack with a few kilobytes. The scans below walk the encoded bytes
//! iteratively and refuse a payload nested deeper than the limit before decoding starts.
//!
//! Why this bounds the decoder: both codecs recurse only when they enter an array or a map
//! (an enum variant is a one-entry map in MessagePack and an object in JSON), and never read
//! more children than a container declares (MessagePack) or holds (JSON). A decoder that reads
//! fewer closes its container earlier than the scan does, which only makes it shallower. Types
//! whose decoding recurses without consuming input (a newtype around `Option<Box<Self>>`) are
//! unbounded whatever the data; that is a bug of the type, not something input can cause.

/// The nesting of the scan, kept without recursion: one "values left" count per open container.
struct Stack {
    inline: [u64; INLINE],
    spill: Vec<u64>,
    len: usize,
}

/// Levels kept on the stack before the scan allocates (the default limit fits).
const INLINE: usize = 128;

impl Stack {
    fn new() -> Self {
        Stack {
            inline: [0; INLINE],
            spill: Vec::new(),
            len: 0,
        }
    }

    fn push(&mut self, left: u64) {
        if self.len < INLINE {
            self.inline[self.len] = left;
        } else {
            self.spill.push(left);
        }
        self.len += 1;
    }

    fn pop(&mut self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        if self.len < INLINE {
            Some(self.inline[self.len])
        } else {
            self.spill.pop()
        }
    }
}

/// Whether the first MessagePack value in `bytes` nests no deeper than `max_depth`.
///
/// Malformed or truncated input ends the scan with `true`: the decoder reports it better.
/// Bodies of strings, binaries and extensions are skipped in one step.
pub(crate) fn msgpack_within(bytes: &[u8], max_depth: u32) -> bool {
    // Every level costs at least one byte.
    if bytes.len() <= max_depth as usize {
        return true;
    }
    let max_depth = max_depth as usize;
    let mut stack = Stack::new();
    // Values left to read in the innermost open container (the top level holds one).
    let mut left: u64 = 1;
    let mut pos = 0usize;
    loop {
        while left == 0 {
            match stack.pop() {
                Some(outer) => left = outer,
                None => return true,
            }
        }
        let Some(&marker) = bytes.get(pos) else {
            return true;
        };
        pos += 1;
        left -= 1;
        // (children of a container, or bytes to skip after the marker)
        let (children, skip): (Option<u64>, usize) = match marker {
            0x80..=0x8f => (Some(2 * u64::from(marker & 0x0f)), 0),
            0x90..=0x9f => (Some(u64::from(marker & 0x0f)), 0),
            0xdc..=0xdf => {
                let width = if marker & 1 == 0 { 2 } else { 4 };
                let Some(n) = read_len(bytes, pos, width) else {
                    return true;
                };
                pos += width;
                let n = n as u64;
                (Some(if marker >= 0xde { 2 * n } else { n }), 0)
            }
            0xa0..=0xbf => (None, usize::from(marker & 0x1f)),
            // Bodies announced by a length: str8/16/32, bin8/16/32, ext8/16/32 (plus its type).
            0xc4 | 0xd9 => (None, len_then(bytes, &mut pos, 1)),
            0xc5 | 0xda => (None, len_then(bytes, &mut pos, 2)),
            0xc6 | 0xdb => (None, len_then(bytes, &mut pos, 4)),
            0xc7 => (None, len_then(bytes, &mut pos, 1).saturating_add(1)),
            0xc8 => (None, len_then(bytes, &mut pos, 2).saturating_add(1)),
            0xc9 => (None, len_then(bytes, &mut pos, 4).saturating_add(1)),
            0xcc | 0xd0 => (None, 1),
            0xcd | 0xd1 => (None, 2),
            0xca | 0xce | 0xd2 => (None, 4),
            0xcb | 0xcf | 0xd3 => (None, 8),
            // fixext 1, 2, 4, 8, 16: the type byte, then the data.
            0xd4 => (None, 2),
            0xd5 => (None, 3),
            0xd6 => (None, 5),
            0xd7 => (None, 9),
            0xd8 => (None, 17),
            // 0xc1 is never used: the decoder will refuse it.
            0xc1 => return true,
            // fixints, nil, booleans.
            _ => (None, 0),
        };
        pos = pos.saturating_add(skip);
        if let Some(children) = children {
            // Entering even an empty container is one level of recursion.
            if stack.len + 1 > max_depth {
                return false;
            }
            if children > 0 {
                stack.push(left);
                left = children;
            }
        }
    }
}

/// Reads a big-endian length of `width` bytes at `pos`.
fn read_len(bytes: &[u8], pos: usize, width: usize) -> Option<usize> {
    let field = bytes.get(pos..pos.checked_add(width)?)?;
    Some(field.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b)))
}

/// Reads the length field after a marker and moves past it; an absent field skips to the end.
fn len_then(bytes: &[u8], pos: &mut usize, width: usize) -> usize {
    match read_len(bytes, *pos, width) {
        Some(n) => {
            *pos += width;
            n
        }
        None => usize::MAX,
    }
}

/// Whether the JSON text `bytes` nests arrays and objects no deeper than `max_depth`.
///
/// Brackets inside strings do not count; escapes inside strings are honoured. Malformed text
/// is left to the decoder.
pub(crate) fn json_within(bytes: &[u8], max_depth: u32) -> bool {
    if bytes.len() <= max_depth as usize {
        return true;
    }
    let mut depth = 0u32;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string: up to the next quote that no backslash escapes.
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        b'"' => break,
                        b'\\' => i += 2,
                        _ => i += 1,
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    true
}
