use std::fs::File;

use worker_channel::Channel;

use crate::{BoxError, Worker};

/// The channel a worker has to its master: the master's end of the child's standard input and
/// output, moved off descriptors 0 and 1.
pub type WorkerChannel = Channel<File, File>;

/// A worker that runs its own blocking loop (the seed's `RawWorkerImplementationInterface`).
///
/// `run` receives with [`Channel::next_message`](worker_channel::Channel::next_message), which
/// gives `None` once the master has closed the channel; returning then ends the worker cleanly.
/// An error, or a panic, ends the worker with a failure its master sees as a typed error.
pub trait RawWorker: Worker {
    /// Serves the master until the channel closes.
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError>;
}
