//! Spin, then park: the one busy-wait of the workspace.

use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The latency mode: how long a receive that finds nothing keeps looking before it blocks.
///
/// On a machine whose idle CPUs halt (most virtual machines, and laptops), a process blocked in
/// the kernel takes tens of microseconds to wake up when its peer on another CPU sends to it: a
/// blocking round trip between two CPUs costs 45–75 µs on the project's machine, against under
/// 2 µs when both sides busy-poll. A receive with a spin budget that finds nothing to hand out
/// (the budget starts there: right after a send, in a conversation) tries again and again,
/// without blocking, for up to the budget, and only then blocks (parks) as usual; a
/// conversation in full flow never sleeps, and an idle side burns at most one budget of CPU
/// before it parks.
///
/// Use it for latency-critical request/response on a machine with spare cores: each waiting
/// side keeps a CPU busy for up to the budget per receive, so two spinning processes on one CPU,
/// or more spinners than cores, only take turns burning it (the spin yields the CPU between
/// attempts, so such a setup stays about as fast as without it, not slower).
/// Spinning is off by default ([`Spin::OFF`]).
///
/// The budget is capped at [`Spin::MAX_BUDGET`] (10 ms): a wake-up costs tens of microseconds,
/// so a longer spin could not pay for itself, and `Duration::MAX` must not mean "spin for ever".
/// It serializes as whole microseconds (an integer, rounded up), capped the same way when read.
///
/// ```
/// use std::time::Duration;
/// use worker_channel::Spin;
///
/// assert!(Spin::default().is_off());
/// assert_eq!(Spin::new(Duration::from_micros(100)).budget(), Duration::from_micros(100));
/// assert_eq!(Spin::new(Duration::MAX).budget(), Spin::MAX_BUDGET);
///
/// // The one spin loop: attempts until one gives a value or the budget is spent.
/// let mut tries = 0;
/// let found = Spin::new(Duration::from_millis(5)).run(None, || {
///     tries += 1;
///     Ok::<_, ()>((tries == 3).then_some("ready"))
/// });
/// assert_eq!(found, Ok(Some("ready")));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Spin {
    budget: Duration,
}

impl Spin {
    /// No spinning: receives block at once (the default).
    pub const OFF: Spin = Spin {
        budget: Duration::ZERO,
    };

    /// The largest budget; longer ones are cut to it.
    pub const MAX_BUDGET: Duration = Duration::from_millis(10);

    /// Spins for up to `budget` (at most [`Spin::MAX_BUDGET`]; zero is [`Spin::OFF`]).
    pub const fn new(budget: Duration) -> Self {
        let budget = if budget.as_nanos() > Self::MAX_BUDGET.as_nanos() {
            Self::MAX_BUDGET
        } else {
            budget
        };
        Spin { budget }
    }

    /// Spins for up to `micros` microseconds (capped as [`Spin::new`] does).
    pub const fn from_micros(micros: u64) -> Self {
        Self::new(Duration::from_micros(micros))
    }

    /// The budget.
    pub const fn budget(self) -> Duration {
        self.budget
    }

    /// The budget in whole microseconds, rounded up (a budget under a microsecond is one), as
    /// it travels to workers.
    pub fn as_micros(self) -> u64 {
        // At most 10 ms: no overflow.
        self.budget.as_nanos().div_ceil(1000) as u64
    }

    /// Whether spinning is off.
    pub const fn is_off(self) -> bool {
        self.budget.is_zero()
    }

    /// Calls `attempt` until it gives a value (`Ok(Some(_))`) or an error, the budget is spent,
    /// or `deadline` passes; `Ok(None)` when nothing came in time. With spinning off, or a
    /// deadline already past, `attempt` is not called.
    ///
    /// Between attempts the CPU is yielded to any other thread that waits for it (the peer,
    /// when both share one CPU), which costs one system call when none does.
    pub fn run<T, E>(
        self,
        deadline: Option<Instant>,
        mut attempt: impl FnMut() -> Result<Option<T>, E>,
    ) -> Result<Option<T>, E> {
        if self.is_off() {
            return Ok(None);
        }
        let now = Instant::now();
        let end = match (now.checked_add(self.budget), deadline) {
            (Some(end), Some(deadline)) => end.min(deadline),
            (Some(end), None) => end,
            (None, deadline) => deadline.unwrap_or(now),
        };
        if end <= now {
            return Ok(None);
        }
        loop {
            if let Some(found) = attempt()? {
                return Ok(Some(found));
            }
            if Instant::now() >= end {
                return Ok(None);
            }
            // Whoever else waits for this CPU (the peer, when both share it) runs now; with
            // nobody waiting, this returns at once. Yielding less often was measured slower:
            // on one CPU each hand-over waited for the spinner's next yield.
            std::thread::yield_now();
        }
    }
}

impl Serialize for Spin {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.as_micros())
    }
}

impl<'de> Deserialize<'de> for Spin {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u64::deserialize(deserializer).map(Spin::from_micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extremes_are_capped_or_off() {
        assert_eq!(Spin::new(Duration::MAX).budget(), Spin::MAX_BUDGET);
        assert_eq!(Spin::from_micros(u64::MAX).budget(), Spin::MAX_BUDGET);
        assert!(Spin::new(Duration::ZERO).is_off());
        assert_eq!(Spin::new(Duration::from_nanos(1)).as_micros(), 1);
        assert_eq!(Spin::new(Duration::MAX).as_micros(), 10_000);
    }

    #[test]
    fn it_travels_as_microseconds() {
        let bytes = crate::Codec::Json.encode(&Spin::from_micros(150)).unwrap();
        assert_eq!(bytes, b"150");
        let back: Spin = crate::Codec::Json.decode(b"99999999").unwrap();
        assert_eq!(back.budget(), Spin::MAX_BUDGET);
    }

    #[test]
    fn off_never_attempts_and_a_past_deadline_neither() {
        let mut called = false;
        let none = Spin::OFF.run(None, || {
            called = true;
            Ok::<Option<()>, ()>(Some(()))
        });
        assert_eq!(none, Ok(None));
        let past = Spin::new(Spin::MAX_BUDGET).run(Some(Instant::now()), || {
            called = true;
            Ok::<Option<()>, ()>(Some(()))
        });
        assert_eq!(past, Ok(None));
        assert!(!called);
    }

    #[test]
    fn a_spin_ends_with_its_budget_and_errors_end_it_at_once() {
        let start = Instant::now();
        let nothing = Spin::from_micros(2000).run(None, || Ok::<Option<()>, ()>(None));
        assert_eq!(nothing, Ok(None));
        assert!(start.elapsed() >= Duration::from_micros(2000));
        let mut tries = 0;
        let failed = Spin::new(Spin::MAX_BUDGET).run(None, || {
            tries += 1;
            Err::<Option<()>, _>("broken")
        });
        assert_eq!((failed, tries), (Err("broken"), 1));
    }
}
