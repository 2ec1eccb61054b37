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
//! 2. Data frames then flow both ways, at any time, without authentication.
//! 3. A client sends control requests one at a time, and reads the reply to each before it sends the next.
//!    Data frames may arrive between a request and its reply: they belong to the application (the Rust client keeps them for later, in order).
//!    The server sends control frames only as the hello, as replies, and as its last frame when it stops (`error` `stopping`, below).
//!
//! ## Server to client
//!
//! | `type` | other keys | when |
//! |---|---|---|
//! | `hello` | `version` (integer, `1`), `pid` (integer), `implementation` (string), `codec` (`"messagepack"` or `"json"`), `max_frame_len` (integer), `nonce` (bin, 32 bytes, fresh and random for each connection) | first frame of every connection |
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
//! | `authenticate` | `nonce` (bin, 32 fresh random bytes), `proof` (bin, 32 bytes) | `authenticated`, or `error` |
//! | `query` | none | `status` |
//! | `stop` | none | `stopping` on an authenticated connection, else `error` `authentication_required` |
//!
//! ## Error codes
//!
//! | `code` | meaning | the connection |
//! |---|---|---|
//! | `unauthorized` | the proof is wrong: the client does not know the cookie | stays open, until the third failure |
//! | `no_cookie` | the worker has no admin cookie: nobody can authenticate | stays open, until the third failure |
//! | `authentication_required` | `stop` on a connection that has not authenticated | stays open |
//! | `unknown_message` | a control message of a `type` this server does not know | stays open |
//! | `protocol_error` | a control message the server cannot read (not a map, missing keys, a nonce of the wrong length) | closed after the reply |
//! | `stopping` | not a reply but a notice, sent unasked: the worker is stopping; it answered what the connection sent before, and this is its last frame | closed after it |
//!
//! A client meets codes it does not know as a generic refusal; new codes may appear within a version.
//!
//! # What a server does with a connection
//!
//! - A connection past the server's limit, or from a Unix peer whose user may not connect, is closed before the hello: the client reads the end of the stream first.
//! - A client that sends no complete frame within the server's handshake deadline (30 s unless configured) is disconnected; any first frame counts (a data message, `query`, `authenticate`).
//! - A frame the server cannot take (a header over the maximum, an unknown kind, a data payload its codec cannot read, a stream that ends inside a frame) ends that connection without a reply; a control frame that is not a control message gets `error` `protocol_error`, then the end.
//! - A client that does not read its replies is disconnected once the server holds the configured amount for it (1 MiB unless configured); its last frame may be cut.
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
//! Test vector: with the cookie `correct horse battery staple` (ASCII), `Ns` the bytes `00 01 02 … 1f` and `Nc` the bytes `20 21 22 … 3f`,
//!
//! ```text
//! client proof = 5b6e35b4b639d9f6791e3bb104a7cf35fbd99e882d76e7d9209e658d296785d3
//! server proof = 09ef7281443d464b6973f87b60bb01acf8c2992cb33dff4b2046ce6d6faf33d3
//! ```
//!
//! What this does not do: it authenticates the two ends of a connection, but it neither encrypts nor signs what follows.
//! Someone who can change the bytes in transit (not merely listen) could relay an exchange and alter the request after it.
//! Over networks you do not trust, carry the TCP connection in a tunnel (SSH, WireGuard, TLS), or keep the worker on a Unix socket.
//!
//! # Versions
//!
//! The hello's `version` is the version of this admin protocol, `1`, and a client refuses a server of another version.
//! Within a version, messages and keys may be added: a server answers a request it does not know with `unknown_message`, and both sides ignore keys they do not know.
