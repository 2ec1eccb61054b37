//! The task protocol between a [`TaskPool`](crate::TaskPool) and [`run_task_worker`](crate::run_task_worker).
//!
//! A request is `[id, [item, ...]]`; the worker answers it, in request order, with one or more
//! replies `[id, [outcome, ...]]` whose outcomes together answer the request's items in order.
//! It splits its answer only when one frame cannot hold it. Any reply whose id is not that of
//! the oldest request unanswered, or that carries more outcomes than that request has items
//! left, breaks the protocol: the pool replaces the worker.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use worker_channel::Codec;

use crate::Error;

/// A request as the pool sends it: the task id and its items, borrowed.
#[derive(Serialize, Debug)]
pub(crate) struct Request<'a, I>(pub(crate) u64, pub(crate) &'a [I]);

/// A request as the worker receives it.
#[derive(Deserialize, Debug)]
pub(crate) struct ReceivedRequest<I>(pub(crate) u64, pub(crate) Vec<I>);

/// A reply as the worker sends it: the id of the request it answers, and the outcomes of the
/// next items of that request.
#[derive(Serialize, Debug)]
pub(crate) struct Reply<'a, O>(pub(crate) u64, pub(crate) &'a [Outcome<O>]);

/// A reply as the pool receives it.
#[derive(Deserialize, Debug)]
pub(crate) struct ReceivedReply<O>(pub(crate) u64, pub(crate) Vec<Outcome<O>>);

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
