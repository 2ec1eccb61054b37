//! The wire protocol of shared workers, for clients and servers written in other languages.
//!
//! Nothing here is needed to use this crate from Rust; it says exactly what crosses the socket.
//!
//! # Frames
//!
//! A shared worker listens on a Unix stream socket or a TCP port.
//! Every message, in both directions, is one frame, exactly as for dedicated workers (see `worker_bootstrap::protocol`):
//!
//! | bytes | meaning |
//! |---|---|
//! | 4 | payload length, unsigned, big-endian (at most the maximum frame length of the hello) |
//! | 1 | kind: `0x00` data (an application message), `0x01` control (the admin plane) |
//! | length | the payload |
//!
//! - **Data frames** carry the application's messages, encoded with the worker's codec, which the hello names.
//!   The library never looks inside them, so an application message can never be taken for a command.
//! - **Control frames** carry the admin plane below, always encoded as **MessagePack**, whatever the data codec.
//!   A client reads the hello before it knows the codec, and can then query and stop a JSON worker as easily as a MessagePack one.
//!
//! A control payload is a MessagePack map with a string key `type`; the other keys depend on the type.
//! Byte strings are MessagePack `bin`.
//! A reader ignores keys it does not know.
//!
//! # The conversation
//!
//! 1. The client connects, and the server sends `hello` before anything else.
//!    A client that knows the worker's codec need not wait for it: it sends `codec` first, then its data frames at once, and reads the hello before the first reply.
//!    A server whose codec is another closes such a connection (after `error` `codec_mismatch`) without handing any of its data frames to the worker.
//! 2. When the hello's `auth_required` is `true`, the client authenticates first (below, with the role `client` and the client cookie, or with the admin cookie), before any data frame or `query`.
//! 3. Data frames then flow both ways, at any time.
//! 4. A client sends control requests one at a time, and reads the reply to each before it sends the next.
//!    Data frames may arrive between a request and its reply: they belong to the application (the Rust client keeps them for later, in order).
//!    The server sends control frames only as the hello, as replies, as one `error` just before it closes a connection on its own (the codes below that say "closed"), and as its last frame when it stops (`error` `stopping`, below).
//!
//! ## Server to client
//!
//! | `type` | other keys | when |
//! |---|---|---|
//! | `hello` | `version` (integer, `1`), `pid` (integer), `implementation` (string), `codec` (`"messagepack"` or `"json"`), `max_frame_len` (integer), `nonce` (bin, 32 bytes, fresh and random for each connection), `auth_required` (boolean; absent from older servers, meaning `false`) | first frame of every connection |
//! | `authenticated` | `proof` (bin, 32 bytes) | the client's proof is right; this is the server's |
//! | `status` | `privileged` (boolean), `status` (a status map, or nil when the worker has nothing to report) | reply to `query` |
//! | `stopping` | none | reply to `stop`: the worker stops gracefully, then closes every connection |
//! | `error` | `code` (string), `message` (string, for people) | a request was refused |
//!
//! The status map is `worker_core::WorkerStatus`: `text` (string) and `counters` (an array of maps with `name`, `value`, `unit`, `min`, `max`, `warning`, `critical`; its documentation gives their types).
//! `privileged` is `true` only on an authenticated connection, so a client always knows which answer it got.
//!
//! ## Client to server
//!
//! | `type` | other keys | reply |
//! |---|---|---|
//! | `authenticate` | `nonce` (bin, 32 fresh random bytes), `proof` (bin, 32 bytes), `role` (string, `"admin"` or `"client"`; absent means `"admin"`) | `authenticated`, or `error` |
//! | `query` | none | `status`; `error` `authentication_required` where the hello said `auth_required` and the connection has not authenticated |
//! | `stop` | none | `stopping` on a connection authenticated with the role `admin`, else `error` `authentication_required` |
//! | `codec` | `codec` (`"messagepack"` or `"json"`): the codec of the data frames that follow | none when it is the worker's; else `error` `codec_mismatch`, then the end |
//!
//! ## Error codes
//!
//! | `code` | meaning | the connection |
//! |---|---|---|
//! | `unauthorized` | the proof is wrong: the client does not know the cookie | stays open, until the third failure |
//! | `no_cookie` | the worker has no admin cookie: nobody can authenticate | stays open, until the third failure |
//! | `authentication_required` | `stop` on a connection that has not authenticated as admin | stays open |
//! | `authentication_required` | a data frame or a `query` before authenticating, where the hello said `auth_required`; the data frame is dropped unread, as is every later frame | closed: at once after a `query`, within a second after a data frame (so that a client that sent several reads this rather than a reset) |
//! | `unknown_message` | a control message of a `type` this server does not know | stays open |
//! | `protocol_error` | a control message the server cannot read (not a map, missing keys, a nonce of the wrong length) | closed after the reply |
//! | `too_many_failures` | an `authenticate` from a peer that failed too often lately (below): the proof was not checked, and this reply comes only when the peer's window ends | closed after the reply; nothing else from it is answered meanwhile |
//! | `worker_failed` | the worker failed (panicked) while serving this connection; what it queued before is delivered first, never a cut frame | closed after the reply |
//! | `idle_timeout` | the connection sent no frame, and had nothing queued for it, for the server's connection idle timeout (none unless configured) | closed after the reply |
//! | `codec_mismatch` | `codec` named another codec than the worker's: the data frames after it are not read | closed after the reply |
//! | `stopping` | not a reply but a notice, sent unasked: the worker is stopping; it answered what the connection sent before, and this is its last frame | closed after it |
//!
//! A client meets codes it does not know as a generic refusal; new codes may appear within a version.
//!
//! # What a server does with a connection
//!
//! - A connection past the server's limit, or from a Unix peer whose user may not connect, is closed before the hello: the client reads the end of the stream first.
//! - A client that sends no complete frame within the server's handshake deadline (30 s unless configured) is disconnected; any first frame counts (a data message, `query`, `authenticate`).
//!   Where the hello said `auth_required`, a client that has not authenticated by that deadline gets `error` `authentication_required`, then the end.
//! - A frame the server cannot take (a header over the maximum, an unknown kind, a data payload its codec cannot read, a stream that ends inside a frame) ends that connection without a reply; a control frame that is not a control message gets `error` `protocol_error`, then the end.
//! - Any one reply up to the maximum frame length is sent whole to a client that reads it.
//!   Once the server holds its configured amount for a client (1 MiB unless configured), it reads nothing more from that client until the client has read enough of its replies.
//!   A client whose replies stay at that amount and that takes no byte of them for the stall timeout (30 s unless configured) has stopped reading, and is disconnected; so is one for which the worker would hold that amount plus one largest frame. Its last frame may be cut then.
//! - A connection idle past the server's connection idle timeout, if it has one, gets `error` `idle_timeout`, then the end.
//! - A connection whose request made the worker fail gets `error` `worker_failed`, then the end; the others are served on (unless the server's panic policy stops it: then as for a stop).
//! - When the server stops, it first removes its Unix socket file (new connections find nothing there), answers what each client already sent, sends what it queued, then `error` `stopping` as the last frame of every connection, and closes them.
//!   Data a client sends after that is not read; a client whose write fails because the server closed (`EPIPE`, `ECONNRESET`) finds the notice in what it can still read, and can tell a worker that stopped from one that died.
//!   A client that connected just before the stop, still waiting in the listener's backlog, gets `error` `stopping` instead of a hello, then the end.
//!   Either way, a client that wants the worker connects again: the next connection finds the worker gone (or its successor), never the stopping one.
//!
//! # Authentication
//!
//! The cookie never crosses the wire.
//! Both sides prove they know it with HMAC-SHA256 over both nonces, so that a proof is worth something on its own connection only:
//!
//! ```text
//! client proof = HMAC-SHA256(key = cookie, "exsyst-worker admin v1 client" ‖ 0x00 ‖ Ns ‖ Nc)
//! server proof = HMAC-SHA256(key = cookie, "exsyst-worker admin v1 server" ‖ 0x00 ‖ Ns ‖ Nc)
//! ```
//!
//! The labels are ASCII without a terminator, `0x00` is one zero byte, `Ns` is the hello's nonce and `Nc` the client's, 32 bytes each.
//!
//! 1. The client draws `Nc` and sends `authenticate` with `Nc` and its proof.
//! 2. The server checks the proof in constant time.
//!    When it is right, the connection is authenticated and the server replies `authenticated` with its own proof.
//!    Otherwise it replies `error` `unauthorized`, and it closes a connection that failed three times.
//! 3. The client checks the server's proof, in constant time, and sends nothing privileged to a server that fails: whatever answers there does not know the cookie.
//!
//! The client proves itself first, so that a stranger who connects to a worker cannot use it to compute proofs.
//! A client with no cookie configured does not start at all.
//!
//! ## Roles
//!
//! The `role` of `authenticate` says which cookie the proof is made with, and is part of the labels, so a proof for one role is worth nothing for the other:
//!
//! | role | labels (client, server) | the server checks the proof against | grants |
//! |---|---|---|---|
//! | `admin` (the default) | `exsyst-worker admin v1 client`, `exsyst-worker admin v1 server` | the admin cookie | data and `query` where `auth_required`, the privileged `query`, `stop` |
//! | `client` | `exsyst-worker client v1 client`, `exsyst-worker client v1 server` | the client cookie, then the admin cookie | data and `query` where `auth_required` |
//!
//! The server's proof is made with the cookie that matched.
//! A connection has the role of its last successful `authenticate`; a failed one leaves it with none.
//! A cookie is 1 to 4096 bytes (`AdminCookie::MAX_LEN`), the same bytes on both sides.
//!
//! ## Failures
//!
//! A connection is closed after its third failed `authenticate`.
//! Failures also count per peer, across its connections: a Unix peer is its user id, a TCP peer its IPv4 address or its IPv6 `/64`.
//! After 100 failures within one second (a window that begins at the peer's first failure), the server checks no proof from that peer until the window ends: it answers each `too_many_failures` then, and closes the connection.
//!
//! Test vector: with the cookie `correct horse battery staple` (ASCII), `Ns` the bytes `00 01 02 … 1f` and `Nc` the bytes `20 21 22 … 3f`,
//!
//! ```text
//! admin:  client proof = 5b6e35b4b639d9f6791e3bb104a7cf35fbd99e882d76e7d9209e658d296785d3
//!         server proof = 09ef7281443d464b6973f87b60bb01acf8c2992cb33dff4b2046ce6d6faf33d3
//! client: client proof = 38b8cae4922a023a0e110eb00a0256616b953e2e3cb2e87a4619664e3dbebb65
//!         server proof = 22369b3a7deec74ecb67c66c80244a964c17ef227546dd5924d3a49758953f86
//! ```
//!
//! What this does not do: it authenticates the two ends of a connection, but it neither encrypts nor signs what follows.
//! Someone who can change the bytes in transit (not merely listen) could relay an exchange and alter the request after it.
//! Over networks you do not trust, carry the TCP connection in a tunnel (SSH, WireGuard, TLS), or keep the worker on a Unix socket.
//!
//! # For implementers in other languages
//!
//! What the sections above leave to be guessed, said once.
//!
//! ## The cookie's bytes
//!
//! A cookie is a byte string of 1 to 4096 bytes (`AdminCookie::MAX_LEN`), used as the HMAC key exactly as it is: no normalization, no trimming, no terminator.
//! - Given as text (`AdminCookie::new("…")`, `with_admin_cookie`, `$EXSYST_WORKER_ADMIN_COOKIE` in the operators' programs): its UTF-8 bytes, spaces and line ends included.
//! - Read from a file (`AdminCookie::from_file`, `with_admin_cookie_file`, `--admin-cookie-file`): the file's bytes less every `\n` and `\r` at its end, so a file written by `echo secret > file` holds `secret`; a line end inside the cookie stays. The file must be a regular file that only its owner may read (mode `0600` or stricter), of at most 4096 bytes after that trimming.
//! - A cookie of 0 bytes, or of more than 4096, is refused wherever it comes from.
//!
//! Both ends must hold the same bytes: a client in another language that reads the same cookie file strips the same trailing line ends.
//!
//! ## Sizes
//!
//! - The hello is a few hundred bytes plus the implementation's name; the Rust client reads a first frame of up to 16 MiB (its own maximum frame length), and a client may refuse a larger one as a protocol error. A client in another language may bound it lower (64 KiB is ample).
//! - Every later frame, in both directions, is at most the smaller of the hello's `max_frame_len` and the client's own maximum (the Rust client's is 16 MiB). The server drops a connection whose frame header announces more, without reading its payload.
//! - A control frame's payload is at most 64 KiB in practice (a status map is the largest); the server reads control frames of any size up to its maximum frame length.
//!
//! ## Knowing that a stop has finished
//!
//! `stopping` says the stop has begun, not that it has ended. Then:
//! 1. The server answers what each connection had already sent, sends `error` `stopping` as the last frame of each (this one included), and closes them: the end of the stream on a connection means that connection is done with, not that the process has exited.
//! 2. To know that the process has exited, watch its pid: on a Unix socket, take the server's pid from the kernel (`SO_PEERCRED`; it equals the hello's `pid` unless the server lives in another pid namespace) and open a pidfd for it (`pidfd_open`, Linux 5.3) *before* sending `stop`, so that the pid cannot be reused under you, then wait for the pidfd to be readable; without pidfds, probe with `kill(pid, 0)` until it fails with `ESRCH`. This is what the Rust `stop()` does.
//! 3. Over TCP, or when the pid cannot be confirmed, connect again: a refused connection means nothing serves the address; a hello with another `pid` is a successor; `error` `stopping` instead of a hello means the old server is still draining.
//!
//! ## How Rust types map to MessagePack
//!
//! Control frames are the maps of the tables above.
//! Data frames carry whatever the application's types are, in the worker's codec; how each Rust shape (structs, enums and their variants, `Option`, tuples, byte strings, numbers) looks in MessagePack and in JSON is the table of `worker_channel::Codec`, byte for byte. In short: structs are maps with field names, enums are externally tagged (`"Unit"`, `{"Variant": value}`), `None` is nil, tuples are arrays, `serde_bytes` fields are `bin`.
//!
//! ## Status maps
//!
//! The `status` key of a `status` reply is nil, or a map (`worker_core::WorkerStatus`):
//!
//! | key | type | meaning |
//! |---|---|---|
//! | `text` | string | what the worker says, for people; may be empty |
//! | `counters` | array of counter maps | in the worker's order |
//!
//! Each counter map (`worker_core::Counter`, a Monitoring Plugins performance datum):
//!
//! | key | type | meaning |
//! |---|---|---|
//! | `name` | string | required |
//! | `value` | float or nil | nil: cannot be determined now (a monitoring system shows `U`) |
//! | `unit` | string or nil | `B`, `s`, `%`, `c` (a continuous counter), ... |
//! | `min`, `max` | float or nil | the range of the value |
//! | `warning`, `critical` | string or nil | thresholds in the Monitoring Plugins range syntax (`10`, `~:10`, `5:`, `@5:10`) |
//!
//! The Rust server writes every key, nil where it has nothing, and numbers as 64-bit floats; the Rust client also reads integers where a float is expected, and takes a missing optional key as nil, so a server in another language may leave them out (a test holds this to a hand-written map).
//!
//! # Versions
//!
//! The hello's `version` is the version of this admin protocol, `1`, and a client refuses a server of another version.
//! Within a version, messages and keys may be added: a server answers a request it does not know with `unknown_message`, and both sides ignore keys they do not know.
