//! The size matrix of the dedicated paths (the shared ones are worker-shared's `sizes`): every
//! size up to the frame limit, to a fresh worker and after a timed receive that expired, comes
//! back whole and at once. A new path is one line of [`PATHS`].

use std::time::{Duration, Instant};

use exsyst_worker::{
    DedicatedWorker, WorkerFactory, WorkerPool, bootstrap, channel::serde_bytes::ByteBuf, pool,
};
use tests_integration::workers::{dedicated::Echo, evented::EventedEcho};

use crate::support::*;

/// How the master talks to its worker.
#[derive(Clone, Copy, Debug)]
enum Path {
    /// A raw worker.
    Dedicated,
    /// An evented worker, on its event loop.
    Evented,
    /// A pool of two raw workers: sent to the first, received from any.
    Pool,
}

const PATHS: &[Path] = &[Path::Dedicated, Path::Evented, Path::Pool];

const MIB: usize = 1024 * 1024;

/// Payload sizes; the last is the largest byte string whose MessagePack `bin 32` (a 5-byte
/// header) fits the default frame limit.
const SIZES: &[usize] = &[
    0,
    1,
    4095,
    4096,
    4097,
    65535,
    65536,
    65537,
    MIB,
    4 * MIB,
    exsyst_worker::channel::DEFAULT_MAX_FRAME_LEN as usize - 5,
];

/// A master of one of the paths.
enum Master {
    Worker(Box<DedicatedWorker>),
    Pool(Box<WorkerPool>),
}

impl Master {
    fn start(path: Path) -> Master {
        let factory = WorkerFactory::with_profile(profile());
        match path {
            Path::Dedicated => Master::Worker(Box::new(factory.create_worker::<Echo>().unwrap())),
            Path::Evented => Master::Worker(Box::new(
                factory.create_worker_with_args::<EventedEcho>(&0).unwrap(),
            )),
            Path::Pool => Master::Pool(Box::new(
                factory.create_worker_pool::<Echo>(Some(2)).unwrap(),
            )),
        }
    }

    /// Sends `message` and reads it back; how long that took.
    fn exchange(&mut self, message: &ByteBuf) -> Duration {
        let start = Instant::now();
        let back: ByteBuf = match self {
            Master::Worker(w) => {
                w.send_message(message).unwrap();
                w.receive_message().unwrap()
            }
            Master::Pool(p) => {
                p.send_message(0, message).unwrap();
                p.receive_message().unwrap().1
            }
        };
        let took = start.elapsed();
        assert!(back == *message, "came back as {} other bytes", back.len());
        took
    }

    /// A timed receive with nothing to receive, which must expire.
    fn expire(&mut self) {
        let wait = Duration::from_millis(20);
        match self {
            Master::Worker(w) => match w.receive_message_timeout::<ByteBuf>(wait) {
                Err(bootstrap::Error::Timeout { .. }) => {}
                other => panic!("expected a timeout, got {other:?}"),
            },
            Master::Pool(p) => match p.receive_message_timeout::<ByteBuf>(wait) {
                Err(pool::Error::Timeout { .. }) => {}
                other => panic!("expected a timeout, got {other:?}"),
            },
        }
    }
}

#[test]
fn every_size_up_to_the_frame_limit_arrives_whole_and_at_once_on_every_dedicated_path() {
    let limit = timeout(Duration::from_secs(1));
    for &path in PATHS {
        let mut after_timeout = Master::start(path);
        after_timeout.expire();
        for (i, &size) in SIZES.iter().enumerate() {
            let message = ByteBuf::from((0..size).map(|j| (j / 7 + i) as u8).collect::<Vec<u8>>());
            let mut fresh = Master::start(path);
            for (case, master) in [
                ("to a fresh worker", &mut fresh),
                ("after a timed receive expired", &mut after_timeout),
            ] {
                let took = master.exchange(&message);
                assert!(
                    took <= limit,
                    "{path:?}: {size} bytes {case} took {took:?}, more than {limit:?}"
                );
            }
        }
    }
}
