//! The one readiness layer: epoll through mio, a cross-thread waker, saturating deadlines.
//!
//! [`EventLoop`](crate::EventLoop) is built on it for evented workers; the pools use it directly,
//! with sources that own their descriptors (mio's model: a source registers and deregisters
//! itself, so nothing depends on the order in which descriptors are closed).

use std::{
    fmt, io,
    sync::Arc,
    time::{Duration, Instant},
};

use mio::{Events, Interest, Poll, Registry, Token, Waker, event::Source};
use worker_channel::Spin;

use crate::{Error, deadline_after, time_left};

/// The token of a [`Poller`]'s waker; register sources under any other token.
pub const WAKE_TOKEN: Token = Token(usize::MAX);

/// Default capacity of the readiness buffer handed to `epoll_wait`.
pub(crate) const DEFAULT_EVENTS_CAPACITY: usize = 256;

/// What a source is ready for, as one event reported it.
///
/// Readiness is edge-triggered: a handler must consume what it can (read or write until the
/// operation would block) or remember that it did not, because the same readiness is not
/// reported again until it changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Data can be read, or a read would report end of stream.
    pub readable: bool,
    /// Data can be written.
    pub writable: bool,
    /// The peer closed its writing side: reads will reach end of stream.
    pub read_closed: bool,
    /// The peer closed its reading side: writes will fail.
    pub write_closed: bool,
    /// The source reported an error condition.
    pub error: bool,
}

impl Readiness {
    pub(crate) fn from_event(event: &mio::event::Event) -> Self {
        Readiness {
            readable: event.is_readable(),
            writable: event.is_writable(),
            read_closed: event.is_read_closed(),
            write_closed: event.is_write_closed(),
            error: event.is_error(),
        }
    }
}

/// Edge-triggered readiness of many sources, with a waker other threads can use.
///
/// ```
/// use std::time::Duration;
/// use worker_core::{Poller, WAKE_TOKEN, deadline_after};
///
/// let mut poller = Poller::new()?;
/// poller.waker().wake()?;
/// let mut woken = false;
/// poller.wait(deadline_after(Duration::from_secs(5)), |token, _| {
///     woken |= token == WAKE_TOKEN;
/// })?;
/// assert!(woken);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Poller {
    poll: Poll,
    events: Events,
    waker: PollerWaker,
    spin: Spin,
}

impl fmt::Debug for Poller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poller")
            .field("spin", &self.spin)
            .finish_non_exhaustive()
    }
}

impl Poller {
    /// A poller that takes up to 256 events per wait.
    pub fn new() -> Result<Self, Error> {
        Self::with_capacity(DEFAULT_EVENTS_CAPACITY)
    }

    /// A poller that takes up to `events_capacity` events per wait (at least one).
    pub fn with_capacity(events_capacity: usize) -> Result<Self, Error> {
        let io = |op| move |source| Error::Io { op, source };
        let poll = Poll::new().map_err(io("create poll"))?;
        let waker = Waker::new(poll.registry(), WAKE_TOKEN).map_err(io("create waker"))?;
        Ok(Poller {
            poll,
            events: Events::with_capacity(events_capacity.max(1)),
            waker: PollerWaker(Arc::new(waker)),
            spin: Spin::OFF,
        })
    }

    /// Sets the latency mode (see [`Spin`]): a wait that finds no event at once looks again,
    /// without blocking (`epoll_wait` with no timeout), for up to the budget (never past its
    /// deadline), and only then blocks. An idle poller spends at most one budget of CPU per
    /// wait before it sleeps.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use worker_core::{Poller, Spin};
    ///
    /// let mut poller = Poller::new()?;
    /// poller.set_spin(Spin::new(Duration::from_micros(200)));
    /// let waker = poller.waker();
    /// std::thread::spawn(move || waker.wake());
    /// let start = Instant::now();
    /// while poller.wait(worker_core::deadline_after(Duration::from_secs(5)), |_, _| {})? == 0 {}
    /// assert!(start.elapsed() < Duration::from_secs(5));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_spin(&mut self, spin: Spin) {
        self.spin = spin;
    }

    /// The latency mode.
    pub fn spin(&self) -> Spin {
        self.spin
    }

    /// The registry, to register, reregister and deregister sources.
    pub fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// Registers `source` under `token` (anything but [`WAKE_TOKEN`]).
    pub fn register<S: Source + ?Sized>(
        &self,
        source: &mut S,
        token: Token,
        interest: Interest,
    ) -> Result<(), Error> {
        debug_assert_ne!(token, WAKE_TOKEN, "the waker's token");
        self.registry()
            .register(source, token, interest)
            .map_err(|source| Error::Io {
                op: "register",
                source,
            })
    }

    /// Takes `source` out of the poller, while it still owns its descriptors.
    ///
    /// A source that was not registered is not an error: that is the state wanted.
    pub fn deregister<S: Source + ?Sized>(&self, source: &mut S) {
        let _ = self.registry().deregister(source);
    }

    /// A waker that other threads use to end a [`Poller::wait`] early.
    pub fn waker(&self) -> PollerWaker {
        self.waker.clone()
    }

    /// Waits until at least one source is ready, the waker is woken, or `deadline` passes
    /// (`None`: no deadline), then calls `on_event` for each event.
    ///
    /// An interrupted wait returns with no event, as a timeout does: callers loop anyway.
    /// Returns the number of events.
    pub fn wait(
        &mut self,
        deadline: Option<Instant>,
        mut on_event: impl FnMut(Token, Readiness),
    ) -> Result<usize, Error> {
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        self.wait_timeout(timeout, &mut on_event)
    }

    /// As [`Poller::wait`], with a relative timeout.
    pub fn wait_timeout(
        &mut self,
        mut timeout: Option<Duration>,
        mut on_event: impl FnMut(Token, Readiness),
    ) -> Result<usize, Error> {
        let mut found = false;
        if !self.spin.is_off() && timeout != Some(Duration::ZERO) {
            let deadline = timeout.and_then(deadline_after);
            let (poll, events) = (&mut self.poll, &mut self.events);
            found = self
                .spin
                .run(deadline, || match poll.poll(events, Some(Duration::ZERO)) {
                    Ok(()) => Ok((!events.is_empty()).then_some(())),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
                    Err(source) => Err(Error::Io { op: "poll", source }),
                })?
                .is_some();
            if !found {
                timeout = time_left(deadline);
            }
        }
        if !found {
            match self.poll.poll(&mut self.events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
                Err(source) => return Err(Error::Io { op: "poll", source }),
            }
        }
        let mut n = 0;
        for event in self.events.iter() {
            n += 1;
            on_event(event.token(), Readiness::from_event(event));
        }
        Ok(n)
    }
}

/// Wakes a [`Poller`] from any thread; its wait reports [`WAKE_TOKEN`].
#[derive(Clone)]
pub struct PollerWaker(Arc<Waker>);

impl fmt::Debug for PollerWaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PollerWaker").finish_non_exhaustive()
    }
}

impl PollerWaker {
    /// Wakes the poller (several wakes before it waits count as one).
    pub fn wake(&self) -> io::Result<()> {
        self.0.wake()
    }
}
