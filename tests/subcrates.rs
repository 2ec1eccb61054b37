//! Every re-exported crate is reachable through the facade.

#[test]
fn subcrates_are_reexported() {
    let _ = exsyst_worker::channel::Codec::Json;
    let _ = exsyst_worker::channel::DEFAULT_MAX_FRAME_LEN;
    let _: Option<exsyst_worker::worker::BoxError> = None;
    let _ = exsyst_worker::bootstrap::BootstrapProfile::default();
    let _ = exsyst_worker::killswitch::KillSwitch::new("/nonexistent/ks.json");
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
