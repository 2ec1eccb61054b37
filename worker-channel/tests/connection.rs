//! The framed connection's non-blocking face over real socket pairs, and the read and write
//! loops both faces share (interrupted calls, a peer that is gone, bounds).

use std::{
    io::{self, Read, Write},
    os::unix::net::UnixStream,
    time::Duration,
};

use mio::{Events, Interest, Poll, Token};
use worker_channel::{
    Channel, Codec, Error, FrameKind, FramedConnection, HEADER_LEN, encode_frame,
    serde_bytes::ByteBuf,
};

/// A transport that counts the reads and writes that reach the socket.
#[derive(Debug)]
struct Counting {
    stream: mio::net::UnixStream,
    reads: usize,
    writes: usize,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        self.stream.read(buf)
    }
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writes += 1;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Our non-blocking end (counting system calls) and the peer's blocking end.
fn pair() -> (FramedConnection<Counting>, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let transport = Counting {
        stream: mio::net::UnixStream::from_std(ours),
        reads: 0,
        writes: 0,
    };
    (FramedConnection::new(transport, Codec::MessagePack), theirs)
}

fn frames(values: &[u32]) -> Vec<u8> {
    let mut wire = Vec::new();
    for v in values {
        encode_frame(Codec::MessagePack, FrameKind::Data, v, 1 << 20, &mut wire).unwrap();
    }
    wire
}

/// `secs` seconds, times `EXSYST_TEST_TIMEOUT_SCALE`.
fn timeout(secs: u64) -> Duration {
    let scale = std::env::var("EXSYST_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(1.0);
    Duration::from_secs(secs).mul_f64(scale)
}

#[test]
fn frames_that_arrive_together_cost_one_read_and_a_drained_socket_is_not_read_again() {
    let (mut conn, mut peer) = pair();
    peer.write_all(&frames(&[1, 2, 3])).unwrap();
    let mut got = Vec::new();
    while let Some(n) = conn.try_receive_message::<u32>().unwrap() {
        got.push(n);
    }
    assert_eq!(got, [1, 2, 3]);
    // One read took all three; it came back short, so no read was spent to learn EAGAIN.
    assert_eq!(conn.transport().reads, 1);
    assert!(conn.try_receive_frame().unwrap().is_none());
    assert_eq!(conn.transport().reads, 1);

    // A reply: readiness is reported, one read hands it out.
    peer.write_all(&frames(&[4])).unwrap();
    assert!(conn.try_receive_frame().unwrap().is_none(), "not told yet");
    conn.note_readable();
    assert_eq!(conn.try_receive_message::<u32>().unwrap(), Some(4));
    assert_eq!(conn.transport().reads, 2);
}

#[test]
fn end_of_stream_is_closed_between_frames_and_truncated_inside_one() {
    let (mut conn, mut peer) = pair();
    let wire = frames(&[7]);
    peer.write_all(&wire).unwrap();
    drop(peer);
    conn.note_hang_up();
    assert_eq!(conn.try_receive_message::<u32>().unwrap(), Some(7));
    assert!(matches!(conn.try_receive_frame(), Err(Error::Closed)));
    assert!(conn.is_read_closed());

    let (mut conn, mut peer) = pair();
    peer.write_all(&wire[..wire.len() - 1]).unwrap();
    drop(peer);
    conn.note_hang_up();
    match conn.try_receive_frame() {
        Err(Error::Truncated { expected, received }) => {
            assert_eq!((expected, received), (wire.len(), wire.len() - 1));
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[test]
fn a_full_queue_refuses_the_next_frame_and_keeps_nothing_of_it() {
    let (conn, _peer) = pair();
    let mut conn = conn.with_max_queued(4096);
    let blob = ByteBuf::from(vec![1u8; 1000]);
    for _ in 0..5 {
        conn.queue(FrameKind::Data, &blob).unwrap();
    }
    let queued = conn.queued_bytes();
    assert_eq!(queued, 5 * (HEADER_LEN + 3 + 1000));
    match conn.queue(FrameKind::Data, &blob) {
        Err(Error::QueueFull { queued: q, limit }) => assert_eq!((q, limit), (queued, 4096)),
        other => panic!("expected QueueFull, got {other:?}"),
    }
    assert_eq!(conn.queued_bytes(), queued);
    assert_eq!(conn.transport().writes, 0, "queue writes nothing");
    assert!(conn.flush().unwrap());
    assert_eq!(conn.transport().writes, 1, "one write for five frames");
}

#[test]
fn a_frame_taken_back_before_it_left_never_reaches_the_peer() {
    let (mut conn, peer) = pair();
    conn.queue(FrameKind::Data, &1u32).unwrap();
    let queued = conn.queued_bytes();
    assert_eq!(conn.discard_queued(), queued);
    assert_eq!(conn.queued_bytes(), 0);
    conn.queue(FrameKind::Data, &2u32).unwrap();
    assert!(conn.flush().unwrap());
    drop(conn);
    let mut rx = Channel::new(&peer, std::io::sink(), Codec::MessagePack);
    assert_eq!(rx.receive_message::<u32>().unwrap(), 2);
    assert!(rx.next_message::<u32>().unwrap().is_none());
}

#[test]
fn a_peer_that_streams_while_a_send_waits_is_capped_with_a_typed_error() {
    let (mut conn, peer) = pair();
    // The peer writes 64 KiB frames and never reads.
    let writer = std::thread::spawn(move || {
        let mut tx = Channel::new(std::io::empty(), &peer, Codec::MessagePack);
        let blob = ByteBuf::from(vec![9u8; 64 * 1024]);
        // Ends once our side is dropped.
        while tx.send_message(&blob).is_ok() {}
    });
    let limit = 1 << 20;
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(8);
    let both = Interest::READABLE | Interest::WRITABLE;
    poll.registry()
        .register(&mut conn.transport_mut().stream, Token(0), both)
        .unwrap();
    conn.queue(FrameKind::Data, &ByteBuf::from(vec![0u8; 8 << 20]))
        .unwrap();
    let err = loop {
        if conn.flush().unwrap() {
            panic!("the peer never reads: the send cannot finish");
        }
        poll.poll(&mut events, Some(timeout(30))).unwrap();
        assert!(!events.is_empty(), "no readiness within the timeout");
        if let Err(e) = conn.read_ahead(limit) {
            break e;
        }
    };
    match err {
        Error::ReceiveBufferFull { buffered, limit: l } => {
            assert_eq!((buffered, l), (limit + 1, limit));
        }
        other => panic!("expected ReceiveBufferFull, got {other:?}"),
    }
    // What was read is still there to receive.
    let first = conn.try_receive_message::<ByteBuf>().unwrap().unwrap();
    assert_eq!(first.len(), 64 * 1024);
    drop(conn);
    writer.join().unwrap();
}

#[test]
fn eight_mebibytes_crossing_each_way_do_not_deadlock_when_the_sender_reads_ahead() {
    const BIG: usize = 8 << 20;
    let (mut conn, peer) = pair();
    // The peer sends its big message first, then reads ours and answers.
    let other = std::thread::spawn(move || {
        let mut ch = Channel::new(&peer, &peer, Codec::MessagePack);
        ch.send_message(&ByteBuf::from(vec![2u8; BIG])).unwrap();
        let got: ByteBuf = ch.receive_message().unwrap();
        ch.send_message(&got.len()).unwrap();
    });
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(8);
    let both = Interest::READABLE | Interest::WRITABLE;
    poll.registry()
        .register(&mut conn.transport_mut().stream, Token(0), both)
        .unwrap();
    conn.queue(FrameKind::Data, &ByteBuf::from(vec![1u8; BIG]))
        .unwrap();
    while !conn.flush().unwrap() {
        poll.poll(&mut events, Some(timeout(30))).unwrap();
        conn.read_ahead(2 * BIG).unwrap();
    }
    let mut received = Vec::new();
    while received.len() < 2 {
        match conn.try_receive_frame().unwrap() {
            Some(frame) => received.push(frame.payload.len()),
            None => {
                poll.poll(&mut events, Some(timeout(30))).unwrap();
                conn.note_readable();
            }
        }
    }
    assert_eq!(received[0], BIG + 5, "bin32 header and the bytes");
    other.join().unwrap();
}

#[test]
fn a_peer_that_is_gone_closes_the_writing_side_without_a_signal() {
    let (mut conn, peer) = pair();
    drop(peer);
    conn.queue(FrameKind::Data, &1u32).unwrap();
    // Non-blocking: the queue is dropped and the state says why.
    assert!(conn.flush().unwrap());
    assert!(conn.is_write_closed());
    assert_eq!(conn.queued_bytes(), 0);
    match conn.queue(FrameKind::Data, &2u32) {
        Err(Error::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::BrokenPipe),
        other => panic!("expected BrokenPipe, got {other:?}"),
    }
    // Blocking: an error.
    let (ours, peer) = UnixStream::pair().unwrap();
    drop(peer);
    let mut ch = Channel::new(&ours, &ours, Codec::Json);
    match ch.send_message(&1u32) {
        Err(Error::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::BrokenPipe),
        other => panic!("expected BrokenPipe, got {other:?}"),
    }
    assert!(ch.connection().is_write_closed());
}

/// A transport whose every other call is interrupted by a signal.
#[derive(Debug, Default)]
struct Interrupting {
    input: io::Cursor<Vec<u8>>,
    output: Vec<u8>,
    tick: bool,
}

impl Interrupting {
    fn interrupted(&mut self) -> bool {
        self.tick = !self.tick;
        self.tick
    }
}

impl Read for Interrupting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.interrupted() {
            return Err(io::ErrorKind::Interrupted.into());
        }
        // A byte at a time, so the frame takes many reads.
        let n = buf.len().min(1);
        self.input.read(&mut buf[..n])
    }
}

impl Write for Interrupting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.interrupted() {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(3);
        self.output.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn interrupted_reads_and_writes_are_retried_by_both_faces() {
    let transport = Interrupting {
        input: io::Cursor::new(frames(&[41, 42])),
        ..Interrupting::default()
    };
    let mut conn = FramedConnection::new(transport, Codec::MessagePack);
    assert_eq!(conn.receive_message::<u32>().unwrap(), 41);
    conn.send_message("blocking").unwrap();
    // Each read is short (one byte), so each needs a readiness note, as after a poll.
    let n = loop {
        conn.note_readable();
        if let Some(n) = conn.try_receive_message::<u32>().unwrap() {
            break n;
        }
    };
    assert_eq!(n, 42);
    conn.queue(FrameKind::Control, "queued").unwrap();
    while !conn.flush().unwrap() {}
    let mut rx = Channel::new(
        &conn.transport().output[..],
        std::io::sink(),
        Codec::MessagePack,
    );
    assert_eq!(rx.receive_message::<String>().unwrap(), "blocking");
    assert_eq!(
        rx.receive_kind::<String>(FrameKind::Control).unwrap(),
        "queued"
    );
}

#[test]
fn a_connection_moved_to_another_transport_keeps_what_it_buffered() {
    let (ours, mut peer) = UnixStream::pair().unwrap();
    peer.write_all(&frames(&[1, 2])).unwrap();
    let mut ch = Channel::new(ours.try_clone().unwrap(), ours, Codec::MessagePack);
    assert_eq!(ch.receive_message::<u32>().unwrap(), 1);
    assert!(
        ch.connection().has_buffered_frame(),
        "both came in one read"
    );
    let mut conn = ch.into_connection().map_transport(|duplex| {
        let (reader, _writer) = duplex.into_parts();
        reader.set_nonblocking(true).unwrap();
        reader
    });
    assert_eq!(conn.try_receive_message::<u32>().unwrap(), Some(2));
    assert!(conn.try_receive_frame().unwrap().is_none());
}
