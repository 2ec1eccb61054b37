//! The task pool's dispatcher thread: owns the workers, feeds them, reads their replies.

use std::{
    any::Any,
    collections::VecDeque,
    panic::{self, AssertUnwindSafe},
    sync::{
        Arc, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence},
    },
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use worker_bootstrap::DedicatedWorker;
use worker_core::PollerWaker;

use crate::{
    Error, TaskWorker,
    inbox::Waiting,
    job::{Items, Job, Sink},
    readiness::ReadySet,
    room::Room,
    supervisor::{LOG_TARGET, RestartLimit, Spawner},
    wire::{ReceivedReply, Request, Shape},
};

/// What a task pool's dispatcher needs.
#[derive(Debug)]
pub(crate) struct TaskConfig {
    pub(crate) spawner: Spawner,
    pub(crate) size: usize,
    /// Tasks in flight per worker: pinned, or `None` for the adaptive depth ([`Pace`]).
    pub(crate) in_flight: Option<usize>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) restarts: RestartLimit,
    pub(crate) recycle_after: Option<u64>,
}

/// State the dispatcher shares with the pool's handle.
#[derive(Debug)]
pub(crate) struct Shared {
    waker: PollerWaker,
    /// The dispatcher waits with room for more tasks: a submitter must wake it.
    sleeping: AtomicBool,
    /// Drop asked for an immediate end.
    abort: AtomicBool,
    /// Why the pool failed, once it did: set once, read on every submit without a lock.
    failed: OnceLock<String>,
    /// The workers' process ids, in index order.
    pids: Mutex<Vec<u32>>,
    pub(crate) workers: AtomicUsize,
    pub(crate) busy: AtomicUsize,
    pub(crate) in_flight: AtomicUsize,
    /// The most tasks one worker has held at once.
    pub(crate) max_in_flight: AtomicUsize,
    pub(crate) completed: AtomicU64,
    pub(crate) failed_tasks: AtomicU64,
    pub(crate) restarted: AtomicU64,
    pub(crate) recycled: AtomicU64,
    pub(crate) resent: AtomicU64,
    /// The pool's receivers that wait for results: ended as the dispatcher thread ends.
    pub(crate) waiting: Arc<Waiting>,
    /// Async submitters waiting for room in the queue: woken as jobs leave it.
    pub(crate) room: Room,
}

impl Shared {
    /// The pool's failure, once it failed.
    pub(crate) fn failed_error(&self) -> Option<Error> {
        self.failed.get().map(|reason| Error::PoolFailed {
            reason: reason.clone(),
        })
    }

    pub(crate) fn pids(&self) -> Vec<u32> {
        lock(&self.pids).clone()
    }

    pub(crate) fn wake(&self) {
        // A wake that fails leaves the dispatcher to its next event; nothing better to do.
        let _ = self.waker.wake();
    }

    /// Wakes the dispatcher if it waits for tasks; a dispatcher that is busy finds the task
    /// itself, which saves a system call per task under load.
    pub(crate) fn nudge(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
            self.wake();
        }
    }

    /// Asks the dispatcher to kill every worker and end now.
    pub(crate) fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
        self.wake();
    }
}

/// Locks a mutex whose data stays valid even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the pool's handle keeps of a dispatcher it started.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) shared: Arc<Shared>,
    pub(crate) thread: std::thread::JoinHandle<()>,
    /// Disconnected once the dispatcher thread has ended, however it ended.
    pub(crate) alive: Receiver<()>,
}

/// Starts the dispatcher thread of a pool of `W` workers taking jobs from `rx`, and waits
/// until its workers are up.
pub(crate) fn start<W: TaskWorker>(
    config: TaskConfig,
    rx: Receiver<JobOf<W>>,
) -> Result<Started, Error> {
    let ready = ReadySet::new(config.size, config.spawner.spin())?;
    let shared = Arc::new(Shared {
        waker: ready.waker(),
        sleeping: AtomicBool::new(false),
        abort: AtomicBool::new(false),
        failed: OnceLock::new(),
        pids: Mutex::new(Vec::new()),
        workers: AtomicUsize::new(0),
        busy: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
        completed: AtomicU64::new(0),
        failed_tasks: AtomicU64::new(0),
        restarted: AtomicU64::new(0),
        recycled: AtomicU64::new(0),
        resent: AtomicU64::new(0),
        waiting: Arc::default(),
        room: Room::default(),
    });
    let (started_tx, started_rx) = crossbeam_channel::bounded(1);
    let (alive_tx, alive) = crossbeam_channel::bounded::<()>(0);
    let thread = std::thread::Builder::new()
        .name(format!("worker-pool {}", W::NAME))
        .spawn({
            let shared = shared.clone();
            move || {
                let _alive = alive_tx;
                let _ended = Ended(shared.clone());
                run::<W>(config, ready, rx, shared, started_tx);
            }
        })
        .map_err(|e| Error::system("start the dispatcher thread", e))?;
    match started_rx.recv() {
        Ok(Ok(())) => Ok(Started {
            shared,
            thread,
            alive,
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(Error::PoolFailed {
                reason: "the dispatcher thread ended while starting the workers".into(),
            })
        }
    }
}

/// Ends, as the dispatcher thread ends (however it ends: its state, every job's sink
/// included, and its end of the queue are gone by then), every wait for a result that can no
/// longer come, and every async submitter's wait for room in a queue nobody takes from.
struct Ended(Arc<Shared>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.waiting.end();
        self.0.room.wake_all();
    }
}

pub(crate) type JobOf<W> = Job<<W as TaskWorker>::Item, <W as TaskWorker>::Output>;

/// A task sent and not fully answered: a single task, or a `map` chunk.
struct Pending<I, O> {
    id: u64,
    /// Items not answered yet.
    left: usize,
    /// Its items, kept until it is answered, to be sent again should its worker give it back
    /// or be killed before it started it.
    items: Items<I>,
    sink: Sink<O>,
    /// When it was sent.
    sent_at: Instant,
}

impl<I, O> Pending<I, O> {
    /// Tasks it counts for.
    fn tasks(&self) -> usize {
        self.sink.tasks()
    }

    /// The job again, to be sent to another worker (it was not started).
    fn into_job(self) -> Job<I, O> {
        Job {
            items: self.items,
            sink: self.sink,
        }
    }
}

/// The most tasks the adaptive depth keeps in flight at one worker.
const MAX_DEPTH: usize = 64;
/// Below this service time per task, a worker keeps at least two tasks in flight: it is never
/// left idle for a round trip, its service time keeps being measured, and a task waits behind
/// another for less than this.
const PIPELINE_BELOW: f64 = 1e-3;
/// The overhead assumed of a round trip before one was measured apart from the service time.
const OVERHEAD_PRIOR: f64 = 50e-6;
/// How long a worker's first task may run before the tasks behind it are taken back, while
/// its pace is not known yet.
const STALL_UNKNOWN: f64 = 1e-3;

/// A worker's recent pace, for the adaptive in-flight depth: moving averages (weight 1/8) of the
/// service time per task and of a round trip's overhead (from a request's send to its reply,
/// less its service time), in seconds.
///
/// The depth covers one round trip with service time: `1 + ceil(overhead / service - 1/8)`, at
/// least 2 while tasks take under [`PIPELINE_BELOW`], at most [`MAX_DEPTH`]; many tasks when
/// they are tiny, one when they are slow. A worker whose request at the head has run well past
/// its expected time is given nothing more (see [`Pace::stalled`]), so a slow task does not
/// hoard tiny ones behind it.
#[derive(Debug, Clone, Copy, Default)]
struct Pace {
    /// Service time per task; 0 until the first reply.
    service: f64,
    overhead: f64,
}

impl Pace {
    fn known(&self) -> bool {
        self.service > 0.0
    }

    /// Learns from a request of `tasks` tasks answered `elapsed` seconds after it was sent;
    /// `busy` when it was already at the worker as the one before it was answered, so that
    /// `since_previous` (the time since that answer) is its service time alone.
    fn learn(&mut self, tasks: usize, elapsed: f64, since_previous: Option<f64>) {
        let k = tasks.max(1) as f64;
        let ewma = |old: f64, new: f64| old + (new - old) / 8.0;
        if !self.known() {
            self.overhead = OVERHEAD_PRIOR.min(elapsed / 2.0);
            self.service = ((elapsed - self.overhead) / k).max(1e-9);
            return;
        }
        if let Some(service) = since_previous {
            self.service = ewma(self.service, (service / k).max(1e-9));
            return;
        }
        // Sent to an idle worker: the round trip is overhead plus service. What exceeds the
        // expected service counts as overhead only up to twice the overhead known (a slow task
        // is no slower channel); the rest is service.
        let excess = elapsed - self.service * k;
        if excess >= 0.0 {
            let sample = excess.min(2.0 * self.overhead + 10e-6);
            self.overhead = ewma(self.overhead, sample);
        }
        let service = ((elapsed - self.overhead) / k)
            .max(elapsed / (2.0 * k))
            .max(1e-9);
        self.service = ewma(self.service, service);
    }

    /// Tasks to keep in flight.
    fn depth(&self) -> usize {
        if !self.known() {
            return 1;
        }
        let cover = (self.overhead / self.service - 0.125).ceil().max(0.0);
        let floor = if self.service < PIPELINE_BELOW { 2 } else { 1 };
        (1 + cover.min(MAX_DEPTH as f64) as usize).clamp(floor, MAX_DEPTH)
    }

    /// Whether a task of `tasks` tasks that has run `age` seconds at the worker is well past
    /// the time expected of it: a slow task, which nothing more should queue behind.
    fn stalled(&self, tasks: usize, age: f64) -> bool {
        self.known() && age > self.stall_after(tasks)
    }

    /// After how many seconds at the worker a task of `tasks` tasks is well past the time
    /// expected of it.
    fn stall_after(&self, tasks: usize) -> f64 {
        2.0 * self.expected(tasks) + 100e-6
    }

    /// After how many seconds at the worker a task of `tasks` tasks has taken longer than
    /// expected, so that the tasks behind it are better taken back while another worker is
    /// idle (the cost of being wrong is one round trip); [`STALL_UNKNOWN`] while nothing is
    /// known.
    fn take_back_after(&self, tasks: usize) -> f64 {
        if !self.known() {
            return STALL_UNKNOWN;
        }
        self.expected(tasks) + 50e-6
    }

    /// The time from a send to the reply expected of a task of `tasks` tasks.
    fn expected(&self, tasks: usize) -> f64 {
        self.overhead + self.service * tasks as f64
    }
}

struct Slot<I, O> {
    worker: DedicatedWorker,
    /// Tasks sent and not answered, in the order the worker runs them.
    fifo: VecDeque<Pending<I, O>>,
    /// Tasks in `fifo`.
    load: usize,
    /// When the worker started the task at the head of `fifo`: when it was sent to an idle
    /// worker, else when the task before it was answered.
    head_since: Instant,
    sent: u64,
    /// Recycling: gets no more tasks, and is replaced once `fifo` is empty.
    retiring: bool,
    /// When its last request was answered.
    last_done: Instant,
    pace: Pace,
    /// A take-back was sent and not answered yet.
    taking_back: bool,
    /// It gave tasks back, and still runs the task it ran then: it gets no other until that
    /// one is answered, so that what it gave back does not come back to it.
    gave_back: bool,
}

impl<I, O> Slot<I, O> {
    fn new(worker: DedicatedWorker) -> Self {
        Slot {
            worker,
            fifo: VecDeque::new(),
            load: 0,
            head_since: Instant::now(),
            sent: 0,
            retiring: false,
            last_done: Instant::now(),
            pace: Pace::default(),
            taking_back: false,
            gave_back: false,
        }
    }
}

struct Dispatcher<W: TaskWorker> {
    spawner: Spawner,
    ready: ReadySet,
    slots: Vec<Slot<W::Item, W::Output>>,
    rx: Receiver<JobOf<W>>,
    shared: Arc<Shared>,
    /// Pinned depth, or `None` for each worker's [`Pace`].
    in_flight: Option<usize>,
    task_timeout: Option<Duration>,
    recycle_after: Option<u64>,
    restarts: RestartLimit,
    /// The pool's handle let go of the queue: finish what is left, then end.
    closing: bool,
    /// Jobs to send before any from the queue: one taken that could not join the batch being
    /// built, or the items of a batch held back while their worker's input was full.
    held: VecDeque<JobOf<W>>,
    failed: Option<Error>,
    /// Where the search for a worker starts, after the last one used.
    next: usize,
    /// The id of the next request.
    next_id: u64,
    /// Jobs taken from the queue since async submitters waiting for room were last woken.
    taken: usize,
}

/// The dispatcher thread's body.
fn run<W: TaskWorker>(
    config: TaskConfig,
    mut ready: ReadySet,
    rx: Receiver<JobOf<W>>,
    shared: Arc<Shared>,
    started: Sender<Result<(), Error>>,
) {
    let mut slots = Vec::with_capacity(config.size);
    for index in 0..config.size {
        match config.spawner.spawn_watched(&mut ready, index) {
            Ok(worker) => slots.push(Slot::new(worker)),
            Err(e) => {
                for slot in slots {
                    slot.worker.close_in_background();
                }
                let _ = started.send(Err(e));
                return;
            }
        }
    }
    shared.workers.store(slots.len(), Ordering::Relaxed);
    *lock(&shared.pids) = slots
        .iter()
        .map(|s: &Slot<W::Item, W::Output>| s.worker.pid())
        .collect();
    let _ = started.send(Ok(()));
    let mut dispatcher = Dispatcher::<W> {
        spawner: config.spawner,
        ready,
        slots,
        rx,
        shared,
        in_flight: config.in_flight,
        task_timeout: config.task_timeout,
        recycle_after: config.recycle_after,
        restarts: config.restarts,
        closing: false,
        held: VecDeque::new(),
        failed: None,
        next: 0,
        next_id: 0,
        taken: 0,
    };
    // User code runs here (the items' `Serialize`, the outputs' `Deserialize`): if it panics,
    // the pool fails as a whole, at once, instead of leaving its callers waiting.
    let served = panic::catch_unwind(AssertUnwindSafe(|| dispatcher.serve()));
    if let Err(panic) = served {
        dispatcher.panicked(&*panic);
        dispatcher.fail_forever();
    }
}

/// Whether a worker's error says its process ended (as opposed to a channel it broke).
fn exited(error: &worker_bootstrap::Error) -> bool {
    matches!(
        error,
        worker_bootstrap::Error::WorkerExited { .. }
            | worker_bootstrap::Error::ExitStatusLost { .. }
    )
}

fn panic_text(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without text")
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
            self.flush_requests();
            self.read_replies();
            self.expire();
            self.take_back();
            self.feed();
            self.shared.room.freed(std::mem::take(&mut self.taken));
            if self.failed.is_some() {
                return self.fail_forever();
            }
            if self.closing && self.held.is_empty() && self.slots.iter().all(|s| s.load == 0) {
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
            let waited = self.ready.wait(self.next_deadline());
            if wants_tasks {
                self.shared.sleeping.store(false, Ordering::SeqCst);
            }
            if let Err(e) = waited {
                self.fail_pool(Error::PoolFailed {
                    reason: format!("cannot wait for workers: {}", worker_core::error_chain(&e)),
                });
            }
        }
    }

    /// Tasks worker `index` may have in flight now.
    fn depth(&self, index: usize) -> usize {
        self.in_flight
            .unwrap_or_else(|| self.slots[index].pace.depth())
    }

    /// The least loaded worker with room for a task, searching from after the last one used.
    fn pick(&self) -> Option<usize> {
        let n = self.slots.len();
        let mut best: Option<(usize, usize)> = None;
        let now = Instant::now();
        for k in 0..n {
            let i = (self.next + k) % n;
            let slot = &self.slots[i];
            let load = slot.load;
            // A worker whose input has not taken its last request yet gets no other: what
            // waits for a worker waits in the queue, where any worker can take it.
            if slot.retiring
                || slot.gave_back
                || load >= self.depth(i)
                || slot.worker.queued_bytes() > 0
            {
                continue;
            }
            // Adaptive depth: nothing queues behind a task running well past its expected time.
            if self.in_flight.is_none()
                && slot.fifo.front().is_some_and(|head| {
                    let age = now.saturating_duration_since(slot.head_since);
                    slot.pace.stalled(head.tasks(), age.as_secs_f64())
                })
            {
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
    /// in one message, as many as it has room for: one write for the lot, which is what makes
    /// tiny tasks cheap when several are in flight. The worker still answers each of them as
    /// soon as it is done.
    fn feed(&mut self) {
        while self.failed.is_none() {
            let Some(index) = self.pick() else { return };
            let Some(job) = self.next_job() else { return };
            let room = self.depth(index) - self.slots[index].load;
            if room < 2 || !matches!(job.sink, Sink::One(_)) {
                self.send(index, job);
                continue;
            }
            let mut batch = vec![job];
            while batch.len() < room {
                match self.next_job() {
                    Some(job) if matches!(job.sink, Sink::One(_)) => batch.push(job),
                    Some(job) => {
                        self.held.push_front(job);
                        break;
                    }
                    None => break,
                }
            }
            if batch.len() == 1 {
                let job = batch.pop().expect("one job");
                self.send(index, job);
                continue;
            }
            let mut items = Vec::with_capacity(batch.len());
            let mut txs = VecDeque::with_capacity(batch.len());
            for job in batch {
                if let (Items::One(item), Sink::One(tx)) = (job.items, job.sink) {
                    items.push(item);
                    txs.push_back(tx);
                }
            }
            self.send(
                index,
                Job {
                    items: Items::Many(items),
                    sink: Sink::Batch(txs),
                },
            );
        }
    }

    /// The next job to send: a held one (given back, or put aside) first, then the queue's.
    fn next_job(&mut self) -> Option<JobOf<W>> {
        if let Some(job) = self.held.pop_front() {
            return Some(job);
        }
        if self.closing {
            return None;
        }
        match self.take_job() {
            Ok(job) => Some(job),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.closing = true;
                None
            }
        }
    }

    /// The next job from the queue, counted so that as many async submitters waiting for room
    /// are woken.
    fn take_job(&mut self) -> Result<JobOf<W>, TryRecvError> {
        let job = self.rx.try_recv()?;
        self.taken += 1;
        Ok(job)
    }

    fn send(&mut self, index: usize, job: JobOf<W>) {
        self.next = (index + 1) % self.slots.len();
        self.send_items(index, job.items, job.sink);
    }

    /// Sends `items` to worker `index` as one request. Items that cannot travel together
    /// (their message is over the frame limit, or one of them does not encode) are sent in
    /// halves, so that only an item that cannot travel on its own fails, with
    /// [`Error::Encode`]; its worker is not at fault. A half that finds the worker's input
    /// still busy with the one before waits with the queued jobs, for any worker.
    fn send_items(&mut self, index: usize, mut items: Items<W::Item>, mut sink: Sink<W::Output>) {
        let len = items.len();
        if self.failed.is_some() || len == 0 {
            self.shared
                .failed_tasks
                .fetch_add(sink.tasks() as u64, Ordering::Relaxed);
            return sink.fail(len, self.gone());
        }
        if self.slots[index].worker.queued_bytes() > 0 {
            return self.held.push_back(Job { items, sink });
        }
        let shape = match sink {
            Sink::Map { .. } => Shape::Chunk,
            Sink::One(_) | Sink::Batch(_) => Shape::Each,
        };
        let id = self.next_id;
        // The items' `Serialize` is user code: a panic fails the pool (see `run`), these tasks
        // included.
        let written = panic::catch_unwind(AssertUnwindSafe(|| {
            self.write_request(index, shape, id, items.as_slice())
        }));
        let written = match written {
            Ok(written) => written,
            Err(panic) => {
                self.panicked(&*panic);
                return self.send_items(index, items, sink);
            }
        };
        match written {
            Ok(()) => {
                let slot = &mut self.slots[index];
                let tasks = sink.tasks();
                let now = Instant::now();
                if slot.load == 0 {
                    slot.head_since = now;
                    self.shared.busy.fetch_add(1, Ordering::Relaxed);
                }
                match (items, sink) {
                    // Tasks of their own, answered one by one: `id`, `id + 1`, ...
                    (Items::Many(items), Sink::Batch(txs)) => {
                        for (k, (item, tx)) in items.into_iter().zip(txs).enumerate() {
                            slot.fifo.push_back(Pending {
                                id: id + k as u64,
                                left: 1,
                                items: Items::One(item),
                                sink: Sink::One(tx),
                                sent_at: now,
                            });
                        }
                    }
                    (items, sink) => slot.fifo.push_back(Pending {
                        id,
                        left: len,
                        items,
                        sink,
                        sent_at: now,
                    }),
                }
                self.next_id += match shape {
                    Shape::Each => len as u64,
                    Shape::Chunk => 1,
                };
                slot.load += tasks;
                self.shared
                    .max_in_flight
                    .fetch_max(slot.load, Ordering::Relaxed);
                slot.sent += tasks as u64;
                if self.recycle_after.is_some_and(|n| slot.sent >= n) {
                    slot.retiring = true;
                }
                self.shared.in_flight.fetch_add(tasks, Ordering::Relaxed);
                // The rest of the request goes as the worker's input finds room.
                if slot.worker.queued_bytes() > 0 {
                    if let Err(e) = self.ready.want_write(index, &mut slot.worker, true) {
                        self.lost(index, e.clone(), Some(e));
                    }
                }
            }
            // Nothing was queued: the request did not encode.
            Err(worker_bootstrap::Error::Channel {
                source:
                    source @ (worker_channel::Error::FrameTooLarge { .. }
                    | worker_channel::Error::Encode { .. }),
                ..
            }) => {
                if len == 1 {
                    self.shared.failed_tasks.fetch_add(1, Ordering::Relaxed);
                    return sink.fail(
                        1,
                        Error::Encode {
                            what: "item",
                            source: Arc::new(source),
                        },
                    );
                }
                let rest = items.split_off(len / 2);
                let rest_sink = sink.split_off(len / 2);
                self.send_items(index, items, sink);
                self.send_items(index, rest, rest_sink);
            }
            // Nothing was queued either (`pick` and the check above keep a worker's queue to
            // one request, so this does not happen): the items wait for a worker.
            Err(worker_bootstrap::Error::QueueFull { .. }) => {
                self.held.push_back(Job { items, sink });
            }
            Err(source) => {
                let pid = self.slots[index].worker.pid();
                let died = exited(&source);
                let error = Error::worker(index, pid, source);
                if died {
                    // Never started: another worker runs it.
                    self.held.push_front(Job { items, sink });
                    return self.lost_worker(index, error);
                }
                self.shared
                    .failed_tasks
                    .fetch_add(sink.tasks() as u64, Ordering::Relaxed);
                self.lost(index, error.clone(), Some(error.clone()));
                sink.fail(len, error);
            }
        }
    }

    /// [`lost`](Self::lost) for a worker that failed with `error`: when its process died,
    /// only the task it ran fails, and those it had not started go to another worker; when it
    /// broke its channel or the protocol, every task it held fails.
    fn lost_worker(&mut self, index: usize, error: Error) {
        let died = matches!(&error, Error::Worker { source, .. } if exited(source));
        let rest = (!died).then(|| error.clone());
        self.lost(index, error, rest);
    }

    /// The one place a request is written to a worker: it is queued, and written as far as
    /// the worker's input takes it now; the rest goes as the input finds room
    /// ([`flush_requests`](Self::flush_requests)). Nothing here waits for a worker, so a worker
    /// too stuck to take its input holds up no other, nor the pool's `Drop`; a task timeout
    /// replaces it like any worker past its timeout.
    ///
    /// A request that cannot be encoded (over the frame limit, or refused by the codec) is not
    /// queued at all: halving a batch relies on it.
    fn write_request(
        &mut self,
        index: usize,
        shape: Shape,
        id: u64,
        items: &[W::Item],
    ) -> Result<(), worker_bootstrap::Error> {
        let request = Request::Run { shape, id, items };
        self.slots[index].worker.queue_message(&request)
    }

    /// Writes what is queued to the workers whose input found room.
    fn flush_requests(&mut self) {
        for index in 0..self.slots.len() {
            if self.failed.is_some() {
                return;
            }
            if !self.ready.is_writable(index) {
                continue;
            }
            self.ready.written(index);
            let slot = &mut self.slots[index];
            let flushed = match slot.worker.flush() {
                Ok(true) => self.ready.want_write(index, &mut slot.worker, false),
                Ok(false) => Ok(()),
                Err(source) => Err(Error::worker(index, slot.worker.pid(), source)),
            };
            if let Err(error) = flushed {
                self.lost_worker(index, error);
            }
        }
    }

    /// Reads every reply the workers' events announce, each worker until it has no more.
    fn read_replies(&mut self) {
        for index in 0..self.slots.len() {
            loop {
                if self.failed.is_some() {
                    return;
                }
                let slot = &mut self.slots[index];
                let received = self
                    .ready
                    .try_receive::<ReceivedReply<W::Output>>(index, &mut slot.worker);
                match received {
                    Ok(Some(reply)) => {
                        if !self.complete(index, reply) {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(source) => {
                        let pid = slot.worker.pid();
                        self.lost_worker(index, Error::worker(index, pid, source));
                        break;
                    }
                }
            }
        }
    }

    /// Takes a worker's message in: outcomes for the task at the head of its queue, or the
    /// answer to a take-back. `false` when the message did not fit and the worker was replaced,
    /// or the worker retired.
    fn complete(&mut self, index: usize, reply: ReceivedReply<W::Output>) -> bool {
        let (id, outcomes) = match reply {
            ReceivedReply::Outcomes(id, outcomes) => (id, outcomes),
            ReceivedReply::NotStarted(ids) => return self.given_back(index, &ids),
        };
        let slot = &mut self.slots[index];
        let codec = slot.worker.codec();
        let Some(head) = slot.fifo.front_mut() else {
            self.protocol(index, "a reply to no task");
            return false;
        };
        if id != head.id {
            self.protocol(index, "a reply to another task than the one it runs");
            return false;
        }
        if outcomes.is_empty() || outcomes.len() > head.left {
            self.protocol(index, "a reply with more results than the task has items");
            return false;
        }
        head.left -= outcomes.len();
        if head.left > 0 {
            head.sink.deliver(outcomes, codec);
            return true;
        }
        // Counted before the results go, so that whoever has them sees the counters agree.
        let mut done = slot.fifo.pop_front().expect("the head");
        let now = Instant::now();
        // At the worker already when the one before was answered: the time since is service.
        let since_previous = (done.sent_at <= slot.last_done)
            .then(|| now.saturating_duration_since(slot.last_done).as_secs_f64());
        let elapsed = now.saturating_duration_since(done.sent_at).as_secs_f64();
        let tasks = done.tasks();
        slot.pace.learn(tasks, elapsed, since_previous);
        slot.last_done = now;
        slot.head_since = now;
        slot.gave_back = false;
        slot.load -= tasks;
        if slot.load == 0 {
            self.shared.busy.fetch_sub(1, Ordering::Relaxed);
        }
        self.shared.in_flight.fetch_sub(tasks, Ordering::Relaxed);
        self.shared
            .completed
            .fetch_add(tasks as u64, Ordering::Relaxed);
        done.sink.deliver(outcomes, codec);
        drop(done);
        self.retire_if_done(index)
    }

    /// Replaces a retiring worker once it holds no task; `false` when it did.
    fn retire_if_done(&mut self, index: usize) -> bool {
        let slot = &self.slots[index];
        if slot.retiring && slot.fifo.is_empty() {
            self.recycle(index);
            return false;
        }
        true
    }

    /// Takes back from worker `index` the tasks it says it had not started, to be sent to any
    /// worker before the queued ones. A task it does not hold, or one it answered in part,
    /// breaks the protocol.
    fn given_back(&mut self, index: usize, ids: &[u64]) -> bool {
        let slot = &mut self.slots[index];
        if !std::mem::take(&mut slot.taking_back) {
            self.protocol(index, "tasks given back unasked");
            return false;
        }
        // Both in the order the tasks were sent: one pass sorts them out.
        let mut wanted = ids.iter().peekable();
        let mut kept = VecDeque::with_capacity(slot.fifo.len());
        let mut back = Vec::with_capacity(ids.len());
        let mut started = false;
        for pending in slot.fifo.drain(..) {
            if wanted.next_if_eq(&&pending.id).is_some() {
                started |= pending.left != pending.items.len();
                back.push(pending);
            } else {
                kept.push_back(pending);
            }
        }
        slot.fifo = kept;
        if wanted.peek().is_some() || started {
            slot.fifo.extend(back);
            let what = if started {
                "a task given back that it started"
            } else {
                "a task given back that it does not hold"
            };
            self.protocol(index, what);
            return false;
        }
        let tasks: usize = back.iter().map(Pending::tasks).sum();
        slot.gave_back = !slot.fifo.is_empty();
        if tasks > 0 {
            slot.load -= tasks;
            if slot.load == 0 {
                self.shared.busy.fetch_sub(1, Ordering::Relaxed);
            }
            self.shared.in_flight.fetch_sub(tasks, Ordering::Relaxed);
        }
        self.requeue(back);
        self.retire_if_done(index)
    }

    /// Puts tasks a worker did not start in front of every other, in their order.
    fn requeue(&mut self, pendings: impl IntoIterator<Item = Pending<W::Item, W::Output>>) {
        let jobs: Vec<_> = pendings.into_iter().map(Pending::into_job).collect();
        let tasks: usize = jobs.iter().map(|job| job.sink.tasks()).sum();
        self.shared
            .resent
            .fetch_add(tasks as u64, Ordering::Relaxed);
        for job in jobs.into_iter().rev() {
            self.held.push_front(job);
        }
    }

    /// Asks the workers whose task at the head runs longer than expected, with tasks queued
    /// behind it, to give those back while another worker is idle: a long task holds no other
    /// up while a worker is free. The worker's reader answers at once, whatever its task
    /// does.
    fn take_back(&mut self) {
        let now = Instant::now();
        for index in 0..self.slots.len() {
            if self.failed.is_some() {
                return;
            }
            // Looked at again for each worker: one that took back may have been replaced.
            let due = self.take_back_due(index);
            if due.is_none_or(|due| now < due) || !self.may_take_back(index, self.any_idle()) {
                continue;
            }
            let slot = &mut self.slots[index];
            let sent = match slot.worker.queue_message(&Request::<W::Item>::TakeBack) {
                Ok(()) => {
                    slot.taking_back = true;
                    if slot.worker.queued_bytes() > 0 {
                        self.ready.want_write(index, &mut slot.worker, true)
                    } else {
                        Ok(())
                    }
                }
                Err(source) => Err(Error::worker(index, slot.worker.pid(), source)),
            };
            if let Err(error) = sent {
                self.lost_worker(index, error);
            }
        }
    }

    /// Whether a worker is idle and may be sent tasks.
    fn any_idle(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.load == 0 && !s.retiring && s.worker.queued_bytes() == 0)
    }

    /// Whether worker `index` holds tasks behind its head that another could run now, given
    /// whether one is idle (`index` is not: it holds tasks).
    fn may_take_back(&self, index: usize, any_idle: bool) -> bool {
        let slot = &self.slots[index];
        any_idle && slot.fifo.len() > 1 && !slot.taking_back && slot.worker.queued_bytes() == 0
    }

    /// When the head of worker `index` will have run longer than expected.
    fn take_back_due(&self, index: usize) -> Option<Instant> {
        let slot = &self.slots[index];
        let head = slot.fifo.front()?;
        let after = slot.pace.take_back_after(head.tasks());
        worker_core::deadline_from(slot.head_since, Duration::from_secs_f64(after))
    }

    fn protocol(&mut self, index: usize, what: &'static str) {
        let pid = self.slots[index].worker.pid();
        let error = Error::Protocol { index, pid, what };
        self.lost(index, error.clone(), Some(error));
    }

    /// Kills the workers at the head of whose queue a task ran too long.
    fn expire(&mut self) {
        let Some(timeout) = self.task_timeout else {
            return;
        };
        let now = Instant::now();
        for index in 0..self.slots.len() {
            if self.failed.is_some() {
                return;
            }
            let slot = &self.slots[index];
            let due = worker_core::deadline_from(slot.head_since, timeout);
            if slot.fifo.is_empty() || due.is_none_or(|due| now < due) {
                continue;
            }
            let pid = slot.worker.pid();
            let head = Error::TaskTimeout {
                index,
                pid,
                timeout,
            };
            // The others never started: another worker runs them.
            self.lost(index, head, None);
        }
    }

    /// When the dispatcher must look again without an event: the next task timeout, or the
    /// next take-back.
    fn next_deadline(&self) -> Option<Instant> {
        let timeouts = self.task_timeout.map(|timeout| {
            self.slots
                .iter()
                .filter(|s| !s.fifo.is_empty())
                .filter_map(move |s| worker_core::deadline_from(s.head_since, timeout))
        });
        let any_idle = self.any_idle();
        let take_backs = (0..self.slots.len())
            .filter(|&i| self.may_take_back(i, any_idle))
            .filter_map(|i| self.take_back_due(i));
        timeouts.into_iter().flatten().chain(take_backs).min()
    }

    /// Replaces a worker that died or was killed, within the restart limit, then fails the
    /// tasks it held: the first (the one it was running) with `first`, the others with `rest`,
    /// or, without `rest`, sends them to another worker (it never started them). Replacing
    /// first means that whoever sees a task fail finds the pool whole again.
    fn lost(&mut self, index: usize, first: Error, rest: Option<Error>) {
        let mut fifo = self.take_fifo(index);
        let slot = &mut self.slots[index];
        self.ready.unwatch(index, &mut slot.worker);
        // SIGKILL to its process group, and the reaping that follows at once; nothing waits
        // for the worker's goodwill.
        let _ = slot.worker.kill();
        let old_pid = slot.worker.pid();
        let replaced = self.restarts.allow().and_then(|()| self.respawn(index));
        if replaced.is_ok() {
            self.shared.restarted.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                target: LOG_TARGET,
                "worker {old_pid} (slot {index}) failed; replaced by worker {}",
                self.slots[index].worker.pid()
            );
        }
        let head = fifo.pop_front();
        let failed = match rest {
            Some(rest) => {
                let failed: Vec<_> = fifo.drain(..).map(|p| (p, rest.clone())).collect();
                failed
            }
            None => Vec::new(),
        };
        let tasks: usize = head
            .iter()
            .chain(failed.iter().map(|(p, _)| p))
            .map(Pending::tasks)
            .sum();
        self.shared
            .failed_tasks
            .fetch_add(tasks as u64, Ordering::Relaxed);
        self.requeue(fifo);
        for (pending, error) in head.map(|p| (p, first)).into_iter().chain(failed) {
            pending.sink.fail(pending.left, error);
        }
        if let Err(e) = replaced {
            self.fail_pool(e);
        }
    }

    /// Takes the tasks a worker held out of the counters of tasks in flight (the caller
    /// counts those that fail).
    fn take_fifo(&mut self, index: usize) -> VecDeque<Pending<W::Item, W::Output>> {
        let slot = &mut self.slots[index];
        let fifo = std::mem::take(&mut slot.fifo);
        let tasks = std::mem::take(&mut slot.load);
        if tasks > 0 {
            self.shared.busy.fetch_sub(1, Ordering::Relaxed);
        }
        self.shared.in_flight.fetch_sub(tasks, Ordering::Relaxed);
        fifo
    }

    /// Closes a worker that served its quota once it has nothing in flight, and starts another.
    fn recycle(&mut self, index: usize) {
        self.ready.unwatch(index, &mut self.slots[index].worker);
        match self.respawn(index) {
            Ok(()) => {
                self.shared.recycled.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.fail_pool(e),
        }
    }

    /// Puts a fresh worker in `index`. The old one (killed already, or idle and ending on end
    /// of input) is closed and reaped in the background: the dispatcher never waits for a
    /// worker's grace period or the end of its standard error.
    fn respawn(&mut self, index: usize) -> Result<(), Error> {
        let worker = self.spawner.spawn_watched(&mut self.ready, index)?;
        if let Some(pid) = lock(&self.shared.pids).get_mut(index) {
            *pid = worker.pid();
        }
        let old = std::mem::replace(&mut self.slots[index], Slot::new(worker));
        old.worker.close_in_background();
        Ok(())
    }

    /// Fails the pool after a panic on this thread.
    fn panicked(&mut self, panic: &(dyn Any + Send)) {
        self.fail_pool(Error::PoolFailed {
            reason: format!("its dispatcher thread panicked: {}", panic_text(panic)),
        });
    }

    /// Why a task cannot be sent: the pool failed.
    fn gone(&self) -> Error {
        self.failed.clone().unwrap_or(Error::Closed)
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
        // The statistics say the pool has no worker before anyone can see that it failed (a
        // submit that gets `PoolFailed`, a task whose wait ends with it).
        self.shared.workers.store(0, Ordering::Relaxed);
        lock(&self.shared.pids).clear();
        if let Error::PoolFailed { reason } = &error {
            // The first failure is the reason.
            let _ = self.shared.failed.set(reason.clone());
        }
        for index in 0..self.slots.len() {
            let _ = self.slots[index].worker.kill();
            for pending in self.take_fifo(index) {
                self.shared
                    .failed_tasks
                    .fetch_add(pending.tasks() as u64, Ordering::Relaxed);
                pending.sink.fail(pending.left, error.clone());
            }
        }
        self.failed = Some(error);
        // Async submitters waiting for room see the failure at once.
        self.shared.room.wake_all();
    }

    /// A failed pool answers every task with its error until the pool's handle lets go.
    fn fail_forever(&mut self) {
        let error = self.failed.clone().expect("failed");
        while let Some(job) = self.held.pop_front() {
            self.fail_job(job, &error);
        }
        for slot in &mut self.slots {
            let _ = slot.worker.kill();
        }
        while let Ok(job) = self.rx.recv() {
            self.shared.room.freed(1);
            self.fail_job(job, &error);
        }
    }

    fn fail_job(&self, job: JobOf<W>, error: &Error) {
        let tasks = job.sink.tasks();
        self.shared
            .failed_tasks
            .fetch_add(tasks as u64, Ordering::Relaxed);
        job.sink.fail(job.items.as_slice().len(), error.clone());
    }
}
