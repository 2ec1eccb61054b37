//! Starting the pools' workers, and the restart limit that keeps a pool from restarting
//! failing workers forever (the Erlang supervisor's intensity and period).

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use worker_bootstrap::{BootstrapProfile, DedicatedWorker};

use crate::{Error, readiness::ReadySet};

/// The `log` target of the pools' diagnostics.
pub(crate) const LOG_TARGET: &str = "exsyst_worker::pool";

/// Starts a pool's workers, first and replacements alike.
#[derive(Debug, Clone)]
pub(crate) struct Spawner {
    profile: BootstrapProfile,
    implementation: &'static str,
}

impl Spawner {
    pub(crate) fn new(profile: BootstrapProfile, implementation: &'static str) -> Self {
        Spawner {
            profile,
            implementation,
        }
    }

    /// The profile's latency mode, which the pool's own waits follow too.
    pub(crate) fn spin(&self) -> worker_core::Spin {
        self.profile.spin()
    }

    pub(crate) fn spawn(&self) -> Result<DedicatedWorker, Error> {
        DedicatedWorker::spawn_named::<()>(&self.profile, self.implementation, None).map_err(
            |source| Error::Spawn {
                source: Arc::new(source),
            },
        )
    }

    /// Starts a worker and watches it as worker `index` of `ready`.
    pub(crate) fn spawn_watched(
        &self,
        ready: &mut ReadySet,
        index: usize,
    ) -> Result<DedicatedWorker, Error> {
        let mut worker = self.spawn()?;
        match ready.watch(index, &mut worker) {
            Ok(()) => Ok(worker),
            Err(e) => {
                // Not left to its handle's drop, which would wait for its grace period.
                worker.close_in_background();
                Err(e)
            }
        }
    }
}

/// At most `max` restarts within any `window`.
#[derive(Debug)]
pub(crate) struct RestartLimit {
    max: u32,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl RestartLimit {
    pub(crate) fn new(max: u32, window: Duration) -> Self {
        RestartLimit {
            max,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Records a restart if the limit allows it; [`Error::PoolFailed`] with the reason when it
    /// does not.
    pub(crate) fn allow(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max as usize {
            let reason = format!(
                "workers failed more than {} times within {:?}",
                self.max, self.window
            );
            log::error!(target: LOG_TARGET, "restart limit reached, the pool fails: {reason}");
            return Err(Error::PoolFailed { reason });
        }
        self.recent.push_back(now);
        Ok(())
    }
}
