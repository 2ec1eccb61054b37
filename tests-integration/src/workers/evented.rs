//! Evented workers for the evented-worker scenarios.

use std::{
    io::{Read, Write},
    net::SocketAddr,
    time::Duration,
};

use exsyst_worker::{
    BoxError, Registry, Worker,
    channel::serde_bytes::ByteBuf,
    worker::{Connection, EventedWorker, SourceId, TimerId, WorkerLoop},
};
use mio::{Interest, net::TcpListener};
use serde::{Deserialize, Serialize};

/// Registers this module's implementations.
pub fn register(registry: Registry) -> Registry {
    registry
        .evented::<EventedSquarer>()
        .evented::<CallbackRecorder>()
        .evented::<EventedEcho>()
        .evented::<TimerAndSocket>()
        .evented::<EventedFailer>()
        .evented::<EventedSpinReporter>()
}

/// Answers every message with its event loop's latency mode, in microseconds (0: off).
#[derive(Debug)]
pub struct EventedSpinReporter;

impl Worker for EventedSpinReporter {
    const NAME: &'static str = "evented-spin-reporter";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(EventedSpinReporter)
    }
}

impl EventedWorker for EventedSpinReporter {
    type Message = ();
    type Reply = u64;

    fn on_message(
        &mut self,
        (): (),
        connection: &mut Connection<u64>,
        event_loop: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        connection.send(&event_loop.spin().as_micros())?;
        Ok(())
    }
}

/// The seed's evented `MyWorkerImpl`.
#[derive(Debug)]
pub struct EventedSquarer;

impl Worker for EventedSquarer {
    const NAME: &'static str = "evented-squarer";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(EventedSquarer)
    }
}

impl EventedWorker for EventedSquarer {
    type Message = i64;
    type Reply = String;

    fn on_message(
        &mut self,
        n: i64,
        connection: &mut Connection<String>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        connection.send(&format!("{n} squared is {}", n * n))?;
        Ok(())
    }
}

/// Appends the name of every callback to a file (its constructor argument), flushed at once, so
/// the order can be read after the worker is gone; answers every message with its number.
#[derive(Debug)]
pub struct CallbackRecorder {
    log: std::fs::File,
}

impl CallbackRecorder {
    fn record(&mut self, what: &str) -> Result<(), BoxError> {
        self.log.write_all(format!("{what}\n").as_bytes())?;
        Ok(())
    }
}

impl Worker for CallbackRecorder {
    const NAME: &'static str = "callback-recorder";
    type Args = String;
    fn new(path: String) -> Result<Self, BoxError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(CallbackRecorder { log })
    }
}

impl EventedWorker for CallbackRecorder {
    type Message = u32;
    type Reply = u32;

    fn set_loop(&mut self, _: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
        self.record("set_loop")
    }

    fn initialize(&mut self) -> Result<(), BoxError> {
        self.record("initialize")
    }

    fn on_connect(
        &mut self,
        connection: &mut Connection<u32>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        let peer = connection.peer_name().to_owned();
        self.record(&format!("on_connect {peer}"))
    }

    fn on_message(
        &mut self,
        n: u32,
        connection: &mut Connection<u32>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        self.record(&format!("on_message {n}"))?;
        connection.send(&n)?;
        Ok(())
    }

    fn on_disconnect(
        &mut self,
        _: &mut Connection<u32>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        self.record("on_disconnect")
    }

    fn terminate(&mut self, _: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
        self.record("terminate")
    }
}

/// Sends `Args` bytes first (a large message, before reading anything), then echoes every
/// message.
#[derive(Debug)]
pub struct EventedEcho(usize);

impl Worker for EventedEcho {
    const NAME: &'static str = "evented-echo";
    type Args = usize;
    fn new(first: usize) -> Result<Self, BoxError> {
        Ok(EventedEcho(first))
    }
}

impl EventedWorker for EventedEcho {
    type Message = ByteBuf;
    type Reply = ByteBuf;

    fn on_connect(
        &mut self,
        connection: &mut Connection<ByteBuf>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        if self.0 > 0 {
            connection.send(&ByteBuf::from(vec![0xab; self.0]))?;
        }
        Ok(())
    }

    fn on_message(
        &mut self,
        message: ByteBuf,
        connection: &mut Connection<ByteBuf>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        connection.send(&message)?;
        Ok(())
    }
}

/// What [`TimerAndSocket`] tells its master.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub enum TimerAndSocketEvent {
    /// The address of its TCP listener.
    Listening(String),
    /// Its periodic timer fired (count so far).
    Tick(u32),
    /// A TCP client sent this line, and got it back upper-cased.
    Served(String),
    /// Answer to a master's message.
    Echo(String),
}

/// Keeps a periodic timer and a TCP listener on its loop next to its channel: ticks and TCP
/// requests are reported to the master as they happen.
#[derive(Debug, Default)]
pub struct TimerAndSocket {
    timer: Option<TimerId>,
    listener: Option<SourceId>,
    ticks: u32,
    address: Option<SocketAddr>,
}

impl Worker for TimerAndSocket {
    const NAME: &'static str = "timer-and-socket";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(TimerAndSocket::default())
    }
}

impl EventedWorker for TimerAndSocket {
    type Message = String;
    type Reply = TimerAndSocketEvent;

    fn set_loop(&mut self, event_loop: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
        self.timer = Some(
            event_loop.add_periodic_timer(Duration::from_millis(20), |host, _| {
                let (worker, connections) = host.split_mut();
                worker.ticks += 1;
                for c in connections.iter_mut() {
                    c.send(&TimerAndSocketEvent::Tick(worker.ticks))?;
                }
                Ok(())
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0".parse()?)?;
        self.address = Some(listener.local_addr()?);
        self.listener =
            Some(
                event_loop.register(listener, Interest::READABLE, |host, _, listener, _| {
                    // Each client sends one line and gets it back upper-cased; small enough to
                    // serve in one go on loopback.
                    loop {
                        let (stream, _) = match listener.accept() {
                            Ok(s) => s,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                            Err(e) => return Err(e.into()),
                        };
                        let mut std_stream =
                            std::net::TcpStream::from(std::os::fd::OwnedFd::from(stream));
                        std_stream.set_nonblocking(false)?;
                        std_stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                        let mut line = Vec::new();
                        let mut byte = [0u8];
                        while std_stream.read(&mut byte)? == 1 && byte[0] != b'\n' {
                            line.push(byte[0]);
                        }
                        let text = String::from_utf8(line)?;
                        std_stream.write_all(format!("{}\n", text.to_uppercase()).as_bytes())?;
                        for c in host.connections_mut().iter_mut() {
                            c.send(&TimerAndSocketEvent::Served(text.clone()))?;
                        }
                    }
                })?,
            );
        Ok(())
    }

    fn on_connect(
        &mut self,
        connection: &mut Connection<TimerAndSocketEvent>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        let address = self.address.ok_or("no listener")?;
        connection.send(&TimerAndSocketEvent::Listening(address.to_string()))?;
        Ok(())
    }

    fn on_message(
        &mut self,
        message: String,
        connection: &mut Connection<TimerAndSocketEvent>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        connection.send(&TimerAndSocketEvent::Echo(message))?;
        Ok(())
    }

    fn terminate(&mut self, event_loop: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
        if let Some(timer) = self.timer.take() {
            event_loop.cancel_timer(timer);
        }
        if let Some(listener) = self.listener.take() {
            event_loop.deregister(listener);
        }
        Ok(())
    }
}

/// How [`EventedFailer`] fails on the message `"fail"`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum EventedFailure {
    /// `on_message` returns this error.
    Error(String),
    /// `on_message` panics with this text.
    Panic(String),
}

/// Echoes strings; fails as told on `"fail"`.
#[derive(Debug)]
pub struct EventedFailer(EventedFailure);

impl Worker for EventedFailer {
    const NAME: &'static str = "evented-failer";
    type Args = EventedFailure;
    fn new(failure: EventedFailure) -> Result<Self, BoxError> {
        Ok(EventedFailer(failure))
    }
}

impl EventedWorker for EventedFailer {
    type Message = String;
    type Reply = String;

    fn on_message(
        &mut self,
        message: String,
        connection: &mut Connection<String>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        if message == "fail" {
            match &self.0 {
                EventedFailure::Error(text) => return Err(text.clone().into()),
                EventedFailure::Panic(text) => panic!("{text}"),
            }
        }
        connection.send(&message)?;
        Ok(())
    }
}
