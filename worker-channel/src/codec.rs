use std::fmt;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{Error, depth};

/// How deep a payload may nest arrays, maps and enum variants by default: 128 levels.
pub const DEFAULT_MAX_DEPTH: u32 = 128;

/// How a payload is encoded inside a frame.
///
/// [`Codec::MessagePack`] is the default: compact and fast, and it carries byte strings as bytes.
/// [`Codec::Json`] is the readable and widely spoken one; it gives back exactly the `f64` it was
/// given.
///
/// # How Rust types look on the wire
///
/// For peers written in other languages: serde's data model, as each codec writes it (a test
/// holds this table to the bytes). Enums are externally tagged: a unit variant is its name, any
/// other variant a map of one entry from its name to its content. Integers take the smallest
/// MessagePack encoding that holds the value, whatever the Rust type; a reader accepts any.
///
/// | Rust | MessagePack | JSON |
/// |---|---|---|
/// | struct `Point { x: 1, y: None }` | map with the field names: `82 a1 78 01 a1 79 c0` | `{"x":1,"y":null}` |
/// | `Option`: `None` / `Some(4)` | nil `c0` / the value itself `04` | `null` / `4` |
/// | a struct's `Option` field that is `None` | the key with nil (never left out) | the key with `null` |
/// | tuple `(1, "a")`, tuple struct | array `92 01 a1 61` | `[1,"a"]` |
/// | newtype struct `Wrapper(5)` | the inner value `05` | `5` |
/// | unit struct, `()` | empty array `90`; `()` is nil `c0` | `null` |
/// | unit variant `Shape::Unit` | its name as a string `a4 55 6e 69 74` | `"Unit"` |
/// | newtype variant `Shape::Newtype(7)` | `{name: value}` `81 a7 4e 65 77 74 79 70 65 07` | `{"Newtype":7}` |
/// | tuple variant `Shape::Tuple(1, 2)` | `{name: [..]}` `81 a5 54 75 70 6c 65 92 01 02` | `{"Tuple":[1,2]}` |
/// | struct variant `Shape::Struct { x: 3 }` | `{name: {..}}` `81 a6 53 74 72 75 63 74 81 a1 78 03` | `{"Struct":{"x":3}}` |
/// | `Vec<u8>` | array of integers `92 01 02` | `[1,2]` |
/// | `serde_bytes::ByteBuf` (and `#[serde(with = "serde_bytes")]`) | `bin` `c4 02 01 02` | `[1,2]` |
/// | `char`, `String` | `str`, UTF-8 | a JSON string |
/// | `f32` / `f64` | `float 32` `ca ...` / `float 64` `cb ...` | a JSON number |
/// | `u64::MAX`, `-1i8`, `300u16` | `cf ff..ff`, `ff`, `cd 01 2c` | `18446744073709551615`, `-1`, `300` |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Codec {
    /// MessagePack through `rmp-serde`, structs encoded as maps (field names on the wire).
    #[default]
    MessagePack,
    /// JSON through `serde_json`.
    Json,
}

impl Codec {
    /// Appends the encoding of `value` to `out`.
    pub fn encode_into<T: Serialize + ?Sized>(
        self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        match self {
            Codec::MessagePack => {
                let mut ser = rmp_serde::Serializer::new(&mut *out).with_struct_map();
                value.serialize(&mut ser).map_err(|e| Error::Encode {
                    codec: self,
                    source: Box::new(e),
                })
            }
            Codec::Json => serde_json::to_writer(&mut *out, value).map_err(|e| Error::Encode {
                codec: self,
                source: Box::new(e),
            }),
        }
    }

    /// Encodes `value` into a new buffer.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.encode_into(value, &mut out)?;
        Ok(out)
    }

    /// Decodes one value from `bytes`, refusing payloads nested deeper than
    /// [`DEFAULT_MAX_DEPTH`] levels with [`Error::TooDeep`].
    ///
    /// JSON refuses trailing characters after the value; MessagePack ignores trailing bytes.
    ///
    /// Every nested array, map and enum variant is one level, whatever the type asks for, so
    /// no payload can make decoding recurse deeper than the limit (see
    /// [`Codec::decode_with_max_depth`]).
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, Error> {
        self.decode_with_max_depth(bytes, DEFAULT_MAX_DEPTH)
    }

    /// Decodes one value from `bytes`, refusing payloads nested deeper than `max_depth` levels
    /// with [`Error::TooDeep`].
    ///
    /// The nesting is measured before decoding, without recursion, so a hostile payload cannot
    /// exhaust the stack of the thread that decodes it; byte strings and strings are skipped in
    /// one step, so the check costs little next to decoding. A decoder recurses a few stack
    /// frames per level: keep `max_depth` within what the decoding threads' stacks hold
    /// (128 levels of a recursive enum take well under 1 MiB, even unoptimised).
    ///
    /// ```
    /// use worker_channel::{Codec, Error};
    ///
    /// let deep = "[".repeat(200) + &"]".repeat(200);
    /// assert!(matches!(
    ///     Codec::Json.decode::<serde_json::Value>(deep.as_bytes()),
    ///     Err(Error::TooDeep { codec: Codec::Json, max_depth: 128 })
    /// ));
    /// assert!(Codec::Json.decode_with_max_depth::<serde_json::Value>(deep.as_bytes(), 200).is_ok());
    /// ```
    pub fn decode_with_max_depth<T: DeserializeOwned>(
        self,
        bytes: &[u8],
        max_depth: u32,
    ) -> Result<T, Error> {
        let err = |e: Box<dyn std::error::Error + Send + Sync>| Error::Decode {
            codec: self,
            source: e,
        };
        let within = match self {
            Codec::MessagePack => depth::msgpack_within(bytes, max_depth),
            Codec::Json => depth::json_within(bytes, max_depth),
        };
        if !within {
            return Err(Error::TooDeep {
                codec: self,
                max_depth,
            });
        }
        match self {
            Codec::MessagePack => {
                let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
                // The scan above is the limit; rmp-serde's own (1024 containers, enum
                // variants not counted) must not refuse what it let through.
                de.set_max_depth(usize::MAX);
                T::deserialize(&mut de).map_err(|e| err(Box::new(e)))
            }
            Codec::Json => {
                let mut de = serde_json::Deserializer::from_slice(bytes);
                // As above: serde_json's own limit (127 levels) would cut a larger one short.
                de.disable_recursion_limit();
                T::deserialize(&mut de)
                    .and_then(|value| de.end().map(|()| value))
                    .map_err(|e| err(Box::new(e)))
            }
        }
    }

    /// The codec's short name, as used in errors and configuration (`messagepack`, `json`).
    pub fn name(self) -> &'static str {
        match self {
            Codec::MessagePack => "messagepack",
            Codec::Json => "json",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
