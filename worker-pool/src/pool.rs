use std::{
    io,
    ops::{Index, IndexMut},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use mio::{Events, Interest, Poll, Token, unix::SourceFd};
use serde::{Serialize, de::DeserializeOwned};
use worker_bootstrap::DedicatedWorker;

use crate::{
    Error,
    builder::{RestartLimit, Spawner},
};

/// Dedicated workers of one implementation, with a receive that returns the first reply from
/// any of them (the seed's `WorkerPool`).
///
/// Send to a worker of your choice (by index, or through [`iter_mut`](Self::iter_mut)), then
/// [`receive_message`](Self::receive_message) returns the first message any worker sent,
/// with the index of the worker that sent it. Replies already buffered are delivered before
/// the pool waits again, so two replies that arrived together are both delivered without new
/// input. Waiting is driven by readiness (one `epoll` over every worker's output), not by
/// polling each worker in turn.
///
/// A worker that dies is replaced in the same place (same index), within the pool's restart
/// limit, and the call that found it dead returns [`Error::Worker`]: the messages it held are
/// lost. Past the restart limit every call returns [`Error::PoolFailed`].
///
/// Workers are started (and restarted) by the thread that calls into the pool; on Linux a
/// worker's parent-death signal follows the *thread* that started it, so keep the pool on a
/// thread that lives as long as it. Dropping the pool drops every worker, which closes their
/// input, waits the profile's grace period, kills what is left and reaps them.
#[derive(Debug)]
pub struct WorkerPool {
    workers: Vec<DedicatedWorker>,
    /// Readiness seen by the poller and not yet read to the end (the poller is edge-triggered).
    ready: Vec<bool>,
    poll: Poll,
    events: Events,
    /// Where the next search for a message starts, so no worker is starved.
    next: usize,
    spawner: Spawner,
    restarts: RestartLimit,
    restarted: u64,
    failed: Option<String>,
}

impl WorkerPool {
    pub(crate) fn start(
        spawner: Spawner,
        size: usize,
        restarts: RestartLimit,
    ) -> Result<Self, Error> {
        let poll = Poll::new().map_err(|source| Error::System {
            what: "create a poller",
            source,
        })?;
        let mut pool = WorkerPool {
            workers: Vec::with_capacity(size),
            ready: vec![false; size],
            poll,
            events: Events::with_capacity(size.max(8)),
            next: 0,
            spawner,
            restarts,
            restarted: 0,
            failed: None,
        };
        for i in 0..size {
            let worker = pool.spawner.spawn()?;
            register(&pool.poll, &worker, i)?;
            pool.workers.push(worker);
        }
        Ok(pool)
    }

    /// The number of workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether the pool has no workers (never true for a pool that was built).
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// The workers, in index order.
    pub fn iter(&self) -> std::slice::Iter<'_, DedicatedWorker> {
        self.workers.iter()
    }

    /// The workers, in index order, to send to (the seed's `foreach ($pool as $worker)`).
    ///
    /// Receive through the pool, not through a worker: the pool keeps track of what is
    /// buffered where.
    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, DedicatedWorker> {
        self.workers.iter_mut()
    }

    /// The process ids of the workers, in index order.
    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().map(DedicatedWorker::pid).collect()
    }

    /// How many workers were replaced after they failed.
    pub fn restarted(&self) -> u64 {
        self.restarted
    }

    /// Sends `message` to worker `index`; a dead worker is replaced and reported as
    /// [`Error::Worker`].
    ///
    /// # Panics
    ///
    /// If `index` is not below [`len`](Self::len).
    pub fn send_message<T: Serialize + ?Sized>(
        &mut self,
        index: usize,
        message: &T,
    ) -> Result<(), Error> {
        self.check_failed()?;
        match self.workers[index].send_message(message) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.worker_failed(index, e)),
        }
    }

    /// Receives the first message from any worker, with the index of the worker that sent it.
    pub fn receive_message<T: DeserializeOwned>(&mut self) -> Result<(usize, T), Error> {
        self.receive_until(None)
    }

    /// As [`receive_message`](Self::receive_message), waiting at most `timeout`
    /// ([`Error::Timeout`] when nothing came; what was partly read is kept).
    pub fn receive_message_timeout<T: DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> Result<(usize, T), Error> {
        self.receive_until(Some((Instant::now() + timeout, timeout)))
    }

    fn receive_until<T: DeserializeOwned>(
        &mut self,
        deadline: Option<(Instant, Duration)>,
    ) -> Result<(usize, T), Error> {
        self.check_failed()?;
        let n = self.workers.len();
        loop {
            for k in 0..n {
                let i = (self.next + k) % n;
                if !self.ready[i] && !self.workers[i].has_buffered_message() {
                    continue;
                }
                match self.workers[i].try_receive_message::<T>() {
                    Ok(Some(message)) => {
                        self.next = (i + 1) % n;
                        return Ok((i, message));
                    }
                    Ok(None) => self.ready[i] = false,
                    Err(e) => return Err(self.worker_failed(i, e)),
                }
            }
            let timeout = match deadline {
                None => None,
                Some((at, waited)) => {
                    let now = Instant::now();
                    if now >= at {
                        return Err(Error::Timeout { waited });
                    }
                    Some(at - now)
                }
            };
            match self.poll.poll(&mut self.events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::System {
                        what: "wait for workers",
                        source,
                    });
                }
            }
            for event in self.events.iter() {
                if let Some(r) = self.ready.get_mut(event.token().0) {
                    *r = true;
                }
            }
        }
    }

    fn check_failed(&self) -> Result<(), Error> {
        match &self.failed {
            Some(reason) => Err(Error::PoolFailed {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Turns a worker's error into the pool's, replacing the worker when it is gone.
    fn worker_failed(&mut self, index: usize, source: worker_bootstrap::Error) -> Error {
        let pid = self.workers[index].pid();
        // An undecodable message leaves the worker and its channel in step: keep it.
        if matches!(source, worker_bootstrap::Error::Channel { .. }) {
            return Error::Worker { index, pid, source };
        }
        if let Err(e) = self.replace(index) {
            return e;
        }
        Error::Worker { index, pid, source }
    }

    fn replace(&mut self, index: usize) -> Result<(), Error> {
        let fd = self.workers[index].as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        let _ = self.workers[index].kill();
        self.ready[index] = false;
        let result = self.restarts.allow().and_then(|()| {
            let worker = self.spawner.spawn()?;
            register(&self.poll, &worker, index)?;
            Ok(worker)
        });
        match result {
            Ok(worker) => {
                self.workers[index] = worker;
                self.restarted += 1;
                Ok(())
            }
            Err(e) => {
                let reason = match &e {
                    Error::PoolFailed { reason } => reason.clone(),
                    other => format!("cannot start a replacement worker: {other}"),
                };
                self.failed = Some(reason.clone());
                for w in &mut self.workers {
                    let _ = w.kill();
                }
                Err(Error::PoolFailed { reason })
            }
        }
    }
}

pub(crate) fn register(poll: &Poll, worker: &DedicatedWorker, index: usize) -> Result<(), Error> {
    poll.registry()
        .register(
            &mut SourceFd(&worker.as_raw_fd()),
            Token(index),
            Interest::READABLE,
        )
        .map_err(|source| Error::System {
            what: "watch a worker's output",
            source,
        })
}

impl Index<usize> for WorkerPool {
    type Output = DedicatedWorker;
    fn index(&self, index: usize) -> &DedicatedWorker {
        &self.workers[index]
    }
}

impl IndexMut<usize> for WorkerPool {
    fn index_mut(&mut self, index: usize) -> &mut DedicatedWorker {
        &mut self.workers[index]
    }
}

impl<'a> IntoIterator for &'a mut WorkerPool {
    type Item = &'a mut DedicatedWorker;
    type IntoIter = std::slice::IterMut<'a, DedicatedWorker>;
    fn into_iter(self) -> Self::IntoIter {
        self.workers.iter_mut()
    }
}

impl<'a> IntoIterator for &'a WorkerPool {
    type Item = &'a DedicatedWorker;
    type IntoIter = std::slice::Iter<'a, DedicatedWorker>;
    fn into_iter(self) -> Self::IntoIter {
        self.workers.iter()
    }
}
