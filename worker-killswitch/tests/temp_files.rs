//! Temporary files: a change removes the stale ones of its own switch, and nothing else.

use std::{collections::BTreeSet, fs, path::Path};

use worker_killswitch::{Error, KillSwitch};

use crate::support::{Helper, timeout};

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn touch(dir: &Path, names: &[&str]) {
    for name in names {
        fs::write(dir.join(name), b"{\"global\":tr").unwrap();
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|&n| n.to_owned()).collect()
}

#[test]
fn a_change_removes_only_its_own_stale_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    // A switch whose name extends this one's, in the middle of a change: it holds its lock and
    // has written its temporary file, but not yet renamed it.
    let mut writer = Helper::spawn("hold-lock", &dir.path().join("ks.tmp.x"), "");
    writer.expect("locked", timeout(30));
    let in_flight: Vec<String> = names(dir.path())
        .into_iter()
        .filter(|n| n.starts_with(".ks.tmp.x.tmp."))
        .collect();
    assert_eq!(in_flight.len(), 1, "{in_flight:?}");
    let in_flight = in_flight[0].as_str();

    let others = [
        // The stale temporary files of switches named `ks.tmp.1` and `ks.tmp.1.2`.
        ".ks.tmp.1.tmp.77.0",
        ".ks.tmp.1.2.tmp.77.0",
        // Names near this switch's pattern that are not in it.
        ".ks.tmp.77",
        ".ks.tmp.77.",
        ".ks.tmp..0",
        ".ks.tmp.7a.0",
        ".ks.tmp.77.0.bak",
        ".ks.tmp.77.0.1",
        ".ks.tmp.+7.0",
        "ks.tmp.77.0",
        ".KS.tmp.77.0",
    ];
    let own_stale = [".ks.tmp.77.0", ".ks.tmp.4294967295.18446744073709551615"];
    touch(dir.path(), &others);
    touch(dir.path(), &own_stale);

    let switch = KillSwitch::new(dir.path().join("ks"));
    assert!(switch.disable_globally().unwrap());

    let mut expected = set(&others);
    expected.extend(set(&["ks", "ks.lock", "ks.tmp.x.lock", in_flight]));
    assert_eq!(names(dir.path()), expected);

    // The other switch's own next change, once its writer is gone, removes its leftover.
    writer.kill();
    assert!(
        KillSwitch::new(dir.path().join("ks.tmp.x"))
            .disable_globally()
            .unwrap()
    );
    expected.remove(in_flight);
    expected.insert("ks.tmp.x".to_owned());
    assert_eq!(names(dir.path()), expected);
    assert!(switch.is_disabled_globally().unwrap());
}

/// Every call on `switch` must fail with [`Error::InvalidPath`] naming its path.
fn assert_refused(switch: &KillSwitch) {
    let results = [
        switch.lock_path().map(drop),
        switch.lock().map(drop),
        switch.try_lock().map(drop),
        switch.state().map(drop),
        switch.is_disabled_globally().map(drop),
        switch.disabled_addresses().map(drop),
        switch.is_disabled("unix:///a.sock").map(drop),
        switch.check_start("unix:///a.sock"),
        switch.disable_globally().map(drop),
        switch.re_enable_globally().map(drop),
        switch.disable_address("unix:///a.sock").map(drop),
        switch.re_enable_address("unix:///a.sock").map(drop),
        switch.re_enable_all().map(drop),
        switch.reset().map(drop),
    ];
    for result in results {
        match result {
            Err(ref error @ Error::InvalidPath { ref path, reason }) => {
                assert_eq!(path, switch.path());
                assert!(!reason.is_empty());
                let message = error.to_string();
                assert!(message.contains(&path.display().to_string()), "{message}");
                assert!(message.starts_with(char::is_lowercase) && !message.ends_with('.'));
            }
            other => panic!("{} gave {other:?}", switch.path().display()),
        }
    }
}

#[test]
fn a_switch_may_not_be_named_like_another_switchs_temporary_or_lock_file() {
    let dir = tempfile::tempdir().unwrap();
    // Each would be deleted by the cleanup of another switch (`ks`, `ks.tmp.x`), or replace
    // another switch's lock file (`ks`, `kill-switch.json`): disabled workers would start.
    let refused = [
        ".ks.tmp.1.2",
        ".ks.tmp.x.tmp.77.0",
        ".ks.tmp.1.2.tmp.3.4",
        "ks.lock",
        "kill-switch.json.lock",
        "ks.tmp.1.lock",
    ];
    for name in refused {
        // Written by hand (or by the PHP original): it is refused, not read, so starts fail.
        fs::write(dir.path().join(name), br#"{"global":false}"#).unwrap();
        assert_refused(&KillSwitch::new(dir.path().join(name)));
    }
    assert_eq!(names(dir.path()), set(&refused), "a refused switch wrote");

    // A path with no file name is no kill switch either; nothing is created for it.
    let nested = dir.path().join("nested");
    assert_refused(&KillSwitch::new(nested.join("..")));
    assert_refused(&KillSwitch::new("/"));
    assert!(!nested.exists());

    // Their neighbours are fine, and each cleans only its own temporary files.
    let fine = [
        "ks",
        "ks.tmp.1",
        "ks.tmp.1.2",
        ".ks.tmp.x",
        ".ks.tmp.1.2.bak",
        ".ks.tmp.1.",
        "..tmp.1.2",
        ".lock",
        "ks.locked",
        "ks.lock.json",
    ];
    for name in fine {
        let switch = KillSwitch::new(dir.path().join(name));
        assert!(switch.disable_globally().unwrap(), "{name}");
        touch(dir.path(), &[&format!(".{name}.tmp.7.8")]);
    }
    for name in fine {
        let switch = KillSwitch::new(dir.path().join(name));
        assert!(!switch.reset().unwrap());
        assert!(switch.re_enable_globally().unwrap(), "{name}");
        assert!(
            !dir.path().join(format!(".{name}.tmp.7.8")).exists(),
            "{name}"
        );
    }
    // Which is why those names are refused: `ks` and `ks.tmp.1.2` took them for their own
    // temporary files, and removed them.
    let mut expected = set(&refused);
    expected.remove(".ks.tmp.1.2");
    expected.remove(".ks.tmp.1.2.tmp.3.4");
    for name in fine {
        expected.insert(name.to_owned());
        expected.insert(format!("{name}.lock"));
    }
    assert_eq!(names(dir.path()), expected);
}
