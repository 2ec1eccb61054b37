use std::io::Write;

use serde::{Serialize, de::DeserializeOwned};
use worker_bootstrap::Registry;
use worker_channel::{Codec, Error as ChannelError, FrameKind, encode_frame};
use worker_core::{BoxError, Worker, WorkerChannel};

use crate::protocol::{Outcome, ReceivedRequest, Reply};

/// A worker that handles one item at a time and answers each with a result: what a
/// [`TaskPool`](crate::TaskPool) runs.
///
/// Register it with [`RegistryExt::task`]; the provided runner ([`run_task_worker`]) reads
/// requests of one item or several (from [`TaskPool::map`](crate::TaskPool::map), or tasks
/// that waited together) and answers each with `Ok`/`Err` per item, in order. An `Err` fails only that item's task; a
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

/// Serves task requests on `channel` until the master closes it: the runner that
/// [`RegistryExt::task`] registers, public for runners that wrap it.
///
/// Each request is answered in one frame, or, when its results do not fit in one, in as many
/// as they need; a result that does not fit a frame on its own, or that the codec refuses,
/// fails alone (the pool reports [`Error::Encode`](crate::Error::Encode) for it).
pub fn run_task_worker<W: TaskWorker>(
    worker: &mut W,
    channel: &mut WorkerChannel,
) -> Result<(), BoxError> {
    let mut out = Vec::new();
    let mut outcomes = Vec::new();
    while let Some(ReceivedRequest(id, items)) =
        channel.next_message::<ReceivedRequest<W::Item>>()?
    {
        outcomes.clear();
        outcomes.extend(
            items
                .into_iter()
                .map(|item| Outcome::from(worker.handle(item))),
        );
        out.clear();
        encode_replies(
            channel.codec(),
            channel.max_frame_len(),
            id,
            &mut outcomes,
            &mut out,
        )?;
        let writer = channel.writer_mut();
        writer.write_all(&out)?;
        writer.flush()?;
        // Do not keep a very large reply's buffer around after it is gone.
        if out.capacity() > 4 << 20 {
            out = Vec::new();
        }
    }
    Ok(())
}

/// Appends the replies that answer request `id` with `outcomes` to `out`: one frame if it
/// holds them, else halves, recursively; an outcome that cannot be encoded on its own is
/// replaced by the reason.
fn encode_replies<O: Serialize>(
    codec: Codec,
    max: u32,
    id: u64,
    outcomes: &mut [Outcome<O>],
    out: &mut Vec<u8>,
) -> Result<(), worker_channel::Error> {
    let error = match encode_frame(codec, FrameKind::Data, &Reply(id, outcomes), max, out) {
        Ok(()) => return Ok(()),
        Err(e @ (ChannelError::FrameTooLarge { .. } | ChannelError::Encode { .. })) => e,
        Err(e) => return Err(e),
    };
    if let [one] = outcomes {
        *one = match error {
            ChannelError::FrameTooLarge { len, max } => Outcome::TooLarge { len, max },
            other => Outcome::Unencodable(worker_core::error_chain(&other)),
        };
        return encode_frame(codec, FrameKind::Data, &Reply(id, outcomes), max, out);
    }
    let (first, rest) = outcomes.split_at_mut(outcomes.len() / 2);
    encode_replies(codec, max, id, first, out)?;
    encode_replies(codec, max, id, rest, out)
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
