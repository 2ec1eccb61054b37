//! Evented-worker benchmarks: round trip and pipelined throughput against a raw pipe, and the
//! round trip in the latency mode against the same without it.

use exsyst_worker::{BootstrapProfile, DedicatedWorker};

use super::{
    Config, Line, alternate,
    dedicated::{SPIN, echo_bench, worker_round_trips},
};
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
    if cfg.wants("evented round trip spin") {
        // The latency mode (the worker's loop and the master's receive spin) against the same
        // worker without it.
        let spinning = BootstrapProfile::new().with_spin(SPIN);
        let mut line = Line::new(cfg.name("evented round trip spin"), "µs");
        for round in 0..cfg.rounds {
            let ours = || worker_round_trips::<EventedEcho>(&spinning, &0, 16, 3000);
            let base = || worker_round_trips::<EventedEcho>(&profile, &0, 16, 3000);
            line.rounds.push(alternate(round, ours, base));
        }
        lines.push(line);
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
