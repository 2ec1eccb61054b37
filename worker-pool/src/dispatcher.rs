//! The task pool's dispatcher thread: owns the workers, feeds them, reads their replies.

use std::{
    collections::VecDeque,
    io,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{Ordering, fence},
    },
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use mio::{Events, Poll, Token, unix::SourceFd};
use worker_bootstrap::DedicatedWorker;

use crate::{
    Error, TaskWorker,
    builder::{RestartLimit, Spawner, TaskConfig},
    pool::register,
    task_worker::{Reply, Request},
    tasks::{ChunkDone, Shared, lock},
};

pub(crate) const WAKE: Token = Token(usize::MAX);

/// A task on its way: what to send and where its result goes.
pub(crate) struct Job<I, O> {
    pub request: Request<I>,
    pub completer: Completer<O>,
}

impl<I, O> Job<I, O> {
    pub fn into_item(self) -> I {
        match self.request {
            Request::One(item) => item,
            Request::Chunk(_) => unreachable!("only single tasks are handed back"),
        }
    }

    pub fn into_items(self) -> Vec<I> {
        match self.request {
            Request::Chunk(items) => items,
            Request::One(item) => vec![item],
        }
    }
}

pub(crate) enum Completer<O> {
    One(Sender<Result<O, Error>>),
    Chunk {
        start: usize,
        len: usize,
        tx: Sender<ChunkDone<O>>,
    },
    /// Single tasks that waited together and travel in one message (see `feed`).
    Batch(Vec<Sender<Result<O, Error>>>),
}

impl<O> Completer<O> {
    /// Tasks this stands for; a `map` chunk is one task.
    fn tasks(&self) -> usize {
        match self {
            Completer::Batch(txs) => txs.len(),
            _ => 1,
        }
    }

    fn fail(self, error: Error) {
        // A receiver that is gone did not want the result.
        match self {
            Completer::One(tx) => {
                let _ = tx.send(Err(error));
            }
            Completer::Chunk { start, len, tx } => {
                let _ = tx.send(ChunkDone {
                    start,
                    len,
                    result: Err(error),
                });
            }
            Completer::Batch(txs) => {
                for tx in txs {
                    let _ = tx.send(Err(error.duplicate()));
                }
            }
        }
    }
}

struct Slot<O> {
    worker: DedicatedWorker,
    /// Tasks sent and not answered, in the order the worker answers them.
    fifo: VecDeque<Completer<O>>,
    /// Tasks in `fifo`.
    load: usize,
    /// When the worker started the task at the head of `fifo`.
    head_since: Instant,
    sent: u64,
    /// Recycling: gets no more tasks, and is replaced once `fifo` is empty.
    retiring: bool,
    /// The poller said readable and we have not yet read to the end (it is edge-triggered).
    ready: bool,
}

impl<O> Slot<O> {
    fn new(worker: DedicatedWorker) -> Self {
        Slot {
            worker,
            fifo: VecDeque::new(),
            load: 0,
            head_since: Instant::now(),
            sent: 0,
            retiring: false,
            ready: false,
        }
    }
}

struct Dispatcher<W: TaskWorker> {
    spawner: Spawner,
    poll: Poll,
    events: Events,
    slots: Vec<Slot<W::Output>>,
    rx: Receiver<Job<W::Item, W::Output>>,
    shared: Arc<Shared>,
    in_flight: usize,
    task_timeout: Option<Duration>,
    recycle_after: Option<u64>,
    restarts: RestartLimit,
    /// The pool's handle let go of the queue: finish what is left, then end.
    closing: bool,
    /// A job taken from the queue that could not join the batch being built.
    held: Option<Job<W::Item, W::Output>>,
    failed: Option<Error>,
    next: usize,
}

/// The dispatcher thread's body. Workers are started here, never on the caller's thread: the
/// parent-death signal follows the thread that started a worker.
pub(crate) fn run<W: TaskWorker>(
    config: TaskConfig,
    poll: Poll,
    rx: Receiver<Job<W::Item, W::Output>>,
    shared: Arc<Shared>,
    ready: Sender<Result<(), Error>>,
) {
    let mut slots = Vec::with_capacity(config.size);
    for index in 0..config.size {
        let started = config
            .spawner
            .spawn()
            .and_then(|w| register(&poll, &w, index).map(|()| w));
        match started {
            Ok(worker) => slots.push(Slot::new(worker)),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        }
    }
    shared.workers.store(slots.len(), Ordering::Relaxed);
    *lock(&shared.pids) = slots
        .iter()
        .map(|s: &Slot<W::Output>| s.worker.pid())
        .collect();
    let _ = ready.send(Ok(()));
    let mut dispatcher = Dispatcher::<W> {
        spawner: config.spawner,
        events: Events::with_capacity(config.size + 8),
        poll,
        slots,
        rx,
        shared,
        in_flight: config.in_flight,
        task_timeout: config.task_timeout,
        recycle_after: config.recycle_after,
        restarts: config.restarts,
        closing: false,
        held: None,
        failed: None,
        next: 0,
    };
    dispatcher.serve();
}

impl<W: TaskWorker> Dispatcher<W> {
    fn serve(&mut self) {
        loop {
            if self.shared.abort.load(Ordering::SeqCst) {
                for slot in &mut self.slots {
                    let _ = slot.worker.kill();
                }
                lock(&self.shared.pids).clear();
                return;
            }
            self.read_replies();
            self.expire();
            self.feed();
            if self.failed.is_some() {
                return self.fail_forever();
            }
            if self.closing && self.held.is_none() && self.slots.iter().all(|s| s.load == 0) {
                for slot in self.slots.drain(..) {
                    let _ = slot.worker.close();
                }
                self.shared.workers.store(0, Ordering::Relaxed);
                lock(&self.shared.pids).clear();
                return;
            }
            let wants_tasks = !self.closing && self.pick().is_some();
            if wants_tasks {
                self.shared.sleeping.store(true, Ordering::SeqCst);
                fence(Ordering::SeqCst);
                if !self.rx.is_empty() {
                    self.shared.sleeping.store(false, Ordering::SeqCst);
                    continue;
                }
            }
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            let polled = self.poll.poll(&mut self.events, timeout);
            if wants_tasks {
                self.shared.sleeping.store(false, Ordering::SeqCst);
            }
            match polled {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    self.fail_pool(Error::PoolFailed {
                        reason: format!("cannot wait for workers: {source}"),
                    });
                    continue;
                }
            }
            for event in self.events.iter() {
                if let Some(slot) = self.slots.get_mut(event.token().0) {
                    slot.ready = true;
                }
            }
        }
    }

    /// The least loaded worker with room for a task, searching from after the last one used.
    fn pick(&self) -> Option<usize> {
        let n = self.slots.len();
        let mut best: Option<(usize, usize)> = None;
        for k in 0..n {
            let i = (self.next + k) % n;
            let slot = &self.slots[i];
            let load = slot.load;
            if slot.retiring || load >= self.in_flight {
                continue;
            }
            if load == 0 {
                return Some(i);
            }
            if best.is_none_or(|(_, l)| load < l) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Sends waiting tasks to workers with room. Single tasks waiting together go to one worker
    /// in one message, as many as it has room for: one write and one reply for the lot, which
    /// is what makes tiny tasks cheap when several are in flight.
    fn feed(&mut self) {
        while self.failed.is_none() {
            let Some(index) = self.pick() else { return };
            let job = match self.held.take() {
                Some(job) => job,
                None if self.closing => return,
                None => match self.rx.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) => return,
                    Err(TryRecvError::Disconnected) => {
                        self.closing = true;
                        return;
                    }
                },
            };
            let room = self.in_flight - self.slots[index].load;
            if room < 2 || !matches!(job.request, Request::One(_)) {
                self.send(index, job);
                continue;
            }
            let mut batch = vec![job];
            while batch.len() < room && !self.closing {
                match self.rx.try_recv() {
                    Ok(job) if matches!(job.request, Request::One(_)) => batch.push(job),
                    Ok(job) => {
                        self.held = Some(job);
                        break;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => self.closing = true,
                }
            }
            if batch.len() == 1 {
                let job = batch.pop().expect("one job");
                self.send(index, job);
                continue;
            }
            let mut items = Vec::with_capacity(batch.len());
            let mut txs = Vec::with_capacity(batch.len());
            for job in batch {
                if let (Request::One(item), Completer::One(tx)) = (job.request, job.completer) {
                    items.push(item);
                    txs.push(tx);
                }
            }
            let job = Job {
                request: Request::Chunk(items),
                completer: Completer::Batch(txs),
            };
            self.send(index, job);
        }
    }

    fn send(&mut self, index: usize, job: Job<W::Item, W::Output>) {
        self.next = (index + 1) % self.slots.len();
        let slot = &mut self.slots[index];
        let tasks = job.completer.tasks();
        // With a task timeout, a worker too stuck to take its input is a worker past its
        // timeout: the send gives up, and the worker is replaced like any lost one, instead of
        // holding the dispatcher (and every other worker) forever.
        let sent = match self.task_timeout {
            Some(timeout) => slot.worker.send_message_timeout(&job.request, timeout),
            None => slot.worker.send_message(&job.request),
        };
        match sent {
            Ok(()) => {
                if slot.load == 0 {
                    slot.head_since = Instant::now();
                    self.shared.busy.fetch_add(1, Ordering::Relaxed);
                }
                slot.fifo.push_back(job.completer);
                slot.load += tasks;
                slot.sent += tasks as u64;
                if self.recycle_after.is_some_and(|n| slot.sent >= n) {
                    slot.retiring = true;
                }
                self.shared.in_flight.fetch_add(tasks, Ordering::Relaxed);
            }
            // Encoding failed before anything was written: only this task is at fault.
            Err(source @ worker_bootstrap::Error::Channel { .. }) => {
                let pid = slot.worker.pid();
                self.shared
                    .failed_tasks
                    .fetch_add(tasks as u64, Ordering::Relaxed);
                job.completer.fail(Error::Worker { index, pid, source });
            }
            Err(source) => {
                let pid = slot.worker.pid();
                self.shared
                    .failed_tasks
                    .fetch_add(tasks as u64, Ordering::Relaxed);
                let error = Error::Worker { index, pid, source };
                let rest = error.duplicate();
                self.lost(index, error.duplicate(), rest);
                job.completer.fail(error);
            }
        }
    }

    fn read_replies(&mut self) {
        for index in 0..self.slots.len() {
            loop {
                if self.failed.is_some() {
                    return;
                }
                let slot = &mut self.slots[index];
                if !slot.ready && !slot.worker.has_buffered_message() {
                    break;
                }
                match slot.worker.try_receive_message::<Reply<W::Output>>() {
                    Ok(Some(reply)) => {
                        if !self.complete(index, reply) {
                            break;
                        }
                    }
                    Ok(None) => {
                        slot.ready = false;
                        break;
                    }
                    Err(source) => {
                        let pid = slot.worker.pid();
                        let error = Error::Worker { index, pid, source };
                        let rest = error.duplicate();
                        self.lost(index, error, rest);
                        break;
                    }
                }
            }
        }
    }

    /// Hands a reply to the task at the head of the worker's queue; `false` when the reply did
    /// not fit and the worker was replaced.
    fn complete(&mut self, index: usize, reply: Reply<W::Output>) -> bool {
        let slot = &mut self.slots[index];
        let pid = slot.worker.pid();
        let Some(completer) = slot.fifo.pop_front() else {
            self.protocol(index, pid, "a reply to no task");
            return false;
        };
        slot.head_since = Instant::now();
        let tasks = completer.tasks();
        slot.load -= tasks;
        if slot.load == 0 {
            self.shared.busy.fetch_sub(1, Ordering::Relaxed);
        }
        self.shared.in_flight.fetch_sub(tasks, Ordering::Relaxed);
        match (completer, reply) {
            (Completer::One(tx), Reply::One(result)) => {
                self.shared.completed.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(result.map_err(|message| Error::Task { message }));
            }
            (Completer::Chunk { start, len, tx }, Reply::Chunk(results))
                if results.len() == len =>
            {
                self.shared.completed.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(ChunkDone {
                    start,
                    len,
                    result: Ok(results),
                });
            }
            (Completer::Batch(txs), Reply::Chunk(results)) if results.len() == txs.len() => {
                self.shared
                    .completed
                    .fetch_add(tasks as u64, Ordering::Relaxed);
                for (tx, result) in txs.into_iter().zip(results) {
                    let _ = tx.send(result.map_err(|message| Error::Task { message }));
                }
            }
            (completer, _) => {
                let what = "a reply of the wrong shape";
                self.shared
                    .failed_tasks
                    .fetch_add(tasks as u64, Ordering::Relaxed);
                completer.fail(Error::Protocol { index, pid, what });
                self.protocol(index, pid, what);
                return false;
            }
        }
        let slot = &self.slots[index];
        if slot.retiring && slot.fifo.is_empty() {
            self.recycle(index);
            return false;
        }
        true
    }

    fn protocol(&mut self, index: usize, pid: u32, what: &'static str) {
        let error = Error::Protocol { index, pid, what };
        self.lost(index, error.duplicate(), error);
    }

    /// Kills the worker at the head of whose queue a task ran too long.
    fn expire(&mut self) {
        let Some(timeout) = self.task_timeout else {
            return;
        };
        let now = Instant::now();
        for index in 0..self.slots.len() {
            if self.failed.is_some() {
                return;
            }
            let slot = &mut self.slots[index];
            if slot.fifo.is_empty() || now < slot.head_since + timeout {
                continue;
            }
            let pid = slot.worker.pid();
            let head = Error::TaskTimeout {
                index,
                pid,
                timeout,
            };
            self.lost(index, head, Error::Cancelled { index, pid });
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let timeout = self.task_timeout?;
        self.slots
            .iter()
            .filter(|s| !s.fifo.is_empty())
            .map(|s| s.head_since + timeout)
            .min()
    }

    /// Replaces a worker that died or was killed, within the restart limit, then fails the
    /// tasks it held: the first (the one it was running) with `first`, the others with `rest`.
    /// Replacing first means that whoever sees a task fail finds the pool whole again.
    fn lost(&mut self, index: usize, first: Error, rest: Error) {
        let fifo = self.take_fifo(index);
        let slot = &mut self.slots[index];
        let fd = slot.worker.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        let _ = slot.worker.kill();
        let replaced = self.restarts.allow().and_then(|()| self.respawn(index));
        if replaced.is_ok() {
            self.shared.restarted.fetch_add(1, Ordering::Relaxed);
        }
        let mut first = Some(first);
        for completer in fifo {
            completer.fail(first.take().unwrap_or_else(|| rest.duplicate()));
        }
        if let Err(e) = replaced {
            self.fail_pool(e);
        }
    }

    /// Takes the tasks a worker held out of the counters.
    fn take_fifo(&mut self, index: usize) -> VecDeque<Completer<W::Output>> {
        let slot = &mut self.slots[index];
        let fifo = std::mem::take(&mut slot.fifo);
        let tasks = std::mem::take(&mut slot.load);
        if tasks > 0 {
            self.shared.busy.fetch_sub(1, Ordering::Relaxed);
        }
        self.shared.in_flight.fetch_sub(tasks, Ordering::Relaxed);
        self.shared
            .failed_tasks
            .fetch_add(tasks as u64, Ordering::Relaxed);
        fifo
    }

    /// Closes a worker that served its quota once it has nothing in flight, and starts another.
    fn recycle(&mut self, index: usize) {
        let fd = self.slots[index].worker.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        match self.respawn(index) {
            Ok(()) => {
                self.shared.recycled.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.fail_pool(e),
        }
    }

    /// Puts a fresh worker in `index`; the old one is closed (it is killed already, or it is
    /// idle and ends on end of input).
    fn respawn(&mut self, index: usize) -> Result<(), Error> {
        let worker = self.spawner.spawn()?;
        register(&self.poll, &worker, index)?;
        if let Some(pid) = lock(&self.shared.pids).get_mut(index) {
            *pid = worker.pid();
        }
        let old = std::mem::replace(&mut self.slots[index], Slot::new(worker));
        let _ = old.worker.close();
        Ok(())
    }

    fn fail_pool(&mut self, error: Error) {
        let error = match error {
            e @ Error::PoolFailed { .. } => e,
            other => Error::PoolFailed {
                reason: format!(
                    "cannot start a replacement worker: {}",
                    worker_core::error_chain(&other)
                ),
            },
        };
        if let Error::PoolFailed { reason } = &error {
            *lock(&self.shared.failed) = Some(reason.clone());
        }
        for index in 0..self.slots.len() {
            let _ = self.slots[index].worker.kill();
            for completer in self.take_fifo(index) {
                completer.fail(error.duplicate());
            }
        }
        self.shared.workers.store(0, Ordering::Relaxed);
        lock(&self.shared.pids).clear();
        self.failed = Some(error);
    }

    /// A failed pool answers every task with its error until the pool's handle lets go.
    fn fail_forever(&mut self) {
        let error = self.failed.take().expect("failed");
        if let Some(job) = self.held.take() {
            self.shared.failed_tasks.fetch_add(1, Ordering::Relaxed);
            job.completer.fail(error.duplicate());
        }
        for slot in &mut self.slots {
            let _ = slot.worker.kill();
        }
        while let Ok(job) = self.rx.recv() {
            self.shared.failed_tasks.fetch_add(1, Ordering::Relaxed);
            job.completer.fail(error.duplicate());
        }
    }
}
