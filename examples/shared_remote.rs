//! A shared worker on TCP with the JSON codec, queried and stopped from another process.
//!
//! Run it with `cargo run --example shared_remote`.
//!
//! This process starts the worker (a daemon listening on `127.0.0.1`), then runs itself again
//! as a second, unrelated master, which sends a message, queries the worker with and without
//! the admin cookie, and stops it. From another machine the second master would do the same
//! with the worker's real address; what no machine can do is *start* a worker on another one
//! (that is `Error::NotLocal`).
//!
//! A worker reachable from the network speaks JSON, which decodes nothing but data. The admin
//! cookie is read from a file only its owner may read, by both processes; it never crosses the
//! wire (both sides prove they know it), and never appears on a command line.

// The second master is started directly: it is a program of ours, not a worker.
#![allow(clippy::disallowed_methods)]

use std::{net::TcpListener, os::unix::fs::PermissionsExt, process::Command};

use exsyst_worker::{
    BootstrapProfile, BoxError, Codec, Connection, EventedWorker, SharedRegistryExt, SharedWorker,
    SharedWorkerImpl, Worker, WorkerFactory, WorkerLoop, worker::WorkerStatus,
};
use serde::{Deserialize, Serialize};

/// What masters send: plain data, as JSON.
#[derive(Debug, Serialize, Deserialize)]
struct Order {
    item: String,
    quantity: u32,
}

/// Keeps a tally of the orders it is sent.
struct Tally {
    orders: u64,
    items: u64,
}

impl Worker for Tally {
    const NAME: &'static str = "shared_remote::Tally";
    type Args = ();

    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Tally {
            orders: 0,
            items: 0,
        })
    }
}

impl EventedWorker for Tally {
    type Message = Order;
    type Reply = String;

    fn on_message(
        &mut self,
        order: Order,
        connection: &mut Connection<String>,
        _: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        self.orders += 1;
        self.items += u64::from(order.quantity);
        connection.send(&format!("{} x {}: noted", order.quantity, order.item))?;
        Ok(())
    }
}

impl SharedWorkerImpl for Tally {
    fn on_query(&mut self, privileged: bool) -> Option<WorkerStatus> {
        // Anyone may know it is alive; the figures are for the cookie's holders.
        if privileged {
            Some(format!("{} orders, {} items", self.orders, self.items).into())
        } else {
            Some("taking orders".into())
        }
    }
}

fn main() -> anyhow::Result<()> {
    exsyst_worker::registry().shared::<Tally>().run_if_worker();

    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, address, cookie_file] = args.as_slice()
        && flag == "--peer"
    {
        return peer(address, cookie_file);
    }

    let dir = tempfile::tempdir()?;
    let cookie_file = dir.path().join("admin-cookie");
    std::fs::write(
        &cookie_file,
        "change me, and keep me in a file of mode 0600\n",
    )?;
    std::fs::set_permissions(&cookie_file, std::fs::Permissions::from_mode(0o600))?;
    // A free port, for the example's sake; a real worker has a port of its own.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let address = format!("tcp://127.0.0.1:{port}");

    let profile = BootstrapProfile::new()
        .with_codec(Codec::Json)
        .with_admin_cookie_file(&cookie_file);
    let factory = WorkerFactory::with_profile(profile);
    let pid = factory.start_shared_worker::<Tally>(&address)?;
    println!("started the worker at {address}, pid {pid}");

    let status = Command::new(std::env::current_exe()?)
        .arg("--peer")
        .arg(&address)
        .arg(&cookie_file)
        .status()?;
    anyhow::ensure!(status.success(), "the other master failed: {status}");

    match factory.get_shared_worker_process_id(&address) {
        Err(exsyst_worker::Error::Shared(e)) if e.is_not_running() => {
            println!("the worker is gone")
        }
        other => anyhow::bail!("the worker should be gone: {other:?}"),
    }
    Ok(())
}

/// The other master: it did not start the worker, and knows only its address and where the
/// cookie is.
fn peer(address: &str, cookie_file: &str) -> anyhow::Result<()> {
    let mut worker = SharedWorker::connect(address)?;
    println!(
        "[other process] connected to {} (pid {}, codec {:?})",
        worker.implementation(),
        worker.pid(),
        worker.codec()
    );
    worker.send_message(&Order {
        item: "coffee".into(),
        quantity: 2,
    })?;
    println!("[other process] {}", worker.receive_message::<String>()?);
    if let Some(status) = worker.query()?.status {
        println!("[other process] anyone sees: {status}");
    }
    let cookie = exsyst_worker::AdminCookie::from_file(cookie_file)?;
    if let Some(status) = worker.query_privileged(&cookie)?.status {
        println!("[other process] the cookie's holder sees: {status}");
    }
    drop(worker);
    // Returns once the worker acknowledged and, on this machine, once it has exited.
    let factory =
        WorkerFactory::with_profile(BootstrapProfile::new().with_admin_cookie_file(cookie_file));
    factory.stop_shared_worker(address)?;
    println!("[other process] stopped it");
    Ok(())
}
