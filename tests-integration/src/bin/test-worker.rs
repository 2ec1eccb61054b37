//! Runs the test implementations as a worker, or a master scenario (`master <scenario>`).

// No `sys` module here: the OS is reached through the crates' safe APIs.
#![forbid(unsafe_code)]
// Test harnesses and chores start their helper processes directly (see clippy.toml).
#![allow(clippy::disallowed_methods)]

fn main() -> anyhow::Result<()> {
    tests_integration::registry().run_if_worker();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("master") => tests_integration::scenarios::run(&args[1..]),
        _ => anyhow::bail!("usage: test-worker master <scenario> [args]"),
    }
}
