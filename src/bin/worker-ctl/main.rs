//! `worker-ctl`: query, stop, disable, enable and list shared workers from a shell.
//!
//! Exits 0 on success, 1 on a failure, 2 on a usage error; errors go to standard error, one
//! line each, naming the worker's address. See `--help`.

// The operating system is the library's to call.
#![forbid(unsafe_code)]

#[path = "../common/mod.rs"]
mod common;
mod config;
mod openmetrics;

use std::{
    collections::BTreeMap,
    fmt,
    io::ErrorKind as IoErrorKind,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use exsyst_worker::{
    BootstrapProfile, KillSwitch,
    bootstrap::{SIGNAL_NAMES, signal_number},
    shared::{AdminCookie, Error, SharedServerConfig, StopBy, stop_and_wait},
    worker::WorkerStatus,
};
use serde::Serialize;

use crate::config::{CONFIG_ENV, Config, Target};

const ABOUT: &str = "\
Operates shared workers: query, stop, disable, enable and list them.

A WORKER is an address (unix:///absolute/path, tcp://host:port, tcp://[ipv6]:port) or the name of \
a worker in the config. The config (TOML) names workers and their settings; it is --config PATH, \
else $EXSYST_WORKER_CONFIG, else $XDG_CONFIG_HOME/exsyst-worker/workers.toml (by default \
~/.config/exsyst-worker/workers.toml):

  admin_cookie_file = \"/etc/app/admin-cookie\"       # defaults for every worker below
  kill_switch = \"/var/lib/app/kill-switch.json\"

  [workers.indexer]
  address = \"unix:///run/app/indexer.sock\"
  program = \"/usr/local/bin/app\"                    # what `start` runs
  implementation = \"indexer\"
  admin_cookie_file = \"/etc/app/indexer-cookie\"     # overrides the default
  kill_switch = \"/var/lib/app/kill-switch.json\"
  eager = true                                     # `start-all` starts it

Relative paths are relative to the config's directory. The admin cookie, needed by `stop` and for \
the privileged status, comes from --admin-cookie-file, else the worker's admin_cookie_file, else \
$EXSYST_WORKER_ADMIN_COOKIE; never from an argument.

Exit status: 0 on success, 1 on a failure, 2 on a usage error.";

const EXAMPLES: &str = "\
Examples:
  worker-ctl query unix:///run/app/worker.sock
  worker-ctl pid indexer
  worker-ctl start indexer
  worker-ctl stop --disable indexer
  worker-ctl killswitch enable indexer
  worker-ctl list -l
  worker-ctl start-all
  worker-ctl stop-all --disable";

#[derive(Debug, Parser)]
#[command(
    name = "worker-ctl",
    version,
    about = ABOUT,
    after_help = EXAMPLES,
    subcommand_required = true,
    arg_required_else_help = true
)]
struct Cli {
    /// The config of named workers [default: $XDG_CONFIG_HOME/exsyst-worker/workers.toml]
    #[arg(long, global = true, value_name = "PATH", env = CONFIG_ENV)]
    config: Option<PathBuf>,

    /// How long to wait for each worker to answer
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        default_value = "10",
        value_parser = seconds
    )]
    timeout: Duration,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints a worker's status (the privileged one when an admin cookie is at hand)
    #[command(after_help = "\
Examples:
  worker-ctl query unix:///run/app/worker.sock
  worker-ctl query indexer --format json
  # for node_exporter's textfile collector:
  worker-ctl query indexer --format openmetrics > /var/lib/node_exporter/indexer.prom.tmp \\
    && mv /var/lib/node_exporter/indexer.prom.tmp /var/lib/node_exporter/indexer.prom")]
    Query {
        /// The worker: an address, or a name in the config
        worker: String,
        /// text for people, json for scripts, openmetrics for Prometheus
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// What metric names start with, with --format openmetrics
        #[arg(long, value_name = "PREFIX", default_value = "shared_worker_")]
        metric_prefix: String,
        #[command(flatten)]
        cookie: CookieArg,
    },
    /// Prints a worker's process id
    #[command(after_help = "\
Examples:
  worker-ctl pid unix:///run/app/worker.sock
  kill -HUP \"$(worker-ctl pid indexer)\"")]
    Pid {
        /// The worker: an address, or a name in the config
        worker: String,
    },
    /// Starts a local worker unless it runs already, and prints its pid
    #[command(after_help = "\
Examples:
  worker-ctl start indexer
  worker-ctl start unix:///run/app/worker.sock --program /usr/local/bin/app --implementation indexer")]
    Start {
        /// The worker: an address, or a name in the config
        worker: String,
        /// The program to run [default: the config's]
        #[arg(long, value_name = "PATH")]
        program: Option<PathBuf>,
        /// The implementation it serves [default: the config's]
        #[arg(long, value_name = "NAME")]
        implementation: Option<String>,
        #[command(flatten)]
        cookie: CookieArg,
    },
    /// Stops a worker, and exits 0 only once it is gone (or was not running)
    #[command(after_help = "\
--disable writes the kill switch before stopping, so that no master restarts the worker in between.
A remote worker is gone once it closed the connection at the end of its stop.

Examples:
  worker-ctl stop indexer
  worker-ctl stop --disable unix:///run/app/worker.sock --kill-switch /var/lib/app/kill-switch.json
  # a local worker without an admin cookie:
  worker-ctl stop --signal TERM unix:///run/app/worker.sock")]
    Stop {
        /// The worker: an address, or a name in the config
        worker: String,
        #[command(flatten)]
        stop: StopArgs,
        #[command(flatten)]
        cookie: CookieArg,
    },
    /// Reads or changes a kill switch: the file that says which workers may not start
    #[command(after_help = "\
Without --file, the kill switches of the config: the default one for an address, the worker's \
own for a name, all of them for status, --global and enable-all.

Examples:
  worker-ctl killswitch status
  worker-ctl killswitch --file /var/lib/app/kill-switch.json disable --global
  worker-ctl killswitch disable indexer unix:///run/app/other.sock
  worker-ctl killswitch enable indexer
  worker-ctl killswitch enable-all")]
    Killswitch {
        /// The kill switch file
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        #[command(subcommand)]
        action: Action,
    },
    /// Lists the config's workers: live, pid, local or remote, disabled (and, with -l, the
    /// implementation and the status)
    #[command(after_help = "\
Examples:
  worker-ctl list
  worker-ctl list -l
  worker-ctl list -l --json | jq '.[] | select(.live | not) | .name'")]
    List {
        /// Also the implementation and the first line of the status (a query each)
        #[arg(short = 'l', long = "long")]
        long: bool,
        /// JSON for scripts: one object per worker
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cookie: CookieArg,
    },
    /// Starts the config's eager workers that do not run
    #[command(
        after_help = "Examples:\n  worker-ctl start-all\n  worker-ctl --config /etc/app/workers.toml start-all"
    )]
    StartAll {
        #[command(flatten)]
        cookie: CookieArg,
    },
    /// Stops every worker of the config, each gone before the command exits 0
    #[command(after_help = "Examples:\n  worker-ctl stop-all\n  worker-ctl stop-all --disable")]
    StopAll {
        #[command(flatten)]
        stop: StopArgs,
        #[command(flatten)]
        cookie: CookieArg,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
    Openmetrics,
}

#[derive(Debug, Args)]
struct CookieArg {
    /// The admin cookie's file (owner-only) [default: the worker's admin_cookie_file, else
    /// $EXSYST_WORKER_ADMIN_COOKIE]
    #[arg(long, value_name = "PATH")]
    admin_cookie_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct StopArgs {
    /// Disable the worker in its kill switch first
    #[arg(long)]
    disable: bool,
    /// The kill switch for --disable [default: the config's]
    #[arg(long, value_name = "PATH")]
    kill_switch: Option<PathBuf>,
    /// Signal a local worker (TERM, INT, KILL, ...) instead of asking it with the admin cookie
    #[arg(long, value_name = "SIG", value_parser = signal)]
    signal: Option<i32>,
    /// How long to wait for a worker to be gone
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = seconds)]
    wait: Duration,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Prints what each kill switch disables
    Status,
    /// Disables workers, or all of them with --global, so that none starts
    Disable(Which),
    /// Re-enables workers, or lifts --global
    Enable(Which),
    /// Re-enables every worker and lifts --global
    EnableAll,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Which {
    /// All workers, whatever their address
    #[arg(long)]
    global: bool,
    /// Workers, by address or name
    #[arg(value_name = "WORKER")]
    workers: Vec<String>,
}

/// Whether the worker at `address` is on this machine (the library's answer); one whose name
/// does not resolve is not.
fn is_local(address: &str) -> bool {
    matches!(exsyst_worker::shared::is_local(address), Ok(true))
}

/// A signal by name (`TERM`, `SIGTERM`, any case) or number.
fn signal(text: &str) -> Result<i32, String> {
    signal_number(text).ok_or_else(|| {
        let names: Vec<&str> = SIGNAL_NAMES.iter().map(|(name, _)| *name).collect();
        format!(
            "unknown signal {text:?} (expected {} or a number)",
            names.join(", ")
        )
    })
}

fn seconds(text: &str) -> Result<Duration, String> {
    common::timeout_seconds(text)
        .ok_or_else(|| format!("{text:?} is not a positive number of seconds"))
}

/// A mistake on the command line or in the config (exit 2), as opposed to a failure (exit 1).
#[derive(Debug)]
struct Usage(String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

fn usage(message: impl Into<String>) -> anyhow::Error {
    Usage(message.into()).into()
}

/// Tells an error on standard error, one line.
fn report(error: &anyhow::Error) {
    eprintln!("worker-ctl: {}", common::one_line(error.as_ref()));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        // The failures were told already.
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            report(&e);
            if e.downcast_ref::<Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Runs the command: `Ok(false)` when some of its work failed and was reported.
fn run(cli: Cli) -> anyhow::Result<bool> {
    let config = Config::load(cli.config.as_deref())?;
    let target = |given: &str| config.target(given).map_err(usage);
    match cli.command {
        Command::Query {
            worker,
            format,
            metric_prefix,
            cookie,
        } => query(
            &target(&worker)?,
            format,
            &metric_prefix,
            &cookie,
            cli.timeout,
        ),
        Command::Pid { worker } => {
            let target = target(&worker)?;
            let worker = common::connect(&target.address, common::deadline(cli.timeout))?;
            println!("{}", worker.pid());
            Ok(true)
        }
        Command::Start {
            worker,
            program,
            implementation,
            cookie,
        } => {
            let target = target(&worker)?;
            let pid = start(&target, program, implementation, &cookie, cli.timeout)?;
            println!("{pid}");
            Ok(true)
        }
        Command::Stop {
            worker,
            stop: how,
            cookie,
        } => {
            stop(&target(&worker)?, &how, &cookie, cli.timeout)?;
            Ok(true)
        }
        Command::Killswitch { file, action } => killswitch(&config, file, action),
        Command::List { long, json, cookie } => list(&config, long, json, &cookie, cli.timeout),
        Command::StartAll { cookie } => {
            let mut all_ok = true;
            for target in config.named()?.iter().filter(|t| t.eager) {
                match start(target, None, None, &cookie, cli.timeout) {
                    Ok(pid) => println!("{target}: running (pid {pid})"),
                    Err(e) => {
                        report(&e);
                        all_ok = false;
                    }
                }
            }
            Ok(all_ok)
        }
        Command::StopAll { stop: how, cookie } => {
            let mut all_ok = true;
            for target in config.named()? {
                if let Err(e) = stop(target, &how, &cookie, cli.timeout) {
                    report(&e);
                    all_ok = false;
                }
            }
            Ok(all_ok)
        }
    }
}

/// The admin cookie for `target`: the command line's file, else the worker's, else
/// `$EXSYST_WORKER_ADMIN_COOKIE`.
fn cookie_for(arg: &CookieArg, target: &Target) -> anyhow::Result<Option<AdminCookie>> {
    let file = arg
        .admin_cookie_file
        .as_deref()
        .or(target.admin_cookie_file.as_deref());
    common::admin_cookie(file, None).with_context(|| format!("{target}"))
}

fn query(
    target: &Target,
    format: Format,
    metric_prefix: &str,
    cookie: &CookieArg,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let cookie = cookie_for(cookie, target)?;
    let deadline = common::deadline(timeout);
    let (worker, reply) = common::query(&target.address, cookie.as_ref(), deadline)?;
    let status = reply.status.unwrap_or_default();
    match format {
        Format::Text => {
            println!(
                "{}: {}, pid {}, {} status",
                worker.address(),
                worker.implementation(),
                worker.pid(),
                if reply.privileged {
                    "privileged"
                } else {
                    "public"
                }
            );
            if status != WorkerStatus::default() {
                println!("{status}");
            }
        }
        Format::Json => {
            #[derive(Serialize)]
            struct Reply<'a> {
                address: &'a str,
                implementation: &'a str,
                pid: u32,
                codec: exsyst_worker::Codec,
                privileged: bool,
                status: &'a WorkerStatus,
            }
            let reply = Reply {
                address: worker.address(),
                implementation: worker.implementation(),
                pid: worker.pid(),
                codec: worker.codec(),
                privileged: reply.privileged,
                status: &status,
            };
            println!("{}", serde_json::to_string_pretty(&reply)?);
        }
        Format::Openmetrics => print!(
            "{}",
            openmetrics::render(
                &status,
                worker.address(),
                worker.implementation(),
                metric_prefix
            )
        ),
    }
    Ok(true)
}

fn start(
    target: &Target,
    program: Option<PathBuf>,
    implementation: Option<String>,
    cookie: &CookieArg,
    timeout: Duration,
) -> anyhow::Result<u32> {
    if !is_local(&target.address) {
        bail!("{target}: a remote worker cannot be started from here, only queried and stopped");
    }
    let program = program.or_else(|| target.program.clone()).ok_or_else(|| {
        usage(format!(
            "{target}: no program to start: give --program PATH, or program in the config"
        ))
    })?;
    let implementation = implementation
        .or_else(|| target.implementation.clone())
        .ok_or_else(|| {
            usage(format!(
                "{target}: no implementation to start: give --implementation NAME, or \
                 implementation in the config"
            ))
        })?;
    let cookie = cookie_for(cookie, target)?;
    start_worker(
        target,
        &program,
        &implementation,
        cookie.as_ref(),
        target.kill_switch.as_deref(),
        timeout,
    )
}

/// Starts the worker at `target`'s address running `implementation` of `program`, unless one
/// runs there already, and returns the pid of the one that runs: refused when its kill switch
/// disables it, race-free against other starters (`worker_shared::start`).
///
/// The admin cookie reaches the daemon through its private start pipe, never its command line.
fn start_worker(
    target: &Target,
    program: &Path,
    implementation: &str,
    cookie: Option<&AdminCookie>,
    kill_switch: Option<&Path>,
    timeout: Duration,
) -> anyhow::Result<u32> {
    let mut profile = BootstrapProfile::new().with_program(program);
    if let Some(path) = kill_switch {
        profile = profile.with_kill_switch_path(path);
    }
    let mut config = SharedServerConfig::default();
    if let Some(cookie) = cookie {
        config = config.with_cookie(cookie.clone());
    }
    exsyst_worker::shared::start_timeout(
        &profile,
        &target.address,
        implementation,
        &config,
        timeout,
    )
    .map_err(|e| anyhow::anyhow!(common::one_line(&e)))
}

fn stop(
    target: &Target,
    how: &StopArgs,
    cookie: &CookieArg,
    timeout: Duration,
) -> anyhow::Result<()> {
    let cookie = match how.signal {
        Some(_) => None,
        None => Some(cookie_for(cookie, target)?.ok_or_else(|| {
            usage(format!(
                "{target}: no admin cookie to stop it: give --admin-cookie-file PATH, set \
                 admin_cookie_file in the config or $EXSYST_WORKER_ADMIN_COOKIE, or --signal \
                 TERM for a local worker"
            ))
        })?),
    };
    if how.disable {
        let file = how
            .kill_switch
            .as_ref()
            .or(target.kill_switch.as_ref())
            .ok_or_else(|| {
                usage(format!(
                    "{target}: --disable needs a kill switch: give --kill-switch PATH, or \
                     kill_switch in the config"
                ))
            })?;
        KillSwitch::new(file)
            .disable_address(&target.address)
            .with_context(|| format!("{target}: cannot disable it"))?;
        println!("{target}: disabled in {}", file.display());
    }
    let by = match (how.signal, &cookie) {
        (Some(signal), _) => StopBy::Signal(signal),
        (None, Some(cookie)) => StopBy::Cookie(cookie),
        (None, None) => unreachable!("a cookie was required above"),
    };
    match stop_and_wait(&target.address, by, timeout, how.wait) {
        Ok(pid) => println!("{target}: stopped (pid {pid})"),
        Err(e) if e.is_not_running() => println!("{target}: not running"),
        Err(Error::Timeout {
            pid: Some(pid),
            operation: "exit",
            ..
        }) => bail!(
            "{target}: still running {}s after it was asked to stop (pid {pid})",
            how.wait.as_secs_f64()
        ),
        Err(e @ Error::Unconfirmed { .. }) => {
            bail!(
                "{target}: --signal needs a local worker: {}",
                common::one_line(&e)
            )
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

fn killswitch(config: &Config, file: Option<PathBuf>, action: Action) -> anyhow::Result<bool> {
    let all_files = || -> anyhow::Result<Vec<PathBuf>> {
        let files = match &file {
            Some(file) => vec![file.clone()],
            None => config.kill_switches(),
        };
        if files.is_empty() {
            return Err(usage(format!(
                "no kill switch: give --file PATH, or kill_switch in the config ({})",
                config.path.display()
            )));
        }
        Ok(files)
    };
    // The workers named, by kill switch file.
    let by_file = |workers: &[String]| -> anyhow::Result<BTreeMap<PathBuf, Vec<String>>> {
        let mut by_file: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        for given in workers {
            let target = config.target(given).map_err(usage)?;
            let Some(path) = file.clone().or(target.kill_switch) else {
                return Err(usage(format!(
                    "{}: no kill switch: give --file PATH, or kill_switch in the config",
                    target.address
                )));
            };
            by_file.entry(path).or_default().push(target.address);
        }
        Ok(by_file)
    };
    let in_file = |path: &Path| format!("kill switch {}", path.display());
    match action {
        Action::Status => {
            for path in all_files()? {
                let state = KillSwitch::new(&path).state()?;
                println!(
                    "{}: disabled globally: {}; disabled addresses: {}",
                    path.display(),
                    if state.global { "yes" } else { "no" },
                    state.addresses.len()
                );
                for address in &state.addresses {
                    println!("  {address}");
                }
            }
        }
        Action::Disable(Which { global: true, .. }) => {
            for path in all_files()? {
                KillSwitch::new(&path).disable_globally()?;
                println!("{}: every shared worker disabled", in_file(&path));
            }
        }
        Action::Enable(Which { global: true, .. }) => {
            for path in all_files()? {
                KillSwitch::new(&path).re_enable_globally()?;
                println!("{}: no longer disabled globally", in_file(&path));
            }
        }
        Action::Disable(Which { workers, .. }) => {
            for (path, addresses) in by_file(&workers)? {
                KillSwitch::new(&path)
                    .disable_addresses(&addresses)
                    .with_context(|| format!("{}: cannot disable", addresses.join(", ")))?;
                for address in addresses {
                    println!("{address}: disabled in {}", path.display());
                }
            }
        }
        Action::Enable(Which { workers, .. }) => {
            for (path, addresses) in by_file(&workers)? {
                KillSwitch::new(&path)
                    .re_enable_addresses(&addresses)
                    .with_context(|| format!("{}: cannot enable", addresses.join(", ")))?;
                for address in addresses {
                    println!("{address}: enabled in {}", path.display());
                }
            }
        }
        Action::EnableAll => {
            for path in all_files()? {
                KillSwitch::new(&path).re_enable_all()?;
                println!("{}: every shared worker enabled", in_file(&path));
            }
        }
    }
    Ok(true)
}

/// One row of `list`.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    address: String,
    live: bool,
    pid: Option<u32>,
    local: bool,
    /// `None` without a kill switch, or when it cannot be read.
    disabled: Option<bool>,
    implementation: Option<String>,
    /// The status text (with `-l`).
    status: Option<String>,
    /// Why the worker could not be reached or queried.
    error: Option<String>,
    #[serde(skip)]
    reason: Option<String>,
    #[serde(skip)]
    kill_switch_error: Option<String>,
}

fn list(
    config: &Config,
    long: bool,
    json: bool,
    cookie: &CookieArg,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let targets = config.named()?;
    // Probed together, so that one silent worker costs the timeout once, not once each; a
    // probe stuck past it (a host name that does not resolve) is left behind.
    let (tx, rx) = mpsc::channel();
    for (i, target) in targets.iter().enumerate() {
        let cookie = if long {
            cookie_for(cookie, target).map_err(|e| common::one_line(e.as_ref()))
        } else {
            Ok(None)
        };
        let (tx, target) = (tx.clone(), target.clone());
        thread::spawn(move || {
            let _ = tx.send((i, probe(&target, long, cookie, timeout)));
        });
    }
    drop(tx);
    let mut rows: Vec<Option<Row>> = targets.iter().map(|_| None).collect();
    let grace = common::deadline(timeout.saturating_add(Duration::from_secs(1)));
    while let Ok((i, row)) = rx.recv_timeout(common::left(grace)) {
        rows[i] = Some(row);
    }
    let rows: Vec<Row> = rows
        .into_iter()
        .zip(targets)
        .map(|(row, target)| {
            row.unwrap_or_else(|| {
                let mut row = blank_row(target);
                row.reason = Some(no_answer(timeout));
                row.error = row.reason.clone();
                row
            })
        })
        .collect();
    let mut all_ok = true;
    for row in &rows {
        if let Some(e) = &row.kill_switch_error {
            eprintln!("worker-ctl: {}: {e}", row.address);
            all_ok = false;
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(all_ok);
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let mut table = vec![
        ["NAME", "ADDRESS", "LIVE", "PID", "WHERE", "DISABLED"]
            .into_iter()
            .chain(
                long.then_some(["IMPLEMENTATION", "STATUS"])
                    .into_iter()
                    .flatten(),
            )
            .map(str::to_owned)
            .collect::<Vec<_>>(),
    ];
    for row in &rows {
        let mut cells = vec![
            row.name.clone(),
            row.address.clone(),
            yes_no(row.live),
            row.pid.map_or("-".to_owned(), |p| p.to_string()),
            if row.local { "local" } else { "remote" }.to_owned(),
            match (row.disabled, &row.kill_switch_error) {
                (Some(d), _) => yes_no(d),
                (None, Some(_)) => "?".to_owned(),
                (None, None) => "-".to_owned(),
            },
        ];
        if long {
            cells.push(row.implementation.clone().unwrap_or_else(|| "-".to_owned()));
            cells.push(match (&row.status, &row.reason) {
                (_, Some(reason)) => reason.clone(),
                (Some(text), None) => text.lines().next().unwrap_or("-").to_owned(),
                (None, None) => "-".to_owned(),
            });
        }
        table.push(cells);
    }
    print!("{}", columns(&table));
    Ok(all_ok)
}

fn blank_row(target: &Target) -> Row {
    Row {
        name: target.name.clone().unwrap_or_default(),
        address: target.address.clone(),
        live: false,
        pid: None,
        local: is_local(&target.address),
        disabled: None,
        implementation: None,
        status: None,
        error: None,
        reason: None,
        kill_switch_error: None,
    }
}

fn no_answer(timeout: Duration) -> String {
    format!("no answer within {}s", timeout.as_secs_f64())
}

/// What `list` says of one worker.
fn probe(
    target: &Target,
    long: bool,
    cookie: Result<Option<AdminCookie>, String>,
    timeout: Duration,
) -> Row {
    let mut row = blank_row(target);
    if let Some(path) = &target.kill_switch {
        match KillSwitch::new(path).is_disabled(&target.address) {
            Ok(disabled) => row.disabled = Some(disabled),
            Err(e) => row.kill_switch_error = Some(common::one_line(&e)),
        }
    }
    let deadline = common::deadline(timeout);
    let mut worker = match common::connect(&target.address, deadline) {
        Ok(worker) => worker,
        Err(e) => {
            row.reason = Some(match &e {
                Error::Connect { source, .. }
                    if matches!(
                        source.kind(),
                        IoErrorKind::ConnectionRefused | IoErrorKind::NotFound
                    ) =>
                {
                    "not running".to_owned()
                }
                Error::Connect { .. } => "unreachable".to_owned(),
                Error::Timeout { .. } => no_answer(timeout),
                other => common::one_line(other),
            });
            row.error = Some(common::one_line(&e));
            return row;
        }
    };
    row.live = true;
    row.pid = Some(worker.pid());
    row.implementation = Some(worker.implementation().to_owned());
    if !long {
        return row;
    }
    let reply = cookie.and_then(|cookie| {
        worker.set_control_timeout(common::left(deadline));
        match &cookie {
            Some(cookie) => worker.query_privileged(cookie),
            None => worker.query(),
        }
        .map_err(|e| common::one_line(&e))
    });
    match reply {
        Ok(reply) => row.status = Some(reply.status.unwrap_or_default().text().to_owned()),
        Err(e) => {
            row.reason = Some(e.clone());
            row.error = Some(e);
        }
    }
    row
}

/// Cells in columns two spaces apart, the last one unpadded.
fn columns(table: &[Vec<String>]) -> String {
    let count = table.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..count)
        .map(|i| {
            table
                .iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in table {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == count {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
