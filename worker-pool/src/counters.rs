//! A pool's statistics as status counters, so that a shared worker that owns a pool reports it
//! from `on_query` in one call.

use worker_core::Counter;

use crate::{PoolStats, WorkerPool};

/// A gauge: a quantity now, from 0 up.
fn gauge(prefix: &str, name: &str, value: usize) -> Counter {
    Counter::new(format!("{prefix}{name}"), value as f64).with_min(0.0)
}

/// A count that only grows: unit `c`, the Monitoring Plugins' continuous counter (an
/// OpenMetrics counter).
fn total(prefix: &str, name: &str, value: u64) -> Counter {
    Counter::new(format!("{prefix}{name}"), value as f64)
        .with_unit("c")
        .with_min(0.0)
}

impl PoolStats {
    /// These statistics as status counters named `{prefix}workers`, `{prefix}busy`,
    /// `{prefix}idle`, `{prefix}queued`, `{prefix}in_flight`, `{prefix}completed`,
    /// `{prefix}failed`, `{prefix}restarted`, `{prefix}recycled` and `{prefix}resent`, in that
    /// order.
    ///
    /// Gauges have a minimum of 0 (`busy` and `idle` a maximum of `workers` too); the five
    /// counts that only grow have the unit `c`.
    /// `Vec::<Counter>::from(stats)` gives the same with the prefix `pool_`.
    ///
    /// ```
    /// use worker_core::WorkerStatus;
    /// use worker_pool::PoolStats;
    ///
    /// let stats = PoolStats::default(); // in a worker: `self.pool.stats()`
    /// let status = WorkerStatus::new("serving").with_counters(stats.to_counters("pool_"));
    /// assert_eq!(status.counter("pool_workers").and_then(|c| c.value()), Some(0.0));
    /// assert_eq!(status.counter("pool_completed").unwrap().unit(), Some("c"));
    /// ```
    pub fn to_counters(&self, prefix: &str) -> Vec<Counter> {
        let workers = self.workers as f64;
        vec![
            gauge(prefix, "workers", self.workers),
            gauge(prefix, "busy", self.busy).with_max(workers),
            gauge(prefix, "idle", self.idle).with_max(workers),
            gauge(prefix, "queued", self.queued),
            gauge(prefix, "in_flight", self.in_flight),
            total(prefix, "completed", self.completed),
            total(prefix, "failed", self.failed),
            total(prefix, "restarted", self.restarted),
            total(prefix, "recycled", self.recycled),
            total(prefix, "resent", self.resent),
        ]
    }
}

/// [`PoolStats::to_counters`] with the prefix `pool_`.
impl From<PoolStats> for Vec<Counter> {
    fn from(stats: PoolStats) -> Self {
        stats.to_counters("pool_")
    }
}

impl WorkerPool {
    /// What this pool knows of itself as status counters: `{prefix}workers` (a gauge from 0)
    /// and `{prefix}restarted` (unit `c`, workers replaced after they failed).
    ///
    /// A [`WorkerPool`] leaves sending and receiving to its user, so it has no task counts;
    /// a [`TaskPool`](crate::TaskPool) has, through [`PoolStats::to_counters`].
    pub fn to_counters(&self, prefix: &str) -> Vec<Counter> {
        vec![
            gauge(prefix, "workers", self.len()),
            total(prefix, "restarted", self.restarted()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statistic_becomes_a_counter_in_order() {
        let stats = PoolStats {
            workers: 4,
            busy: 3,
            idle: 1,
            queued: 7,
            in_flight: 5,
            max_in_flight: 3,
            completed: 100,
            failed: 2,
            restarted: 1,
            recycled: 6,
            resent: 8,
        };
        let counters = stats.to_counters("p.");
        let shown: Vec<String> = counters.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "p.workers: 4 (min 0)",
                "p.busy: 3 (min 0, max 4)",
                "p.idle: 1 (min 0, max 4)",
                "p.queued: 7 (min 0)",
                "p.in_flight: 5 (min 0)",
                "p.completed: 100 c (min 0)",
                "p.failed: 2 c (min 0)",
                "p.restarted: 1 c (min 0)",
                "p.recycled: 6 c (min 0)",
                "p.resent: 8 c (min 0)",
            ]
        );
        let from: Vec<Counter> = stats.into();
        assert_eq!(from, stats.to_counters("pool_"));
        assert_eq!(from[0].name(), "pool_workers");
    }
}
