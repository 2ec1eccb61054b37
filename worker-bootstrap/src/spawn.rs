//! The one spawn path: every worker process starts here.

use std::{
    os::{fd::AsFd, unix::process::CommandExt},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use serde_bytes::ByteBuf;

use crate::{
    BootstrapProfile, Error, StderrMode,
    init::{ENV_IMPLEMENTATION, ENV_PARENT, PROTOCOL_VERSION, WorkerInit},
    stderr::StderrTail,
    sys,
};

/// A worker process just started, with its pipes.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) stdin: ChildStdin,
    pub(crate) stdout: ChildStdout,
    pub(crate) stderr: Option<StderrTail>,
    pub(crate) init: WorkerInit,
}

/// Starts a worker process running `implementation`.
///
/// The child is started with `posix_spawn` (std's `Command` without `pre_exec`, which would
/// make it fall back to `fork`: a master holding 512 MiB would pay 40 times more per spawn),
/// in a process group of its own so it can be killed with everything it started, with its pipes
/// close-on-exec on our side. The child arms its own parent-death signal first thing in
/// `run_if_worker`. Secrets never go on its command line: they travel in the init frame.
pub(crate) fn spawn(
    profile: &BootstrapProfile,
    implementation: &str,
    args: Option<ByteBuf>,
    extensions: std::collections::BTreeMap<String, ByteBuf>,
) -> Result<Spawned, Error> {
    profile.validate()?;
    if std::env::var_os(ENV_IMPLEMENTATION).is_some() {
        // A worker whose `main` did not call `run_if_worker` would otherwise start workers that
        // start workers, without end.
        return Err(Error::RegistryNotRun);
    }
    let program = match profile.executable_for(implementation) {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe().map_err(|source| Error::Spawn {
            program: PathBuf::from("<current executable>"),
            source,
        })?,
    };
    // This is the one sanctioned place (see clippy.toml).
    #[allow(clippy::disallowed_methods)]
    let mut command = Command::new(&program);
    command
        .args(profile.args())
        .envs(profile.env())
        .env(ENV_IMPLEMENTATION, implementation)
        .env(ENV_PARENT, sys::getpid().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(match profile.stderr() {
            StderrMode::Forward | StderrMode::Capture => Stdio::piped(),
            StderrMode::Inherit => Stdio::inherit(),
            StderrMode::Null => Stdio::null(),
        })
        .process_group(0);
    if let Some(dir) = profile.current_dir() {
        command.current_dir(dir);
    }
    let mut child = command.spawn().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    let pid = child.id();
    let stdin = child.stdin.take().expect("stdin was piped");
    let stdout = child.stdout.take().expect("stdout was piped");
    let stderr = match child.stderr.take() {
        Some(stderr) => {
            let forward = profile.stderr() == StderrMode::Forward;
            match StderrTail::start(stderr, forward, pid) {
                Ok(tail) => Some(tail),
                Err(source) => {
                    kill_and_reap(&mut child);
                    return Err(Error::Io { pid, source });
                }
            }
        }
        None => None,
    };
    // Our end of the worker's stdin never blocks: a send that cannot go on reads what the worker
    // sends meanwhile, so two large messages crossing cannot deadlock.
    if let Err(source) = sys::set_nonblocking(stdin.as_fd()) {
        kill_and_reap(&mut child);
        return Err(Error::Io { pid, source });
    }
    let init = WorkerInit {
        version: PROTOCOL_VERSION,
        implementation: implementation.to_owned(),
        codec: profile.codec(),
        max_frame_len: profile.max_frame_len(),
        args: args.or_else(|| {
            profile
                .constructor_args()
                .map(|a| ByteBuf::from(a.to_vec()))
        }),
        umask: profile.umask(),
        before_hooks: profile.before_hooks().to_vec(),
        after_hooks: profile.after_hooks().to_vec(),
        extensions,
    };
    Ok(Spawned {
        child,
        stdin,
        stdout,
        stderr,
        init,
    })
}

/// Kills a child's whole process group and reaps it; for failures half-way through a spawn.
pub(crate) fn kill_and_reap(child: &mut Child) {
    let _ = sys::kill_group(child.id());
    let _ = child.kill();
    let _ = child.wait();
}
