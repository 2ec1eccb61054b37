//! The integration tests of worker-shared, in one binary: real Unix sockets in temporary
//! directories and real TCP sockets on 127.0.0.1 and [::1], against a server thread written
//! from the protocol guide alone (see `support`).

mod admin;
mod cookie;
mod handshake;
mod messages;
mod support;
