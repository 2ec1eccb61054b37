//! The seed's shared-worker example: `MasterOfShared` and `MySharedWorkerImpl`.
//!
//! The first run starts the worker, a daemon, and every run is one of its masters:
//!
//! ```sh
//! cargo run --example shared_counter            # Hello world ! You're my 1st client.
//! cargo run --example shared_counter -- Rust    # Hello Rust ! You're my 2nd client.
//! cargo run --example shared_counter            # Hello world ! You're my 3rd client.
//! cargo run --example shared_counter -- --stop  # stops it (and waits until it is gone)
//! ```
//!
//! The socket is `shared_counter.sock` in this user's private runtime directory
//! (`$XDG_RUNTIME_DIR/exsyst-worker`, or `/tmp/exsyst-worker-<uid>`); set
//! `SHARED_COUNTER_ADDRESS` to use another address.
//!
//! The daemon is this very program, re-executed: that is why `run_if_worker` comes first in
//! `main`. Masters that start at once are all served by one daemon, and its constructor runs
//! once.

use exsyst_worker::{BootstrapProfile, SharedRegistryExt, WorkerFactory};

// Shared with the tests, which re-export its items.
#[allow(unreachable_pub)]
#[path = "seed/my_shared_worker_impl.rs"]
mod my_shared_worker_impl;

use my_shared_worker_impl::MySharedWorkerImpl;

/// The seed's `MasterOfShared`.
fn main() -> anyhow::Result<()> {
    // First thing in main: in the daemon, this serves the worker and exits.
    exsyst_worker::registry()
        .shared::<MySharedWorkerImpl>()
        .run_if_worker();

    let address = match std::env::var("SHARED_COUNTER_ADDRESS") {
        Ok(address) => address,
        Err(_) => {
            let dir = exsyst_worker::shared::runtime_dir()?;
            format!("unix://{}", dir.join("shared_counter.sock").display())
        }
    };
    let wbsp = BootstrapProfile::new()
        .with_admin_cookie("This value is not so secret, change it in your app !");
    let wf = WorkerFactory::with_profile(wbsp);

    let arg = std::env::args().nth(1);
    if arg.as_deref() == Some("--stop") {
        match wf.stop_shared_worker(&address) {
            Ok(()) => println!("stopped the shared worker at {address}"),
            Err(exsyst_worker::Error::Shared(e)) if e.is_not_running() => {
                println!("no shared worker runs at {address}")
            }
            Err(e) => return Err(e.into()),
        }
        return Ok(());
    }
    let mut w = wf.connect_to_shared_worker::<MySharedWorkerImpl>(&address)?;
    w.send_message(arg.as_deref().unwrap_or("world"))?;
    println!("{:?}", w.receive_message::<String>()?);
    Ok(())
}
