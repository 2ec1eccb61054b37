use std::{error, fmt};

use worker_bootstrap::{BootstrapProfile, DedicatedWorker};
use worker_core::Worker;
use worker_killswitch::KillSwitch;
use worker_pool::{TaskPool, TaskWorker, WorkerPool, WorkerPoolBuilder};

/// Creates workers from one [`BootstrapProfile`] (the seed's `WorkerFactory`).
///
/// It owns no mechanism: each method hands the profile to the crate that does the work.
#[derive(Clone, Debug, Default)]
pub struct WorkerFactory {
    profile: BootstrapProfile,
}

impl WorkerFactory {
    /// A factory with the default profile.
    pub fn new() -> Self {
        Self::default()
    }

    /// A factory with the given profile.
    pub fn with_profile(profile: BootstrapProfile) -> Self {
        WorkerFactory { profile }
    }

    /// The factory's profile.
    pub fn profile(&self) -> &BootstrapProfile {
        &self.profile
    }

    /// Starts a dedicated worker running `W`, with the profile's constructor arguments, if any.
    pub fn create_worker<W: Worker>(&self) -> Result<DedicatedWorker, Error> {
        Ok(DedicatedWorker::spawn::<W>(&self.profile)?)
    }

    /// Starts a dedicated worker running `W`, built from `args`.
    pub fn create_worker_with_args<W: Worker>(
        &self,
        args: &W::Args,
    ) -> Result<DedicatedWorker, Error> {
        Ok(DedicatedWorker::spawn_with_args::<W>(&self.profile, args)?)
    }

    /// Starts a dedicated worker running the implementation registered under `implementation`
    /// in the worker executable, for masters that do not link its type.
    pub fn create_worker_named<A: serde::Serialize + ?Sized>(
        &self,
        implementation: &str,
        args: Option<&A>,
    ) -> Result<DedicatedWorker, Error> {
        Ok(DedicatedWorker::spawn_named(
            &self.profile,
            implementation,
            args,
        )?)
    }

    /// Starts a pool of `size` workers running `W` (default: one per CPU this process may use),
    /// for the seed's interface: send to a chosen worker, receive from whichever answers first.
    pub fn create_worker_pool<W: Worker>(&self, size: Option<usize>) -> Result<WorkerPool, Error> {
        let mut builder = self.create_worker_pool_builder();
        if let Some(size) = size {
            builder = builder.size(size);
        }
        Ok(builder.build::<W>()?)
    }

    /// Starts a task pool of `size` workers running `W` (default: one per CPU).
    pub fn create_task_pool<W: TaskWorker>(
        &self,
        size: Option<usize>,
    ) -> Result<TaskPool<W>, Error> {
        let mut builder = self.create_worker_pool_builder();
        if let Some(size) = size {
            builder = builder.size(size);
        }
        Ok(builder.build_tasks::<W>()?)
    }

    /// A pool builder that starts workers with this factory's profile, for the settings
    /// [`create_worker_pool`](Self::create_worker_pool) leaves at their defaults.
    pub fn create_worker_pool_builder(&self) -> WorkerPoolBuilder {
        WorkerPoolBuilder::new().profile(self.profile.clone())
    }

    fn kill_switch(&self) -> Result<KillSwitch, Error> {
        self.profile
            .kill_switch_path()
            .map(KillSwitch::new)
            .ok_or(Error::NoKillSwitch)
    }

    /// Whether shared workers are disabled globally.
    pub fn are_shared_workers_disabled_globally(&self) -> Result<bool, Error> {
        Ok(self.kill_switch()?.is_disabled_globally()?)
    }

    /// Disables shared workers globally (running ones are not stopped).
    pub fn disable_shared_workers_globally(&self) -> Result<(), Error> {
        self.kill_switch()?.disable_globally()?;
        Ok(())
    }

    /// Re-enables shared workers globally (addresses disabled one by one stay disabled).
    pub fn re_enable_shared_workers_globally(&self) -> Result<(), Error> {
        self.kill_switch()?.re_enable_globally()?;
        Ok(())
    }

    /// The addresses disabled one by one, in canonical form.
    pub fn get_disabled_shared_workers(&self) -> Result<Vec<String>, Error> {
        Ok(self.kill_switch()?.disabled_addresses()?)
    }

    /// Disables one address or many, in one transaction.
    pub fn disable_shared_worker(&self, addresses: impl Addresses) -> Result<(), Error> {
        self.kill_switch()?
            .disable_addresses(addresses.addresses())?;
        Ok(())
    }

    /// Re-enables one address or many, in one transaction.
    pub fn re_enable_shared_worker(&self, addresses: impl Addresses) -> Result<(), Error> {
        self.kill_switch()?
            .re_enable_addresses(addresses.addresses())?;
        Ok(())
    }

    /// Clears the global flag and every disabled address.
    pub fn re_enable_all_shared_workers(&self) -> Result<(), Error> {
        self.kill_switch()?.re_enable_all()?;
        Ok(())
    }
}

/// One shared-worker address or several: `&str`, `String`, or a list or slice of them.
pub trait Addresses {
    /// The addresses.
    fn addresses(&self) -> Vec<&str>;
}

impl Addresses for &str {
    fn addresses(&self) -> Vec<&str> {
        vec![self]
    }
}

impl Addresses for String {
    fn addresses(&self) -> Vec<&str> {
        vec![self.as_str()]
    }
}

impl Addresses for &String {
    fn addresses(&self) -> Vec<&str> {
        vec![self.as_str()]
    }
}

impl<S: AsRef<str>> Addresses for Vec<S> {
    fn addresses(&self) -> Vec<&str> {
        self.iter().map(AsRef::as_ref).collect()
    }
}

impl<S: AsRef<str>> Addresses for &Vec<S> {
    fn addresses(&self) -> Vec<&str> {
        self.iter().map(AsRef::as_ref).collect()
    }
}

impl<S: AsRef<str>> Addresses for &[S] {
    fn addresses(&self) -> Vec<&str> {
        self.iter().map(AsRef::as_ref).collect()
    }
}

impl<S: AsRef<str>, const N: usize> Addresses for [S; N] {
    fn addresses(&self) -> Vec<&str> {
        self.iter().map(AsRef::as_ref).collect()
    }
}

/// The error type of [`WorkerFactory`]: the error of the crate that did the work.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Starting or talking to a worker failed.
    Bootstrap(worker_bootstrap::Error),
    /// Reading or changing the kill switch failed.
    KillSwitch(worker_killswitch::Error),
    /// Building or running a worker pool failed.
    Pool(worker_pool::Error),
    /// The profile names no kill switch file, so shared workers cannot be disabled.
    NoKillSwitch,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bootstrap(e) => e.fmt(f),
            Error::KillSwitch(e) => e.fmt(f),
            Error::Pool(e) => e.fmt(f),
            Error::NoKillSwitch => f.write_str("the bootstrap profile has no kill switch path"),
        }
    }
}

impl error::Error for Error {
    fn source(&self) -> Option<&(dyn error::Error + 'static)> {
        match self {
            Error::Bootstrap(e) => e.source(),
            Error::KillSwitch(e) => e.source(),
            Error::Pool(e) => e.source(),
            Error::NoKillSwitch => None,
        }
    }
}

impl From<worker_bootstrap::Error> for Error {
    fn from(e: worker_bootstrap::Error) -> Self {
        Error::Bootstrap(e)
    }
}

impl From<worker_killswitch::Error> for Error {
    fn from(e: worker_killswitch::Error) -> Self {
        Error::KillSwitch(e)
    }
}

impl From<worker_pool::Error> for Error {
    fn from(e: worker_pool::Error) -> Self {
        Error::Pool(e)
    }
}
