//! `cargo xtask bench` runs this (built in release mode): every benchmark, as a ratio against
//! its baseline measured in the same run.
//!
//! Usage: `bench [--rounds N] [--suffix TEXT] [FILTER]`. Started as a worker (by itself), it runs
//! the test implementations and the baseline peers instead.

// No `sys` module here: the OS is reached through the crates' safe APIs.
#![forbid(unsafe_code)]
// Test harnesses and chores start their helper processes directly (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use tests_integration::bench::{self, Config};

fn main() -> anyhow::Result<()> {
    tests_integration::registry().run_if_worker();
    bench::dedicated::run_baseline_peer_if_asked();
    bench::pool::run_peer_if_asked();
    bench::shared::run_peer_if_asked();

    let mut cfg = Config {
        rounds: 7,
        suffix: String::new(),
        filter: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => {
                cfg.rounds = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--rounds N"))?
                    .parse()?
            }
            "--suffix" => {
                cfg.suffix = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--suffix TEXT"))?
            }
            _ if !arg.starts_with('-') => cfg.filter = Some(arg),
            _ => anyhow::bail!("usage: bench [--rounds N] [--suffix TEXT] [FILTER]"),
        }
    }
    let modules: [fn(&Config) -> Vec<bench::Line>; 4] = [
        bench::dedicated::run,
        bench::evented::run,
        bench::pool::run,
        bench::shared::run,
    ];
    for module in modules {
        for line in module(&cfg) {
            println!("{}", line.render());
        }
    }
    Ok(())
}
