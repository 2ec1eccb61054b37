use std::{
    fs::File,
    io::{self, Write},
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
};

use mio::{Interest, Registry, Token, event::Source, unix::SourceFd};
use worker_channel::{Channel, Duplex, Spin};

use crate::{BoxError, Worker, sys};

/// The channel a worker has to its master: the master's end of the child's standard input and
/// output, moved off descriptors 0 and 1.
pub type WorkerChannel = Channel<File, ChannelOutput>;

/// Moves the channel to the master off the standard descriptors and returns its two ends
/// (reading, writing).
///
/// Afterwards descriptor 0 reads `/dev/null`, descriptor 1 writes where descriptor 2 does
/// (so a stray `println!` in worker code lands on standard error instead of corrupting the
/// channel), and every other descriptor the process inherited is closed: the worker holds
/// exactly 0, 1, 2 and its channel, both ends close-on-exec.
///
/// The channel may be two pipes (as this crate's masters give it) or one socket on both
/// descriptors; writes to a socket never raise SIGPIPE, and the writing end stays open until the
/// process exits (see [`ChannelOutput`]).
///
/// Call it once, at the start of a worker process, before any other thread exists.
pub fn take_stdio_channel() -> io::Result<(File, ChannelOutput)> {
    let (input, output) = sys::take_stdio_fds()?;
    Ok((
        File::from(input),
        ChannelOutput::new(output).open_until_exit(),
    ))
}

/// Sets the latency mode of a worker's blocking receives (see [`Spin`]): while nothing is
/// buffered, [`next_message`](worker_channel::Channel::next_message) and the other receives
/// look at the channel's input without blocking (`poll(2)` with no timeout), again and again
/// for up to the budget, before they block in `read`.
///
/// A worker started with a profile's spin budget (`BootstrapProfile::with_spin` in
/// worker-bootstrap) has it set before its implementation runs; this is for channels built
/// by hand, or to change it.
///
/// ```
/// use std::{fs::File, os::{fd::OwnedFd, unix::net::UnixStream}, time::Duration};
/// use worker_core::{ChannelOutput, WorkerChannel};
/// use worker_channel::{Channel, Codec, Spin};
///
/// let (master_end, worker_end) = UnixStream::pair()?;
/// let input = File::from(OwnedFd::from(worker_end.try_clone()?));
/// let mut channel: WorkerChannel =
///     Channel::new(input, ChannelOutput::new(worker_end), Codec::MessagePack);
/// worker_core::set_spin(&mut channel, Spin::new(Duration::from_micros(50)));
/// assert_eq!(channel.connection().spin().budget(), Duration::from_micros(50));
///
/// let mut master = Channel::new(master_end.try_clone()?, master_end, Codec::MessagePack);
/// master.send_message(&6u32)?;
/// let n: u32 = channel.receive_message()?;
/// channel.send_message(&(n * 7))?;
/// assert_eq!(master.receive_message::<u32>()?, 42);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn set_spin(channel: &mut WorkerChannel, spin: Spin) {
    channel
        .connection_mut()
        .set_spin(spin, Some(input_readable));
}

/// Whether a worker channel's input would give something to a read now.
fn input_readable(transport: &Duplex<File, ChannelOutput>) -> io::Result<bool> {
    sys::readable_now(transport.reader().as_fd())
}

/// The writing end of a worker's channel to its master: a pipe (what this crate's masters give
/// their workers) or a socket (what other masters may give).
///
/// Writes to a socket go through `send(MSG_NOSIGNAL)`: a master that went away is an
/// [`io::ErrorKind::BrokenPipe`] error, never a SIGPIPE death, whatever the worker did with
/// SIGPIPE's disposition. A pipe has no such flag; with a pipe the disposition decides (Rust
/// programs ignore SIGPIPE unless they restore it). Raw workers write through it in their
/// [`WorkerChannel`], evented ones in their [`NbChannel`](crate::NbChannel).
///
/// The one [`take_stdio_channel`](crate::take_stdio_channel) returns stays open until the
/// process exits, even once dropped: the master sees the end of the channel together with the
/// worker's exit, so it can report how the worker ended instead of a channel closed by a worker
/// still finishing (dropping its state, writing its error). A worker that must close its channel
/// before it exits closes the descriptor itself.
#[derive(Debug)]
pub struct ChannelOutput {
    /// Always `Some` but while it is converted or dropped.
    file: Option<File>,
    is_socket: bool,
    open_until_exit: bool,
}

impl ChannelOutput {
    /// Wraps a descriptor, finding out whether it is a socket; dropping it closes the
    /// descriptor.
    pub fn new(fd: impl Into<OwnedFd>) -> Self {
        let fd = fd.into();
        let is_socket = sys::is_socket(fd.as_fd());
        ChannelOutput {
            file: Some(File::from(fd)),
            is_socket,
            open_until_exit: false,
        }
    }

    /// Keeps the descriptor open until the process exits, even once this value is dropped
    /// (see the type's documentation).
    pub fn open_until_exit(mut self) -> Self {
        self.open_until_exit = true;
        self
    }

    /// Whether writes go to a socket (and never raise SIGPIPE).
    pub fn is_socket(&self) -> bool {
        self.is_socket
    }

    /// Switches the descriptor to non-blocking mode (or back), as an event loop needs it.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        sys::set_nonblocking(self.file().as_fd(), nonblocking)
    }

    fn file(&self) -> &File {
        self.file.as_ref().expect("present until dropped")
    }

    /// The file, and no obligation left to this value: when the descriptor must stay open until
    /// exit, the file returned is a copy of it, and the original is kept open for good.
    fn into_file(mut self) -> File {
        let file = self.file.take().expect("present until dropped");
        if !self.open_until_exit {
            return file;
        }
        match file.try_clone() {
            Ok(copy) => {
                std::mem::forget(file);
                copy
            }
            // No descriptor to spare: the channel closes with the copy after all.
            Err(_) => file,
        }
    }
}

impl Drop for ChannelOutput {
    fn drop(&mut self) {
        if self.open_until_exit
            && let Some(file) = self.file.take()
        {
            // Closed by the kernel when the process exits.
            std::mem::forget(file);
        }
    }
}

impl From<File> for ChannelOutput {
    fn from(file: File) -> Self {
        ChannelOutput::new(file)
    }
}

impl From<ChannelOutput> for File {
    fn from(output: ChannelOutput) -> Self {
        output.into_file()
    }
}

impl From<ChannelOutput> for OwnedFd {
    fn from(output: ChannelOutput) -> Self {
        output.into_file().into()
    }
}

impl Write for ChannelOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.is_socket {
            sys::send_nosignal(self.file().as_fd(), buf)
        } else {
            self.file().write(buf)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An event loop waits on the descriptor itself, which this value owns for as long as it is
/// registered.
impl Source for ChannelOutput {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        SourceFd(&self.as_raw_fd()).register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        SourceFd(&self.as_raw_fd()).reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        SourceFd(&self.as_raw_fd()).deregister(registry)
    }
}

impl AsFd for ChannelOutput {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file().as_fd()
    }
}

impl AsRawFd for ChannelOutput {
    fn as_raw_fd(&self) -> RawFd {
        self.file().as_raw_fd()
    }
}

/// A worker that runs its own blocking loop (the seed's `RawWorkerImplementationInterface`).
///
/// `run` receives with [`Channel::next_message`](worker_channel::Channel::next_message), which
/// gives `None` once the master has closed the channel; returning then ends the worker cleanly.
/// An error, or a panic, ends the worker with a failure its master sees as a typed error.
pub trait RawWorker: Worker {
    /// Serves the master until the channel closes.
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError>;
}
