//! How Rust shapes map to the codecs' bytes: the table in the `Codec` documentation (which
//! clients in other languages read), held to the bytes here.

use serde::Serialize;
use worker_channel::{Codec, serde_bytes::ByteBuf};

#[derive(Serialize)]
enum Shape {
    Unit,
    Newtype(u8),
    Tuple(u8, u8),
    Struct { x: u8 },
}

#[derive(Serialize)]
struct Point {
    x: u8,
    y: Option<u8>,
}

#[derive(Serialize)]
struct Unit;

#[derive(Serialize)]
struct Wrapper(u8);

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Each Rust shape, its MessagePack bytes (hex) and its JSON text: the rows of the table in
/// `Codec`'s documentation.
#[test]
fn rust_shapes_map_to_these_bytes_in_both_codecs() {
    fn row<T: Serialize + ?Sized>(value: &T) -> (String, String) {
        (
            hex(&Codec::MessagePack.encode(value).unwrap()),
            String::from_utf8(Codec::Json.encode(value).unwrap()).unwrap(),
        )
    }
    let table: &[(&str, (String, String), &str, &str)] = &[
        (
            "unit variant",
            row(&Shape::Unit),
            "a4 55 6e 69 74",
            r#""Unit""#,
        ),
        (
            "newtype variant",
            row(&Shape::Newtype(7)),
            "81 a7 4e 65 77 74 79 70 65 07",
            r#"{"Newtype":7}"#,
        ),
        (
            "tuple variant",
            row(&Shape::Tuple(1, 2)),
            "81 a5 54 75 70 6c 65 92 01 02",
            r#"{"Tuple":[1,2]}"#,
        ),
        (
            "struct variant",
            row(&Shape::Struct { x: 3 }),
            "81 a6 53 74 72 75 63 74 81 a1 78 03",
            r#"{"Struct":{"x":3}}"#,
        ),
        (
            "struct, None field",
            row(&Point { x: 1, y: None }),
            "82 a1 78 01 a1 79 c0",
            r#"{"x":1,"y":null}"#,
        ),
        (
            "struct, Some field",
            row(&Point { x: 1, y: Some(2) }),
            "82 a1 78 01 a1 79 02",
            r#"{"x":1,"y":2}"#,
        ),
        ("unit struct", row(&Unit), "90", "null"),
        ("newtype struct", row(&Wrapper(5)), "05", "5"),
        ("tuple", row(&(1u8, "a")), "92 01 a1 61", r#"[1,"a"]"#),
        ("None", row(&None::<u8>), "c0", "null"),
        ("Some", row(&Some(4u8)), "04", "4"),
        ("()", row(&()), "c0", "null"),
        ("Vec<u8>", row(&vec![1u8, 2]), "92 01 02", "[1,2]"),
        (
            "ByteBuf (serde_bytes)",
            row(&ByteBuf::from(vec![1u8, 2])),
            "c4 02 01 02",
            "[1,2]",
        ),
        ("char", row(&'é'), "a2 c3 a9", r#""é""#),
        ("f32", row(&1.5f32), "ca 3f c0 00 00", "1.5"),
        ("f64", row(&1.5f64), "cb 3f f8 00 00 00 00 00 00", "1.5"),
        (
            "u64::MAX",
            row(&u64::MAX),
            "cf ff ff ff ff ff ff ff ff",
            "18446744073709551615",
        ),
        ("-1i8", row(&-1i8), "ff", "-1"),
        ("300u16", row(&300u16), "cd 01 2c", "300"),
    ];
    for (shape, (msgpack, json), want_msgpack, want_json) in table {
        assert_eq!(
            (msgpack.as_str(), json.as_str()),
            (*want_msgpack, *want_json),
            "{shape}"
        );
    }
}
