//! The integration tests of worker-core's evented side, in one binary: real pipes and sockets,
//! threads standing in for the master.

mod common;
mod event_loop;
mod host;
mod nb_channel;
mod runtime;
