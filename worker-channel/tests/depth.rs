//! Depth-bounded decoding (issue 8, A2): no payload can make decoding recurse past the limit,
//! whatever its shape, with either codec.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use worker_channel::{
    Channel, Codec, DEFAULT_MAX_DEPTH, Error, FrameKind, encode_frame, encode_raw_frame,
    serde_bytes::ByteBuf,
};

/// Decoding recurses once per `Neg`: the shape whose depth rmp-serde does not count.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Expr {
    Lit(i64),
    Neg(Box<Expr>),
}

/// `Neg(Neg(...Lit(0)))` with `depth` `Neg`s, encoded without recursion (as a hostile peer
/// would write it).
fn nested_neg(codec: Codec, depth: usize) -> Vec<u8> {
    match codec {
        Codec::Json => {
            let mut out = b"{\"Neg\":".repeat(depth);
            out.extend_from_slice(b"{\"Lit\":0}");
            out.extend(std::iter::repeat_n(b'}', depth));
            out
        }
        _ => {
            let mut out = [0x81, 0xa3, b'N', b'e', b'g'].repeat(depth);
            out.extend_from_slice(&[0x81, 0xa3, b'L', b'i', b't', 0x00]);
            out
        }
    }
}

fn depth_of(mut expr: &Expr) -> usize {
    let mut n = 0;
    while let Expr::Neg(inner) = expr {
        expr = inner;
        n += 1;
    }
    n
}

const CODECS: [Codec; 2] = [Codec::MessagePack, Codec::Json];

/// Runs `f` on a thread with a small stack, as a dispatcher thread might have.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .expect("the decoding thread died")
}

fn assert_too_deep<T: std::fmt::Debug>(result: Result<T, Error>, codec: Codec, max_depth: u32) {
    match result {
        Err(Error::TooDeep {
            codec: c,
            max_depth: m,
        }) => assert_eq!((c, m), (codec, max_depth)),
        other => panic!("{codec}: expected TooDeep, got {other:?}"),
    }
}

#[test]
fn sixty_thousand_nested_newtype_variants_are_a_typed_error_on_a_small_stack() {
    for codec in CODECS {
        let payload = nested_neg(codec, 60_000);
        let result = on_small_stack(move || codec.decode::<Expr>(&payload));
        assert_too_deep(result, codec, DEFAULT_MAX_DEPTH);

        // The same through a channel: the frame is consumed whole, so the next one decodes.
        let mut wire = Vec::new();
        encode_raw_frame(
            FrameKind::Data,
            &nested_neg(codec, 60_000),
            1 << 20,
            &mut wire,
        )
        .unwrap();
        encode_frame(codec, FrameKind::Data, &Expr::Lit(7), 1 << 20, &mut wire).unwrap();
        let (first, second) = on_small_stack(move || {
            let mut rx = Channel::new(&wire[..], std::io::sink(), codec);
            (rx.receive_message::<Expr>(), rx.receive_message::<Expr>())
        });
        assert_too_deep(first, codec, DEFAULT_MAX_DEPTH);
        assert_eq!(second.unwrap(), Expr::Lit(7));
    }
}

#[test]
fn nesting_up_to_the_limit_decodes_and_one_more_level_is_refused() {
    for codec in CODECS {
        // `Neg` levels plus the `Lit` map/object: the limit counts every one.
        let levels = DEFAULT_MAX_DEPTH as usize - 1;
        let expr = codec.decode::<Expr>(&nested_neg(codec, levels)).unwrap();
        assert_eq!(depth_of(&expr), levels, "{codec}");
        assert_too_deep(
            codec.decode::<Expr>(&nested_neg(codec, levels + 1)),
            codec,
            DEFAULT_MAX_DEPTH,
        );
        // A configured limit, above and below the default (and above serde_json's own 127).
        for limit in [3u32, 500] {
            let at = nested_neg(codec, limit as usize - 1);
            let expr = codec.decode_with_max_depth::<Expr>(&at, limit).unwrap();
            assert_eq!(depth_of(&expr), limit as usize - 1);
            let over = nested_neg(codec, limit as usize);
            assert_too_deep(
                codec.decode_with_max_depth::<Expr>(&over, limit),
                codec,
                limit,
            );
        }
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Shape {
    Tuple(u8, Vec<Shape>),
    Struct { inner: Vec<Shape> },
    Leaf,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(untagged)]
enum Untagged {
    List(Vec<Untagged>),
    Leaf(u8),
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(tag = "t")]
enum Internal {
    Node { child: Option<Box<Internal>> },
}

/// `leaf` wrapped `depth` times by `wrap`, encoded: the encoding of one wrapping is split
/// around its child and repeated, so no deep value is ever built or serialised recursively.
fn encode_nested(
    codec: Codec,
    depth: usize,
    leaf: &serde_json::Value,
    wrap: impl Fn(serde_json::Value) -> serde_json::Value,
) -> Vec<u8> {
    const MARK: &str = "\u{1}child\u{1}";
    let marked = codec.encode(&wrap(serde_json::Value::from(MARK))).unwrap();
    let mark = codec.encode(MARK).unwrap();
    let at = marked
        .windows(mark.len())
        .position(|w| w == &mark[..])
        .unwrap();
    let (prefix, suffix) = (&marked[..at], &marked[at + mark.len()..]);
    let mut out = prefix.repeat(depth);
    out.extend_from_slice(&codec.encode(leaf).unwrap());
    out.extend_from_slice(&suffix.repeat(depth));
    out
}

fn check_shape<T: DeserializeOwned + std::fmt::Debug + Send + 'static>(
    name: &str,
    leaf: serde_json::Value,
    wrap: impl Fn(serde_json::Value) -> serde_json::Value + Copy,
    levels_per_wrap: usize,
) {
    for codec in CODECS {
        let fits = (DEFAULT_MAX_DEPTH as usize) / levels_per_wrap - 1;
        let ok = encode_nested(codec, fits, &leaf, wrap);
        codec
            .decode::<T>(&ok)
            .unwrap_or_else(|e| panic!("{name} {codec}: {e:?}"));
        let over = encode_nested(codec, fits + 2, &leaf, wrap);
        assert_too_deep(codec.decode::<T>(&over), codec, DEFAULT_MAX_DEPTH);
        let deep = encode_nested(codec, 60_000, &leaf, wrap);
        let result = on_small_stack(move || codec.decode::<T>(&deep).map(|_| ()));
        assert_too_deep(result, codec, DEFAULT_MAX_DEPTH);
    }
}

#[test]
fn every_shape_counts_arrays_maps_variants_untagged_and_internally_tagged() {
    use serde_json::json;
    check_shape::<serde_json::Value>("arrays", json!(1), |v| json!([v]), 1);
    check_shape::<serde_json::Value>("maps", json!(1), |v| json!({ "k": v }), 1);
    check_shape::<BTreeMap<String, serde_json::Value>>(
        "typed maps",
        json!(1),
        |v| json!({ "k": v }),
        1,
    );
    // A tuple variant is a map holding an array: two levels per wrap.
    check_shape::<Shape>(
        "tuple variants",
        json!("Leaf"),
        |v| json!({ "Tuple": [1, [v]] }),
        3,
    );
    check_shape::<Shape>(
        "struct variants",
        json!("Leaf"),
        |v| json!({ "Struct": { "inner": [v] } }),
        3,
    );
    check_shape::<Untagged>("untagged", json!(1), |v| json!([v]), 1);
    check_shape::<Internal>(
        "internally tagged",
        json!({ "t": "Node", "child": null }),
        |v| json!({ "t": "Node", "child": v }),
        1,
    );
}

#[test]
fn brackets_in_strings_and_markers_in_byte_strings_do_not_count() {
    // JSON: brackets, quotes and backslashes inside strings, at a limit of 2.
    let text = r#"{"a":["[[[{{{\"\\","]]]}}}\\\"[["]}"#;
    let value: serde_json::Value = Codec::Json
        .decode_with_max_depth(text.as_bytes(), 2)
        .unwrap();
    assert_eq!(value["a"][0], "[[[{{{\"\\");
    assert_too_deep(
        Codec::Json.decode_with_max_depth::<serde_json::Value>(text.as_bytes(), 1),
        Codec::Json,
        1,
    );
    // MessagePack: a megabyte of array markers inside a byte string and a string is skipped in
    // one step each.
    let blob = (
        ByteBuf::from(vec![0x91u8; 1 << 20]),
        "\u{11}".repeat(1 << 16),
    );
    let bytes = Codec::MessagePack.encode(&blob).unwrap();
    let back: (ByteBuf, String) = Codec::MessagePack.decode_with_max_depth(&bytes, 1).unwrap();
    assert_eq!(back, blob);
    // Extensions too (fixext and ext8, whose data are array markers).
    for ext in [
        vec![0xd4, 0x01, 0x91],
        vec![
            0xd8, 0x01, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91,
            0x91, 0x91, 0x91, 0x91,
        ],
        vec![0xc7, 0x03, 0x01, 0x91, 0x91, 0x91],
    ] {
        let mut bytes = vec![0x91];
        bytes.extend_from_slice(&ext);
        bytes.extend(std::iter::repeat_n(0x91, 8)); // trailing bytes, ignored by MessagePack
        assert!(
            worker_channel::Codec::MessagePack
                .decode_with_max_depth::<serde::de::IgnoredAny>(&bytes, 1)
                .is_ok()
        );
    }
}

#[test]
fn the_scan_agrees_with_the_real_nesting_of_random_values() {
    // Seeded: random trees of arrays, maps, strings full of brackets and byte strings.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..300 {
        let target = (next() % 40) as usize + 1;
        let (value, depth) = random_value(&mut next, target);
        for codec in CODECS {
            let bytes = codec.encode(&value).unwrap();
            let depth = depth as u32;
            assert!(
                codec
                    .decode_with_max_depth::<serde_json::Value>(&bytes, depth)
                    .is_ok(),
                "{codec}: refused at its own depth {depth}"
            );
            if depth > 0 {
                assert_too_deep(
                    codec.decode_with_max_depth::<serde_json::Value>(&bytes, depth - 1),
                    codec,
                    depth - 1,
                );
            }
        }
    }
}

/// A random value whose deepest branch is exactly `depth` containers deep.
fn random_value(next: &mut impl FnMut() -> u64, depth: usize) -> (serde_json::Value, usize) {
    use serde_json::Value;
    if depth == 0 {
        let v = match next() % 4 {
            0 => Value::from(next() as i64),
            1 => Value::from("[{\"\\}]".repeat((next() % 4) as usize)),
            2 => Value::from((next() % 1000) as f64 / 7.0),
            _ => Value::Null,
        };
        return (v, 0);
    }
    // An empty container is a level of its own.
    let width = if depth == 1 {
        next() % 3
    } else {
        next() % 3 + 1
    } as usize;
    let deep_at = (next() % width.max(1) as u64) as usize;
    let children: Vec<Value> = (0..width)
        .map(|i| {
            let d = if i == deep_at {
                depth - 1
            } else {
                (next() % depth.min(3) as u64) as usize
            };
            random_value(next, d).0
        })
        .collect();
    let v = if next().is_multiple_of(2) {
        Value::Array(children)
    } else {
        Value::Object(
            children
                .into_iter()
                .enumerate()
                .map(|(i, c)| (format!("[{i}"), c))
                .collect(),
        )
    };
    (v, depth)
}

#[test]
fn serde_json_alone_counts_enum_variants_and_rmp_serde_alone_does_not() {
    // What the dependencies do without our scan, measured rather than assumed, on a thread
    // with room for the recursion.
    let results = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(|| {
            let json = nested_neg(Codec::Json, 200);
            let json: Result<Expr, _> = serde_json::from_slice(&json);
            let msgpack = nested_neg(Codec::MessagePack, 5000);
            let msgpack: Result<Expr, _> = rmp_serde::from_slice(&msgpack);
            (
                json.map(|e| depth_of(&e)).map_err(|e| e.to_string()),
                msgpack.map(|e| depth_of(&e)).map_err(|e| e.to_string()),
            )
        })
        .unwrap()
        .join()
        .unwrap();
    let (json, msgpack) = results;
    assert!(
        json.as_ref()
            .is_err_and(|e| e.starts_with("recursion limit exceeded")),
        "{json:?}"
    );
    // 5000 levels, past rmp-serde's own limit of 1024: it counted none of them.
    assert_eq!(msgpack, Ok(5000));
}
