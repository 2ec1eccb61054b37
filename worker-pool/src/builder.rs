use std::{num::NonZeroUsize, time::Duration};

use worker_bootstrap::BootstrapProfile;
use worker_core::Worker;

use crate::{
    Error, TaskPool, TaskWorker, WorkerPool,
    dispatcher::TaskConfig,
    supervisor::{RestartLimit, Spawner},
};

/// Configures a [`WorkerPool`] (the seed's message interface) or a [`TaskPool`] (tasks).
///
/// ```
/// use std::time::Duration;
/// use worker_pool::{Error, WorkerPoolBuilder};
///
/// let builder = WorkerPoolBuilder::new()
///     .size(4)
///     .in_flight_per_worker(8)
///     .queue_bound(1024)
///     .task_timeout(Duration::from_secs(30))
///     .max_restarts(5, Duration::from_secs(10));
/// assert_eq!(builder.pool_size(), 4);
///
/// // Impossible settings are refused when the pool is built, before any worker starts.
/// # struct W; impl worker_core::Worker for W { const NAME: &'static str = "w"; type Args = ();
/// #     fn new(_: ()) -> Result<Self, worker_core::BoxError> { Ok(W) } }
/// let err = WorkerPoolBuilder::new().size(0).build::<W>().unwrap_err();
/// assert!(matches!(err, Error::Config { what: "size", .. }));
/// ```
#[derive(Debug, Clone)]
pub struct WorkerPoolBuilder {
    profile: BootstrapProfile,
    size: Option<usize>,
    /// `None`: adaptive.
    in_flight: Option<usize>,
    queue_bound: usize,
    task_timeout: Option<Duration>,
    max_restarts: u32,
    restart_window: Duration,
    recycle_after: Option<u64>,
    chunk_size: Option<usize>,
    /// The first task-only setting given, to refuse it for a message pool.
    task_setting: Option<&'static str>,
}

impl Default for WorkerPoolBuilder {
    fn default() -> Self {
        WorkerPoolBuilder {
            profile: BootstrapProfile::default(),
            size: None,
            in_flight: None,
            queue_bound: 1024,
            task_timeout: None,
            max_restarts: 10,
            restart_window: Duration::from_secs(10),
            recycle_after: None,
            chunk_size: None,
            task_setting: None,
        }
    }
}

impl WorkerPoolBuilder {
    /// The most workers a pool may have.
    pub const MAX_SIZE: usize = 4096;

    /// The largest [`queue_bound`](Self::queue_bound): the queue's room is allocated when the
    /// pool starts.
    pub const MAX_QUEUE_BOUND: usize = 1 << 16;

    /// A builder with the defaults: one worker per CPU this process may use, an adaptive number
    /// of tasks in flight per worker (see [`in_flight_per_worker`](Self::in_flight_per_worker)),
    /// 1024 queued tasks, no task timeout, at most 10 restarts in 10 seconds, no recycling,
    /// Python's chunk size for `map`.
    pub fn new() -> Self {
        Self::default()
    }

    /// How workers are started.
    pub fn profile(mut self, profile: BootstrapProfile) -> Self {
        self.profile = profile;
        self
    }

    /// The number of workers (default: [`std::thread::available_parallelism`], which honours
    /// CPU affinity and cgroup quotas). Zero is refused, and so is more than
    /// [`MAX_SIZE`](Self::MAX_SIZE).
    pub fn size(mut self, size: usize) -> Self {
        self.size = Some(size);
        self
    }

    /// The number of workers the pool will have.
    pub fn pool_size(&self) -> usize {
        self.size.unwrap_or_else(default_size)
    }

    /// Pins the tasks sent to one worker before its earlier ones are answered (task pools).
    ///
    /// By default the depth adapts to each worker's recent pace: enough tasks to cover one
    /// round trip (the time from a send to its reply, less the service time) with service
    /// time, `1 + ceil(overhead / service - 1/8)`, at least 2 while tasks take under a
    /// millisecond and at most 64. Tiny tasks get many in flight, slow ones one, and a worker
    /// whose task runs well past its expected time is sent nothing more until it answers.
    /// [`PoolStats::max_in_flight`](crate::PoolStats::max_in_flight) shows the depth reached.
    ///
    /// A depth of more than one, adaptive or pinned, hides the round-trip latency of tiny
    /// tasks. Tasks that wait in the queue together travel to a worker together, in one
    /// message (up to the worker's free room), but each is answered as soon as it is done. A
    /// worker runs its tasks in order; when the task it runs has taken longer than its
    /// recent tasks did while another worker is idle, the pool takes back the tasks waiting
    /// behind it (the worker answers at once which it has not started) and gives them to the
    /// idle worker, so a slow task holds up no other while a worker is free (see the
    /// [`protocol`](crate::protocol) guide).
    pub fn in_flight_per_worker(mut self, n: usize) -> Self {
        self.in_flight = Some(n);
        self.task_only("in_flight_per_worker")
    }

    /// Tasks that may wait for a worker (task pools; default 1024, at most
    /// [`MAX_QUEUE_BOUND`](Self::MAX_QUEUE_BOUND)): past it, [`TaskPool::submit`] blocks and
    /// [`TaskPool::try_submit`] hands the item back.
    pub fn queue_bound(mut self, n: usize) -> Self {
        self.queue_bound = n;
        self.task_only("queue_bound")
    }

    /// The longest a task may run (task pools). Past it the worker is killed and replaced: the
    /// task fails with [`Error::TaskTimeout`], and the worker's other tasks in flight, which it
    /// had not started, are sent to another worker. A task's time starts when its worker starts
    /// it (when it is sent to an idle worker, else when the reply to the task before it
    /// arrives), so a task that never started never fails with [`Error::TaskTimeout`], whatever
    /// it travelled with. A worker that does not even take a task's message within the timeout
    /// (it is stuck and its input is full) is replaced the same way, so a stuck worker never
    /// holds up the others; without a task timeout, that send waits.
    ///
    /// [`Duration::MAX`] (or any timeout too long to reach) is the same as none; zero is
    /// refused.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self.task_only("task_timeout")
    }

    /// The Erlang supervisor rule: at most `max` replacements of failed workers within
    /// `window`; one more and the pool fails ([`Error::PoolFailed`]) instead of looping.
    ///
    /// `max` zero allows no replacement at all; a zero `window` is refused.
    pub fn max_restarts(mut self, max: u32, window: Duration) -> Self {
        self.max_restarts = max;
        self.restart_window = window;
        self
    }

    /// Replaces each worker after it was sent `tasks` tasks (task pools), gracefully: it gets
    /// no more, finishes those in flight, is closed, and a fresh one takes its place.
    /// Recycling does not count against the restart limit.
    pub fn recycle_after(mut self, tasks: u64) -> Self {
        self.recycle_after = Some(tasks);
        self.task_only("recycle_after")
    }

    /// Items per message for [`TaskPool::map`] (default: Python's `Pool.map` rule, the items
    /// split in about four chunks per worker).
    pub fn chunk_size(mut self, items: usize) -> Self {
        self.chunk_size = Some(items);
        self.task_only("chunk_size")
    }

    fn task_only(mut self, setting: &'static str) -> Self {
        self.task_setting.get_or_insert(setting);
        self
    }

    fn check(&self) -> Result<usize, Error> {
        let bad = |what, why: &str| Err(Error::config(what, why));
        let size = self.pool_size();
        if size == 0 {
            return bad("size", "must be at least 1");
        }
        if size > Self::MAX_SIZE {
            return bad("size", &format!("must be at most {}", Self::MAX_SIZE));
        }
        if self.in_flight == Some(0) {
            return bad("in_flight_per_worker", "must be at least 1");
        }
        if self.queue_bound == 0 {
            return bad("queue_bound", "must be at least 1");
        }
        if self.queue_bound > Self::MAX_QUEUE_BOUND {
            return bad(
                "queue_bound",
                &format!("must be at most {}", Self::MAX_QUEUE_BOUND),
            );
        }
        if self.task_timeout == Some(Duration::ZERO) {
            return bad("task_timeout", "must be longer than zero");
        }
        if self.restart_window.is_zero() {
            return bad("max_restarts", "needs a window longer than zero");
        }
        if self.recycle_after == Some(0) {
            return bad("recycle_after", "must be at least 1 task");
        }
        if self.chunk_size == Some(0) {
            return bad("chunk_size", "must be at least 1 item");
        }
        Ok(size)
    }

    /// Starts a pool of workers running `W` for the seed's message interface.
    ///
    /// Task-only settings ([`in_flight_per_worker`](Self::in_flight_per_worker) and the
    /// others so marked) are refused with [`Error::Config`]: a message pool has no tasks.
    pub fn build<W: Worker>(self) -> Result<WorkerPool, Error> {
        let size = self.check()?;
        if let Some(what) = self.task_setting {
            return Err(Error::config(
                what,
                "applies to task pools only (build_tasks)",
            ));
        }
        WorkerPool::start(self.spawner(W::NAME), size, self.restart_limit())
    }

    /// Starts a [`TaskPool`] of workers running `W`, which the worker executable registered
    /// with [`RegistryExt::task`](crate::RegistryExt::task).
    pub fn build_tasks<W: TaskWorker>(self) -> Result<TaskPool<W>, Error> {
        let size = self.check()?;
        let config = TaskConfig {
            spawner: self.spawner(W::NAME),
            size,
            in_flight: self.in_flight,
            task_timeout: self.task_timeout,
            restarts: self.restart_limit(),
            recycle_after: self.recycle_after,
        };
        TaskPool::start(config, self.queue_bound, self.chunk_size)
    }

    fn spawner(&self, implementation: &'static str) -> Spawner {
        Spawner::new(self.profile.clone(), implementation)
    }

    fn restart_limit(&self) -> RestartLimit {
        RestartLimit::new(self.max_restarts, self.restart_window)
    }
}

fn default_size() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}
