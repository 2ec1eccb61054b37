//! The exclusive lock a shared worker's starter holds: it excludes every other holder and
//! every change, and what is checked under it does not take it again.

use std::{
    fs, io,
    path::Path,
    sync::mpsc::{self, TryRecvError},
    thread,
};

use worker_killswitch::{Address, Error, KillSwitch, KillSwitchLock};

use crate::support::{Helper, report, timeout};

/// Takes the lock through the API and holds it until its stdin closes.
pub(crate) fn hold_guard_helper(path: &Path) {
    let lock = KillSwitch::new(path).lock().unwrap();
    report("locked");
    let _ = io::copy(&mut io::stdin(), &mut io::sink());
    drop(lock);
    report("released");
}

/// Reports whether `try_lock` got the lock in this process.
pub(crate) fn try_lock_helper(path: &Path) {
    let outcome = match KillSwitch::new(path).try_lock().unwrap() {
        Some(_) => "locked",
        None => "contended",
    };
    report(&format!("outcome {outcome}"));
}

fn try_lock_elsewhere(path: &Path) -> String {
    let helper = Helper::spawn("try-lock", path, "");
    let outcome = helper.expect("outcome", timeout(30));
    helper.finish(timeout(30));
    outcome
}

/// Runs `f` on another thread, so that a call that waits for the lock can be seen waiting.
fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

#[test]
fn the_lock_excludes_every_other_holder_and_change_until_it_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill-switch.json");
    let switch = KillSwitch::new(&path);

    let lock = switch.lock().unwrap();
    assert_eq!(lock.kill_switch().path(), path);
    assert_eq!(try_lock_elsewhere(&path), "contended");
    // flock(2) locks belong to open files: a second opening in this process is excluded too.
    assert!(switch.try_lock().unwrap().is_none());
    drop(lock);
    assert_eq!(try_lock_elsewhere(&path), "locked");

    // A blocking lock waits for the holder in another process, and gets the lock once it lets
    // go.
    let holder = Helper::spawn("hold-guard", &path, "");
    holder.expect("locked", timeout(30));
    assert!(switch.try_lock().unwrap().is_none());
    let waiter = on_thread({
        let switch = switch.clone();
        move || switch.lock()
    });
    assert_eq!(waiter.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(holder.finish(timeout(30)), ["released"]);
    let lock: KillSwitchLock = waiter
        .recv_timeout(timeout(10))
        .expect("the lock was not handed over")
        .unwrap();

    // A change waits for the lock too.
    let change = on_thread({
        let switch = switch.clone();
        move || switch.disable_globally()
    });
    assert_eq!(change.try_recv().unwrap_err(), TryRecvError::Empty);
    assert!(!path.exists());
    drop(lock);
    assert!(
        change
            .recv_timeout(timeout(10))
            .expect("the change did not follow the lock")
            .unwrap()
    );
    assert!(switch.is_disabled_globally().unwrap());
}

#[test]
fn a_killed_holder_releases_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill-switch.json");
    let switch = KillSwitch::new(&path);
    let mut holder = Helper::spawn("hold-guard", &path, "");
    holder.expect("locked", timeout(30));
    assert!(switch.try_lock().unwrap().is_none());
    let waiter = on_thread({
        let switch = switch.clone();
        move || switch.lock().map(drop)
    });
    holder.kill();
    waiter
        .recv_timeout(timeout(10))
        .expect("the lock was not released by the killed holder")
        .unwrap();
}

#[test]
fn what_is_checked_under_the_lock_does_not_take_it_again() {
    let dir = tempfile::tempdir().unwrap();
    // Like a change, taking the lock creates the directory, and removes stale temporary files.
    let path = dir.path().join("run/app/ks");
    let switch = KillSwitch::new(&path);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let stale = dir.path().join("run/app/.ks.tmp.12.0");
    fs::write(&stale, b"{").unwrap();
    let lock = switch.lock().unwrap();
    assert!(!stale.exists());
    assert!(switch.lock_path().unwrap().exists());
    assert!(!path.exists());

    let new = Address::parse("unix:///run/app/new.sock").unwrap();
    let old = Address::parse("unix:///run/app/./old.sock").unwrap();
    // On another thread, so that a lock taken again would fail the test instead of hanging it.
    let checked = on_thread(move || {
        assert_eq!(lock.state().unwrap(), Default::default());
        lock.check_start(&new).unwrap();
        lock.check_start(&old).unwrap();

        // The file as another program (or an earlier change) left it.
        let path = lock.kill_switch().path().to_owned();
        fs::write(&path, br#"{"addresses":["unix:\/\/\/run\/app\/old.sock"]}"#).unwrap();
        lock.check_start(&new).unwrap();
        match lock.check_start(&old) {
            Err(Error::Disabled { address, globally }) => {
                assert_eq!(address, "unix:///run/app/old.sock");
                assert!(!globally);
            }
            other => panic!("{other:?}"),
        }
        let state = lock.state().unwrap();
        assert!(!state.global);
        assert_eq!(state.addresses, ["unix:///run/app/old.sock"]);

        fs::write(&path, br#"{"global":true}"#).unwrap();
        assert!(matches!(
            lock.check_start(&new),
            Err(Error::Disabled { globally: true, .. })
        ));
        // It fails closed, as check_start does.
        fs::write(&path, b"{").unwrap();
        assert!(matches!(
            lock.check_start(&new),
            Err(Error::Corrupt { path: named, .. }) if named == path
        ));
        fs::write(&path, b"[]").unwrap();
        assert!(matches!(
            lock.check_start(&new),
            Err(Error::Shape { path: named, .. }) if named == path
        ));
        assert!(matches!(lock.state(), Err(Error::Shape { .. })));
        lock
    });
    let lock = checked
        .recv_timeout(timeout(10))
        .expect("a check under the lock waited for the lock");
    drop(lock);
    assert!(switch.reset().unwrap());
}

/// Runs `program` with `args` as user and group 65534 (nobody), which must succeed.
fn as_nobody(program: &str, args: &[&std::ffi::OsStr]) {
    let status = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", program])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "{program} as nobody: {status:?}");
}

/// Another user's link, or FIFO, at the lock file's name in a shared sticky directory: the lock
/// and the read refuse it, and never create (nor block on) what it points to.
#[test]
fn another_users_link_or_fifo_at_the_lock_file_is_never_followed() {
    use std::os::unix::fs::PermissionsExt;

    let root = tempfile::tempdir().unwrap();
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let shared = root.path().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    // Where nobody could create a file, and root could.
    let victim = root.path().join("victim");
    let path = shared.join("switch.json");
    let lock = shared.join("switch.json.lock");
    type Make = fn(&Path, &Path);
    let cases: [(&str, Make); 2] = [
        ("link", |lock, victim| {
            as_nobody("ln", &["-s".as_ref(), victim.as_os_str(), lock.as_os_str()])
        }),
        ("fifo", |lock, _| as_nobody("mkfifo", &[lock.as_os_str()])),
    ];
    for (what, make) in cases {
        make(&lock, &victim);
        let switch = KillSwitch::new(&path);
        for (call, result) in [
            ("lock", switch.lock().map(drop)),
            ("try_lock", switch.try_lock().map(drop)),
            ("check_start", switch.check_start("unix:///run/w.sock")),
        ] {
            match result {
                Err(Error::Io { path: failed, .. }) => assert_eq!(failed, lock, "{what} {call}"),
                other => {
                    panic!("{what} {call}: expected Error::Io on the lock file, got {other:?}")
                }
            }
            assert!(
                fs::symlink_metadata(&victim).is_err(),
                "{what} {call}: nothing is created through the link"
            );
        }
        fs::remove_file(&lock).unwrap();
    }
}
