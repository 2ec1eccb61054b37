//! Evented dedicated workers end to end (issue 3).

use std::{
    io::{BufRead, BufReader, Write},
    time::Duration,
};

use exsyst_worker::{StderrMode, WorkerFactory, channel::serde_bytes::ByteBuf};
use tests_integration::workers::evented::{
    CallbackRecorder, EventedEcho, EventedFailer, EventedFailure, EventedSquarer, TimerAndSocket,
    TimerAndSocketEvent,
};

use crate::support::*;

fn factory() -> WorkerFactory {
    WorkerFactory::with_profile(profile())
}

fn expected_log(messages: u32) -> Vec<String> {
    let mut log = vec![
        "set_loop".to_owned(),
        "initialize".to_owned(),
        "on_connect master".to_owned(),
    ];
    log.extend((0..messages).map(|i| format!("on_message {i}")));
    log.push("on_disconnect".to_owned());
    log.push("terminate".to_owned());
    log
}

fn read_log(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_seeds_evented_example_is_created_like_a_raw_worker() {
    let mut w = factory().create_worker::<EventedSquarer>().unwrap();
    for i in 0..10i64 {
        w.send_message(&i).unwrap();
        assert_eq!(
            w.receive_message::<String>().unwrap(),
            format!("{i} squared is {}", i * i)
        );
    }
    assert_eq!(w.close().unwrap().code(), Some(0));
}

#[test]
fn callbacks_run_in_order_each_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("callbacks");
    let mut w = factory()
        .create_worker_with_args::<CallbackRecorder>(&log.display().to_string())
        .unwrap();
    for i in 0..5u32 {
        w.send_message(&i).unwrap();
        assert_eq!(w.receive_message::<u32>().unwrap(), i);
    }
    assert_eq!(w.close().unwrap().code(), Some(0));
    assert_eq!(read_log(&log), expected_log(5));
}

#[test]
fn callbacks_run_in_order_when_the_master_dies() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("callbacks");
    let mut master = MasterProcess::start(&["evented-hold", log.to_str().unwrap()]);
    let pid: u32 = master
        .next_line()
        .unwrap()
        .strip_prefix("pid=")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(master.next_line().as_deref(), Some("ready"));
    sigkill(master.child.id());
    assert!(
        wait_until(Duration::from_secs(2), || process_gone(pid)),
        "evented worker {pid} outlived its master"
    );
    assert_eq!(read_log(&log), expected_log(3));
}

#[test]
fn ten_thousand_pipelined_messages_all_come_back_in_order() {
    let mut w = factory()
        .create_worker_with_args::<EventedEcho>(&0)
        .unwrap();
    for i in 0..10_000u32 {
        w.send_message(&ByteBuf::from(i.to_be_bytes().to_vec()))
            .unwrap();
    }
    for i in 0..10_000u32 {
        let reply: ByteBuf = w.receive_message().unwrap();
        assert_eq!(reply.as_slice(), i.to_be_bytes(), "reply {i}");
    }
    assert!(w.try_receive_message::<ByteBuf>().unwrap().is_none());
    assert_eq!(w.close().unwrap().code(), Some(0));
}

#[test]
fn messages_larger_than_the_pipe_both_ways_while_the_worker_sends() {
    const LEN: usize = 8 << 20;
    // The worker sends 8 MiB as soon as it is connected, while we send it 8 MiB.
    let mut w = factory()
        .create_worker_with_args::<EventedEcho>(&LEN)
        .unwrap();
    let ours = ByteBuf::from((0..LEN).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    w.send_message(&ours).unwrap();
    w.send_message(&ours).unwrap();
    let first: ByteBuf = w.receive_message().unwrap();
    assert_eq!(first.len(), LEN);
    assert!(first.iter().all(|&b| b == 0xab));
    assert_eq!(w.receive_message::<ByteBuf>().unwrap(), ours);
    assert_eq!(w.receive_message::<ByteBuf>().unwrap(), ours);
}

#[test]
fn a_timer_a_tcp_listener_and_the_channel_are_served_at_once() {
    let mut w = factory().create_worker::<TimerAndSocket>().unwrap();
    let limit = timeout(Duration::from_secs(10));
    let address = loop {
        match w.receive_message_timeout(limit).unwrap() {
            TimerAndSocketEvent::Listening(a) => break a,
            TimerAndSocketEvent::Tick(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    let mut client = std::net::TcpStream::connect(&address).unwrap();
    client.write_all(b"hello over tcp\n").unwrap();
    w.send_message("over the channel").unwrap();
    let mut answer = String::new();
    BufReader::new(&client).read_line(&mut answer).unwrap();
    assert_eq!(answer, "HELLO OVER TCP\n");
    let (mut ticks, mut served, mut echoed) = (0u32, false, false);
    while ticks < 3 || !served || !echoed {
        match w.receive_message_timeout(limit).unwrap() {
            TimerAndSocketEvent::Tick(n) => {
                assert!(n > ticks, "ticks go up");
                ticks = n;
            }
            TimerAndSocketEvent::Served(line) => {
                assert_eq!(line, "hello over tcp");
                served = true;
            }
            TimerAndSocketEvent::Echo(text) => {
                assert_eq!(text, "over the channel");
                echoed = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The worker unregisters its timer and listener in `terminate`, so it exits cleanly.
    assert_eq!(w.close().unwrap().code(), Some(0));
}

#[test]
fn a_handler_error_ends_the_worker_with_a_typed_error() {
    let f = WorkerFactory::with_profile(profile().with_stderr(StderrMode::Capture));
    let mut w = f
        .create_worker_with_args::<EventedFailer>(&EventedFailure::Error("no 3 please".into()))
        .unwrap();
    w.send_message("fine").unwrap();
    assert_eq!(w.receive_message::<String>().unwrap(), "fine");
    w.send_message("fail").unwrap();
    let (status, stderr_tail) = expect_exited(w.receive_message::<String>());
    assert_eq!(status.code(), Some(exsyst_worker::bootstrap::EXIT_FAILURE));
    assert!(
        stderr_tail.contains("on_message failed: no 3 please"),
        "{stderr_tail:?}"
    );
}

#[test]
fn a_handler_panic_ends_the_worker_with_a_typed_error() {
    let f = WorkerFactory::with_profile(profile().with_stderr(StderrMode::Capture));
    let mut w = f
        .create_worker_with_args::<EventedFailer>(&EventedFailure::Panic("handler broke".into()))
        .unwrap();
    w.send_message("fail").unwrap();
    let (status, stderr_tail) = expect_exited(w.receive_message::<String>());
    assert_eq!(status.code(), Some(101));
    assert!(stderr_tail.contains("handler broke"), "{stderr_tail:?}");
}
