use std::{
    collections::VecDeque,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use mio::{Poll, Waker};

use crate::{
    Error, TaskWorker, TrySubmitError,
    builder::TaskConfig,
    dispatcher::{self, Completer, Job, WAKE},
    task_worker::Request,
};

type JobOf<W> = Job<<W as TaskWorker>::Item, <W as TaskWorker>::Output>;

/// Dedicated workers serving tasks: submit an item, get a [`TaskHandle`] whose result arrives
/// later, or [`map`](Self::map) a whole list.
///
/// # Threads and processes
///
/// One dispatcher thread per pool owns the workers: it starts them, sends them tasks (up to
/// [`in_flight_per_worker`](crate::WorkerPoolBuilder::in_flight_per_worker) each, to the least
/// loaded), reads their replies as they become readable, times tasks out and replaces workers
/// that died. It also *starts every worker and every replacement*, because on Linux a worker's
/// parent-death signal fires when the thread that started it exits: the dispatcher lives as
/// long as the pool, so a worker dies with its master's process and not before.
///
/// Submitting threads talk to the dispatcher through a bounded queue: when
/// [`queue_bound`](crate::WorkerPoolBuilder::queue_bound) tasks wait, [`submit`](Self::submit)
/// blocks and [`try_submit`](Self::try_submit) hands the item back, so a fast producer is held
/// back instead of filling memory. `&TaskPool` can be shared between threads.
///
/// # Failures
///
/// A worker that dies fails only the tasks it held ([`Error::Worker`], carrying
/// [`worker_bootstrap::Error::WorkerExited`] with its exit status or signal and the tail of its
/// standard error); it is replaced and the others go on. Past the restart limit
/// ([`max_restarts`](crate::WorkerPoolBuilder::max_restarts)) the pool fails: every task
/// queued, in flight or submitted later fails with [`Error::PoolFailed`].
///
/// # Shutdown
///
/// [`close`](Self::close) lets the queued and in-flight tasks finish, then closes every worker.
/// Dropping the pool kills and reaps every worker at once; tasks not finished fail with
/// [`Error::Closed`]. Either way no worker process outlives the call.
pub struct TaskPool<W: TaskWorker> {
    tx: Option<Sender<JobOf<W>>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    size: usize,
    queue_bound: usize,
    chunk_size: Option<usize>,
}

impl<W: TaskWorker> fmt::Debug for TaskPool<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskPool")
            .field("implementation", &W::NAME)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// State the dispatcher shares with the pool's handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub waker: Waker,
    /// The dispatcher waits with room for more tasks: a submitter must wake it.
    pub sleeping: AtomicBool,
    /// Drop asked for an immediate end.
    pub abort: AtomicBool,
    pub failed: Mutex<Option<String>>,
    /// The workers' process ids, in index order.
    pub pids: Mutex<Vec<u32>>,
    pub workers: AtomicUsize,
    pub busy: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub completed: AtomicU64,
    pub failed_tasks: AtomicU64,
    pub restarted: AtomicU64,
    pub recycled: AtomicU64,
}

impl Shared {
    pub fn failed_error(&self) -> Option<Error> {
        lock(&self.failed).as_ref().map(|reason| Error::PoolFailed {
            reason: reason.clone(),
        })
    }

    fn wake(&self) {
        // A wake that fails leaves the dispatcher to its next event; nothing better to do.
        let _ = self.waker.wake();
    }
}

/// A snapshot of a [`TaskPool`]'s counters. A `map` chunk counts as one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PoolStats {
    /// Workers running.
    pub workers: usize,
    /// Workers with at least one task in flight.
    pub busy: usize,
    /// Workers with none.
    pub idle: usize,
    /// Tasks waiting for a worker (never more than the queue bound).
    pub queued: usize,
    /// Tasks sent to a worker and not answered yet.
    pub in_flight: usize,
    /// Tasks answered (including those whose handler returned an error).
    pub completed: u64,
    /// Tasks that got no answer: their worker died or was killed, or the pool failed.
    pub failed: u64,
    /// Workers replaced after they died or a task timed out.
    pub restarted: u64,
    /// Workers replaced after serving their quota of tasks.
    pub recycled: u64,
}

impl<W: TaskWorker> TaskPool<W> {
    pub(crate) fn start(config: TaskConfig) -> Result<Self, Error> {
        let system = |what| move |source| Error::System { what, source };
        let poll = Poll::new().map_err(system("create a poller"))?;
        let waker = Waker::new(poll.registry(), WAKE).map_err(system("create a waker"))?;
        let shared = Arc::new(Shared {
            waker,
            sleeping: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            failed: Mutex::new(None),
            pids: Mutex::new(Vec::new()),
            workers: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            failed_tasks: AtomicU64::new(0),
            restarted: AtomicU64::new(0),
            recycled: AtomicU64::new(0),
        });
        let (tx, rx) = crossbeam_channel::bounded(config.queue_bound);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let (size, queue_bound, chunk_size) = (config.size, config.queue_bound, config.chunk_size);
        let thread = std::thread::Builder::new()
            .name(format!("worker-pool {}", W::NAME))
            .spawn({
                let shared = shared.clone();
                move || dispatcher::run::<W>(config, poll, rx, shared, ready_tx)
            })
            .map_err(system("start the dispatcher thread"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(TaskPool {
                tx: Some(tx),
                shared,
                thread: Some(thread),
                size,
                queue_bound,
                chunk_size,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(Error::Closed)
            }
        }
    }

    /// The number of workers.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The most tasks that may wait for a worker.
    pub fn queue_bound(&self) -> usize {
        self.queue_bound
    }

    /// The process ids of the workers now, in index order (empty once the pool has failed or
    /// closed).
    pub fn pids(&self) -> Vec<u32> {
        lock(&self.shared.pids).clone()
    }

    /// The pool's counters now.
    pub fn stats(&self) -> PoolStats {
        let s = &self.shared;
        let workers = s.workers.load(Ordering::Relaxed);
        let busy = s.busy.load(Ordering::Relaxed).min(workers);
        PoolStats {
            workers,
            busy,
            idle: workers - busy,
            queued: self.tx.as_ref().map_or(0, Sender::len),
            in_flight: s.in_flight.load(Ordering::Relaxed),
            completed: s.completed.load(Ordering::Relaxed),
            failed: s.failed_tasks.load(Ordering::Relaxed),
            restarted: s.restarted.load(Ordering::Relaxed),
            recycled: s.recycled.load(Ordering::Relaxed),
        }
    }

    /// Submits one task, blocking while the queue is full.
    pub fn submit(&self, item: W::Item) -> Result<TaskHandle<W::Output>, Error> {
        if let Some(e) = self.shared.failed_error() {
            return Err(e);
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let job = Job {
            request: Request::One(item),
            completer: Completer::One(tx),
        };
        self.send(job).map_err(|_| self.gone())?;
        Ok(TaskHandle { rx })
    }

    /// Submits one task if the queue has room; otherwise hands the item back
    /// ([`TrySubmitError::Full`]).
    pub fn try_submit(
        &self,
        item: W::Item,
    ) -> Result<TaskHandle<W::Output>, TrySubmitError<W::Item>> {
        if let Some(e) = self.shared.failed_error() {
            return Err(TrySubmitError::Pool(e));
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let job = Job {
            request: Request::One(item),
            completer: Completer::One(tx),
        };
        match self.try_send(job) {
            Ok(()) => Ok(TaskHandle { rx }),
            Err(TrySendError::Full(job)) => Err(TrySubmitError::Full(job.into_item())),
            Err(TrySendError::Disconnected(_)) => Err(TrySubmitError::Pool(self.gone())),
        }
    }

    fn sender(&self) -> &Sender<JobOf<W>> {
        self.tx
            .as_ref()
            .expect("the sender lives until close or drop")
    }

    fn send(&self, job: JobOf<W>) -> Result<(), JobOf<W>> {
        self.sender().send(job).map_err(|e| e.into_inner())?;
        self.nudge();
        Ok(())
    }

    fn try_send(&self, job: JobOf<W>) -> Result<(), TrySendError<JobOf<W>>> {
        self.sender().try_send(job)?;
        self.nudge();
        Ok(())
    }

    /// Wakes the dispatcher if it waits for tasks; a dispatcher that is busy finds the task
    /// itself, which saves a system call per task under load.
    fn nudge(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.shared.sleeping.load(Ordering::SeqCst)
            && self.shared.sleeping.swap(false, Ordering::SeqCst)
        {
            self.shared.wake();
        }
    }

    fn gone(&self) -> Error {
        self.shared.failed_error().unwrap_or(Error::Closed)
    }

    fn chunks(&self, items: Vec<W::Item>) -> Vec<(usize, Vec<W::Item>)> {
        let per = self.chunk_size.unwrap_or_else(|| {
            // Python's Pool.map: about four chunks per worker.
            let (size, extra) = (items.len() / (self.size * 4), items.len() % (self.size * 4));
            size + usize::from(extra > 0)
        });
        let per = per.max(1);
        let mut chunks = Vec::with_capacity(items.len().div_ceil(per));
        let mut items = items.into_iter();
        let mut start = 0;
        loop {
            let chunk: Vec<_> = items.by_ref().take(per).collect();
            if chunk.is_empty() {
                return chunks;
            }
            let len = chunk.len();
            chunks.push((start, chunk));
            start += len;
        }
    }

    /// Runs every item and returns the results in input order, or the first error in input
    /// order (a handler's `Err` is [`Error::Task`]).
    ///
    /// Items go in chunks, one message per chunk, as Python's `Pool.map` does.
    pub fn map<I>(&self, items: I) -> Result<Vec<W::Output>, Error>
    where
        I: IntoIterator<Item = W::Item>,
    {
        let mut results: Vec<Option<Result<W::Output, Error>>> = Vec::new();
        for (index, result) in self.map_unordered(items) {
            if results.len() <= index {
                results.resize_with(index + 1, || None);
            }
            results[index] = Some(result);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(Error::Closed)))
            .collect()
    }

    /// Runs every item and yields `(input index, result)` as chunks finish, in any order.
    pub fn map_unordered<I>(&self, items: I) -> MapUnordered<'_, W>
    where
        I: IntoIterator<Item = W::Item>,
    {
        let chunks = self.chunks(items.into_iter().collect());
        let (tx, rx) = crossbeam_channel::unbounded();
        MapUnordered {
            pool: self,
            chunks: chunks.into_iter(),
            held: None,
            outstanding: 0,
            tx,
            rx,
            ready: VecDeque::new(),
        }
    }

    /// Finishes the queued and in-flight tasks, then closes every worker and waits for it.
    ///
    /// `Err(`[`Error::PoolFailed`]`)` when the pool had failed.
    pub fn close(mut self) -> Result<(), Error> {
        self.tx = None;
        self.shared.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        match self.shared.failed_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl<W: TaskWorker> Drop for TaskPool<W> {
    fn drop(&mut self) {
        self.shared.abort.store(true, Ordering::SeqCst);
        self.tx = None;
        self.shared.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The result of one submitted task, to wait for.
///
/// A result is delivered once: after a call returned it, later calls return
/// [`Error::Closed`].
#[derive(Debug)]
pub struct TaskHandle<O> {
    rx: Receiver<Result<O, Error>>,
}

impl<O> TaskHandle<O> {
    /// Waits for the result.
    pub fn wait(self) -> Result<O, Error> {
        self.rx.recv().unwrap_or(Err(Error::Closed))
    }

    /// Waits at most `timeout` ([`Error::Timeout`] leaves the task running and the handle
    /// usable).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<O, Error> {
        match self.rx.recv_timeout(timeout) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(Error::Timeout { waited: timeout }),
            Err(RecvTimeoutError::Disconnected) => Err(Error::Closed),
        }
    }

    /// The result if it is there, without waiting.
    pub fn try_result(&self) -> Option<Result<O, Error>> {
        match self.rx.try_recv() {
            Ok(result) => Some(result),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(Error::Closed)),
        }
    }
}

/// A chunk's results, or why it has none.
pub(crate) struct ChunkDone<O> {
    pub start: usize,
    pub len: usize,
    pub result: Result<Vec<Result<O, String>>, Error>,
}

/// The iterator of [`TaskPool::map_unordered`]: submits chunks as the queue takes them and
/// yields `(input index, result)` as they finish.
pub struct MapUnordered<'a, W: TaskWorker> {
    pool: &'a TaskPool<W>,
    chunks: std::vec::IntoIter<(usize, Vec<W::Item>)>,
    /// A chunk the queue had no room for.
    held: Option<(usize, Vec<W::Item>)>,
    outstanding: usize,
    tx: Sender<ChunkDone<W::Output>>,
    rx: Receiver<ChunkDone<W::Output>>,
    ready: VecDeque<(usize, Result<W::Output, Error>)>,
}

impl<W: TaskWorker> fmt::Debug for MapUnordered<'_, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapUnordered")
            .field("outstanding", &self.outstanding)
            .finish_non_exhaustive()
    }
}

impl<W: TaskWorker> MapUnordered<'_, W> {
    /// Submits what the queue takes without waiting, and at least one chunk when none is out.
    fn feed(&mut self) {
        while let Some((start, items)) = self.held.take().or_else(|| self.chunks.next()) {
            let len = items.len();
            let job = Job {
                request: Request::Chunk(items),
                completer: Completer::Chunk {
                    start,
                    len,
                    tx: self.tx.clone(),
                },
            };
            let sent = if self.outstanding == 0 {
                self.pool.send(job).map_err(|job| (job, false))
            } else {
                self.pool.try_send(job).map_err(|e| match e {
                    TrySendError::Full(job) => (job, true),
                    TrySendError::Disconnected(job) => (job, false),
                })
            };
            match sent {
                Ok(()) => self.outstanding += 1,
                Err((job, true)) => {
                    self.held = Some((start, job.into_items()));
                    return;
                }
                Err((_, false)) => {
                    let e = self.pool.gone();
                    self.ready
                        .extend((start..start + len).map(|i| (i, Err(e.duplicate()))));
                }
            }
        }
    }
}

impl<W: TaskWorker> Iterator for MapUnordered<'_, W> {
    type Item = (usize, Result<W::Output, Error>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(next) = self.ready.pop_front() {
                return Some(next);
            }
            self.feed();
            if !self.ready.is_empty() {
                continue;
            }
            if self.outstanding == 0 {
                return None;
            }
            // We hold a sender, so this only ends when the dispatcher answers.
            let done = self.rx.recv().expect("map keeps its own sender");
            self.outstanding -= 1;
            match done.result {
                Ok(results) => {
                    self.ready
                        .extend(results.into_iter().enumerate().map(|(k, r)| {
                            (done.start + k, r.map_err(|message| Error::Task { message }))
                        }))
                }
                Err(e) => self
                    .ready
                    .extend((done.start..done.start + done.len).map(|i| (i, Err(e.duplicate())))),
            }
        }
    }
}

/// Locks a mutex whose data stays valid even if a holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
