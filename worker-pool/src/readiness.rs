//! The pools' view of the one readiness layer ([`worker_core::Poller`]): which workers have
//! output to read. [`WorkerPool`](crate::WorkerPool) and the task dispatcher share it.

use std::{io, os::fd::AsRawFd, time::Instant};

use worker_bootstrap::DedicatedWorker;
use worker_core::{
    Poller, PollerWaker, WAKE_TOKEN,
    mio::{Interest, Registry, Token, event::Source, unix::SourceFd},
};

use crate::Error;

/// Workers by index, each registered under its index, with a flag per worker for readiness
/// seen and not yet read to the end (the poller is edge-triggered).
#[derive(Debug)]
pub(crate) struct ReadySet {
    poller: Poller,
    ready: Vec<bool>,
}

impl ReadySet {
    /// A set for workers `0..size`.
    pub(crate) fn new(size: usize) -> Result<Self, Error> {
        let poller = Poller::with_capacity(size.saturating_add(1))
            .map_err(|e| system("create a poller", e))?;
        Ok(ReadySet {
            poller,
            ready: vec![false; size],
        })
    }

    /// Wakes [`ReadySet::wait`] from another thread.
    pub(crate) fn waker(&self) -> PollerWaker {
        self.poller.waker()
    }

    /// Watches `worker`'s output as worker `index`.
    pub(crate) fn watch(&mut self, index: usize, worker: &DedicatedWorker) -> Result<(), Error> {
        self.ready[index] = false;
        self.poller
            .register(&mut WorkerOutput(worker), Token(index), Interest::READABLE)
            .map_err(|e| system("watch a worker's output", e))
    }

    /// Stops watching worker `index`, which is still open.
    pub(crate) fn unwatch(&mut self, index: usize, worker: &DedicatedWorker) {
        self.ready[index] = false;
        self.poller.deregister(&mut WorkerOutput(worker));
    }

    /// Whether worker `index` may have output to read.
    pub(crate) fn is_ready(&self, index: usize) -> bool {
        self.ready[index]
    }

    /// Worker `index` was read to the end: wait for the poller to say it is readable again.
    pub(crate) fn drained(&mut self, index: usize) {
        self.ready[index] = false;
    }

    /// Waits until a worker is readable, the waker is woken or `deadline` passes (`None`:
    /// no deadline), and marks the workers that are.
    pub(crate) fn wait(&mut self, deadline: Option<Instant>) -> Result<(), Error> {
        let ready = &mut self.ready;
        self.poller
            .wait(deadline, |token, _| {
                if token != WAKE_TOKEN {
                    if let Some(flag) = ready.get_mut(token.0) {
                        *flag = true;
                    }
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

/// The one adapter between a worker and the poller: registers the worker's output descriptor.
///
/// TO BE REPLACED: once `DedicatedWorker` implements mio's `Source` itself (its output and its
/// pidfd under one token), register the worker directly and delete this type.
struct WorkerOutput<'a>(&'a DedicatedWorker);

impl Source for WorkerOutput<'_> {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        SourceFd(&self.0.as_raw_fd()).register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        SourceFd(&self.0.as_raw_fd()).reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        SourceFd(&self.0.as_raw_fd()).deregister(registry)
    }
}
