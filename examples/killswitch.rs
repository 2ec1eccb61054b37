//! The seed's kill switch walk-through: save the state, disable shared workers globally and one
//! by address, revert, re-enable everything, and restore the saved state in one transaction.
//!
//! Run it with `cargo run --example killswitch`.

use exsyst_worker::{BootstrapProfile, WorkerFactory};

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let kill_switch = dir.path().join("WorkerKillSwitch.json");
    let socket = format!("unix://{}/Worker.sock", dir.path().display());

    let wbsp = BootstrapProfile::new().with_kill_switch_path(&kill_switch);
    let wf = WorkerFactory::with_profile(wbsp);

    // Save state:
    let global = wf.are_shared_workers_disabled_globally()?;
    let addresses = wf.get_disabled_shared_workers()?;
    println!("saved: global={global}, addresses={addresses:?}");

    // Disable them globally:
    wf.disable_shared_workers_globally()?;
    // Disable the one from the shared-worker example:
    wf.disable_shared_worker(socket.as_str())?;
    println!(
        "disabled: {}",
        std::fs::read_to_string(&kill_switch)?.trim()
    );

    // "Revert" our changes:
    wf.re_enable_shared_worker(socket.as_str())?;
    wf.re_enable_shared_workers_globally()?;
    // Re-enable every single worker:
    wf.re_enable_all_shared_workers()?;
    println!(
        "re-enabled: global={}, addresses={:?}",
        wf.are_shared_workers_disabled_globally()?,
        wf.get_disabled_shared_workers()?
    );

    // Really revert our changes:
    if global {
        wf.disable_shared_workers_globally()?;
    }
    // Any list of addresses is disabled (or re-enabled) in a single transaction.
    wf.disable_shared_worker(&addresses)?;
    println!(
        "restored: global={}, addresses={:?}",
        wf.are_shared_workers_disabled_globally()?,
        wf.get_disabled_shared_workers()?
    );
    Ok(())
}
