//! Files and sockets that another user controls, in a shared sticky directory: the start path
//! and the client trust none of them. The other user is real: uid and gid 65534 (nobody),
//! through `setpriv` or a helper process started with that uid.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    os::unix::{
        fs::{PermissionsExt, chown},
        net::UnixListener,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;
use worker_bootstrap::BootstrapProfile;
use worker_channel::{Channel, Codec};
use worker_shared::{
    AdminCookie, Error, PeerUids, SharedServer, SharedServerConfig, SharedWorker,
    connect_or_start_timeout, runtime_dir, stop,
};

use crate::{
    children::{ADDRESS_VAR, Helper, report},
    processes::daemon_profile,
    support::{COOKIE, Conn, hello, send_control, timeout},
};

/// The other user.
const NOBODY: u32 = 65534;

/// Marks the daemons a test starts, to find any left behind.
const MARK_VAR: &str = "EXSYST_TRUST_TEST_MARK";

/// The `impostor` role: serves a Unix socket as whoever runs it, says a protocol-perfect hello
/// to each client, and reports how many bytes each sent before it left.
pub(crate) fn impostor() {
    let path = std::env::var(ADDRESS_VAR).unwrap();
    let path = path.strip_prefix("unix://").unwrap();
    let listener = UnixListener::bind(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o777)).unwrap();
    report("listening");
    for stream in listener.incoming() {
        let stream = stream.unwrap();
        let mut reader = Conn::Unix(stream.try_clone().unwrap());
        let mut channel = Channel::new(std::io::empty(), Conn::Unix(stream), Codec::MessagePack);
        let _ = send_control(&mut channel, &hello(Codec::MessagePack, &[0; 32]));
        let mut received = Vec::new();
        let _ = reader.read_to_end(&mut received);
        report(&format!("received {}", received.len()));
    }
}

/// The `stale` role: binds a Unix socket as whoever runs it, and exits, leaving the file.
pub(crate) fn stale() {
    let path = std::env::var(ADDRESS_VAR).unwrap();
    let listener = UnixListener::bind(path.strip_prefix("unix://").unwrap()).unwrap();
    std::mem::forget(listener);
    report("bound");
}

/// The `runtime-dir` role: reports what `runtime_dir` says under this process's
/// `XDG_RUNTIME_DIR`.
pub(crate) fn runtime_dir_role() {
    match runtime_dir() {
        Ok(dir) => report(&format!("runtime ok {}", dir.display())),
        Err(Error::Untrusted {
            path,
            owner,
            reason,
        }) => report(&format!(
            "runtime untrusted {} {owner} {reason}",
            path.display()
        )),
        Err(e) => report(&format!("runtime error {e:?}")),
    }
}

/// A temporary directory others may enter (`0755`), holding a sticky directory anyone may
/// write to (`01777`), as the system's temporary directory is.
struct Shared {
    root: TempDir,
    sticky: PathBuf,
}

impl Shared {
    fn new() -> Shared {
        let root = tempfile::tempdir().unwrap();
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let sticky = root.path().join("tmp");
        fs::create_dir(&sticky).unwrap();
        fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
        Shared { root, sticky }
    }

    /// A directory of `mode` in the root, owned by `uid`.
    fn dir(&self, name: &str, uid: u32, mode: u32) -> PathBuf {
        let dir = self.root.path().join(name);
        fs::create_dir(&dir).unwrap();
        chown(&dir, Some(uid), Some(uid)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
        dir
    }
}

/// Runs `program` with `args` as nobody, which must succeed.
fn as_nobody(program: &str, args: &[&Path]) {
    let status = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", program])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "{program} as nobody: {status:?}");
}

/// A `flock(1)` holding the lock of `path` (as nobody, or as this user) until dropped.
struct Holder(Child);

impl Holder {
    fn hold(path: &Path, nobody: bool) -> Holder {
        let mut command = if nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "flock"]);
            c
        } else {
            Command::new("flock")
        };
        let mut child = command
            .arg(path)
            .arg("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // `cat` runs once the lock is held: its echo says so.
        child.stdin.as_mut().unwrap().write_all(b"held\n").unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "held\n");
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// A daemon profile whose processes carry `mark` in their environment.
fn marked_profile(mark: &str) -> BootstrapProfile {
    daemon_profile().with_env(MARK_VAR, mark)
}

/// A mark no other test uses.
fn fresh_mark(name: &str) -> String {
    format!("{name}-{}-{:?}", std::process::id(), Instant::now())
}

/// The processes whose environment carries `mark`.
fn marked_processes(mark: &str) -> Vec<u32> {
    let needle = format!("{MARK_VAR}={mark}");
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == needle.as_bytes()))
        })
        .collect()
}

fn config() -> SharedServerConfig {
    SharedServerConfig::default().with_cookie(AdminCookie::new(COOKIE).unwrap())
}

/// Stops what a start that should have failed started.
fn stop_if_running(address: &str) {
    let _ = stop(address, &AdminCookie::new(COOKIE).unwrap(), timeout(30.0));
}

#[test]
fn another_users_file_at_the_lock_path_is_refused_at_once_and_never_followed() {
    let shared = Shared::new();
    // Where nobody could create a file, and root could.
    let victim = shared.root.path().join("victim");
    type Make = fn(&Path, &Path) -> Option<Holder>;
    let cases: [(&str, Make, &str); 4] = [
        (
            "link",
            |lock, victim| {
                as_nobody("ln", &[Path::new("-s"), victim, lock]);
                None
            },
            "a symbolic link, which is never followed",
        ),
        (
            "fifo",
            |lock, _| {
                as_nobody("mkfifo", &[lock]);
                None
            },
            "not a regular file",
        ),
        (
            "file",
            |lock, _| {
                as_nobody("touch", &[lock]);
                None
            },
            "another user's file",
        ),
        (
            "held file",
            |lock, _| {
                as_nobody("touch", &[lock]);
                Some(Holder::hold(lock, true))
            },
            "another user's file",
        ),
    ];
    for (what, make, reason) in cases {
        let socket = shared
            .sticky
            .join(format!("{}.sock", what.replace(' ', "-")));
        let address = format!("unix://{}", socket.display());
        let lock = PathBuf::from(format!("{}.lock", socket.display()));
        let _holder = make(&lock, &victim);
        let mark = fresh_mark("lock");
        let began = Instant::now();
        let started = connect_or_start_timeout(
            &marked_profile(&mark),
            &address,
            "greeter",
            &config(),
            timeout(3.0),
        );
        let took = began.elapsed();
        if started.is_ok() {
            stop_if_running(&address);
        }
        match started {
            Err(Error::Untrusted {
                path,
                owner,
                reason: said,
            }) => {
                assert_eq!(
                    (path, owner, said),
                    (lock.clone(), NOBODY, reason),
                    "{what}"
                );
            }
            other => panic!("{what}: expected Error::Untrusted, got {other:?}"),
        }
        assert!(
            took < timeout(1.0),
            "{what}: refused at once, not after {took:?}"
        );
        assert!(
            !victim.exists(),
            "{what}: nothing is created through a link"
        );
        assert!(!socket.exists(), "{what}: no daemon bound");
        assert_eq!(
            marked_processes(&mark),
            Vec::<u32>::new(),
            "{what}: nothing spawned"
        );
    }
}

/// A free TCP port on the loopback (free when this returns).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_lock_held_past_the_start_timeout_ends_the_start_in_time_with_nothing_spawned() {
    let shared = Shared::new();
    let own = shared.dir("own", 0, 0o700);
    let switch = own.join("kill-switch.json");
    // (what, address, the lock file held, with a kill switch)
    let socket = own.join("worker.sock");
    let port = free_port();
    let cases = [
        (
            "unix start lock",
            format!("unix://{}", socket.display()),
            PathBuf::from(format!("{}.lock", socket.display())),
            false,
        ),
        (
            "tcp start lock",
            format!("tcp://127.0.0.1:{port}"),
            runtime_dir()
                .unwrap()
                .join(format!("tcp-127.0.0.1-{port}.lock")),
            false,
        ),
        (
            "kill switch lock",
            format!("unix://{}", socket.display()),
            own.join("kill-switch.json.lock"),
            true,
        ),
    ];
    for (what, address, lock, with_switch) in cases {
        fs::write(&lock, b"").unwrap();
        let holder = Holder::hold(&lock, false);
        let mark = fresh_mark("held");
        let mut profile = marked_profile(&mark);
        if with_switch {
            profile = profile.with_kill_switch_path(&switch);
        }
        let limit = timeout(3.0);
        let (tx, rx) = mpsc::channel();
        let starting = address.clone();
        thread::spawn(move || {
            let began = Instant::now();
            let started =
                connect_or_start_timeout(&profile, &starting, "greeter", &config(), limit);
            let _ = tx.send((started.map(|w| w.pid()), began.elapsed()));
        });
        let margin = timeout(1.0);
        let outcome = rx.recv_timeout(limit + margin);
        // Released either way, so that a start that waits for ever ends and is seen.
        drop(holder);
        let (started, took) = outcome
            .or_else(|_| {
                rx.recv_timeout(timeout(30.0))
                    .map(|(s, _)| (s, Duration::MAX))
            })
            .unwrap();
        if started.is_ok() {
            stop_if_running(&address);
        }
        match started {
            Err(Error::Timeout {
                address: failed,
                pid: None,
                operation: "start lock",
                waited,
            }) => assert_eq!((failed, waited), (address.clone(), limit), "{what}"),
            other => panic!("{what}: expected the start lock's Error::Timeout, got {other:?}"),
        }
        assert!(
            took >= limit && took < limit + margin,
            "{what}: ended after {took:?}, for a timeout of {limit:?}"
        );
        assert_eq!(
            marked_processes(&mark),
            Vec::<u32>::new(),
            "{what}: nothing spawned"
        );
        assert!(!socket.exists(), "{what}: no daemon bound");
    }
}

#[test]
fn an_impostor_serving_in_another_users_directory_gets_not_one_byte() {
    let shared = Shared::new();
    let theirs = shared.dir("theirs", NOBODY, 0o755);
    let address = format!("unix://{}", theirs.join("worker.sock").display());
    let impostor = Helper::spawn_as("impostor", &address, NOBODY);
    impostor.expect("listening");
    let mark = fresh_mark("impostor");
    type Call = fn(&str, &str) -> Result<SharedWorker, Error>;
    let refused: [(&str, Call); 3] = [
        ("connect", |address, _| {
            SharedWorker::connect_timeout(address, timeout(3.0))
        }),
        ("connect_trusting root only", |address, _| {
            SharedWorker::connect_trusting(address, timeout(3.0), &PeerUids::Only(vec![0]))
        }),
        ("connect_or_start", |address, mark| {
            connect_or_start_timeout(
                &marked_profile(mark),
                address,
                "greeter",
                &config(),
                timeout(3.0),
            )
        }),
    ];
    for (what, call) in refused {
        match call(&address, &mark) {
            Err(Error::UntrustedServer {
                address: failed,
                uid,
            }) => {
                assert_eq!((failed.as_str(), uid), (address.as_str(), NOBODY), "{what}");
            }
            Ok(mut worker) => {
                // What a master does next, on the old code: hands its data over.
                let _ = worker.send_message("the master's secret");
                panic!("{what}: connected to the impostor");
            }
            other => panic!("{what}: expected Error::UntrustedServer, got {other:?}"),
        }
        assert_eq!(
            impostor.expect("received"),
            "0",
            "{what}: no byte reached it"
        );
    }
    assert_eq!(
        marked_processes(&mark),
        Vec::<u32>::new(),
        "nothing spawned"
    );
    // Trusting that user is a choice the caller can make.
    let trusting =
        SharedWorker::connect_trusting(&address, timeout(3.0), &PeerUids::Only(vec![NOBODY]))
            .unwrap();
    assert_eq!(trusting.implementation(), "counter");
    drop(trusting);
    assert_eq!(impostor.expect("received"), "0");
}

#[test]
fn a_socket_directory_others_control_is_refused_and_a_sticky_one_is_used() {
    let shared = Shared::new();
    // (what, owner, mode, refused)
    let cases = [
        ("another user's", NOBODY, 0o755, true),
        ("another user's sticky", NOBODY, 0o1777, true),
        ("world-writable", 0, 0o777, true),
        ("group-writable", 0, 0o770, true),
        ("root's sticky", 0, 0o1777, false),
        ("own private", 0, 0o700, false),
    ];
    for (what, owner, mode, refused) in cases {
        let dir = shared.dir(&what.replace(['\'', ' '], "-"), owner, mode);
        let address = format!("unix://{}", dir.join("worker.sock").display());
        let mark = fresh_mark("dir");
        let started = connect_or_start_timeout(
            &marked_profile(&mark),
            &address,
            "greeter",
            &config(),
            timeout(30.0),
        );
        let bound = SharedServer::bind(&address, config()).map(drop);
        if started.is_ok() {
            stop_if_running(&address);
        }
        if !refused {
            started.unwrap_or_else(|e| panic!("{what}: {e:?}"));
            continue;
        }
        for (call, result) in [("connect_or_start", started.map(drop)), ("bind", bound)] {
            match result {
                Err(Error::Untrusted {
                    path, owner: said, ..
                }) => assert_eq!((path, said), (dir.clone(), owner), "{what} {call}"),
                other => panic!("{what} {call}: expected Error::Untrusted, got {other:?}"),
            }
        }
        assert_eq!(
            marked_processes(&mark),
            Vec::<u32>::new(),
            "{what}: nothing spawned"
        );
    }
}

#[test]
fn another_users_stale_socket_in_a_sticky_directory_is_not_taken_over() {
    let shared = Shared::new();
    let socket = shared.sticky.join("worker.sock");
    let address = format!("unix://{}", socket.display());
    let stale = Helper::spawn_as("stale", &address, NOBODY);
    stale.expect("bound");
    assert!(stale.wait().success());
    let mark = fresh_mark("stale");
    let started = connect_or_start_timeout(
        &marked_profile(&mark),
        &address,
        "greeter",
        &config(),
        timeout(30.0),
    );
    if started.is_ok() {
        stop_if_running(&address);
    }
    match started {
        Err(Error::Untrusted { path, owner, .. }) => {
            assert_eq!((path, owner), (socket.clone(), NOBODY))
        }
        other => panic!("expected Error::Untrusted, got {other:?}"),
    }
    assert!(socket.exists(), "their socket file is left alone");
    assert_eq!(
        marked_processes(&mark),
        Vec::<u32>::new(),
        "nothing spawned"
    );
}

#[test]
fn a_runtime_directory_others_control_is_refused() {
    type Make = fn(&Path);
    // (what, how the runtime directory is made, what `runtime_dir` says)
    let cases: [(&str, Make, &str); 5] = [
        ("absent", |_| {}, "ok"),
        (
            "own private",
            |dir| {
                fs::create_dir(dir).unwrap();
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
            },
            "ok",
        ),
        (
            "own but open",
            |dir| {
                fs::create_dir(dir).unwrap();
                fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
            },
            "untrusted 0 others may enter this user's runtime directory",
        ),
        (
            "another user's",
            |dir| {
                fs::create_dir(dir).unwrap();
                chown(dir, Some(NOBODY), Some(NOBODY)).unwrap();
            },
            "untrusted 65534 another user owns the directory, and could replace what is in it",
        ),
        (
            "another user's link",
            |dir| {
                let target = dir.with_file_name("elsewhere");
                fs::create_dir(&target).unwrap();
                as_nobody("ln", &[Path::new("-s"), &target, dir]);
            },
            "untrusted 65534 a symbolic link, which is never followed",
        ),
    ];
    for (what, make, expected) in cases {
        let shared = Shared::new();
        let dir = shared.sticky.join("exsyst-worker");
        make(&dir);
        let helper = Helper::spawn_with_runtime_dir("runtime-dir", &shared.sticky);
        let said = helper.expect("runtime");
        let expected = match expected {
            "ok" => format!("ok {}", dir.display()),
            other => {
                let (owner_reason, path) = (other.trim_start_matches("untrusted "), &dir);
                format!("untrusted {} {owner_reason}", path.display())
            }
        };
        assert_eq!(said, expected, "{what}");
    }
}
