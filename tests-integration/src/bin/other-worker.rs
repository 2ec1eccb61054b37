//! A separate worker executable: registers only `echo`, as a program other than the master.

// No `sys` module here: the OS is reached through the crates' safe APIs.
#![forbid(unsafe_code)]
// Test harnesses and chores start their helper processes directly (see clippy.toml).
#![allow(clippy::disallowed_methods)]

fn main() {
    exsyst_worker::registry()
        .raw::<tests_integration::workers::dedicated::Echo>()
        .run_if_worker();
    eprintln!("other-worker: only runs as a worker");
    std::process::exit(2);
}
