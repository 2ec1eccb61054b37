//! A worker that misbehaves on command: the peer every hardening scenario faces.
//!
//! The master sends [`Act`]s; the worker does what each one says, to its master's channel.
//! Acts that write raw bytes bypass the codec on purpose.

use std::{
    io::Write,
    os::fd::{AsRawFd, RawFd},
    time::Duration,
};

use exsyst_worker::{
    BoxError, Codec, RawWorker, Registry, Worker, WorkerChannel,
    channel::{FrameKind, encode_frame, encode_raw_frame},
};
use serde::{Deserialize, Serialize};

/// Registers this module's implementations.
pub fn register(registry: Registry) -> Registry {
    registry.raw::<Hostile>()
}

/// A recursive value whose decoding recurses once per level (a newtype enum variant, which
/// rmp-serde's own depth limit does not count).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Expr {
    /// A leaf.
    Lit(i64),
    /// One more level.
    Neg(Box<Expr>),
}

/// What the [`Hostile`] worker does next.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Act {
    /// Replies with the text, as a well-behaved worker would.
    Reply(String),
    /// Replies with the text twice (one reply too many).
    ReplyTwice(String),
    /// Replies with an [`Expr`] nested `depth` levels deep, written without recursion.
    Nested(u32),
    /// Writes a raw frame header announcing `len` bytes of kind byte `kind`, and nothing else.
    Header {
        /// Announced payload length.
        len: u32,
        /// Kind byte.
        kind: u8,
    },
    /// Writes a header announcing 100 bytes, then 10 of them, then waits to be killed.
    StallMidFrame,
    /// Points both channel descriptors at `/dev/null` (closing the channel) and lives on for
    /// `millis`, then exits 0.
    CloseAndLinger(u64),
    /// Forks a grandchild that keeps the channel open and sleeps `millis`, then exits with
    /// `code` at once.
    ForkAndExit {
        /// The worker's exit code.
        code: i32,
        /// How long the grandchild sleeps holding the channel.
        millis: u64,
    },
    /// Writes a line to its standard error, forks a grandchild that leaves the worker's process
    /// group (so it outlives the worker's end) holding every descriptor, its standard error
    /// included, for `millis`, and replies with the grandchild's pid.
    ForkHoldingStderr(u64),
    /// Writes this many bytes to its standard error, then replies `flooded`.
    FloodStderr(u64),
    /// Sends `count` messages of `len` bytes each without reading anything (`u64::MAX`: until
    /// the channel breaks), then waits to be killed.
    Stream {
        /// Messages to send.
        count: u64,
        /// Bytes in each.
        len: usize,
    },
    /// Stops reading for good: sleeps until killed.
    StopReading,
    /// Sleeps `millis`, then replies `done`.
    Sleep(u64),
    /// Exits at once with this code.
    Exit(i32),
    /// Restores the default action of SIGPIPE (death), then sends 1 KiB messages until a send
    /// fails, and returns that error (so the worker exits with its failure status, unless a
    /// signal killed it first).
    StreamWithDefaultSigpipe,
    /// Writes `count` replies in one system call, so that they arrive together: the text, or
    /// with `None` the number `count`, which a receive of text cannot decode.
    Burst {
        /// Replies to write.
        count: u32,
        /// What each carries.
        text: Option<String>,
    },
}

/// Does what its master's [`Act`]s say.
#[derive(Debug)]
pub struct Hostile;

impl Worker for Hostile {
    const NAME: &'static str = "hostile";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Hostile)
    }
}

impl RawWorker for Hostile {
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
        while let Some(act) = channel.next_message::<Act>()? {
            match act {
                Act::Reply(text) => channel.send_message(&text)?,
                Act::ReplyTwice(text) => {
                    channel.send_message(&text)?;
                    channel.send_message(&text)?;
                }
                Act::Nested(depth) => {
                    let payload = nested_payload(channel.codec(), depth);
                    channel.send_raw(FrameKind::Data, &payload)?;
                }
                Act::Header { len, kind } => {
                    let mut header = len.to_be_bytes().to_vec();
                    header.push(kind);
                    write_raw(channel, &header)?;
                }
                Act::StallMidFrame => {
                    let mut bytes = Vec::new();
                    encode_raw_frame(FrameKind::Data, &[0xc0; 100], u32::MAX, &mut bytes)?;
                    write_raw(channel, &bytes[..15])?;
                    park_forever();
                }
                Act::CloseAndLinger(millis) => {
                    close_and_linger(channel_fds(channel), millis)?;
                    return Ok(());
                }
                Act::ForkAndExit { code, millis } => fork_and_exit(code, millis),
                Act::ForkHoldingStderr(millis) => {
                    eprintln!("a grandchild holds this stderr");
                    let pid = crate::sys::fork_escaped_sleeper(millis)?;
                    channel.send_message(&pid)?;
                }
                Act::FloodStderr(bytes) => {
                    let line = [b'e'; 4096];
                    let mut left = bytes;
                    let mut stderr = std::io::stderr().lock();
                    while left > 0 {
                        let n = left.min(line.len() as u64) as usize;
                        stderr.write_all(&line[..n])?;
                        left -= n as u64;
                    }
                    drop(stderr);
                    channel.send_message("flooded")?;
                }
                Act::Stream { count, len } => {
                    let blob = exsyst_worker::channel::serde_bytes::ByteBuf::from(vec![7u8; len]);
                    let mut sent = 0u64;
                    while sent < count {
                        if channel.send_message(&blob).is_err() {
                            break;
                        }
                        sent += 1;
                    }
                    park_forever();
                }
                Act::StopReading => park_forever(),
                Act::Sleep(millis) => {
                    std::thread::sleep(Duration::from_millis(millis));
                    channel.send_message("done")?;
                }
                Act::Exit(code) => std::process::exit(code),
                Act::StreamWithDefaultSigpipe => {
                    crate::sys::set_signal(libc::SIGPIPE, crate::sys::Disposition::Default)?;
                    let blob = exsyst_worker::channel::serde_bytes::ByteBuf::from(vec![7u8; 1024]);
                    loop {
                        channel.send_message(&blob)?;
                    }
                }
                Act::Burst { count, text } => {
                    let (codec, max) = (channel.codec(), channel.max_frame_len());
                    let mut out = Vec::new();
                    for _ in 0..count {
                        match &text {
                            Some(text) => {
                                encode_frame(codec, FrameKind::Data, text, max, &mut out)?
                            }
                            None => encode_frame(codec, FrameKind::Data, &count, max, &mut out)?,
                        }
                    }
                    write_raw(channel, &out)?;
                }
            }
        }
        Ok(())
    }
}

/// The descriptors `channel` reads and writes.
pub(crate) fn channel_fds(channel: &WorkerChannel) -> [RawFd; 2] {
    [channel.reader().as_raw_fd(), channel.writer().as_raw_fd()]
}

/// Points both channel descriptors at `/dev/null` (closing the channel for good) and lives on
/// for `millis`.
pub(crate) fn close_and_linger(fds: [RawFd; 2], millis: u64) -> std::io::Result<()> {
    for fd in fds {
        null_out(fd)?;
    }
    // Lingering is the behaviour under test, not a way to wait for something.
    std::thread::sleep(Duration::from_millis(millis));
    Ok(())
}

/// Forks a grandchild that keeps every descriptor (the channel's included) and sleeps `millis`,
/// and exits with `code` at once.
pub(crate) fn fork_and_exit(code: i32, millis: u64) -> ! {
    if let Err(e) = crate::sys::fork_sleeper(millis) {
        eprintln!("cannot fork: {e}");
    }
    std::process::exit(code);
}

fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}

fn write_raw(channel: &mut WorkerChannel, bytes: &[u8]) -> std::io::Result<()> {
    let writer = channel.writer_mut();
    writer.write_all(bytes)?;
    writer.flush()
}

/// Replaces descriptor `fd` by `/dev/null`, so the channel it held is closed for good.
fn null_out(fd: i32) -> std::io::Result<()> {
    crate::sys::null_out(fd)
}

/// The encoding of `Neg(Neg(...Lit(0)))` with `depth` `Neg`s, built iteratively.
pub fn nested_payload(codec: Codec, depth: u32) -> Vec<u8> {
    let depth = depth as usize;
    match codec {
        Codec::Json => {
            let mut out = Vec::with_capacity(depth * 8 + 16);
            for _ in 0..depth {
                out.extend_from_slice(b"{\"Neg\":");
            }
            out.extend_from_slice(b"{\"Lit\":0}");
            out.extend(std::iter::repeat_n(b'}', depth));
            out
        }
        // Externally tagged enums as one-entry maps, as rmp-serde writes them.
        _ => {
            let mut out = Vec::with_capacity(depth * 5 + 8);
            for _ in 0..depth {
                out.extend_from_slice(&[0x81, 0xa3, b'N', b'e', b'g']);
            }
            out.extend_from_slice(&[0x81, 0xa3, b'L', b'i', b't', 0x00]);
            out
        }
    }
}
