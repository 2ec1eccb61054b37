use std::{
    ops::{Index, IndexMut},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Serialize, de::DeserializeOwned};
use worker_bootstrap::DedicatedWorker;

use crate::{
    Error,
    readiness::ReadySet,
    supervisor::{LOG_TARGET, RestartLimit, Spawner},
};

/// Dedicated workers of one implementation, with a receive that returns the first reply from
/// any of them (the seed's `WorkerPool`).
///
/// Send to a worker of your choice (by index, or through [`iter_mut`](Self::iter_mut)), then
/// [`receive_message`](Self::receive_message) returns the first message any worker sent,
/// with the index of the worker that sent it. Replies already buffered are delivered before
/// the pool waits again, so two replies that arrived together are both delivered without new
/// input. Waiting is driven by readiness (one `epoll` over every worker's output and process),
/// not by polling each worker in turn, and receives are fair: the search for the next message
/// starts after the worker that last returned one, or an error.
///
/// A worker that dies (seen through its pidfd, even while a grandchild it forked holds its
/// channel), or whose channel breaks (it sent a frame header the channel cannot accept), is
/// replaced in the same place (same index), within the pool's restart limit, and the call that
/// found it returns [`Error::Worker`]: the messages it held are lost; the old process is killed
/// and reaped in the background. A message that does not decode leaves the channel in step: the
/// call returns [`Error::Worker`] and the worker stays. Past the restart limit every call returns
/// [`Error::PoolFailed`].
///
/// The pool may move between threads: its workers, replacements included, live as long as it,
/// whichever thread started them. Dropping the pool drops every worker, which closes their
/// input, waits the profile's grace period, kills what is left and reaps them.
#[derive(Debug)]
pub struct WorkerPool {
    workers: Vec<DedicatedWorker>,
    ready: ReadySet,
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
        let mut pool = WorkerPool {
            workers: Vec::with_capacity(size),
            ready: ReadySet::new(size, spawner.spin())?,
            next: 0,
            spawner,
            restarts,
            restarted: 0,
            failed: None,
        };
        for index in 0..size {
            let worker = pool.spawner.spawn_watched(&mut pool.ready, index)?;
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

    /// Sends `message` to worker `index`.
    ///
    /// A message that cannot be encoded (over the frame limit, say) is [`Error::Encode`] and
    /// leaves the worker as it was; a dead worker is replaced and reported as
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
            Err(worker_bootstrap::Error::Channel {
                source:
                    source @ (worker_channel::Error::Encode { .. }
                    | worker_channel::Error::FrameTooLarge { .. }),
                ..
            }) => Err(Error::Encode {
                what: "message",
                source: Arc::new(source),
            }),
            Err(e) => Err(self.worker_failed(index, e)),
        }
    }

    /// Receives the first message from any worker, with the index of the worker that sent it.
    pub fn receive_message<T: DeserializeOwned>(&mut self) -> Result<(usize, T), Error> {
        self.receive_until(None, Duration::MAX)
    }

    /// As [`receive_message`](Self::receive_message), waiting at most `timeout`
    /// ([`Error::Timeout`] when nothing came; what was partly read is kept).
    ///
    /// [`Duration::ZERO`] takes only what is there already; [`Duration::MAX`] waits for ever.
    pub fn receive_message_timeout<T: DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> Result<(usize, T), Error> {
        self.receive_until(worker_core::deadline_after(timeout), timeout)
    }

    fn receive_until<T: DeserializeOwned>(
        &mut self,
        deadline: Option<Instant>,
        waited: Duration,
    ) -> Result<(usize, T), Error> {
        self.check_failed()?;
        let n = self.workers.len();
        // Even a deadline that has passed gets one look at the poller: zero takes what is
        // there.
        let mut looked = false;
        loop {
            for k in 0..n {
                let i = (self.next + k) % n;
                match self.ready.try_receive::<T>(i, &mut self.workers[i]) {
                    Ok(Some(message)) => {
                        self.next = (i + 1) % n;
                        return Ok((i, message));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.next = (i + 1) % n;
                        return Err(self.worker_failed(i, e));
                    }
                }
            }
            if looked && deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout { waited });
            }
            self.ready.wait(deadline)?;
            looked = true;
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

    /// Turns a worker's error into the pool's, replacing the worker unless its channel is
    /// still in step.
    fn worker_failed(&mut self, index: usize, source: worker_bootstrap::Error) -> Error {
        let pid = self.workers[index].pid();
        let error = Error::worker(index, pid, source);
        if let Error::Worker { source, .. } = &error {
            if in_step(source) {
                return error;
            }
        }
        match self.replace(index) {
            Ok(()) => error,
            Err(e) => e,
        }
    }

    /// Puts a fresh worker in `index`. The old one is killed, and reaped in the background.
    fn replace(&mut self, index: usize) -> Result<(), Error> {
        self.ready.unwatch(index, &mut self.workers[index]);
        let _ = self.workers[index].kill();
        let old_pid = self.workers[index].pid();
        let result = self
            .restarts
            .allow()
            .and_then(|()| self.spawner.spawn_watched(&mut self.ready, index));
        match result {
            Ok(worker) => {
                log::warn!(
                    target: LOG_TARGET,
                    "worker {old_pid} (slot {index}) failed; replaced by worker {}",
                    worker.pid()
                );
                std::mem::replace(&mut self.workers[index], worker).close_in_background();
                self.restarted += 1;
                Ok(())
            }
            Err(e) => {
                let reason = match &e {
                    Error::PoolFailed { reason } => reason.clone(),
                    other => format!(
                        "cannot start a replacement worker: {}",
                        worker_core::error_chain(other)
                    ),
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

/// Whether a receive error left the worker's channel in step: the frame was read whole and
/// only its content was refused, so the next frame can be read.
fn in_step(e: &worker_bootstrap::Error) -> bool {
    matches!(
        e,
        worker_bootstrap::Error::Channel {
            source: worker_channel::Error::Decode { .. }
                | worker_channel::Error::UnexpectedFrameKind { .. },
            ..
        }
    )
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
