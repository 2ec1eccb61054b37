//! `run_evented` with a thread standing in for the master, over real pipes and sockets.

use std::{
    fs::File,
    io::Write,
    net::SocketAddr,
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use crossbeam_channel::Sender;
use mio::{Interest, net::TcpListener};
use serde::{Deserialize, Serialize};
use worker_channel::{Channel, Codec, FrameKind, serde_bytes::ByteBuf};
use worker_core::{
    BoxError, Connection, EventedWorker, NbChannel, SourceId, TimerId, Worker, WorkerLoop,
    run_evented,
};

use crate::common::{stdio_pair, timeout, watchdog};

/// Runs `worker` on a thread over a fresh stdio pair and hands back the master's end and the
/// thread's result.
fn spawn<W: EventedWorker + Send>(
    worker: W,
    codec: Codec,
    before: impl FnOnce(&mut Channel<File, File>, &mut worker_core::WorkerChannel),
) -> (
    Channel<File, File>,
    crossbeam_channel::Receiver<Result<(), String>>,
) {
    let (mut worker_end, mut master) = stdio_pair(codec);
    before(&mut master, &mut worker_end);
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    thread::spawn(move || {
        let result = run_evented(worker, worker_end).map_err(|e| describe(&*e));
        done_tx.send(result).unwrap();
    });
    (master, done_rx)
}

/// An error and its sources, for exact assertions.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    worker_core::error_chain(e)
}

fn finish(done: &crossbeam_channel::Receiver<Result<(), String>>) -> Result<(), String> {
    done.recv_timeout(timeout(30.0))
        .expect("run_evented did not return")
}

// ---------------------------------------------------------------------------------------------

struct Logger {
    log: Arc<Mutex<Vec<String>>>,
}

impl Logger {
    fn push(&self, entry: String) {
        self.log.lock().unwrap().push(entry);
    }
}

impl Worker for Logger {
    const NAME: &'static str = "logger";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Logger {
            log: Arc::default(),
        })
    }
}

impl EventedWorker for Logger {
    type Message = u32;
    type Reply = u32;

    fn set_loop(&mut self, _: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
        self.push("set_loop".into());
        Ok(())
    }

    fn initialize(&mut self) -> Result<(), BoxError> {
        self.push("initialize".into());
        Ok(())
    }

    fn on_connect(
        &mut self,
        connection: &mut Connection<u32>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        self.push(format!("on_connect {}", connection.peer_name()));
        Ok(())
    }

    fn on_message(
        &mut self,
        message: u32,
        connection: &mut Connection<u32>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        self.push(format!("on_message {message}"));
        connection.send(&(message * message))?;
        Ok(())
    }

    fn on_disconnect(
        &mut self,
        connection: &mut Connection<u32>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        self.push(format!("on_disconnect {}", connection.peer_name()));
        Ok(())
    }

    fn terminate(&mut self, _: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
        self.push("terminate".into());
        Ok(())
    }
}

#[test]
fn callbacks_run_in_order_each_exactly_once() {
    let _w = watchdog("callbacks_run_in_order", 30.0);
    let log = Arc::new(Mutex::new(Vec::new()));
    let worker = Logger { log: log.clone() };
    let (mut master, done) = spawn(worker, Codec::Json, |master, worker_end| {
        // Two frames already read by the bootstrap code before handing over: kept and handled
        // first.
        master.send_message(&1u32).unwrap();
        master.send_message(&2u32).unwrap();
        while worker_end.connection().buffered_bytes() < 2 * 6 {
            worker_end.connection_mut().read_ahead(1 << 20).unwrap();
        }
    });
    master.send_message(&3u32).unwrap();
    for n in 1..=3u32 {
        assert_eq!(master.receive_message::<u32>().unwrap(), n * n);
    }
    let (master_in, master_out) = master.into_parts();
    drop(master_out);
    finish(&done).unwrap();
    // The worker closed its end once done.
    let mut rest = Channel::new(master_in, std::io::sink(), Codec::Json);
    assert!(rest.next_message::<u32>().unwrap().is_none());
    assert_eq!(
        *log.lock().unwrap(),
        [
            "set_loop",
            "initialize",
            "on_connect master",
            "on_message 1",
            "on_message 2",
            "on_message 3",
            "on_disconnect master",
            "terminate",
        ]
    );
}

#[test]
fn ten_thousand_pipelined_messages_come_back_in_order() {
    let _w = watchdog("ten_thousand_pipelined", 60.0);
    const N: u32 = 10_000;
    let worker = Logger::new(()).unwrap();
    let (master, done) = spawn(worker, Codec::MessagePack, |_, _| {});
    let (master_in, master_out) = master.into_parts();
    let writer = thread::spawn(move || {
        let mut tx = Channel::new(std::io::empty(), master_out, Codec::MessagePack);
        for n in 0..N {
            tx.send_message(&n).unwrap();
        }
        // Closing right after the last message: every reply must still arrive.
    });
    let mut rx = Channel::new(master_in, std::io::sink(), Codec::MessagePack);
    for n in 0..N {
        assert_eq!(rx.receive_message::<u32>().unwrap(), n.wrapping_mul(n));
    }
    assert!(rx.next_message::<u32>().unwrap().is_none());
    writer.join().unwrap();
    finish(&done).unwrap();
}

// ---------------------------------------------------------------------------------------------

/// Answers every blob with a small ack then the blob itself, so large frames cross in both
/// directions while the worker also has other frames to send.
struct Blobs;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum BlobReply {
    Ack(usize),
    Blob(ByteBuf),
}

impl Worker for Blobs {
    const NAME: &'static str = "blobs";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Blobs)
    }
}

impl EventedWorker for Blobs {
    type Message = ByteBuf;
    type Reply = BlobReply;

    fn on_message(
        &mut self,
        blob: ByteBuf,
        connection: &mut Connection<BlobReply>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        connection.send(&BlobReply::Ack(blob.len()))?;
        connection.send(&BlobReply::Blob(blob))?;
        Ok(())
    }
}

#[test]
fn eight_mebibyte_messages_cross_both_ways_while_the_worker_sends() {
    let _w = watchdog("eight_mebibyte_messages", 60.0);
    const BIG: usize = 8 << 20;
    let blob = |seed: u8| ByteBuf::from((0..BIG).map(|i| (i as u8) ^ seed).collect::<Vec<_>>());
    let (master, done) = spawn(Blobs, Codec::MessagePack, |_, _| {});
    let (master_in, master_out) = master.into_parts();
    let writer = thread::spawn(move || {
        let mut tx = Channel::new(std::io::empty(), master_out, Codec::MessagePack);
        for seed in [1u8, 2, 3] {
            tx.send_message(&blob(seed)).unwrap();
            tx.send_message(&ByteBuf::from(vec![seed])).unwrap();
        }
    });
    let mut rx = Channel::new(master_in, std::io::sink(), Codec::MessagePack);
    for seed in [1u8, 2, 3] {
        assert_eq!(
            rx.receive_message::<BlobReply>().unwrap(),
            BlobReply::Ack(BIG)
        );
        match rx.receive_message::<BlobReply>().unwrap() {
            BlobReply::Blob(b) => assert!(b == blob(seed), "blob {seed} corrupted"),
            other => panic!("unexpected reply {other:?}"),
        }
        assert_eq!(
            rx.receive_message::<BlobReply>().unwrap(),
            BlobReply::Ack(1)
        );
        assert_eq!(
            rx.receive_message::<BlobReply>().unwrap(),
            BlobReply::Blob(ByteBuf::from(vec![seed]))
        );
    }
    writer.join().unwrap();
    assert!(rx.next_message::<BlobReply>().unwrap().is_none());
    finish(&done).unwrap();
}

// ---------------------------------------------------------------------------------------------

/// Puts a periodic timer and a TCP listener on its loop; accepted streams become connections
/// like the master's (the shared-worker shape), and after three ticks the timer tells every
/// connection so.
struct Multi {
    addr_tx: Sender<SocketAddr>,
    ticks: u32,
    timer: Option<TimerId>,
    listener: Option<SourceId>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum MultiReply {
    Pong { peer: String, text: String },
    Ticked(u32),
}

impl Worker for Multi {
    const NAME: &'static str = "multi";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Err("built by the test".into())
    }
}

impl EventedWorker for Multi {
    type Message = String;
    type Reply = MultiReply;

    fn set_loop(&mut self, event_loop: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
        self.timer = Some(
            event_loop.add_periodic_timer(Duration::from_millis(1), |host, _| {
                let (worker, connections) = host.split_mut();
                worker.ticks += 1;
                if worker.ticks == 3 {
                    for connection in connections.iter_mut() {
                        connection.send(&MultiReply::Ticked(3))?;
                    }
                }
                Ok(())
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0".parse()?)?;
        self.addr_tx.send(listener.local_addr()?)?;
        self.listener = Some(event_loop.register(
            listener,
            Interest::READABLE,
            |host, event_loop, listener: &mut TcpListener, _| loop {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let channel = NbChannel::from_tcp_stream(stream, Codec::Json, 1 << 20);
                        host.connect(event_loop, channel, peer.to_string())?;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            },
        )?);
        Ok(())
    }

    fn on_message(
        &mut self,
        text: String,
        connection: &mut Connection<MultiReply>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        let peer = connection.peer_name().to_owned();
        connection.send(&MultiReply::Pong { peer, text })?;
        Ok(())
    }

    fn terminate(&mut self, event_loop: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
        event_loop.cancel_timer(self.timer.take().unwrap());
        event_loop.deregister(self.listener.take().unwrap());
        Ok(())
    }
}

#[test]
fn timer_socket_and_channel_are_served_at_once() {
    let _w = watchdog("timer_socket_and_channel", 30.0);
    let (addr_tx, addr_rx) = crossbeam_channel::bounded(1);
    let worker = Multi {
        addr_tx,
        ticks: 0,
        timer: None,
        listener: None,
    };
    let (mut master, done) = spawn(worker, Codec::Json, |_, _| {});
    let addr = addr_rx.recv_timeout(timeout(10.0)).unwrap();

    let stream = std::net::TcpStream::connect(addr).unwrap();
    let local = stream.local_addr().unwrap();
    let mut client = Channel::new(stream.try_clone().unwrap(), stream, Codec::Json);
    client.send_message("over tcp").unwrap();
    master.send_message("over stdio").unwrap();

    // The master connected before the third tick, so its first message is the tick notice
    // or the pong, in either order; the client's depends on when it was accepted.
    let mut got = vec![
        master.receive_message::<MultiReply>().unwrap(),
        master.receive_message::<MultiReply>().unwrap(),
    ];
    got.sort_by_key(|r| matches!(r, MultiReply::Ticked(_)));
    assert_eq!(
        got,
        [
            MultiReply::Pong {
                peer: "master".into(),
                text: "over stdio".into()
            },
            MultiReply::Ticked(3)
        ]
    );
    let pong = loop {
        match client.receive_message::<MultiReply>().unwrap() {
            MultiReply::Ticked(_) => continue,
            pong => break pong,
        }
    };
    assert_eq!(
        pong,
        MultiReply::Pong {
            peer: local.to_string(),
            text: "over tcp".into()
        }
    );
    drop(client);
    let (_master_in, master_out) = master.into_parts();
    drop(master_out);
    // Returns only because `terminate` took the timer and the listener off the loop.
    finish(&done).unwrap();
}

// ---------------------------------------------------------------------------------------------

struct FailsOnThree;

impl Worker for FailsOnThree {
    const NAME: &'static str = "fails-on-three";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(FailsOnThree)
    }
}

impl EventedWorker for FailsOnThree {
    type Message = u32;
    type Reply = u32;

    fn on_message(
        &mut self,
        n: u32,
        connection: &mut Connection<u32>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        if n == 3 {
            return Err(format!("no {n} please").into());
        }
        connection.send(&n)?;
        Ok(())
    }
}

#[test]
fn handler_error_ends_run_evented_with_that_error() {
    let _w = watchdog("handler_error_ends_run_evented", 30.0);
    let (mut master, done) = spawn(FailsOnThree, Codec::MessagePack, |_, _| {});
    for n in 1..=4u32 {
        master.send_message(&n).unwrap();
    }
    assert_eq!(finish(&done), Err("on_message failed: no 3 please".into()));
    // What was answered before the failure arrived; then the stream ends.
    assert_eq!(master.receive_message::<u32>().unwrap(), 1);
    assert_eq!(master.receive_message::<u32>().unwrap(), 2);
    assert!(master.next_message::<u32>().unwrap().is_none());
}

#[test]
fn frame_cut_short_by_the_master_is_a_truncation_error() {
    let _w = watchdog("frame_cut_short", 30.0);
    let (master, done) = spawn(FailsOnThree, Codec::MessagePack, |_, _| {});
    let (_master_in, mut master_out) = master.into_parts();
    let mut wire = Vec::new();
    worker_channel::encode_frame(Codec::MessagePack, FrameKind::Data, &1000u32, 64, &mut wire)
        .unwrap();
    master_out.write_all(&wire[..wire.len() - 1]).unwrap();
    drop(master_out);
    let err = finish(&done).unwrap_err();
    assert_eq!(
        err,
        format!(
            "channel error: stream ended inside a frame ({} of {} bytes received)",
            wire.len() - 1,
            wire.len()
        )
    );
}

// ---------------------------------------------------------------------------------------------

/// Echoes, and reports when its queue reached the bound and the largest queue it saw.
struct Backlog {
    limit: usize,
    hit: Option<Sender<()>>,
    max_seen: Arc<std::sync::atomic::AtomicUsize>,
}

impl Worker for Backlog {
    const NAME: &'static str = "backlog";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Err("built by the test".into())
    }
}

impl EventedWorker for Backlog {
    type Message = (u32, ByteBuf);
    type Reply = (u32, ByteBuf);

    fn on_message(
        &mut self,
        message: (u32, ByteBuf),
        connection: &mut Connection<(u32, ByteBuf)>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        connection.send(&message)?;
        let queued = connection.queued_bytes();
        self.max_seen
            .fetch_max(queued, std::sync::atomic::Ordering::Relaxed);
        if queued >= self.limit {
            if let Some(hit) = self.hit.take() {
                hit.send(())?;
            }
        }
        Ok(())
    }
}

#[test]
fn a_master_that_does_not_read_pauses_the_worker_instead_of_growing_its_queue() {
    let _w = watchdog("a_master_that_does_not_read", 60.0);
    const LIMIT: usize = 64 * 1024;
    const N: u32 = 20_000;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let channel = NbChannel::from_unix_stream(
        mio::net::UnixStream::from_std(ours),
        Codec::MessagePack,
        1 << 20,
    )
    .with_max_queued(LIMIT);
    let (hit_tx, hit_rx) = crossbeam_channel::bounded(1);
    let max_seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let worker = Backlog {
        limit: LIMIT,
        hit: Some(hit_tx),
        max_seen: max_seen.clone(),
    };
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    thread::spawn(move || {
        let result = (|| {
            let mut event_loop = WorkerLoop::<Backlog>::new()?;
            let mut host = worker_core::WorkerHost::dedicated(worker);
            host.start(&mut event_loop)?;
            host.connect(&mut event_loop, channel, "peer")?;
            event_loop.run(&mut host)
        })();
        done_tx.send(result.map_err(|e| describe(&e))).unwrap();
    });
    let writer_end = theirs.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let mut tx = Channel::new(std::io::empty(), writer_end, Codec::MessagePack);
        for n in 0..N {
            tx.send_message(&(n, ByteBuf::from(vec![n as u8; 1024])))
                .unwrap();
        }
        tx.into_parts()
            .1
            .shutdown(std::net::Shutdown::Write)
            .unwrap();
    });
    // Nothing is read until the worker's queue is at its bound.
    hit_rx.recv_timeout(timeout(30.0)).unwrap();
    let mut rx = Channel::new(theirs, std::io::sink(), Codec::MessagePack);
    for n in 0..N {
        let (m, blob) = rx.receive_message::<(u32, ByteBuf)>().unwrap();
        assert_eq!((m, blob.len(), blob[0]), (n, 1024, n as u8));
    }
    assert!(rx.next_message::<(u32, ByteBuf)>().unwrap().is_none());
    writer.join().unwrap();
    // No send was refused (reading paused instead), and the queue stayed within one frame of
    // its bound while 20 MiB went through.
    done_rx.recv_timeout(timeout(30.0)).unwrap().unwrap();
    let max_seen = max_seen.load(std::sync::atomic::Ordering::Relaxed);
    assert!(max_seen < LIMIT + 1100, "queue grew to {max_seen} bytes");
}
