/// Lets your own `#[test]` functions start workers, under `cargo test` and `cargo nextest` alike:
/// one line in the test crate's root, naming the implementations its tests start.
///
/// ```text
/// // src/lib.rs, for the unit tests:
/// #[cfg(test)]
/// exsyst_worker::enable_test_support!(registry().raw::<Squarer>().task::<Doubler>());
///
/// // tests/*.rs, benches, doctests: the same line at the top, without the #[cfg(test)].
/// ```
///
/// The argument is the registry you would build at the top of `main`, without
/// `.run_if_worker()`: [`registry`](crate::registry()) and the extensions that add task and
/// shared workers ([`pool::RegistryExt`](crate::pool::RegistryExt),
/// [`SharedRegistryExt`](crate::SharedRegistryExt)) are in scope. A test binary's `main` is
/// libtest's, so `run_if_worker` has nowhere to go; this does its job in a function the loader
/// runs before `main` (the `ctor` crate). In a worker process, the worker runs there and the
/// process exits: libtest never starts, so it never writes to standard output, which is the
/// worker's channel, whatever the runner's arguments. Everywhere else it reads one environment
/// variable and returns, so tests that start no worker are not affected.
///
/// It is [`bootstrap::enable_test_support!`](crate::bootstrap::enable_test_support), with the
/// extensions in scope; see there for the details.
///
/// ```rust,standalone_crate
/// use exsyst_worker::{BoxError, RawWorker, Worker, WorkerChannel, WorkerFactory, pool::TaskWorker};
///
/// struct Squarer;
///
/// impl Worker for Squarer {
///     const NAME: &'static str = "doc-test-squarer";
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
/// struct Doubler;
///
/// impl Worker for Doubler {
///     const NAME: &'static str = "doc-test-doubler";
///     type Args = ();
///     fn new((): ()) -> Result<Self, BoxError> {
///         Ok(Doubler)
///     }
/// }
///
/// impl TaskWorker for Doubler {
///     type Item = u64;
///     type Output = u64;
///     fn handle(&mut self, n: u64) -> Result<u64, String> {
///         Ok(2 * n)
///     }
/// }
///
/// // In a test crate, under `#[cfg(test)]`; a doctest's `main` is ours, but the line works the
/// // same in it.
/// exsyst_worker::enable_test_support!(registry().raw::<Squarer>().task::<Doubler>());
///
/// // What `#[test]` functions would do.
/// fn squares() -> Result<(), Box<dyn std::error::Error>> {
///     let mut worker = WorkerFactory::new().create_worker::<Squarer>()?;
///     worker.send_message(&12)?;
///     assert_eq!(worker.receive_message::<i64>()?, 144);
///     Ok(())
/// }
///
/// fn doubles() -> Result<(), Box<dyn std::error::Error>> {
///     let pool = WorkerFactory::new().create_task_pool::<Doubler>(Some(2))?;
///     assert_eq!(pool.map(1..=3)?, [2, 4, 6]);
///     Ok(())
/// }
/// # fn main() -> Result<(), Box<dyn std::error::Error>> { squares()?; doubles() }
/// ```
#[macro_export]
macro_rules! enable_test_support {
    ($registry:expr $(,)?) => {
        $crate::bootstrap::enable_test_support!({
            #[allow(unused_imports)]
            use $crate::{pool::RegistryExt as _, shared::SharedRegistryExt as _};
            $registry
        });
    };
}
