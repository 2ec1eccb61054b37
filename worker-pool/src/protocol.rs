//! The task protocol between a [`TaskPool`](crate::TaskPool) and its workers, for workers
//! written in other languages.
//!
//! Nothing here is needed to use this crate from Rust; it says exactly what crosses a task
//! worker's channel, so that another program can serve a task pool.
//! A task worker is started, framed and ended as every dedicated worker is (see
//! [`worker_bootstrap::protocol`]); once its init frame is read, every frame either way is a
//! data frame (kind `0x00`) whose payload, in the channel's codec, is one of the arrays below.
//! Ids are unsigned 64-bit integers; a tag is a small unsigned integer.
//!
//! # From the pool
//!
//! | message | meaning |
//! |---|---|
//! | `[0, id, [item, ...]]` | tasks: item `k` is the task `id + k`, answered on its own as soon as it is done |
//! | `[1, id, [item, ...]]` | one task `id` (a chunk of [`TaskPool::map`](crate::TaskPool::map)) whose items are answered in order |
//! | `[2]` | take back: give back every task received and not started yet |
//!
//! A request never has zero items. Ids only grow.
//!
//! # From the worker
//!
//! | message | meaning |
//! |---|---|
//! | `[0, id, [outcome, ...]]` | the outcomes of the next items of task `id` |
//! | `[1, [id, ...]]` | the answer to one take-back: the tasks given back, in the order they came (possibly none) |
//!
//! An outcome is a one-key map, as the codec writes an enum variant: `{"Ok": output}` (the
//! handler's result), `{"Err": text}` (the handler's error, which fails that task alone),
//! `{"TooLarge": {"len": n, "max": m}}` (the result encodes to `n` bytes, over the frame limit
//! `m`) or `{"Unencodable": text}` (the codec refused the result).
//!
//! # What the worker does
//!
//! 1. It runs tasks one at a time, in the order their items came, and answers each as soon as
//!    it is done: a task of a `[0, ...]` request with one outcome, a `[1, ...]` task with the
//!    outcomes of all its items (in several replies, in order, only when one frame cannot hold
//!    them; an outcome that cannot be encoded on its own becomes `TooLarge` or `Unencodable`).
//!    The pool knows a task started when the one before it was answered: the worker writes a
//!    task's reply before it starts the next task.
//! 2. It reads its input while a task runs (this crate's runner reads on a second thread), and
//!    answers a take-back at once, even in the middle of a long task: it drops every task it
//!    has not started (the items of a `[0, ...]` request not started included, the task being
//!    run excluded) and sends their ids in one `[1, [id, ...]]`. It never answers a task it
//!    gave back. The pool sends one take-back at a time and waits for its answer.
//! 3. The end of its input (between two frames) means no more tasks: it finishes the tasks it
//!    holds, answers them, and exits with status 0.
//!
//! A task's reply and a take-back's answer may be written by two threads: each message is
//! written whole before another starts.
//!
//! # What the pool does with them
//!
//! - A reply must answer the oldest task the worker holds and has not answered; one that
//!   answers another task, none, or more items than the task has left breaks the protocol: the
//!   worker is killed and replaced, and the tasks it held fail with
//!   [`Error::Protocol`](crate::Error::Protocol). So does an answer to a take-back the pool did
//!   not send, or one that names a task the worker does not hold or already answered in part.
//! - Tasks given back go to the next free worker, before any task still queued; the worker
//!   that gave them back gets no task until it answers the one it runs.
//! - A task's timeout ([`task_timeout`](crate::WorkerPoolBuilder::task_timeout)) runs from
//!   when it started. Past it, the worker is killed; that task fails with
//!   [`Error::TaskTimeout`](crate::Error::TaskTimeout), and the worker's tasks not started
//!   go to another worker.
//! - The pool asks for a take-back when the task a worker runs has taken longer than its recent
//!   tasks took (or over a millisecond while none was answered yet), tasks wait behind it, and
//!   another worker is idle.
//!
//! # Example
//!
//! In JSON, two tasks sent together, the first of which runs long, and a take-back:
//!
//! ```text
//! pool   -> worker   [0, 7, ["slow", "quick"]]
//! pool   -> worker   [2]
//! worker -> pool     [1, [8]]                 task 8 ("quick") goes to another worker
//! worker -> pool     [0, 7, [{"Ok": 42}]]     task 7, once it is done
//! ```
