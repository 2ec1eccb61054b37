//! Every re-exported crate is reachable through the facade.

#[test]
fn subcrates_are_reexported() {
    let _ = exsyst_worker::channel::Codec::Json;
    let _ = exsyst_worker::channel::DEFAULT_MAX_FRAME_LEN;
    let _: Option<exsyst_worker::worker::BoxError> = None;
    let _ = exsyst_worker::bootstrap::BootstrapProfile::default();
    let _ = exsyst_worker::killswitch::KillSwitch::new("/nonexistent/ks.json");
    let _ = exsyst_worker::pool::WorkerPoolBuilder::new();
    let _ = exsyst_worker::shared::SharedServerConfig::default();
    let _: fn() -> bool = exsyst_worker::shared::stop_current;
    let _ = exsyst_worker::shared::DEFAULT_START_TIMEOUT;
    let _ = exsyst_worker::WorkerFactory::new();
}

#[test]
fn kill_switch_needs_a_path() {
    let factory = exsyst_worker::WorkerFactory::new();
    assert!(matches!(
        factory.are_shared_workers_disabled_globally(),
        Err(exsyst_worker::Error::NoKillSwitch)
    ));
}

#[test]
fn the_factory_drives_the_kill_switch_with_one_address_or_many() {
    let dir = tempfile::tempdir().unwrap();
    let factory = exsyst_worker::WorkerFactory::with_profile(
        exsyst_worker::BootstrapProfile::new().with_kill_switch_path(dir.path().join("ks.json")),
    );
    assert!(!factory.are_shared_workers_disabled_globally().unwrap());
    factory
        .disable_shared_worker("unix:///a//b/../c.sock")
        .unwrap();
    factory
        .disable_shared_worker(vec!["tcp://Example.org:80", "unix:///z.sock"])
        .unwrap();
    factory
        .disable_shared_worker(["tcp://localhost:1"])
        .unwrap();
    assert_eq!(
        factory.get_disabled_shared_workers().unwrap(),
        [
            "tcp://example.org:80",
            "tcp://localhost:1",
            "unix:///a/c.sock",
            "unix:///z.sock"
        ]
    );
    factory
        .re_enable_shared_worker(&["unix:///z.sock".to_string()][..])
        .unwrap();
    factory.disable_shared_workers_globally().unwrap();
    assert!(factory.are_shared_workers_disabled_globally().unwrap());
    factory.re_enable_shared_workers_globally().unwrap();
    assert_eq!(factory.get_disabled_shared_workers().unwrap().len(), 3);
    factory.re_enable_all_shared_workers().unwrap();
    assert!(factory.get_disabled_shared_workers().unwrap().is_empty());
    match factory.disable_shared_worker("ftp://nope") {
        Err(exsyst_worker::Error::KillSwitch(
            exsyst_worker::killswitch::Error::InvalidAddress { address, .. },
        )) => assert_eq!(address, "ftp://nope"),
        other => panic!("expected InvalidAddress, got {other:?}"),
    }
}

#[test]
fn stopping_a_shared_worker_needs_an_admin_cookie() {
    let factory = exsyst_worker::WorkerFactory::new();
    match factory.stop_shared_worker("unix:///nowhere/worker.sock") {
        Err(exsyst_worker::Error::Shared(exsyst_worker::shared::Error::NoCookie { address })) => {
            assert_eq!(address, "unix:///nowhere/worker.sock")
        }
        other => panic!("expected NoCookie, got {other:?}"),
    }
}

/// What crates.io and docs.rs show of each crate a user can depend on: none of it may be
/// missing, and the unpublished helpers must stay unpublished.
#[test]
fn every_published_crate_has_complete_package_metadata() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    #[allow(clippy::disallowed_methods)]
    let output = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut published = Vec::new();
    for package in metadata["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        if package["publish"] == serde_json::json!([]) {
            continue;
        }
        published.push(name.to_owned());
        for field in [
            "description",
            "license",
            "repository",
            "documentation",
            "rust_version",
        ] {
            let value = package[field].as_str().unwrap_or_default();
            assert!(!value.is_empty(), "{name}: no {field}");
        }
        let readme = package["readme"].as_str().unwrap_or_default();
        let manifest_dir = std::path::Path::new(package["manifest_path"].as_str().unwrap())
            .parent()
            .unwrap();
        assert!(
            manifest_dir.join(readme).is_file(),
            "{name}: no readme file ({readme:?})"
        );
        assert!(manifest_dir.join("LICENSE").is_file(), "{name}: no LICENSE");
        let keywords = package["keywords"].as_array().unwrap();
        assert!(
            (1..=5).contains(&keywords.len()),
            "{name}: keywords {keywords:?}"
        );
        for keyword in keywords {
            let keyword = keyword.as_str().unwrap();
            assert!(
                keyword.len() <= 20
                    && keyword
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{name}: keyword {keyword:?} is not one crates.io takes"
            );
        }
        assert!(
            !package["categories"].as_array().unwrap().is_empty(),
            "{name}: no categories"
        );
        assert_eq!(
            package["metadata"]["docs"]["rs"]["all-features"],
            serde_json::json!(true),
            "{name}: docs.rs settings"
        );
    }
    published.sort();
    assert_eq!(
        published,
        [
            "exsyst-worker",
            "worker-bootstrap",
            "worker-channel",
            "worker-core",
            "worker-killswitch",
            "worker-pool",
            "worker-shared"
        ]
    );
}

/// The async faces are re-exported at the root with the `tokio` feature.
#[cfg(feature = "tokio")]
#[test]
fn the_async_faces_are_reexported() {
    let _: Option<exsyst_worker::AsyncDedicatedWorker> = None;
    let _: Option<exsyst_worker::AsyncSharedWorker> = None;
    let _: Option<exsyst_worker::bootstrap::AsyncDedicatedWorker> = None;
    let _: Option<exsyst_worker::shared::AsyncSharedWorker> = None;
}
