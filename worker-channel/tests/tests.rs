//! The frame format, both codecs and the blocking channel, on in-memory streams and real pipes.

mod connection;
mod depth;
mod mapping;

use std::{collections::BTreeMap, io::Write};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use worker_channel::{
    Channel, Codec, Error, FrameDecoder, FrameKind, HEADER_LEN, encode_frame, encode_raw_frame,
    serde_bytes::ByteBuf,
};

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Shape {
    Unit,
    Newtype(i64),
    Tuple(u8, String),
    Struct { x: f64, tags: Vec<String> },
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Everything {
    text: String,
    empty: String,
    unicode: String,
    small: i8,
    big: i64,
    unsigned: u64,
    float: f64,
    tiny_float: f64,
    none: Option<u32>,
    some: Option<u32>,
    yes: bool,
    no: bool,
    nested: Vec<Vec<i32>>,
    map: BTreeMap<String, Vec<Option<bool>>>,
    shapes: Vec<Shape>,
    unit: (),
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
}

fn everything() -> Everything {
    Everything {
        text: "0 squared is 0".into(),
        empty: String::new(),
        unicode: "héllo wörld ✓ \u{0} \"quoted\" \\".into(),
        small: -128,
        big: i64::MIN,
        unsigned: u64::MAX,
        float: 0.1 + 0.2,
        tiny_float: 5e-324,
        none: None,
        some: Some(7),
        yes: true,
        no: false,
        nested: vec![vec![], vec![1, -2, 3], vec![i32::MAX]],
        map: BTreeMap::from([
            ("a".to_string(), vec![Some(true), None]),
            ("".to_string(), vec![]),
        ]),
        shapes: vec![
            Shape::Unit,
            Shape::Newtype(-1),
            Shape::Tuple(255, "t".into()),
            Shape::Struct {
                x: -1.5e300,
                tags: vec!["x".into()],
            },
        ],
        unit: (),
        bytes: vec![0, 1, 2, 255],
    }
}

fn round_trip<T: Serialize + DeserializeOwned>(codec: Codec, value: &T) -> T {
    let mut wire = Vec::new();
    Channel::new(std::io::empty(), &mut wire, codec)
        .send_message(value)
        .unwrap();
    Channel::new(&wire[..], std::io::sink(), codec)
        .receive_message()
        .unwrap()
}

#[test]
fn every_serde_shape_through_both_codecs() {
    for codec in [Codec::MessagePack, Codec::Json] {
        assert_eq!(round_trip(codec, &everything()), everything(), "{codec}");
        assert_eq!(round_trip(codec, &"plain".to_string()), "plain");
        assert_eq!(round_trip::<Option<String>>(codec, &None), None);
        assert_eq!(round_trip(codec, &Shape::Unit), Shape::Unit);
        assert_eq!(round_trip(codec, &-0.0f64).to_bits(), (-0.0f64).to_bits());
    }
}

#[test]
fn json_gives_back_exactly_the_float_it_was_given() {
    let mut x = 1.0f64;
    for i in 0..2000 {
        x = x * 1.000_000_123_456_789 + (i as f64).sqrt() / 3.0;
        let got: f64 = round_trip(Codec::Json, &x);
        assert_eq!(got.to_bits(), x.to_bits(), "{x}");
    }
    for x in [
        f64::MAX,
        f64::MIN_POSITIVE,
        1e-310,
        0.1,
        2.0f64.powi(60) + 1.0,
    ] {
        assert_eq!(round_trip::<f64>(Codec::Json, &x).to_bits(), x.to_bits());
    }
}

#[test]
fn bytes_travel_as_one_byte_string() {
    let payload = ByteBuf::from((0..1 << 20).map(|i| i as u8).collect::<Vec<u8>>());
    let mut wire = Vec::new();
    encode_frame(
        Codec::MessagePack,
        FrameKind::Data,
        &payload,
        16 << 20,
        &mut wire,
    )
    .unwrap();
    // Header, bin32 marker and length: nothing per byte.
    assert_eq!(wire.len(), HEADER_LEN + 5 + (1 << 20));
    assert_eq!(round_trip(Codec::MessagePack, &payload), payload);
}

#[test]
fn frame_layout_is_length_kind_payload() {
    let mut wire = Vec::new();
    encode_raw_frame(FrameKind::Control, b"abc", 1024, &mut wire).unwrap();
    assert_eq!(wire, [0, 0, 0, 3, 1, b'a', b'b', b'c']);
    let mut wire = Vec::new();
    encode_frame(Codec::Json, FrameKind::Data, &[1, 2], 1024, &mut wire).unwrap();
    assert_eq!(wire, b"\x00\x00\x00\x05\x00[1,2]");
}

#[test]
fn oversized_header_is_refused_before_allocation() {
    // A header announcing 4 GiB - 1 bytes: the decoder must refuse it from the five bytes alone.
    let mut decoder = FrameDecoder::new(1024);
    decoder.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0]);
    match decoder.decode() {
        Err(Error::FrameTooLarge { len, max }) => assert_eq!((len, max), (u32::MAX as u64, 1024)),
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    // The same through a channel reading a stream that would never deliver the payload.
    let header = [0x10, 0, 0, 1, 0];
    let mut rx =
        Channel::with_max_frame_len(&header[..], std::io::sink(), Codec::MessagePack, 1 << 20);
    match rx.receive_message::<u8>() {
        Err(Error::FrameTooLarge { len, max }) => assert_eq!((len, max), (0x1000_0001, 1 << 20)),
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
}

#[test]
fn sender_refuses_frames_over_its_limit_and_keeps_the_buffer_clean() {
    let mut wire = Vec::new();
    let err = encode_frame(
        Codec::Json,
        FrameKind::Data,
        &"x".repeat(100),
        10,
        &mut wire,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::FrameTooLarge { len: 102, max: 10 }),
        "{err:?}"
    );
    assert!(wire.is_empty());
    let mut tx = Channel::with_max_frame_len(std::io::empty(), Vec::new(), Codec::Json, 10);
    assert!(matches!(
        tx.send_message(&"x".repeat(100)),
        Err(Error::FrameTooLarge { .. })
    ));
    assert!(tx.writer().is_empty(), "nothing may reach the wire");
}

#[test]
fn clean_end_truncation_and_garbage_have_their_own_errors() {
    let mut wire = Vec::new();
    encode_frame(
        Codec::MessagePack,
        FrameKind::Data,
        &"hello",
        1024,
        &mut wire,
    )
    .unwrap();

    let mut rx = Channel::new(&wire[..], std::io::sink(), Codec::MessagePack);
    assert_eq!(rx.receive_message::<String>().unwrap(), "hello");
    assert!(matches!(rx.receive_message::<String>(), Err(Error::Closed)));

    for cut in [1, HEADER_LEN, wire.len() - 1] {
        let mut rx = Channel::new(&wire[..cut], std::io::sink(), Codec::MessagePack);
        match rx.receive_message::<String>() {
            Err(Error::Truncated { expected, received }) => {
                assert_eq!(received, cut);
                assert_eq!(
                    expected,
                    if cut < HEADER_LEN {
                        HEADER_LEN
                    } else {
                        wire.len()
                    }
                );
            }
            other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
        }
    }

    let garbage = [0, 0, 0, 2, 0, 0xc1, 0xc1]; // 0xc1 is never used in MessagePack
    let mut rx = Channel::new(&garbage[..], std::io::sink(), Codec::MessagePack);
    match rx.receive_message::<String>() {
        Err(Error::Decode {
            codec: Codec::MessagePack,
            ..
        }) => {}
        other => panic!("expected a MessagePack decode error, got {other:?}"),
    }
    let garbage = b"\x00\x00\x00\x03\x00{x}";
    let mut rx = Channel::new(&garbage[..], std::io::sink(), Codec::Json);
    match rx.receive_message::<String>() {
        Err(Error::Decode {
            codec: Codec::Json, ..
        }) => {}
        other => panic!("expected a JSON decode error, got {other:?}"),
    }
    let unknown_kind = [0, 0, 0, 0, 9];
    let mut rx = Channel::new(&unknown_kind[..], std::io::sink(), Codec::Json);
    assert!(matches!(
        rx.receive_message::<String>(),
        Err(Error::UnknownFrameKind(9))
    ));

    let mut control = Vec::new();
    encode_frame(Codec::Json, FrameKind::Control, &1, 1024, &mut control).unwrap();
    let mut rx = Channel::new(&control[..], std::io::sink(), Codec::Json);
    assert!(matches!(
        rx.receive_message::<u32>(),
        Err(Error::UnexpectedFrameKind {
            kind: FrameKind::Control
        })
    ));
}

#[test]
fn decoder_delivers_every_complete_frame_from_any_split() {
    let mut wire = Vec::new();
    for i in 0..100u32 {
        encode_frame(Codec::MessagePack, FrameKind::Data, &i, 1024, &mut wire).unwrap();
    }
    // All at once: every frame comes out without more input.
    let mut decoder = FrameDecoder::new(1024);
    decoder.extend_from_slice(&wire);
    let mut got = Vec::new();
    while let Some(frame) = decoder.decode().unwrap() {
        got.push(Codec::MessagePack.decode::<u32>(frame.payload).unwrap());
    }
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    assert_eq!(decoder.buffered(), 0);
    // One byte at a time.
    let mut decoder = FrameDecoder::new(1024);
    let mut got = Vec::new();
    for byte in &wire {
        decoder.extend_from_slice(std::slice::from_ref(byte));
        while let Some(frame) = decoder.decode().unwrap() {
            got.push(Codec::MessagePack.decode::<u32>(frame.payload).unwrap());
        }
    }
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}

#[test]
fn channel_over_a_real_pipe_with_a_large_message() {
    let (reader, mut writer) = std::io::pipe().unwrap();
    let big = ByteBuf::from(vec![7u8; 8 << 20]);
    let expected = big.clone();
    let sender = std::thread::spawn(move || {
        let mut frame = Vec::new();
        encode_frame(
            Codec::MessagePack,
            FrameKind::Data,
            &big,
            16 << 20,
            &mut frame,
        )
        .unwrap();
        encode_frame(
            Codec::MessagePack,
            FrameKind::Data,
            &"after",
            16 << 20,
            &mut frame,
        )
        .unwrap();
        writer.write_all(&frame).unwrap();
    });
    let mut rx = Channel::new(reader, std::io::sink(), Codec::MessagePack);
    assert_eq!(rx.receive_message::<ByteBuf>().unwrap(), expected);
    assert_eq!(rx.receive_message::<String>().unwrap(), "after");
    sender.join().unwrap();
    assert!(rx.next_message::<String>().unwrap().is_none());
}

/// Records the room each read was offered, and fills it from a byte source.
struct Recording {
    data: Vec<u8>,
    pos: usize,
    offered: Vec<usize>,
}

impl std::io::Read for Recording {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.offered.push(buf.len());
        let n = buf.len().min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn a_fresh_decoder_offers_small_reads_and_offers_more_while_reads_come_back_full() {
    let mut wire = Vec::new();
    for i in 0..20_000u32 {
        worker_channel::encode_raw_frame(FrameKind::Data, &i.to_be_bytes(), 1024, &mut wire)
            .unwrap();
    }
    let mut source = Recording {
        data: wire,
        pos: 0,
        offered: Vec::new(),
    };
    let mut decoder = FrameDecoder::new(1024);
    let mut frames = 0u32;
    while decoder.read_from(&mut source).unwrap() != 0 {
        while let Some(frame) = decoder.decode().unwrap() {
            assert_eq!(frame.payload, frames.to_be_bytes());
            frames += 1;
        }
    }
    assert_eq!(frames, 20_000);
    // A connection that only ever says a little never offers (nor allocates) more than 4 KiB;
    // a busy one doubles its offer with every full read, to 64 KiB (the buffer holding what is
    // pending besides, never past twice that).
    assert_eq!(source.offered[0], 4096);
    let largest = source.offered.iter().copied().max().unwrap();
    assert!(
        (64 * 1024..=128 * 1024).contains(&largest),
        "{:?}",
        source.offered
    );
}
