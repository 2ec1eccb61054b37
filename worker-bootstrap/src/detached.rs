//! Starting a detached worker: a daemon that outlives the process that started it.

use std::{collections::BTreeMap, time::Duration};

use serde_bytes::ByteBuf;
use worker_channel::FrameKind;

use crate::{BootstrapProfile, DedicatedWorker, Error, spawn::Mode};

/// How long the process that becomes the daemon may take to say that it detached.
const DETACH_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts a detached worker running `implementation`: a daemon, reached by other means than a
/// channel (a socket of its own), which outlives the process that started it. Returns the
/// daemon's process id once it runs on its own.
///
/// It goes through the one spawn path like every worker (posix_spawn, the profile's program,
/// environment and hooks, the init frame with its arguments and extensions), but:
/// - it asks for no parent-death signal;
/// - it leaves the starter's session for one of its own, and forks, so it is neither a session
///   nor a group leader (it cannot acquire a controlling terminal) and is adopted by init (or a
///   subreaper) at once; the intermediate process is reaped here, so no zombie is left behind;
/// - it holds none of the starter's descriptors: its standard input, output and error are
///   `/dev/null` (whatever the profile's [`StderrMode`](crate::StderrMode)), and its channel is
///   closed once it has reported its pid; the channel its implementation gets reads nothing.
///
/// A failure before it detaches (an unknown implementation, a failing before-construction
/// hook) is [`Error::Detach`]; one of its constructor runs in the daemon, which then exits with
/// [`EXIT_FAILURE`](crate::EXIT_FAILURE), unseen here. Before-construction hooks run before the
/// fork, so they must not start threads.
///
/// ```rust,standalone_crate,no_run
/// use worker_bootstrap::{BootstrapProfile, spawn_detached};
///
/// let pid = spawn_detached(&BootstrapProfile::default(), "my-daemon", None, Default::default())?;
/// println!("daemon running as pid {pid}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn spawn_detached(
    profile: &BootstrapProfile,
    implementation: &str,
    args: Option<ByteBuf>,
    extensions: BTreeMap<String, ByteBuf>,
) -> Result<u32, Error> {
    let mut starter =
        DedicatedWorker::launch(profile, implementation, args, extensions, Mode::Detached)?;
    let deadline = worker_core::deadline_after(DETACH_TIMEOUT);
    let report = starter.receive_until::<Result<u32, String>>(deadline, FrameKind::Control);
    let report = match report {
        Ok(Some(report)) => report,
        Ok(None) => {
            let pid = starter.pid();
            let _ = starter.kill();
            return Err(Error::Timeout {
                pid,
                waited: DETACH_TIMEOUT,
            });
        }
        Err(e) => return Err(e),
    };
    // It exits as soon as it has reported: this reaps it.
    let _ = starter.close();
    report.map_err(|reason| Error::Detach {
        implementation: implementation.to_owned(),
        reason,
    })
}
