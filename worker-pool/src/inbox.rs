//! Where results wait for whoever asked for them: the one channel under [`TaskHandle`],
//! [`MapUnordered`] and their async faces.
//!
//! The dispatcher sends into an inbox without ever waiting. Its receiver waits for an item by
//! blocking, with a deadline, or as a future, with a [`Waker`]: the sender wakes whichever
//! waits, so no thread polls and none is spent per task. An inbox closes when its last sender
//! is gone or when the pool's [`Waiting`] ends every wait (the pool was dropped, or its
//! dispatcher thread ended), whichever comes first; items already in it are still received.
//!
//! [`TaskHandle`]: crate::TaskHandle
//! [`MapUnordered`]: crate::MapUnordered

use std::{
    collections::VecDeque,
    fmt,
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Instant,
};

/// A new inbox: its sender (cloned for every job that answers into it) and its receiver,
/// whose waits `waiting` ends when the pool goes.
pub(crate) fn channel<T: Send + 'static>(
    waiting: &Arc<Waiting>,
) -> (InboxSender<T>, InboxReceiver<T>) {
    let inbox = Arc::new(Inbox {
        state: Mutex::new(State {
            items: Items::default(),
            senders: 1,
            closed: false,
            waker: None,
            sleepers: 0,
        }),
        ready: Condvar::new(),
    });
    let receiver = InboxReceiver {
        inbox: inbox.clone(),
        waiting: waiting.clone(),
        key: AtomicUsize::new(NOT_WAITING),
    };
    (InboxSender(inbox), receiver)
}

struct Inbox<T> {
    state: Mutex<State<T>>,
    /// Blocked receivers wait on it.
    ready: Condvar,
}

struct State<T> {
    items: Items<T>,
    /// Senders alive: when the last goes, no item can come any more.
    senders: usize,
    /// No item will come any more.
    closed: bool,
    /// The task to wake when an item comes or the inbox closes.
    waker: Option<Waker>,
    /// Threads blocked on `ready`: without any, an item costs no system call.
    sleepers: usize,
}

/// An inbox's items, in order: the first without an allocation of its own, since most
/// inboxes (a single task's) never hold more.
struct Items<T> {
    first: Option<T>,
    rest: VecDeque<T>,
}

impl<T> Default for Items<T> {
    fn default() -> Self {
        Items {
            first: None,
            rest: VecDeque::new(),
        }
    }
}

impl<T> Items<T> {
    fn push_back(&mut self, item: T) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(item);
        } else {
            self.rest.push_back(item);
        }
    }

    fn pop_front(&mut self) -> Option<T> {
        self.first.take().or_else(|| self.rest.pop_front())
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }
}

/// Locks a mutex whose data stays valid even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T> Inbox<T> {
    /// Wakes whoever waits, after `state` changed; wakes the task after unlocking, so that
    /// a waker that runs code of its own never runs it under our lock.
    fn signal(&self, mut state: MutexGuard<'_, State<T>>) {
        let waker = state.waker.take();
        if state.sleepers > 0 {
            self.ready.notify_all();
        }
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Something [`Waiting`] can tell that nothing more will come.
pub(crate) trait Abandon: Send + Sync {
    /// Closes it and wakes whoever waits on it.
    fn abandon(&self);
}

impl<T: Send> Abandon for Inbox<T> {
    fn abandon(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        self.signal(state);
    }
}

/// The sending side of an inbox, held by a queued or in-flight job.
pub(crate) struct InboxSender<T>(Arc<Inbox<T>>);

impl<T> fmt::Debug for InboxSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxSender").finish_non_exhaustive()
    }
}

impl<T> InboxSender<T> {
    /// Hands `item` over, waking the receiver; never waits. An item nobody receives any more
    /// is dropped with the inbox.
    pub(crate) fn send(&self, item: T) {
        let mut state = lock(&self.0.state);
        state.items.push_back(item);
        self.0.signal(state);
    }
}

impl<T> Clone for InboxSender<T> {
    fn clone(&self) -> Self {
        lock(&self.0.state).senders += 1;
        InboxSender(self.0.clone())
    }
}

impl<T> Drop for InboxSender<T> {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        state.senders -= 1;
        if state.senders == 0 {
            state.closed = true;
            self.0.signal(state);
        }
    }
}

/// What [`InboxReceiver::try_recv`] found.
#[derive(Debug)]
pub(crate) enum TryRecv<T> {
    Item(T),
    Empty,
    Closed,
}

/// The deadline of [`InboxReceiver::recv_until`] passed first.
#[derive(Debug)]
pub(crate) struct TimedOut;

/// The receiving side of an inbox.
pub(crate) struct InboxReceiver<T> {
    inbox: Arc<Inbox<T>>,
    waiting: Arc<Waiting>,
    /// Its entry in [`Waiting`] from its first wait on, or [`NOT_WAITING`].
    key: AtomicUsize,
}

/// How long a blocking receive looks for a result without sleeping (yielding the CPU between
/// looks) before it sleeps.
const BACKOFF: worker_channel::Spin = worker_channel::Spin::from_micros(5);

/// The [`InboxReceiver::key`] of a receiver that never waited.
const NOT_WAITING: usize = usize::MAX;

impl<T> fmt::Debug for InboxReceiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.inbox.state);
        f.debug_struct("InboxReceiver")
            .field("items", &state.items.len())
            .field("closed", &state.closed)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> InboxReceiver<T> {
    /// The next item, without waiting.
    pub(crate) fn try_recv(&self) -> TryRecv<T> {
        let mut state = lock(&self.inbox.state);
        match state.items.pop_front() {
            Some(item) => TryRecv::Item(item),
            None if state.closed => TryRecv::Closed,
            None => TryRecv::Empty,
        }
    }

    /// The next item, or `None` once the inbox is closed and empty; blocks until then or
    /// until `deadline` (`None`: no deadline).
    pub(crate) fn recv_until(&self, deadline: Option<Instant>) -> Result<Option<T>, TimedOut> {
        // A result a moment away (the usual case for tiny tasks) is taken without sleeping:
        // the thread yields to the dispatcher and the workers for a few microseconds first, as
        // a channel's receive backs off before it parks. On one CPU especially, a sleep and a
        // wake per result would cost more than the tasks.
        let found = BACKOFF.run(deadline, || {
            Ok::<_, ()>(match self.try_recv() {
                TryRecv::Item(item) => Some(Some(item)),
                TryRecv::Closed => Some(None),
                TryRecv::Empty => None,
            })
        });
        if let Ok(Some(found)) = found {
            return Ok(found);
        }
        self.enlist();
        let mut state = lock(&self.inbox.state);
        loop {
            if let Some(item) = state.items.pop_front() {
                return Ok(Some(item));
            }
            if state.closed {
                return Ok(None);
            }
            let left = worker_core::time_left(deadline);
            if left.is_some_and(|left| left.is_zero()) {
                return Err(TimedOut);
            }
            state.sleepers += 1;
            let ready = &self.inbox.ready;
            state = match left {
                None => ready.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(left) => {
                    let waited = ready.wait_timeout(state, left);
                    waited.unwrap_or_else(|e| e.into_inner()).0
                }
            };
            state.sleepers -= 1;
        }
    }

    /// The next item, or `None` once the inbox is closed and empty; otherwise `cx`'s task is
    /// woken when either comes.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if self.key.load(Ordering::Acquire) == NOT_WAITING {
            match self.try_recv() {
                TryRecv::Item(item) => return Poll::Ready(Some(item)),
                TryRecv::Closed => return Poll::Ready(None),
                TryRecv::Empty => self.enlist(),
            }
        }
        let mut state = lock(&self.inbox.state);
        if let Some(item) = state.items.pop_front() {
            return Poll::Ready(Some(item));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Enters the pool's [`Waiting`] before the first wait, so that the pool's end closes the
    /// inbox; a pool that has ended already closes it at once.
    fn enlist(&self) {
        if self.key.load(Ordering::Acquire) != NOT_WAITING {
            return;
        }
        let Some(key) = self.waiting.enlist(self.inbox.clone()) else {
            return self.inbox.abandon();
        };
        let stored =
            self.key
                .compare_exchange(NOT_WAITING, key, Ordering::AcqRel, Ordering::Acquire);
        if stored.is_err() {
            // Another thread waiting on the same handle enlisted first.
            self.waiting.leave(key);
        }
    }
}

impl<T> Drop for InboxReceiver<T> {
    fn drop(&mut self) {
        let key = *self.key.get_mut();
        if key != NOT_WAITING {
            self.waiting.leave(key);
        }
    }
}

/// The receivers of one pool that wait, so that the pool's end closes their inboxes: a
/// receiver enters on its first wait and leaves when dropped.
///
/// The dispatcher thread ends it as it ends (however it ends), and the pool's `Drop` ends it in
/// any case, even while the dispatcher is still held (by a user type's `Serialize`, say): no
/// wait outlives the pool.
#[derive(Default)]
pub(crate) struct Waiting {
    state: Mutex<WaitingState>,
}

#[derive(Default)]
struct WaitingState {
    ended: bool,
    entries: Vec<Option<Arc<dyn Abandon>>>,
    /// Free places in `entries`.
    free: Vec<usize>,
}

impl fmt::Debug for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.state);
        f.debug_struct("Waiting")
            .field("ended", &state.ended)
            .field("waiting", &(state.entries.len() - state.free.len()))
            .finish()
    }
}

impl Waiting {
    /// Enters `who`; `None` once ended.
    fn enlist(&self, who: Arc<dyn Abandon>) -> Option<usize> {
        let mut state = lock(&self.state);
        if state.ended {
            return None;
        }
        Some(match state.free.pop() {
            Some(key) => {
                state.entries[key] = Some(who);
                key
            }
            None => {
                state.entries.push(Some(who));
                state.entries.len() - 1
            }
        })
    }

    fn leave(&self, key: usize) {
        let mut state = lock(&self.state);
        if let Some(entry @ Some(_)) = state.entries.get_mut(key) {
            *entry = None;
            state.free.push(key);
        }
    }

    /// Closes every inbox waited on, and every one waited on from now on.
    pub(crate) fn end(&self) {
        let entries = {
            let mut state = lock(&self.state);
            state.ended = true;
            state.free.clear();
            std::mem::take(&mut state.entries)
        };
        for entry in entries.into_iter().flatten() {
            entry.abandon();
        }
    }
}
