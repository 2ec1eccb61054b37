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

// What a MessagePack marker byte announces, by table so that the common case (a scalar of a
// fixed size) costs one load and one predictable branch: up to `SCALAR_MAX`, a scalar whose
// body after the marker is that many bytes; above, one of the codes below.
const SCALAR_MAX: u8 = 31;
const FIXMAP: u8 = 32;
const FIXARRAY: u8 = 33;
const ARRAY16: u8 = 34;
const ARRAY32: u8 = 35;
const MAP16: u8 = 36;
const MAP32: u8 = 37;
/// A body announced by a 1-, 2- or 4-byte length: str8/16/32, bin8/16/32.
const LEN8: u8 = 38;
const LEN16: u8 = 39;
const LEN32: u8 = 40;
/// As above, plus a type byte: ext8/16/32.
const EXT8: u8 = 41;
const EXT16: u8 = 42;
const EXT32: u8 = 43;
/// 0xc1, never used: the decoder will refuse it.
const NEVER: u8 = 44;

const MARKERS: [u8; 256] = markers();

const fn markers() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let marker = b as u8;
        table[b] = match marker {
            0x80..=0x8f => FIXMAP,
            0x90..=0x9f => FIXARRAY,
            0xa0..=0xbf => marker & 0x1f,
            0xc1 => NEVER,
            0xc4 | 0xd9 => LEN8,
            0xc5 | 0xda => LEN16,
            0xc6 | 0xdb => LEN32,
            0xc7 => EXT8,
            0xc8 => EXT16,
            0xc9 => EXT32,
            0xcc | 0xd0 => 1,
            0xcd | 0xd1 => 2,
            0xca | 0xce | 0xd2 => 4,
            0xcb | 0xcf | 0xd3 => 8,
            // fixext 1, 2, 4, 8, 16: the type byte, then the data.
            0xd4 => 2,
            0xd5 => 3,
            0xd6 => 5,
            0xd7 => 9,
            0xd8 => 17,
            0xdc => ARRAY16,
            0xdd => ARRAY32,
            0xde => MAP16,
            0xdf => MAP32,
            // fixints, nil, booleans.
            _ => 0,
        };
        b += 1;
    }
    table
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
        let code = MARKERS[usize::from(marker)];
        if code <= SCALAR_MAX {
            pos += usize::from(code);
            continue;
        }
        let children = match code {
            FIXMAP => 2 * u64::from(marker & 0x0f),
            FIXARRAY => u64::from(marker & 0x0f),
            ARRAY16 | ARRAY32 | MAP16 | MAP32 => {
                let width = if matches!(code, ARRAY16 | MAP16) {
                    2
                } else {
                    4
                };
                let Some(n) = read_len(bytes, pos, width) else {
                    return true;
                };
                pos += width;
                let n = n as u64;
                if matches!(code, MAP16 | MAP32) {
                    2 * n
                } else {
                    n
                }
            }
            LEN8..=EXT32 => {
                let (width, type_byte) = match code {
                    LEN8 => (1, 0),
                    LEN16 => (2, 0),
                    LEN32 => (4, 0),
                    EXT8 => (1, 1),
                    EXT16 => (2, 1),
                    _ => (4, 1),
                };
                let body = len_then(bytes, &mut pos, width).saturating_add(type_byte);
                pos = pos.saturating_add(body);
                continue;
            }
            _ => return true,
        };
        // Entering even an empty container is one level of recursion.
        if stack.len >= max_depth {
            return false;
        }
        if children > 0 {
            stack.push(left);
            left = children;
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
/// is left to the decoder. Eight bytes are looked at a time, for the next bracket or quote
/// outside strings and the next quote or backslash inside them.
pub(crate) fn json_within(bytes: &[u8], max_depth: u32) -> bool {
    if bytes.len() <= max_depth as usize {
        return true;
    }
    let mut depth = 0u32;
    let mut i = 0;
    loop {
        i = find(bytes, i, structural);
        let Some(&b) = bytes.get(i) else {
            return true;
        };
        match b {
            b'"' => loop {
                // Up to the next quote that no backslash escapes.
                i = find(bytes, i + 1, string_end);
                match bytes.get(i) {
                    Some(b'\\') => i += 1,
                    Some(_) => break,
                    None => return true,
                }
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return false;
                }
            }
            _ => depth = depth.saturating_sub(1),
        }
        i += 1;
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const TOPS: u64 = 0x8080_8080_8080_8080;

/// Flags (in their top bit) the bytes of `word` equal to `byte`. The lowest flag is exact:
/// a false flag can only follow a true one, which is all [`find`] needs.
fn flag(word: u64, byte: u8) -> u64 {
    let x = word ^ (ONES * u64::from(byte));
    x.wrapping_sub(ONES) & !x & TOPS
}

/// Quotes and brackets: what matters outside strings. `| 0x20` turns `[` and `]` into `{`
/// and `}` and leaves those two as they are, and no other byte becomes either.
fn structural(word: u64) -> u64 {
    let folded = word | (ONES * 0x20);
    flag(word, b'"') | flag(folded, b'{') | flag(folded, b'}')
}

/// What ends a run of plain characters inside a string: a quote or a backslash.
fn string_end(word: u64) -> u64 {
    flag(word, b'"') | flag(word, b'\\')
}

/// The index of the first byte at or after `from` that `flags` flags, or `bytes.len()` (or
/// more) when there is none.
fn find(bytes: &[u8], mut from: usize, flags: fn(u64) -> u64) -> usize {
    while let Some(chunk) = bytes.get(from..from + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let found = flags(word);
        if found != 0 {
            return from + (found.trailing_zeros() / 8) as usize;
        }
        from += 8;
    }
    while let Some(&b) = bytes.get(from) {
        if flags(u64::from(b)) & 0x80 != 0 {
            return from;
        }
        from += 1;
    }
    from
}
