//! The operators' programs, `check_shared_worker` and `worker-ctl`, run as an operator runs
//! them against real shared workers: on a thread of this process, or in a child process (this
//! binary re-executed to play a role in the `helper` test, which does nothing in a normal run).

// The tests start the programs and re-execute themselves (see clippy.toml).
#![allow(clippy::disallowed_methods)]

mod check;
mod ctl;
mod openmetrics;
mod support;

/// Where the helper role lives.
#[test]
fn helper() {
    if let Ok(role) = std::env::var(support::ROLE_VAR) {
        support::play(&role);
    }
}
