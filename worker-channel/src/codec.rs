use std::fmt;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::Error;

/// How a payload is encoded inside a frame.
///
/// [`Codec::MessagePack`] is the default: compact and fast, and it carries byte strings as bytes.
/// [`Codec::Json`] is the readable and widely spoken one; it gives back exactly the `f64` it was
/// given.
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

    /// Decodes one value from `bytes`.
    ///
    /// JSON refuses trailing characters after the value; MessagePack ignores trailing bytes.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, Error> {
        let err = |e: Box<dyn std::error::Error + Send + Sync>| Error::Decode {
            codec: self,
            source: e,
        };
        match self {
            // Borrowing from the slice lets byte strings be copied once, straight into the value.
            Codec::MessagePack => rmp_serde::from_slice(bytes).map_err(|e| err(Box::new(e))),
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| err(Box::new(e))),
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
