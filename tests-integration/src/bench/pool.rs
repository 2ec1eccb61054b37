//! pool benchmarks.

use super::{Config, Line};

/// Runs the pool benchmarks the configuration selects.
pub fn run(_cfg: &Config) -> Vec<Line> {
    Vec::new()
}
