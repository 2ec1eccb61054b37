//! A program that forgot to call `run_if_worker` first: started as a worker, it runs master code
//! and tries to start a worker of its own, which the spawn path must refuse (instead of starting
//! workers that start workers without end).

// No `sys` module here: the OS is reached through the crates' safe APIs.
#![forbid(unsafe_code)]
// Test harnesses and chores start their helper processes directly (see clippy.toml).
#![allow(clippy::disallowed_methods)]

fn main() {
    let factory = exsyst_worker::WorkerFactory::new();
    match factory.create_worker::<tests_integration::workers::dedicated::Squarer>() {
        Ok(_) => {
            eprintln!("forgetful-master: started a worker it should not have");
            std::process::exit(3);
        }
        Err(e) => {
            eprintln!("forgetful-master: {e:?}");
            std::process::exit(4);
        }
    }
}
