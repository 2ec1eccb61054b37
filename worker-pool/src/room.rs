//! Async submitters waiting for room in a task pool's bounded queue.
//!
//! A blocking [`submit`](crate::TaskPool::submit) waits inside the queue's `send`; a future
//! cannot, so it leaves its [`Waker`] here and the dispatcher wakes as many waiting submitters
//! as it took jobs from the queue. A submitter woken for room it then does not take (it was
//! dropped first) passes the wake on to the next one, so no room goes unnoticed.

use std::{
    collections::VecDeque,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering, fence},
    },
    task::Waker,
};

/// Submitters waiting for room, in the order they came.
#[derive(Debug, Default)]
pub(crate) struct Room {
    /// How many wait: the dispatcher looks at this alone when none does.
    waiting: AtomicUsize,
    list: Mutex<List>,
}

#[derive(Debug, Default)]
struct List {
    next: u64,
    /// Ordered by ticket number, which only grows: found by binary search.
    wakers: VecDeque<(u64, Waker)>,
}

impl List {
    fn find(&self, ticket: u64) -> Result<usize, usize> {
        self.wakers.binary_search_by_key(&ticket, |(t, _)| *t)
    }
}

/// A submitter's place in the [`Room`] line, if it has one.
#[derive(Debug, Default)]
pub(crate) struct Ticket(Option<u64>);

fn lock(m: &Mutex<List>) -> MutexGuard<'_, List> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Room {
    /// Waits for room with `waker`, or refreshes the waker of a wait under way. The caller
    /// then tries the queue once more: room freed before the wait began is not missed.
    pub(crate) fn wait(&self, ticket: &mut Ticket, waker: &Waker) {
        let mut list = lock(&self.list);
        match ticket.0.map(|t| list.find(t)) {
            Some(Ok(i)) => {
                let slot = &mut list.wakers[i].1;
                if !slot.will_wake(waker) {
                    *slot = waker.clone();
                }
            }
            // New, or woken already: back in line.
            _ => {
                let t = list.next;
                list.next += 1;
                list.wakers.push_back((t, waker.clone()));
                self.waiting.fetch_add(1, Ordering::SeqCst);
                ticket.0 = Some(t);
            }
        }
        drop(list);
        // Pairs with the fence in `freed`: either the dispatcher sees this waiter, or the
        // caller's next try sees the room the dispatcher freed.
        fence(Ordering::SeqCst);
    }

    /// The dispatcher took `jobs` jobs from the queue: wakes as many waiting submitters.
    pub(crate) fn freed(&self, jobs: usize) {
        if jobs == 0 {
            return;
        }
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        for _ in 0..jobs {
            let waker = {
                let mut list = lock(&self.list);
                let Some((_, waker)) = list.wakers.pop_front() else {
                    return;
                };
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                waker
            };
            waker.wake();
        }
    }

    /// Wakes every waiting submitter: the pool failed, or its queue closed.
    pub(crate) fn wake_all(&self) {
        self.freed(usize::MAX);
    }

    /// The submitter with `ticket` waits no more: it got room (`took_room`), or it gives up.
    /// One woken for room it does not take wakes the next in its place.
    pub(crate) fn leave(&self, ticket: &mut Ticket, took_room: bool) {
        let Some(t) = ticket.0.take() else { return };
        let mut list = lock(&self.list);
        match list.find(t) {
            Ok(i) => {
                list.wakers.remove(i);
                self.waiting.fetch_sub(1, Ordering::SeqCst);
            }
            Err(_) if !took_room => {
                drop(list);
                self.freed(1);
            }
            Err(_) => {}
        }
    }
}
