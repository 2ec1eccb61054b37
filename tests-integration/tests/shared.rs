//! Shared workers started on demand (issue 9): real daemons, started by real masters, each in a
//! temporary directory of its own.

use std::{
    collections::BTreeSet,
    net::TcpListener,
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use exsyst_worker::{
    BootstrapProfile, SharedServer, SharedServerConfig, SharedWorker, Worker, WorkerFactory,
    shared::Error,
};
use tests_integration::workers::{
    dedicated::Echo,
    shared::{MySharedWorkerImpl, SHARED_COOKIE, SharedFailer, ordinal},
};

use crate::support::*;

/// Kills a daemon that a failing test left running (a passing test has stopped it already).
struct Reap(u32);

impl Drop for Reap {
    fn drop(&mut self) {
        if !process_gone(self.0) {
            // SAFETY: kill only sends a signal, to a daemon this test started.
            unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// A Unix address in a fresh temporary directory, with the directory (removed on drop).
fn unix_address() -> (tempfile::TempDir, String, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Worker.sock");
    let address = format!("unix://{}", path.display());
    (dir, address, path)
}

/// Daemons from `test-worker`, with the shared tests' cookie.
fn shared_profile() -> BootstrapProfile {
    profile().with_admin_cookie(SHARED_COOKIE)
}

fn factory() -> WorkerFactory {
    WorkerFactory::with_profile(shared_profile())
}

/// A profile whose worker executable first appends a line to `marker`: a spawn leaves a trace.
fn marking_profile(marker: &Path) -> BootstrapProfile {
    BootstrapProfile::new()
        .with_program("/bin/sh")
        .with_args([
            "-c".to_owned(),
            r#"echo spawned >> "$0"; exec "$1""#.to_owned(),
            marker.display().to_string(),
            test_worker().display().to_string(),
        ])
        .with_admin_cookie(SHARED_COOKIE)
}

/// Sends `name` to the worker and returns its reply.
fn greet(worker: &mut SharedWorker, name: &str) -> String {
    worker.send_message(name).unwrap();
    worker.receive_message::<String>().unwrap()
}

fn hello(name: &str, nth: u64) -> String {
    format!("Hello {name} ! You're my {} client.", ordinal(nth))
}

/// The inode of the listening Unix socket bound at `path`, from `/proc/net/unix`.
fn listener_inode(path: &Path) -> String {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    table
        .lines()
        .skip(1)
        .map(|l| l.split_ascii_whitespace().collect::<Vec<_>>())
        // Num RefCount Protocol Flags Type St Inode Path; flags 00010000: listening.
        .find(|f| f.len() == 8 && f[3] == "00010000" && Path::new(f[7]) == path)
        .map(|f| f[6].to_owned())
        .unwrap_or_else(|| panic!("no listener at {} in /proc/net/unix", path.display()))
}

#[test]
fn the_seeds_example_three_masters_in_turn_then_stop_ends_the_daemon() {
    let (_dir, address, path) = unix_address();
    let mut pids = Vec::new();
    for (nth, name) in [(1, "world"), (2, "Rust"), (3, "again")] {
        let lines = run_master(&["shared-connect", &address, name]);
        assert_eq!(value(&lines, "reply"), hello(name, nth));
        pids.push(value(&lines, "pid").parse::<u32>().unwrap());
    }
    assert!(pids.iter().all(|&p| p == pids[0]), "{pids:?}");
    let pid = pids[0];
    let _reap = Reap(pid);
    // The facade's other shared methods, from this process.
    assert_eq!(
        factory().get_shared_worker_process_id(&address).unwrap(),
        pid
    );
    let status = factory().query_shared_worker(&address).unwrap();
    assert!(status.privileged);
    assert_eq!(status.status.unwrap().text(), "Current counter value : 3");
    // `--stop`, from yet another process.
    let lines = run_master(&["shared-stop", &address]);
    assert_eq!(value(&lines, "stopped"), "1");
    assert!(!path.exists(), "the socket file is removed");
    assert!(
        process_gone(pid),
        "the stop returned before the daemon was gone"
    );
    match factory().get_shared_worker_process_id(&address) {
        Err(exsyst_worker::Error::Shared(e)) => assert!(e.is_not_running(), "{e:?}"),
        other => panic!("expected a worker that is not running, got {other:?}"),
    }
}

#[test]
fn sixteen_masters_at_once_start_one_daemon_that_serves_them_all() {
    let (dir, address, _path) = unix_address();
    let log = dir.path().join("constructed.log");
    let masters: Vec<_> = (0..16)
        .map(|i| {
            Command::new(test_worker())
                .args(["master", "shared-connect", &address, &format!("master{i}")])
                .args(["--log", log.to_str().unwrap()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut pids = BTreeSet::new();
    let mut ordinals = BTreeSet::new();
    for master in masters {
        let output = master.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "a master failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let lines = parse_lines(&String::from_utf8_lossy(&output.stdout));
        pids.insert(value(&lines, "pid").parse::<u32>().unwrap());
        let reply = value(&lines, "reply");
        let nth = reply
            .rsplit(' ')
            .nth(1)
            .unwrap()
            .trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .parse::<u64>()
            .unwrap();
        ordinals.insert(nth);
    }
    assert_eq!(pids.len(), 1, "more than one daemon served: {pids:?}");
    assert_eq!(
        ordinals,
        (1..=16).collect(),
        "each master got its own ordinal"
    );
    let constructed = std::fs::read_to_string(&log).unwrap();
    let pid = *pids.first().unwrap();
    let _reap = Reap(pid);
    assert_eq!(
        constructed.lines().collect::<Vec<_>>(),
        [pid.to_string()],
        "the constructor ran once, in the daemon"
    );
    factory().stop_shared_worker(&address).unwrap();
}

#[test]
fn a_daemon_killed_by_sigkill_leaves_a_stale_socket_that_the_next_start_reclaims() {
    let (_dir, address, path) = unix_address();
    let factory = factory();
    let first = factory
        .start_shared_worker::<MySharedWorkerImpl>(&address)
        .unwrap();
    let _reap_first = Reap(first);
    // Starting a running worker is not an error: it gives its pid.
    assert_eq!(
        factory
            .start_shared_worker::<MySharedWorkerImpl>(&address)
            .unwrap(),
        first
    );
    sigkill(first);
    assert!(wait_until(Duration::from_secs(10), || process_gone(first)));
    let meta = std::fs::symlink_metadata(&path).expect("a stale socket file is left behind");
    assert!(meta.file_type().is_socket());
    match SharedWorker::connect(&address) {
        Err(e) => assert!(e.is_not_running(), "{e:?}"),
        Ok(_) => panic!("a dead daemon answered"),
    }
    let mut worker = factory
        .connect_to_shared_worker::<MySharedWorkerImpl>(&address)
        .unwrap();
    assert_ne!(worker.pid(), first);
    let _reap_second = Reap(worker.pid());
    assert_eq!(greet(&mut worker, "again"), hello("again", 1));
    factory.stop_shared_worker(&address).unwrap();
}

#[test]
fn a_live_workers_socket_is_never_taken_over() {
    let (dir, address, path) = unix_address();
    let server = SharedServer::bind(&address, SharedServerConfig::default())
        .unwrap()
        .spawn(|| MySharedWorkerImpl::new(()))
        .unwrap();
    let inode = std::fs::metadata(&path).unwrap().ino();
    let marker = dir.path().join("spawned");
    let factory = WorkerFactory::with_profile(marking_profile(&marker));
    // The server embedded in this process is the worker there: used, never replaced.
    assert_eq!(
        factory
            .start_shared_worker::<MySharedWorkerImpl>(&address)
            .unwrap(),
        std::process::id()
    );
    let mut worker = factory
        .connect_to_shared_worker::<MySharedWorkerImpl>(&address)
        .unwrap();
    assert_eq!(worker.pid(), std::process::id());
    assert_eq!(greet(&mut worker, "neighbour"), hello("neighbour", 1));
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
    assert!(
        !marker.exists(),
        "a daemon was spawned beside a live worker"
    );
    drop(worker);
    server.stop();
    server.join().unwrap();

    // A file that is not a socket is nobody's stale socket: it stays, and the start says why.
    let (_dir, address, path) = unix_address();
    std::fs::write(&path, b"not a socket").unwrap();
    match factory.start_shared_worker::<MySharedWorkerImpl>(&address) {
        Err(exsyst_worker::Error::Shared(Error::StartFailed { reason, .. })) => {
            assert!(reason.contains("in use"), "{reason}")
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
}

#[test]
fn a_stop_followed_at_once_by_a_start_twenty_times_never_fails() {
    let (_dir, address, path) = unix_address();
    let factory = factory();
    let mut pid = factory
        .start_shared_worker::<MySharedWorkerImpl>(&address)
        .unwrap();
    let mut reap = Reap(pid);
    for round in 0..20 {
        factory.stop_shared_worker(&address).unwrap();
        assert!(
            process_gone(pid),
            "round {round}: the old daemon is still there"
        );
        assert!(
            !path.exists(),
            "round {round}: its socket file is still there"
        );
        let next = factory
            .start_shared_worker::<MySharedWorkerImpl>(&address)
            .unwrap();
        assert_ne!(next, pid, "round {round}");
        pid = next;
        reap.0 = pid;
    }
    let mut worker = factory
        .connect_to_shared_worker::<MySharedWorkerImpl>(&address)
        .unwrap();
    assert_eq!(worker.pid(), pid);
    assert_eq!(greet(&mut worker, "last"), hello("last", 1));
    drop(worker);
    factory.stop_shared_worker(&address).unwrap();
}

#[test]
fn a_disabled_worker_is_refused_at_once_and_nothing_is_spawned() {
    let (dir, address, path) = unix_address();
    let marker = dir.path().join("spawned");
    let factory = WorkerFactory::with_profile(
        marking_profile(&marker).with_kill_switch_path(dir.path().join("kill-switch.json")),
    );
    let refused = |globally: bool| {
        let started = Instant::now();
        match factory.connect_to_shared_worker::<MySharedWorkerImpl>(&address) {
            Err(exsyst_worker::Error::Shared(Error::Disabled {
                address: refused,
                globally: how,
            })) => {
                assert_eq!(refused, address);
                assert_eq!(how, globally);
            }
            other => panic!("expected Disabled, got {other:?}"),
        }
        assert!(
            started.elapsed() < timeout(Duration::from_secs(2)),
            "the refusal took {:?}",
            started.elapsed()
        );
        assert!(
            !marker.exists(),
            "a process was spawned for a disabled worker"
        );
        assert!(!path.exists());
    };
    factory.disable_shared_workers_globally().unwrap();
    refused(true);
    factory.re_enable_shared_workers_globally().unwrap();
    // Any spelling of the address disables it.
    factory
        .disable_shared_worker(address.replace("/Worker.sock", "/./Worker.sock").as_str())
        .unwrap();
    refused(false);
    factory.re_enable_all_shared_workers().unwrap();

    // Enabled again, it starts (and the marker shows that a spawn leaves one).
    let pid = factory
        .start_shared_worker::<MySharedWorkerImpl>(&address)
        .unwrap();
    let _reap_pid = Reap(pid);
    assert!(marker.exists());
    // Disabling a running worker does not stop it: disable, then stop.
    factory.disable_shared_worker(address.as_str()).unwrap();
    let worker = factory
        .connect_to_shared_worker::<MySharedWorkerImpl>(&address)
        .unwrap();
    assert_eq!(worker.pid(), pid);
    drop(worker);
    factory.stop_shared_worker(&address).unwrap();
    std::fs::remove_file(&marker).unwrap();
    assert!(matches!(
        factory.start_shared_worker::<MySharedWorkerImpl>(&address),
        Err(exsyst_worker::Error::Shared(Error::Disabled {
            globally: false,
            ..
        }))
    ));
    assert!(!marker.exists());
}

#[test]
fn killing_the_master_that_started_the_daemon_does_not_stop_it() {
    let (_dir, address, path) = unix_address();
    let mut master = MasterProcess::start(&["shared-connect", &address, "first", "--hold"]);
    let mut lines = Vec::new();
    loop {
        let line = master.next_line().expect("the master ended");
        if line == "ready" {
            break;
        }
        lines.extend(parse_lines(&line));
    }
    let daemon: u32 = value(&lines, "pid").parse().unwrap();
    let _reap = Reap(daemon);
    let starter = master.child.id();
    sigkill(starter);
    master.child.wait().unwrap();

    let mut worker = SharedWorker::connect(&address).unwrap();
    assert_eq!(worker.pid(), daemon);
    assert_eq!(greet(&mut worker, "second"), hello("second", 2));
    drop(worker);

    assert_detached(daemon, starter);
    assert_eq!(
        std::fs::read_link(format!("/proc/{daemon}/cwd")).unwrap(),
        Path::new("/")
    );
    // 0, 1, 2 on /dev/null (no output path), its listener, and its loop's own descriptors.
    let fds = fds_of(daemon);
    let listener = format!("socket:[{}]", listener_inode(&path));
    assert!(fds.iter().any(|(_, t)| *t == listener), "{fds:?}");
    for (fd, target) in &fds {
        match fd {
            0..=2 => assert_eq!(target, "/dev/null", "{fds:?}"),
            _ => assert!(
                target.starts_with("socket:") || target.starts_with("anon_inode:"),
                "the daemon holds {target} as {fd}: {fds:?}"
            ),
        }
    }
    factory().stop_shared_worker(&address).unwrap();
    assert!(process_gone(daemon));
}

#[test]
fn a_detached_daemon_survives_a_hangup_of_its_session_and_keeps_serving() {
    // (whom the hangup goes to): the daemon alone, and its whole session's process group, as
    // a terminal that goes away sends it.
    for to_group in [false, true] {
        let (_dir, address, path) = unix_address();
        let lines = run_master(&["shared-connect", &address, "first"]);
        assert_eq!(value(&lines, "reply"), hello("first", 1));
        let daemon: u32 = value(&lines, "pid").parse().unwrap();
        let _reap = Reap(daemon);
        let target = if to_group {
            let group: libc::pid_t = stat_fields(daemon)[2].parse().unwrap();
            // SAFETY: getpgrp only reads this process's group id.
            let ours = unsafe { libc::getpgrp() };
            assert_ne!(group, ours, "not our own group");
            -group
        } else {
            daemon as libc::pid_t
        };
        // SAFETY: kill only sends a signal, to a daemon this test started, or to the process
        // group of its session, which holds nothing else of ours.
        assert_eq!(unsafe { libc::kill(target, libc::SIGHUP) }, 0);
        let mut worker = SharedWorker::connect(&address).unwrap();
        assert_eq!(worker.pid(), daemon, "to the group: {to_group}");
        assert_eq!(greet(&mut worker, "second"), hello("second", 2));
        drop(worker);
        factory().stop_shared_worker(&address).unwrap();
        assert!(process_gone(daemon));
        assert!(!path.exists(), "the stop removed the socket file");
    }
}

#[test]
fn a_daemon_writes_to_the_profiles_output_path() {
    let (dir, address, _path) = unix_address();
    let output = dir.path().join("worker.log");
    let factory = WorkerFactory::with_profile(shared_profile().with_output_path(&output));
    let pid = factory
        .start_shared_worker::<MySharedWorkerImpl>(&address)
        .unwrap();
    let _reap_pid = Reap(pid);
    let fds = fds_of(pid);
    for fd in [1, 2] {
        let target = &fds.iter().find(|(n, _)| *n == fd).unwrap().1;
        assert_eq!(Path::new(target), output, "{fds:?}");
    }
    factory.stop_shared_worker(&address).unwrap();
    let text = std::fs::read_to_string(&output).unwrap();
    assert!(text.contains("listening"), "{text}");
    assert!(text.contains("stopped"), "{text}");
}

#[test]
fn a_non_local_tcp_address_is_never_started() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("spawned");
    // TEST-NET-3 (RFC 5737): documentation only, never this machine's.
    let address = "tcp://203.0.113.7:4567";
    let started = exsyst_worker::shared::connect_or_start_timeout(
        &marking_profile(&marker),
        address,
        MySharedWorkerImpl::NAME,
        &SharedServerConfig::default(),
        timeout(Duration::from_secs(2)),
    );
    match started {
        Err(Error::NotLocal {
            address: refused, ..
        }) => assert_eq!(refused, address),
        other => panic!("expected NotLocal, got {other:?}"),
    }
    assert!(
        !marker.exists(),
        "a process was spawned for a remote worker"
    );
}

#[test]
fn a_loopback_tcp_worker_is_started_and_stopped_with_its_start_lock_in_the_runtime_directory() {
    for host in ["127.0.0.1", "[::1]"] {
        let runtime = tempfile::tempdir().unwrap();
        // A port the kernel just gave out, free again.
        let port = TcpListener::bind(format!("{host}:0"))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("tcp://{host}:{port}");
        let master = |args: &[&str]| {
            let output = Command::new(test_worker())
                .arg("master")
                .args(args)
                .env("XDG_RUNTIME_DIR", runtime.path())
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            parse_lines(&String::from_utf8_lossy(&output.stdout))
        };
        let first = master(&["shared-connect", &address, "tcp"]);
        assert_eq!(value(&first, "reply"), hello("tcp", 1));
        let second = master(&["shared-connect", &address, "again"]);
        assert_eq!(value(&second, "reply"), hello("again", 2));
        let pid: u32 = value(&first, "pid").parse().unwrap();
        let _reap = Reap(pid);
        assert_eq!(value(&second, "pid").parse::<u32>().unwrap(), pid);
        let lock = runtime
            .path()
            .join("exsyst-worker")
            .join(format!("tcp-{}-{port}.lock", host.trim_matches(['[', ']'])));
        assert!(lock.exists(), "no start lock at {}", lock.display());
        master(&["shared-stop", &address]);
        assert!(
            process_gone(pid),
            "{address}: the stop returned before the daemon was gone"
        );
    }
}

#[test]
fn the_cookie_is_never_on_the_daemons_command_line_or_in_its_environment() {
    let (_dir, address, _path) = unix_address();
    let factory = factory();
    let pid = factory
        .start_shared_worker::<MySharedWorkerImpl>(&address)
        .unwrap();
    let _reap_pid = Reap(pid);
    for what in ["cmdline", "environ"] {
        let bytes = std::fs::read(format!("/proc/{pid}/{what}")).unwrap();
        assert!(!bytes.is_empty(), "{what} is empty: not the daemon's?");
        assert!(
            !bytes
                .windows(SHARED_COOKIE.len())
                .any(|w| w == SHARED_COOKIE.as_bytes()),
            "the cookie is in the daemon's {what}"
        );
    }
    // Yet the daemon has it: the stop, which needs it, works.
    factory.stop_shared_worker(&address).unwrap();
}

#[test]
fn a_daemon_that_cannot_start_says_why_at_once() {
    let (_dir, address, path) = unix_address();
    let profile = shared_profile();
    let config = SharedServerConfig::default();
    match exsyst_worker::shared::start(&profile, &address, SharedFailer::NAME, &config) {
        Err(Error::StartFailed { reason, .. }) => {
            assert!(reason.contains("the database is on fire"), "{reason}")
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    assert!(
        !path.exists(),
        "the failed daemon's socket file is left behind"
    );
    // One that ends without a word (a raw worker that never reports): at once, typed.
    match exsyst_worker::shared::start(&profile, &address, Echo::NAME, &config) {
        Err(Error::Start {
            source: exsyst_worker::bootstrap::Error::DaemonEnded { pid: Some(_), .. },
            ..
        }) => {}
        other => panic!("expected DaemonEnded, got {other:?}"),
    }
}
