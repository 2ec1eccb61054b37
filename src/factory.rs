use std::{error, fmt};

use worker_bootstrap::{BootstrapProfile, DedicatedWorker};
use worker_core::Worker;
use worker_killswitch::KillSwitch;
use worker_pool::{TaskPool, TaskWorker, WorkerPool, WorkerPoolBuilder};
use worker_shared::{
    AdminCookie, DEFAULT_CONTROL_TIMEOUT, DEFAULT_STOP_TIMEOUT, SharedServerConfig, SharedWorker,
    SharedWorkerImpl, StatusReply,
};

/// Creates workers from one [`BootstrapProfile`] (the seed's `WorkerFactory`).
///
/// It owns no mechanism: each method hands the profile to the crate that does the work.
///
/// Shared workers it starts are served with its [`SharedServerConfig`]
/// ([`with_shared_config`](Self::with_shared_config); the defaults otherwise), and the admin
/// cookie of its profile.
#[derive(Clone, Debug, Default)]
pub struct WorkerFactory {
    profile: BootstrapProfile,
    shared_config: SharedServerConfig,
}

impl WorkerFactory {
    /// A factory with the default profile.
    pub fn new() -> Self {
        Self::default()
    }

    /// A factory with the given profile.
    pub fn with_profile(profile: BootstrapProfile) -> Self {
        WorkerFactory {
            profile,
            shared_config: SharedServerConfig::default(),
        }
    }

    /// Serves the shared workers this factory starts with `config` (its socket mode, who may
    /// connect, limits, deadlines); the admin cookie is the profile's unless `config` has one.
    pub fn with_shared_config(mut self, config: SharedServerConfig) -> Self {
        self.shared_config = config;
        self
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

    /// Connects to the shared worker at `address`, starting it as a daemon running `W` first
    /// when nothing listens there (the seed's `connectToSharedWorker`): race-free, so many
    /// masters at once are served by one daemon, and never for a remote address or one the kill
    /// switch disables. See [`worker_shared::connect_or_start`].
    ///
    /// The daemon is this profile's worker executable, which must register `W` with
    /// `registry().shared::<W>()` (see [`SharedRegistryExt`](crate::SharedRegistryExt)).
    pub fn connect_to_shared_worker<W: SharedWorkerImpl>(
        &self,
        address: &str,
    ) -> Result<SharedWorker, Error> {
        Ok(worker_shared::connect_or_start(
            &self.profile,
            address,
            W::NAME,
            &self.shared_config,
        )?)
    }

    /// Connects to the shared worker at `address` if it runs; never starts it
    /// ([`worker_shared::Error::is_not_running`] tells a worker that is not there).
    pub fn connect_to_running_shared_worker(&self, address: &str) -> Result<SharedWorker, Error> {
        Ok(SharedWorker::connect(address)?)
    }

    /// Makes sure the shared worker at `address` runs, starting it as a daemon running `W` if
    /// not, and returns its pid; starting a running worker is not an error (see
    /// [`worker_shared::start`]).
    pub fn start_shared_worker<W: SharedWorkerImpl>(&self, address: &str) -> Result<u32, Error> {
        Ok(worker_shared::start(
            &self.profile,
            address,
            W::NAME,
            &self.shared_config,
        )?)
    }

    /// Stops the shared worker at `address` with the profile's admin cookie (the seed's
    /// `stopSharedWorker`), returning once it acknowledged and, when it runs on this machine,
    /// once its process has exited (see [`worker_shared::stop`]); waits at most
    /// [`DEFAULT_STOP_TIMEOUT`](worker_shared::DEFAULT_STOP_TIMEOUT).
    ///
    /// To take a worker out of service, disable it first
    /// ([`disable_shared_worker`](Self::disable_shared_worker)), then stop it: in the other
    /// order, a master could start it again in between.
    pub fn stop_shared_worker(&self, address: &str) -> Result<(), Error> {
        let cookie = self.admin_cookie(address)?;
        worker_shared::stop(address, &cookie, DEFAULT_STOP_TIMEOUT)?;
        Ok(())
    }

    /// Asks the shared worker at `address` for its status (the seed's `querySharedWorker`):
    /// the privileged answer when the profile has an admin cookie, what anyone may see
    /// otherwise ([`StatusReply::privileged`] tells which).
    pub fn query_shared_worker(&self, address: &str) -> Result<StatusReply, Error> {
        let mut worker = SharedWorker::connect(address)?;
        Ok(match self.cookie()? {
            Some(cookie) => worker.query_privileged(&cookie)?,
            None => worker.query()?,
        })
    }

    /// The process id of the shared worker at `address`, from its hello (the seed's
    /// `getSharedWorkerProcessId`, without `lsof`).
    pub fn get_shared_worker_process_id(&self, address: &str) -> Result<u32, Error> {
        Ok(SharedWorker::connect_timeout(address, DEFAULT_CONTROL_TIMEOUT)?.pid())
    }

    /// The admin cookie: the shared configuration's, else the profile's.
    fn cookie(&self) -> Result<Option<AdminCookie>, Error> {
        Ok(match self.shared_config.cookie() {
            Some(cookie) => Some(cookie.clone()),
            None => AdminCookie::from_profile(&self.profile)?,
        })
    }

    fn admin_cookie(&self, address: &str) -> Result<AdminCookie, Error> {
        self.cookie()?.ok_or_else(|| {
            Error::Shared(worker_shared::Error::NoCookie {
                address: address.to_owned(),
            })
        })
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
    /// Starting, reaching, querying or stopping a shared worker failed.
    Shared(worker_shared::Error),
    /// The profile names no kill switch file, so shared workers cannot be disabled.
    NoKillSwitch,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bootstrap(e) => e.fmt(f),
            Error::KillSwitch(e) => e.fmt(f),
            Error::Pool(e) => e.fmt(f),
            Error::Shared(e) => e.fmt(f),
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
            Error::Shared(e) => e.source(),
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

impl From<worker_shared::Error> for Error {
    fn from(e: worker_shared::Error) -> Self {
        Error::Shared(e)
    }
}
