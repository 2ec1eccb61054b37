//! `check_shared_worker`: a Monitoring Plugins (Nagios, Icinga, Naemon) check of a shared
//! worker, compatible with the seed's `bin/check_shared_worker`.
//!
//! It prints `SHARED-WORKER OK|WARNING|CRITICAL|UNKNOWN - <text>` with the performance data of
//! every counter the worker reports, and exits 0, 1, 2 or 3. See `--help`.

#![forbid(unsafe_code)]

#[path = "../common/mod.rs"]
mod common;
mod plugin;

use std::{
    io::Write,
    path::PathBuf,
    process,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use clap::{Parser, error::ErrorKind};
use exsyst_worker::{killswitch::Address, shared::Error, worker::Threshold};

use crate::plugin::{Asked, Report, State};

const ABOUT: &str = "\
Checks a shared worker for a monitoring system (the Monitoring Plugins' conventions).

Prints `SHARED-WORKER STATE - text | performance data` and exits 0 (OK), 1 (WARNING), \
2 (CRITICAL) or 3 (UNKNOWN). Performance data lists every counter the worker reports, as \
'name'=value[unit];warn;crit;min;max.

Each counter of the reply is checked against the ranges given for it with -m/-w/-c, or else \
against the warning and critical ranges the worker attached to it. A worker that cannot be \
reached is CRITICAL; a counter asked for that the reply lacks or leaves without a value, a \
reply that breaks the protocol, a refused admin cookie or a bad argument is UNKNOWN.";

const EXAMPLES: &str = "\
Ranges (Monitoring Plugins syntax): 10 alerts outside 0..10, 10: below 10, ~:10 above 10, \
10:20 outside 10..20, @10:20 inside 10..20 (bounds included); an empty range gives none.

Examples:
  # OK while the worker answers, with the performance data of all its counters
  check_shared_worker unix:///run/app/worker.sock

  # WARNING above 6 jobs or below 2 idle workers, CRITICAL above 8 jobs or none idle
  check_shared_worker unix:///run/app/worker.sock -m jobs -m idle -w 6 -w 2: -c 8 -c 1:

  # The privileged status, the admin cookie read from a file only its owner can read
  check_shared_worker tcp://10.0.0.5:7000 --admin-cookie-file /etc/app/admin-cookie

  # The same with the cookie in the environment; a worker silent for 5 s is UNKNOWN
  EXSYST_WORKER_ADMIN_COOKIE=... check_shared_worker unix:///run/app/worker.sock -t 5:UNKNOWN";

/// A Monitoring Plugins check of a shared worker.
#[derive(Debug, Parser)]
#[command(name = "check_shared_worker", version, about = ABOUT, after_help = EXAMPLES)]
struct Args {
    /// The worker's address.
    #[arg(
        help = "The worker's address: unix:///absolute/path, tcp://host:port or tcp://[ipv6]:port"
    )]
    address: String,

    /// A counter to check against the next -w and -c ranges (repeatable)
    #[arg(short = 'm', long = "counter", value_name = "NAME")]
    counters: Vec<String>,

    /// The warning range of each counter, once per -m in the same order, or not at all
    #[arg(
        short = 'w',
        long = "warning",
        value_name = "RANGE",
        value_parser = parse_range,
        allow_hyphen_values = true
    )]
    warnings: Vec<Range>,

    /// The critical range of each counter, once per -m in the same order, or not at all
    #[arg(
        short = 'c',
        long = "critical",
        value_name = "RANGE",
        value_parser = parse_range,
        allow_hyphen_values = true
    )]
    criticals: Vec<Range>,

    /// Time for the whole check, and the state when it runs out (CRITICAL unless given)
    #[arg(
        short = 't',
        long = "timeout",
        value_name = "SECONDS[:STATE]",
        default_value = "10",
        value_parser = parse_timeout
    )]
    timeout: Timeout,

    /// Queries with privilege, with the admin cookie in this file (owner-only permissions)
    #[arg(long, value_name = "PATH", conflicts_with = "admin_cookie")]
    admin_cookie_file: Option<PathBuf>,

    /// The admin cookie itself. UNSAFE: it shows in `ps` to every user of the machine; prefer
    /// --admin-cookie-file or $EXSYST_WORKER_ADMIN_COOKIE (accepted for the seed's plugin)
    #[arg(short = 'a', long, value_name = "VALUE")]
    admin_cookie: Option<String>,
}

/// A range given with `-w` or `-c`; empty for none.
#[derive(Clone, Copy, Debug)]
struct Range(Option<Threshold>);

fn parse_range(text: &str) -> Result<Range, String> {
    if text.is_empty() {
        return Ok(Range(None));
    }
    text.parse()
        .map(|t| Range(Some(t)))
        .map_err(|e| format!("{e}"))
}

/// `-t SECONDS[:STATE]`.
#[derive(Clone, Copy, Debug)]
struct Timeout {
    seconds: f64,
    state: State,
}

fn parse_timeout(text: &str) -> Result<Timeout, String> {
    let (seconds, state) = match text.split_once(':') {
        Some((seconds, state)) => (seconds, state.parse()?),
        None => (text, State::Critical),
    };
    match common::timeout_seconds(seconds) {
        Some(timeout) => Ok(Timeout {
            seconds: timeout.as_secs_f64(),
            state,
        }),
        None => Err(format!("{seconds:?} is not a positive number of seconds")),
    }
}

fn main() {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            // As the Monitoring Plugins do for --help and --version.
            process::exit(State::Unknown.code());
        }
        Err(e) => emit(&bad_argument(&usage_message(&e))),
    };
    emit(&check(&args))
}

fn bad_argument(message: &str) -> Report {
    Report::failure(State::Unknown, &format!("bad argument: {message}"))
}

/// Clap's message without its `error:` prefix, usage and hints, on one line.
fn usage_message(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let message = rendered.split("\n\n").next().unwrap_or("");
    let message = message.strip_prefix("error: ").unwrap_or(message);
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn check(args: &Args) -> Report {
    let started = Instant::now();
    let address = match Address::parse(&args.address) {
        Ok(address) => address.to_string(),
        Err(e) => return bad_argument(&common::one_line(&e)),
    };
    let asked = match pair_up(args) {
        Ok(asked) => asked,
        Err(message) => return bad_argument(&message),
    };
    // The deadline covers everything from here; the watchdog enforces it even where a call
    // cannot be bounded (a host name's resolution).
    let deadline = started
        .checked_add(Duration::from_secs_f64(args.timeout.seconds))
        .unwrap_or_else(|| common::deadline(Duration::MAX));
    let timed_out = Report::failure(
        args.timeout.state,
        &format!(
            "shared worker at {address} did not answer within {}s",
            args.timeout.seconds
        ),
    );
    watchdog(deadline, timed_out.clone());

    let cookie = match common::admin_cookie(
        args.admin_cookie_file.as_deref(),
        args.admin_cookie.as_deref(),
    ) {
        Ok(cookie) => cookie,
        Err(e) => return Report::failure(State::Unknown, &common::one_line(&e)),
    };
    match common::query(&address, cookie.as_ref(), deadline) {
        Ok((_, reply)) => plugin::assess(&reply.status.unwrap_or_default(), &asked),
        Err(Error::Timeout { .. }) => timed_out,
        Err(e) => Report::failure(state_of(&e), &common::one_line(&e)),
    }
}

/// Pairs each `-m` with its `-w` and `-c`.
fn pair_up(args: &Args) -> Result<Vec<Asked>, String> {
    let n = args.counters.len();
    for (option, given) in [
        ("-w/--warning", args.warnings.len()),
        ("-c/--critical", args.criticals.len()),
    ] {
        if given != 0 && given != n {
            return Err(format!(
                "{given} {option} for {n} -m/--counter; give one per counter, in the same \
                 order, or none"
            ));
        }
    }
    let mut asked: Vec<Asked> = Vec::with_capacity(n);
    for (i, name) in args.counters.iter().enumerate() {
        if asked.iter().any(|a| &a.name == name) {
            return Err(format!("counter '{name}' is given twice with -m/--counter"));
        }
        asked.push(Asked {
            name: name.clone(),
            warning: args.warnings.get(i).and_then(|r| r.0),
            critical: args.criticals.get(i).and_then(|r| r.0),
        });
    }
    Ok(asked)
}

/// How bad a failure to check is: a worker that cannot be reached (or that is not who it
/// claims) is CRITICAL; anything that says the check itself is wrong (a refused cookie, a
/// protocol it does not speak) is UNKNOWN.
fn state_of(error: &Error) -> State {
    match error {
        Error::Connect { .. }
        | Error::Closed { .. }
        | Error::Stopping { .. }
        | Error::Io { .. }
        | Error::Timeout { .. }
        | Error::UntrustedServer { .. }
        | Error::ServerNotAuthenticated { .. } => State::Critical,
        _ => State::Unknown,
    }
}

/// Reports `report` once `deadline` passes, unless the check reported first.
fn watchdog(deadline: Instant, report: Report) {
    thread::spawn(move || {
        loop {
            let left = common::left(deadline);
            if left.is_zero() {
                break;
            }
            thread::sleep(left);
        }
        emit(&report)
    });
}

/// Prints `report` and exits with its state; the first of the check and its watchdog to get
/// here does, the other waits for the exit.
fn emit(report: &Report) -> ! {
    static EMITTED: AtomicBool = AtomicBool::new(false);
    if EMITTED.swap(true, Ordering::SeqCst) {
        loop {
            thread::park();
        }
    }
    let mut out = std::io::stdout().lock();
    for line in &report.lines {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
    process::exit(report.state.code())
}
