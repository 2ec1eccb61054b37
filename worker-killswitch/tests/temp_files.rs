//! Temporary files: a change removes the stale ones of its own switch, and nothing else.

use std::{collections::BTreeSet, fs, path::Path};

use worker_killswitch::KillSwitch;

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
