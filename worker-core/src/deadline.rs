//! The one saturating deadline helper: every timeout of every crate goes through it.

use std::time::{Duration, Instant};

/// The instant `timeout` from now, or `None` ("no deadline, wait for ever") when that instant is
/// past what [`Instant`] can hold.
///
/// A caller's `Duration::MAX` therefore means "no deadline", never a panic.
///
/// ```
/// use std::time::Duration;
/// use worker_core::deadline_after;
///
/// assert!(deadline_after(Duration::MAX).is_none());
/// assert!(deadline_after(Duration::from_millis(10)).is_some());
/// ```
pub fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// `deadline + after`, or `None` when that is past what [`Instant`] can hold.
pub fn deadline_from(start: Instant, after: Duration) -> Option<Instant> {
    start.checked_add(after)
}

/// Time left until `deadline`: zero once it passed, `None` for no deadline.
pub fn time_left(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}
