//! Benchmarks as ratios against a baseline measured in the same run, alternating rounds.
//!
//! This machine is noisy (the same raw pipe ping-pong ranges over an order of magnitude between
//! runs, depending on where the two processes land), so every benchmark runs ours and its
//! baseline alternately, several rounds, and reports the median of the per-round ratios.

pub mod dedicated;
pub mod evented;
pub mod pool;
pub mod shared;

/// One benchmark's measurements: per round, ours and the baseline's, in `unit`.
#[derive(Debug, Clone)]
pub struct Line {
    /// The benchmark's name, as printed.
    pub name: String,
    /// The unit of both figures (`µs`, `MiB/s`, `tasks/s`, ...).
    pub unit: &'static str,
    /// Per round: (ours, baseline).
    pub rounds: Vec<(f64, f64)>,
}

impl Line {
    /// A line with no rounds yet.
    pub fn new(name: impl Into<String>, unit: &'static str) -> Self {
        Line {
            name: name.into(),
            unit,
            rounds: Vec::new(),
        }
    }

    /// Median of the per-round ratios ours / baseline.
    pub fn ratio(&self) -> f64 {
        median(self.rounds.iter().map(|(o, b)| o / b).collect())
    }

    /// `bench NAME: RATIO x BASELINE (ours X, baseline Y)`; with `EXSYST_BENCH_VERBOSE` set, the
    /// rounds follow on lines of their own.
    pub fn render(&self) -> String {
        let mut rounds = String::new();
        if std::env::var_os("EXSYST_BENCH_VERBOSE").is_some() {
            for (ours, base) in &self.rounds {
                rounds.push_str(&format!(
                    "\n  round: ours {}, baseline {}",
                    fmt_num(*ours),
                    fmt_num(*base)
                ));
            }
        }
        let ours = median(self.rounds.iter().map(|r| r.0).collect());
        let base = median(self.rounds.iter().map(|r| r.1).collect());
        format!(
            "bench {}: {:.3} x BASELINE (ours {} {u}, baseline {} {u}; median of {} rounds)",
            self.name,
            self.ratio(),
            fmt_num(ours),
            fmt_num(base),
            self.rounds.len(),
            u = self.unit
        ) + &rounds
    }
}

fn fmt_num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.4}")
    }
}

/// The median of `v` (NaN for an empty list).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Runs ours and the baseline, in an order that alternates with the round.
pub fn alternate(
    round: usize,
    ours: impl FnOnce() -> f64,
    base: impl FnOnce() -> f64,
) -> (f64, f64) {
    if round % 2 == 0 {
        let o = ours();
        (o, base())
    } else {
        let b = base();
        (ours(), b)
    }
}

/// Settings every benchmark module gets.
#[derive(Debug, Clone)]
pub struct Config {
    /// Alternating rounds per benchmark.
    pub rounds: usize,
    /// Suffix for names (" pinned" when both processes share one CPU).
    pub suffix: String,
    /// Keep only benchmarks whose name contains this.
    pub filter: Option<String>,
}

impl Config {
    /// Whether the benchmark `name` is selected.
    pub fn wants(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| name.contains(f))
    }

    /// Whether the filter names `part` (so a broader benchmark can step aside).
    pub fn wants_only(&self, part: &str) -> bool {
        self.filter.as_deref().is_some_and(|f| f.contains(part))
    }

    /// `name` with the configuration's suffix.
    pub fn name(&self, name: &str) -> String {
        format!("{name}{}", self.suffix)
    }
}
