//! A kill switch that cannot be understood fails closed, with an error that names it.

use std::{error::Error as _, fs, path::Path};

use worker_killswitch::{Error, KillSwitch};

use crate::support::{Helper, report, timeout};

/// Reports what `check_start` says in this process: `ok`, or the error variant.
pub(crate) fn check_start_helper(path: &Path, address: &str) {
    let outcome = match KillSwitch::new(path).check_start(address) {
        Ok(()) => "ok".to_owned(),
        Err(Error::Corrupt { .. }) => "corrupt".to_owned(),
        Err(Error::Shape { .. }) => "shape".to_owned(),
        Err(Error::Disabled { globally, .. }) => format!("disabled globally={globally}"),
        Err(e) => format!("other {e:?}"),
    };
    report(&format!("outcome {outcome}"));
}

fn check_start_elsewhere(path: &Path, address: &str) -> String {
    let helper = Helper::spawn("check-start", path, address);
    let outcome = helper.expect("outcome", timeout(30));
    helper.finish(timeout(30));
    outcome
}

const ADDRESS: &str = "unix:///run/app/worker.sock";

/// Every way of asking must give the error `expect` accepts, and no change may touch the file.
fn assert_fails_closed(path: &Path, bytes: &[u8], expect: fn(&Error) -> bool) {
    fs::write(path, bytes).unwrap();
    let switch = KillSwitch::new(path);
    let results = [
        switch.is_disabled_globally().map(drop),
        switch.disabled_addresses().map(drop),
        switch.state().map(drop),
        switch.is_disabled(ADDRESS).map(drop),
        switch.check_start(ADDRESS),
        switch.disable_address(ADDRESS).map(drop),
        switch.re_enable_address(ADDRESS).map(drop),
        switch.disable_globally().map(drop),
        switch.re_enable_all().map(drop),
    ];
    for result in results {
        let error = result.expect_err("a broken kill switch was accepted");
        assert!(expect(&error), "{bytes:?} gave {error:?}");
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.starts_with(char::is_lowercase) && !message.ends_with('.'));
    }
    assert_eq!(fs::read(path).unwrap(), bytes, "a refused change wrote");
}

#[test]
fn a_file_that_does_not_parse_is_corrupt_and_refuses_starts_until_reset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill-switch.json");
    let switch = KillSwitch::new(&path);
    for bytes in [
        &b""[..],
        b"   \n",
        br#"{"global": fal"#,
        br#"{"global":false,"addresses":["unix:\/\/\/tm"#,
        br#"{"global":false,"addresses":[]} trailing"#,
        b"\xff\xfe",
    ] {
        assert_fails_closed(&path, bytes, |e| {
            matches!(e, Error::Corrupt { source, .. } if source.is_syntax() || source.is_eof())
                && e.source().is_some()
        });
    }
    match switch.check_start(ADDRESS) {
        Err(Error::Corrupt { path: named, .. }) => assert_eq!(named, path),
        other => panic!("{other:?}"),
    }
    assert_eq!(check_start_elsewhere(&path, ADDRESS), "corrupt");

    assert!(switch.reset().unwrap());
    switch.check_start(ADDRESS).unwrap();
    assert_eq!(check_start_elsewhere(&path, ADDRESS), "ok");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&fs::read(&path).unwrap()).unwrap(),
        serde_json::json!({"global": false, "addresses": []})
    );
    // A file that parses is not reset.
    switch.disable_address(ADDRESS).unwrap();
    assert!(!switch.reset().unwrap());
    assert!(switch.is_disabled(ADDRESS).unwrap());
}

#[test]
fn a_file_of_the_wrong_shape_refuses_starts_until_reset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill-switch.json");
    let switch = KillSwitch::new(&path);
    for bytes in [
        &b"[]"[..],
        b"null",
        b"\"global\"",
        br#"{"global": 1}"#,
        br#"{"global": "false"}"#,
        br#"{"global": null}"#,
        br#"{"addresses": "unix:///run/app/worker.sock"}"#,
        br#"{"addresses": {"0": "unix:///run/app/worker.sock"}}"#,
        br#"{"global": false, "addresses": [1]}"#,
        br#"{"global": false, "addresses": [null]}"#,
    ] {
        assert_fails_closed(&path, bytes, |e| matches!(e, Error::Shape { .. }));
    }
    assert_eq!(check_start_elsewhere(&path, ADDRESS), "shape");
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    assert!(switch.reset().unwrap());
    assert_eq!(switch.state().unwrap(), Default::default());
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&path).unwrap().permissions())
            & 0o777,
        0o600
    );
}

#[test]
fn a_disabled_worker_may_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill-switch.json");
    let switch = KillSwitch::new(&path);
    // A missing file, and the reset of a missing file, disable nothing.
    assert!(!switch.reset().unwrap());
    assert!(!path.exists());
    switch.check_start(ADDRESS).unwrap();

    switch
        .disable_address("unix:///run/app/./worker.sock")
        .unwrap();
    match switch.check_start("unix:///run//app/worker.sock") {
        Err(Error::Disabled { address, globally }) => {
            assert_eq!(address, ADDRESS);
            assert!(!globally);
        }
        other => panic!("{other:?}"),
    }
    switch.check_start("unix:///run/app/other.sock").unwrap();
    assert_eq!(
        check_start_elsewhere(&path, ADDRESS),
        "disabled globally=false"
    );

    switch.disable_globally().unwrap();
    assert!(matches!(
        switch.check_start("tcp://localhost:80"),
        Err(Error::Disabled { globally: true, .. })
    ));
    assert_eq!(
        check_start_elsewhere(&path, "tcp://localhost:80"),
        "disabled globally=true"
    );
    // Re-enabling one address leaves the global flag; re-enabling globally leaves the address.
    switch.re_enable_address(ADDRESS).unwrap();
    assert!(switch.is_disabled(ADDRESS).unwrap());
    switch.disable_address(ADDRESS).unwrap();
    switch.re_enable_globally().unwrap();
    assert!(switch.is_disabled(ADDRESS).unwrap());
    assert!(!switch.is_disabled("tcp://localhost:80").unwrap());

    assert!(matches!(
        switch.check_start("tcp://localhost"),
        Err(Error::InvalidAddress { .. })
    ));
    // One invalid address fails the whole transaction.
    assert!(matches!(
        switch.disable_addresses(["tcp://localhost:81", "udp://localhost:81"]),
        Err(Error::InvalidAddress { reason, .. }) if reason.contains("scheme")
    ));
    assert!(!switch.is_disabled("tcp://localhost:81").unwrap());

    assert!(switch.re_enable_all().unwrap());
    assert_eq!(switch.state().unwrap(), Default::default());
    assert!(!switch.re_enable_all().unwrap());
}
