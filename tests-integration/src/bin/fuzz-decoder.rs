//! A stable-toolchain fuzz driver for the frame decoder and both codecs (`cargo xtask fuzz`).
//!
//! cargo-fuzz needs a nightly toolchain, which this project's machines cannot install; this
//! driver feeds random and mutated byte streams, split at random points, through
//! `FrameDecoder` and `Codec::decode` into typed and untyped targets, and fails on any panic.
//! The seed is printed so a failure can be replayed with `--seed`.

// No `sys` module here: the OS is reached through the crates' safe APIs.
#![forbid(unsafe_code)]
// Test harnesses and chores start their helper processes directly (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;

use exsyst_worker::channel::{Codec, FrameDecoder, FrameKind, encode_frame, serde_bytes::ByteBuf};
use serde::{Deserialize, Serialize};
use tests_integration::rng::Rng;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Message {
    Text(String),
    Numbers(Vec<i64>),
    Nested(BTreeMap<String, Vec<Option<f64>>>),
    Bytes(ByteBuf),
    Unit,
}

fn valid_stream(rng: &mut Rng, codec: Codec) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(8) {
        let message = match rng.below(5) {
            0 => Message::Text("x".repeat(rng.below(300))),
            1 => Message::Numbers((0..rng.below(50)).map(|_| rng.bits() as i64).collect()),
            2 => Message::Nested(
                (0..rng.below(5))
                    .map(|i| (i.to_string(), vec![Some(rng.bits() as f64), None]))
                    .collect(),
            ),
            3 => Message::Bytes(ByteBuf::from(vec![rng.bits() as u8; rng.below(2000)])),
            _ => Message::Unit,
        };
        let kind = if rng.below(10) == 0 {
            FrameKind::Control
        } else {
            FrameKind::Data
        };
        encode_frame(codec, kind, &message, 1 << 20, &mut out).expect("encode");
    }
    out
}

fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..rng.below(6) {
        match rng.below(4) {
            0 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
            1 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes.truncate(i);
            }
            2 => {
                let i = rng.below(bytes.len() + 1);
                bytes.insert(i, rng.bits() as u8);
            }
            _ => bytes.extend((0..rng.below(16)).map(|_| rng.bits() as u8)),
        }
    }
}

fn exercise(rng: &mut Rng, codec: Codec, bytes: &[u8]) {
    let mut decoder = FrameDecoder::new(1 << 20);
    let mut at = 0;
    while at < bytes.len() {
        let step = 1 + rng.below(bytes.len() - at);
        decoder.extend_from_slice(&bytes[at..at + step]);
        at += step;
        loop {
            match decoder.decode() {
                Ok(Some(frame)) => {
                    let _ = codec.decode::<Message>(frame.payload);
                    let _ = codec.decode::<serde_json::Value>(frame.payload);
                    let _ = codec.decode::<Vec<String>>(frame.payload);
                }
                Ok(None) => break,
                // A broken header ends the stream, as it does for a channel.
                Err(_) => return,
            }
        }
    }
    let _ = decoder.end_of_stream_error();
}

fn main() {
    let mut iterations = 200_000u64;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|v| v.parse().ok());
        match (arg.as_str(), value) {
            ("--iterations", Some(v)) => iterations = v,
            ("--seed", Some(v)) => seed = v,
            _ => {
                eprintln!("usage: fuzz-decoder [--iterations N] [--seed S]");
                std::process::exit(2);
            }
        }
    }
    println!("fuzz-decoder: seed {seed}, {iterations} iterations");
    let mut rng = Rng::new(seed);
    for i in 0..iterations {
        let codec = if i % 2 == 0 {
            Codec::MessagePack
        } else {
            Codec::Json
        };
        let mut bytes = if rng.below(4) == 0 {
            (0..rng.below(512)).map(|_| rng.bits() as u8).collect()
        } else {
            valid_stream(&mut rng, codec)
        };
        mutate(&mut rng, &mut bytes);
        exercise(&mut rng, codec, &bytes);
    }
    println!("fuzz-decoder: no panic in {iterations} iterations");
}
