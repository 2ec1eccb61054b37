//! The non-blocking channel on its own, over a Unix socket pair.

use std::io::{Read, Write};

use mio::net::UnixStream;
use worker_channel::{Codec, FrameKind, encode_frame};
use worker_core::{Error, NbChannel, Readiness};

fn pair() -> (NbChannel, std::os::unix::net::UnixStream) {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    (
        NbChannel::from_unix_stream(UnixStream::from_std(ours), Codec::MessagePack, 1 << 20),
        theirs,
    )
}

#[test]
fn send_past_the_bound_and_one_largest_frame_is_refused_and_nothing_is_received_meanwhile() {
    let (channel, mut peer) = pair();
    let mut channel = channel.with_max_queued(4096);
    // The peer sends a frame the channel could read, but never reads itself.
    let mut wire = Vec::new();
    encode_frame(
        Codec::MessagePack,
        FrameKind::Data,
        &7u32,
        1 << 20,
        &mut wire,
    )
    .unwrap();
    peer.write_all(&wire).unwrap();
    let payload = worker_channel::serde_bytes::ByteBuf::from(vec![1u8; 1000]);
    let mut sent = 0usize;
    let err = loop {
        match channel.send(FrameKind::Data, &payload) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 100_000, "the queue never filled");
    };
    match err {
        Error::Channel(worker_channel::Error::QueueFull { queued, limit }) => {
            // The bound never refuses one frame: only past it plus one of the largest.
            let hard = 4096 + (1 << 20) + worker_channel::HEADER_LEN;
            assert_eq!(limit, hard);
            assert!((hard..hard + 1100).contains(&queued), "queued {queued}");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(channel.is_backpressured());
    assert_eq!(channel.max_queued(), 4096);
    channel.note_readiness(Readiness {
        readable: true,
        ..Readiness::default()
    });
    assert!(
        channel.receive().unwrap().is_none(),
        "reading stops at the bound"
    );

    // The peer reads everything: the queue drains and the waiting frame comes through.
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0; 64 * 1024];
        let mut total = 0;
        while total < sent * 1008 {
            total += peer.read(&mut buf).unwrap();
        }
        peer
    });
    let mut spins = 0;
    while !channel.flush().unwrap() {
        spins += 1;
        assert!(spins < 10_000_000, "the queue never drained");
        std::thread::yield_now();
    }
    let _peer = reader.join().unwrap();
    let frame = channel.receive().unwrap().expect("the waiting frame");
    assert_eq!(frame.kind, FrameKind::Data);
    assert_eq!(Codec::MessagePack.decode::<u32>(frame.payload).unwrap(), 7);
}

#[test]
fn end_of_stream_between_frames_is_a_close_and_inside_one_an_error() {
    let (mut channel, mut peer) = pair();
    let mut wire = Vec::new();
    encode_frame(
        Codec::MessagePack,
        FrameKind::Data,
        &"hi",
        1 << 20,
        &mut wire,
    )
    .unwrap();
    peer.write_all(&wire).unwrap();
    drop(peer);
    // What epoll would report for a peer that wrote and hung up: read on to the end.
    let hung_up = Readiness {
        readable: true,
        read_closed: true,
        ..Readiness::default()
    };
    channel.note_readiness(hung_up);
    let frame = channel.receive().unwrap().expect("the frame");
    assert_eq!(
        Codec::MessagePack.decode::<String>(frame.payload).unwrap(),
        "hi"
    );
    assert!(channel.receive().unwrap().is_none());
    assert!(channel.is_read_closed());
    assert!(channel.is_finished());

    let (mut channel, mut peer) = pair();
    peer.write_all(&wire[..wire.len() - 1]).unwrap();
    drop(peer);
    channel.note_readiness(hung_up);
    match channel.receive() {
        Err(Error::Channel(worker_channel::Error::Truncated { expected, received })) => {
            assert_eq!((expected, received), (wire.len(), wire.len() - 1));
        }
        other => panic!("unexpected result {other:?}"),
    }
}

#[test]
fn one_frame_of_any_size_up_to_the_limit_is_queued_whole_past_the_bound() {
    for (bound, len) in [
        (1, 1usize),
        (4096, 4097),
        (4096, 64 * 1024),
        (1, (1 << 20) - 8),
    ] {
        let (channel, mut peer) = pair();
        let mut channel = channel.with_max_queued(bound);
        let payload = worker_channel::serde_bytes::ByteBuf::from(vec![3u8; len]);
        channel
            .send(FrameKind::Data, &payload)
            .unwrap_or_else(|e| panic!("bound {bound}, {len} bytes: {e:?}"));
        // Whatever the socket did not take waits whole; the peer reading it is progress.
        let reader = std::thread::spawn(move || {
            let mut wire = Vec::new();
            let mut buf = vec![0; 64 * 1024];
            while wire.len() < 4
                || wire.len() < 5 + u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize
            {
                let n = peer.read(&mut buf).unwrap();
                assert!(n > 0, "the stream ended inside the frame");
                wire.extend_from_slice(&buf[..n]);
            }
            wire
        });
        while !channel.flush().unwrap() {
            std::thread::yield_now();
        }
        let wire = reader.join().unwrap();
        assert_eq!(channel.written_bytes(), wire.len() as u64);
        let back: worker_channel::serde_bytes::ByteBuf =
            Codec::MessagePack.decode(&wire[5..]).unwrap();
        assert_eq!(back, payload, "bound {bound}, {len} bytes");
    }
}
