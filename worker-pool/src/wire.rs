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

impl<'de, I: Deserialize<'de>> Deserialize<'de> for ReceivedRequest<I> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<I>(PhantomData<I>);
        impl<'de, I: Deserialize<'de>> Visitor<'de> for V<I> {
            type Value = ReceivedRequest<I>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a task request: [0 or 1, id, [item, ...]] or [2]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let tag: u8 = next(&mut seq, 0, &self)?;
                let shape = match tag {
                    EACH => Shape::Each,
                    CHUNK => Shape::Chunk,
                    TAKE_BACK => return Ok(ReceivedRequest::TakeBack),
                    other => {
                        return Err(de::Error::invalid_value(
                            de::Unexpected::Unsigned(other.into()),
                            &self,
                        ));
                    }
                };
                let id = next(&mut seq, 1, &self)?;
                let items = next(&mut seq, 2, &self)?;
                Ok(ReceivedRequest::Run { shape, id, items })
            }
        }
        deserializer.deserialize_seq(V(PhantomData))
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

impl<'de, O: Deserialize<'de>> Deserialize<'de> for ReceivedReply<O> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<O>(PhantomData<O>);
        impl<'de, O: Deserialize<'de>> Visitor<'de> for V<O> {
            type Value = ReceivedReply<O>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a task reply: [0, id, [outcome, ...]] or [1, [id, ...]]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                match next::<u8, _>(&mut seq, 0, &self)? {
                    OUTCOMES => {
                        let id = next(&mut seq, 1, &self)?;
                        let outcomes = next(&mut seq, 2, &self)?;
                        Ok(ReceivedReply::Outcomes(id, outcomes))
                    }
                    NOT_STARTED => Ok(ReceivedReply::NotStarted(next(&mut seq, 1, &self)?)),
                    other => Err(de::Error::invalid_value(
                        de::Unexpected::Unsigned(other.into()),
                        &self,
                    )),
                }
            }
        }
        deserializer.deserialize_seq(V(PhantomData))
    }
}

/// The next element of a message, which must be there.
fn next<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(
    seq: &mut A,
    index: usize,
    expected: &dyn de::Expected,
) -> Result<T, A::Error> {
    seq.next_element()?
        .ok_or_else(|| de::Error::invalid_length(index, expected))
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
