use std::{
    collections::VecDeque,
    fs::File,
    io::Write,
    sync::{Arc, Condvar, Mutex, MutexGuard},
};

use serde::{Serialize, de::DeserializeOwned};
use worker_bootstrap::Registry;
use worker_channel::{Channel, Codec, Error as ChannelError, FrameKind, encode_frame};
use worker_core::{BoxError, ChannelOutput, Worker, WorkerChannel};

use crate::wire::{Outcome, ReceivedRequest, Reply, Shape};

/// A worker that handles one item at a time and answers each with a result: what a
/// [`TaskPool`](crate::TaskPool) runs.
///
/// Register it with [`RegistryExt::task`]; the provided runner ([`run_task_worker`]) runs the
/// tasks it is sent one after the other and answers each as soon as it is done, with `Ok`/`Err`
/// per item (a [`TaskPool::map`](crate::TaskPool::map) chunk is answered whole). An `Err` fails
/// only that item's task; a panic ends the worker, which the pool reports as
/// [`Error::Worker`](crate::Error::Worker) (with the panic message in the standard-error tail)
/// and replaces.
pub trait TaskWorker: Worker {
    /// What a task carries to the worker.
    type Item: Serialize + DeserializeOwned + Send + 'static;
    /// What a task's result carries back.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Handles one item.
    fn handle(&mut self, item: Self::Item) -> Result<Self::Output, String>;
}

/// Serves task requests on `channel` until the master closes it: the runner that
/// [`RegistryExt::task`] registers, public for runners that wrap it. The
/// [`protocol`](crate::protocol) guide says what it does on the wire.
///
/// Tasks run one at a time, on the calling thread, in the order they came; each is answered as
/// soon as it is done (a `map` chunk once all its items are, in one frame or, when its results
/// do not fit in one, in as many as they need). A result that does not fit a frame on its own,
/// or that the codec refuses, fails alone (the pool reports
/// [`Error::Encode`](crate::Error::Encode) for it).
///
/// A second thread reads the channel meanwhile, so that the pool can take back the tasks not
/// started while a long one runs, and give them to a free worker. It takes the channel until
/// the master closes it (no descriptor of the channel is copied: a worker that closes them
/// closes the channel), and `channel` is given back then; should the runner end early (it
/// could not write a reply, or the master sent what is not a task), `channel` is left open on
/// `/dev/null`.
pub fn run_task_worker<W: TaskWorker>(
    worker: &mut W,
    channel: &mut WorkerChannel,
) -> Result<(), BoxError> {
    let (codec, max) = (channel.codec(), channel.max_frame_len());
    let null = File::options().read(true).write(true).open("/dev/null")?;
    let stand_in: WorkerChannel = Channel::with_max_frame_len(
        null.try_clone()?,
        ChannelOutput::new(null.try_clone()?),
        codec,
        max,
    );
    let mut reading = std::mem::replace(channel, stand_in);
    // Replies and take-back answers are written by both threads, one whole message at a time.
    let output = std::mem::replace(reading.writer_mut(), ChannelOutput::new(null));
    let output = Arc::new(Mutex::new(output));
    let inbox = Arc::new(Inbox::<W::Item>::default());
    // Not scoped: a reader blocked in a read must not hold up a runner that ends with an error.
    let reader = std::thread::Builder::new()
        .name("task reader".into())
        .spawn({
            let (inbox, output) = (inbox.clone(), output.clone());
            move || read_tasks::<W::Item>(reading, &inbox, &output)
        })?;
    let mut out = Vec::new();
    let mut outcomes = Vec::new();
    while let Some(task) = inbox.next() {
        outcomes.clear();
        let id = match task {
            Next::One(id, item) => {
                outcomes.push(Outcome::from(worker.handle(item)));
                id
            }
            Next::Chunk(id, items) => {
                outcomes.extend(
                    items
                        .into_iter()
                        .map(|item| Outcome::from(worker.handle(item))),
                );
                id
            }
        };
        out.clear();
        encode_replies(codec, max, id, &mut outcomes, &mut out)?;
        write_out(&output, &out)?;
        // Do not keep a very large reply's buffer around after it is gone.
        if out.capacity() > 4 << 20 {
            out = Vec::new();
        }
    }
    match reader.join() {
        Ok(Ok(mut real)) => {
            let output = Arc::try_unwrap(output).map_err(|_| "the channel's output is shared")?;
            *real.writer_mut() = output.into_inner().unwrap_or_else(|e| e.into_inner());
            *channel = real;
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the task reader panicked (see the standard error)".into()),
    }
}

/// Writes `bytes` whole, while no other thread writes to the channel.
fn write_out(output: &Mutex<ChannelOutput>, bytes: &[u8]) -> std::io::Result<()> {
    let mut output = lock(output);
    output.write_all(bytes)?;
    output.flush()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request received and not all started.
struct Queued<I> {
    shape: Shape,
    /// The id of the next item.
    id: u64,
    items: std::vec::IntoIter<I>,
}

/// The tasks the reader received and the runner has not started.
struct Inbox<I> {
    state: Mutex<InboxState<I>>,
    ready: Condvar,
}

struct InboxState<I> {
    queue: VecDeque<Queued<I>>,
    /// The reader has ended: nothing more comes.
    ended: bool,
}

impl<I> Default for Inbox<I> {
    fn default() -> Self {
        Inbox {
            state: Mutex::new(InboxState {
                queue: VecDeque::new(),
                ended: false,
            }),
            ready: Condvar::new(),
        }
    }
}

/// What the runner does next.
enum Next<I> {
    /// Task `id`, one item answered alone.
    One(u64, I),
    /// Task `id`, a chunk answered whole.
    Chunk(u64, Vec<I>),
}

impl<I> Inbox<I> {
    /// The next task, started as it is taken (the reader gives back only what is still here);
    /// `None` once the reader ended and every task it received was taken.
    fn next(&self) -> Option<Next<I>> {
        let mut state = lock(&self.state);
        loop {
            if let Some(front) = state.queue.front_mut() {
                let next = match front.shape {
                    Shape::Chunk => Next::Chunk(front.id, front.items.by_ref().collect()),
                    Shape::Each => match front.items.next() {
                        Some(item) => {
                            front.id += 1;
                            Next::One(front.id - 1, item)
                        }
                        None => {
                            state.queue.pop_front();
                            continue;
                        }
                    },
                };
                if front.items.len() == 0 {
                    state.queue.pop_front();
                }
                return Some(next);
            }
            if state.ended {
                return None;
            }
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn push(&self, queued: Queued<I>) {
        let mut state = lock(&self.state);
        state.queue.push_back(queued);
        if state.queue.len() == 1 {
            self.ready.notify_one();
        }
    }

    /// Takes every task not started out; their ids, in order.
    fn take_back(&self) -> Vec<u64> {
        let queue = std::mem::take(&mut lock(&self.state).queue);
        let mut ids = Vec::new();
        for queued in queue {
            match queued.shape {
                Shape::Chunk => ids.push(queued.id),
                Shape::Each => ids.extend((0..queued.items.len() as u64).map(|k| queued.id + k)),
            }
        }
        ids
    }

    fn end(&self) {
        lock(&self.state).ended = true;
        self.ready.notify_one();
    }
}

/// Ends the runner's wait for tasks however the reader ends (a user `Deserialize` that panics
/// included).
struct EndInbox<'a, I>(&'a Inbox<I>);

impl<I> Drop for EndInbox<'_, I> {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The reader thread: queues the tasks as they come, answers take-backs at once; gives the
/// channel back once the master closes it.
fn read_tasks<I: DeserializeOwned>(
    mut channel: WorkerChannel,
    inbox: &Inbox<I>,
    output: &Mutex<ChannelOutput>,
) -> Result<WorkerChannel, BoxError> {
    let _end = EndInbox(inbox);
    let (codec, max) = (channel.codec(), channel.max_frame_len());
    let mut out = Vec::new();
    while let Some(request) = channel.next_message::<ReceivedRequest<I>>()? {
        match request {
            ReceivedRequest::Run { shape, id, items } => {
                if !items.is_empty() {
                    inbox.push(Queued {
                        shape,
                        id,
                        items: items.into_iter(),
                    });
                }
            }
            ReceivedRequest::TakeBack => {
                let ids = inbox.take_back();
                out.clear();
                let reply = Reply::<()>::NotStarted(&ids);
                encode_frame(codec, FrameKind::Data, &reply, max, &mut out)?;
                write_out(output, &out)?;
            }
        }
    }
    Ok(channel)
}

/// Appends the replies that answer task `id` with `outcomes` to `out`: one frame if it
/// holds them, else halves, recursively; an outcome that cannot be encoded on its own is
/// replaced by the reason.
fn encode_replies<O: Serialize>(
    codec: Codec,
    max: u32,
    id: u64,
    outcomes: &mut [Outcome<O>],
    out: &mut Vec<u8>,
) -> Result<(), worker_channel::Error> {
    let error = match encode_frame(
        codec,
        FrameKind::Data,
        &Reply::Outcomes(id, outcomes),
        max,
        out,
    ) {
        Ok(()) => return Ok(()),
        Err(e @ (ChannelError::FrameTooLarge { .. } | ChannelError::Encode { .. })) => e,
        Err(e) => return Err(e),
    };
    if let [one] = outcomes {
        *one = match error {
            ChannelError::FrameTooLarge { len, max } => Outcome::TooLarge { len, max },
            other => Outcome::Unencodable(worker_core::error_chain(&other)),
        };
        return encode_frame(
            codec,
            FrameKind::Data,
            &Reply::Outcomes(id, outcomes),
            max,
            out,
        );
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
