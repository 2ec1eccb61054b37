//! evented benchmarks.

use super::{Config, Line};

/// Runs the evented benchmarks the configuration selects.
pub fn run(_cfg: &Config) -> Vec<Line> {
    Vec::new()
}
