//! The integration tests of worker-killswitch: real files, real locks, real processes.
//!
//! Other processes are this binary re-executed to run the `helper` test, which plays the role
//! named in `support::ROLE_VAR` and does nothing in a normal run.

// The tests re-execute themselves as helper processes (see clippy.toml).
#![allow(clippy::disallowed_methods)]

mod canonical;
mod concurrency;
mod crash;
mod errors;
mod format;
mod lock;
mod support;
mod temp_files;

use std::path::Path;

/// Where each helper role lives.
#[test]
fn helper() {
    let Ok(role) = std::env::var(support::ROLE_VAR) else {
        return;
    };
    let path = std::env::var_os(support::PATH_VAR).expect("helper without a path");
    let arg = std::env::var(support::ARG_VAR).unwrap_or_default();
    let path = Path::new(&path);
    match role.as_str() {
        "toggle" => concurrency::toggle_helper(path, &arg),
        "reader" => concurrency::reader_helper(path),
        "hold-lock" => crash::hold_lock_helper(path),
        "check-start" => errors::check_start_helper(path, &arg),
        "disable" => format::disable_helper(path, &arg),
        "hold-guard" => lock::hold_guard_helper(path),
        "try-lock" => lock::try_lock_helper(path),
        other => panic!("unknown helper role {other:?}"),
    }
}
