//! The wire protocol of dedicated workers, for masters and workers written in other languages.
//!
//! Nothing here is needed to use this crate from Rust; it says exactly what crosses the channel, so
//! that another program can start a Rust worker, or be started as one.
//!
//! # Frames
//!
//! Every message, in both directions, is one frame:
//!
//! | bytes | meaning |
//! |---|---|
//! | 4 | payload length, unsigned, big-endian (at most the maximum frame length, 16 MiB by default) |
//! | 1 | kind: `0x00` data (a user message), `0x01` control (the library's own messages) |
//! | length | the payload, encoded with the channel's codec |
//!
//! A control frame with an empty payload is reserved: no codec produces one, so no worker
//! sends it, and this crate's masters put one into a dedicated worker's output themselves once
//! the worker has exited (after everything it wrote), to end a read blocked there; a master
//! skips it wherever it reads.
//!
//! The codecs are MessagePack (structs as maps with field names, byte strings as `bin`) and
//! JSON (UTF-8, no trailing characters); how each Rust shape (enums, `Option`, tuples, bytes)
//! looks in each, byte for byte, is the table of [`worker_channel::Codec`]. A header announcing
//! more than the maximum is refused before anything is read for it, and the stream is closed.
//!
//! # Starting a worker
//!
//! The master starts the worker executable with its standard input and output as its channel
//! (two pipes, as this crate's masters give it, or one Unix stream socket on both) and two
//! environment variables:
//!
//! | variable | value |
//! |---|---|
//! | `EXSYST_WORKER_IMPLEMENTATION` | the registered implementation name, as in [`Worker::NAME`](worker_core::Worker::NAME) |
//! | `EXSYST_WORKER_PARENT` | the master's process id, in decimal (optional: without it the worker does not arm its parent-death signal) |
//! | `EXSYST_WORKER_DETACHED` | `1` or `report` to start a daemon instead (optional; see [`spawn_detached`](crate::spawn_detached) and [`start_detached`](crate::start_detached)): after the init frame the worker leaves for a session of its own and forks; the daemon answers with one control frame, `{"Ok": daemon_pid}` (or, when it could not detach, the worker answers `{"Err": reason}` and exits). With `1` the daemon then closes its channel; with `report` it keeps the writing end until its implementation has sent one data frame, its report, and closes it then. The daemon's standard input is `/dev/null` either way |
//!
//! `EXSYST_WORKER_ZYGOTE` is reserved: this crate's masters set it (with
//! `EXSYST_WORKER_IMPLEMENTATION` naming no implementation) to start a zygote
//! ([`SpawnMode::Zygote`](crate::SpawnMode::Zygote)), whose requests are not part of this
//! protocol; another master never sets it.
//!
//! The first frame on the worker's standard input is a control frame, always MessagePack, whose
//! payload is a map:
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `version` | integer | required | the bootstrap protocol version, `1` |
//! | `implementation` | string | required | the same name as the environment variable |
//! | `codec` | `"messagepack"` or `"json"` | `"messagepack"` | the codec of every later frame |
//! | `max_frame_len` | integer | 16777216 | the largest payload either side sends |
//! | `max_depth` | integer | 128 | how deep a payload may nest arrays, maps and enum variants (at least 1); deeper ones are refused before they are decoded |
//! | `args` | bin or nil | nil | the constructor arguments, themselves MessagePack-encoded (nil means `()`) |
//! | `umask` | integer or nil | nil | the worker's file mode creation mask |
//! | `before_hooks`, `after_hooks` | arrays of strings | empty | named hooks to run |
//! | `extensions` | map of string to bin | empty | settings of higher layers |
//! | `spin_micros` | integer | 0 | the latency mode: how long, in microseconds, the worker looks for its next message without blocking before it blocks (at most 10,000; 0 is off; see [`Spin`](worker_channel::Spin)) |
//!
//! After it, data frames flow both ways in the chosen codec. Secrets travel only in this frame,
//! never on the command line or in the environment.
//!
//! # Ending
//!
//! The master closes the worker's standard input (with a socket: shuts down its writing side);
//! the worker sees the end of the stream between two frames, finishes, and exits with status 0.
//! The worker's side of the channel stays open until it exits, so the master sees the end of
//! the worker's output together with its exit. A worker whose implementation, constructor or
//! hook fails writes the reason to standard error and exits with
//! [`EXIT_FAILURE`](crate::EXIT_FAILURE) (70); a panic exits with 101. Anything the worker code
//! prints to standard output goes to standard error instead: the channel lives on descriptors 3
//! and 4 inside the worker.
