//! The evented host as a shared-worker server will use it: several connections, control frames
//! handed to the host's handler, and one connection ended on purpose while the others go on.

use std::{
    io::Write,
    net::Shutdown,
    os::unix::net::UnixStream,
    sync::{Arc, Mutex},
    thread,
};

use worker_channel::{Channel, Codec, FrameKind};
use worker_core::{
    BoxError, Connection, ConnectionId, ControlHandler, DisconnectHandler, Error, EventedWorker,
    LoopHandle, NbChannel, Worker, WorkerHost, WorkerLoop,
};

use crate::common::{timeout, watchdog};

type Log = Arc<Mutex<Vec<String>>>;

/// Echoes text; `bye` makes it say goodbye and close that connection.
struct Hub {
    log: Log,
}

impl Worker for Hub {
    const NAME: &'static str = "hub";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Err("built by the test".into())
    }
}

impl EventedWorker for Hub {
    type Message = String;
    type Reply = String;

    fn on_message(
        &mut self,
        text: String,
        connection: &mut Connection<String>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        let entry = format!("message {} {text}", connection.peer_name());
        self.log.lock().unwrap().push(entry);
        if text == "bye" {
            connection.send(&"goodbye".to_owned())?;
            connection.close();
        } else {
            connection.send(&text)?;
        }
        Ok(())
    }

    fn on_disconnect(
        &mut self,
        connection: &mut Connection<String>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        let entry = format!("disconnect {}", connection.peer_name());
        self.log.lock().unwrap().push(entry);
        Ok(())
    }
}

type Handle = LoopHandle<WorkerHost<Hub>>;

/// What [`serve`] hands back: the peers' ends, the loop's handle, the host thread's outcome.
type Served = (
    Vec<Channel<UnixStream, UnixStream>>,
    Handle,
    thread::JoinHandle<Result<(), String>>,
);

/// Serves a shared host on a thread with one connection per peer name; the host's loop ends
/// once every connection is gone. Returns the peers' blocking ends, the loop's handle and the
/// thread's outcome.
fn serve(
    log: &Log,
    peers: &[&'static str],
    control: Option<fn() -> ControlHandler<Hub>>,
) -> Served {
    serve_with(
        log,
        peers,
        control,
        None::<fn(Log) -> DisconnectHandler<Hub>>,
        1 << 20,
    )
}

/// How long the hosts of these tests let a peer at its queue's bound take nothing.
const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(300);

/// As [`serve`], with a disconnect handler made from the log, and a bound on each
/// connection's outgoing queue.
fn serve_with<D>(
    log: &Log,
    peers: &[&'static str],
    control: Option<fn() -> ControlHandler<Hub>>,
    on_disconnect: Option<D>,
    max_queued: usize,
) -> Served
where
    D: FnOnce(Log) -> DisconnectHandler<Hub> + Send + 'static,
{
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for &name in peers {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        ours.push((a, name));
        theirs.push(Channel::new(b.try_clone().unwrap(), b, Codec::MessagePack));
    }
    let (handle_tx, handle_rx) = crossbeam_channel::bounded(1);
    let log = log.clone();
    let server = thread::spawn(move || {
        let run = || -> Result<(), Error> {
            let mut event_loop = WorkerLoop::<Hub>::new()?;
            handle_tx.send(event_loop.handle()).unwrap();
            let mut host = WorkerHost::shared(Hub { log: log.clone() });
            if let Some(control) = control {
                host.set_control_handler(control());
            }
            if let Some(on_disconnect) = on_disconnect {
                host.set_disconnect_handler(on_disconnect(log.clone()));
            }
            host.start(&mut event_loop)?;
            for (stream, name) in ours {
                let stream = mio::net::UnixStream::from_std(stream);
                let channel = NbChannel::from_unix_stream(stream, Codec::MessagePack, 1 << 20)
                    .with_max_queued(max_queued)
                    .with_stall_timeout(STALL_TIMEOUT);
                host.connect(&mut event_loop, channel, name)?;
            }
            event_loop.run(&mut host)
        };
        run().map_err(|e| worker_core::error_chain(&e))
    });
    let handle = handle_rx.recv_timeout(timeout(10.0)).unwrap();
    (theirs, handle, server)
}

/// Answers `hello` control frames with a control frame naming the peer.
fn greeter() -> ControlHandler<Hub> {
    Box::new(|worker: &mut Hub, connection, _, payload| {
        let text: String = connection.decode(payload)?;
        let entry = format!("control {} {text}", connection.peer_name());
        worker.log.lock().unwrap().push(entry);
        let reply = format!("{text}, {}", connection.peer_name());
        connection.send_control(&reply)?;
        Ok(())
    })
}

fn finish(server: thread::JoinHandle<Result<(), String>>) -> Result<(), String> {
    server.join().expect("the host's thread panicked")
}

#[test]
fn control_frames_reach_the_host_handler_in_order_with_the_data_around_them() {
    let _w = watchdog("control_frames_reach_the_host_handler", 30.0);
    let log = Log::default();
    let (mut peers, _handle, server) = serve(&log, &["a", "b"], Some(greeter));
    for (peer, name) in peers.iter_mut().zip(["a", "b"]) {
        peer.send_message("one").unwrap();
        peer.send(FrameKind::Control, "hello").unwrap();
        peer.send_message("two").unwrap();
        assert_eq!(peer.receive_message::<String>().unwrap(), "one");
        let greeting: String = peer.receive_kind(FrameKind::Control).unwrap();
        assert_eq!(greeting, format!("hello, {name}"));
        assert_eq!(peer.receive_message::<String>().unwrap(), "two");
    }
    drop(peers);
    finish(server).unwrap();
    let log = log.lock().unwrap();
    for name in ["a", "b"] {
        let mine: Vec<&str> = log
            .iter()
            .filter(|e| e.split(' ').nth(1) == Some(name))
            .map(String::as_str)
            .collect();
        let expected = [
            format!("message {name} one"),
            format!("control {name} hello"),
            format!("message {name} two"),
            format!("disconnect {name}"),
        ];
        assert_eq!(mine, expected);
    }
}

/// Logs `gone <peer> <why>` for every connection that ends, `why` being its error or `-`.
fn obituary(log: Log) -> DisconnectHandler<Hub> {
    Box::new(move |_: &mut Hub, connection, _| {
        let why = connection
            .error()
            .map_or_else(|| "-".to_owned(), |e| worker_core::error_chain(e));
        let entry = format!("gone {} {why}", connection.peer_name());
        log.lock().unwrap().push(entry);
        Ok(())
    })
}

#[test]
fn in_a_shared_host_a_bad_peer_ends_only_its_own_connection() {
    let _w = watchdog("a_bad_peer_ends_only_its_own_connection", 30.0);
    let log = Log::default();
    let names = ["control", "oversized", "garbage", "cut", "good"];
    let (peers, _handle, server) = serve_with(&log, &names, None, Some(obituary), 1 << 20);
    let [mut control, mut oversized, mut garbage, mut cut, mut good] =
        <[_; 5]>::try_from(peers).unwrap();
    // A control frame, which this host has no handler for.
    control.send(FrameKind::Control, "hello").unwrap();
    // A header announcing more than the limit.
    let mut header = (2u32 << 20).to_be_bytes().to_vec();
    header.push(0);
    oversized.writer_mut().write_all(&header).unwrap();
    // A data frame whose payload is no string.
    garbage.send_raw(FrameKind::Data, b"\xc1\xc1").unwrap();
    // Half a frame, then the end of the stream.
    cut.writer_mut().write_all(&[0, 0, 0, 9, 0, 1, 2]).unwrap();
    cut.writer().shutdown(Shutdown::Write).unwrap();
    for peer in [&mut control, &mut oversized, &mut garbage, &mut cut] {
        assert!(peer.next_message::<String>().unwrap().is_none(), "closed");
    }
    // The others go on.
    good.send_message("still here").unwrap();
    assert_eq!(good.receive_message::<String>().unwrap(), "still here");
    drop(good);
    finish(server).unwrap();
    let mut gone: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.starts_with("gone"))
        .cloned()
        .collect();
    gone.sort();
    assert_eq!(
        gone,
        [
            "gone control channel error: unexpected control frame",
            "gone cut channel error: stream ended inside a frame (7 of 14 bytes received)",
            "gone garbage channel error: cannot decode messagepack payload: wrong msgpack \
             marker Reserved",
            "gone good -",
            "gone oversized channel error: frame of 2097152 bytes exceeds the limit of 1048576 \
             bytes",
        ]
    );
}

#[test]
fn in_a_shared_host_a_peer_that_stops_reading_is_dropped_once_it_took_nothing_for_the_stall_timeout()
 {
    let _w = watchdog("a_peer_that_stops_reading_is_dropped", 60.0);
    let log = Log::default();
    let (gone_tx, gone) = crossbeam_channel::unbounded();
    let (peers, _handle, server) = serve_with(
        &log,
        &["deaf", "good"],
        None,
        Some(move |log: Log| {
            let mut obituary = obituary(log);
            Box::new(
                move |hub: &mut Hub,
                      connection: &mut Connection<String>,
                      el: &mut WorkerLoop<Hub>| {
                    obituary(hub, connection, el)?;
                    let _ = gone_tx.send(connection.peer_name().to_owned());
                    Ok(())
                },
            ) as DisconnectHandler<Hub>
        }),
        64 * 1024,
    );
    let [mut deaf, mut good] = <[_; 2]>::try_from(peers).unwrap();
    // `deaf` sends without ever reading; its echoes pile up until the bound, nothing more is
    // read from it, and once it took nothing for the stall timeout it is dropped while `good`
    // is served as usual.
    let started = std::time::Instant::now();
    let flooding = thread::spawn(move || {
        let text = "x".repeat(16 * 1024);
        while deaf.send_message(&text).is_ok() {}
    });
    assert_eq!(gone.recv_timeout(timeout(30.0)).unwrap(), "deaf");
    assert!(started.elapsed() >= STALL_TIMEOUT);
    good.send_message("still here").unwrap();
    assert_eq!(good.receive_message::<String>().unwrap(), "still here");
    flooding.join().unwrap();
    drop(good);
    finish(server).unwrap();
    let log = log.lock().unwrap();
    let deaf = log.iter().find(|e| e.starts_with("gone deaf")).unwrap();
    assert!(deaf.starts_with("gone deaf peer stopped reading"), "{deaf}");
}

#[test]
fn finish_answers_what_the_peer_already_sent_then_closes() {
    let _w = watchdog("finish_answers_what_the_peer_already_sent", 30.0);
    let log = Log::default();
    let (mut peers, handle, server) = serve(&log, &["a", "b"], None);
    let mut b = peers.pop().unwrap();
    let mut a = peers.pop().unwrap();
    for text in ["one", "two", "three"] {
        a.send_message(text).unwrap();
    }
    handle
        .post(|host: &mut WorkerHost<Hub>, event_loop| {
            let ids: Vec<ConnectionId> =
                host.connections_mut().iter_mut().map(|c| c.id()).collect();
            for id in ids {
                host.finish(event_loop, id)?;
            }
            Ok(())
        })
        .unwrap();
    for text in ["one", "two", "three"] {
        assert_eq!(a.receive_message::<String>().unwrap(), text);
    }
    assert!(a.next_message::<String>().unwrap().is_none(), "closed");
    assert!(b.next_message::<String>().unwrap().is_none(), "closed");
    finish(server).unwrap();
}

#[test]
fn one_connection_ends_on_purpose_and_the_others_go_on() {
    let _w = watchdog("one_connection_ends_on_purpose", 30.0);
    let log = Log::default();
    let (mut peers, handle, server) = serve(&log, &["a", "b", "c"], None);
    let mut c = peers.pop().unwrap();
    let mut b = peers.pop().unwrap();
    let mut a = peers.pop().unwrap();

    // `a` says bye and, in the same breath, something else: the worker closes that connection
    // from its callback; the goodbye is delivered, what came after it is not handed out.
    a.send_message("bye").unwrap();
    a.send_message("after").unwrap();
    assert_eq!(a.receive_message::<String>().unwrap(), "goodbye");
    assert!(a.next_message::<String>().unwrap().is_none(), "closed");
    assert!(log.lock().unwrap().contains(&"disconnect a".to_owned()));

    // The others are untouched.
    for (peer, text) in [(&mut b, "still b"), (&mut c, "still c")] {
        peer.send_message(text).unwrap();
        assert_eq!(peer.receive_message::<String>().unwrap(), text);
    }

    // The server ends `b` at once, from outside any callback of it.
    handle
        .post(|host: &mut WorkerHost<Hub>, event_loop| {
            let id = host
                .connections_mut()
                .iter_mut()
                .find(|c| c.peer_name() == "b")
                .map(|c| c.id())
                .ok_or("b is gone")?;
            assert!(host.disconnect(event_loop, id)?);
            assert!(!host.disconnect(event_loop, id)?, "already gone");
            Ok(())
        })
        .unwrap();
    assert!(b.next_message::<String>().unwrap().is_none(), "closed");
    c.send_message("still c").unwrap();
    assert_eq!(c.receive_message::<String>().unwrap(), "still c");

    // And `c` gracefully, from outside its callbacks: a last word first, then the end.
    handle
        .post(|host: &mut WorkerHost<Hub>, event_loop| {
            let connection = host
                .connections_mut()
                .iter_mut()
                .find(|c| c.peer_name() == "c")
                .ok_or("c is gone")?;
            connection.send(&"see you".to_owned())?;
            let id = connection.id();
            assert!(host.close(event_loop, id)?);
            Ok(())
        })
        .unwrap();
    assert_eq!(c.receive_message::<String>().unwrap(), "see you");
    assert!(c.next_message::<String>().unwrap().is_none(), "closed");
    // The host had nothing left on its loop: it returned by itself.
    finish(server).unwrap();
    let log = log.lock().unwrap();
    assert!(!log.contains(&"message a after".to_owned()), "{log:?}");
    let disconnects: Vec<&String> = log.iter().filter(|e| e.starts_with("disconnect")).collect();
    assert_eq!(
        disconnects,
        ["disconnect a", "disconnect b", "disconnect c"]
    );
}

/// How epoll watches descriptor `fd` (the socket with inode `ino`) in this process: its event
/// mask, as `/proc/self/fdinfo` shows it for the epoll instance that holds it.
fn epoll_mask(fd: i32, ino: u64) -> Option<u32> {
    for entry in std::fs::read_dir("/proc/self/fd").ok()? {
        let entry = entry.ok()?;
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if target.to_str() != Some("anon_inode:[eventpoll]") {
            continue;
        }
        let info = std::fs::read_to_string(
            std::path::Path::new("/proc/self/fdinfo").join(entry.file_name()),
        )
        .unwrap_or_default();
        for line in info.lines() {
            // tfd:        9 events: 80002005 data: 0000000000000000  pos:0 ino:1c0e3 sdev:8
            let fields: Vec<&str> = line.split_whitespace().collect();
            let field = |name: &str| {
                let at = fields
                    .iter()
                    .position(|f| *f == name || f.starts_with(name))?;
                let f = fields[at];
                match f.strip_prefix(name).filter(|rest| !rest.is_empty()) {
                    Some(rest) => Some(rest),
                    None => fields.get(at + 1).copied(),
                }
            };
            let tfd = field("tfd:").and_then(|v| v.parse::<i32>().ok());
            let their_ino = field("ino:").and_then(|v| u64::from_str_radix(v, 16).ok());
            if tfd == Some(fd) && their_ino == Some(ino) {
                return field("events:").and_then(|v| u32::from_str_radix(v, 16).ok());
            }
        }
    }
    None
}

const EPOLLIN: u32 = 0x1;
const EPOLLOUT: u32 = 0x4;
const EPOLLERR: u32 = 0x8;
const EPOLLHUP: u32 = 0x10;
const EPOLLRDHUP: u32 = 0x2000;
const EPOLLET: u32 = 1 << 31;

#[test]
fn a_send_from_outside_the_callbacks_that_leaves_bytes_queued_is_flushed_once_the_peer_reads() {
    use std::os::{fd::AsRawFd, unix::fs::MetadataExt};

    let _w = watchdog("a_send_from_outside_the_callbacks_is_flushed", 30.0);
    let log = Log::default();
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let fd = ours.as_raw_fd();
    let ino = std::fs::metadata(format!("/proc/self/fd/{fd}"))
        .unwrap()
        .ino();
    let mut peer = Channel::new(theirs.try_clone().unwrap(), theirs, Codec::MessagePack);
    let (handle_tx, handle_rx) = crossbeam_channel::bounded(1);
    let hub_log = log.clone();
    let server = thread::spawn(move || {
        let run = || -> Result<(), Error> {
            let mut event_loop = WorkerLoop::<Hub>::new()?;
            handle_tx.send(event_loop.handle()).unwrap();
            let mut host = WorkerHost::shared(Hub { log: hub_log });
            host.start(&mut event_loop)?;
            let stream = mio::net::UnixStream::from_std(ours);
            let channel = NbChannel::from_unix_stream(stream, Codec::MessagePack, 1 << 20);
            host.connect(&mut event_loop, channel, "a")?;
            event_loop.run(&mut host)
        };
        run().map_err(|e| worker_core::error_chain(&e))
    });
    let handle: Handle = handle_rx.recv_timeout(timeout(10.0)).unwrap();
    let (report_tx, report) = crossbeam_channel::unbounded::<(usize, Option<u32>)>();
    // On the loop's thread, after what it is doing now: the bytes queued and how epoll
    // watches the connection.
    let look = |report_tx: crossbeam_channel::Sender<(usize, Option<u32>)>| {
        handle
            .post(move |host: &mut WorkerHost<Hub>, _| {
                let queued = host
                    .connections_mut()
                    .iter_mut()
                    .next()
                    .unwrap()
                    .queued_bytes();
                report_tx.send((queued, epoll_mask(fd, ino))).unwrap();
                Ok(())
            })
            .unwrap();
    };
    // The kernel always adds EPOLLERR and EPOLLHUP.
    let readable = EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP | EPOLLET;

    // A reply the socket takes whole: nothing queued, and nobody watches for writability.
    peer.send_message("ping").unwrap();
    assert_eq!(peer.receive_message::<String>().unwrap(), "ping");
    look(report_tx.clone());
    assert_eq!(report.recv().unwrap(), (0, Some(readable)));

    // A send from a posted closure that the socket cannot take at once: the rest is queued,
    // and writability is watched until the peer has read it all.
    let big = "y".repeat(900_000);
    let sent = big.clone();
    let sent_tx = report_tx.clone();
    handle
        .post(move |host: &mut WorkerHost<Hub>, _| {
            let connection = host.connections_mut().iter_mut().next().unwrap();
            connection.send(&sent)?;
            let queued = connection.queued_bytes();
            sent_tx.send((queued, epoll_mask(fd, ino))).unwrap();
            Ok(())
        })
        .unwrap();
    let (queued, mask) = report.recv().unwrap();
    assert!(queued > 0, "the socket took all of 900 kB at once");
    assert_eq!(mask, Some(readable | EPOLLOUT));
    assert_eq!(peer.receive_message::<String>().unwrap(), big);

    // Drained: writability is no longer watched.
    peer.send_message("pong").unwrap();
    assert_eq!(peer.receive_message::<String>().unwrap(), "pong");
    look(report_tx);
    assert_eq!(report.recv().unwrap(), (0, Some(readable)));

    drop(peer);
    finish(server).unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        ["message a ping", "message a pong", "disconnect a"]
    );
}
