//! Black-box scenarios: real worker processes, real pipes and sockets, real files.

// Tests set up hostile conditions (signal dispositions, descriptor limits, raw descriptors)
// with libc directly, each block with its SAFETY line.
#![allow(unsafe_code)]
// Test harnesses and chores start their helper processes directly (see clippy.toml).
#![allow(clippy::disallowed_methods)]

mod async_pool;
mod async_tokio;
mod dedicated;
mod evented;
mod fuzz;
mod hardening_bootstrap;
mod hardening_channel;
mod hardening_pool;
mod latency;
mod logging;
mod pool;
mod protocol;
mod shared;
mod sizes;
mod support;
mod test_support;
mod zygote;
