//! Async callers (issue 11): task pools driven from a tokio runtime, whose thread they never
//! block, with the blocking API's results and errors.

use std::{
    collections::HashSet,
    future::{Future, poll_fn},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use exsyst_worker::{
    WorkerFactory,
    bootstrap::Error as Bootstrap,
    pool::{Error, TaskHandle, WorkerPoolBuilder},
};
use futures_core::Stream;
use tests_integration::workers::{
    hostile_tasks::{Fragile, Item, release_stalls},
    pool::{Command, Commands},
};
use tokio::task::JoinSet;

use crate::support::*;

fn builder() -> WorkerPoolBuilder {
    WorkerFactory::with_profile(profile()).create_worker_pool_builder()
}

/// How often the [`Ticker`] ticks.
const TICK: Duration = Duration::from_millis(5);

/// The most a tick may be late while the runtime's thread is never blocked: scheduling noise.
/// A blocked thread makes ticks hundreds of milliseconds late (the requests below take
/// milliseconds each, and a blocking wait holds the thread through dozens of them before
/// the runtime looks at its timers again).
fn lateness_bound() -> Duration {
    timeout(Duration::from_millis(100))
}

/// A task on the runtime that must tick every [`TICK`]: how late its ticks come tells whether
/// something blocked the runtime's thread.
struct Ticker {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Duration, u64)>,
}

impl Ticker {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        // Due from now on: a ticker never polled is late too.
        let mut interval = tokio::time::interval(TICK);
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let (mut worst, mut ticks) = (Duration::ZERO, 0);
                loop {
                    let due = interval.tick().await;
                    worst = worst.max(tokio::time::Instant::now().saturating_duration_since(due));
                    ticks += 1;
                    if stop.load(Ordering::Relaxed) {
                        return (worst, ticks);
                    }
                }
            }
        });
        Ticker { stop, task }
    }

    /// Stops it; asserts that it kept ticking on time for `ran`.
    async fn assert_on_time(self, ran: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let (worst, ticks) = self.task.await.unwrap();
        assert!(
            worst < lateness_bound(),
            "a tick came {worst:?} late: something blocked the runtime's thread"
        );
        let expected = (ran.as_secs_f64() / TICK.as_secs_f64()) as u64;
        assert!(
            ticks + 2 >= expected,
            "{ticks} ticks in {ran:?}, {expected} expected"
        );
    }
}

/// A future that counts the times it was pending.
struct Counted<F> {
    inner: F,
    pending: Arc<AtomicUsize>,
}

impl<F: Future + Unpin> Future for Counted<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let polled = Pin::new(&mut self.inner).poll(cx);
        if polled.is_pending() {
            self.pending.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

/// Polls `future` once, with a waker that does nothing.
fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    Pin::new(future).poll(&mut Context::from_waker(Waker::noop()))
}

/// Answers every request `(n, answer)`; asserts that each of `0..n` came exactly once with
/// its own answer.
async fn assert_all_answered(mut requests: JoinSet<Result<(u64, u64), Error>>, n: u64) {
    let mut answered = HashSet::new();
    let limit = timeout(Duration::from_secs(60));
    while let Some(joined) = tokio::time::timeout(limit, requests.join_next())
        .await
        .expect("the requests did not complete in time")
    {
        let (request, answer) = joined.unwrap().unwrap();
        assert_eq!(answer, request);
        assert!(answered.insert(request), "request {request} answered twice");
    }
    assert_eq!(answered.len() as u64, n);
}

#[tokio::test(flavor = "current_thread")]
async fn a_thousand_concurrent_requests_from_a_current_thread_runtime_never_block_it() {
    let pool = Arc::new(builder().size(4).build_tasks::<Commands>().unwrap());
    let start = Instant::now();
    let ticker = Ticker::start();
    let mut requests = JoinSet::new();
    for n in 0..1000u64 {
        let pool = pool.clone();
        requests.spawn(async move {
            let task = Command::EchoAfter { n, micros: 4000 };
            let answer = pool.submit_async(task).await?.await?;
            Ok((n, answer))
        });
    }
    assert_all_answered(requests, 1000).await;
    ticker.assert_on_time(start.elapsed()).await;
    assert_eq!(pool.stats().completed, 1000);
}

#[tokio::test(flavor = "current_thread")]
async fn async_submitters_wait_for_room_in_a_tiny_queue_as_futures() {
    let pool = Arc::new(
        builder()
            .size(2)
            .in_flight_per_worker(1)
            .queue_bound(1)
            .build_tasks::<Commands>()
            .unwrap(),
    );
    let pending = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let ticker = Ticker::start();
    let mut requests = JoinSet::new();
    for n in 0..400u64 {
        let (pool, pending) = (pool.clone(), pending.clone());
        requests.spawn(async move {
            let task = Command::EchoAfter { n, micros: 2000 };
            let submit = Counted {
                inner: pool.submit_async(task),
                pending,
            };
            let answer = submit.await?.await?;
            Ok((n, answer))
        });
    }
    assert_all_answered(requests, 400).await;
    ticker.assert_on_time(start.elapsed()).await;
    // Two workers and a queue of one: most submitters waited for room.
    assert!(pending.load(Ordering::Relaxed) >= 200, "{pending:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn submitters_that_give_up_waiting_for_room_leave_it_to_the_others() {
    let pool = Arc::new(
        builder()
            .size(1)
            .in_flight_per_worker(1)
            .queue_bound(1)
            .build_tasks::<Commands>()
            .unwrap(),
    );
    let mut requests = Vec::new();
    for n in 0..60u64 {
        let pool = pool.clone();
        requests.push(tokio::spawn(async move {
            let task = Command::EchoAfter { n, micros: 500 };
            pool.submit_async(task).await?.await
        }));
    }
    // Let them all start waiting, then a third give up, wherever each is.
    tokio::task::yield_now().await;
    for (n, request) in requests.iter().enumerate() {
        if n % 3 == 1 {
            request.abort();
        }
    }
    let limit = timeout(Duration::from_secs(30));
    for (n, request) in requests.into_iter().enumerate() {
        let joined = tokio::time::timeout(limit, request)
            .await
            .unwrap_or_else(|_| panic!("request {n} was never answered"));
        match joined {
            Ok(answer) => assert_eq!(answer.unwrap(), n as u64),
            Err(e) => assert!(e.is_cancelled() && n % 3 == 1, "request {n}: {e}"),
        }
    }
}

/// A pool error, with the exit code of the worker when the error is its death.
fn error_shape(result: Result<u64, Error>) -> (String, Option<i32>) {
    match result {
        Err(Error::Worker { index, source, .. }) => match &*source {
            Bootstrap::WorkerExited { status, .. } => (format!("Worker {index}"), status.code()),
            other => panic!("expected the worker's exit, got {other:?}"),
        },
        Err(Error::Task { message }) => (format!("Task {message}"), None),
        Err(Error::PoolFailed { .. }) => ("PoolFailed".into(), None),
        Err(Error::Closed) => ("Closed".into(), None),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_crash_and_a_failing_task_give_the_same_errors_awaited_as_waited_for() {
    let pool = builder().size(1).build_tasks::<Commands>().unwrap();
    for task in [Command::Exit(3), Command::Fail("no".into())] {
        let awaited = pool.submit_async(task.clone()).await.unwrap().await;
        let waited = pool.submit(task).unwrap().wait();
        let shape = error_shape(awaited);
        assert_eq!(shape, error_shape(waited));
        assert!(
            shape == ("Worker 0".into(), Some(3)) || shape == ("Task no".into(), None),
            "{shape:?}"
        );
    }
    assert_eq!(
        pool.submit_async(Command::Echo(5))
            .await
            .unwrap()
            .await
            .unwrap(),
        5
    );
}

#[tokio::test(flavor = "current_thread")]
async fn dropping_the_pool_closes_awaited_tasks_as_it_closes_waited_ones() {
    let pool = Arc::new(
        builder()
            .size(1)
            .in_flight_per_worker(1)
            .build_tasks::<Commands>()
            .unwrap(),
    );
    let held = Held::new();
    let running = pool.submit_async(held.command()).await.unwrap();
    let (_, _release) = held.started();
    let mut queued = pool.submit_async(Command::Echo(1)).await.unwrap();
    let mut waited = pool.submit(Command::Echo(2)).unwrap();
    // Polled once (pending), then waited for: the blocking wait still works.
    assert!(poll_once(&mut queued).is_pending());
    assert!(poll_once(&mut waited).is_pending());
    let awaiting = tokio::spawn(running);
    tokio::task::yield_now().await;
    drop(pool);
    let limit = timeout(Duration::from_secs(10));
    let awaited = tokio::time::timeout(limit, awaiting)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(awaited, Err(Error::Closed)), "{awaited:?}");
    assert!(matches!(queued.await, Err(Error::Closed)));
    assert!(matches!(waited.wait(), Err(Error::Closed)));
}

#[tokio::test(flavor = "current_thread")]
async fn dropping_a_pool_whose_dispatcher_is_held_ends_every_await_at_once() {
    let pool = builder()
        .size(1)
        .in_flight_per_worker(1)
        .build_tasks::<Fragile>()
        .unwrap();
    // The dispatcher takes the first task and is held in its `Serialize`; the second waits.
    let mut held = pool.submit_async(Item::Stall).await.unwrap();
    assert!(wait_until(Duration::from_secs(10), || pool.stats().queued == 0));
    let mut queued = pool.submit_async(Item::Fine(1)).await.unwrap();
    assert!(poll_once(&mut held).is_pending());
    assert!(poll_once(&mut queued).is_pending());
    let awaiting = tokio::spawn(async move { (held.await, queued.await) });
    tokio::task::yield_now().await;
    let start = Instant::now();
    drop(pool);
    let limit = timeout(Duration::from_secs(1));
    let joined = tokio::time::timeout(limit, awaiting).await;
    release_stalls();
    let (held, queued) = joined.expect("an await outlived its pool").unwrap();
    assert!(matches!(held, Err(Error::Closed)), "{held:?}");
    assert!(matches!(queued, Err(Error::Closed)), "{queued:?}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_pool_fails_async_submitters_waiting_for_room_as_it_fails_submit() {
    let pool = builder()
        .size(1)
        .in_flight_per_worker(1)
        .queue_bound(1)
        .max_restarts(0, Duration::from_secs(60))
        .build_tasks::<Commands>()
        .unwrap();
    let held = Held::new();
    let running = pool.submit_async(held.command()).await.unwrap();
    let (pid, _release) = held.started();
    let queued = pool.submit_async(Command::Echo(1)).await.unwrap();
    let mut waiting = pool.submit_async(Command::Echo(2));
    assert!(
        poll_once(&mut waiting).is_pending(),
        "the queue has no room"
    );
    // Its worker dies, with no restart allowed: the pool fails, and the submitter waiting for
    // room is woken with the failure.
    sigkill(pid);
    let limit = timeout(Duration::from_secs(10));
    let submitted = tokio::time::timeout(limit, waiting).await.unwrap();
    assert!(
        matches!(submitted, Err(Error::PoolFailed { .. })),
        "{submitted:?}"
    );
    let blocking = pool.submit(Command::Echo(3));
    assert!(
        matches!(blocking, Err(Error::PoolFailed { .. })),
        "{blocking:?}"
    );
    let again = pool.submit_async(Command::Echo(4)).await;
    assert!(matches!(again, Err(Error::PoolFailed { .. })), "{again:?}");
    assert_eq!(error_shape(running.await), ("Worker 0".into(), None));
    assert_eq!(error_shape(queued.await), ("PoolFailed".into(), None));
}

/// The next item of `stream`.
async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

#[tokio::test(flavor = "current_thread")]
async fn the_stream_yields_every_result_exactly_once_without_blocking() {
    let pool = builder().size(4).build_tasks::<Commands>().unwrap();
    const N: usize = 6000;
    let start = Instant::now();
    let ticker = Ticker::start();
    let items = (0..N as u64).map(|n| Command::EchoAfter { n, micros: 300 });
    let mut results = pool.map_unordered_stream(items);
    let mut seen = vec![false; N];
    let mut left = N;
    while let Some((index, result)) = next(&mut results).await {
        assert_eq!(result.unwrap(), index as u64);
        assert!(!std::mem::replace(&mut seen[index], true), "{index} twice");
        left -= 1;
        assert_eq!(results.size_hint(), (left, Some(left)));
    }
    assert_eq!(left, 0);
    assert_eq!(results.completed(), N);
    assert!(next(&mut results).await.is_none());
    ticker.assert_on_time(start.elapsed()).await;
}

#[tokio::test(flavor = "current_thread")]
async fn the_stream_waits_for_room_and_fails_only_the_items_of_a_crashed_worker() {
    let pool = builder()
        .size(2)
        .in_flight_per_worker(1)
        .queue_bound(1)
        .chunk_size(1)
        .build_tasks::<Commands>()
        .unwrap();
    let items = (0..300u64).map(|n| match n {
        150 => Command::Exit(3),
        n => Command::EchoAfter { n, micros: 100 },
    });
    let mut results = pool.map_unordered_stream(items);
    assert_eq!(results.total(), 300);
    let mut seen = HashSet::new();
    let limit = timeout(Duration::from_secs(60));
    while let Some((index, result)) = tokio::time::timeout(limit, next(&mut results))
        .await
        .unwrap()
    {
        assert!(seen.insert(index), "{index} twice");
        match index {
            150 => {
                let (what, code) = error_shape(result);
                assert!(
                    what.starts_with("Worker") && code == Some(3),
                    "{what} {code:?}"
                );
            }
            i => assert_eq!(result.unwrap(), i as u64),
        }
    }
    assert_eq!(seen.len(), 300);
}

#[test]
fn threads_waiting_on_one_handle_each_get_an_answer() {
    let pool = builder().size(1).build_tasks::<Commands>().unwrap();
    let held = Held::new();
    let handle: TaskHandle<u64> = pool.submit(held.command()).unwrap();
    let (pid, release) = held.started();
    let limit = timeout(Duration::from_secs(10));
    let answers: Vec<_> = std::thread::scope(|s| {
        let waiters: Vec<_> = (0..3)
            .map(|_| s.spawn(|| handle.wait_timeout(limit)))
            .collect();
        drop(release);
        waiters.into_iter().map(|w| w.join().unwrap()).collect()
    });
    // One gets the result, the others the result's absence: none is left waiting.
    let got: Vec<_> = answers.iter().filter(|a| a.is_ok()).collect();
    assert_eq!(got.len(), 1, "{answers:?}");
    assert_eq!(*got[0].as_ref().unwrap(), u64::from(pid));
    assert!(
        answers
            .iter()
            .filter(|a| a.is_err())
            .all(|a| matches!(a, Err(Error::Closed))),
        "{answers:?}"
    );
}
