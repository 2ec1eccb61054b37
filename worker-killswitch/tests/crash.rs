//! A writer killed while it holds the lock.

use std::{fs, io, path::Path, sync::mpsc, thread};

use worker_killswitch::KillSwitch;

use crate::{
    concurrency::check_raw,
    support::{Helper, report, timeout},
};

/// Takes the exclusive lock the way a change does, leaves a half-written temporary file as a
/// writer killed before its rename would, then blocks until killed.
pub(crate) fn hold_lock_helper(path: &Path) {
    let switch = KillSwitch::new(path);
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(switch.lock_path().unwrap())
        .unwrap();
    fs2::FileExt::lock_exclusive(&lock).unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    let temp = path.with_file_name(format!(".{name}.tmp.{}.0", std::process::id()));
    fs::write(&temp, br#"{"global":true,"addresses":["unix:///hal"#).unwrap();
    report("locked");
    let _ = io::copy(&mut io::stdin(), &mut io::sink());
    panic!("the hold-lock helper was not killed");
}

#[test]
fn a_killed_lock_holder_releases_the_lock_and_leaves_the_last_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill-switch.json");
    let switch = KillSwitch::new(&path);
    switch
        .disable_addresses(["unix:///run/a.sock", "unix:///run/b.sock"])
        .unwrap();
    let last_complete = fs::read(&path).unwrap();

    let mut holder = Helper::spawn("hold-lock", &path, "");
    holder.expect("locked", timeout(30));
    let lock = fs::File::open(switch.lock_path().unwrap()).unwrap();
    let contended = fs2::FileExt::try_lock_exclusive(&lock).unwrap_err();
    assert_eq!(contended.kind(), fs2::lock_contended_error().kind());
    drop(lock);
    // The half-written temporary file is beside the kill switch, and fools no reader.
    assert_eq!(fs::read(&path).unwrap(), last_complete);
    let temps: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains(".tmp."))
        .collect();
    assert_eq!(temps.len(), 1);

    holder.kill();

    // Promptly: the kernel released the dead process's lock.
    let (tx, rx) = mpsc::channel();
    let change = {
        let switch = switch.clone();
        thread::spawn(move || tx.send(switch.disable_address("unix:///run/c.sock")))
    };
    let changed = rx
        .recv_timeout(timeout(10))
        .expect("the lock was not released by the killed holder");
    assert!(changed.unwrap());
    change.join().unwrap().unwrap();

    assert_eq!(
        check_raw(&fs::read(&path).unwrap()),
        (
            false,
            vec![
                "unix:///run/a.sock".to_owned(),
                "unix:///run/b.sock".to_owned(),
                "unix:///run/c.sock".to_owned(),
            ]
        )
    );
    // The change removed the dead writer's temporary file under the lock.
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["kill-switch.json", "kill-switch.json.lock"]);
}
