//! `worker-ctl`: query, pid, stop, the kill switch, and the list of named workers.

use std::path::Path;

use exsyst_worker::{
    KillSwitch,
    worker::{Counter, WorkerStatus},
};
use serde_json::json;

use crate::support::{
    Helper, Program, Run, SECRET, address_in, columns, command_lines, secret_file, serve,
};

fn ctl(args: &[&str]) -> Run {
    Program::ctl().args(args).run()
}

fn assert_output(run: &Run, code: i32, stdout: &str, stderr: &str) {
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (code, stdout, stderr),
        "{run:?}"
    );
}

fn status() -> WorkerStatus {
    WorkerStatus::new("3 jobs running")
        .with_counter(Counter::new("jobs", 3.0).with_max(8.0))
        .with_counter(Counter::undetermined("last run").with_unit("s"))
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("workers.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

#[test]
fn query_prints_the_status_as_text_or_json_and_pid_the_pid() {
    let dir = tempfile::tempdir().unwrap();
    let address = address_in(dir.path(), "worker");
    let _server = serve(&address, "public view".into(), status());
    let pid = std::process::id();
    assert_output(
        &ctl(&["query", &address]),
        0,
        &format!("{address}: reporter, pid {pid}, public status\npublic view\n"),
        "",
    );
    let cookie_file = secret_file(dir.path(), "cookie", SECRET, 0o600);
    let cookie_file = cookie_file.to_str().unwrap();
    assert_output(
        &ctl(&["query", &address, "--admin-cookie-file", cookie_file]),
        0,
        &format!(
            "{address}: reporter, pid {pid}, privileged status\n3 jobs running\njobs: 3 (max \
             8)\nlast run: undetermined s\n"
        ),
        "",
    );
    let json = ctl(&[
        "query",
        &address,
        "--format",
        "json",
        "--admin-cookie-file",
        cookie_file,
    ]);
    assert_eq!((json.code, json.stderr.as_str()), (0, ""));
    let reply: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(
        reply,
        json!({
            "address": address,
            "implementation": "reporter",
            "pid": pid,
            "codec": "messagepack",
            "privileged": true,
            "status": {
                "text": "3 jobs running",
                "counters": [
                    {"name": "jobs", "value": 3.0, "unit": null, "min": null, "max": 8.0,
                     "warning": null, "critical": null},
                    {"name": "last run", "value": null, "unit": "s", "min": null, "max": null,
                     "warning": null, "critical": null},
                ],
            },
        })
    );
    assert_output(&ctl(&["pid", &address]), 0, &format!("{pid}\n"), "");
    let absent = address_in(dir.path(), "absent");
    assert_output(
        &ctl(&["pid", &absent]),
        1,
        "",
        &format!(
            "worker-ctl: cannot connect to shared worker at {absent}: No such file or directory \
             (os error 2)\n"
        ),
    );
}

#[test]
fn stop_disable_leaves_the_address_disabled_and_the_worker_gone() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("worker.sock");
    let address = address_in(dir.path(), "worker");
    let cookie_file = secret_file(dir.path(), "cookie", SECRET, 0o600);
    let kill_switch = dir.path().join("kill-switch.json");
    let helper = Helper::start(&address, &cookie_file);
    let pid = helper.pid();
    for (p, line) in command_lines(pid) {
        assert!(!line.contains(SECRET), "pid {p} shows the secret: {line}");
    }
    let stop = [
        "stop",
        "--disable",
        &address,
        "--kill-switch",
        kill_switch.to_str().unwrap(),
        "--admin-cookie-file",
        cookie_file.to_str().unwrap(),
    ];
    assert_output(
        &ctl(&stop),
        0,
        &format!(
            "{address}: disabled in {}\n{address}: stopped (pid {pid})\n",
            kill_switch.display()
        ),
        "",
    );
    // Gone when the command returned: it reported its end, and only its exit status is left.
    assert_eq!(helper.expect("exit"), "Ok(())");
    assert!(helper.wait().success());
    assert!(!exists(&socket), "the socket file is gone");
    assert!(KillSwitch::new(&kill_switch).is_disabled(&address).unwrap());
    // Again: nothing to stop, still disabled.
    assert_output(
        &ctl(&stop),
        0,
        &format!(
            "{address}: disabled in {}\n{address}: not running\n",
            kill_switch.display()
        ),
        "",
    );
}

#[test]
fn stop_signal_stops_a_local_worker_without_the_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let address = address_in(dir.path(), "worker");
    let cookie_file = secret_file(dir.path(), "cookie", SECRET, 0o600);
    let helper = Helper::start(&address, &cookie_file);
    let pid = helper.pid();
    assert_output(
        &ctl(&["stop", &address, "--signal", "TERM"]),
        0,
        &format!("{address}: stopped (pid {pid})\n"),
        "",
    );
    assert_eq!(helper.expect("exit"), "Ok(())");
    assert!(helper.wait().success());
}

#[test]
fn stop_needs_the_right_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let address = address_in(dir.path(), "worker");
    let _server = serve(&address, "up".into(), "up".into());
    let pid = std::process::id();
    assert_output(
        &ctl(&["stop", &address]),
        2,
        "",
        &format!(
            "worker-ctl: {address}: no admin cookie to stop it: give --admin-cookie-file PATH, \
             set admin_cookie_file in the config or $EXSYST_WORKER_ADMIN_COOKIE, or --signal \
             TERM for a local worker\n"
        ),
    );
    let wrong = secret_file(dir.path(), "wrong", "not the cookie", 0o600);
    assert_output(
        &ctl(&[
            "stop",
            &address,
            "--admin-cookie-file",
            wrong.to_str().unwrap(),
        ]),
        1,
        "",
        &format!("worker-ctl: shared worker at {address} (pid {pid}) refused the admin cookie\n"),
    );
    // Still serving.
    assert_eq!(ctl(&["pid", &address]).stdout, format!("{pid}\n"));
}

#[test]
fn stop_all_stops_every_named_worker() {
    let dir = tempfile::tempdir().unwrap();
    let cookie_file = secret_file(dir.path(), "cookie", SECRET, 0o600);
    let live = address_in(dir.path(), "live");
    let stopped = address_in(dir.path(), "stopped");
    let config = write_config(
        dir.path(),
        &format!(
            "admin_cookie_file = \"cookie\"\nkill_switch = \"ks.json\"\n\
             [workers.a-live]\naddress = \"{live}\"\n\
             [workers.b-stopped]\naddress = \"{stopped}\"\n"
        ),
    );
    let helper = Helper::start(&live, &cookie_file);
    let pid = helper.pid();
    let ks = dir.path().join("ks.json");
    assert_output(
        &ctl(&["--config", &config, "stop-all", "--disable"]),
        0,
        &format!(
            "{live}: disabled in {ks}\n{live}: stopped (pid {pid})\n\
             {stopped}: disabled in {ks}\n{stopped}: not running\n",
            ks = ks.display()
        ),
        "",
    );
    assert_eq!(helper.expect("exit"), "Ok(())");
    assert!(helper.wait().success());
    let switch = KillSwitch::new(&ks);
    assert_eq!(switch.disabled_addresses().unwrap(), [live, stopped]);
}

#[test]
fn killswitch_reads_and_changes_the_files_of_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let ks1 = dir.path().join("ks1.json");
    let ks2 = dir.path().join("ks2.json");
    let (ks1s, ks2s) = (ks1.display().to_string(), ks2.display().to_string());
    let w1 = address_in(dir.path(), "w1");
    let w2 = address_in(dir.path(), "w2");
    let other = address_in(dir.path(), "other");
    let config = write_config(
        dir.path(),
        &format!(
            "kill_switch = \"ks1.json\"\n\
             [workers.w1]\naddress = \"{w1}\"\n\
             [workers.w2]\naddress = \"{w2}\"\nkill_switch = \"ks2.json\"\n"
        ),
    );
    let ks = |args: &[&str]| {
        Program::ctl()
            .args(["--config", config.as_str(), "killswitch"])
            .args(args)
            .run()
    };
    assert_output(
        &ks(&["status"]),
        0,
        &format!(
            "{ks1s}: disabled globally: no; disabled addresses: 0\n\
             {ks2s}: disabled globally: no; disabled addresses: 0\n"
        ),
        "",
    );
    assert_output(
        &ks(&["disable", "w1", &other, "w2"]),
        0,
        &format!(
            "{w1}: disabled in {ks1s}\n{other}: disabled in {ks1s}\n{w2}: disabled in {ks2s}\n"
        ),
        "",
    );
    assert_output(
        &ks(&["--file", &ks1s, "disable", "--global"]),
        0,
        &format!("kill switch {ks1s}: every shared worker disabled\n"),
        "",
    );
    let mut both = [other.clone(), w1.clone()];
    both.sort();
    assert_output(
        &ks(&["status"]),
        0,
        &format!(
            "{ks1s}: disabled globally: yes; disabled addresses: 2\n  {}\n  {}\n\
             {ks2s}: disabled globally: no; disabled addresses: 1\n  {w2}\n",
            both[0], both[1]
        ),
        "",
    );
    assert_output(
        &ks(&["enable", "w1"]),
        0,
        &format!("{w1}: enabled in {ks1s}\n"),
        "",
    );
    assert_output(
        &ks(&["enable", "--global"]),
        0,
        &format!(
            "kill switch {ks1s}: no longer disabled globally\n\
             kill switch {ks2s}: no longer disabled globally\n"
        ),
        "",
    );
    assert_eq!(KillSwitch::new(&ks1).disabled_addresses().unwrap(), [other]);
    assert_output(
        &ks(&["enable-all"]),
        0,
        &format!(
            "kill switch {ks1s}: every shared worker enabled\n\
             kill switch {ks2s}: every shared worker enabled\n"
        ),
        "",
    );
    assert!(!KillSwitch::new(&ks2).is_disabled(&w2).unwrap());
    // Usage errors: exit 2.
    assert_eq!(ks(&["disable"]).code, 2);
    assert_eq!(ks(&["disable", "--global", "w1"]).code, 2);
    assert_output(
        &ks(&["disable", "nobody"]),
        2,
        "",
        &format!(
            "worker-ctl: no worker named \"nobody\" in {config} (an address is unix:///path or \
             tcp://host:port)\n"
        ),
    );
    assert_output(
        &ctl(&["killswitch", "status"]),
        2,
        "",
        "worker-ctl: no kill switch: give --file PATH, or kill_switch in the config \
         (/nonexistent/exsyst-worker-cli-tests/exsyst-worker/workers.toml)\n",
    );
}

/// One live worker, one stopped, one disabled (and still running: disabling does not stop),
/// and one remote.
#[test]
fn list_shows_live_pid_where_disabled_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let live = address_in(dir.path(), "live");
    let stopped = address_in(dir.path(), "stopped");
    let disabled = address_in(dir.path(), "disabled");
    let remote = "tcp://remote.invalid:7000";
    let config = write_config(
        dir.path(),
        &format!(
            "kill_switch = \"ks.json\"\n\
             [workers.live]\naddress = \"{live}\"\n\
             [workers.stopped]\naddress = \"{stopped}\"\n\
             [workers.disabled]\naddress = \"{disabled}\"\n\
             [workers.remote]\naddress = \"{remote}\"\n"
        ),
    );
    KillSwitch::new(dir.path().join("ks.json"))
        .disable_address(&disabled)
        .unwrap();
    let _live = serve(&live, "serving\nsecond line".into(), "privileged".into());
    let _disabled = serve(&disabled, "draining".into(), "privileged".into());
    let pid = std::process::id().to_string();

    let short = ctl(&["--config", &config, "list"]);
    assert_output(
        &short,
        0,
        &columns(&[
            &["NAME", "ADDRESS", "LIVE", "PID", "WHERE", "DISABLED"],
            &["disabled", &disabled, "yes", &pid, "local", "yes"],
            &["live", &live, "yes", &pid, "local", "no"],
            &["remote", remote, "no", "-", "remote", "no"],
            &["stopped", &stopped, "no", "-", "local", "no"],
        ]),
        "",
    );
    let long = ctl(&["--config", &config, "list", "-l"]);
    assert_output(
        &long,
        0,
        &columns(&[
            &[
                "NAME",
                "ADDRESS",
                "LIVE",
                "PID",
                "WHERE",
                "DISABLED",
                "IMPLEMENTATION",
                "STATUS",
            ],
            &[
                "disabled", &disabled, "yes", &pid, "local", "yes", "reporter", "draining",
            ],
            &[
                "live", &live, "yes", &pid, "local", "no", "reporter", "serving",
            ],
            &[
                "remote",
                remote,
                "no",
                "-",
                "remote",
                "no",
                "-",
                "unreachable",
            ],
            &[
                "stopped",
                &stopped,
                "no",
                "-",
                "local",
                "no",
                "-",
                "not running",
            ],
        ]),
        "",
    );

    let json = ctl(&["--config", &config, "list", "-l", "--json"]);
    assert_eq!((json.code, json.stderr.as_str()), (0, ""));
    let mut rows: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let remote_error = rows[2]["error"].take();
    assert!(
        remote_error
            .as_str()
            .unwrap()
            .starts_with("cannot connect to shared worker at tcp://remote.invalid:7000: "),
        "{remote_error}"
    );
    let pid = std::process::id();
    assert_eq!(
        rows,
        json!([
            {"name": "disabled", "address": disabled, "live": true, "pid": pid, "local": true,
             "disabled": true, "implementation": "reporter", "status": "draining", "error": null},
            {"name": "live", "address": live, "live": true, "pid": pid, "local": true,
             "disabled": false, "implementation": "reporter", "status": "serving\nsecond line",
             "error": null},
            {"name": "remote", "address": remote, "live": false, "pid": null, "local": false,
             "disabled": false, "implementation": null, "status": null, "error": null},
            {"name": "stopped", "address": stopped, "live": false, "pid": null, "local": true,
             "disabled": false, "implementation": null, "status": null,
             "error": format!("cannot connect to shared worker at {stopped}: No such file or \
                               directory (os error 2)")},
        ])
    );
}

#[test]
fn start_and_start_all_refuse_what_cannot_be_started_and_have_their_help() {
    let dir = tempfile::tempdir().unwrap();
    let address = address_in(dir.path(), "worker");
    assert_output(
        &ctl(&["start", &address, "--implementation", "reporter"]),
        2,
        "",
        &format!(
            "worker-ctl: {address}: no program to start: give --program PATH, or program in the \
             config\n"
        ),
    );
    assert_output(
        &ctl(&[
            "start",
            "tcp://remote.invalid:7000",
            "--program",
            "/bin/true",
        ]),
        1,
        "",
        "worker-ctl: tcp://remote.invalid:7000: a remote worker cannot be started from here, \
         only queried and stopped\n",
    );
    for subcommand in [
        "query",
        "pid",
        "start",
        "stop",
        "killswitch",
        "list",
        "start-all",
        "stop-all",
    ] {
        let help = ctl(&[subcommand, "--help"]);
        assert_eq!(help.code, 0);
        assert!(
            help.stdout
                .contains(&format!("Examples:\n  worker-ctl {subcommand}")),
            "{subcommand}: {}",
            help.stdout
        );
    }
}

/// The facade's `shared_counter` example: a program whose `main` serves `MySharedWorkerImpl` as
/// a daemon when started as one (cargo builds examples with the tests, beside `deps/`).
fn shared_counter_program() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().and_then(Path::parent).unwrap();
    let program = target.join("examples").join("shared_counter");
    assert!(program.exists(), "{} was not built", program.display());
    program
}

#[test]
fn start_is_race_free_and_idempotent_and_a_disabled_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let address = address_in(dir.path(), "counter");
    let cookie_file = secret_file(dir.path(), "cookie", SECRET, 0o600);
    let kill_switch = dir.path().join("kill-switch.json");
    let program = shared_counter_program();
    let config = write_config(
        dir.path(),
        &format!(
            "[workers.counter]\naddress = \"{address}\"\nprogram = \"{}\"\n\
             implementation = \"MySharedWorkerImpl\"\nadmin_cookie_file = \"{}\"\n\
             kill_switch = \"{}\"\n",
            program.display(),
            cookie_file.display(),
            kill_switch.display()
        ),
    );
    // Two starters at once: one daemon, and both print its pid.
    let starters: Vec<_> = (0..2)
        .map(|_| {
            let config = config.clone();
            std::thread::spawn(move || ctl(&["--config", &config, "start", "counter"]))
        })
        .collect();
    let runs: Vec<Run> = starters.into_iter().map(|t| t.join().unwrap()).collect();
    for run in &runs {
        assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
    }
    assert_eq!(runs[0].stdout, runs[1].stdout);
    let pid = runs[0].stdout.trim().to_owned();
    assert!(pid.parse::<u32>().is_ok(), "{runs:?}");
    // Idempotent: a running worker's pid is the answer.
    assert_output(
        &ctl(&["--config", &config, "start", "counter"]),
        0,
        &format!("{pid}\n"),
        "",
    );
    assert_output(
        &ctl(&["--config", &config, "pid", "counter"]),
        0,
        &format!("{pid}\n"),
        "",
    );
    // The cookie went through the private start pipe: never on the daemon's command line.
    for (p, line) in command_lines(pid.parse().unwrap()) {
        assert!(!line.contains(SECRET), "pid {p} shows the secret: {line}");
    }
    assert_output(
        &ctl(&["--config", &config, "stop", "--disable", "counter"]),
        0,
        &format!(
            "{address}: disabled in {}\n{address}: stopped (pid {pid})\n",
            kill_switch.display()
        ),
        "",
    );
    assert!(!exists(&dir.path().join("counter.sock")));
    assert_output(
        &ctl(&["--config", &config, "start", "counter"]),
        1,
        "",
        &format!(
            "worker-ctl: shared worker at {address} not started: the kill switch disables its \
             address\n"
        ),
    );
}
