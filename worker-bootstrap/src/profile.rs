use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use worker_channel::{Codec, DEFAULT_MAX_DEPTH, DEFAULT_MAX_FRAME_LEN, Spin};
use zeroize::Zeroizing;

use crate::Error;

/// Where a worker's standard error goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum StderrMode {
    /// Copied to the master's standard error as it arrives, and its last lines kept for the
    /// error the master gets when the worker dies. The default.
    #[default]
    Forward,
    /// Kept only for that error, not shown.
    Capture,
    /// Shared with the master (written straight to the master's standard error); nothing kept.
    Inherit,
    /// Discarded.
    Null,
    /// Each line forwarded as a [`log`] record at level `info`, with the target
    /// `exsyst_worker::worker::<implementation>` and the message `[pid <pid>] <line>`, and its
    /// last lines kept for the error as with `Forward`.
    ///
    /// A line is one record however long it is (past 1 MiB its rest is dropped and counted in
    /// the record, so a worker that never writes a newline cannot grow its master's memory); a
    /// last line without a newline is one record when the worker closes its standard error;
    /// bytes that are not UTF-8 are replaced with U+FFFD. With no logger installed the lines are
    /// read and dropped.
    Log,
}

/// How long a spawn waits for its zygote's answer by default
/// ([`BootstrapProfile::with_zygote_timeout`]).
pub const DEFAULT_ZYGOTE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a zygote may stay unused by default before it is ended
/// ([`BootstrapProfile::with_zygote_idle_timeout`]).
pub const DEFAULT_ZYGOTE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How dedicated workers are started: by executing the worker executable afresh (the default),
/// or by forking a zygote (Linux with glibc).
///
/// # The zygote
///
/// With [`SpawnMode::Zygote`], the first spawn starts a *zygote*: the worker executable, started
/// the usual way, which runs the top of its `main` up to [`run_if_worker`](crate::Registry::run_if_worker)
/// and then waits, single-threaded, for requests. Each worker is then a fork of it, so it skips
/// `exec`, dynamic loading and the program's start-up: on the project's machine a spawn to first
/// reply costs a fraction of an `exec`'s, and a pool that runs each task in a fresh process
/// (worker-pool's `recycle_after(1)`, for untrusted or leaky code) runs several times more tasks
/// per second.
///
/// The guarantees of the default spawn stay:
/// - the worker is a child of the master (the zygote forks it with `CLONE_PARENT`): its master
///   tracks it through a pidfd, reaps it, and reports its exit status and the tail of its
///   standard error as the same typed errors ([`Error::WorkerExited`](crate::Error::WorkerExited),
///   [`Error::ExitStatusLost`](crate::Error::ExitStatusLost));
/// - it dies with its master: its parent-death signal follows the master's spawner thread, as
///   for any worker, and so does the zygote's;
/// - it leads a process group of its own, killed with it;
/// - it inherits none of the master's threads, locks or descriptors: it is a copy of the zygote,
///   which has one thread, holds no lock while it forks, and keeps no descriptor but its
///   request socket (which the worker closes first thing), and it starts with the signal mask
///   and dispositions of a freshly executed worker.
///
/// There is one zygote per worker executable and setting that shapes a process image (program,
/// arguments, environment, working directory, standard error mode), started on the first spawn
/// that needs it. It is bounded:
/// - it is ended once unused for the profile's idle timeout
///   ([`BootstrapProfile::with_zygote_idle_timeout`], 60 s by default);
/// - at most [`MAX_ZYGOTES`](crate::MAX_ZYGOTES) (8) run at once: a spawn that needs a ninth
///   ends the one unused for longest, or executes its worker when all are busy;
/// - each costs a process (the worker executable's resident memory after its start-up, a few
///   MiB for a small program), four descriptors in the master (its request socket, its pidfd
///   and the background thread's copy of it, its standard error when kept) and one shared
///   memory page.
///
/// A zygote serves one spawn at a time, and a spawn never waits for another's: one that finds
/// its zygote busy executes its worker instead. A zygote that does not answer within the
/// profile's bound ([`BootstrapProfile::with_zygote_timeout`], 10 s by default) is killed; one
/// that dies (an operator's `kill`, the OOM killer) is reaped at once by the process's
/// background thread. Whatever is killed and whenever, a spawn returns a handle to the process
/// its `pid()` names, or an error and no process left behind: the kernel writes the pid of each
/// worker the zygote forks into memory its master shares, before the worker runs, so that the
/// master ends a worker whose zygote died before it answered. A zygote that had served before
/// and fails is replaced by a new one for the same spawn (which fails with
/// [`Error::Zygote`](crate::Error::Zygote) if the new one fails too). A process forked from the
/// master does not use (nor end) its parent's zygotes: it starts its own.
/// Detached workers (shared-worker daemons) are always executed afresh.
///
/// # When not to use it
///
/// - A worker that needs a freshly executed image. Every worker of a zygote is a copy of the
///   same process: one address-space layout (ASLR is not re-randomised per worker), the same
///   random seeds for whatever the program initialised before `run_if_worker` (the registry's
///   hash maps, say), and the executable as it was when the zygote started: after a deploy
///   replaced the binary on disk, workers keep running the old image until the master
///   restarts. What a worker inherits from its master's process (the environment beyond the
///   profile's, the working directory unless the profile sets one, the umask unless the profile
///   sets one, resource limits) is the master's as it was when the zygote started, not as it is
///   at each spawn. `pthread_atfork` handlers do not run in the worker, so a library initialised
///   before `run_if_worker` that relies on them to notice a fork (to reseed its generator) does
///   not notice it.
/// - A `main` that starts a thread before `run_if_worker` (which the registry forbids anyway):
///   the zygote refuses to fork with more than one thread, and spawns fail with
///   [`Error::Zygote`](crate::Error::Zygote).
/// - macOS and other systems: forking without `exec` is unsafe there once system frameworks are
///   loaded, and this crate uses Linux's `clone`.
///
/// # Where workers are executed instead
///
/// Outside Linux with glibc on the common architectures, the setting is ignored: every worker
/// is executed afresh, exactly as with [`SpawnMode::Exec`] (the same results, the same errors,
/// the same guarantees), and no zygote is started. This includes Linux with musl
/// (`*-linux-musl` targets): musl's own `fork` sets the new process's record of its thread id
/// (which `raise` and `abort` use to signal the calling thread) by hand, a record the zygote
/// cannot reach, and a worker keeping its zygote's would signal the zygote. So are workers
/// executed on a kernel that refuses the zygote's `clone` (a seccomp filter, say), which is
/// logged once at `info`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SpawnMode {
    /// Each worker is a fresh `posix_spawn` of the worker executable. The default.
    #[default]
    Exec,
    /// Each worker is forked from a zygote (see the type's documentation).
    Zygote,
}

/// Everything needed to start a worker process: the seed's `WorkerBootstrapProfile`.
///
/// Every field has a default, so `BootstrapProfile::default()` starts workers by re-executing the
/// current executable with MessagePack channels. The profile is serializable, so it can be kept
/// in configuration files.
///
/// | seed (PHP)                        | here                                                    |
/// |-----------------------------------|---------------------------------------------------------|
/// | php/hhvm path and arguments       | [`with_program`](Self::with_program), [`with_args`](Self::with_args) |
/// | stage 1 / 2 / 3 parts             | [`with_env`](Self::with_env), [`with_current_dir`](Self::with_current_dir), [`with_umask`](Self::with_umask), and named hooks ([`with_before_hook`](Self::with_before_hook), [`with_after_hook`](Self::with_after_hook)) |
/// | constructor arguments             | [`with_constructor_args`](Self::with_constructor_args)  |
/// | channel factory                   | [`with_codec`](Self::with_codec), [`with_max_frame_len`](Self::with_max_frame_len), [`with_max_depth`](Self::with_max_depth) |
/// | precompiled script map            | [`with_executable`](Self::with_executable)              |
/// | admin cookie                      | [`with_admin_cookie`](Self::with_admin_cookie), [`with_admin_cookie_file`](Self::with_admin_cookie_file) |
/// | kill switch path                  | [`with_kill_switch_path`](Self::with_kill_switch_path)  |
/// | output path                       | [`with_output_path`](Self::with_output_path)            |
///
/// An admin cookie given by value is never serialized (a serialized profile lands in
/// configuration files, often readable by others) and shows as `<redacted>` in `Debug`; its
/// bytes are wiped when the profile is dropped. To keep the cookie with a configuration, keep it
/// in a file of its own, readable by its owner only, and name that file
/// ([`with_admin_cookie_file`](Self::with_admin_cookie_file)).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct BootstrapProfile {
    program: Option<PathBuf>,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    current_dir: Option<PathBuf>,
    umask: Option<u32>,
    codec: Codec,
    max_frame_len: u32,
    max_depth: u32,
    constructor_args: Option<ByteBuf>,
    executables: BTreeMap<String, PathBuf>,
    before_hooks: Vec<String>,
    after_hooks: Vec<String>,
    stderr: StderrMode,
    kill_switch_path: Option<PathBuf>,
    output_path: Option<PathBuf>,
    #[serde(skip)]
    admin_cookie: Secret,
    admin_cookie_file: Option<PathBuf>,
    #[serde(with = "millis")]
    close_grace: Duration,
    spawn_mode: SpawnMode,
    #[serde(with = "millis")]
    zygote_timeout: Duration,
    #[serde(with = "millis")]
    zygote_idle_timeout: Duration,
    /// The latency mode (whole microseconds when serialized).
    spin: Spin,
}

/// The admin cookie's bytes as a profile holds them: wiped on drop, redacted in `Debug`.
#[derive(Clone, Default)]
struct Secret(Option<Zeroizing<Vec<u8>>>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => f.write_str("Some(<redacted>)"),
            None => f.write_str("None"),
        }
    }
}

impl Default for BootstrapProfile {
    fn default() -> Self {
        BootstrapProfile {
            program: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            current_dir: None,
            umask: None,
            codec: Codec::default(),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_depth: DEFAULT_MAX_DEPTH,
            constructor_args: None,
            executables: BTreeMap::new(),
            before_hooks: Vec::new(),
            after_hooks: Vec::new(),
            stderr: StderrMode::default(),
            kill_switch_path: None,
            output_path: None,
            admin_cookie: Secret::default(),
            admin_cookie_file: None,
            close_grace: Duration::from_secs(1),
            spawn_mode: SpawnMode::default(),
            zygote_timeout: DEFAULT_ZYGOTE_TIMEOUT,
            zygote_idle_timeout: DEFAULT_ZYGOTE_IDLE_TIMEOUT,
            spin: Spin::OFF,
        }
    }
}

impl BootstrapProfile {
    /// The default profile.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs workers from `program` instead of the current executable. That executable must call
    /// `run_if_worker` at the top of its `main` and register the implementations it is asked for.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = Some(program.into());
        self
    }

    /// Arguments given to the worker executable (never put secrets here: they are visible to
    /// every user of the machine).
    pub fn with_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Sets an environment variable for workers (on top of the master's environment).
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Starts workers in `dir`.
    pub fn with_current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Sets the workers' file mode creation mask before any of their code runs.
    pub fn with_umask(mut self, mask: u32) -> Self {
        self.umask = Some(mask);
        self
    }

    /// The codec of the channel to the workers.
    pub fn with_codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// The largest payload either side sends or accepts (16 MiB by default).
    pub fn with_max_frame_len(mut self, max: u32) -> Self {
        self.max_frame_len = max;
        self
    }

    /// How deep a message may nest arrays, maps and enum variants, on both sides of the channel
    /// ([`DEFAULT_MAX_DEPTH`], 128, by default): a deeper one is refused with
    /// [`worker_channel::Error::TooDeep`] before it is decoded, so no peer can exhaust the
    /// stack of the thread that decodes its messages. At least 1.
    pub fn with_max_depth(mut self, max: u32) -> Self {
        self.max_depth = max;
        self
    }

    /// Constructor arguments for workers created without arguments of their own.
    pub fn with_constructor_args<T: Serialize>(mut self, args: &T) -> Result<Self, Error> {
        self.constructor_args = Some(encode_args(args)?);
        Ok(self)
    }

    /// Runs implementation `implementation` from `program` (the seed's precompiled script map).
    pub fn with_executable(
        mut self,
        implementation: impl Into<String>,
        program: impl Into<PathBuf>,
    ) -> Self {
        self.executables
            .insert(implementation.into(), program.into());
        self
    }

    /// Runs the hook registered under `name` in the worker, before the implementation is
    /// constructed (the seed's stages 1 and 2). Hooks run in the order they are added.
    pub fn with_before_hook(mut self, name: impl Into<String>) -> Self {
        self.before_hooks.push(name.into());
        self
    }

    /// Runs the hook registered under `name` in the worker, right after the implementation is
    /// constructed, with access to it (the seed's stage 3).
    pub fn with_after_hook(mut self, name: impl Into<String>) -> Self {
        self.after_hooks.push(name.into());
        self
    }

    /// Where workers' standard error goes.
    pub fn with_stderr(mut self, mode: StderrMode) -> Self {
        self.stderr = mode;
        self
    }

    /// How long closing a worker waits for it to exit by itself before killing it (1 s by
    /// default).
    pub fn with_close_grace(mut self, grace: Duration) -> Self {
        self.close_grace = grace;
        self
    }

    /// How dedicated workers are started: afresh ([`SpawnMode::Exec`], the default) or forked
    /// from a zygote ([`SpawnMode::Zygote`]), whose documentation says what it guarantees and
    /// when not to use it.
    ///
    /// ```rust,standalone_crate
    /// use worker_bootstrap::{BootstrapProfile, DedicatedWorker, SpawnMode, registry};
    /// # use worker_core::{BoxError, RawWorker, Worker, WorkerChannel};
    /// # struct Squarer;
    /// # impl Worker for Squarer { const NAME: &'static str = "squarer"; type Args = ();
    /// #     fn new(_: ()) -> Result<Self, BoxError> { Ok(Squarer) } }
    /// # impl RawWorker for Squarer {
    /// #     fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
    /// #         while let Some(n) = channel.next_message::<i64>()? {
    /// #             channel.send_message(&(n * n))?;
    /// #         }
    /// #         Ok(())
    /// #     }
    /// # }
    ///
    /// fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     // Also the zygote's entry: there it waits for requests, and forks workers.
    ///     registry().raw::<Squarer>().run_if_worker();
    ///
    ///     let profile = BootstrapProfile::new().with_spawn_mode(SpawnMode::Zygote);
    ///     for n in 0..100i64 {
    ///         // A fresh process each time, forked from the zygote the first spawn started.
    ///         let mut worker = DedicatedWorker::spawn::<Squarer>(&profile)?;
    ///         worker.send_message(&n)?;
    ///         assert_eq!(worker.receive_message::<i64>()?, n * n);
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub fn with_spawn_mode(mut self, mode: SpawnMode) -> Self {
        self.spawn_mode = mode;
        self
    }

    /// How dedicated workers are started.
    pub fn spawn_mode(&self) -> SpawnMode {
        self.spawn_mode
    }

    /// How long a spawn waits for its zygote's answer ([`SpawnMode::Zygote`]): 10 s by default
    /// ([`DEFAULT_ZYGOTE_TIMEOUT`]), the zygote's own start included for the spawn that starts
    /// it; `Duration::MAX` waits as long as it takes; zero is refused
    /// ([`Error::Config`](crate::Error::Config)).
    ///
    /// A zygote that does not answer in time (stopped, or starved on a stalled machine) is
    /// killed, with any worker it forked for that spawn; one that had served before is then
    /// replaced by a new zygote, which that spawn asks instead, so a pool's respawn goes on.
    /// Other spawns meanwhile never wait for it: a spawn that finds its zygote busy executes
    /// its worker instead.
    pub fn with_zygote_timeout(mut self, timeout: Duration) -> Self {
        self.zygote_timeout = timeout;
        self
    }

    /// How long a spawn waits for its zygote's answer.
    pub fn zygote_timeout(&self) -> Duration {
        self.zygote_timeout
    }

    /// How long a zygote ([`SpawnMode::Zygote`]) may stay unused before it is ended: 60 s by
    /// default ([`DEFAULT_ZYGOTE_IDLE_TIMEOUT`]); `Duration::MAX` keeps it for the master's whole
    /// life. The next spawn that needs it starts another, which costs one executed spawn and
    /// the program's start-up up to `run_if_worker`.
    ///
    /// A zygote costs a process (its resident memory is the worker executable's after its
    /// start-up: a few MiB for a small program), four descriptors in the master and a shared
    /// memory page; at most [`MAX_ZYGOTES`](crate::MAX_ZYGOTES) run at once (see
    /// [`SpawnMode`]). The setting of the latest spawn through a zygote applies to it.
    pub fn with_zygote_idle_timeout(mut self, timeout: Duration) -> Self {
        self.zygote_idle_timeout = timeout;
        self
    }

    /// How long a zygote may stay unused before it is ended.
    pub fn zygote_idle_timeout(&self) -> Duration {
        self.zygote_idle_timeout
    }

    /// The latency mode (see [`Spin`]): a master's receive that finds no reply yet (the one
    /// after a send, in a conversation) looks again without blocking for up to `budget` before
    /// it blocks, and the worker does the same while it waits for its next message, so a
    /// conversation in full flow never sleeps in the kernel
    /// (whose wake-up costs tens of microseconds on machines whose idle CPUs halt). Zero, the
    /// default, is off; budgets over [`Spin::MAX_BUDGET`] (10 ms, `Duration::MAX` included)
    /// are cut to it.
    ///
    /// Use it for latency-critical request/response on a machine with spare cores: a receive
    /// that waits keeps its CPU busy for up to the budget before it sleeps, on each side, so an
    /// idle worker costs at most one budget of CPU after its last message, and a busy master
    /// one budget per receive that waits. 50–200 µs covers a round trip whose work is short. It
    /// applies to dedicated workers (raw and evented), to pools built from this profile (the
    /// pool's own wait spins too), and to shared-worker connections made with it (worker-shared's
    /// `connect_or_start`, and the daemons it starts unless their configuration says otherwise);
    /// [`DedicatedWorker::set_spin`](crate::DedicatedWorker::set_spin) changes the master's side
    /// of one worker.
    ///
    /// ```
    /// use std::time::Duration;
    /// use worker_bootstrap::BootstrapProfile;
    ///
    /// let profile = BootstrapProfile::new().with_spin(Duration::from_micros(100));
    /// assert_eq!(profile.spin().budget(), Duration::from_micros(100));
    /// assert_eq!(BootstrapProfile::new().with_spin(Duration::MAX).spin().budget(),
    ///            worker_channel::Spin::MAX_BUDGET);
    /// ```
    pub fn with_spin(mut self, budget: Duration) -> Self {
        self.spin = Spin::new(budget);
        self
    }

    /// The latency mode ([`Spin::OFF`] unless [`with_spin`](Self::with_spin) set one).
    pub fn spin(&self) -> Spin {
        self.spin
    }

    /// Uses the kill switch file at `path` (see `worker-killswitch`): shared workers it disables
    /// are not started.
    pub fn with_kill_switch_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.kill_switch_path = Some(path.into());
        self
    }

    /// The kill switch file, if any.
    pub fn kill_switch_path(&self) -> Option<&std::path::Path> {
        self.kill_switch_path.as_deref()
    }

    /// Sends the standard output and error of detached workers (shared-worker daemons) to the
    /// file at `path`, appended to, created `0600` when absent (the seed's "output path").
    /// Without it they go to `/dev/null`. Dedicated workers are not concerned: their standard
    /// error follows [`with_stderr`](Self::with_stderr).
    pub fn with_output_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.output_path = Some(path.into());
        self
    }

    /// Where detached workers' standard output and error go, if anywhere.
    pub fn output_path(&self) -> Option<&Path> {
        self.output_path.as_deref()
    }

    /// The admin cookie (the seed's): the secret a shared worker started with this profile
    /// requires before it stops or answers a privileged query, and that the profile's masters
    /// prove they know. Replaces a cookie file set before.
    ///
    /// It travels to a daemon in its private start pipe only, never on its command line, in its
    /// environment or in a file. It is not serialized with the profile, and `Debug` redacts it.
    pub fn with_admin_cookie(mut self, cookie: impl Into<Vec<u8>>) -> Self {
        self.admin_cookie = Secret(Some(Zeroizing::new(cookie.into())));
        self.admin_cookie_file = None;
        self
    }

    /// Reads the admin cookie from the file at `path` when it is needed (a file only its owner
    /// may access: anything else is refused then). Replaces a cookie set by value before.
    /// Unlike the cookie itself, the path is serialized with the profile.
    pub fn with_admin_cookie_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.admin_cookie_file = Some(path.into());
        self.admin_cookie = Secret::default();
        self
    }

    /// The admin cookie given by value, if any; never for display.
    pub fn admin_cookie(&self) -> Option<&[u8]> {
        self.admin_cookie.0.as_deref().map(Vec::as_slice)
    }

    /// The file the admin cookie is read from, if any.
    pub fn admin_cookie_file(&self) -> Option<&Path> {
        self.admin_cookie_file.as_deref()
    }

    /// The explicitly configured worker executable, if any.
    pub fn program(&self) -> Option<&std::path::Path> {
        self.program.as_deref()
    }

    /// The arguments given to worker executables.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The extra environment of workers.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// The working directory of workers, if set.
    pub fn current_dir(&self) -> Option<&std::path::Path> {
        self.current_dir.as_deref()
    }

    /// The workers' umask, if set.
    pub fn umask(&self) -> Option<u32> {
        self.umask
    }

    /// The channel codec.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The maximum payload length.
    pub fn max_frame_len(&self) -> u32 {
        self.max_frame_len
    }

    /// How deep a message may nest.
    pub fn max_depth(&self) -> u32 {
        self.max_depth
    }

    /// The default constructor arguments, MessagePack-encoded.
    pub fn constructor_args(&self) -> Option<&[u8]> {
        self.constructor_args.as_ref().map(|b| b.as_slice())
    }

    /// The executable that runs `implementation`: its entry in the map, else the profile's
    /// program, else `None` for the current executable.
    pub fn executable_for(&self, implementation: &str) -> Option<&std::path::Path> {
        self.executables
            .get(implementation)
            .map(PathBuf::as_path)
            .or(self.program.as_deref())
    }

    /// The hooks run before construction.
    pub fn before_hooks(&self) -> &[String] {
        &self.before_hooks
    }

    /// The hooks run after construction.
    pub fn after_hooks(&self) -> &[String] {
        &self.after_hooks
    }

    /// Where workers' standard error goes.
    pub fn stderr(&self) -> StderrMode {
        self.stderr
    }

    /// The close grace period.
    pub fn close_grace(&self) -> Duration {
        self.close_grace
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.max_frame_len == 0 {
            return Err(config("max_frame_len", "must be at least 1"));
        }
        if self.max_depth == 0 {
            return Err(config("max_depth", "must be at least 1"));
        }
        if self.zygote_timeout.is_zero() {
            return Err(config(
                "zygote_timeout",
                "is zero: no zygote could ever answer in time",
            ));
        }
        if self.admin_cookie().is_some_and(<[u8]>::is_empty) {
            return Err(config("admin_cookie", "is empty"));
        }
        if let Some(mask) = self.umask
            && mask > 0o777
        {
            return Err(config(
                "umask",
                &format!("{mask:o} is not a permission mask"),
            ));
        }
        Ok(())
    }
}

fn config(what: &'static str, why: &str) -> Error {
    Error::Config {
        what,
        why: why.to_owned(),
    }
}

/// Constructor arguments always travel as MessagePack, whatever the channel's codec.
pub(crate) fn encode_args<T: Serialize + ?Sized>(args: &T) -> Result<ByteBuf, Error> {
    Codec::MessagePack
        .encode(args)
        .map(ByteBuf::from)
        .map_err(|source| config("args", &format!("cannot be encoded: {source}")))
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().min(u64::MAX as u128) as u64)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admin_cookie_given_by_value_is_never_serialized_nor_shown() {
        let secret = "s3cret-c00kie-bytes";
        let profile = BootstrapProfile::new()
            .with_admin_cookie(secret)
            .with_output_path("/var/log/app/worker.log");
        assert_eq!(profile.admin_cookie(), Some(secret.as_bytes()));
        let shown = format!("{profile:?}");
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let bytes = Codec::MessagePack.encode(&profile).unwrap();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
        let back: BootstrapProfile = Codec::MessagePack.decode(&bytes).unwrap();
        assert_eq!(back.admin_cookie(), None);
        assert_eq!(
            back.output_path(),
            Some(Path::new("/var/log/app/worker.log"))
        );
    }

    #[test]
    fn the_zygote_bounds_have_documented_defaults_and_travel_with_the_profile() {
        let default = BootstrapProfile::new();
        assert_eq!(default.zygote_timeout(), DEFAULT_ZYGOTE_TIMEOUT);
        assert_eq!(default.zygote_idle_timeout(), DEFAULT_ZYGOTE_IDLE_TIMEOUT);
        let old: BootstrapProfile = Codec::Json.decode(br#"{"args":["x"]}"#).unwrap();
        assert_eq!(old.zygote_timeout(), DEFAULT_ZYGOTE_TIMEOUT);
        // (timeout, idle timeout, accepted): extremes included.
        let cases = [
            (Duration::from_millis(1), Duration::ZERO, true),
            (Duration::from_secs(3), Duration::from_secs(600), true),
            (Duration::MAX, Duration::MAX, true),
            (Duration::ZERO, Duration::from_secs(1), false),
        ];
        for (timeout, idle, accepted) in cases {
            let profile = BootstrapProfile::new()
                .with_zygote_timeout(timeout)
                .with_zygote_idle_timeout(idle);
            match profile.validate() {
                Ok(()) => assert!(accepted, "{timeout:?}"),
                Err(Error::Config { what, .. }) => {
                    assert!(!accepted, "{timeout:?}");
                    assert_eq!(what, "zygote_timeout");
                }
                Err(other) => panic!("{other:?}"),
            }
            let back: BootstrapProfile = Codec::MessagePack
                .decode(&Codec::MessagePack.encode(&profile).unwrap())
                .unwrap();
            // Whole milliseconds; Duration::MAX stays beyond any deadline.
            let millis = |d: Duration| d.as_millis().min(u128::from(u64::MAX));
            assert_eq!(millis(back.zygote_timeout()), millis(timeout));
            assert_eq!(millis(back.zygote_idle_timeout()), millis(idle));
        }
    }

    #[test]
    fn the_spawn_mode_is_exec_by_default_and_kept_with_the_profile() {
        assert_eq!(BootstrapProfile::new().spawn_mode(), SpawnMode::Exec);
        let profile = BootstrapProfile::new().with_spawn_mode(SpawnMode::Zygote);
        let json = Codec::Json.encode(&profile).unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains(r#""spawn_mode":"zygote""#), "{text}");
        let back: BootstrapProfile = Codec::Json.decode(&json).unwrap();
        assert_eq!(back.spawn_mode(), SpawnMode::Zygote);
        // A profile written before the setting existed reads as the default.
        let old: BootstrapProfile = Codec::Json.decode(br#"{"args":["x"]}"#).unwrap();
        assert_eq!(old.spawn_mode(), SpawnMode::Exec);
        assert!(
            Codec::Json
                .decode::<BootstrapProfile>(br#"{"spawn_mode":"fork"}"#)
                .is_err()
        );
    }

    #[test]
    fn the_spin_budget_is_kept_with_the_profile_and_capped() {
        let profile = BootstrapProfile::new().with_spin(Duration::from_micros(150));
        let bytes = Codec::MessagePack.encode(&profile).unwrap();
        let back: BootstrapProfile = Codec::MessagePack.decode(&bytes).unwrap();
        assert_eq!(back.spin().budget(), Duration::from_micros(150));
        // A profile saved before the setting existed decodes with it off.
        let old: BootstrapProfile = Codec::Json.decode(br#"{"codec":"json"}"#).unwrap();
        assert!(old.spin().is_off());
        let capped = BootstrapProfile::new().with_spin(Duration::MAX);
        assert_eq!(capped.spin().budget(), Spin::MAX_BUDGET);
        assert!(
            BootstrapProfile::new()
                .with_spin(Duration::ZERO)
                .spin()
                .is_off()
        );
    }

    #[test]
    fn a_cookie_file_replaces_a_cookie_and_is_kept_with_the_profile() {
        let profile = BootstrapProfile::new()
            .with_admin_cookie("by value")
            .with_admin_cookie_file("/etc/app/cookie");
        assert_eq!(profile.admin_cookie(), None);
        let bytes = Codec::MessagePack.encode(&profile).unwrap();
        let back: BootstrapProfile = Codec::MessagePack.decode(&bytes).unwrap();
        assert_eq!(back.admin_cookie_file(), Some(Path::new("/etc/app/cookie")));
        assert!(matches!(
            BootstrapProfile::new().with_admin_cookie("").validate(),
            Err(Error::Config { .. })
        ));
    }
}
