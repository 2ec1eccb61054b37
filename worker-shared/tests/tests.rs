//! The integration tests of worker-shared, in one binary: real Unix sockets in temporary
//! directories and real TCP sockets on 127.0.0.1 and [::1].
//!
//! The client is tested against a server written from the protocol guide alone (`support`),
//! and against the crate's own server (`server` and the modules after it), embedded on a
//! thread or in a child process: this binary re-executed to play a role in the `helper` test,
//! which does nothing in a normal run.

// Tests set up hostile conditions (signal dispositions, descriptor limits, raw descriptors)
// with libc directly, each block with its SAFETY line.
#![allow(unsafe_code)]
// The tests re-execute themselves as helper processes (see clippy.toml).
#![allow(clippy::disallowed_methods)]

mod admin;
#[cfg(feature = "tokio")]
mod async_client;
mod children;
mod client_auth;
mod cookie;
mod handshake;
mod isolation;
mod lifecycle;
mod limits;
mod messages;
mod panics;
mod processes;
mod server;
mod signals;
mod sizes;
mod sockets;
mod stopping;
mod support;
mod trust;
mod workers;

/// Where each helper role lives.
#[test]
fn helper() {
    if let Ok(role) = std::env::var(children::ROLE_VAR) {
        children::play(&role);
    }
}
