//! The event loop: readiness from the [`Poller`], a timer heap and posted closures.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    fmt, io,
    sync::Arc,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender};
use mio::{Interest, Registry, Token, event::Source};

use crate::{
    BoxError, Error, Poller, PollerWaker, Readiness, Spin, WAKE_TOKEN, deadline_after,
    deadline_from, poller::DEFAULT_EVENTS_CAPACITY, time_left,
};

/// Identifies a source registered on an [`EventLoop`].
///
/// Ids are never confused with a later registration that reuses the same slot: a stale id makes
/// [`EventLoop::deregister`] return `false` instead of removing someone else's source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceId {
    index: u32,
    generation: u32,
}

impl SourceId {
    fn token(self) -> Token {
        Token(((self.generation as usize) << 32) | self.index as usize)
    }

    fn from_token(token: Token) -> Self {
        SourceId {
            index: token.0 as u32,
            generation: (token.0 >> 32) as u32,
        }
    }
}

/// Identifies a timer of an [`EventLoop`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(u64);

/// What a timer or posted closure runs: the user state and the loop, mutably.
type TimerHandler<S> = Box<dyn FnMut(&mut S, &mut EventLoop<S>) -> Result<(), BoxError>>;
type Posted<S> = Box<dyn FnOnce(&mut S, &mut EventLoop<S>) -> Result<(), BoxError> + Send>;

/// What an [`EventLoop`] does with a panic of one of its handlers, once
/// [`EventLoop::set_panic_handler`] asked it to catch them: the state, the loop, and the panic
/// as [`Error::Panicked`].
///
/// Its error ends the loop as a handler's would; `Ok` goes on with the next event.
pub type LoopPanicHandler<S> =
    Box<dyn FnMut(&mut S, &mut EventLoop<S>, Error) -> Result<(), BoxError>>;

/// A registered source together with its handler, type-erased; a source registered with
/// [`EventLoop::register_ref`] stays with its owner, and its entry holds only the handler.
trait Entry<S> {
    fn source(&mut self) -> Option<&mut dyn Source>;
    fn dispatch(
        &mut self,
        state: &mut S,
        event_loop: &mut EventLoop<S>,
        ready: Readiness,
    ) -> Result<(), BoxError>;
}

struct Owned<T, F> {
    source: T,
    handler: F,
}

impl<S, T, F> Entry<S> for Owned<T, F>
where
    T: Source,
    F: FnMut(&mut S, &mut EventLoop<S>, &mut T, Readiness) -> Result<(), BoxError>,
{
    fn source(&mut self) -> Option<&mut dyn Source> {
        Some(&mut self.source)
    }

    fn dispatch(
        &mut self,
        state: &mut S,
        event_loop: &mut EventLoop<S>,
        ready: Readiness,
    ) -> Result<(), BoxError> {
        (self.handler)(state, event_loop, &mut self.source, ready)
    }
}

/// The handler of a source its owner keeps.
struct Borrowed<F>(F);

impl<S, F> Entry<S> for Borrowed<F>
where
    F: FnMut(&mut S, &mut EventLoop<S>, Readiness) -> Result<(), BoxError>,
{
    fn source(&mut self) -> Option<&mut dyn Source> {
        None
    }

    fn dispatch(
        &mut self,
        state: &mut S,
        event_loop: &mut EventLoop<S>,
        ready: Readiness,
    ) -> Result<(), BoxError> {
        (self.0)(state, event_loop, ready)
    }
}

struct Slot<S> {
    generation: u32,
    /// Registered and not deregistered; the entry may still be out for dispatch.
    live: bool,
    /// `None` while vacant or while its handler runs (the entry is out of the slab then, which
    /// is what lets the handler take `&mut EventLoop` soundly).
    entry: Option<Box<dyn Entry<S>>>,
    /// An interest change asked for while the entry was out for dispatch.
    pending_interest: Option<Interest>,
}

struct Timer<S> {
    /// `None`: never (a delay past what `Instant` holds); the timer stays until cancelled.
    deadline: Option<Instant>,
    period: Option<Duration>,
    handler: TimerHandler<S>,
}

/// A single-threaded event loop on mio: readiness of any [`mio::event::Source`], one-shot and
/// periodic timers, and closures posted from other threads through a [`LoopHandle`].
///
/// The user state `S` lives outside the loop and is lent to [`EventLoop::run`]; every handler
/// receives `&mut S` and `&mut EventLoop<S>`, so it can change its state, add timers, register
/// and deregister sources (itself included) and stop the loop.
///
/// As in ReactPHP, `run` returns by itself once nothing is registered (no source, no timer;
/// the waker does not count), so a program that cleans up after itself ends cleanly.
///
/// ```
/// use std::time::Duration;
/// use worker_core::EventLoop;
///
/// let mut event_loop = EventLoop::<Vec<&str>>::new()?;
/// event_loop.add_timer(Duration::from_millis(2), |log, _| {
///     log.push("second");
///     Ok(())
/// });
/// event_loop.add_timer(Duration::from_millis(1), |log, _| {
///     log.push("first");
///     Ok(())
/// });
/// let mut log = Vec::new();
/// event_loop.run(&mut log)?; // returns once both timers have fired
/// assert_eq!(log, ["first", "second"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct EventLoop<S> {
    poller: Poller,
    /// Readiness copied out of the poller, so handlers can take the loop mutably while a batch
    /// is dispatched; reused from turn to turn.
    ready: Vec<(Token, Readiness)>,
    slots: Vec<Slot<S>>,
    free: Vec<u32>,
    live_sources: usize,
    timers: HashMap<TimerId, Timer<S>>,
    /// Deadlines in firing order; entries whose timer was cancelled or re-armed are skipped
    /// when they come up, rather than searched for at cancel time.
    heap: BinaryHeap<Reverse<(Instant, TimerId)>>,
    next_timer: u64,
    /// The timer whose handler runs now, and whether it was cancelled meanwhile.
    firing: Option<(TimerId, bool)>,
    waker: PollerWaker,
    posted_tx: Sender<Posted<S>>,
    posted_rx: Receiver<Posted<S>>,
    stopped: bool,
    /// A clone of the poller's registry, made the first time a [`Rearm`] is asked for, which
    /// every rearm shares.
    shared_registry: Option<Arc<Registry>>,
    /// Catches the handlers' panics when set (see [`EventLoop::set_panic_handler`]); out of
    /// the loop while it runs.
    on_panic: Option<LoopPanicHandler<S>>,
    /// Whether a panic handler is set, even while it is out running.
    catching: bool,
}

impl<S> fmt::Debug for EventLoop<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLoop")
            .field("sources", &self.live_sources)
            .field("timers", &self.timers.len())
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

impl<S: 'static> EventLoop<S> {
    /// A new loop.
    pub fn new() -> Result<Self, Error> {
        Self::with_capacity(DEFAULT_EVENTS_CAPACITY)
    }

    /// A new loop that takes up to `events_capacity` readiness events per turn.
    pub fn with_capacity(events_capacity: usize) -> Result<Self, Error> {
        let poller = Poller::with_capacity(events_capacity)?;
        let waker = poller.waker();
        let (posted_tx, posted_rx) = crossbeam_channel::unbounded();
        Ok(EventLoop {
            poller,
            ready: Vec::new(),
            slots: Vec::new(),
            free: Vec::new(),
            live_sources: 0,
            timers: HashMap::new(),
            heap: BinaryHeap::new(),
            next_timer: 0,
            firing: None,
            waker,
            posted_tx,
            posted_rx,
            stopped: false,
            shared_registry: None,
            on_panic: None,
            catching: false,
        })
    }

    /// Registers `source` for `interest`; the loop owns it from now on and drops it when it is
    /// deregistered or when the loop is dropped.
    ///
    /// `handler` runs on each readiness event with the state, the loop, the source and what it
    /// is ready for. An error from it stops the loop and is what [`EventLoop::run`] returns.
    pub fn register<T, F>(
        &mut self,
        mut source: T,
        interest: Interest,
        handler: F,
    ) -> Result<SourceId, Error>
    where
        T: Source + 'static,
        F: FnMut(&mut S, &mut EventLoop<S>, &mut T, Readiness) -> Result<(), BoxError> + 'static,
    {
        let id = self.reserve_slot();
        if let Err(e) = self.poller.register(&mut source, id.token(), interest) {
            self.free.push(id.index);
            return Err(e);
        }
        self.fill_slot(id, Box::new(Owned { source, handler }));
        Ok(id)
    }

    /// Registers `source`, which its caller keeps (inside its own state, say), for `interest`.
    ///
    /// `handler` runs on each readiness event with the state, the loop and what the source is
    /// ready for. The source registers its own descriptors (it is a mio [`Source`], as an
    /// [`NbChannel`](crate::NbChannel) is), so it must leave the loop through
    /// [`EventLoop::deregister_ref`] while it is still open; dropping it without does no harm
    /// to other sources (closing its descriptors removes them from epoll), but its id stays
    /// taken until [`EventLoop::deregister`].
    pub fn register_ref<T, F>(
        &mut self,
        source: &mut T,
        interest: Interest,
        handler: F,
    ) -> Result<SourceId, Error>
    where
        T: Source + ?Sized,
        F: FnMut(&mut S, &mut EventLoop<S>, Readiness) -> Result<(), BoxError> + 'static,
    {
        let id = self.reserve_slot();
        if let Err(e) = self.poller.register(source, id.token(), interest) {
            self.free.push(id.index);
            return Err(e);
        }
        self.fill_slot(id, Box::new(Borrowed(handler)));
        Ok(id)
    }

    fn reserve_slot(&mut self) -> SourceId {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let index = u32::try_from(self.slots.len()).expect("fewer than 2^32 sources");
                self.slots.push(Slot {
                    generation: 0,
                    live: false,
                    entry: None,
                    pending_interest: None,
                });
                index
            }
        };
        SourceId {
            index,
            generation: self.slots[index as usize].generation,
        }
    }

    fn fill_slot(&mut self, id: SourceId, entry: Box<dyn Entry<S>>) {
        let slot = &mut self.slots[id.index as usize];
        slot.live = true;
        slot.entry = Some(entry);
        self.live_sources += 1;
    }

    /// Changes what a registered source is watched for.
    ///
    /// Returns `false` for an id that is no longer registered. A handler may change its own
    /// source's interest; the change applies when the handler returns.
    pub fn reregister(&mut self, id: SourceId, interest: Interest) -> Result<bool, Error> {
        let Some(slot) = live_slot(&mut self.slots, id) else {
            return Ok(false);
        };
        match slot.entry.as_mut() {
            Some(entry) => {
                if let Some(source) = entry.source() {
                    reregister(self.poller.registry(), source, id, interest)?;
                }
            }
            None => slot.pending_interest = Some(interest),
        }
        Ok(true)
    }

    /// Changes what a source registered with [`EventLoop::register_ref`] is watched for.
    ///
    /// Returns `false` for an id that is no longer registered.
    pub fn reregister_ref<T: Source + ?Sized>(
        &mut self,
        id: SourceId,
        source: &mut T,
        interest: Interest,
    ) -> Result<bool, Error> {
        if live_slot(&mut self.slots, id).is_none() {
            return Ok(false);
        }
        reregister(self.poller.registry(), source, id, interest)?;
        Ok(true)
    }

    /// What changes the interest of source `id` (one registered with
    /// [`EventLoop::register_ref`]) where the loop is not at hand: a send from a timer that
    /// leaves bytes queued, say.
    pub(crate) fn rearm(&mut self, id: SourceId) -> Result<Rearm, Error> {
        let registry =
            match &self.shared_registry {
                Some(registry) => Arc::clone(registry),
                None => {
                    let registry =
                        Arc::new(self.poller.registry().try_clone().map_err(|source| {
                            Error::Io {
                                op: "clone registry",
                                source,
                            }
                        })?);
                    self.shared_registry = Some(Arc::clone(&registry));
                    registry
                }
            };
        Ok(Rearm {
            registry,
            token: id.token(),
        })
    }

    /// Deregisters a source and drops it (closing its descriptor, for an owned one).
    ///
    /// Returns `false` for an id that is no longer registered. A handler may deregister itself
    /// or any other source; a deregistered source gets no further events, even ones already
    /// collected in the current turn. A source registered with [`EventLoop::register_ref`]
    /// should leave through [`EventLoop::deregister_ref`] instead, which takes its descriptors
    /// out of the poller.
    pub fn deregister(&mut self, id: SourceId) -> bool {
        let Some(slot) = live_slot(&mut self.slots, id) else {
            return false;
        };
        slot.live = false;
        self.live_sources -= 1;
        if let Some(mut entry) = slot.entry.take() {
            if let Some(source) = entry.source() {
                self.poller.deregister(source);
            }
            self.free_slot(id.index);
        }
        // Otherwise the entry is out for dispatch: `dispatch_source` finishes the job.
        true
    }

    /// Deregisters a source registered with [`EventLoop::register_ref`]: its descriptors leave
    /// the poller while still open, and its handler is dropped.
    ///
    /// Returns `false` (and leaves `source` alone) for an id that is no longer registered.
    /// A handler may do this to its own source or any other, as with [`EventLoop::deregister`].
    pub fn deregister_ref<T: Source + ?Sized>(&mut self, id: SourceId, source: &mut T) -> bool {
        if live_slot(&mut self.slots, id).is_none() {
            return false;
        }
        self.poller.deregister(source);
        self.deregister(id)
    }

    fn free_slot(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        slot.pending_interest = None;
        // Skip the waker's generation, so a source token can never equal it.
        slot.generation = slot.generation.wrapping_add(1) % u32::MAX;
        self.free.push(index);
    }

    /// Runs `handler` once, after `delay`.
    pub fn add_timer<F>(&mut self, delay: Duration, handler: F) -> TimerId
    where
        F: FnOnce(&mut S, &mut EventLoop<S>) -> Result<(), BoxError> + 'static,
    {
        let mut handler = Some(handler);
        self.insert_timer(
            delay,
            None,
            Box::new(move |state, event_loop| match handler.take() {
                Some(handler) => handler(state, event_loop),
                None => Ok(()),
            }),
        )
    }

    /// Runs `handler` every `interval`, the first time after one interval, until cancelled.
    ///
    /// A loop that fell behind does not fire a burst to catch up: the next firing is one
    /// interval after the late one.
    pub fn add_periodic_timer<F>(&mut self, interval: Duration, handler: F) -> TimerId
    where
        F: FnMut(&mut S, &mut EventLoop<S>) -> Result<(), BoxError> + 'static,
    {
        self.insert_timer(interval, Some(interval), Box::new(handler))
    }

    fn insert_timer(
        &mut self,
        delay: Duration,
        period: Option<Duration>,
        handler: TimerHandler<S>,
    ) -> TimerId {
        let id = TimerId(self.next_timer);
        self.next_timer += 1;
        // A delay past what `Instant` holds means "never": the timer waits to be cancelled.
        let deadline = deadline_after(delay);
        if let Some(deadline) = deadline {
            self.heap.push(Reverse((deadline, id)));
        }
        self.timers.insert(
            id,
            Timer {
                deadline,
                period,
                handler,
            },
        );
        id
    }

    /// Cancels a timer; returns `false` if it already fired (one-shot) or was cancelled.
    ///
    /// A timer handler may cancel its own timer, which is how a periodic timer stops itself.
    pub fn cancel_timer(&mut self, id: TimerId) -> bool {
        if let Some((firing, cancelled)) = &mut self.firing {
            if *firing == id && !*cancelled {
                *cancelled = true;
                return true;
            }
        }
        let removed = self.timers.remove(&id).is_some();
        // Cancelled entries stay in the heap until they come up; rebuild it when they would
        // outnumber the live ones, so cancelling in a loop cannot grow it without bound.
        if removed && self.heap.len() > 64 + 2 * self.timers.len() {
            let timers = &self.timers;
            self.heap.retain(|Reverse((deadline, id))| {
                timers
                    .get(id)
                    .is_some_and(|t| t.deadline == Some(*deadline))
            });
        }
        removed
    }

    /// Sets the latency mode of the loop's waits (see [`Poller::set_spin`]): a turn that finds
    /// no event at once looks again without blocking, for up to the budget, before it sleeps.
    /// [`run_evented`](crate::run_evented) sets it from its channel's setting.
    pub fn set_spin(&mut self, spin: Spin) {
        self.poller.set_spin(spin);
    }

    /// The latency mode of the loop's waits.
    pub fn spin(&self) -> Spin {
        self.poller.spin()
    }

    /// A handle that other threads use to run closures on this loop.
    pub fn handle(&self) -> LoopHandle<S> {
        LoopHandle {
            tx: self.posted_tx.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Makes [`EventLoop::run`] return after the current turn (the events already collected
    /// are still dispatched, so no edge-triggered readiness is lost).
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Whether nothing is registered: no source and no timer.
    pub fn is_empty(&self) -> bool {
        self.live_sources == 0 && self.timers.is_empty() && self.firing.is_none()
    }

    /// The number of registered sources.
    pub fn source_count(&self) -> usize {
        self.live_sources
    }

    /// The number of pending timers.
    pub fn timer_count(&self) -> usize {
        self.timers.len() + usize::from(matches!(self.firing, Some((_, false))))
    }

    /// Catches the panics of the handlers from now on (sources', timers' and posted
    /// closures'): each is handed to `handler` as [`Error::Panicked`] instead of unwinding
    /// through [`EventLoop::run`], and the loop goes on when `handler` returns `Ok`.
    ///
    /// The handler that panicked stays as it was: a source stays registered, a periodic timer
    /// keeps its period (a one-shot timer is spent). A panic of `handler` itself unwinds.
    pub fn set_panic_handler<F>(&mut self, handler: F)
    where
        F: FnMut(&mut S, &mut EventLoop<S>, Error) -> Result<(), BoxError> + 'static,
    {
        self.on_panic = Some(Box::new(handler));
        self.catching = true;
    }

    /// Whether the handlers' panics are caught ([`EventLoop::set_panic_handler`]).
    pub fn catches_panics(&self) -> bool {
        self.catching
    }

    /// Runs `f` (a handler, named `what`), catching its panic when a panic handler is set.
    fn guarded(
        &mut self,
        state: &mut S,
        what: &'static str,
        f: impl FnOnce(&mut S, &mut Self) -> Result<(), BoxError>,
    ) -> Result<(), BoxError> {
        if !self.catching {
            return f(state, self);
        }
        match crate::catch_panic(what, || f(state, self)) {
            Ok(result) => result,
            Err(panicked) => match self.on_panic.take() {
                Some(mut on_panic) => {
                    let handled = on_panic(state, self, panicked);
                    self.on_panic.get_or_insert(on_panic);
                    handled
                }
                // A panic of the panic handler's own calls: nobody is left to tell.
                None => Err(panicked.into()),
            },
        }
    }

    /// Runs the loop until [`EventLoop::stop`] is called, a handler fails, or nothing is
    /// registered any more.
    ///
    /// A handler's error stops the loop at once and is returned; an [`Error`] a handler
    /// returned comes back as it is, any other error as [`Error::Handler`]. A panicking
    /// handler unwinds through `run`, unless [`EventLoop::set_panic_handler`] catches it.
    pub fn run(&mut self, state: &mut S) -> Result<(), Error> {
        self.stopped = false;
        loop {
            self.run_posted(state)?;
            if self.stopped || self.is_empty() {
                return Ok(());
            }
            self.turn(state, None)?;
        }
    }

    /// Waits for events (at most `max_wait`, or until the next timer), then dispatches them and
    /// the timers that are due: one iteration of [`EventLoop::run`].
    ///
    /// `None`, like a `max_wait` past what the clock holds (`Duration::MAX`), waits for the next
    /// event or timer however far; so does a turn with nothing registered, until a
    /// [`LoopHandle`] posts.
    pub fn turn(&mut self, state: &mut S, max_wait: Option<Duration>) -> Result<(), Error> {
        let next_timer = self.next_deadline();
        let until = match max_wait.and_then(deadline_after) {
            Some(limit) => Some(next_timer.map_or(limit, |t| t.min(limit))),
            None => next_timer,
        };
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        // An interrupted wait returns no event, as a timeout does: the timers below still run,
        // and the caller's loop waits again.
        let waited = self
            .poller
            .wait_timeout(time_left(until), |token, readiness| {
                ready.push((token, readiness));
            });
        let result = waited.and_then(|_| self.dispatch_ready(state, &ready));
        self.ready = ready;
        result?;
        self.fire_timers(state)
    }

    fn dispatch_ready(&mut self, state: &mut S, ready: &[(Token, Readiness)]) -> Result<(), Error> {
        for &(token, readiness) in ready {
            if token == WAKE_TOKEN {
                self.run_posted(state)?;
            } else {
                self.dispatch_source(state, SourceId::from_token(token), readiness)?;
            }
        }
        Ok(())
    }

    fn dispatch_source(
        &mut self,
        state: &mut S,
        id: SourceId,
        readiness: Readiness,
    ) -> Result<(), Error> {
        // A stale event (its source was deregistered earlier in this turn) finds no entry.
        let Some(mut entry) = live_slot(&mut self.slots, id).and_then(|slot| slot.entry.take())
        else {
            return Ok(());
        };
        let result = self.guarded(state, "handler", |state, event_loop| {
            entry.dispatch(state, event_loop, readiness)
        });
        let slot = &mut self.slots[id.index as usize];
        if slot.live {
            let interest = slot.pending_interest.take();
            let reregistered = match (interest, entry.source()) {
                (Some(interest), Some(source)) => {
                    reregister(self.poller.registry(), source, id, interest)
                }
                _ => Ok(()),
            };
            self.slots[id.index as usize].entry = Some(entry);
            if let Err(e) = reregistered {
                result.map_err(|e| Error::from_handler("handler", e))?;
                return Err(e);
            }
        } else {
            // Deregistered by its own handler (or by one it called).
            if let Some(source) = entry.source() {
                self.poller.deregister(source);
            }
            drop(entry);
            self.free_slot(id.index);
        }
        result.map_err(|e| Error::from_handler("handler", e))
    }

    fn run_posted(&mut self, state: &mut S) -> Result<(), Error> {
        while let Ok(posted) = self.posted_rx.try_recv() {
            self.guarded(state, "posted closure", posted)
                .map_err(|e| Error::from_handler("posted closure", e))?;
        }
        Ok(())
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((deadline, id))) = self.heap.peek() {
            if self
                .timers
                .get(&id)
                .is_some_and(|t| t.deadline == Some(deadline))
            {
                return Some(deadline);
            }
            self.heap.pop();
        }
        None
    }

    fn fire_timers(&mut self, state: &mut S) -> Result<(), Error> {
        // No clock read on the turns of a loop without timers.
        if self.heap.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        while let Some(deadline) = self.next_deadline() {
            if deadline > now {
                break;
            }
            let Reverse((_, id)) = self.heap.pop().expect("next_deadline saw it");
            let mut timer = self.timers.remove(&id).expect("next_deadline checked it");
            self.firing = Some((id, false));
            let result = self.guarded(state, "timer", |state, event_loop| {
                (timer.handler)(state, event_loop)
            });
            let (_, cancelled) = self.firing.take().expect("set above");
            if let (Some(period), false) = (timer.period, cancelled) {
                // Re-armed from `now` at the earliest, so a zero or tiny period fires once per
                // turn instead of keeping this loop busy forever; past what the clock holds,
                // never again.
                let period = period.max(Duration::from_nanos(1));
                timer.deadline = deadline_from(deadline, period)
                    .zip(deadline_from(now, period))
                    .map(|(next, earliest)| next.max(earliest));
                if let Some(next) = timer.deadline {
                    self.heap.push(Reverse((next, id)));
                }
                self.timers.insert(id, timer);
            }
            result.map_err(|e| Error::from_handler("timer", e))?;
        }
        Ok(())
    }
}

fn reregister<T: Source + ?Sized>(
    registry: &Registry,
    source: &mut T,
    id: SourceId,
    interest: Interest,
) -> Result<(), Error> {
    registry
        .reregister(source, id.token(), interest)
        .map_err(|source| Error::Io {
            op: "reregister",
            source,
        })
}

/// Changes the interest of one source registered by reference, without the loop at hand (see
/// `EventLoop::rearm`). It must only be used while the source is registered.
pub(crate) struct Rearm {
    registry: Arc<Registry>,
    token: Token,
}

impl fmt::Debug for Rearm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rearm")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Rearm {
    /// Watches `source` for `interest` from now on.
    pub(crate) fn reregister<T: Source + ?Sized>(
        &self,
        source: &mut T,
        interest: Interest,
    ) -> io::Result<()> {
        self.registry.reregister(source, self.token, interest)
    }
}

fn live_slot<S>(slots: &mut [Slot<S>], id: SourceId) -> Option<&mut Slot<S>> {
    slots
        .get_mut(id.index as usize)
        .filter(|slot| slot.live && slot.generation == id.generation)
}

/// A cloneable, thread-safe handle that posts closures to an [`EventLoop`] and wakes it.
///
/// Posted closures run on the loop's thread, in posting order, with the state and the loop.
/// The waker does not keep the loop running: a loop with nothing registered returns from
/// [`EventLoop::run`] and leaves later posts unrun until it runs again.
pub struct LoopHandle<S> {
    tx: Sender<Posted<S>>,
    waker: PollerWaker,
}

impl<S> Clone for LoopHandle<S> {
    fn clone(&self) -> Self {
        LoopHandle {
            tx: self.tx.clone(),
            waker: self.waker.clone(),
        }
    }
}

impl<S> fmt::Debug for LoopHandle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopHandle").finish_non_exhaustive()
    }
}

impl<S> LoopHandle<S> {
    /// Queues `work` for the loop's thread and wakes the loop.
    ///
    /// Fails with [`Error::LoopGone`] once the loop has been dropped.
    pub fn post<F>(&self, work: F) -> Result<(), Error>
    where
        F: FnOnce(&mut S, &mut EventLoop<S>) -> Result<(), BoxError> + Send + 'static,
    {
        self.tx.send(Box::new(work)).map_err(|_| Error::LoopGone)?;
        self.waker
            .wake()
            .map_err(|source| Error::Io { op: "wake", source })
    }
}
