//! A shared worker embedded in a program of your own: the seed's `MySharedWorkerImpl`,
//! served on a thread of this process instead of a daemon, then queried and stopped.
//!
//! Run it with `cargo run --example shared_embedded`.
//!
//! To serve on the calling thread instead, call `SharedServer::run(worker)`: it returns once
//! the worker is stopped (by a client with the cookie, by `exsyst_worker::shared::stop_current()`
//! from inside the worker, or, with `with_stop_on_signals(true)`, by SIGTERM or SIGINT).

use exsyst_worker::{AdminCookie, SharedServer, SharedServerConfig, SharedWorker, Worker};

// Shared with the tests, which re-export its items.
#[allow(unreachable_pub)]
#[path = "seed/my_shared_worker_impl.rs"]
mod my_shared_worker_impl;

use my_shared_worker_impl::MySharedWorkerImpl;

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let address = format!("unix://{}/Worker.sock", dir.path().display());
    let cookie = AdminCookie::new("This value is not so secret, change it in your app !")?;

    // Listening as soon as `bind` returns; `spawn` returns once the worker is built.
    let config = SharedServerConfig::default().with_cookie(cookie.clone());
    let server = SharedServer::bind(&address, config)?.spawn(|| MySharedWorkerImpl::new(()))?;

    // Three masters in turn, as the seed's `MasterOfShared.php` run three times.
    for name in ["world", "Rust", "again"] {
        let mut worker = SharedWorker::connect(&address)?;
        worker.send_message(name)?;
        println!("{}", worker.receive_message::<String>()?);
    }

    // `--stop`: a client with the cookie stops it; `server.stop()` would too.
    let mut admin = SharedWorker::connect(&address)?;
    if let Some(status) = admin.query()?.status {
        println!("{status}");
    }
    admin.stop(&cookie)?;
    server.join()?;
    println!(
        "stopped; socket file left behind: {}",
        dir.path().join("Worker.sock").exists()
    );
    Ok(())
}
