//! The file format: the PHP original's files read, unknown keys survive, and only real changes
//! write.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
};

use serde_json::{Value, json};
use worker_killswitch::KillSwitch;

use crate::support::{Helper, report, timeout};

pub(crate) fn disable_helper(path: &Path, address: &str) {
    let changed = KillSwitch::new(path).disable_address(address).unwrap();
    report(&format!("changed {changed}"));
}

fn disable_elsewhere(path: &Path, address: &str) -> String {
    let helper = Helper::spawn("disable", path, address);
    let changed = helper.expect("changed", timeout(30));
    helper.finish(timeout(30));
    changed
}

fn raw(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_file_written_by_php_is_read_and_its_unknown_keys_survive_a_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("WorkerKillSwitch.json");
    // json_encode's output: escaped slashes, no spaces, insertion order.
    fs::write(
        &path,
        br#"{"global":false,"addresses":["unix:\/\/\/tmp\/w.sock","tcp:\/\/LOCALHOST:080","unix:\/\/\/tmp\/.\/x.sock"],"deployment":{"release":"2024-05-01","by":"ci"},"comment":"do not edit"}"#,
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    let switch = KillSwitch::new(&path);
    assert!(!switch.is_disabled_globally().unwrap());
    assert_eq!(
        switch.disabled_addresses().unwrap(),
        [
            "tcp://localhost:80",
            "unix:///tmp/w.sock",
            "unix:///tmp/x.sock"
        ]
    );
    assert!(switch.is_disabled("unix:///tmp//w.sock").unwrap());
    assert!(switch.is_disabled("tcp://localhost:80").unwrap());
    assert!(!switch.is_disabled("tcp://127.0.0.1:80").unwrap());

    // Another process rewrites it.
    assert_eq!(disable_elsewhere(&path, "unix:///tmp/v.sock"), "true");
    assert_eq!(
        raw(&path),
        json!({
            "global": false,
            "addresses": [
                "tcp://localhost:80",
                "unix:///tmp/v.sock",
                "unix:///tmp/w.sock",
                "unix:///tmp/x.sock"
            ],
            "deployment": {"release": "2024-05-01", "by": "ci"},
            "comment": "do not edit"
        })
    );
    let text = fs::read_to_string(&path).unwrap();
    assert!(
        text.find("\"release\"").unwrap() < text.find("\"by\"").unwrap(),
        "key order changed: {text}"
    );
    assert_eq!(mode(&path), 0o640);

    // A file with the global flag set, as PHP writes it after disableSharedWorkersGlobally.
    fs::write(&path, br#"{"global":true,"addresses":[]}"#).unwrap();
    assert!(switch.is_disabled_globally().unwrap());
    assert!(switch.is_disabled("unix:///tmp/any.sock").unwrap());
}

#[test]
fn an_entry_with_no_canonical_form_is_kept_and_can_be_removed_by_its_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill-switch.json");
    fs::write(
        &path,
        br#"{"global":false,"addresses":["udg:\/\/\/tmp\/w.sock","unix:\/\/\/tmp\/w.sock"]}"#,
    )
    .unwrap();
    let switch = KillSwitch::new(&path);
    assert_eq!(
        switch.disabled_addresses().unwrap(),
        ["udg:///tmp/w.sock", "unix:///tmp/w.sock"]
    );
    switch.disable_address("unix:///tmp/z.sock").unwrap();
    assert_eq!(
        raw(&path)["addresses"],
        json!([
            "udg:///tmp/w.sock",
            "unix:///tmp/w.sock",
            "unix:///tmp/z.sock"
        ])
    );
    assert!(switch.re_enable_address("udg:///tmp/w.sock").unwrap());
    assert_eq!(
        switch.disabled_addresses().unwrap(),
        ["unix:///tmp/w.sock", "unix:///tmp/z.sock"]
    );
}

#[test]
fn reads_and_changes_that_change_nothing_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill-switch.json");
    let switch = KillSwitch::new(&path);

    // Reading a missing file creates nothing but the lock file.
    assert!(!switch.is_disabled_globally().unwrap());
    assert!(!switch.is_disabled("unix:///tmp/w.sock").unwrap());
    assert!(!path.exists());
    assert!(!switch.re_enable_all().unwrap());
    assert!(!switch.re_enable_address("unix:///tmp/w.sock").unwrap());
    assert!(!path.exists());

    assert!(switch.disable_address("unix:///tmp/w.sock").unwrap());
    assert_eq!(mode(&path), 0o644);
    let before = fs::metadata(&path).unwrap();
    let bytes = fs::read(&path).unwrap();

    assert!(!switch.disable_address("unix:///tmp//./w.sock").unwrap());
    assert!(
        !switch
            .disable_addresses(["unix:///tmp/w.sock", "unix:///tmp/w.sock"])
            .unwrap()
    );
    assert!(!switch.re_enable_globally().unwrap());
    assert!(!switch.re_enable_address("unix:///tmp/other.sock").unwrap());
    assert_eq!(switch.disabled_addresses().unwrap(), ["unix:///tmp/w.sock"]);
    switch.state().unwrap();
    assert_eq!(disable_elsewhere(&path, "unix:///tmp/w.sock"), "false");

    let after = fs::metadata(&path).unwrap();
    assert_eq!(after.ino(), before.ino(), "the file was replaced");
    assert_eq!(after.mtime_nsec(), before.mtime_nsec());
    assert_eq!(fs::read(&path).unwrap(), bytes);

    // A real change replaces the file, whole.
    assert!(switch.disable_globally().unwrap());
    assert_ne!(fs::metadata(&path).unwrap().ino(), before.ino());
}

#[test]
fn a_first_change_creates_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/app/kill-switch.json");
    let switch = KillSwitch::new(&path);
    assert!(!switch.is_disabled_globally().unwrap());
    assert!(switch.disable_globally().unwrap());
    assert_eq!(raw(&path), json!({"global": true, "addresses": []}));
}
