//! The blocking client: one connection to a shared worker.

use std::{
    collections::VecDeque,
    io,
    os::fd::AsFd,
    time::{Duration, Instant},
};

use serde::{Serialize, de::DeserializeOwned};
use worker_channel::{Channel, Codec, DEFAULT_MAX_FRAME_LEN, FrameKind, Spin};
use worker_core::{WorkerStatus, deadline_after, time_left};

use crate::{
    AdminCookie, Error, PeerUids,
    address::{self, Half, Stream},
    auth::{self, AuthError, ClientAuth},
    wire::{
        self, ClientMessage, ErrorCode, Hello, Inbound, NONCE_LEN, PROTOCOL_VERSION, ServerMessage,
    },
};

/// How long [`SharedWorker::connect`] waits for the worker's hello, and each query or stop for
/// its reply, unless told otherwise.
pub const DEFAULT_CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes buffered while a frame is incomplete: one whole frame always fits.
const READ_AHEAD_LIMIT: usize = 2 * DEFAULT_MAX_FRAME_LEN as usize;

/// The shortest read timeout a wait without a deadline leaves on the socket rather than
/// clearing it (see `Link::fill`).
const KEPT_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a failed send looks for the stopping notice in what the worker sent before it
/// closed (which has all arrived by then).
const STOPPING_NOTICE_WAIT: Duration = Duration::from_secs(1);

/// Data messages kept for later while waiting for a control reply, in bytes; past it the wait
/// fails with [`Error::Backlog`] rather than filling memory.
const MAX_BACKLOG: usize = 64 * 1024 * 1024;

/// The answer to a query; it serializes as the `status` reply's keys, for tools that print it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct StatusReply {
    /// Whether this is the privileged answer (the connection proved it knows the admin
    /// cookie), rather than what the worker tells anyone.
    pub privileged: bool,
    /// What the worker said; `None` when it has nothing to report.
    pub status: Option<WorkerStatus>,
}

/// A connection to a shared worker (the seed's `SharedWorker`): messages both ways, status
/// queries and the authenticated stop.
///
/// Data messages use the codec the worker announced in its hello ([`SharedWorker::codec`]);
/// the admin plane uses control frames, so no application message can be taken for a command.
/// Data messages that arrive while a query or a stop waits for its reply are kept, and the
/// next receives return them first, in order.
///
/// ```no_run
/// use worker_shared::{AdminCookie, SharedWorker};
///
/// let mut worker = SharedWorker::connect("unix:///run/app/worker.sock")?;
/// println!("worker {} runs as pid {}", worker.implementation(), worker.pid());
/// worker.send_message("world")?;
/// println!("{}", worker.receive_message::<String>()?);
///
/// let cookie = AdminCookie::from_file("/etc/app/admin-cookie")?;
/// let reply = worker.query_privileged(&cookie)?;
/// assert!(reply.privileged);
/// worker.stop(&cookie)?; // returns once the worker acknowledged
/// # Ok::<(), worker_shared::Error>(())
/// ```
#[derive(Debug)]
pub struct SharedWorker {
    pub(crate) link: Link,
    hello: Hello,
    /// Payloads of data frames that arrived while a control reply was awaited.
    backlog: VecDeque<Vec<u8>>,
    backlog_bytes: usize,
    control_timeout: Duration,
    authenticated: bool,
}

impl SharedWorker {
    /// Connects to the shared worker at `address` (`unix:///absolute/path`, `tcp://host:port`
    /// or `tcp://[ipv6]:port`) and reads its hello, waiting at most
    /// [`DEFAULT_CONTROL_TIMEOUT`].
    ///
    /// This does not start a worker that is not running: that is [`Error::Connect`].
    pub fn connect(address: &str) -> Result<Self, Error> {
        Self::connect_timeout(address, DEFAULT_CONTROL_TIMEOUT)
    }

    /// Connects and reads the hello within `timeout` (`Duration::MAX`: no limit), which also
    /// becomes the [control timeout](SharedWorker::set_control_timeout).
    ///
    /// A worker that accepts the connection but never says hello gives [`Error::Timeout`].
    /// Resolving a host name goes through the system's resolver, which this timeout does not
    /// bound; addresses given as IP literals need no resolution.
    ///
    /// A Unix socket must be served by this process's own user or root
    /// ([`Error::UntrustedServer`] otherwise, before anything is sent): see
    /// [`connect_trusting`](Self::connect_trusting) for others.
    pub fn connect_timeout(address: &str, timeout: Duration) -> Result<Self, Error> {
        Self::connect_trusting(address, timeout, &PeerUids::Owner)
    }

    /// As [`connect_timeout`](Self::connect_timeout), trusting the Unix sockets served by the
    /// users in `servers` ([`PeerUids::Owner`]: this process's own user, and root). The kernel
    /// says who serves a socket (`SO_PEERCRED`); a server of another user is
    /// [`Error::UntrustedServer`], and nothing is sent to it. TCP servers have no user to
    /// check.
    pub fn connect_trusting(
        address: &str,
        timeout: Duration,
        servers: &PeerUids,
    ) -> Result<Self, Error> {
        let deadline = deadline_after(timeout);
        let parsed = address::parse(address)?;
        let stream = address::connect(&parsed, deadline).map_err(|source| Error::Connect {
            address: parsed.to_string(),
            source,
        })?;
        crate::local::check_server(&stream, parsed.as_str(), servers)?;
        let mut link = Link::new(parsed.to_string(), stream)?;
        let hello = link.read_hello(deadline, timeout)?;
        Ok(Self::from_link(link, hello, timeout))
    }

    /// A client over a link whose hello arrived.
    pub(crate) fn from_link(link: Link, hello: Hello, control_timeout: Duration) -> Self {
        SharedWorker {
            link,
            hello,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            control_timeout,
            authenticated: false,
        }
    }

    /// The worker's address, in canonical form.
    pub fn address(&self) -> &str {
        &self.link.address
    }

    /// The worker's process id, from its hello.
    pub fn pid(&self) -> u32 {
        self.hello.pid
    }

    /// The name of the implementation the worker runs, from its hello.
    pub fn implementation(&self) -> &str {
        &self.hello.implementation
    }

    /// Whether the process at the other end is the one the hello named, as this process names
    /// it (see `local::peer_is`).
    pub(crate) fn peer_is_announced_pid(&self) -> bool {
        crate::local::peer_is(self.link.channel.reader(), self.hello.pid)
    }

    /// The codec of data messages, from the worker's hello.
    pub fn codec(&self) -> Codec {
        self.hello.codec
    }

    /// How long a query, an authentication or a stop waits for its reply.
    pub fn control_timeout(&self) -> Duration {
        self.control_timeout
    }

    /// Sets how long a query, an authentication or a stop waits for its reply
    /// (`Duration::MAX`: no limit).
    pub fn set_control_timeout(&mut self, timeout: Duration) {
        self.control_timeout = timeout;
    }

    /// Sets the latency mode of this connection's receives (see [`Spin`]): a receive that finds
    /// nothing looks at the socket again without blocking for up to `budget` (at most
    /// [`Spin::MAX_BUDGET`]; zero, the default, is off) before it blocks, so a reply that comes
    /// within the budget costs no wake-up. The server's side is
    /// [`SharedServerConfig::with_spin`](crate::SharedServerConfig::with_spin);
    /// [`connect_or_start`](crate::connect_or_start) sets the profile's.
    pub fn set_spin(&mut self, budget: Duration) {
        self.link.spin = Spin::new(budget);
    }

    /// The latency mode of this connection's receives.
    pub fn spin(&self) -> Spin {
        self.link.spin
    }

    /// Sends one message, blocking until the socket took all of it.
    ///
    /// A send that fails (the worker went away, say) may have sent part of a frame: every later
    /// call then fails with [`Error::Broken`].
    pub fn send_message<T: Serialize + ?Sized>(&mut self, message: &T) -> Result<(), Error> {
        self.link.usable()?;
        let result = self.link.channel.send(FrameKind::Data, message);
        let sent = self.link.sent(result);
        sent.map_err(|e| self.why_send_failed(e))
    }

    /// The error of a send that failed: [`Error::Stopping`] when the worker said so before it
    /// closed (its notice waits in the socket, behind the replies, which are kept for the
    /// receives), else `error` as it is.
    pub(crate) fn why_send_failed(&mut self, error: Error) -> Error {
        if !matches!(error, Error::Io { .. }) {
            return error;
        }
        // The worker closed its end: all it said is here already, so this does not wait.
        let deadline = deadline_after(STOPPING_NOTICE_WAIT);
        loop {
            match self.link.fill(deadline) {
                Ok(true) => match self.control_frame() {
                    Ok(_) => {}
                    Err(stopping @ Error::Stopping { .. }) => return stopping,
                    Err(_) => return error,
                },
                Err(stopping @ Error::Stopping { .. }) => return stopping,
                _ => return error,
            }
        }
    }

    /// Receives one message, blocking until it arrives.
    ///
    /// The worker closing the connection gives [`Error::Closed`].
    pub fn receive_message<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        match self.receive_until(None)? {
            Some(message) => Ok(message),
            None => unreachable!("a receive without a deadline returned without a message"),
        }
    }

    /// Receives one message, waiting at most `timeout`; [`Error::Timeout`] when nothing came.
    ///
    /// A timeout leaves the connection usable: part of a message that did arrive is kept.
    pub fn receive_message_timeout<T: DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> Result<T, Error> {
        match self.receive_until(deadline_after(timeout))? {
            Some(message) => Ok(message),
            None => Err(self.link.timeout("message", timeout)),
        }
    }

    fn receive_until<T: DeserializeOwned>(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<T>, Error> {
        if let Some(message) = self.take_backlogged() {
            return message.map(Some);
        }
        if !self.link.fill(deadline)? {
            return Ok(None);
        }
        self.take_message().map(Some)
    }

    /// The first data message kept while a control reply was awaited, if any.
    pub(crate) fn take_backlogged<T: DeserializeOwned>(&mut self) -> Option<Result<T, Error>> {
        let payload = self.backlog.pop_front()?;
        self.backlog_bytes -= payload.len();
        let decoded = self.link.channel.codec().decode(&payload);
        Some(decoded.map_err(|e| self.link.channel_error(e)))
    }

    /// Takes the buffered frame out as a data message (once the link is filled).
    pub(crate) fn take_message<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        let codec = self.link.channel.codec();
        let frame = self
            .link
            .channel
            .connection_mut()
            .try_receive_frame()
            .map_err(|e| channel_error(&self.link.address, Some(self.hello.pid), e))?
            .expect("fill promised a frame");
        if frame.kind == FrameKind::Data {
            // Decoded straight from the decoder's buffer: no copy on the common path.
            let decoded = codec.decode(frame.payload);
            return decoded.map_err(|e| channel_error(&self.link.address, Some(self.hello.pid), e));
        }
        // The worker speaks in control frames only when spoken to.
        let payload = frame.payload.to_vec();
        Err(
            match wire::decode::<ServerMessage>(&payload, ServerMessage::TYPES) {
                Inbound::Message(ServerMessage::Error {
                    code: ErrorCode::Stopping,
                    ..
                }) => self.link.stopping(),
                Inbound::Message(message) => self.link.unexpected(&message, "a data message"),
                Inbound::Unknown(kind) => self
                    .link
                    .protocol(format!("unknown control message type {kind:?}")),
                Inbound::Malformed(reason) => self.link.protocol(reason),
            },
        )
    }

    /// Asks the worker for its status, without privilege: the worker decides what anyone may
    /// see, and the reply says `privileged: false`.
    ///
    /// Waits at most the [control timeout](SharedWorker::set_control_timeout).
    pub fn query(&mut self) -> Result<StatusReply, Error> {
        let deadline = deadline_after(self.control_timeout);
        self.ask_status(deadline)
    }

    /// Proves knowledge of the admin cookie (once per connection), then asks for the
    /// privileged status.
    ///
    /// [`Error::Unauthorized`] when the worker refuses the cookie, and
    /// [`Error::ServerNotAuthenticated`] when the worker cannot prove it knows it too.
    /// Waits at most the [control timeout](SharedWorker::set_control_timeout) in all.
    pub fn query_privileged(&mut self, cookie: &AdminCookie) -> Result<StatusReply, Error> {
        let deadline = deadline_after(self.control_timeout);
        self.authenticate(cookie, deadline)?;
        self.ask_status(deadline)
    }

    fn ask_status(&mut self, deadline: Option<Instant>) -> Result<StatusReply, Error> {
        let sent = self
            .link
            .send_control(&ClientMessage::Query, deadline, "query");
        sent.map_err(|e| self.why_send_failed(e))?;
        let reply = self.control_reply(deadline, "query")?;
        self.status_reply(reply)
    }

    /// The answer to a query, from its reply.
    pub(crate) fn status_reply(&self, reply: ServerMessage) -> Result<StatusReply, Error> {
        match reply {
            ServerMessage::Status { privileged, status } => Ok(StatusReply { privileged, status }),
            other => Err(self.link.unexpected(&other, "the reply to query")),
        }
    }

    /// Proves knowledge of the admin cookie, asks the worker to stop, and returns once it
    /// acknowledged.
    ///
    /// The worker then stops gracefully: it delivers the replies it already queued, and closes
    /// every connection, this one included. The stop is not sent unless the worker proved that
    /// it knows the cookie too.
    /// Waits at most the [control timeout](SharedWorker::set_control_timeout) in all.
    pub fn stop(&mut self, cookie: &AdminCookie) -> Result<(), Error> {
        let deadline = deadline_after(self.control_timeout);
        self.authenticate(cookie, deadline)?;
        let sent = self
            .link
            .send_control(&ClientMessage::Stop, deadline, "stop");
        sent.map_err(|e| self.why_send_failed(e))?;
        let reply = self.control_reply(deadline, "stop")?;
        self.stop_reply(reply)
    }

    /// The answer to a stop, from its reply.
    pub(crate) fn stop_reply(&self, reply: ServerMessage) -> Result<(), Error> {
        match reply {
            ServerMessage::Stopping => Ok(()),
            other => Err(self.link.unexpected(&other, "the reply to stop")),
        }
    }

    fn authenticate(
        &mut self,
        cookie: &AdminCookie,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        if self.authenticated {
            return Ok(());
        }
        let (auth, request) = self.auth_request(cookie)?;
        let sent = self.link.send_control(&request, deadline, "authentication");
        sent.map_err(|e| self.why_send_failed(e))?;
        let reply = self.control_reply(deadline, "authentication")?;
        self.auth_reply(&auth, reply)
    }

    /// Whether this connection proved that it knows the admin cookie.
    #[cfg(feature = "tokio")]
    pub(crate) fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// The proof of knowledge of `cookie` for this connection's hello, and the request that
    /// carries it.
    pub(crate) fn auth_request<'c>(
        &self,
        cookie: &'c AdminCookie,
    ) -> Result<(ClientAuth<'c>, ClientMessage), Error> {
        let client_nonce = auth::fresh_nonce().map_err(Error::Random)?;
        let auth = ClientAuth::start(Some(cookie), &self.hello.nonce, client_nonce)
            .map_err(|e| self.auth_error(e))?;
        let request = ClientMessage::Authenticate {
            nonce: auth.client_nonce().to_vec(),
            proof: auth.proof(),
        };
        Ok((auth, request))
    }

    /// Checks the worker's proof in its reply to an authentication.
    pub(crate) fn auth_reply(
        &mut self,
        auth: &ClientAuth<'_>,
        reply: ServerMessage,
    ) -> Result<(), Error> {
        match reply {
            ServerMessage::Authenticated { proof } => {
                auth.verify_server(&proof).map_err(|e| self.auth_error(e))?;
                self.authenticated = true;
                Ok(())
            }
            other => Err(self.link.unexpected(&other, "the reply to authenticate")),
        }
    }

    fn auth_error(&self, error: AuthError) -> Error {
        let (address, pid) = (self.link.address.clone(), self.hello.pid);
        match error {
            AuthError::NoCookie => Error::NoCookie { address },
            AuthError::Unauthorized => Error::Unauthorized { address, pid },
            AuthError::ServerNotAuthenticated => Error::ServerNotAuthenticated { address, pid },
            // The hello's nonce was checked on arrival.
            AuthError::BadNonce => self.link.protocol("the hello's nonce is not 32 bytes long"),
        }
    }

    /// Waits for the reply to a control request, keeping the data messages that arrive first.
    fn control_reply(
        &mut self,
        deadline: Option<Instant>,
        operation: &'static str,
    ) -> Result<ServerMessage, Error> {
        loop {
            if !self.link.fill(deadline)? {
                return Err(self.link.timeout(operation, self.control_timeout));
            }
            if let Some(reply) = self.control_frame()? {
                return Ok(reply);
            }
        }
    }

    /// Takes the buffered frame out (once the link is filled) while a control reply is
    /// awaited: a data message is kept for the receives (`None`), a control message is the
    /// reply, or the worker's refusal.
    pub(crate) fn control_frame(&mut self) -> Result<Option<ServerMessage>, Error> {
        let (kind, payload) = self.link.take_frame()?;
        if kind == FrameKind::Data {
            self.backlog_bytes += payload.len();
            if self.backlog_bytes > MAX_BACKLOG {
                return Err(Error::Backlog {
                    address: self.link.address.clone(),
                    pid: self.hello.pid,
                    limit: MAX_BACKLOG,
                });
            }
            self.backlog.push_back(payload);
            return Ok(None);
        }
        match wire::decode::<ServerMessage>(&payload, ServerMessage::TYPES) {
            Inbound::Message(ServerMessage::Error {
                code: ErrorCode::Stopping,
                ..
            }) => Err(self.link.stopping()),
            Inbound::Message(ServerMessage::Error { code, message }) => {
                Err(self.refused(code, message))
            }
            Inbound::Message(message) => Ok(Some(message)),
            Inbound::Unknown(kind) => Err(self
                .link
                .protocol(format!("unknown control message type {kind:?}"))),
            Inbound::Malformed(reason) => Err(self.link.protocol(reason)),
        }
    }

    fn refused(&self, code: ErrorCode, message: String) -> Error {
        let (address, pid) = (self.link.address.clone(), self.hello.pid);
        match code {
            ErrorCode::Unauthorized => Error::Unauthorized { address, pid },
            ErrorCode::NoCookie => Error::ServerHasNoCookie { address, pid },
            code => Error::Rejected {
                address,
                pid,
                code: code.as_str().to_owned(),
                message,
            },
        }
    }
}

/// The connection under a [`SharedWorker`]: the framed channel, reads bounded by deadlines,
/// and errors that name the address (and the pid, once the hello told it).
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) address: String,
    pub(crate) channel: Channel<Half, Half>,
    /// The pid from the hello, once it arrived.
    pid: Option<u32>,
    /// The read timeout last set on the socket, so the hot path makes no needless system call.
    read_timeout: Option<Duration>,
    /// A send failed, perhaps part-way through a frame.
    broken: bool,
    /// The worker said it is stopping.
    stopping: bool,
    /// The latency mode of the receives.
    spin: Spin,
}

impl Link {
    pub(crate) fn new(address: String, stream: Stream) -> Result<Self, Error> {
        // One descriptor for both directions: no dup on the connect path.
        let stream = Half(std::sync::Arc::new(stream));
        Ok(Link {
            address,
            // Control frames are always MessagePack; the data codec comes with the hello.
            channel: Channel::new(stream.clone(), stream, Codec::MessagePack),
            pid: None,
            read_timeout: None,
            broken: false,
            stopping: false,
            spin: Spin::OFF,
        })
    }

    /// Reads the hello, and sets the channel up as it says.
    fn read_hello(&mut self, deadline: Option<Instant>, timeout: Duration) -> Result<Hello, Error> {
        if !self.fill(deadline)? {
            return Err(self.timeout("hello", timeout));
        }
        self.accept_hello()
    }

    /// Takes the buffered frame out (once filled) as the hello, and sets the channel up as it
    /// says.
    pub(crate) fn accept_hello(&mut self) -> Result<Hello, Error> {
        let (kind, payload) = self.take_frame()?;
        if kind != FrameKind::Control {
            return Err(self.protocol("the first frame is not a hello"));
        }
        let hello = match wire::decode::<ServerMessage>(&payload, ServerMessage::TYPES) {
            Inbound::Message(ServerMessage::Hello(hello)) => hello,
            // A server that accepted the connection while stopping says so instead.
            Inbound::Message(ServerMessage::Error {
                code: ErrorCode::Stopping,
                ..
            }) => return Err(self.stopping()),
            // A hello of another version may not even have this version's shape.
            _ => {
                return Err(match wire::hello_version(&payload) {
                    Some(version) if version != PROTOCOL_VERSION => Error::UnsupportedVersion {
                        address: self.address.clone(),
                        version,
                    },
                    _ => self.protocol("the first frame is not a hello"),
                });
            }
        };
        if hello.version != PROTOCOL_VERSION {
            return Err(Error::UnsupportedVersion {
                address: self.address.clone(),
                version: hello.version,
            });
        }
        if hello.nonce.len() != NONCE_LEN {
            return Err(self.protocol("the hello's nonce is not 32 bytes long"));
        }
        self.pid = Some(hello.pid);
        self.channel.set_codec(hello.codec);
        // Neither side sends more than the other accepts, and this side never accepts more
        // than its own default, whatever the worker announces.
        self.channel
            .set_max_frame_len(hello.max_frame_len.min(DEFAULT_MAX_FRAME_LEN));
        Ok(hello)
    }

    /// Reads until a whole frame is buffered (`true`) or the deadline passes (`false`).
    ///
    /// A read timeout only ends one read: the bytes of a frame that did arrive stay in the
    /// decoder, so a timeout never cuts a frame.
    fn fill(&mut self, deadline: Option<Instant>) -> Result<bool, Error> {
        loop {
            if self.filled()? {
                return Ok(true);
            }
            // The latency mode: look for bytes without blocking for up to the budget; the read
            // below takes them then without blocking (or blocks as usual once it is spent).
            let socket = self.channel.reader().as_fd();
            let _ = self.spin.run(deadline, || {
                Ok::<_, ()>(
                    worker_core::sys::readable_now(socket)
                        .unwrap_or(true)
                        .then_some(()),
                )
            });
            let left = time_left(deadline);
            if left.is_some_and(|left| left.is_zero()) {
                return Ok(false);
            }
            // Waiting for ever, a read timeout of a second or more left from a bounded wait
            // (the hello's, say) is harmless: a read that times out only makes this loop read
            // again, rarely. Keeping it saves a system call on the first receive of every
            // connection.
            let kept = left.is_none() && self.read_timeout.is_some_and(|t| t >= KEPT_READ_TIMEOUT);
            if !kept {
                self.set_read_timeout(left)?;
            }
            // The socket blocks up to the read timeout: a read that times out is a would-block.
            self.read_more()?;
        }
    }

    /// Whether a whole frame is buffered; the error that says how the stream ended when it
    /// ended without one; `false` when more must be read.
    pub(crate) fn filled(&mut self) -> Result<bool, Error> {
        let connection = self.channel.connection_mut();
        if connection.has_buffered_frame() {
            return Ok(true);
        }
        if connection.is_read_closed() {
            let end = match connection.try_receive_frame() {
                Err(e) => e,
                Ok(_) => worker_channel::Error::Closed,
            };
            return Err(match end {
                worker_channel::Error::Closed if self.stopping => self.stopping(),
                worker_channel::Error::Closed => Error::Closed {
                    address: self.address.clone(),
                    pid: self.pid,
                },
                e => self.channel_error(e),
            });
        }
        Ok(false)
    }

    /// Reads what the socket has (once readable) into the buffer, up to the read-ahead limit.
    pub(crate) fn read_more(&mut self) -> Result<(), Error> {
        let connection = self.channel.connection_mut();
        connection.note_readable();
        connection
            .read_ahead(READ_AHEAD_LIMIT)
            .map(drop)
            .map_err(|e| self.channel_error(e))
    }

    /// Takes the buffered frame out, copying its payload.
    fn take_frame(&mut self) -> Result<(FrameKind, Vec<u8>), Error> {
        let frame = self
            .channel
            .connection_mut()
            .try_receive_frame()
            .map_err(|e| channel_error(&self.address, self.pid, e))?
            .expect("fill promised a frame");
        Ok((frame.kind, frame.payload.to_vec()))
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        if self.read_timeout != timeout {
            self.channel
                .reader()
                .set_read_timeout(timeout)
                .map_err(|e| self.io_error(e))?;
            self.read_timeout = timeout;
        }
        Ok(())
    }

    /// Sends a control message, with the socket's writes bounded by the deadline.
    fn send_control(
        &mut self,
        message: &ClientMessage,
        deadline: Option<Instant>,
        operation: &'static str,
    ) -> Result<(), Error> {
        self.usable()?;
        let payload = wire::encode(message).map_err(|e| self.channel_error(e))?;
        let left = match time_left(deadline) {
            Some(left) if left.is_zero() => return Err(self.timeout(operation, Duration::ZERO)),
            left => left,
        };
        let writer = self.channel.writer();
        writer
            .set_write_timeout(left)
            .map_err(|e| self.io_error(e))?;
        let result = self.channel.send_raw(FrameKind::Control, &payload);
        // Data sends block for as long as they must, as a channel's always did.
        let reset = self.channel.writer().set_write_timeout(None);
        self.sent(result)?;
        reset.map_err(|e| self.io_error(e))
    }

    /// Turns a send's result into ours, marking the link broken when bytes may have left in
    /// part.
    pub(crate) fn sent(&mut self, result: Result<(), worker_channel::Error>) -> Result<(), Error> {
        match result {
            Ok(()) => Ok(()),
            Err(worker_channel::Error::Io(source)) => {
                self.broken = true;
                Err(self.io_error(source))
            }
            // Encoding failed before anything was written.
            Err(e) => Err(self.channel_error(e)),
        }
    }

    pub(crate) fn usable(&self) -> Result<(), Error> {
        if self.stopping {
            return Err(Error::Stopping {
                address: self.address.clone(),
                pid: self.pid,
            });
        }
        if self.broken {
            return Err(Error::Broken {
                address: self.address.clone(),
                // A link sends only once its hello arrived, so the pid is known.
                pid: self.pid.unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Notes that the worker said it is stopping, and says so: every later call on this link
    /// fails the same way.
    pub(crate) fn stopping(&mut self) -> Error {
        self.stopping = true;
        Error::Stopping {
            address: self.address.clone(),
            pid: self.pid,
        }
    }

    pub(crate) fn io_error(&self, source: io::Error) -> Error {
        Error::Io {
            address: self.address.clone(),
            pid: self.pid,
            source,
        }
    }

    pub(crate) fn channel_error(&self, source: worker_channel::Error) -> Error {
        channel_error(&self.address, self.pid, source)
    }

    pub(crate) fn timeout(&self, operation: &'static str, waited: Duration) -> Error {
        Error::Timeout {
            address: self.address.clone(),
            pid: self.pid,
            operation,
            waited,
        }
    }

    fn protocol(&self, reason: impl Into<String>) -> Error {
        Error::Protocol {
            address: self.address.clone(),
            pid: self.pid,
            reason: reason.into(),
        }
    }

    fn unexpected(&self, message: &ServerMessage, awaited: &str) -> Error {
        let kind = match message {
            ServerMessage::Hello(_) => "hello",
            ServerMessage::Authenticated { .. } => "authenticated",
            ServerMessage::Status { .. } => "status",
            ServerMessage::Stopping => "stopping",
            ServerMessage::Error { .. } => "error",
        };
        self.protocol(format!(
            "unexpected {kind} message while waiting for {awaited}"
        ))
    }
}

/// A channel error with its context; a free function so it can be built while the decoder is
/// borrowed.
fn channel_error(address: &str, pid: Option<u32>, source: worker_channel::Error) -> Error {
    Error::Channel {
        address: address.to_owned(),
        pid,
        source,
    }
}
