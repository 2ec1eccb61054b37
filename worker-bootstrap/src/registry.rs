use std::{
    any::Any,
    collections::HashMap,
    ffi::OsString,
    fmt,
    fs::{File, OpenOptions},
    io,
    os::fd::{AsRawFd, OwnedFd},
};

use serde::{Serialize, de::DeserializeOwned};
use worker_channel::{Channel, Codec, FrameKind};
use worker_core::{BoxError, ChannelOutput, EventedWorker, RawWorker, WorkerChannel};

use crate::{
    init::{
        DETACHED_REPORT, ENV_DETACHED, ENV_IMPLEMENTATION, ENV_PARENT, ENV_ZYGOTE,
        MAX_INIT_FRAME_LEN, PROTOCOL_VERSION, WorkerInit,
    },
    sys,
};

/// Exit status of a worker whose implementation, constructor or hook failed.
pub const EXIT_FAILURE: i32 = 70;

type Runner = Box<dyn FnOnce(WorkerContext) -> Result<(), BoxError>>;
type BeforeHook = Box<dyn Fn() -> Result<(), BoxError>>;
type AfterHook = Box<dyn Fn(&mut dyn Any) -> Result<(), BoxError>>;

/// Starts a [`Registry`]: the worker implementations this executable can run.
///
/// See [`Registry::run_if_worker`] for where it must be called.
pub fn registry() -> Registry {
    Registry::default()
}

/// The worker implementations an executable can run, and the named setup hooks profiles may ask
/// for.
///
/// The executable that runs workers (by default, the master's own) builds it at the very top of
/// `main`:
///
/// ```no_run
/// # use worker_core::{BoxError, RawWorker, Worker, WorkerChannel};
/// # struct Squarer;
/// # impl Worker for Squarer { const NAME: &'static str = "squarer"; type Args = ();
/// #     fn new(_: ()) -> Result<Self, BoxError> { Ok(Squarer) } }
/// # impl RawWorker for Squarer { fn run(&mut self, _: &mut WorkerChannel) -> Result<(), BoxError> { Ok(()) } }
/// fn main() {
///     worker_bootstrap::registry()
///         .raw::<Squarer>()
///         .before_hook("quiet", || Ok(()))
///         .run_if_worker(); // in a worker process this runs the implementation and exits
///     // ... master code ...
/// }
/// ```
#[derive(Default)]
pub struct Registry {
    implementations: HashMap<String, Runner>,
    before_hooks: HashMap<String, BeforeHook>,
    after_hooks: HashMap<String, AfterHook>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.implementations.keys().collect();
        names.sort();
        f.debug_struct("Registry")
            .field("implementations", &names)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Registers a raw worker implementation under its [`Worker::NAME`](worker_core::Worker::NAME).
    pub fn raw<W: RawWorker>(self) -> Self {
        self.implementation(W::NAME, |mut cx| {
            let mut worker = W::new(cx.args()?)?;
            cx.after_construct(&mut worker)?;
            worker.run(cx.channel())
        })
    }

    /// Registers an evented worker implementation under its
    /// [`Worker::NAME`](worker_core::Worker::NAME); it is created exactly like a raw one.
    ///
    /// An evented worker whose master dies is not killed outright as a raw worker is: it gets
    /// SIGTERM, sees its channel end, runs `on_disconnect` and `terminate`, and exits. One second
    /// after its master died it is killed in any case, whatever it did with its signals (a
    /// watchdog thread waits on the master's pidfd), so it cannot outlive its master for good.
    pub fn evented<W: EventedWorker>(self) -> Self {
        self.implementation(W::NAME, |mut cx| {
            sys::graceful_parent_death(cx.parent)?;
            if cx.parent != 0 {
                sys::kill_after_parent_death(cx.parent, sys::PARENT_DEATH_GRACE)?;
            }
            let mut worker = W::new(cx.args()?)?;
            cx.after_construct(&mut worker)?;
            worker_core::run_evented(worker, cx.into_channel())
        })
    }

    /// Registers a runner under `name`: the general form behind [`Registry::raw`], for other kinds
    /// of workers (evented, shared) to plug in.
    ///
    /// # Panics
    ///
    /// If `name` is already registered: two implementations under one name is a programming
    /// error that would otherwise show up only in the worker.
    pub fn implementation(
        mut self,
        name: &str,
        runner: impl FnOnce(WorkerContext) -> Result<(), BoxError> + 'static,
    ) -> Self {
        let previous = self
            .implementations
            .insert(name.to_owned(), Box::new(runner));
        assert!(
            previous.is_none(),
            "worker implementation {name:?} registered twice"
        );
        self
    }

    /// Registers a hook that profiles can ask to run before construction.
    pub fn before_hook(
        mut self,
        name: &str,
        hook: impl Fn() -> Result<(), BoxError> + 'static,
    ) -> Self {
        self.before_hooks.insert(name.to_owned(), Box::new(hook));
        self
    }

    /// Registers a hook that profiles can ask to run right after construction; it gets the
    /// implementation as `&mut dyn Any`, to downcast to the types it knows.
    pub fn after_hook(
        mut self,
        name: &str,
        hook: impl Fn(&mut dyn Any) -> Result<(), BoxError> + 'static,
    ) -> Self {
        self.after_hooks.insert(name.to_owned(), Box::new(hook));
        self
    }

    /// Whether this process was started as a worker.
    pub fn is_worker() -> bool {
        std::env::var_os(ENV_IMPLEMENTATION).is_some()
    }

    /// In a worker process, runs the implementation the master asked for and exits; in any other
    /// process, returns at once.
    ///
    /// It must be the first thing in `main`, before any thread is started or any file opened:
    /// the worker takes its channel off descriptors 0 and 1, closes every other inherited
    /// descriptor, and clears the variables that marked it as a worker.
    ///
    /// In a zygote ([`SpawnMode::Zygote`](crate::SpawnMode::Zygote)) it does not return either:
    /// it waits for its master's requests and forks a worker for each, which goes on from here
    /// as an executed worker does; so whatever `main` does before this call runs once per
    /// zygote, not once per worker.
    ///
    /// The worker exits with status 0 when the implementation returns `Ok`, and with
    /// [`EXIT_FAILURE`] (the error written to standard error) when the implementation, its
    /// constructor or a hook fails; a panic exits the way panics do (101).
    ///
    /// A binary whose `main` is not yours, a test binary's (libtest's), uses
    /// [`enable_test_support!`](crate::enable_test_support) instead.
    pub fn run_if_worker(self) {
        let Some(implementation) = std::env::var_os(ENV_IMPLEMENTATION) else {
            return;
        };
        std::process::exit(self.exit_code(implementation));
    }

    /// Runs `implementation` as this process's worker, and returns the status to exit with.
    pub(crate) fn exit_code(self, implementation: OsString) -> i32 {
        match self.run_worker(implementation) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!(
                    "exsyst-worker: worker failed: {}",
                    worker_core::error_chain(&*e)
                );
                EXIT_FAILURE
            }
        }
    }

    /// Adds what `other` registers and `self` does not: under a name both register, `self`'s
    /// implementation (or hook) stays.
    pub(crate) fn merge(&mut self, other: Registry) {
        for (name, runner) in other.implementations {
            self.implementations.entry(name).or_insert(runner);
        }
        for (name, hook) in other.before_hooks {
            self.before_hooks.entry(name).or_insert(hook);
        }
        for (name, hook) in other.after_hooks {
            self.after_hooks.entry(name).or_insert(hook);
        }
    }

    fn run_worker(self, implementation: OsString) -> Result<(), BoxError> {
        let detached_as = std::env::var_os(ENV_DETACHED);
        let detached = detached_as.is_some();
        let reports = detached_as.is_some_and(|v| v == DETACHED_REPORT);
        let zygote = std::env::var_os(ENV_ZYGOTE).is_some() && !detached;
        let parent = std::env::var(ENV_PARENT)
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .filter(|_| !detached)
            .unwrap_or(0);
        if parent != 0 && !sys::arm_parent_death_signal(parent, libc::SIGKILL) {
            // The master died before we could ask to follow it: nobody is left to serve.
            std::process::exit(EXIT_FAILURE);
        }
        sys::remove_env(ENV_IMPLEMENTATION);
        sys::remove_env(ENV_PARENT);
        sys::remove_env(ENV_DETACHED);
        sys::remove_env(ENV_ZYGOTE);
        if zygote {
            // Returns in each worker the zygote forks, which goes on as an executed one does.
            let implementation = crate::zygote::serve(parent)?;
            return self.run_implementation(implementation.into(), parent, false, false);
        }
        self.run_implementation(implementation, parent, detached, reports)
    }

    /// What every worker does once it knows which implementation to run and who its master is
    /// (executed, or forked from a zygote): reads the init frame on its standard input, prepares,
    /// and runs the implementation.
    fn run_implementation(
        mut self,
        implementation: OsString,
        parent: u32,
        detached: bool,
        reports: bool,
    ) -> Result<(), BoxError> {
        let (input, output) = worker_core::take_stdio_channel()?;
        let mut channel =
            Channel::with_max_frame_len(input, output, Codec::MessagePack, MAX_INIT_FRAME_LEN);
        let init: WorkerInit = match channel.receive_kind(FrameKind::Control) {
            Ok(init) => init,
            // The master let go before it said anything: nothing to do.
            Err(worker_channel::Error::Closed) => return Ok(()),
            Err(e) => return Err(format!("cannot read the bootstrap frame: {e}").into()),
        };
        let prepared = self.prepare(&init, &implementation, &mut channel);
        let (runner, after_hooks) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                if detached {
                    // The starter's standard error is not the daemon's: say it on the channel.
                    let report: Result<u32, String> = Err(worker_core::error_chain(&*e));
                    let _ = channel.send(FrameKind::Control, &report);
                }
                return Err(e);
            }
        };
        if detached {
            channel = detach(channel, reports)?;
        }
        runner(WorkerContext {
            implementation: init.implementation,
            parent,
            args: init.args.map(|a| a.into_vec()),
            extensions: init
                .extensions
                .into_iter()
                .map(|(k, v)| (k, v.into_vec()))
                .collect(),
            after_hooks,
            channel,
        })
    }

    /// Checks the init frame and runs what comes before construction; returns the runner and
    /// the after-construction hooks.
    fn prepare(
        &mut self,
        init: &WorkerInit,
        implementation: &OsString,
        channel: &mut WorkerChannel,
    ) -> Result<(Runner, Vec<(String, AfterHook)>), BoxError> {
        if init.version != PROTOCOL_VERSION {
            return Err(format!(
                "bootstrap protocol version {} is not {PROTOCOL_VERSION}: master and worker \
                 executables are from different releases",
                init.version
            )
            .into());
        }
        if Some(init.implementation.as_str()) != implementation.to_str() {
            return Err(
                "the bootstrap frame names another implementation than the environment".into(),
            );
        }
        if init.max_depth == 0 {
            return Err("the bootstrap frame's max_depth is 0: no message could be decoded".into());
        }
        channel.set_codec(init.codec);
        channel.set_max_frame_len(init.max_frame_len);
        channel.connection_mut().set_max_depth(init.max_depth);
        worker_core::set_spin(channel, init.spin);
        if let Some(mask) = init.umask {
            sys::set_umask(mask);
        }
        for name in &init.before_hooks {
            let hook = self.before_hooks.get(name).ok_or_else(|| {
                format!("no before-construction hook named {name:?} is registered")
            })?;
            hook().map_err(|e| format!("before-construction hook {name:?} failed: {e}"))?;
        }
        let runner = self
            .implementations
            .remove(&init.implementation)
            .ok_or_else(|| {
                format!(
                    "no worker implementation named {:?} is registered in this executable",
                    init.implementation
                )
            })?;
        let after_hooks = init
            .after_hooks
            .iter()
            .map(|name| {
                self.after_hooks
                    .remove(name)
                    .map(|hook| (name.clone(), hook))
                    .ok_or_else(|| {
                        format!("no after-construction hook named {name:?} is registered")
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((runner, after_hooks))
    }
}

/// Leaves the starter for good (see [`spawn_detached`](crate::spawn_detached)): a session of its
/// own, then a fork whose parent exits at once. Returns in the daemon, which says its own pid
/// over the channel first (it is then the channel's one writer, so whatever it sends later comes
/// after it), with a channel that reads nothing: its starter's pipe to it is closed. With
/// `reports`, the channel still writes to the starter until the implementation reports
/// ([`WorkerContext::report`]); otherwise it writes nowhere, and the daemon holds none of its
/// starter's descriptors from here on.
fn detach(channel: WorkerChannel, reports: bool) -> Result<WorkerChannel, BoxError> {
    let mut channel = channel;
    match sys::detach() {
        Ok(sys::Detached::Daemon) => {
            let report: Result<u32, String> = Ok(sys::getpid());
            // A starter gone meanwhile changes nothing: the daemon serves others.
            let _ = sys::without_sigpipe(|| channel.send(FrameKind::Control, &report));
            if reports {
                let settings = Settings::of(&channel);
                let (input, output) = channel.into_parts();
                drop(input);
                Ok(settings.channel(dev_null()?, output))
            } else {
                let null = null_channel(&channel)?;
                close_ends(channel);
                Ok(null)
            }
        }
        Ok(sys::Detached::Starter) => std::process::exit(0),
        Err(e) => {
            let report: Result<u32, String> = Err(format!("cannot detach: {e}"));
            let _ = channel.send(FrameKind::Control, &report);
            Err(e.into())
        }
    }
}

/// The settings of a channel, to build another like it.
struct Settings {
    codec: Codec,
    max_frame_len: u32,
    max_depth: u32,
    spin: worker_channel::Spin,
}

impl Settings {
    fn of(channel: &WorkerChannel) -> Self {
        Settings {
            codec: channel.codec(),
            max_frame_len: channel.max_frame_len(),
            max_depth: channel.connection().max_depth(),
            spin: channel.connection().spin(),
        }
    }

    fn channel(&self, input: File, output: ChannelOutput) -> WorkerChannel {
        let mut channel =
            Channel::with_max_frame_len(input, output, self.codec, self.max_frame_len);
        channel.connection_mut().set_max_depth(self.max_depth);
        worker_core::set_spin(&mut channel, self.spin);
        channel
    }
}

/// `/dev/null`, both ways: the ends of a channel that is no more.
fn dev_null() -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open("/dev/null")
}

/// A channel like `channel` that reads nothing and writes nowhere.
fn null_channel(channel: &WorkerChannel) -> io::Result<WorkerChannel> {
    Ok(Settings::of(channel).channel(dev_null()?, ChannelOutput::new(dev_null()?)))
}

/// Closes both ends of `channel` for good, its writing end included (which is otherwise kept
/// open until the process exits).
fn close_ends(channel: WorkerChannel) {
    let (input, output) = channel.into_parts();
    drop(input);
    let fd = output.as_raw_fd();
    let file = OwnedFd::from(output);
    if file.as_raw_fd() != fd {
        // The writing end was kept open until exit, owned by nobody, and a copy came out
        // instead: both go. (Closed while the copy is still open, so the number cannot have
        // been reused by anyone.)
        sys::close(fd);
    }
    drop(file);
}

/// What a worker process knows when its implementation starts: what the master sent at spawn
/// time, and the channel. Runners registered with [`Registry::implementation`] get one.
pub struct WorkerContext {
    implementation: String,
    /// The master's pid (0 when unknown).
    parent: u32,
    args: Option<Vec<u8>>,
    extensions: HashMap<String, Vec<u8>>,
    after_hooks: Vec<(String, AfterHook)>,
    channel: WorkerChannel,
}

impl fmt::Debug for WorkerContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerContext")
            .field("implementation", &self.implementation)
            .finish_non_exhaustive()
    }
}

impl WorkerContext {
    /// The master's process id, if known.
    pub fn parent_pid(&self) -> Option<u32> {
        (self.parent != 0).then_some(self.parent)
    }

    /// The implementation's name.
    pub fn implementation(&self) -> &str {
        &self.implementation
    }

    /// Decodes the constructor arguments; without any, decodes them from `()`, so
    /// implementations whose `Args` is `()` (or an `Option`, or a struct of defaults) need none.
    pub fn args<T: DeserializeOwned>(&self) -> Result<T, BoxError> {
        const UNIT: &[u8] = &[0xc0]; // MessagePack nil, which is how `()` encodes
        let bytes = self.args.as_deref().unwrap_or(UNIT);
        Codec::MessagePack.decode(bytes).map_err(|e| {
            let what = if self.args.is_some() {
                "cannot decode the constructor arguments"
            } else {
                "this implementation needs constructor arguments and none were given"
            };
            format!("{what} of {}: {e}", self.implementation).into()
        })
    }

    /// Settings another layer put into the bootstrap frame under `key`.
    pub fn extension(&self, key: &str) -> Option<&[u8]> {
        self.extensions.get(key).map(Vec::as_slice)
    }

    /// Runs the after-construction hooks the profile asked for, on the new implementation.
    pub fn after_construct(&mut self, worker: &mut dyn Any) -> Result<(), BoxError> {
        for (name, hook) in &self.after_hooks {
            hook(worker).map_err(|e| format!("after-construction hook {name:?} failed: {e}"))?;
        }
        self.after_hooks.clear();
        Ok(())
    }

    /// The channel to the master.
    pub fn channel(&mut self) -> &mut WorkerChannel {
        &mut self.channel
    }

    /// Sends `report` as the last message on the channel, then closes the channel for good:
    /// what a detached worker started with [`start_detached`](crate::start_detached) does once
    /// it is ready (or knows it cannot be), so that its starter, waiting in
    /// [`DetachedStart::receive_report`](crate::DetachedStart::receive_report), learns it at
    /// once. The channel is closed even when the send fails.
    ///
    /// A starter that is gone is an error here ([`worker_channel::Error::Io`], broken pipe),
    /// never a SIGPIPE, whatever the program did with that signal.
    pub fn report<T: Serialize + ?Sized>(&mut self, report: &T) -> Result<(), BoxError> {
        let sent = sys::without_sigpipe(|| self.channel.send_message(report));
        let closed = self.close_channel();
        sent?;
        closed?;
        Ok(())
    }

    /// Closes the channel for good, both ends (its writing end is otherwise kept open until the
    /// process exits, see [`ChannelOutput`]): the master sees its end at once. The channel that
    /// replaces it reads nothing and writes nowhere.
    pub fn close_channel(&mut self) -> io::Result<()> {
        let null = null_channel(&self.channel)?;
        close_ends(std::mem::replace(&mut self.channel, null));
        Ok(())
    }

    /// Takes the channel, ending the context.
    pub fn into_channel(self) -> WorkerChannel {
        self.channel
    }
}
