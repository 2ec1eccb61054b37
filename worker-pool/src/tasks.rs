use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    thread::JoinHandle,
    time::Duration,
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::{
    Error, TaskWorker, TrySubmitError,
    dispatcher::{self, JobOf, Shared, Started, TaskConfig},
    inbox::{self, InboxReceiver, InboxSender, TryRecv},
    job::{ChunkDone, ChunkResults, Items, Job, Sink},
    room::Ticket,
};

/// How long dropping a pool waits for its dispatcher to kill the workers and end: a safety net.
///
/// The dispatcher never waits for a worker (its sends only queue, its reads only take what is
/// there, and workers it lets go are reaped in the background), so it ends at once; should it
/// ever be held (by a user type's `Serialize`, say), `Drop` stops waiting for it here.
const DROP_WAIT: Duration = Duration::from_millis(500);

/// Dedicated workers serving tasks: submit an item, get a [`TaskHandle`] whose result arrives
/// later, or [`map`](Self::map) a whole list.
///
/// # Threads and processes
///
/// One dispatcher thread per pool owns the workers: it has them started, sends them tasks (as
/// many each as cover a round trip of its recent service time, or
/// [`in_flight_per_worker`](crate::WorkerPoolBuilder::in_flight_per_worker) when set, to the
/// least loaded), reads their replies as they become readable (each task's as soon as it is
/// done), takes back the tasks waiting behind one that runs long while another worker is idle,
/// times tasks out and replaces workers that died. It never waits for one worker: a request is queued and written as the worker's
/// input takes it, replies are read as the one readiness layer reports them, a worker's death
/// is seen through its pidfd (even while a grandchild it forked holds its channel), and a worker
/// let go is reaped in the background. Every worker is started by worker-bootstrap's one
/// long-lived spawner thread, so it lives as long as the pool, whichever thread built the pool.
///
/// Submitting threads talk to the dispatcher through a bounded queue: when
/// [`queue_bound`](crate::WorkerPoolBuilder::queue_bound) tasks wait, [`submit`](Self::submit)
/// blocks, [`submit_async`](Self::submit_async) waits as a future and
/// [`try_submit`](Self::try_submit) hands the item back, so a fast producer is held back
/// instead of filling memory. `&TaskPool` can be shared between threads.
///
/// # Failures
///
/// A worker that dies fails only the task it was running ([`Error::Worker`], carrying
/// [`worker_bootstrap::Error::WorkerExited`] with its exit status or signal and the tail of its
/// standard error); the tasks it held and had not started go to another worker, it is replaced
/// and the others go on. So is a worker killed for a task timeout. A worker that breaks the
/// task protocol ([`Error::Protocol`]) is replaced too, and every task it held fails with that
/// error: every request and reply carries an id, and a reply that answers no task, or another
/// task than the one its worker runs, is never handed to a task.
/// An item, or a result, that cannot be encoded into one frame fails alone
/// ([`Error::Encode`]), even when it travels with others. Past the restart limit
/// ([`max_restarts`](crate::WorkerPoolBuilder::max_restarts)) the pool fails: every task
/// queued, in flight or submitted later fails with [`Error::PoolFailed`]. So does every task
/// when user code on the dispatcher thread (the items' `Serialize`, the outputs'
/// `Deserialize`) panics.
///
/// # Shutdown
///
/// [`close`](Self::close) lets the queued and in-flight tasks finish, then closes every worker.
/// Dropping the pool kills and reaps every worker at once, whatever they do (one that takes no
/// input included), and returns within half a second; tasks not finished fail with
/// [`Error::Closed`].
pub struct TaskPool<W: TaskWorker> {
    tx: Option<Sender<JobOf<W>>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Disconnected once the dispatcher thread has ended.
    alive: Receiver<()>,
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
    /// The most tasks one worker has held in flight at once since the pool started: what the
    /// adaptive depth (or a pinned
    /// [`in_flight_per_worker`](crate::WorkerPoolBuilder::in_flight_per_worker)) reached.
    pub max_in_flight: usize,
    /// Tasks answered (including those whose handler returned an error).
    pub completed: u64,
    /// Tasks that got no answer: their worker died or was killed, the pool failed, or the
    /// item could not be sent.
    pub failed: u64,
    /// Workers replaced after they died or a task timed out.
    pub restarted: u64,
    /// Workers replaced after serving their quota of tasks.
    pub recycled: u64,
    /// Tasks sent again, to another worker, which their worker had not started: given back
    /// while it ran a long task, or held by a worker killed for a task timeout.
    pub resent: u64,
}

impl<W: TaskWorker> TaskPool<W> {
    pub(crate) fn start(
        config: TaskConfig,
        queue_bound: usize,
        chunk_size: Option<usize>,
    ) -> Result<Self, Error> {
        let size = config.size;
        let (tx, rx) = crossbeam_channel::bounded(queue_bound);
        let Started {
            shared,
            thread,
            alive,
        } = dispatcher::start::<W>(config, rx)?;
        Ok(TaskPool {
            tx: Some(tx),
            shared,
            thread: Some(thread),
            alive,
            size,
            queue_bound,
            chunk_size,
        })
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
        self.shared.pids()
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
            max_in_flight: s.max_in_flight.load(Ordering::Relaxed),
            completed: s.completed.load(Ordering::Relaxed),
            failed: s.failed_tasks.load(Ordering::Relaxed),
            restarted: s.restarted.load(Ordering::Relaxed),
            recycled: s.recycled.load(Ordering::Relaxed),
            resent: s.resent.load(Ordering::Relaxed),
        }
    }

    /// Submits one task, blocking while the queue is full.
    pub fn submit(&self, item: W::Item) -> Result<TaskHandle<W::Output>, Error> {
        if let Some(e) = self.shared.failed_error() {
            return Err(e);
        }
        let (tx, rx) = inbox::channel(&self.shared.waiting);
        self.send(Job::one(item, tx)).map_err(|_| self.gone())?;
        Ok(TaskHandle::new(rx))
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
        let (tx, rx) = inbox::channel(&self.shared.waiting);
        match self.try_send(Job::one(item, tx)) {
            Ok(()) => Ok(TaskHandle::new(rx)),
            Err(TrySendError::Full(job)) => Err(TrySubmitError::Full(
                job.into_items().pop().expect("a single task's item"),
            )),
            Err(TrySendError::Disconnected(_)) => Err(TrySubmitError::Pool(self.gone())),
        }
    }

    /// Submits one task, waiting for room in the queue as a future: the async face of
    /// [`submit`](Self::submit), for callers on an executor's thread, which it never blocks.
    ///
    /// The future gives the task's [`TaskHandle`], itself a future of the result, so
    /// `pool.submit_async(item).await?.await?` runs one task from async code. It fails as
    /// `submit` does: [`Error::PoolFailed`] once the pool failed, [`Error::Closed`] once its
    /// dispatcher is gone. Any executor drives it (tokio, async-std, smol, a hand-written
    /// `block_on`): the dispatcher thread wakes the submitter as the queue frees room, and the
    /// task that awaits a handle as its result arrives, and nothing else.
    ///
    /// ```rust,standalone_crate
    /// use std::{future::Future, pin::pin, sync::Arc, task::{Context, Poll, Wake}, thread::Thread};
    /// use worker_bootstrap::{BootstrapProfile, registry};
    /// use worker_core::{BoxError, Worker};
    /// use worker_pool::{RegistryExt, TaskWorker, WorkerPoolBuilder};
    ///
    /// struct Squarer;
    ///
    /// impl Worker for Squarer {
    ///     const NAME: &'static str = "squarer";
    ///     type Args = ();
    ///     fn new((): ()) -> Result<Self, BoxError> {
    ///         Ok(Squarer)
    ///     }
    /// }
    ///
    /// impl TaskWorker for Squarer {
    ///     type Item = i64;
    ///     type Output = i64;
    ///     fn handle(&mut self, n: i64) -> Result<i64, String> {
    ///         Ok(n * n)
    ///     }
    /// }
    ///
    /// fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     registry().task::<Squarer>().run_if_worker();
    ///
    ///     let pool = WorkerPoolBuilder::new()
    ///         .profile(BootstrapProfile::new())
    ///         .size(2)
    ///         .queue_bound(1)
    ///         .build_tasks::<Squarer>()?;
    ///     // Under tokio this would be `async fn` code; any executor will do.
    ///     let squares = block_on(async {
    ///         let mut handles = Vec::new();
    ///         for n in 0..10 {
    ///             // With a queue of one, most of these wait for room, as futures.
    ///             handles.push(pool.submit_async(n).await?);
    ///         }
    ///         let mut squares = Vec::new();
    ///         for handle in handles {
    ///             squares.push(handle.await?);
    ///         }
    ///         Ok::<_, worker_pool::Error>(squares)
    ///     })?;
    ///     assert_eq!(squares, [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
    ///     Ok(())
    /// }
    ///
    /// /// The smallest executor: polls `future` on this thread, parking it in between.
    /// fn block_on<F: Future>(future: F) -> F::Output {
    ///     struct Unpark(Thread);
    ///     impl Wake for Unpark {
    ///         fn wake(self: Arc<Self>) {
    ///             self.0.unpark();
    ///         }
    ///     }
    ///     let waker = Arc::new(Unpark(std::thread::current())).into();
    ///     let mut cx = Context::from_waker(&waker);
    ///     let mut future = pin!(future);
    ///     loop {
    ///         match future.as_mut().poll(&mut cx) {
    ///             Poll::Ready(output) => return output,
    ///             Poll::Pending => std::thread::park(),
    ///         }
    ///     }
    /// }
    /// ```
    pub fn submit_async(&self, item: W::Item) -> Submit<'_, W> {
        let (tx, rx) = inbox::channel(&self.shared.waiting);
        Submit {
            pool: self,
            job: Some((Job::one(item, tx), rx)),
            ticket: Ticket::default(),
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

    fn nudge(&self) {
        self.shared.nudge();
    }

    fn gone(&self) -> Error {
        self.shared.failed_error().unwrap_or(Error::Closed)
    }

    fn chunks(&self, items: Vec<W::Item>) -> Vec<(usize, Vec<W::Item>)> {
        let per = self.chunk_size.unwrap_or_else(|| {
            // Python's Pool.map: about four chunks per worker.
            let chunks = self.size.saturating_mul(4);
            let (size, extra) = (items.len() / chunks, items.len() % chunks);
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
        let items: Vec<_> = items.into_iter().collect();
        let answered = vec![false; items.len()];
        let chunks = self.chunks(items);
        let (tx, rx) = inbox::channel(&self.shared.waiting);
        MapUnordered {
            pool: self,
            chunks: chunks.into_iter(),
            held: None,
            outstanding: 0,
            answered,
            tx: Some(tx),
            rx,
            ready: VecDeque::new(),
            yielded: 0,
            ticket: Ticket::default(),
        }
    }

    /// [`map_unordered`](Self::map_unordered) as a [`Stream`](futures_core::Stream), for async
    /// callers: yields `(input index, result)` as chunks finish, in any order, waiting for
    /// results and for room in the queue as a future, never blocking the executor's thread
    /// (feature `stream`).
    ///
    /// ```rust,no_run
    /// use futures_core::Stream;
    /// # use worker_pool::{TaskPool, TaskWorker};
    /// # use std::{future::poll_fn, pin::Pin};
    /// async fn sum_of_squares<W: TaskWorker<Item = u64, Output = u64>>(
    ///     pool: &TaskPool<W>,
    /// ) -> Result<u64, worker_pool::Error> {
    ///     let mut squares = pool.map_unordered_stream(0..1000);
    ///     let mut sum = 0;
    ///     // Or `StreamExt::next` from the `futures` crate, or `tokio_stream`'s.
    ///     while let Some((_index, square)) =
    ///         poll_fn(|cx| Pin::new(&mut squares).poll_next(cx)).await
    ///     {
    ///         sum += square?;
    ///     }
    ///     Ok(sum)
    /// }
    /// ```
    #[cfg(feature = "stream")]
    pub fn map_unordered_stream<I>(&self, items: I) -> MapUnorderedStream<'_, W>
    where
        I: IntoIterator<Item = W::Item>,
    {
        MapUnorderedStream(self.map_unordered(items))
    }

    /// As [`TaskPool::map`], calling `progress(completed, total)` after each item's result
    /// arrives (in the caller's thread, between results; keep it quick).
    ///
    /// [`TaskPool::map_unordered`] is the other way to watch long work: it yields each result
    /// as it comes, and knows how many remain ([`MapUnordered::completed`],
    /// [`MapUnordered::total`], `len()`). Neither costs anything when unused.
    pub fn map_with_progress<I>(
        &self,
        items: I,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Vec<W::Output>, Error>
    where
        I: IntoIterator<Item = W::Item>,
    {
        let mut results: Vec<Option<Result<W::Output, Error>>> = Vec::new();
        let mut unordered = self.map_unordered(items);
        let total = unordered.total();
        results.resize_with(total, || None);
        while let Some((index, result)) = unordered.next() {
            results[index] = Some(result);
            progress(unordered.completed(), total);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(Error::Closed)))
            .collect()
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
        self.shared.abort();
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            // The dispatcher kills the workers and ends at once (see `DROP_WAIT`).
            if let Err(RecvTimeoutError::Disconnected) = self.alive.recv_timeout(DROP_WAIT) {
                let _ = thread.join();
            }
        }
        // The dispatcher's end did this already, unless it is still held: no wait for a
        // result outlives the pool.
        self.shared.waiting.end();
    }
}

/// The result of one submitted task, to wait for: blocking ([`wait`](Self::wait),
/// [`wait_timeout`](Self::wait_timeout)), without waiting ([`try_result`](Self::try_result)),
/// or as a [`Future`] (`.await`).
///
/// A result is delivered once: after a call returned it, later calls return
/// [`Error::Closed`], as do calls once the pool was dropped without the task's result.
///
/// # Async
///
/// `TaskHandle` is a future of the task's result, under any executor: whoever completes the
/// task (the pool's dispatcher thread) wakes the task that awaits it, with no thread polling
/// and none spent per task. Awaiting it gives exactly what [`wait`](Self::wait) gives, errors
/// included. Dropping it, awaited or not, leaves the task to run, as dropping a handle does.
/// With [`TaskPool::submit_async`], neither submitting nor awaiting ever blocks the executor's
/// thread:
///
/// ```rust,no_run
/// # use worker_pool::{TaskPool, TaskWorker};
/// async fn square_all<W: TaskWorker<Item = i64, Output = i64>>(
///     pool: &TaskPool<W>,
/// ) -> Result<Vec<i64>, worker_pool::Error> {
///     let mut handles = Vec::new();
///     for n in 0..100 {
///         // Waits for room in the queue as a future, not by blocking.
///         handles.push(pool.submit_async(n).await?);
///     }
///     let mut squares = Vec::new();
///     for handle in handles {
///         squares.push(handle.await?);
///     }
///     Ok(squares)
/// }
/// ```
#[derive(Debug)]
pub struct TaskHandle<O> {
    rx: InboxReceiver<Result<O, Error>>,
    /// A call returned the result.
    taken: AtomicBool,
}

impl<O: Send + 'static> TaskHandle<O> {
    fn new(rx: InboxReceiver<Result<O, Error>>) -> Self {
        TaskHandle {
            rx,
            taken: AtomicBool::new(false),
        }
    }

    /// Waits for the result.
    pub fn wait(self) -> Result<O, Error> {
        self.wait_until(None)
    }

    /// Waits at most `timeout` ([`Error::Timeout`] leaves the task running and the handle
    /// usable; [`Duration::MAX`] waits for ever).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<O, Error> {
        self.wait_until(worker_core::deadline_after(timeout))
            .map_err(|e| match e {
                Error::Timeout { .. } => Error::Timeout { waited: timeout },
                other => other,
            })
    }

    /// The result if it is there, without waiting.
    pub fn try_result(&self) -> Option<Result<O, Error>> {
        if self.taken.load(Ordering::Relaxed) {
            return Some(Err(Error::Closed));
        }
        let result = match self.rx.try_recv() {
            TryRecv::Item(result) => result,
            TryRecv::Closed => Err(Error::Closed),
            TryRecv::Empty => return None,
        };
        self.taken.store(true, Ordering::Relaxed);
        Some(result)
    }

    fn wait_until(&self, deadline: Option<std::time::Instant>) -> Result<O, Error> {
        if self.taken.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        let Ok(result) = self.rx.recv_until(deadline) else {
            return Err(Error::Timeout {
                waited: Duration::ZERO,
            });
        };
        self.taken.store(true, Ordering::Relaxed);
        result.unwrap_or(Err(Error::Closed))
    }
}

impl<O: Send + 'static> Future for TaskHandle<O> {
    type Output = Result<O, Error>;

    /// The result once it is there (then [`Error::Closed`], should it be polled again).
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.taken.load(Ordering::Relaxed) {
            return Poll::Ready(Err(Error::Closed));
        }
        let result = std::task::ready!(self.rx.poll_recv(cx));
        self.taken.store(true, Ordering::Relaxed);
        Poll::Ready(result.unwrap_or(Err(Error::Closed)))
    }
}

/// Where a single task's result arrives.
type ResultOf<W> = InboxReceiver<Result<<W as TaskWorker>::Output, Error>>;

/// A `map` item's input index and result.
#[cfg(feature = "stream")]
type IndexedResult<W> = (usize, Result<<W as TaskWorker>::Output, Error>);

/// The future of [`TaskPool::submit_async`]: submits one task once the queue has room, waiting
/// for it as a future rather than by blocking.
///
/// Dropped before it completes, it submits nothing (the item is dropped with it).
#[must_use = "futures do nothing unless polled"]
pub struct Submit<'a, W: TaskWorker> {
    pool: &'a TaskPool<W>,
    /// The job until the queue takes it, and the receiver of its result.
    job: Option<(JobOf<W>, ResultOf<W>)>,
    ticket: Ticket,
}

impl<W: TaskWorker> fmt::Debug for Submit<'_, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submit")
            .field("pending", &self.job.is_some())
            .finish_non_exhaustive()
    }
}

// Nothing in it is pinned: the job moves into the queue by value.
impl<W: TaskWorker> Unpin for Submit<'_, W> {}

impl<W: TaskWorker> Future for Submit<'_, W> {
    type Output = Result<TaskHandle<W::Output>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let pool = this.pool;
        let mut waiting = false;
        loop {
            if let Some(e) = pool.shared.failed_error() {
                this.job = None;
                pool.shared.room.leave(&mut this.ticket, false);
                return Poll::Ready(Err(e));
            }
            let Some((job, rx)) = this.job.take() else {
                return Poll::Ready(Err(Error::Closed));
            };
            match pool.try_send(job) {
                Ok(()) => {
                    pool.shared.room.leave(&mut this.ticket, true);
                    return Poll::Ready(Ok(TaskHandle::new(rx)));
                }
                Err(TrySendError::Full(job)) => {
                    this.job = Some((job, rx));
                    if waiting {
                        return Poll::Pending;
                    }
                    // Then once more: room freed since the first try is not missed.
                    pool.shared.room.wait(&mut this.ticket, cx.waker());
                    waiting = true;
                }
                Err(TrySendError::Disconnected(_)) => {
                    pool.shared.room.leave(&mut this.ticket, false);
                    return Poll::Ready(Err(pool.gone()));
                }
            }
        }
    }
}

impl<W: TaskWorker> Drop for Submit<'_, W> {
    fn drop(&mut self) {
        self.pool.shared.room.leave(&mut self.ticket, false);
    }
}

/// The iterator of [`TaskPool::map_unordered`]: submits chunks as the queue takes them and
/// yields `(input index, result)` as they finish.
pub struct MapUnordered<'a, W: TaskWorker> {
    pool: &'a TaskPool<W>,
    chunks: std::vec::IntoIter<(usize, Vec<W::Item>)>,
    /// A chunk the queue had no room for.
    held: Option<(usize, Vec<W::Item>)>,
    /// Items submitted and not answered.
    outstanding: usize,
    /// Which items were answered, to answer the others if the dispatcher is gone.
    answered: Vec<bool>,
    /// Cloned into each chunk's job; dropped once every chunk is submitted, so that results
    /// the dispatcher can no longer give end the wait.
    tx: Option<InboxSender<ChunkDone<W::Output>>>,
    rx: InboxReceiver<ChunkDone<W::Output>>,
    ready: VecDeque<(usize, Result<W::Output, Error>)>,
    /// Results handed out so far.
    yielded: usize,
    /// Its place in line for room in the queue, when polled as a stream.
    ticket: Ticket,
}

impl<W: TaskWorker> fmt::Debug for MapUnordered<'_, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapUnordered")
            .field("outstanding", &self.outstanding)
            .finish_non_exhaustive()
    }
}

impl<W: TaskWorker> MapUnordered<'_, W> {
    /// Submits what the queue takes without waiting, and at least one chunk when none is out:
    /// blocking for room without `cx`; with it, waiting for room as a future (`cx`'s task is
    /// woken when the queue has room).
    fn feed(&mut self, mut cx: Option<&mut Context<'_>>) {
        let mut waiting = false;
        while let Some((start, items)) = self.held.take().or_else(|| self.chunks.next()) {
            let Some(tx) = self.tx.clone() else { return };
            let len = items.len();
            let job = Job {
                items: Items::Many(items),
                sink: Sink::Map { start, tx },
            };
            let sent = if self.outstanding == 0 && cx.is_none() {
                self.pool.send(job).map_err(|job| (job, false))
            } else {
                self.pool.try_send(job).map_err(|e| match e {
                    TrySendError::Full(job) => (job, true),
                    TrySendError::Disconnected(job) => (job, false),
                })
            };
            match sent {
                Ok(()) => {
                    self.outstanding += len;
                    self.pool.shared.room.leave(&mut self.ticket, true);
                }
                Err((job, true)) => {
                    self.held = Some((start, job.into_items()));
                    // With nothing out, no result will wake the stream: room must. Then once
                    // more, so that room freed since the first try is not missed.
                    match cx.as_deref_mut() {
                        Some(cx) if self.outstanding == 0 && !waiting => {
                            self.pool.shared.room.wait(&mut self.ticket, cx.waker());
                            waiting = true;
                        }
                        _ => return,
                    }
                }
                Err((_, false)) => {
                    let e = self.pool.gone();
                    for i in start..start + len {
                        self.answer(i, Err(e.clone()));
                    }
                }
            }
        }
        self.tx = None;
    }

    fn answer(&mut self, index: usize, result: Result<W::Output, Error>) {
        if let Some(answered) = self.answered.get_mut(index) {
            *answered = true;
        }
        self.ready.push_back((index, result));
    }

    /// Answers the items of a chunk's results.
    fn take(&mut self, done: ChunkDone<W::Output>) {
        self.outstanding = self.outstanding.saturating_sub(done.results.len());
        match done.results {
            ChunkResults::Outcomes(outcomes, codec) => {
                for (k, outcome) in outcomes.into_iter().enumerate() {
                    self.answer(done.start + k, outcome.into_result(codec));
                }
            }
            ChunkResults::Failed { len, error } => {
                for i in done.start..done.start + len {
                    self.answer(i, Err(error.clone()));
                }
            }
        }
    }

    /// The dispatcher will not answer: every item submitted and not answered fails.
    fn abandon(&mut self) {
        let e = self.pool.gone();
        self.outstanding = 0;
        let missing: Vec<usize> = self
            .answered
            .iter()
            .enumerate()
            .filter(|(_, a)| !**a)
            .map(|(i, _)| i)
            .collect();
        let unsent = self.held.iter().map(|(s, i)| (*s, i.len()));
        let unsent: Vec<_> = unsent
            .chain(self.chunks.as_slice().iter().map(|(s, i)| (*s, i.len())))
            .collect();
        for i in missing {
            if !unsent.iter().any(|(s, l)| (*s..s + l).contains(&i)) {
                self.answer(i, Err(e.clone()));
            }
        }
    }

    /// The next result, as a future would give it: feeds the queue as it has room and never
    /// blocks; `cx`'s task is woken when a result or room comes.
    #[cfg(feature = "stream")]
    fn poll_next_result(&mut self, cx: &mut Context<'_>) -> Poll<Option<IndexedResult<W>>> {
        loop {
            if let Some(next) = self.ready.pop_front() {
                self.yielded += 1;
                return Poll::Ready(Some(next));
            }
            self.feed(Some(cx));
            if !self.ready.is_empty() {
                continue;
            }
            if self.outstanding == 0 {
                // Waiting for room for the next chunk, or done.
                return match self.held {
                    Some(_) => Poll::Pending,
                    None => Poll::Ready(None),
                };
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(done)) => self.take(done),
                Poll::Ready(None) => self.abandon(),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<W: TaskWorker> Drop for MapUnordered<'_, W> {
    fn drop(&mut self) {
        self.pool.shared.room.leave(&mut self.ticket, false);
    }
}

impl<W: TaskWorker> MapUnordered<'_, W> {
    /// How many items this map runs.
    pub fn total(&self) -> usize {
        self.answered.len()
    }

    /// How many results it has handed out so far.
    pub fn completed(&self) -> usize {
        self.yielded
    }
}

impl<W: TaskWorker> Iterator for MapUnordered<'_, W> {
    type Item = (usize, Result<W::Output, Error>);

    /// Every item gives exactly one result (its output or its error), so what remains is
    /// known exactly: a progress bar can be driven from it.
    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.total() - self.yielded;
        (left, Some(left))
    }

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(next) = self.ready.pop_front() {
                self.yielded += 1;
                return Some(next);
            }
            self.feed(None);
            if !self.ready.is_empty() {
                continue;
            }
            if self.outstanding == 0 {
                return None;
            }
            // The results come through `rx`, which closes when the dispatcher can no longer
            // give them (its thread ended, or the pool is gone).
            match self.rx.recv_until(None) {
                Ok(Some(done)) => self.take(done),
                _ => self.abandon(),
            }
        }
    }
}

impl<W: TaskWorker> ExactSizeIterator for MapUnordered<'_, W> {}

/// The [`Stream`](futures_core::Stream) of [`TaskPool::map_unordered_stream`]: submits chunks
/// as the queue takes them and yields `(input index, result)` as they finish, waiting for
/// either as a future, never blocking the executor's thread.
///
/// Every item gives exactly one result (its output or its error); `size_hint` says exactly how
/// many remain. Dropping the stream leaves the chunks submitted to run, and submits no other.
#[cfg(feature = "stream")]
#[derive(Debug)]
#[must_use = "streams do nothing unless polled"]
pub struct MapUnorderedStream<'a, W: TaskWorker>(MapUnordered<'a, W>);

#[cfg(feature = "stream")]
impl<W: TaskWorker> MapUnorderedStream<'_, W> {
    /// How many items this map runs.
    pub fn total(&self) -> usize {
        self.0.total()
    }

    /// How many results it has handed out so far.
    pub fn completed(&self) -> usize {
        self.0.completed()
    }
}

// Nothing in it is pinned: it owns its items and refers to the pool.
#[cfg(feature = "stream")]
impl<W: TaskWorker> Unpin for MapUnorderedStream<'_, W> {}

#[cfg(feature = "stream")]
impl<W: TaskWorker> futures_core::Stream for MapUnorderedStream<'_, W> {
    type Item = (usize, Result<W::Output, Error>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().0.poll_next_result(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

#[cfg(feature = "stream")]
impl<W: TaskWorker> futures_core::FusedStream for MapUnorderedStream<'_, W> {
    fn is_terminated(&self) -> bool {
        self.0.yielded == self.0.total()
    }
}
