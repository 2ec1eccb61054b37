//! The one spawn path: every worker process starts here.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    os::{
        fd::{AsFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_bytes::ByteBuf;

use crate::{
    BootstrapProfile, Error, SpawnMode, StderrMode,
    init::{
        DETACHED_REPORT, ENV_DETACHED, ENV_IMPLEMENTATION, ENV_PARENT, PROTOCOL_VERSION, WorkerInit,
    },
    process::Process,
    spawner,
    stderr::{Sink, StderrTail},
    sys::{self, ChildEnds, Pipes},
    zygote,
};

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
///
/// With [`SpawnMode::Zygote`], a dedicated worker is forked from the profile's zygote instead
/// (see [`zygote`]), with the same descriptors; where zygotes are not supported, it is started
/// as above.
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
    let spawn_error = |source| Error::Spawn {
        program: program.clone(),
        source,
    };
    // A daemon's standard output and error go to the profile's output path, or nowhere: never
    // to a descriptor of its starter's.
    let (stderr_ours, stderr_theirs) = match (mode, profile.stderr()) {
        (Mode::Detached { .. }, _) => match profile.output_path() {
            Some(path) => (None, ErrEnd::Fd(open_output(path)?.into())),
            None => (None, ErrEnd::Fd(dev_null().map_err(spawn_error)?)),
        },
        (_, StderrMode::Forward | StderrMode::Capture | StderrMode::Log) => {
            let (ours, theirs) = sys::pipe().map_err(spawn_error)?;
            (Some(ours), ErrEnd::Fd(theirs))
        }
        (_, StderrMode::Inherit) => (None, ErrEnd::Inherit),
        (_, StderrMode::Null) => (None, ErrEnd::Fd(dev_null().map_err(spawn_error)?)),
    };
    let (pipes, theirs) = Pipes::new().map_err(spawn_error)?;
    let current_dir = match profile.current_dir() {
        Some(dir) => Some(dir.to_owned()),
        // A daemon keeps no directory busy (one its starter may want to unmount or delete).
        None if detached => Some(PathBuf::from("/")),
        None => None,
    };
    let image = Image {
        program: program.clone(),
        argv0,
        args: profile.args().to_vec(),
        env: profile.env().clone(),
        current_dir,
    };
    let from_zygote = mode == Mode::Dedicated && profile.spawn_mode() == SpawnMode::Zygote;
    // Forked on this thread: the worker's parent-death signal follows the zygote's parent, the
    // spawner thread, whichever thread asks.
    let forked = if from_zygote {
        let stderr = match &stderr_theirs {
            ErrEnd::Inherit => sys::stderr(),
            ErrEnd::Fd(fd) => fd.as_fd(),
        };
        let stdio = [theirs.stdin.as_fd(), theirs.stdout.as_fd(), stderr];
        let settings = zygote::Settings {
            timeout: profile.zygote_timeout(),
            idle_timeout: profile.zygote_idle_timeout(),
        };
        zygote::fork(&image, profile.stderr(), implementation, stdio, settings)?
    } else {
        None
    };
    let started = match forked {
        Some(process) => {
            // The worker has its own copies: ours go now, so that its end shows as soon as it
            // is gone.
            drop((theirs, stderr_theirs));
            process
        }
        None => {
            let name = implementation.to_owned();
            spawner::run(move || exec(&image, &name, mode, theirs, stderr_theirs))
                .map_err(spawn_error)
                .and_then(|started| started)?
        }
    };
    let mut process = started;
    let pid = process.pid();
    let stderr = match stderr_ours {
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

/// Executes `image` as a worker running `implementation`, with `stdio` as its standard input
/// and output and `stderr` as its standard error; on the spawner thread.
fn exec(
    image: &Image,
    implementation: &str,
    mode: Mode,
    stdio: ChildEnds,
    stderr: ErrEnd,
) -> Result<Process, Error> {
    let mut command = image.command();
    command
        .env(ENV_IMPLEMENTATION, implementation)
        .stdin(Stdio::from(stdio.stdin))
        .stdout(Stdio::from(stdio.stdout))
        .stderr(match stderr {
            ErrEnd::Inherit => Stdio::inherit(),
            ErrEnd::Fd(fd) => Stdio::from(fd),
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
    let child = command.spawn().map_err(|source| Error::Spawn {
        program: image.program.clone(),
        source,
    })?;
    // Before anything else: nobody can have reaped the child yet, so the pidfd is its own.
    // `command` is dropped when this returns, closing the child's ends in this process.
    Ok(Process::track(child.id(), mode == Mode::Dedicated))
}

/// A child's standard error as it starts: the master's own, or a descriptor of its own.
#[derive(Debug)]
enum ErrEnd {
    Inherit,
    Fd(OwnedFd),
}

/// `/dev/null`, for writing, close-on-exec here.
fn dev_null() -> std::io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")?
        .into())
}

/// What shapes a worker's process image: the executable, its arguments, environment and
/// working directory. A zygote is started from one, and serves the spawns that would start the
/// same.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Image {
    pub(crate) program: PathBuf,
    argv0: Option<OsString>,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    current_dir: Option<PathBuf>,
}

impl Image {
    /// A command starting the image, with the child's standard descriptors and its role left
    /// to the caller.
    pub(crate) fn command(&self) -> Command {
        // This is the one sanctioned place (see clippy.toml).
        #[allow(clippy::disallowed_methods)]
        let mut command = Command::new(&self.program);
        if let Some(argv0) = &self.argv0 {
            command.arg0(argv0);
        }
        command.args(&self.args).envs(&self.env);
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        command
    }
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
    if let Some(running) = sys::running_image() {
        let argv0 = argv0.or_else(|| std::env::current_exe().ok().map(Into::into));
        return Ok((running, argv0));
    }
    let program = std::env::current_exe().map_err(|source| Error::Spawn {
        program: PathBuf::from("<current executable>"),
        source,
    })?;
    Ok((program, argv0))
}
