//! The worker side of a shared-worker daemon: what its starter sends it, what it answers, and
//! the runner that `registry().shared::<W>()` registers.
//!
//! # Starting a daemon
//!
//! 1. The starter spawns the implementation through worker-bootstrap's one spawn path, with
//!    [`daemon_extensions`] in the bootstrap frame's `extensions` (the private start pipe: the
//!    address, the cookie and the server's settings never go on the command line, in the
//!    environment or in a file), and the profile's codec and maximum frame length, which the
//!    server takes for its data messages. [`start`](crate::start) does it detached
//!    ([`start_detached`](worker_bootstrap::start_detached)), under its start lock.
//! 2. In the daemon, `run_if_worker` runs the runner: it reads its settings, binds the socket
//!    (or takes systemd's), builds the worker (the constructor runs only once the socket is
//!    bound), and answers on the channel it was started with: one data frame, in the channel's
//!    codec, holding a [`StartReport`]: `listening` with its pid and address, or `failed` with
//!    the reason in its own words (bad settings, the address in use, the constructor's error).
//!    Then it closes that channel for good
//!    ([`WorkerContext::report`](worker_bootstrap::WorkerContext::report)), so it holds none
//!    of its starter's descriptors, and serves until it is stopped; SIGTERM and SIGINT stop it
//!    gracefully, and SIGHUP is logged and ignored (a daemon survives a hangup).
//! 3. The starter waits for that report, never polling: through
//!    [`DetachedStart::receive_report`](worker_bootstrap::DetachedStart::receive_report) for a
//!    detached daemon, or [`wait_until_listening`] for one started as a [`DedicatedWorker`]. A
//!    `failed` report becomes its typed error at once, and so does a daemon that ends before
//!    it reports.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use worker_bootstrap::{DedicatedWorker, Registry, WorkerContext};
use worker_channel::Codec;
use worker_core::{BoxError, error_chain};

use crate::{Error, SharedServer, SharedServerConfig, SharedWorkerImpl, address};

/// The key of the server's settings in the bootstrap frame's `extensions`.
pub(crate) const EXTENSION: &str = "exsyst-worker.shared";

/// The version of [`DaemonInit`]; a daemon refuses another.
const DAEMON_INIT_VERSION: u32 = 1;

/// What a starter tells a daemon, MessagePack under [`EXTENSION`].
#[derive(Serialize, Deserialize)]
struct DaemonInit {
    version: u32,
    address: String,
    config: SharedServerConfig,
}

/// The `extensions` of the bootstrap frame that starts a shared-worker daemon at `address`
/// with `config`: what an auto-starting master passes to the spawn path.
///
/// The cookie travels in it: it must go through the private start pipe only.
///
/// ```
/// use worker_shared::{AdminCookie, SharedServerConfig, daemon_extensions};
///
/// let config = SharedServerConfig::default().with_cookie(AdminCookie::new("s3cret")?);
/// let extensions = daemon_extensions("unix:///run/app/worker.sock", &config)?;
/// assert_eq!(extensions.len(), 1);
/// # Ok::<(), worker_shared::Error>(())
/// ```
pub fn daemon_extensions(
    address: &str,
    config: &SharedServerConfig,
) -> Result<BTreeMap<String, ByteBuf>, Error> {
    let address = address::parse(address)?;
    config.validate()?;
    let init = DaemonInit {
        version: DAEMON_INIT_VERSION,
        address: address.to_string(),
        config: config.clone(),
    };
    let bytes = Codec::MessagePack
        .encode(&init)
        .map_err(|source| Error::Channel {
            address: address.to_string(),
            pid: None,
            source,
        })?;
    Ok(BTreeMap::from([(
        EXTENSION.to_owned(),
        ByteBuf::from(bytes),
    )]))
}

/// What a daemon tells its starter once, on the channel it was started with: one data frame in
/// that channel's codec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum StartReport {
    /// The socket is bound and the worker built: clients can connect.
    Listening {
        /// The daemon's process id.
        pid: u32,
        /// The address it serves, in canonical form.
        address: String,
    },
    /// The daemon could not start, and exits.
    Failed {
        /// Why, in its own words.
        reason: String,
    },
}

/// Waits for the [`StartReport`] of a daemon started as `starter` (through
/// [`DedicatedWorker::start_with_extensions`], with [`daemon_extensions`]) at most `timeout`,
/// and returns its pid once it listens.
///
/// # Errors
///
/// - [`Error::StartFailed`] with the daemon's own words when it reports a failure;
/// - [`Error::Timeout`] (operation `start`) when it says nothing in time;
/// - [`Error::Start`] when it ends before it reports (its exit status and the tail of its
///   standard error are in the source).
pub fn wait_until_listening(
    starter: &mut DedicatedWorker,
    address: &str,
    timeout: Duration,
) -> Result<u32, Error> {
    let address = address::parse(address)?.to_string();
    match starter.receive_message_timeout::<StartReport>(timeout) {
        Ok(StartReport::Listening { pid, .. }) => Ok(pid),
        Ok(StartReport::Failed { reason }) => Err(Error::StartFailed { address, reason }),
        Err(worker_bootstrap::Error::Timeout { pid, waited }) => Err(Error::Timeout {
            address,
            pid: Some(pid),
            operation: "start",
            waited,
        }),
        Err(source) => Err(Error::Start { address, source }),
    }
}

/// Registers shared-worker implementations in a [`Registry`].
pub trait SharedRegistryExt {
    /// Registers `W` under its [`Worker::NAME`](worker_core::Worker::NAME): in a process started with
    /// [`daemon_extensions`], `run_if_worker` serves `W` as a shared-worker daemon (see the
    /// [crate documentation](crate#daemons)).
    fn shared<W: SharedWorkerImpl>(self) -> Self;
}

impl SharedRegistryExt for Registry {
    fn shared<W: SharedWorkerImpl>(self) -> Self {
        self.implementation(W::NAME, run_daemon::<W>)
    }
}

/// The daemon's runner: start, report, serve.
fn run_daemon<W: SharedWorkerImpl>(mut cx: WorkerContext) -> Result<(), BoxError> {
    let (server, worker) = match start::<W>(&mut cx) {
        Ok(started) => started,
        Err(reason) => {
            // The starter may be gone already; the reason goes to standard error too.
            let report = StartReport::Failed {
                reason: reason.clone(),
            };
            let _ = cx.report(&report);
            return Err(reason.into());
        }
    };
    let report = StartReport::Listening {
        pid: std::process::id(),
        address: server.address().to_owned(),
    };
    // A starter that died meanwhile changes nothing: others may connect. The channel is closed
    // either way: the daemon holds none of its starter's descriptors from here on.
    let _ = cx.report(&report);
    drop(cx);
    server.run(worker)?;
    Ok(())
}

/// Reads the settings, binds, and builds the worker; a failure is the text for the starter.
fn start<W: SharedWorkerImpl>(cx: &mut WorkerContext) -> Result<(SharedServer, W), String> {
    let bytes = cx.extension(EXTENSION).ok_or_else(|| {
        format!(
            "{} was started without its shared-worker settings (see \
             worker_shared::daemon_extensions)",
            W::NAME
        )
    })?;
    let init: DaemonInit = Codec::MessagePack.decode(bytes).map_err(|e| {
        format!(
            "cannot read the shared-worker settings: {}",
            error_chain(&e)
        )
    })?;
    if init.version != DAEMON_INIT_VERSION {
        return Err(format!(
            "shared-worker settings of version {} are not version {DAEMON_INIT_VERSION}: the \
             starter and the daemon are from different releases",
            init.version
        ));
    }
    let channel = cx.channel();
    let mut config = init.config;
    if config.spin().is_off() {
        config = config.with_spin(channel.connection().spin().budget());
    }
    let config = config
        .with_codec(channel.codec())
        .with_max_frame_len(channel.max_frame_len())
        .with_stop_on_signals(true);
    let mut server = SharedServer::bind(&init.address, config).map_err(|e| error_chain(&e))?;
    // A daemon whose `main` installed a logger (every logger sets `log`'s maximum level) logs
    // through it; any other writes its lines to its standard error, the profile's output path,
    // rather than dropping them.
    if log::max_level() == log::LevelFilter::Off {
        let (address, pid) = (server.address().to_owned(), std::process::id());
        server = server.with_log(move |line| {
            eprintln!("exsyst-worker: shared worker {address} (pid {pid}): {line}");
        });
    }
    let args = cx.args::<W::Args>().map_err(|e| error_chain(&*e))?;
    let mut worker = W::new(args).map_err(|e| {
        format!(
            "the constructor of {} failed: {}",
            W::NAME,
            error_chain(&*e)
        )
    })?;
    cx.after_construct(&mut worker)
        .map_err(|e| error_chain(&*e))?;
    Ok((server, worker))
}
