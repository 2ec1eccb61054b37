//! Workers started from a binary whose `main` is not the user's: a test binary's is libtest's.
//!
//! A worker process is its master's executable run again, with its channel on standard input
//! and output. In a test binary, libtest would run first, print `running 3 tests` on that
//! channel, and run every test again in the worker. So [`enable_test_support!`] does the job of
//! `run_if_worker` in functions that the loader runs before `main` (constructors, in
//! `.init_array`): in a worker process, libtest never starts and never writes a byte; in any
//! other process, the constructors read one environment variable and return.
//!
//! (procspawn, which has the same problem, re-runs the test binary on one helper test with
//! `--exact`; here libtest would still print `running 1 test` on the channel.)
//!
//! Each use of the macro adds its registry in a constructor of priority 500; one of priority
//! 65535, after them all, runs the worker from their union. So a binary may use it
//! more than once (the doctests rustdoc merges into one binary, say), and an implementation that
//! none of them registers is the usual error, reported by the worker on its standard error,
//! never libtest's output on the channel.

use std::{
    ffi::OsString,
    panic::{self, AssertUnwindSafe},
    sync::{Mutex, PoisonError},
};

use crate::{Registry, init::ENV_IMPLEMENTATION, sys};

/// The registries given to [`enable_test_support!`] in this executable, in a worker process.
static REGISTRIES: Mutex<Vec<fn() -> Registry>> = Mutex::new(Vec::new());

/// The exit status of a Rust program whose `main` panicked.
const EXIT_PANIC: i32 = 101;

/// Makes the workers registered in `$registry` startable from this binary's tests: `#[test]`
/// functions under `cargo test` or `cargo nextest`, integration tests, doctests, benchmarks, any
/// binary whose `main` is not yours to begin with
/// [`run_if_worker`](crate::Registry::run_if_worker).
///
/// One line, in the test crate's root: under `#[cfg(test)]` in `src/lib.rs` for unit tests, at
/// the top of each `tests/*.rs` for integration tests. `$registry` is what you would write at
/// the top of `main`, without `.run_if_worker()`; [`registry`](crate::registry()) is in scope.
///
/// ```text
/// #[cfg(test)]
/// worker_bootstrap::enable_test_support!(registry().raw::<Squarer>());
/// ```
///
/// With the `exsyst-worker` facade, use `exsyst_worker::enable_test_support!`, which also puts
/// the registry extensions (`task`, `shared`) in scope.
///
/// In a worker process, the worker runs before `main`, before libtest has parsed its arguments
/// or written anything to standard output (the worker's channel), and the process exits when
/// it is done, as with `run_if_worker`: with status 0, [`EXIT_FAILURE`](crate::EXIT_FAILURE) on
/// an error, 101 on a panic. In any other process it reads one environment variable and returns:
/// tests that start no worker, and test binaries whose tests start none, are not affected. The
/// test runner's command line plays no part (libtest's filters, nextest's `--exact NAME`).
///
/// Several lines in one binary add up: a worker runs from the union of their registries (the
/// first one to register a name keeps it). An implementation that none of them registers is
/// the worker's usual error (`no worker implementation named ... is registered`, exit status
/// [`EXIT_FAILURE`](crate::EXIT_FAILURE)). Without any line, a test's worker is the test
/// binary running its tests, and its master gets a [`FrameTooLarge`] error of length
/// 175273326: the bytes `\nrun` of libtest's `running N tests`.
///
/// Do not use it in a library outside `#[cfg(test)]`: the workers of every binary linking it
/// would run from this registry, before that binary's own `main` could run its.
///
/// What differs from a worker started by `main`: constructors of the executable that come after
/// priority 65535 have not run, a panic's message names the thread `<unnamed>` rather than
/// `main`, and a stack overflow on the first thread is a plain SIGSEGV, without Rust's message.
/// SIGPIPE is ignored, as Rust's runtime does before `main`.
///
/// It builds in a crate with `#![forbid(unsafe_code)]` (the lint does not look into another
/// crate's macro), on ELF targets, whose loader runs `.init_array`.
///
/// [`FrameTooLarge`]: worker_channel::Error::FrameTooLarge
///
/// ```rust,standalone_crate
/// use worker_bootstrap::{BootstrapProfile, DedicatedWorker};
/// use worker_core::{BoxError, RawWorker, Worker, WorkerChannel};
///
/// struct Squarer;
///
/// impl Worker for Squarer {
///     const NAME: &'static str = "doc-squarer";
///     type Args = ();
///     fn new((): ()) -> Result<Self, BoxError> {
///         Ok(Squarer)
///     }
/// }
///
/// impl RawWorker for Squarer {
///     fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
///         while let Some(n) = channel.next_message::<i64>()? {
///             channel.send_message(&(n * n))?;
///         }
///         Ok(())
///     }
/// }
///
/// // In a test crate, under `#[cfg(test)]`; here a doctest's `main` is ours, but the line
/// // works the same in it.
/// worker_bootstrap::enable_test_support!(registry().raw::<Squarer>());
///
/// // What a `#[test]` function would do.
/// fn squares_in_a_worker() -> Result<(), Box<dyn std::error::Error>> {
///     let mut worker = DedicatedWorker::spawn::<Squarer>(&BootstrapProfile::default())?;
///     worker.send_message(&12)?;
///     assert_eq!(worker.receive_message::<i64>()?, 144);
///     Ok(())
/// }
/// # fn main() -> Result<(), Box<dyn std::error::Error>> { squares_in_a_worker() }
/// ```
#[macro_export]
macro_rules! enable_test_support {
    ($registry:expr $(,)?) => {
        const _: () = {
            fn __exsyst_worker_test_registry() -> $crate::Registry {
                #[allow(unused_imports)]
                use $crate::registry;
                $registry
            }
            extern "C" fn add() {
                $crate::__private::add_test_registry(__exsyst_worker_test_registry);
            }
            extern "C" fn run() {
                $crate::__private::run_test_worker();
            }
            const _: () = {
                $crate::__before_main!(".init_array.00500", add);
            };
            const _: () = {
                $crate::__before_main!(".init_array.65535", run);
            };
        };
    };
}

/// In a worker process, keeps `registry` for [`run_test_worker`]; elsewhere does nothing.
pub fn add_test_registry(registry: fn() -> Registry) {
    if Registry::is_worker() {
        REGISTRIES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(registry);
    }
}

/// In a worker process, runs the implementation its master asked for, from the union of the
/// registries kept by [`add_test_registry`], and exits; elsewhere returns at once. Called before
/// `main`.
pub fn run_test_worker() {
    let Some(implementation) = std::env::var_os(ENV_IMPLEMENTATION) else {
        return;
    };
    std::process::exit(worker_exit_code(implementation));
}

fn worker_exit_code(implementation: OsString) -> i32 {
    // What Rust's runtime does before `main`, which has not run: a worker writing to a master
    // that went away gets EPIPE, as it would from `main`, instead of dying of SIGPIPE.
    sys::ignore_sigpipe();
    let registries =
        std::mem::take(&mut *REGISTRIES.lock().unwrap_or_else(PoisonError::into_inner));
    // A panic must not unwind out of a constructor (it would abort): it ends the worker with
    // the status a panic out of `main` gives, its message already written by the panic hook.
    panic::catch_unwind(AssertUnwindSafe(|| {
        let mut union = Registry::default();
        for registry in registries {
            union.merge(registry());
        }
        union.exit_code(implementation)
    }))
    .unwrap_or(EXIT_PANIC)
}
