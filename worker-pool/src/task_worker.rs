use serde::{Deserialize, Serialize, de::DeserializeOwned};
use worker_bootstrap::Registry;
use worker_core::{BoxError, Worker, WorkerChannel};

/// A worker that handles one item at a time and answers each with a result: what a
/// [`TaskPool`](crate::TaskPool) runs.
///
/// Register it with [`RegistryExt::task`]; the provided runner ([`run_task_worker`]) reads
/// requests of one item or a chunk of items (from [`TaskPool::map`](crate::TaskPool::map)) and
/// answers each with `Ok`/`Err` per item, in order. An `Err` fails only that item's task; a
/// panic ends the worker, which the pool reports as [`Error::Worker`](crate::Error::Worker)
/// (with the panic message in the standard-error tail) and replaces.
pub trait TaskWorker: Worker {
    /// What a task carries to the worker.
    type Item: Serialize + DeserializeOwned + Send + 'static;
    /// What a task's result carries back.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Handles one item.
    fn handle(&mut self, item: Self::Item) -> Result<Self::Output, String>;
}

/// A request on the wire: one task, or a chunk of `map` items answered by one reply.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Request<I> {
    One(I),
    Chunk(Vec<I>),
}

/// A reply on the wire: one per request, in request order.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Reply<O> {
    One(Result<O, String>),
    Chunk(Vec<Result<O, String>>),
}

/// Serves task requests on `channel` until the master closes it: the runner that
/// [`RegistryExt::task`] registers, public for runners that wrap it.
pub fn run_task_worker<W: TaskWorker>(
    worker: &mut W,
    channel: &mut WorkerChannel,
) -> Result<(), BoxError> {
    while let Some(request) = channel.next_message::<Request<W::Item>>()? {
        let reply = match request {
            Request::One(item) => Reply::One(worker.handle(item)),
            Request::Chunk(items) => {
                Reply::Chunk(items.into_iter().map(|i| worker.handle(i)).collect())
            }
        };
        channel.send_message(&reply)?;
    }
    Ok(())
}

/// Registers task workers in a [`Registry`].
pub trait RegistryExt {
    /// Registers `W` under its [`Worker::NAME`], run by [`run_task_worker`].
    fn task<W: TaskWorker>(self) -> Self;
}

impl RegistryExt for Registry {
    fn task<W: TaskWorker>(self) -> Self {
        self.implementation(W::NAME, |mut cx| {
            let mut worker = W::new(cx.args()?)?;
            cx.after_construct(&mut worker)?;
            run_task_worker(&mut worker, cx.channel())
        })
    }
}
