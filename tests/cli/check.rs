//! `check_shared_worker`: states, exact status lines and performance data, timeouts, cookies.

use std::{io::Write, os::unix::net::UnixListener};

use exsyst_worker::{
    Codec, SharedServerConfig,
    worker::{Counter, Threshold, WorkerStatus},
};

use crate::support::{
    Program, Run, SECRET, address_in, command_lines, cookie, secret_file, serve, serve_with,
    timeout,
};

fn range(text: &str) -> Threshold {
    text.parse().unwrap()
}

/// Counters with and without a unit, a minimum and a maximum, and one without a value.
fn busy() -> WorkerStatus {
    WorkerStatus::new("3 jobs running")
        .with_counter(Counter::new("jobs", 3.0).with_max(8.0))
        .with_counter(Counter::new("queue", 1.5e6).with_unit("B").with_min(0.0))
        .with_counter(Counter::new("ratio", 0.25))
        .with_counter(Counter::undetermined("last run").with_unit("s"))
}

const BUSY_PERFDATA: &str = "'jobs'=3;;;;8 'queue'=1500000B;;;0 'ratio'=0.25 'last run'=U";

fn check(address: &str, args: &[&str]) -> Run {
    Program::check().args([address]).args(args).run()
}

fn assert_output(run: &Run, code: i32, stdout: &str) {
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (code, stdout, ""),
        "{run:?}"
    );
}

#[test]
fn ok_lists_every_counter_as_performance_data() {
    let dir = tempfile::tempdir().unwrap();
    let address = address_in(dir.path(), "worker");
    let _server = serve(&address, busy(), busy());
    assert_output(
        &check(&address, &[]),
        0,
        &format!("SHARED-WORKER OK - 3 jobs running | {BUSY_PERFDATA}\n"),
    );
}

#[test]
fn ranges_on_the_command_line_give_warning_and_critical() {
    let dir = tempfile::tempdir().unwrap();
    let address = address_in(dir.path(), "worker");
    let _server = serve(&address, busy(), busy());
    assert_output(
        &check(&address, &["-m", "jobs", "-w", "2"]),
        1,
        "SHARED-WORKER WARNING - jobs=3 (warning 2); 3 jobs running | 'jobs'=3;2;;;8 \
         'queue'=1500000B;;;0 'ratio'=0.25 'last run'=U\n",
    );
    assert_output(
        &check(
            &address,
            &[
                "-m", "jobs", "-m", "queue", "-w", "2", "-w", "", "-c", "5", "-c", "1000000",
            ],
        ),
        2,
        "SHARED-WORKER CRITICAL - queue=1500000B (critical 1000000), jobs=3 (warning 2); 3 jobs \
         running | 'jobs'=3;2;5;;8 'queue'=1500000B;;1000000;0 'ratio'=0.25 'last run'=U\n",
    );
    assert_output(
        &check(&address, &["--counter", "ratio", "--critical", "@0.2:0.3"]),
        2,
        "SHARED-WORKER CRITICAL - ratio=0.25 (critical @0.2:0.3); 3 jobs running | 'jobs'=3;;;;8 \
         'queue'=1500000B;;;0 'ratio'=0.25;;@0.2:0.3 'last run'=U\n",
    );
    // Negative bounds are ranges, not options.
    assert_output(
        &check(&address, &["-m", "jobs", "-w", "-1:2", "-c", "-5:-1"]),
        2,
        "SHARED-WORKER CRITICAL - jobs=3 (critical -5:-1); 3 jobs running | 'jobs'=3;-1:2;-5:-1;;8 \
         'queue'=1500000B;;;0 'ratio'=0.25 'last run'=U\n",
    );
    // Within every range, boundaries included: OK, the ranges in the performance data.
    assert_output(
        &check(
            &address,
            &[
                "-m", "jobs", "-m", "ratio", "-w", "3", "-w", "~:0.25", "-c", "3:8", "-c", "",
            ],
        ),
        0,
        "SHARED-WORKER OK - 3 jobs running | 'jobs'=3;3;3:8;;8 'queue'=1500000B;;;0 \
         'ratio'=0.25;~:0.25 'last run'=U\n",
    );
}

#[test]
fn a_counter_missing_or_without_value_is_unknown_above_critical() {
    let dir = tempfile::tempdir().unwrap();
    let address = address_in(dir.path(), "worker");
    let _server = serve(&address, busy(), busy());
    assert_output(
        &check(
            &address,
            &[
                "-m", "jobs", "-m", "nope", "-m", "last run", "-c", "1", "-c", "", "-c", "",
            ],
        ),
        3,
        "SHARED-WORKER UNKNOWN - counter 'nope' missing from the reply, counter 'last run' has \
         no value, jobs=3 (critical 1); 3 jobs running | 'jobs'=3;;1;;8 'queue'=1500000B;;;0 \
         'ratio'=0.25 'last run'=U\n",
    );
}

#[test]
fn the_workers_own_ranges_count_unless_the_command_line_gives_others() {
    let dir = tempfile::tempdir().unwrap();
    let address = address_in(dir.path(), "worker");
    let status = WorkerStatus::new("loaded").with_counter(
        Counter::new("load", 0.9)
            .with_warning(range("~:0.8"))
            .with_critical(range("~:0.95")),
    );
    let _server = serve(&address, status.clone(), status);
    assert_output(
        &check(&address, &[]),
        1,
        "SHARED-WORKER WARNING - load=0.9 (warning ~:0.8); loaded | 'load'=0.9;~:0.8;~:0.95\n",
    );
    assert_output(
        &check(&address, &["-m", "load", "-w", "1"]),
        0,
        "SHARED-WORKER OK - loaded | 'load'=0.9;1;~:0.95\n",
    );
}

#[test]
fn a_multi_line_status_is_laid_out_as_the_guidelines_say() {
    let dir = tempfile::tempdir().unwrap();
    let address = address_in(dir.path(), "worker");
    let status = WorkerStatus::new("2 queues | busy\nmail: 5 waiting\nsms: 0 waiting\n")
        .with_counter(Counter::new("mail", 5.0))
        .with_counter(Counter::new("sms", 0.0))
        .with_counter(Counter::new("total", 5.0).with_unit("c"));
    let _server = serve(&address, status.clone(), status);
    assert_output(
        &check(&address, &[]),
        0,
        "SHARED-WORKER OK - 2 queues  busy | 'mail'=5\n\
         mail: 5 waiting\n\
         sms: 0 waiting | 'sms'=0\n\
         'total'=5c\n",
    );
}

#[test]
fn a_json_worker_is_checked_in_its_own_codec() {
    let dir = tempfile::tempdir().unwrap();
    let address = address_in(dir.path(), "json");
    let config = SharedServerConfig::default()
        .with_cookie(cookie())
        .with_codec(Codec::Json);
    let _server = serve_with(&address, config, busy(), busy());
    assert_output(
        &check(&address, &["-m", "jobs", "-c", "2"]),
        2,
        &format!(
            "SHARED-WORKER CRITICAL - jobs=3 (critical 2); 3 jobs running | {}\n",
            BUSY_PERFDATA.replace("'jobs'=3;;;;8", "'jobs'=3;;2;;8")
        ),
    );
}

#[test]
fn no_worker_there_is_critical() {
    let dir = tempfile::tempdir().unwrap();
    let absent = address_in(dir.path(), "absent");
    assert_output(
        &check(&absent, &[]),
        2,
        &format!(
            "SHARED-WORKER CRITICAL - cannot connect to shared worker at {absent}: No such file \
             or directory (os error 2)\n"
        ),
    );
    // A socket file that nobody listens on any more: connection refused.
    let stale = address_in(dir.path(), "stale");
    drop(UnixListener::bind(dir.path().join("stale.sock")).unwrap());
    assert_output(
        &check(&stale, &[]),
        2,
        &format!(
            "SHARED-WORKER CRITICAL - cannot connect to shared worker at {stale}: Connection \
             refused (os error 111)\n"
        ),
    );
}

#[test]
fn a_timeout_longer_than_the_clock_holds_means_no_deadline_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let absent = address_in(dir.path(), "absent");
    let expected = format!(
        "SHARED-WORKER CRITICAL - cannot connect to shared worker at {absent}: No such file or \
         directory (os error 2)\n"
    );
    for timeout in ["1e19", "inf", "1e300:WARNING"] {
        assert_output(&check(&absent, &["-t", timeout]), 2, &expected);
    }
    let run = Program::ctl()
        .args(["--timeout", "1e19", "pid", absent.as_str()])
        .run();
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            format!(
                "worker-ctl: cannot connect to shared worker at {absent}: No such file or \
                 directory (os error 2)\n"
            )
            .as_str()
        ),
        "{run:?}"
    );
}

#[test]
fn a_malformed_reply_is_unknown_and_says_what_was_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let address = address_in(dir.path(), "garbage");
    let listener = UnixListener::bind(dir.path().join("garbage.sock")).unwrap();
    let child = Program::check().args([address.as_str()]).spawn();
    let (mut stream, _) = listener.accept().unwrap();
    stream
        .write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        format!(
            "SHARED-WORKER UNKNOWN - channel to shared worker at {address} failed: frame of \
             1213486160 bytes exceeds the limit of 16777216 bytes\n"
        )
    );
}

#[test]
fn a_worker_that_never_answers_gives_the_timeout_state_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let address = address_in(dir.path(), "silent");
    let listener = UnixListener::bind(dir.path().join("silent.sock")).unwrap();
    for (args, code, state) in [
        (["-t", "1"], 2, "CRITICAL"),
        (["-t", "1.5:unknown"], 3, "UNKNOWN"),
        (["--timeout", "1:OK"], 0, "OK"),
    ] {
        let seconds: f64 = args[1].split(':').next().unwrap().parse().unwrap();
        let started = std::time::Instant::now();
        let child = Program::check().args([address.as_str()]).args(args).spawn();
        // Accepted, then never a word.
        let (_held, _) = listener.accept().unwrap();
        let output = child.wait_with_output().unwrap();
        let elapsed = started.elapsed();
        assert_eq!(output.status.code(), Some(code));
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            format!(
                "SHARED-WORKER {state} - shared worker at {address} did not answer within \
                 {}s\n",
                args[1].split(':').next().unwrap()
            )
        );
        assert!(
            elapsed.as_secs_f64() >= seconds,
            "reported after {elapsed:?}, before the timeout"
        );
        assert!(
            elapsed < std::time::Duration::from_secs_f64(seconds) + timeout(5.0),
            "reported after {elapsed:?}"
        );
    }
}

#[test]
fn the_privileged_status_needs_the_admin_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let address = address_in(dir.path(), "worker");
    let _server = serve(
        &address,
        "public view".into(),
        WorkerStatus::new("privileged view").with_counter(Counter::new("secrets", 2.0)),
    );
    let cookie_file = secret_file(dir.path(), "cookie", SECRET, 0o600);
    let cookie_file = cookie_file.to_str().unwrap();
    assert_output(&check(&address, &[]), 0, "SHARED-WORKER OK - public view\n");
    let privileged = "SHARED-WORKER OK - privileged view | 'secrets'=2\n";
    assert_output(
        &check(&address, &["--admin-cookie-file", cookie_file]),
        0,
        privileged,
    );
    let from_env = Program::check()
        .args([address.as_str()])
        .env("EXSYST_WORKER_ADMIN_COOKIE", SECRET)
        .run();
    assert_output(&from_env, 0, privileged);
    assert_output(&check(&address, &["-a", SECRET]), 0, privileged);
}

#[test]
fn a_wrong_or_exposed_cookie_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let address = address_in(dir.path(), "worker");
    let _server = serve(&address, busy(), busy());
    let pid = std::process::id();
    let wrong = secret_file(dir.path(), "wrong", "not the cookie", 0o600);
    assert_output(
        &check(&address, &["--admin-cookie-file", wrong.to_str().unwrap()]),
        3,
        &format!(
            "SHARED-WORKER UNKNOWN - shared worker at {address} (pid {pid}) refused the admin \
             cookie\n"
        ),
    );
    let exposed = secret_file(dir.path(), "exposed", SECRET, 0o644);
    assert_output(
        &check(
            &address,
            &["--admin-cookie-file", exposed.to_str().unwrap()],
        ),
        3,
        &format!(
            "SHARED-WORKER UNKNOWN - admin cookie file {} is accessible to group or others \
             (mode 0644); allow its owner only (chmod 600)\n",
            exposed.display()
        ),
    );
}

#[test]
fn bad_arguments_are_unknown_and_say_which() {
    let dir = tempfile::tempdir().unwrap();
    let address = address_in(dir.path(), "worker");
    for (args, message) in [
        (
            vec![address.as_str(), "-m", "a", "-w", "1", "-w", "2"],
            "2 -w/--warning for 1 -m/--counter; give one per counter, in the same order, or none",
        ),
        (
            vec![address.as_str(), "-m", "a", "-m", "a"],
            "counter 'a' is given twice with -m/--counter",
        ),
        (
            vec![address.as_str(), "-m", "a", "-c", "20:10"],
            "invalid value '20:10' for '--critical <RANGE>': threshold range starts above its end",
        ),
        (
            vec![address.as_str(), "-t", "0"],
            "invalid value '0' for '--timeout <SECONDS[:STATE]>': \"0\" is not a positive number \
             of seconds",
        ),
        (
            vec![address.as_str(), "-t", "5:MAYBE"],
            "invalid value '5:MAYBE' for '--timeout <SECONDS[:STATE]>': unknown state \"MAYBE\" \
             (expected OK, WARNING, CRITICAL or UNKNOWN)",
        ),
        (
            vec!["http://x"],
            "invalid shared worker address \"http://x\": unsupported scheme (expected unix:// or \
             tcp://)",
        ),
        (
            vec![],
            "the following required arguments were not provided: <ADDRESS>",
        ),
    ] {
        let run = Program::check().args(&args).run();
        assert_output(
            &run,
            3,
            &format!("SHARED-WORKER UNKNOWN - bad argument: {message}\n"),
        );
    }
    let help = Program::check().args(["--help"]).run();
    assert_eq!(
        help.code, 3,
        "--help exits UNKNOWN, as the Monitoring Plugins do"
    );
    assert!(help.stdout.contains("Examples:\n"), "{}", help.stdout);
}

/// While a check, a query and a stop wait on a worker that never answers, neither they nor a
/// process of theirs show the cookie on a command line, unless it was given with `-a`.
#[test]
fn no_secret_shows_on_a_command_line_unless_given_with_dash_a() {
    let dir = tempfile::tempdir().unwrap();
    let address = address_in(dir.path(), "silent");
    let listener = UnixListener::bind(dir.path().join("silent.sock")).unwrap();
    let cookie_file = secret_file(dir.path(), "cookie", SECRET, 0o600);
    let cookie_file = cookie_file.to_str().unwrap();
    let runs = [
        Program::check().args([
            address.as_str(),
            "-t",
            "1",
            "--admin-cookie-file",
            cookie_file,
        ]),
        Program::check()
            .args([address.as_str(), "-t", "1"])
            .env("EXSYST_WORKER_ADMIN_COOKIE", SECRET),
        Program::ctl().args([
            "--timeout",
            "1",
            "query",
            address.as_str(),
            "--admin-cookie-file",
            cookie_file,
        ]),
        Program::ctl()
            .args(["--timeout", "1", "stop", address.as_str()])
            .env("EXSYST_WORKER_ADMIN_COOKIE", SECRET),
    ];
    for program in runs {
        let child = program.spawn();
        let (_held, _) = listener.accept().unwrap();
        let lines = command_lines(child.id());
        assert!(
            lines.iter().any(|(pid, _)| *pid == child.id()),
            "the program is among the processes looked at: {lines:?}"
        );
        for (pid, line) in &lines {
            assert!(!line.contains(SECRET), "pid {pid} shows the secret: {line}");
        }
        let output = child.wait_with_output().unwrap();
        assert_ne!(output.status.code(), Some(0));
    }
    // The look would see it: `-a` shows it, as its help warns.
    let child = Program::check()
        .args([address.as_str(), "-t", "1", "-a", SECRET])
        .spawn();
    let (_held, _) = listener.accept().unwrap();
    let lines = command_lines(child.id());
    assert!(
        lines
            .iter()
            .any(|(pid, line)| *pid == child.id() && line.contains(SECRET)),
        "{lines:?}"
    );
    child.wait_with_output().unwrap();
}
