//! The task protocol's messages (see the [`protocol`](crate::protocol) guide for the wire).

use std::{fmt, marker::PhantomData, sync::Arc};

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{self, SeqAccess, Visitor},
    ser::SerializeTuple,
};
use worker_channel::Codec;

use crate::Error;

/// The tag of a request whose items are tasks of their own, each answered as it is done.
const EACH: u8 = 0;
/// The tag of a request whose items are one task (a `map` chunk), answered in order.
const CHUNK: u8 = 1;
/// The tag of a take-back request.
const TAKE_BACK: u8 = 2;
/// The tag of a reply with outcomes.
const OUTCOMES: u8 = 0;
/// The tag of a take-back's answer.
const NOT_STARTED: u8 = 1;

/// How a request's items are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Item `k` is task `id + k`, answered by a reply of its own as soon as it is done.
    Each,
    /// The items are one task `id`, answered in order (in several replies only when one frame
    /// cannot hold them).
    Chunk,
}

/// A message as the pool sends it.
#[derive(Debug)]
pub(crate) enum Request<'a, I> {
    /// Run these items.
    Run {
        shape: Shape,
        id: u64,
        items: &'a [I],
    },
    /// Give back the tasks not started.
    TakeBack,
}

impl<I: Serialize> Serialize for Request<'_, I> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Request::Run { shape, id, items } => {
                let tag = match shape {
                    Shape::Each => EACH,
                    Shape::Chunk => CHUNK,
                };
                let mut t = serializer.serialize_tuple(3)?;
                t.serialize_element(&tag)?;
                t.serialize_element(id)?;
                t.serialize_element(items)?;
                t.end()
            }
            Request::TakeBack => {
                let mut t = serializer.serialize_tuple(1)?;
                t.serialize_element(&TAKE_BACK)?;
                t.end()
            }
        }
    }
}

/// A message as the worker receives it.
#[derive(Debug)]
pub(crate) enum ReceivedRequest<I> {
    Run {
        shape: Shape,
        id: u64,
        items: Vec<I>,
    },
    TakeBack,
}

impl<'de, I: Deserialize<'de>> Tagged<'de> for ReceivedRequest<I> {
    const EXPECTING: &'static str = "a task request: [0 or 1, id, [item, ...]] or [2]";

    fn rest<A: SeqAccess<'de>>(tag: u8, seq: &mut A) -> Result<Option<Self>, A::Error> {
        let shape = match tag {
            EACH => Shape::Each,
            CHUNK => Shape::Chunk,
            TAKE_BACK => return Ok(Some(ReceivedRequest::TakeBack)),
            _ => return Ok(None),
        };
        let id = next::<_, _, Self>(seq, 1)?;
        let items = next::<_, _, Self>(seq, 2)?;
        Ok(Some(ReceivedRequest::Run { shape, id, items }))
    }
}

impl<'de, I: Deserialize<'de>> Deserialize<'de> for ReceivedRequest<I> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(TaggedVisitor(PhantomData))
    }
}

/// A message as the worker sends it.
#[derive(Debug)]
pub(crate) enum Reply<'a, O> {
    /// The outcomes of the next items of task `id`.
    Outcomes(u64, &'a [Outcome<O>]),
    /// The answer to a take-back: the tasks given back, never to be answered.
    NotStarted(&'a [u64]),
}

impl<O: Serialize> Serialize for Reply<'_, O> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Reply::Outcomes(id, outcomes) => {
                let mut t = serializer.serialize_tuple(3)?;
                t.serialize_element(&OUTCOMES)?;
                t.serialize_element(id)?;
                t.serialize_element(outcomes)?;
                t.end()
            }
            Reply::NotStarted(ids) => {
                let mut t = serializer.serialize_tuple(2)?;
                t.serialize_element(&NOT_STARTED)?;
                t.serialize_element(ids)?;
                t.end()
            }
        }
    }
}

/// A message as the pool receives it.
#[derive(Debug)]
pub(crate) enum ReceivedReply<O> {
    Outcomes(u64, Vec<Outcome<O>>),
    NotStarted(Vec<u64>),
}

impl<'de, O: Deserialize<'de>> Tagged<'de> for ReceivedReply<O> {
    const EXPECTING: &'static str = "a task reply: [0, id, [outcome, ...]] or [1, [id, ...]]";

    fn rest<A: SeqAccess<'de>>(tag: u8, seq: &mut A) -> Result<Option<Self>, A::Error> {
        Ok(Some(match tag {
            OUTCOMES => {
                let id = next::<_, _, Self>(seq, 1)?;
                let outcomes = next::<_, _, Self>(seq, 2)?;
                ReceivedReply::Outcomes(id, outcomes)
            }
            NOT_STARTED => ReceivedReply::NotStarted(next::<_, _, Self>(seq, 1)?),
            _ => return Ok(None),
        }))
    }
}

impl<'de, O: Deserialize<'de>> Deserialize<'de> for ReceivedReply<O> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(TaggedVisitor(PhantomData))
    }
}

/// A message that is an array whose first element, a tag, says what follows.
trait Tagged<'de>: Sized {
    /// What the message looks like, for errors.
    const EXPECTING: &'static str;

    /// The message after its `tag`; `None` for a tag it does not have.
    fn rest<A: SeqAccess<'de>>(tag: u8, seq: &mut A) -> Result<Option<Self>, A::Error>;
}

/// Decodes a [`Tagged`] message.
struct TaggedVisitor<T>(PhantomData<T>);

impl<'de, T: Tagged<'de>> Visitor<'de> for TaggedVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        let tag: u8 = next::<_, _, T>(&mut seq, 0)?;
        T::rest(tag, &mut seq)?.ok_or_else(|| {
            de::Error::invalid_value(de::Unexpected::Unsigned(tag.into()), &T::EXPECTING)
        })
    }
}

/// The element `index` of a message `M`, which must be there.
fn next<'de, T: Deserialize<'de>, A: SeqAccess<'de>, M: Tagged<'de>>(
    seq: &mut A,
    index: usize,
) -> Result<T, A::Error> {
    seq.next_element()?
        .ok_or_else(|| de::Error::invalid_length(index, &M::EXPECTING))
}

/// What became of one item.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Outcome<O> {
    /// The handler's result.
    Ok(O),
    /// The handler's error.
    Err(String),
    /// The result encodes to `len` bytes, over the frame limit `max`.
    TooLarge { len: u64, max: u32 },
    /// The codec refused the result; its text.
    Unencodable(String),
}

impl<O> From<Result<O, String>> for Outcome<O> {
    fn from(result: Result<O, String>) -> Self {
        match result {
            Ok(output) => Outcome::Ok(output),
            Err(message) => Outcome::Err(message),
        }
    }
}

impl<O> Outcome<O> {
    /// The task's result; `codec` is the channel's, for a result the codec refused.
    pub(crate) fn into_result(self, codec: Codec) -> Result<O, Error> {
        let unsent = |source| Error::Encode {
            what: "result",
            source: Arc::new(source),
        };
        match self {
            Outcome::Ok(output) => Ok(output),
            Outcome::Err(message) => Err(Error::Task { message }),
            Outcome::TooLarge { len, max } => {
                Err(unsent(worker_channel::Error::FrameTooLarge { len, max }))
            }
            Outcome::Unencodable(text) => Err(unsent(worker_channel::Error::Encode {
                codec,
                source: text.into(),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages in JSON exactly as the protocol guide shows them, both ways.
    #[test]
    fn messages_look_as_the_guide_says_in_json() {
        let json = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
        let items = ["slow".to_string(), "quick".to_string()];
        let cases: [(Vec<u8>, &str); 5] = [
            (
                Codec::Json
                    .encode(&Request::Run {
                        shape: Shape::Each,
                        id: 7,
                        items: &items,
                    })
                    .unwrap(),
                r#"[0,7,["slow","quick"]]"#,
            ),
            (
                Codec::Json
                    .encode(&Request::Run {
                        shape: Shape::Chunk,
                        id: 9,
                        items: &items[..1],
                    })
                    .unwrap(),
                r#"[1,9,["slow"]]"#,
            ),
            (Codec::Json.encode(&Request::<u8>::TakeBack).unwrap(), "[2]"),
            (
                Codec::Json.encode(&Reply::<()>::NotStarted(&[8])).unwrap(),
                "[1,[8]]",
            ),
            (
                Codec::Json
                    .encode(&Reply::Outcomes(7, &[Outcome::Ok(42u32)]))
                    .unwrap(),
                r#"[0,7,[{"Ok":42}]]"#,
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(json(bytes), expected);
        }
    }

    #[test]
    fn every_message_decodes_as_it_was_sent_with_both_codecs() {
        for codec in [Codec::MessagePack, Codec::Json] {
            let items = [3u64, 4];
            let each = Request::Run {
                shape: Shape::Each,
                id: u64::MAX - 1,
                items: &items,
            };
            let run = codec
                .decode::<ReceivedRequest<u64>>(&codec.encode(&each).unwrap())
                .unwrap();
            assert!(
                matches!(run, ReceivedRequest::Run { shape: Shape::Each, id, ref items }
                    if id == u64::MAX - 1 && items == &[3, 4]),
                "{codec:?}: {run:?}"
            );
            let back = codec
                .decode::<ReceivedRequest<u64>>(&codec.encode(&Request::<u64>::TakeBack).unwrap())
                .unwrap();
            assert!(matches!(back, ReceivedRequest::TakeBack), "{codec:?}");
            let given = codec
                .decode::<ReceivedReply<u64>>(
                    &codec.encode(&Reply::<u64>::NotStarted(&[1, 2])).unwrap(),
                )
                .unwrap();
            assert!(
                matches!(given, ReceivedReply::NotStarted(ref ids) if ids == &[1, 2]),
                "{codec:?}"
            );
        }
    }

    #[test]
    fn a_message_with_another_tag_or_too_few_elements_is_refused() {
        let cases: [&[u8]; 5] = [
            br#"[3]"#,
            br#"[9, 1, []]"#,
            br#"[0, 1]"#,
            br#"[]"#,
            br#"[1]"#,
        ];
        for bytes in cases {
            assert!(
                matches!(
                    Codec::Json.decode::<ReceivedRequest<u64>>(bytes),
                    Err(worker_channel::Error::Decode { .. })
                ),
                "request {}",
                String::from_utf8_lossy(bytes)
            );
            assert!(
                matches!(
                    Codec::Json.decode::<ReceivedReply<u64>>(bytes),
                    Err(worker_channel::Error::Decode { .. })
                ),
                "reply {}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}
