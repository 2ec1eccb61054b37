//! Admin cookies: from files only their owner can read, and never shown.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use worker_shared::{AdminCookie, Error, SharedWorker};

use crate::support::{Config, Server, Transport};

fn write(path: &Path, content: &[u8], mode: u32) {
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_cookie_file_others_can_access_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cookie");
    for mode in [0o644, 0o640, 0o604, 0o620, 0o601] {
        write(&path, b"s3cret", mode);
        match AdminCookie::from_file(&path) {
            Err(Error::CookieFileMode {
                path: refused,
                mode: found,
            }) => {
                assert_eq!(refused, path);
                assert_eq!(found & 0o777, mode);
            }
            other => panic!("mode {mode:o}: expected a refusal, got {other:?}"),
        }
    }
}

#[test]
fn a_private_cookie_file_is_read_without_its_line_end() {
    let server = Server::start(
        Transport::Unix,
        Config {
            cookie: Some(b"s3cret".to_vec()),
            ..Config::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in [
        ("lf", &b"s3cret\n"[..]),
        ("crlf", b"s3cret\r\n"),
        ("bare", b"s3cret"),
    ] {
        let path = dir.path().join(name);
        write(&path, content, 0o600);
        let cookie = AdminCookie::from_file(&path).unwrap();
        let mut worker = SharedWorker::connect(&server.address).unwrap();
        assert!(
            worker.query_privileged(&cookie).unwrap().privileged,
            "{name}"
        );
    }
}

#[test]
fn missing_empty_and_special_cookie_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    assert!(matches!(
        AdminCookie::from_file(&missing),
        Err(Error::CookieFile { path, source })
            if path == missing && source.kind() == std::io::ErrorKind::NotFound
    ));
    let empty = dir.path().join("empty");
    write(&empty, b"\n", 0o600);
    assert!(matches!(
        AdminCookie::from_file(&empty),
        Err(Error::InvalidCookie { .. })
    ));
    let subdir = dir.path().join("dir");
    fs::create_dir(&subdir).unwrap();
    fs::set_permissions(&subdir, fs::Permissions::from_mode(0o700)).unwrap();
    assert!(matches!(
        AdminCookie::from_file(&subdir),
        Err(Error::CookieFile { source, .. }) if source.kind() == std::io::ErrorKind::InvalidInput
    ));
    let huge = dir.path().join("huge");
    write(&huge, &vec![b'x'; 64 * 1024 + 1], 0o600);
    assert!(matches!(
        AdminCookie::from_file(&huge),
        Err(Error::InvalidCookie { .. })
    ));
}

/// Every way a cookie comes in, as a function of its bytes.
type Source = fn(&[u8], &Path) -> Result<AdminCookie, Error>;

/// Each source of a cookie: text, bytes, the conversions, a file (with and without a line end),
/// and a bootstrap profile by value and by file (the route of `connect_or_start`, and of the
/// operators' programs' `$EXSYST_WORKER_ADMIN_COOKIE`, which is `new`).
const SOURCES: [(&str, Source); 7] = [
    ("new(String)", |b, _| {
        AdminCookie::new(String::from_utf8(b.to_vec()).unwrap())
    }),
    ("new(Vec<u8>)", |b, _| AdminCookie::new(b.to_vec())),
    ("try_from(&[u8])", |b, _| AdminCookie::try_from(b)),
    ("from_file", |b, dir| {
        let path = dir.join("cookie");
        write(&path, b, 0o600);
        AdminCookie::from_file(&path)
    }),
    ("from_file, with a line end", |b, dir| {
        let path = dir.join("cookie-nl");
        write(&path, &[b, b"\r\n"].concat(), 0o600);
        AdminCookie::from_file(&path)
    }),
    ("profile by value", |b, _| {
        let profile = worker_bootstrap::BootstrapProfile::new().with_admin_cookie(b.to_vec());
        AdminCookie::from_profile(&profile).map(Option::unwrap)
    }),
    ("profile by file", |b, dir| {
        let path = dir.join("cookie-profile");
        write(&path, b, 0o600);
        let profile = worker_bootstrap::BootstrapProfile::new().with_admin_cookie_file(&path);
        AdminCookie::from_profile(&profile).map(Option::unwrap)
    }),
];

#[test]
fn one_length_rule_for_every_source_of_a_cookie() {
    let max = AdminCookie::MAX_LEN;
    assert_eq!(max, 4096);
    // (length, accepted)
    let lengths = [
        (0, false),
        (1, true),
        (32, true),
        (max - 1, true),
        (max, true),
        (max + 1, false),
        (max + 2, false),
        (max + 3, false),
        (64 * 1024, false),
        (64 * 1024 + 1, false),
        (1024 * 1024, false),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, source) in SOURCES {
        for (len, accepted) in lengths {
            let made = source(&vec![b'k'; len], dir.path());
            match (accepted, made) {
                (true, Ok(_)) => {}
                (false, Err(Error::InvalidCookie { .. })) => {}
                (_, other) => panic!("{name}, {len} bytes: accepted {accepted}, got {other:?}"),
            }
        }
    }
}

#[test]
fn cookies_are_made_from_text_or_bytes_but_never_empty() {
    assert!(AdminCookie::new("text").is_ok());
    assert!(AdminCookie::new(vec![0u8, 255]).is_ok());
    assert!(AdminCookie::try_from(String::from("owned")).is_ok());
    assert!(AdminCookie::try_from(&b"bytes"[..]).is_ok());
    assert!(matches!(
        AdminCookie::new(""),
        Err(Error::InvalidCookie { .. })
    ));
    assert!(matches!(
        AdminCookie::try_from(Vec::new()),
        Err(Error::InvalidCookie { .. })
    ));
}

#[test]
fn a_cookie_never_shows() {
    let cookie = AdminCookie::new("hunter2-the-secret").unwrap();
    for shown in [
        format!("{cookie:?}"),
        format!("{cookie:#?}"),
        cookie.to_string(),
        format!("{:?}", Some(&cookie)),
    ] {
        assert!(!shown.contains("hunter2"), "{shown}");
    }
    assert_eq!(cookie.to_string(), "<redacted>");
}
