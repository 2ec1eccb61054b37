//! Evented-worker benchmarks: round trip and pipelined throughput against a raw pipe.

use exsyst_worker::{BootstrapProfile, DedicatedWorker};

use super::{Config, Line, dedicated::echo_bench};
use crate::workers::evented::EventedEcho;

/// Runs the evented benchmarks the configuration selects.
pub fn run(cfg: &Config) -> Vec<Line> {
    let profile = BootstrapProfile::new();
    let spawn = || DedicatedWorker::spawn_with_args::<EventedEcho>(&profile, &0).expect("spawn");
    let mut lines = Vec::new();
    if cfg.wants("evented round trip") {
        lines.push(echo_bench(
            cfg,
            spawn,
            "evented round trip",
            16,
            3000,
            1,
            |us| us,
        ));
    }
    if cfg.wants("evented pipelined") {
        // Throughput with 64 messages in flight: messages per second, higher is better.
        lines.push(echo_bench(
            cfg,
            spawn,
            "evented pipelined",
            16,
            50_000,
            64,
            |us| 1e6 / us,
        ));
    }
    lines
}
