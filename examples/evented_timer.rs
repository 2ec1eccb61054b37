//! An evented worker that keeps a periodic timer next to its channel: it answers questions
//! about how long it has been running, and on its own, every 100 ms, reports a heartbeat.
//!
//! Run it with `cargo run --example evented_timer`.

use std::time::{Duration, Instant};

use exsyst_worker::{
    BoxError, Connection, EventedWorker, Worker, WorkerFactory, WorkerLoop, worker::TimerId,
};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
enum Event {
    Heartbeat(u32),
    Uptime(Duration),
}

struct Clock {
    started: Instant,
    beats: u32,
    timer: Option<TimerId>,
}

impl Worker for Clock {
    const NAME: &'static str = "evented_timer::Clock";
    type Args = ();

    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Clock {
            started: Instant::now(),
            beats: 0,
            timer: None,
        })
    }
}

impl EventedWorker for Clock {
    type Message = ();
    type Reply = Event;

    fn set_loop(&mut self, event_loop: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
        // Timer handlers get the host: the worker and its connections.
        let timer = event_loop.add_periodic_timer(Duration::from_millis(100), |host, _| {
            let (clock, connections) = host.split_mut();
            clock.beats += 1;
            for master in connections.iter_mut() {
                master.send(&Event::Heartbeat(clock.beats))?;
            }
            Ok(())
        });
        self.timer = Some(timer);
        Ok(())
    }

    fn on_message(
        &mut self,
        (): (),
        master: &mut Connection<Event>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        master.send(&Event::Uptime(self.started.elapsed()))?;
        Ok(())
    }

    fn terminate(&mut self, event_loop: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
        // The loop ends when nothing is left on it: take the timer off, or the worker stays.
        if let Some(timer) = self.timer.take() {
            event_loop.cancel_timer(timer);
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    exsyst_worker::registry().evented::<Clock>().run_if_worker();

    let mut w = WorkerFactory::new().create_worker::<Clock>()?;
    let mut heartbeats = 0;
    while heartbeats < 3 {
        match w.receive_message::<Event>()? {
            Event::Heartbeat(n) => {
                println!("heartbeat {n}");
                heartbeats += 1;
                w.send_message(&())?;
            }
            Event::Uptime(d) => println!("worker up for {d:?}"),
        }
    }
    println!("worker exited: {}", w.close()?);
    Ok(())
}
