//! Dedicated-worker benchmarks (filled below).
