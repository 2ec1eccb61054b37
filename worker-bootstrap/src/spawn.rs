//! The one spawn path: every worker process starts here.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{ChildStderr, Command, Stdio},
};

use serde_bytes::ByteBuf;

use crate::{
    BootstrapProfile, Error, StderrMode,
    init::{
        DETACHED_REPORT, ENV_DETACHED, ENV_IMPLEMENTATION, ENV_PARENT, PROTOCOL_VERSION, WorkerInit,
    },
    process::Process,
    spawner,
    stderr::{Sink, StderrTail},
    sys::{self, Pipes},
};

/// The running image of this process, which stays executable after the file on disk was
/// deleted or replaced (a deploy that upgrades the binary in place).
const SELF_EXE: &str = "/proc/self/exe";

/// A worker process just started, with its channel.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) process: Process,
    pub(crate) pipes: Pipes,
    pub(crate) stderr: Option<StderrTail>,
    pub(crate) init: WorkerInit,
}

/// How a worker is started: dedicated to its master, or detached from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// In a process group of its own, following its master's death.
    Dedicated,
    /// In the master's process group, which it leaves for a session of its own; with
    /// `report`, it keeps its channel's writing end until its implementation reports.
    Detached {
        /// Whether the daemon reports to its starter (see `WorkerContext::report`).
        report: bool,
    },
}

/// Starts a worker process running `implementation`.
///
/// The child is started with `posix_spawn` (std's `Command` without `pre_exec`, which would
/// make it fall back to `fork`: a master holding 512 MiB would pay 40 times more per spawn), on
/// the process's one spawner thread (see [`spawner`]), in a process group of its own so it can be
/// killed with everything it started. Its channel is two pipes on its standard input and output
/// (see [`Pipes`] for why writes to them never raise SIGPIPE); our ends are close-on-exec and
/// non-blocking. A pidfd is taken at once,
/// before anyone can reap the child. The child arms its own parent-death signal first thing in
/// `run_if_worker`. Secrets never go on its command line: they travel in the init frame.
pub(crate) fn spawn(
    profile: &BootstrapProfile,
    implementation: &str,
    args: Option<ByteBuf>,
    extensions: BTreeMap<String, ByteBuf>,
    mode: Mode,
) -> Result<Spawned, Error> {
    profile.validate()?;
    if std::env::var_os(ENV_IMPLEMENTATION).is_some() {
        // A worker whose `main` did not call `run_if_worker` would otherwise start workers that
        // start workers, without end.
        return Err(Error::RegistryNotRun);
    }
    let (mut program, argv0) = program_for(profile, implementation)?;
    let detached = matches!(mode, Mode::Detached { .. });
    if detached && program.is_relative() && program.components().count() > 1 {
        // A daemon starts in `/`: a path relative to ours would name another file there.
        program = std::path::absolute(&program).map_err(|source| Error::Spawn {
            program: program.clone(),
            source,
        })?;
    }
    // A daemon's standard output and error go to the profile's output path, or nowhere: never
    // to a descriptor of its starter's.
    let daemon_output = match profile.output_path() {
        Some(path) if detached => Some(open_output(path)?),
        _ => None,
    };
    let spawn_error = |source| Error::Spawn {
        program: program.clone(),
        source,
    };
    let (pipes, theirs) = Pipes::new().map_err(spawn_error)?;
    // This is the one sanctioned place (see clippy.toml).
    #[allow(clippy::disallowed_methods)]
    let mut command = Command::new(&program);
    if let Some(argv0) = argv0 {
        command.arg0(argv0);
    }
    command
        .args(profile.args())
        .envs(profile.env())
        .env(ENV_IMPLEMENTATION, implementation)
        .stdin(Stdio::from(theirs.stdin))
        .stdout(Stdio::from(theirs.stdout))
        .stderr(match (mode, profile.stderr()) {
            (Mode::Detached { .. }, _) => daemon_output.map_or_else(Stdio::null, Stdio::from),
            (_, StderrMode::Forward | StderrMode::Capture | StderrMode::Log) => Stdio::piped(),
            (_, StderrMode::Inherit) => Stdio::inherit(),
            (_, StderrMode::Null) => Stdio::null(),
        });
    match mode {
        Mode::Dedicated => {
            command
                .env(ENV_PARENT, sys::getpid().to_string())
                .env_remove(ENV_DETACHED)
                .process_group(0);
        }
        // setsid() fails in a process group leader: the child stays in ours until it leaves
        // for a session of its own.
        Mode::Detached { report } => {
            let value = if report { DETACHED_REPORT } else { "1" };
            command.env(ENV_DETACHED, value).env_remove(ENV_PARENT);
        }
    }
    match profile.current_dir() {
        Some(dir) => {
            command.current_dir(dir);
        }
        // A daemon keeps no directory busy (one its starter may want to unmount or delete).
        None if detached => {
            command.current_dir("/");
        }
        None => {}
    }
    let group = mode == Mode::Dedicated;
    let started = spawner::run(move || -> std::io::Result<(Process, Option<ChildStderr>)> {
        let mut child = command.spawn()?;
        // Before anything else: nobody can have reaped the child yet, so the pidfd is its own.
        let process = Process::track(child.id(), group);
        // `command` is dropped with this closure, closing the child's ends in this process.
        Ok((process, child.stderr.take()))
    })
    .and_then(|started| started)
    .map_err(spawn_error)?;
    let (mut process, stderr) = started;
    let pid = process.pid();
    let stderr = match stderr {
        Some(stderr) => {
            let sink = match profile.stderr() {
                StderrMode::Forward => Sink::Stderr,
                StderrMode::Log => Sink::Log(format!("exsyst_worker::worker::{implementation}")),
                _ => Sink::None,
            };
            match StderrTail::start(stderr, sink, pid) {
                Ok(tail) => Some(tail),
                Err(source) => {
                    let _ = process.kill_and_reap();
                    return Err(Error::Io { pid, source });
                }
            }
        }
        None => None,
    };
    let init = WorkerInit {
        version: PROTOCOL_VERSION,
        implementation: implementation.to_owned(),
        codec: profile.codec(),
        max_frame_len: profile.max_frame_len(),
        max_depth: profile.max_depth(),
        args: args.or_else(|| {
            profile
                .constructor_args()
                .map(|a| ByteBuf::from(a.to_vec()))
        }),
        umask: profile.umask(),
        before_hooks: profile.before_hooks().to_vec(),
        after_hooks: profile.after_hooks().to_vec(),
        extensions,
        spin: profile.spin(),
    };
    Ok(Spawned {
        process,
        pipes,
        stderr,
        init,
    })
}

/// Opens a daemon's output file: appended to, created `0600` (a daemon's output may say more
/// than its users should read), close-on-exec here (the child gets it as its standard error).
fn open_output(path: &Path) -> Result<std::fs::File, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| Error::Output {
            path: path.to_owned(),
            source,
        })
}

/// The executable to start for `implementation`, and the `argv[0]` to give it.
///
/// By default the running image itself (`/proc/self/exe`), which is the one guaranteed to speak
/// the same protocol and still works after the file was deleted or replaced; its `argv[0]` is
/// this process's own, so the worker looks like its master in `ps`. Without `/proc` (no procfs
/// mounted), the current executable's path.
fn program_for(
    profile: &BootstrapProfile,
    implementation: &str,
) -> Result<(PathBuf, Option<OsString>), Error> {
    if let Some(program) = profile.executable_for(implementation) {
        return Ok((program.to_path_buf(), None));
    }
    let argv0 = std::env::args_os().next();
    if Path::new(SELF_EXE).exists() {
        let argv0 = argv0.or_else(|| std::env::current_exe().ok().map(Into::into));
        return Ok((PathBuf::from(SELF_EXE), argv0));
    }
    let program = std::env::current_exe().map_err(|source| Error::Spawn {
        program: PathBuf::from("<current executable>"),
        source,
    })?;
    Ok((program, argv0))
}
