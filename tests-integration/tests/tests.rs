//! Black-box scenarios: real worker processes, real pipes and sockets, real files.

mod dedicated;
mod evented;
mod support;
