//! A master written by hand, byte by byte, as a program in another language would: the wire
//! protocol documented in `worker_bootstrap::protocol`, without any of this library's code.

use std::{
    io::{Read, Write},
    process::{Command, Stdio},
};

use crate::support::test_worker;

/// A MessagePack fixstr.
fn str8(s: &str) -> Vec<u8> {
    let mut out = vec![0xa0 | s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

fn read_frame(reader: &mut impl Read) -> (u8, Vec<u8>) {
    let mut header = [0u8; 5];
    reader.read_exact(&mut header).unwrap();
    let len = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).unwrap();
    (header[4], payload)
}

fn start(implementation: &str) -> std::process::Child {
    Command::new(test_worker())
        .env("EXSYST_WORKER_IMPLEMENTATION", implementation)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The smallest init frame: `{"version": 1, "implementation": NAME, "codec": "json"}`.
fn minimal_init(implementation: &str) -> Vec<u8> {
    let mut map = vec![0x83];
    map.extend(str8("version"));
    map.push(0x01);
    map.extend(str8("implementation"));
    map.extend(str8(implementation));
    map.extend(str8("codec"));
    map.extend(str8("json"));
    frame(1, &map)
}

#[test]
fn a_hand_written_master_talks_json_to_a_rust_worker() {
    let mut child = start("squarer");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdin.write_all(&minimal_init("squarer")).unwrap();
    for n in [0i64, 7, -12] {
        stdin
            .write_all(&frame(0, n.to_string().as_bytes()))
            .unwrap();
        let (kind, payload) = read_frame(&mut stdout);
        assert_eq!(kind, 0);
        assert_eq!(
            String::from_utf8(payload).unwrap(),
            format!("\"{n} squared is {}\"", n * n)
        );
    }
    drop(stdin);
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "nothing after the last reply");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn a_payload_the_worker_cannot_decode_ends_it_with_a_clear_error() {
    let mut child = start("squarer");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&minimal_init("squarer")).unwrap();
    stdin.write_all(&frame(0, b"\"not a number\"")).unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(70));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot decode json payload"), "{stderr}");
}

#[test]
fn an_init_frame_of_another_version_is_refused() {
    let mut child = start("squarer");
    let mut stdin = child.stdin.take().unwrap();
    let mut map = vec![0x82];
    map.extend(str8("version"));
    map.push(0x09);
    map.extend(str8("implementation"));
    map.extend(str8("squarer"));
    stdin.write_all(&frame(1, &map)).unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(70));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bootstrap protocol version 9 is not 1"),
        "{stderr}"
    );
}
