//! Worker implementations and master scenarios for the black-box tests of `exsyst-worker`.
//!
//! The `test-worker` binary registers every implementation here; the tests start it as a worker
//! executable (through the profile) and as a master of its own (with `master <scenario>`).

// Test harnesses and chores start their helper processes directly (see clippy.toml).
#![allow(clippy::disallowed_methods)]

pub mod async_scenarios;
pub mod hardening_scenarios;
pub mod rng;
pub mod scenarios;
pub mod shared_scenarios;
pub mod sys;
pub mod workers;
pub mod zygote_scenarios;

use exsyst_worker::Registry;

/// Every implementation the test binaries can run.
pub fn registry() -> Registry {
    let registry = workers::dedicated::register(exsyst_worker::registry());
    let registry = workers::pool::register(registry);
    let registry = workers::hostile::register(registry);
    let registry = workers::hardening::register(registry);
    let registry = workers::hostile_tasks::register(registry);
    let registry = workers::shared::register(registry);
    let registry = workers::zygote::register(registry);
    workers::evented::register(registry)
}

/// Generous timeouts for tests, scaled by `EXSYST_TEST_TIMEOUT_SCALE` (a float, default 1) for
/// slow machines.
pub fn timeout(base: std::time::Duration) -> std::time::Duration {
    let scale = std::env::var("EXSYST_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(1.0);
    base.mul_f64(scale)
}
pub mod bench;
