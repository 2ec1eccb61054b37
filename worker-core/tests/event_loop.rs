//! The event loop on its own: timers, the waker, sources and deregistration during dispatch.

use std::{io::Write, thread, time::Duration};

use mio::{Interest, unix::pipe};
use worker_core::{Error, EventLoop, SourceId};

use crate::common::{timeout, watchdog};

#[test]
fn timers_fire_in_deadline_order_then_creation_order() {
    let _w = watchdog("timers_fire_in_deadline_order", 10.0);
    let mut event_loop = EventLoop::<Vec<u32>>::new().unwrap();
    for (delay_ms, tag) in [(30, 3), (10, 1), (20, 2), (10, 11)] {
        event_loop.add_timer(Duration::from_millis(delay_ms), move |log, _| {
            log.push(tag);
            Ok(())
        });
    }
    let mut log = Vec::new();
    event_loop.run(&mut log).unwrap();
    // 1 and 11 share a deadline only if created in the same instant; either way 1 comes first.
    assert_eq!(log, [1, 11, 2, 3]);
    assert!(event_loop.is_empty());
}

#[test]
fn cancelled_timer_never_fires() {
    let _w = watchdog("cancelled_timer_never_fires", 10.0);
    let mut event_loop = EventLoop::<Vec<&str>>::new().unwrap();
    let doomed = event_loop.add_timer(Duration::from_millis(5), |log, _| {
        log.push("cancelled one");
        Ok(())
    });
    event_loop.add_timer(Duration::from_millis(10), |log, _| {
        log.push("kept");
        Ok(())
    });
    assert!(event_loop.cancel_timer(doomed));
    assert!(!event_loop.cancel_timer(doomed));
    let mut log = Vec::new();
    event_loop.run(&mut log).unwrap();
    assert_eq!(log, ["kept"]);
}

#[test]
fn periodic_timer_fires_until_it_cancels_itself() {
    let _w = watchdog("periodic_timer_fires", 10.0);
    let mut event_loop = EventLoop::<Vec<std::time::Instant>>::new().unwrap();
    let id = std::rc::Rc::new(std::cell::Cell::new(None));
    let own_id = id.clone();
    let timer =
        event_loop.add_periodic_timer(Duration::from_millis(2), move |ticks, event_loop| {
            ticks.push(std::time::Instant::now());
            if ticks.len() == 5 {
                assert!(event_loop.cancel_timer(own_id.get().unwrap()));
            }
            Ok(())
        });
    id.set(Some(timer));
    assert_eq!(event_loop.timer_count(), 1);
    let mut ticks = Vec::new();
    // Returns by itself: the only timer cancelled itself.
    event_loop.run(&mut ticks).unwrap();
    assert_eq!(ticks.len(), 5);
    assert!(
        ticks
            .windows(2)
            .all(|w| w[1] >= w[0] + Duration::from_millis(2))
    );
    assert!(!event_loop.cancel_timer(timer));
}

#[test]
fn run_returns_at_once_when_nothing_is_registered() {
    let mut event_loop = EventLoop::<()>::new().unwrap();
    // The waker exists (a handle is out) but does not count.
    let _handle = event_loop.handle();
    event_loop.run(&mut ()).unwrap();
    assert!(event_loop.is_empty());
}

#[test]
fn source_that_deregisters_itself_ends_the_loop() {
    let _w = watchdog("source_that_deregisters_itself", 10.0);
    let (mut tx, rx) = pipe::new().unwrap();
    let mut event_loop = EventLoop::<Vec<u8>>::new().unwrap();
    let id = std::rc::Rc::new(std::cell::Cell::new(None::<SourceId>));
    let own_id = id.clone();
    id.set(Some(
        event_loop
            .register(rx, Interest::READABLE, move |got, event_loop, rx, _| {
                let mut buf = [0; 16];
                loop {
                    match std::io::Read::read(rx, &mut buf) {
                        Ok(0) => {
                            assert!(event_loop.deregister(own_id.get().unwrap()));
                            return Ok(());
                        }
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                        Err(e) => return Err(e.into()),
                    }
                }
            })
            .unwrap(),
    ));
    assert_eq!(event_loop.source_count(), 1);
    let writer = thread::spawn(move || {
        tx.set_nonblocking(false).unwrap();
        tx.write_all(b"bye").unwrap();
        // Dropping `tx` closes the pipe: end of stream.
    });
    let mut got = Vec::new();
    event_loop.run(&mut got).unwrap();
    writer.join().unwrap();
    assert_eq!(got, b"bye");
    assert_eq!(event_loop.source_count(), 0);
    assert!(!event_loop.deregister(id.get().unwrap()), "stale id");
}

#[derive(Default)]
struct Pair {
    ids: Vec<SourceId>,
    calls: u32,
}

#[test]
fn handler_deregistering_another_ready_source_suppresses_its_event() {
    let _w = watchdog("handler_deregistering_another", 10.0);
    let mut event_loop = EventLoop::<Pair>::new().unwrap();
    let mut pair = Pair::default();
    let mut writers = Vec::new();
    for _ in 0..2 {
        let (mut tx, rx) = pipe::new().unwrap();
        // Both readable before the loop polls, so both events come in one turn.
        tx.write_all(b"x").unwrap();
        writers.push(tx);
        let id = event_loop
            .register(
                rx,
                Interest::READABLE,
                |pair: &mut Pair, event_loop, _, _| {
                    pair.calls += 1;
                    // Whichever runs first removes both, itself included.
                    for &id in &pair.ids {
                        event_loop.deregister(id);
                    }
                    Ok(())
                },
            )
            .unwrap();
        pair.ids.push(id);
    }
    event_loop.run(&mut pair).unwrap();
    assert_eq!(
        pair.calls, 1,
        "the second event was for a deregistered source"
    );
    assert_eq!(event_loop.source_count(), 0);
}

#[test]
fn posted_work_runs_on_the_loop_thread() {
    let _w = watchdog("posted_work_runs", 10.0);
    let (_tx, rx) = pipe::new().unwrap();
    let mut event_loop = EventLoop::<Vec<String>>::new().unwrap();
    // A source that never becomes ready keeps the loop running until posted work removes it.
    let keepalive = event_loop
        .register(rx, Interest::READABLE, |_, _, _, _| Ok(()))
        .unwrap();
    let handle = event_loop.handle();
    let loop_thread = thread::current().id();
    let poster = thread::spawn(move || {
        for i in 0..3 {
            handle
                .clone()
                .post(move |log: &mut Vec<String>, _| {
                    assert_eq!(thread::current().id(), loop_thread);
                    log.push(format!("posted {i}"));
                    Ok(())
                })
                .unwrap();
        }
        handle
            .post(move |_, event_loop| {
                assert!(event_loop.deregister(keepalive));
                Ok(())
            })
            .unwrap();
        handle
    });
    let mut log = Vec::new();
    event_loop.run(&mut log).unwrap();
    assert_eq!(log, ["posted 0", "posted 1", "posted 2"]);
    let handle = poster.join().unwrap();
    drop(event_loop);
    assert!(matches!(handle.post(|_, _| Ok(())), Err(Error::LoopGone)));
}

#[test]
fn handler_error_stops_the_loop_with_that_error() {
    let _w = watchdog("handler_error_stops_the_loop", 10.0);
    let mut event_loop = EventLoop::<u32>::new().unwrap();
    event_loop.add_periodic_timer(Duration::from_millis(1), |n, _| {
        *n += 1;
        Ok(())
    });
    event_loop.add_timer(Duration::from_millis(5), |_, _| Err("boom".into()));
    let mut n = 0;
    let err = event_loop.run(&mut n).unwrap_err();
    match &err {
        Error::Handler { callback, source } => {
            assert_eq!(*callback, "timer");
            assert_eq!(source.to_string(), "boom");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(err.to_string(), "timer failed");
    assert_eq!(
        event_loop.timer_count(),
        1,
        "the periodic timer is still there"
    );
}

#[test]
fn stop_returns_from_run_with_timers_left() {
    let _w = watchdog("stop_returns_from_run", 10.0);
    let mut event_loop = EventLoop::<()>::new().unwrap();
    event_loop.add_periodic_timer(Duration::from_millis(1), |_, _| Ok(()));
    event_loop.add_timer(Duration::from_millis(3), |_, event_loop| {
        event_loop.stop();
        Ok(())
    });
    let started = std::time::Instant::now();
    event_loop.run(&mut ()).unwrap();
    assert!(started.elapsed() < timeout(5.0));
    assert!(!event_loop.is_empty());
}

#[test]
fn huge_delays_and_waits_mean_never_not_a_panic() {
    let _w = watchdog("huge_delays_and_waits", 10.0);
    let mut event_loop = EventLoop::<Vec<&str>>::new().unwrap();
    let never = event_loop.add_timer(Duration::MAX, |log, _| {
        log.push("never");
        Ok(())
    });
    let never_periodic = event_loop.add_periodic_timer(Duration::MAX, |log, _| {
        log.push("never periodic");
        Ok(())
    });
    // Past what the clock holds once added to a period's first firing.
    let far = event_loop.add_periodic_timer(Duration::from_secs(u64::MAX / 2), |log, _| {
        log.push("far");
        Ok(())
    });
    assert_eq!(event_loop.timer_count(), 3);
    // A turn that may wait for ever returns for a posted closure; the timers stay unfired.
    let handle = event_loop.handle();
    handle
        .post(|log, _| {
            log.push("posted");
            Ok(())
        })
        .unwrap();
    let mut log = Vec::new();
    event_loop.turn(&mut log, Some(Duration::MAX)).unwrap();
    assert_eq!(log, ["posted"]);
    event_loop.add_timer(Duration::from_millis(1), |log, _| {
        log.push("soon");
        Ok(())
    });
    while log.len() < 2 {
        event_loop.turn(&mut log, Some(Duration::MAX)).unwrap();
    }
    assert_eq!(log, ["posted", "soon"]);
    for id in [never, never_periodic, far] {
        assert!(event_loop.cancel_timer(id));
    }
    event_loop.run(&mut log).unwrap();
    assert!(event_loop.is_empty());
}

/// A source the test keeps, registered by reference: its descriptors leave the poller through
/// it, so it can be registered again right away (epoll refuses a descriptor it still holds).
#[test]
fn a_source_kept_by_its_owner_registers_and_leaves_through_itself() {
    use worker_channel::Codec;
    use worker_core::{NbChannel, Readiness};

    let _w = watchdog("a_source_kept_by_its_owner", 10.0);
    let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let mut channel =
        NbChannel::from_unix_stream(mio::net::UnixStream::from_std(ours), Codec::Json, 1 << 10);
    let mut event_loop = EventLoop::<Vec<Readiness>>::new().unwrap();
    let record = |seen: &mut Vec<Readiness>, _: &mut EventLoop<_>, ready| {
        seen.push(ready);
        Ok(())
    };
    let id = event_loop
        .register_ref(&mut channel, Interest::READABLE, record)
        .unwrap();
    assert!(event_loop.deregister_ref(id, &mut channel));
    assert!(!event_loop.deregister_ref(id, &mut channel), "stale id");
    assert_eq!(event_loop.source_count(), 0);
    // Registered again under a new id: the descriptor had left epoll.
    let id = event_loop
        .register_ref(&mut channel, Interest::READABLE, record)
        .unwrap();
    theirs.write_all(b"x").unwrap();
    let mut seen = Vec::new();
    while seen.is_empty() {
        event_loop.turn(&mut seen, Some(timeout(5.0))).unwrap();
    }
    assert!(seen[0].readable);
    assert!(event_loop.deregister_ref(id, &mut channel));
    assert!(event_loop.is_empty());

    // A pair of pipes: each half joins and leaves with the interest that concerns it.
    let (master_tx, worker_rx) = pipe::new().unwrap();
    let (worker_tx, master_rx) = pipe::new().unwrap();
    let mut pipes = NbChannel::from_pipes(worker_rx, worker_tx, Codec::Json, 1 << 10).unwrap();
    let id = event_loop
        .register_ref(&mut pipes, Interest::READABLE, record)
        .unwrap();
    let both = Interest::READABLE | Interest::WRITABLE;
    assert!(event_loop.reregister_ref(id, &mut pipes, both).unwrap());
    let mut seen = Vec::new();
    while !seen.iter().any(|r: &Readiness| r.writable) {
        event_loop.turn(&mut seen, Some(timeout(5.0))).unwrap();
    }
    assert!(
        event_loop
            .reregister_ref(id, &mut pipes, Interest::READABLE)
            .unwrap()
    );
    assert!(event_loop.deregister_ref(id, &mut pipes));
    let id = event_loop.register_ref(&mut pipes, both, record).unwrap();
    assert!(event_loop.deregister_ref(id, &mut pipes));
    drop((master_tx, master_rx));
}

/// What a loop that catches panics saw: (ticks of the periodic timer, the panics' callbacks
/// and messages).
type Seen = (u32, Vec<(&'static str, String)>);

#[test]
fn caught_panics_of_timers_posted_closures_and_sources_go_to_the_panic_handler() {
    let _w = watchdog("caught_panics", 10.0);
    let mut event_loop = EventLoop::<Seen>::new().unwrap();
    event_loop.set_panic_handler(|seen: &mut Seen, _, error| {
        match error {
            Error::Panicked { callback, message } => seen.1.push((callback, message)),
            other => panic!("not a panic: {other:?}"),
        }
        Ok(())
    });
    assert!(event_loop.catches_panics());
    // A periodic timer that panics on every other tick keeps its period.
    let timer = std::rc::Rc::new(std::cell::Cell::new(None));
    let own = timer.clone();
    let id = event_loop.add_periodic_timer(
        Duration::from_millis(1),
        move |seen: &mut Seen, event_loop| {
            seen.0 += 1;
            if seen.0 == 4 {
                event_loop.cancel_timer(own.get().unwrap());
            }
            if seen.0 % 2 == 1 {
                panic!("tick {}", seen.0);
            }
            Ok(())
        },
    );
    timer.set(Some(id));
    event_loop
        .handle()
        .post(|_: &mut Seen, _| panic!("posted"))
        .unwrap();
    // A source whose handler panics, then deregisters itself on its next event.
    let (mut tx, rx) = pipe::new().unwrap();
    tx.write_all(b"x").unwrap();
    let mut panicked = false;
    event_loop
        .register(rx, Interest::READABLE, move |_: &mut Seen, _, _, _| {
            if !std::mem::replace(&mut panicked, true) {
                panic!("readable");
            }
            let _ = event_loop;
            Ok(())
        })
        .unwrap();
    let mut seen: Seen = (0, Vec::new());
    // Runs until the timer is done; the source stays, so one turn at a time.
    while seen.0 < 4 {
        event_loop.turn(&mut seen, Some(timeout(10.0))).unwrap();
    }
    let mut panics = seen.1.clone();
    panics.sort();
    assert_eq!(
        panics,
        [
            ("handler", "readable".to_owned()),
            ("posted closure", "posted".to_owned()),
            ("timer", "tick 1".to_owned()),
            ("timer", "tick 3".to_owned()),
        ]
    );
}

#[test]
fn without_a_panic_handler_a_panic_unwinds_through_the_loop() {
    let mut event_loop = EventLoop::<()>::new().unwrap();
    assert!(!event_loop.catches_panics());
    event_loop.add_timer(Duration::ZERO, |_, _| panic!("uncaught"));
    let unwound =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| event_loop.run(&mut ())));
    assert!(unwound.is_err());
}
