//! Concurrent changes from several processes: none is lost, and no reader sees a torn file.

use std::{
    collections::{BTreeSet, HashSet},
    fs, io,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

use serde_json::Value;
use worker_killswitch::KillSwitch;

use crate::support::{Helper, report, timeout};

fn worker_address(dir: &Path, writer: usize, j: usize) -> String {
    format!("unix://{}/w{writer}-{j}.sock", dir.display())
}

/// Whether a toggling writer leaves its `j`-th address disabled.
fn stays_disabled(j: usize) -> bool {
    j.is_multiple_of(3)
}

fn expected_addresses(dir: &Path, writers: usize, count: usize) -> Vec<String> {
    let set: BTreeSet<String> = (0..writers)
        .flat_map(|w| {
            (0..count)
                .filter(|&j| stays_disabled(j))
                .map(move |j| worker_address(dir, w, j))
        })
        .collect();
    set.into_iter().collect()
}

/// Parses the raw bytes of the file, without the crate, and checks the shape it must have.
pub(crate) fn check_raw(bytes: &[u8]) -> (bool, Vec<String>) {
    let value: Value = serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "torn or unparsable kill switch ({e}): {:?}",
            String::from_utf8_lossy(bytes)
        )
    });
    let global = value["global"].as_bool().expect("`global` is not a bool");
    let addresses: Vec<String> = value["addresses"]
        .as_array()
        .expect("`addresses` is not an array")
        .iter()
        .map(|a| a.as_str().expect("an address is not a string").to_owned())
        .collect();
    assert!(
        addresses.windows(2).all(|w| w[0] < w[1]),
        "addresses are not sorted and deduplicated: {addresses:?}"
    );
    (global, addresses)
}

/// Toggles `count` addresses of its own, each with its own transactions, leaving those that
/// `stays_disabled` disabled. Writer 0 also toggles the global flag.
pub(crate) fn toggle_helper(path: &Path, arg: &str) {
    let (writer, count) = arg.split_once(',').unwrap();
    let (writer, count): (usize, usize) = (writer.parse().unwrap(), count.parse().unwrap());
    let switch = KillSwitch::new(path);
    let dir = path.parent().unwrap();
    report("ready");
    let mut go = String::new();
    io::stdin().read_line(&mut go).unwrap();
    for j in 0..count {
        let address = worker_address(dir, writer, j);
        let respelled = format!("unix://{}//./w{writer}-{j}.sock", dir.display());
        // Nobody else touches these addresses, so every call must change the file.
        if j % 4 == 0 {
            assert!(switch.disable_addresses([&address, &respelled]).unwrap());
        } else {
            assert!(switch.disable_address(&respelled).unwrap());
        }
        if !stays_disabled(j) {
            if j % 2 == 0 {
                assert!(switch.re_enable_addresses(vec![address]).unwrap());
            } else {
                assert!(switch.re_enable_address(&address).unwrap());
            }
        }
        if writer == 0 && j % 10 == 0 {
            assert!(switch.disable_globally().unwrap());
            assert!(switch.re_enable_globally().unwrap());
        }
    }
    report("done");
}

/// Reads the file, raw and through the crate, until its stdin closes.
pub(crate) fn reader_helper(path: &Path) {
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = Arc::clone(&stop);
    thread::spawn(move || {
        let _ = io::copy(&mut io::stdin(), &mut io::sink());
        stopper.store(true, Ordering::Relaxed);
    });
    report("ready");
    let (reads, distinct) = read_until(path, &stop, false);
    report(&format!("reads {reads} distinct {distinct}"));
}

/// Reads until `stop`; returns the number of reads and of distinct states seen.
///
/// A reader that also reads through the crate waits on the lock, which keeps its raw reads away
/// from writes; raw-only readers (`with_api` false) read at any moment, as a careless program
/// would.
fn read_until(path: &Path, stop: &AtomicBool, with_api: bool) -> (usize, usize) {
    let switch = KillSwitch::new(path);
    let mut seen = HashSet::new();
    let mut reads = 0;
    while !stop.load(Ordering::Relaxed) {
        let bytes = fs::read(path).unwrap();
        let (global, addresses) = check_raw(&bytes);
        if with_api {
            let state = switch.state().unwrap();
            assert!(state.addresses.windows(2).all(|w| w[0] < w[1]));
        }
        seen.insert((global, addresses));
        reads += 1;
    }
    (reads, seen.len())
}

fn temp_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.contains(".tmp."))
        .collect()
}

fn run_writers(path: &Path, writers: usize, count: usize) {
    let mut helpers: Vec<Helper> = (0..writers)
        .map(|w| Helper::spawn("toggle", path, &format!("{w},{count}")))
        .collect();
    for helper in &helpers {
        helper.expect("ready", timeout(30));
    }
    // Released together, so that they contend for the lock from the first change.
    for helper in &mut helpers {
        helper.send("go");
    }
    for helper in helpers {
        helper.expect("done", timeout(300));
        helper.finish(timeout(30));
    }
}

#[test]
fn eight_processes_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill-switch.json");
    run_writers(&path, 8, 250);

    let expected = expected_addresses(dir.path(), 8, 250);
    assert_eq!(expected.len(), 8 * 84);
    let switch = KillSwitch::new(&path);
    assert_eq!(switch.disabled_addresses().unwrap(), expected);
    assert!(!switch.is_disabled_globally().unwrap());
    assert_eq!(check_raw(&fs::read(&path).unwrap()), (false, expected));
    assert_eq!(temp_files(dir.path()), Vec::<String>::new());
}

#[test]
fn readers_never_see_a_torn_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill-switch.json");
    let switch = KillSwitch::new(&path);
    switch
        .disable_address("unix:///run/app/before.sock")
        .unwrap();

    let reader = Helper::spawn("reader", &path, "");
    reader.expect("ready", timeout(30));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = [false, true]
        .into_iter()
        .map(|with_api| {
            let (path, stop) = (path.clone(), Arc::clone(&stop));
            thread::spawn(move || read_until(&path, &stop, with_api))
        })
        .collect();

    run_writers(&path, 4, 60);

    stop.store(true, Ordering::Relaxed);
    let mut distinct = 0;
    for thread in threads {
        let (reads, seen) = thread.join().expect("a reader thread saw a bad file");
        assert!(reads > 0);
        distinct = distinct.max(seen);
    }
    // Otherwise the readers did not overlap the writers, and proved nothing.
    assert!(distinct > 1, "the reader threads saw only {distinct} state");
    let reports = reader.finish(timeout(30));
    let [report] = reports.as_slice() else {
        panic!("unexpected reader reports {reports:?}")
    };
    let reads: usize = report
        .strip_prefix("reads ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad reader report {report:?}"));
    assert!(reads > 0);

    let mut expected = expected_addresses(dir.path(), 4, 60);
    expected.push("unix:///run/app/before.sock".to_owned());
    expected.sort();
    assert_eq!(switch.disabled_addresses().unwrap(), expected);
}
