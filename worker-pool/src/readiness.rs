//! The pools' view of the one readiness layer ([`worker_core::Poller`]): which workers may have
//! output to read, may take input, or may have exited. [`WorkerPool`](crate::WorkerPool) and the
//! task dispatcher share it.
//!
//! Each worker is registered itself, as mio's [`Source`](worker_core::mio::event::Source): its
//! output, its pidfd and (while it has bytes queued) its input, under one token. The token
//! carries the worker's index and a generation that changes whenever the index gets another
//! worker, so that an event of a replaced worker is never taken for its successor's.

use std::{io, time::Instant};

use serde::de::DeserializeOwned;
use worker_bootstrap::DedicatedWorker;
use worker_core::{
    Poller, PollerWaker, Spin, WAKE_TOKEN,
    mio::{Interest, Token},
};

use crate::Error;

/// Bits of a token that hold the worker's index; the generation is above them. The pools have
/// at most [`WorkerPoolBuilder::MAX_SIZE`](crate::WorkerPoolBuilder::MAX_SIZE) workers, and no
/// index has every one of these bits set, so no token is ever [`WAKE_TOKEN`].
const INDEX_BITS: u32 = 16;
const INDEX_MASK: usize = (1 << INDEX_BITS) - 1;

/// What is known of one worker's readiness (the poller is edge-triggered: a flag stays set
/// until the work it calls for was done to the end).
#[derive(Debug, Default, Clone, Copy)]
struct Watch {
    /// Tags this index's tokens; changes with every registration.
    generation: usize,
    /// Output (or its end, or the process's exit) to look at.
    readable: bool,
    /// The input may take queued bytes.
    writable: bool,
    /// The input is registered too, because bytes are queued for it.
    wants_write: bool,
}

/// Workers by index, with what their events said.
#[derive(Debug)]
pub(crate) struct ReadySet {
    poller: Poller,
    watches: Vec<Watch>,
}

impl ReadySet {
    /// A set for workers `0..size`, whose waits spin as `spin` says (the pool's profile's
    /// latency mode; see [`Poller::set_spin`]).
    pub(crate) fn new(size: usize, spin: Spin) -> Result<Self, Error> {
        debug_assert!(size <= INDEX_MASK, "{size} workers do not fit a token");
        let mut poller = Poller::with_capacity(size.saturating_add(1))
            .map_err(|e| system("create a poller", e))?;
        poller.set_spin(spin);
        Ok(ReadySet {
            poller,
            watches: vec![Watch::default(); size],
        })
    }

    /// Wakes [`ReadySet::wait`] from another thread.
    pub(crate) fn waker(&self) -> PollerWaker {
        self.poller.waker()
    }

    /// Watches `worker` as worker `index`, under a token no earlier worker of that index had.
    pub(crate) fn watch(
        &mut self,
        index: usize,
        worker: &mut DedicatedWorker,
    ) -> Result<(), Error> {
        let token = self.renew(index);
        self.poller
            .register(worker, token, Interest::READABLE)
            .map_err(|e| system("watch a worker", e))
    }

    /// Stops watching worker `index`, which still owns its descriptors; an event of it that is
    /// still on its way is ignored.
    pub(crate) fn unwatch(&mut self, index: usize, worker: &mut DedicatedWorker) {
        self.poller.deregister(worker);
        self.renew(index);
    }

    /// A fresh generation for `index`, with nothing known of it; its token.
    fn renew(&mut self, index: usize) -> Token {
        let watch = &mut self.watches[index];
        let generation = watch.generation.wrapping_add(1) & (usize::MAX >> INDEX_BITS);
        *watch = Watch {
            generation,
            ..Watch::default()
        };
        Token(generation << INDEX_BITS | index)
    }

    /// Watches worker `index`'s input for room too (`true`: it has bytes queued), or no longer.
    pub(crate) fn want_write(
        &mut self,
        index: usize,
        worker: &mut DedicatedWorker,
        on: bool,
    ) -> Result<(), Error> {
        let watch = &mut self.watches[index];
        watch.writable = false;
        if watch.wants_write == on {
            return Ok(());
        }
        let interest = if on {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let token = Token(watch.generation << INDEX_BITS | index);
        self.poller
            .registry()
            .reregister(worker, token, interest)
            .map_err(|e| Error::system("watch a worker's input", e))?;
        watch.wants_write = on;
        Ok(())
    }

    /// The next message of worker `index`, without waiting: one already buffered, or one its
    /// output has since the poller's last event for it. The worker reads until its output is
    /// drained, then looks once whether the process exited (its pidfd shares the token): once it
    /// has, what it sent before comes first, then its exit as the error.
    pub(crate) fn try_receive<T: DeserializeOwned>(
        &mut self,
        index: usize,
        worker: &mut DedicatedWorker,
    ) -> Result<Option<T>, worker_bootstrap::Error> {
        if std::mem::take(&mut self.watches[index].readable) {
            worker.note_event();
        }
        worker.try_receive_noted::<T>()
    }

    /// Whether worker `index`'s input may take queued bytes.
    pub(crate) fn is_writable(&self, index: usize) -> bool {
        self.watches[index].writable
    }

    /// Worker `index`'s input took everything it could: wait for the poller to say it has room.
    pub(crate) fn written(&mut self, index: usize) {
        self.watches[index].writable = false;
    }

    /// Waits until a worker is ready, the waker is woken or `deadline` passes (`None`: no
    /// deadline), and marks the workers that are.
    pub(crate) fn wait(&mut self, deadline: Option<Instant>) -> Result<(), Error> {
        let watches = &mut self.watches;
        self.poller
            .wait(deadline, |token, ready| {
                if token == WAKE_TOKEN {
                    return;
                }
                let (index, generation) = (token.0 & INDEX_MASK, token.0 >> INDEX_BITS);
                let Some(watch) = watches.get_mut(index) else {
                    return;
                };
                if watch.generation != generation {
                    return;
                }
                if ready.readable || ready.read_closed || ready.error {
                    watch.readable = true;
                }
                if ready.writable || ready.write_closed || ready.error {
                    watch.writable = true;
                }
            })
            .map(drop)
            .map_err(|e| system("wait for workers", e))
    }
}

fn system(what: &'static str, e: worker_core::Error) -> Error {
    match e {
        worker_core::Error::Io { source, .. } => Error::system(what, source),
        other => Error::system(what, io::Error::other(worker_core::error_chain(&other))),
    }
}
