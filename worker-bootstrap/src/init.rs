//! What the master tells a new worker: the environment variables that mark it as a worker, and
//! the first frame on its channel.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use worker_channel::{Codec, Spin};

/// Names the implementation a worker process must run; its presence makes a process a worker.
pub(crate) const ENV_IMPLEMENTATION: &str = "EXSYST_WORKER_IMPLEMENTATION";
/// The master's process id, so the worker can tell whether its master died before it armed its
/// parent-death signal.
pub(crate) const ENV_PARENT: &str = "EXSYST_WORKER_PARENT";
/// Present when the worker must detach from its starter: leave for a session of its own,
/// without parent-death signal. `1`: holding none of the starter's descriptors;
/// [`DETACHED_REPORT`]: keeping the channel's writing end until its implementation reports.
pub(crate) const ENV_DETACHED: &str = "EXSYST_WORKER_DETACHED";
/// The value of [`ENV_DETACHED`] for a daemon that reports to its starter once it is ready.
pub(crate) const DETACHED_REPORT: &str = "report";

/// Present (`1`) in a zygote (see [`SpawnMode::Zygote`](crate::SpawnMode::Zygote)): after the
/// registry is built, the process serves fork requests on its standard input instead of running
/// an implementation. [`ENV_IMPLEMENTATION`] is set too, to [`ZYGOTE_IMPLEMENTATION`], so that an
/// executable that does not know zygotes takes it for a worker (which then fails on its first
/// frame) and never runs its master's code.
pub(crate) const ENV_ZYGOTE: &str = "EXSYST_WORKER_ZYGOTE";
/// The value of [`ENV_IMPLEMENTATION`] in a zygote: no implementation is named so.
pub(crate) const ZYGOTE_IMPLEMENTATION: &str = "exsyst-worker:zygote";

/// The version of the bootstrap protocol; a worker refuses an init frame of another version.
pub(crate) const PROTOCOL_VERSION: u32 = 1;

/// The largest init frame a worker accepts (the constructor arguments travel in it).
pub(crate) const MAX_INIT_FRAME_LEN: u32 = 1 << 30;

/// The first frame on a worker's channel: a control frame, always MessagePack.
///
/// Secrets travel here, over the private pipe, never on the command line or in the environment.
///
/// Only `version` and `implementation` are required, so a master written in another language
/// can send a two-key map; see the [`protocol`](crate::protocol) guide.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WorkerInit {
    pub(crate) version: u32,
    pub(crate) implementation: String,
    #[serde(default)]
    pub(crate) codec: Codec,
    #[serde(default = "default_max_frame_len")]
    pub(crate) max_frame_len: u32,
    /// How deep a message may nest; masters that do not send it get the default.
    #[serde(default = "default_max_depth")]
    pub(crate) max_depth: u32,
    #[serde(default)]
    pub(crate) args: Option<ByteBuf>,
    #[serde(default)]
    pub(crate) umask: Option<u32>,
    #[serde(default)]
    pub(crate) before_hooks: Vec<String>,
    #[serde(default)]
    pub(crate) after_hooks: Vec<String>,
    /// Settings of layers above this crate (shared workers), by name, each encoded by its owner.
    #[serde(default)]
    pub(crate) extensions: BTreeMap<String, ByteBuf>,
    /// The latency mode, in whole microseconds (0: off); masters that do not send it get none.
    #[serde(default, rename = "spin_micros")]
    pub(crate) spin: Spin,
}

fn default_max_frame_len() -> u32 {
    worker_channel::DEFAULT_MAX_FRAME_LEN
}

fn default_max_depth() -> u32 {
    worker_channel::DEFAULT_MAX_DEPTH
}
