//! Workers for the bootstrap hardening scenarios: an evented worker that will not take a hint,
//! a daemon started detached, and a hook that gives SIGPIPE its default action back.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixListener,
    time::Duration,
};

use exsyst_worker::{
    BoxError, RawWorker, Registry, Worker, WorkerChannel,
    worker::{Connection, EventedWorker, TimerId, WorkerLoop},
};

/// Registers this module's implementations.
pub fn register(registry: Registry) -> Registry {
    registry
        .evented::<Stubborn>()
        .raw::<Daemon>()
        .before_hook(DEFAULT_SIGPIPE, default_sigpipe)
}

/// The before-construction hook that restores the default action of SIGPIPE (death), as a
/// program that pipes into `head` does: a worker run with it dies of any write that raises
/// SIGPIPE.
pub const DEFAULT_SIGPIPE: &str = "default-sigpipe";

fn default_sigpipe() -> Result<(), BoxError> {
    Ok(crate::sys::set_signal(
        libc::SIGPIPE,
        crate::sys::Disposition::Default,
    )?)
}

/// An evented worker that ignores SIGTERM and SIGALRM (as servers that drain gracefully often
/// do) and keeps a periodic timer on its loop for good, so nothing of its own ever ends it.
/// Echoes every number.
#[derive(Debug, Default)]
pub struct Stubborn {
    timer: Option<TimerId>,
}

impl Worker for Stubborn {
    const NAME: &'static str = "stubborn";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        for signal in [libc::SIGTERM, libc::SIGALRM] {
            crate::sys::set_signal(signal, crate::sys::Disposition::Ignore)?;
        }
        Ok(Stubborn::default())
    }
}

impl EventedWorker for Stubborn {
    type Message = u32;
    type Reply = u32;

    fn set_loop(&mut self, event_loop: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
        self.timer = Some(event_loop.add_periodic_timer(Duration::from_millis(50), |_, _| Ok(())));
        Ok(())
    }

    fn on_message(
        &mut self,
        n: u32,
        connection: &mut Connection<u32>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        connection.send(&n)?;
        Ok(())
    }
}

/// A daemon reached over a Unix socket (its constructor argument): every client gets one line,
/// `pid=<its pid>`; a client that sends `stop` ends it.
#[derive(Debug)]
pub struct Daemon {
    listener: UnixListener,
}

impl Worker for Daemon {
    const NAME: &'static str = "daemon";
    type Args = String;
    fn new(path: String) -> Result<Self, BoxError> {
        Ok(Daemon {
            listener: UnixListener::bind(path)?,
        })
    }
}

impl RawWorker for Daemon {
    fn run(&mut self, _: &mut WorkerChannel) -> Result<(), BoxError> {
        for stream in self.listener.incoming() {
            let mut stream = stream?;
            writeln!(stream, "pid={}", std::process::id())?;
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line)?;
            if line.trim() == "stop" {
                return Ok(());
            }
        }
        Ok(())
    }
}
