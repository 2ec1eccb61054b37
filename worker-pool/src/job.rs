//! A task on its way from a [`TaskPool`](crate::TaskPool) to the dispatcher: its items, and
//! where their results go.

use std::collections::VecDeque;

use worker_channel::Codec;

use crate::{Error, inbox::InboxSender, wire::Outcome};

/// What the pool's handle queues for the dispatcher.
#[derive(Debug)]
pub(crate) struct Job<I, O> {
    pub(crate) items: Items<I>,
    pub(crate) sink: Sink<O>,
}

impl<I, O> Job<I, O> {
    /// A single task.
    pub(crate) fn one(item: I, tx: InboxSender<Result<O, Error>>) -> Self {
        Job {
            items: Items::One(item),
            sink: Sink::One(tx),
        }
    }

    /// The items back, for a caller whose job was not taken.
    pub(crate) fn into_items(self) -> Vec<I> {
        match self.items {
            Items::One(item) => vec![item],
            Items::Many(items) => items,
        }
    }
}

/// A job's items: one without a vector of its own, or several.
#[derive(Debug)]
pub(crate) enum Items<I> {
    One(I),
    Many(Vec<I>),
}

impl<I> Items<I> {
    pub(crate) fn as_slice(&self) -> &[I] {
        match self {
            Items::One(item) => std::slice::from_ref(item),
            Items::Many(items) => items,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Splits off the items from `at` on (`at` within the items).
    pub(crate) fn split_off(&mut self, at: usize) -> Items<I> {
        match self {
            Items::One(_) => unreachable!("a single item is not split"),
            Items::Many(items) => Items::Many(items.split_off(at)),
        }
    }
}

/// Where the results of a job's items go, in item order.
#[derive(Debug)]
pub(crate) enum Sink<O> {
    /// A single task.
    One(InboxSender<Result<O, Error>>),
    /// Single tasks that waited together and travel in one message, one sender each.
    Batch(VecDeque<InboxSender<Result<O, Error>>>),
    /// Items of a `map`, from input index `start` on; each piece of results is sent as it
    /// comes.
    Map {
        start: usize,
        tx: InboxSender<ChunkDone<O>>,
    },
}

/// Results of a `map`'s items from `start` on, as the worker gave them (turned into results on
/// the caller's thread, not the dispatcher's).
#[derive(Debug)]
pub(crate) struct ChunkDone<O> {
    pub(crate) start: usize,
    pub(crate) results: ChunkResults<O>,
}

/// What a [`ChunkDone`] carries.
#[derive(Debug)]
pub(crate) enum ChunkResults<O> {
    /// The outcomes of the next items, with the channel's codec.
    Outcomes(Vec<Outcome<O>>, Codec),
    /// The next `len` items failed with `error`.
    Failed { len: usize, error: Error },
}

impl<O> ChunkResults<O> {
    pub(crate) fn len(&self) -> usize {
        match self {
            ChunkResults::Outcomes(outcomes, _) => outcomes.len(),
            ChunkResults::Failed { len, .. } => *len,
        }
    }
}

impl<O> Sink<O> {
    /// Tasks this stands for in the pool's counters: a `map` chunk is one task.
    pub(crate) fn tasks(&self) -> usize {
        match self {
            Sink::Batch(txs) => txs.len(),
            _ => 1,
        }
    }

    /// Hands over the outcomes of the next items.
    pub(crate) fn deliver(&mut self, outcomes: Vec<Outcome<O>>, codec: Codec) {
        match self {
            Sink::One(tx) => {
                for outcome in outcomes {
                    tx.send(outcome.into_result(codec));
                }
            }
            Sink::Batch(txs) => {
                for (tx, outcome) in txs.drain(..outcomes.len()).zip(outcomes) {
                    tx.send(outcome.into_result(codec));
                }
            }
            Sink::Map { start, tx } => {
                let len = outcomes.len();
                tx.send(ChunkDone {
                    start: *start,
                    results: ChunkResults::Outcomes(outcomes, codec),
                });
                *start += len;
            }
        }
    }

    /// Fails the `items` items not yet answered with `error`.
    pub(crate) fn fail(self, items: usize, error: Error) {
        match self {
            Sink::One(tx) => {
                tx.send(Err(error));
            }
            Sink::Batch(txs) => {
                for tx in txs {
                    tx.send(Err(error.clone()));
                }
            }
            Sink::Map { start, tx } => {
                tx.send(ChunkDone {
                    start,
                    results: ChunkResults::Failed { len: items, error },
                });
            }
        }
    }

    /// Splits off the sink of the items from `at` on (`at` within the items).
    pub(crate) fn split_off(&mut self, at: usize) -> Sink<O> {
        match self {
            Sink::One(_) => unreachable!("a single task is not split"),
            Sink::Batch(txs) => Sink::Batch(txs.split_off(at)),
            Sink::Map { start, tx } => Sink::Map {
                start: *start + at,
                tx: tx.clone(),
            },
        }
    }
}
