//! The blocking client: one connection to a shared worker.

use std::{
    collections::VecDeque,
    io,
    os::fd::AsFd,
    time::{Duration, Instant},
};

use serde::{Serialize, de::DeserializeOwned};
use worker_channel::{Channel, Codec, DEFAULT_MAX_FRAME_LEN, FrameKind, Spin};
use worker_core::{WorkerStatus, deadline_after};

use crate::{
    AdminCookie, Error, PeerUids,
    address::{self, Half, Stream},
    auth::{self, AuthError, ClientAuth, Role},
    wire::{
        self, ClientMessage, ErrorCode, Hello, Inbound, NONCE_LEN, PROTOCOL_VERSION, ServerMessage,
    },
};

/// How long [`SharedWorker::connect`] waits for the worker's hello, and each query or stop for
/// its reply, unless told otherwise.
pub const DEFAULT_CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes buffered while a frame is incomplete: one whole frame always fits.
const READ_AHEAD_LIMIT: usize = 2 * DEFAULT_MAX_FRAME_LEN as usize;

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
    /// The worker's hello; `None` until it arrived, for a client that did not wait for it
    /// ([`SharedWorker::connect_with_codec`]).
    hello: Option<Hello>,
    /// Payloads of data frames that arrived while a control reply was awaited.
    backlog: VecDeque<Vec<u8>>,
    backlog_bytes: usize,
    control_timeout: Duration,
    /// What this connection proved, if anything.
    granted: Option<Role>,
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
        let mut link = Link::open(address, deadline, servers)?;
        let hello = link.read_hello(deadline, timeout)?;
        Ok(Self::from_link(link, Some(hello), timeout))
    }

    /// Connects to the shared worker at `address` without waiting for its hello: the first
    /// message can leave at once, encoded with `codec`, the codec the caller knows the worker
    /// speaks (the one of the configuration it was started with, say).
    ///
    /// The client tells the worker which codec it encodes with before anything else, and the
    /// worker closes a connection that expects another one without reading its messages, so a
    /// message is never taken for another. The hello is read on first need: a receive, a query,
    /// a stop, or [`wait_hello`](Self::wait_hello); that call fails with
    /// [`Error::CodecMismatch`] when the worker speaks another codec. Until then
    /// [`pid`](Self::pid) is 0 and [`implementation`](Self::implementation) is empty.
    /// The control timeout is [`DEFAULT_CONTROL_TIMEOUT`]; it also bounds the connect.
    ///
    /// This saves the wait for the hello before the first message: a client that sends one
    /// message and reads one reply waits for the worker once, not twice.
    pub fn connect_with_codec(address: &str, codec: Codec) -> Result<Self, Error> {
        let timeout = DEFAULT_CONTROL_TIMEOUT;
        let mut link = Link::open(address, deadline_after(timeout), &PeerUids::Owner)?;
        link.expect_codec(codec)?;
        Ok(Self::from_link(link, None, timeout))
    }

    /// Reads the worker's hello if it has not arrived yet (see
    /// [`connect_with_codec`](Self::connect_with_codec)), waiting at most the
    /// [control timeout](Self::set_control_timeout).
    pub fn wait_hello(&mut self) -> Result<(), Error> {
        let deadline = deadline_after(self.control_timeout);
        self.need_hello(deadline, "hello")
    }

    /// Whether the worker's hello arrived.
    pub fn has_hello(&self) -> bool {
        self.hello.is_some()
    }

    /// Reads the hello if it has not arrived yet, until `deadline` ([`Error::Timeout`] naming
    /// `operation` after it).
    fn need_hello(
        &mut self,
        deadline: Option<Instant>,
        operation: &'static str,
    ) -> Result<(), Error> {
        while self.hello.is_none() {
            if !self.link.fill(deadline)? {
                return Err(self.link.timeout(operation, self.control_timeout));
            }
            self.take_hello_if_pending()?;
        }
        Ok(())
    }

    /// Once the link is filled: takes the buffered frame as the hello (`true`) if it has not
    /// arrived yet, and checks that the worker speaks the codec this client encodes with.
    pub(crate) fn take_hello_if_pending(&mut self) -> Result<bool, Error> {
        if self.hello.is_some() {
            return Ok(false);
        }
        let expected = self.link.channel.codec();
        let hello = self.link.accept_hello()?;
        if hello.codec != expected {
            // What this client sent is in the wrong codec: the worker closes the connection.
            self.link.broken = true;
            return Err(Error::CodecMismatch {
                address: self.link.address.clone(),
                pid: hello.pid,
                expected,
                announced: hello.codec,
            });
        }
        self.hello = Some(hello);
        Ok(true)
    }

    /// A client over a link, with its hello if it arrived.
    pub(crate) fn from_link(link: Link, hello: Option<Hello>, control_timeout: Duration) -> Self {
        SharedWorker {
            link,
            hello,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            control_timeout,
            granted: None,
        }
    }

    /// Connects as [`connect`](Self::connect) does, then proves knowledge of the client cookie
    /// (by HMAC challenge-response: the cookie never crosses the wire), as a worker that
    /// [requires client authentication](crate::ClientAuth) wants before any data message or
    /// query; the admin cookie does too, for a worker that has it.
    ///
    /// The worker proves it knows the cookie too, so an impostor is found out here
    /// ([`Error::ServerNotAuthenticated`]), before any message is sent. A wrong cookie is
    /// [`Error::Unauthorized`]; a worker that has neither a client cookie nor an admin cookie
    /// is [`Error::ServerHasNoCookie`]; too many wrong ones lately from this user or address
    /// are [`Error::Throttled`].
    ///
    /// ```no_run
    /// use worker_shared::{AdminCookie, SharedWorker};
    ///
    /// let cookie = AdminCookie::from_file("/etc/app/client-cookie")?;
    /// let mut worker = SharedWorker::connect_with_cookie("tcp://10.0.0.7:7000", &cookie)?;
    /// worker.send_message("world")?;
    /// # Ok::<(), worker_shared::Error>(())
    /// ```
    pub fn connect_with_cookie(address: &str, cookie: &AdminCookie) -> Result<Self, Error> {
        Self::connect_with_cookie_timeout(address, cookie, DEFAULT_CONTROL_TIMEOUT)
    }

    /// As [`connect_with_cookie`](Self::connect_with_cookie), within `timeout` in all (the
    /// hello and the authentication), which also becomes the control timeout.
    pub fn connect_with_cookie_timeout(
        address: &str,
        cookie: &AdminCookie,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let deadline = deadline_after(timeout);
        let mut worker = Self::connect_timeout(address, timeout)?;
        worker.authenticate_as(cookie, Role::Client, deadline)?;
        Ok(worker)
    }

    /// Whether the worker takes data messages and queries from this connection only once it
    /// authenticated (its hello says so; `false` before the hello arrived, see
    /// [`connect_with_codec`](Self::connect_with_codec)): see
    /// [`connect_with_cookie`](Self::connect_with_cookie).
    pub fn requires_auth(&self) -> bool {
        self.hello.as_ref().is_some_and(|hello| hello.auth_required)
    }

    /// Authenticates for data with `cookie` when the worker requires it and this connection
    /// has not yet (a connection that authenticated as admin has); the step
    /// [`connect_or_start`](crate::connect_or_start) takes with its configuration's client
    /// cookie, or its admin cookie.
    pub(crate) fn authenticate_if_required(
        &mut self,
        cookie: Option<&AdminCookie>,
    ) -> Result<(), Error> {
        let deadline = deadline_after(self.control_timeout);
        self.need_hello(deadline, "hello")?;
        if !self.requires_auth() || self.granted.is_some() {
            return Ok(());
        }
        let Some(cookie) = cookie else {
            return Err(Error::AuthenticationRequired {
                address: self.link.address.clone(),
                pid: self.pid(),
            });
        };
        self.authenticate_as(cookie, Role::Client, deadline)
    }

    /// The worker's address, in canonical form.
    pub fn address(&self) -> &str {
        &self.link.address
    }

    /// The worker's process id, from its hello (0 before the hello arrived, see
    /// [`connect_with_codec`](Self::connect_with_codec)).
    pub fn pid(&self) -> u32 {
        self.hello.as_ref().map_or(0, |hello| hello.pid)
    }

    /// The name of the implementation the worker runs, from its hello (empty before the hello
    /// arrived).
    pub fn implementation(&self) -> &str {
        self.hello
            .as_ref()
            .map_or("", |hello| hello.implementation.as_str())
    }

    /// Whether the process at the other end is the one the hello named, as this process names
    /// it (see `local::peer_is`).
    pub(crate) fn peer_is_announced_pid(&self) -> bool {
        crate::local::peer_is(self.link.channel.reader(), self.pid())
    }

    /// The codec of data messages, from the worker's hello (or the one given to
    /// [`connect_with_codec`](Self::connect_with_codec), which the hello must confirm).
    pub fn codec(&self) -> Codec {
        self.link.channel.codec()
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
        let sent = self
            .link
            .send(|c| c.queue(FrameKind::Data, message), None)
            .map_err(|e| self.why_send_failed(e))?;
        debug_assert!(
            sent,
            "a send without a deadline returned before it was written"
        );
        Ok(())
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
        match self.need_hello(deadline, "message") {
            Err(Error::Timeout { .. }) => return Ok(None),
            other => other?,
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
        let (codec, pid) = (self.link.channel.codec(), self.link.pid);
        let frame = self
            .link
            .channel
            .connection_mut()
            .try_receive_frame()
            .map_err(|e| channel_error(&self.link.address, pid, e))?
            .expect("fill promised a frame");
        if frame.kind == FrameKind::Data {
            // Decoded straight from the decoder's buffer: no copy on the common path.
            let decoded = codec.decode(frame.payload);
            return decoded.map_err(|e| channel_error(&self.link.address, pid, e));
        }
        // The worker speaks in control frames only when spoken to, or to say why it closes
        // the connection.
        let payload = frame.payload.to_vec();
        Err(
            match wire::decode::<ServerMessage>(&payload, ServerMessage::TYPES) {
                Inbound::Message(ServerMessage::Error {
                    code: ErrorCode::Stopping,
                    ..
                }) => self.link.stopping(),
                Inbound::Message(ServerMessage::Error { code, message }) => {
                    self.refused(code, message)
                }
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
        self.need_hello(deadline, "query")?;
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
        self.need_hello(deadline, "query")?;
        self.authenticate(cookie, deadline)?;
        self.ask_status(deadline)
    }

    fn ask_status(&mut self, deadline: Option<Instant>) -> Result<StatusReply, Error> {
        let sent = self.link.send_control(
            &ClientMessage::Query,
            deadline,
            "query",
            self.control_timeout,
        );
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
        self.need_hello(deadline, "stop")?;
        self.authenticate(cookie, deadline)?;
        let sent =
            self.link
                .send_control(&ClientMessage::Stop, deadline, "stop", self.control_timeout);
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
        if self.granted == Some(Role::Admin) {
            return Ok(());
        }
        self.authenticate_as(cookie, Role::Admin, deadline)
    }

    /// Proves knowledge of `cookie` for `role`, whatever this connection proved before.
    fn authenticate_as(
        &mut self,
        cookie: &AdminCookie,
        role: Role,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        self.need_hello(deadline, "authentication")?;
        let (auth, request) = self.auth_request(cookie, role)?;
        let sent =
            self.link
                .send_control(&request, deadline, "authentication", self.control_timeout);
        sent.map_err(|e| self.why_send_failed(e))?;
        let reply = self.control_reply(deadline, "authentication")?;
        self.auth_reply(&auth, reply)
    }

    /// What this connection proved, if anything.
    #[cfg(feature = "tokio")]
    pub(crate) fn granted(&self) -> Option<Role> {
        self.granted
    }

    /// The proof of knowledge of `cookie` for `role` on this connection, and the request that
    /// carries it.
    pub(crate) fn auth_request<'c>(
        &self,
        cookie: &'c AdminCookie,
        role: Role,
    ) -> Result<(ClientAuth<'c>, ClientMessage), Error> {
        let client_nonce = auth::fresh_nonce().map_err(Error::Random)?;
        let hello = self
            .hello
            .as_ref()
            .expect("a control request waits for the hello");
        let auth = ClientAuth::start(role, Some(cookie), &hello.nonce, client_nonce)
            .map_err(|e| self.auth_error(e))?;
        let request = ClientMessage::Authenticate {
            nonce: auth.client_nonce().to_vec(),
            proof: auth.proof(),
            role,
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
                // Whatever was proved before does not hold unless this holds too.
                self.granted = None;
                auth.verify_server(&proof).map_err(|e| self.auth_error(e))?;
                self.granted = Some(auth.role());
                Ok(())
            }
            other => Err(self.link.unexpected(&other, "the reply to authenticate")),
        }
    }

    fn auth_error(&self, error: AuthError) -> Error {
        let (address, pid) = (self.link.address.clone(), self.pid());
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
                    pid: self.pid(),
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
        let (address, pid) = (self.link.address.clone(), self.pid());
        match code {
            ErrorCode::Unauthorized => Error::Unauthorized { address, pid },
            ErrorCode::NoCookie => Error::ServerHasNoCookie { address, pid },
            ErrorCode::AuthenticationRequired => Error::AuthenticationRequired { address, pid },
            ErrorCode::TooManyFailures => Error::Throttled { address, pid },
            ErrorCode::WorkerFailed => Error::WorkerFailed { address, pid },
            code => Error::Rejected {
                address,
                pid,
                code: code.as_str().to_owned(),
                message,
            },
        }
    }
}

/// The connection under a [`SharedWorker`]: the framed channel over a non-blocking socket,
/// waits bounded by deadlines, and errors that name the address (and the pid, once the hello
/// told it).
///
/// The socket never blocks: the blocking client waits for readiness with the project's one
/// deadline poll (`worker_core::os::poll`), the async client with tokio's reactor, and both
/// read and write through the same steps. No call leaves a timeout on the socket for the next.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) address: String,
    pub(crate) channel: Channel<Half, Half>,
    /// The pid from the hello, once it arrived.
    pid: Option<u32>,
    /// A send failed, perhaps part-way through a frame (or went out in a codec the worker
    /// does not speak).
    pub(crate) broken: bool,
    /// The worker said it is stopping.
    stopping: bool,
    /// The latency mode of the receives.
    spin: Spin,
}

impl Link {
    pub(crate) fn new(address: String, stream: Stream) -> Result<Self, Error> {
        // Blocking: every call but a receive's wait says `MSG_DONTWAIT` (see `Half`).
        stream.set_nonblocking(false).map_err(|source| Error::Io {
            address: address.clone(),
            pid: None,
            source,
        })?;
        // One descriptor for both directions: no dup on the connect path.
        let stream = Half::new(std::sync::Arc::new(stream));
        Ok(Link {
            address,
            // Control frames are always MessagePack; the data codec comes with the hello.
            channel: Channel::new(stream.clone(), stream, Codec::MessagePack),
            pid: None,
            broken: false,
            stopping: false,
            spin: Spin::OFF,
        })
    }

    /// Connects to `address`, trying until `deadline`.
    /// Connects to `address`, refusing a Unix socket that a user outside `servers` serves
    /// before anything is sent (see [`SharedWorker::connect_trusting`]).
    fn open(address: &str, deadline: Option<Instant>, servers: &PeerUids) -> Result<Self, Error> {
        let parsed = address::parse(address)?;
        let stream = address::connect(&parsed, deadline).map_err(|source| Error::Connect {
            address: parsed.to_string(),
            source,
        })?;
        crate::local::check_server(&stream, parsed.as_str(), servers)?;
        Link::new(parsed.to_string(), stream)
    }

    /// Encodes data messages with `codec` before the hello came, and tells the worker so (see
    /// [`SharedWorker::connect_with_codec`]): the message is queued, and leaves with the first
    /// send, in the same write, before any data frame.
    pub(crate) fn expect_codec(&mut self, codec: Codec) -> Result<(), Error> {
        self.channel.set_codec(codec);
        let payload =
            wire::encode(&ClientMessage::Codec { codec }).map_err(|e| self.channel_error(e))?;
        self.channel
            .connection_mut()
            .queue_raw(FrameKind::Control, &payload)
            .map_err(|e| self.channel_error(e))
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
    /// Each read takes what the socket has and stops when it would block, so a frame that
    /// arrived whole is handed out at once, whatever its size; the bytes of a frame that did
    /// not arrive whole by the deadline stay in the decoder, so a timeout never cuts a frame.
    fn fill(&mut self, deadline: Option<Instant>) -> Result<bool, Error> {
        loop {
            if self.filled()? {
                return Ok(true);
            }
            // The latency mode: look for bytes without blocking for up to the budget; the wait
            // below returns at once then (or blocks as usual once it is spent).
            let socket = self.channel.reader().as_fd();
            let _ = self.spin.run(deadline, || {
                Ok::<_, ()>(
                    worker_core::os::readable_now(socket)
                        .unwrap_or(true)
                        .then_some(()),
                )
            });
            if deadline.is_none() {
                // No deadline: the first read waits in the kernel itself (a blocking `recv`,
                // as the raw socket's), then the reads after it take what else arrived.
                self.channel.reader_mut().wait_in_next_read(true);
                let read = self.read_more();
                self.channel.reader_mut().wait_in_next_read(false);
                read?;
                continue;
            }
            if !self.wait(deadline, true, false)?.readable {
                return Ok(false);
            }
            self.read_more()?;
        }
    }

    /// Waits until the socket is readable (with `read`) or writable (with `write`), or
    /// `deadline` passes; says which. An end of stream or an error to report counts as both:
    /// the read or the write says what is wrong.
    fn wait(&self, deadline: Option<Instant>, read: bool, write: bool) -> Result<Ready, Error> {
        let socket = self.channel.reader().as_fd();
        let ready = worker_core::os::poll(&[(socket, read, write)], deadline)
            .map_err(|e| self.io_error(e))?;
        Ok(match ready {
            None => Ready::default(),
            Some([ready, ..]) => Ready {
                readable: read && ready.can_read(),
                writable: write && (ready.writable || ready.hangup),
            },
        })
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

    /// Sends a control message, waiting for the socket until the deadline at most
    /// ([`Error::Timeout`] naming `operation`, as having waited `timeout`, after it).
    fn send_control(
        &mut self,
        message: &ClientMessage,
        deadline: Option<Instant>,
        operation: &'static str,
        timeout: Duration,
    ) -> Result<(), Error> {
        let payload = wire::encode(message).map_err(|e| self.channel_error(e))?;
        if self.send(|c| c.queue_raw(FrameKind::Control, &payload), deadline)? {
            Ok(())
        } else {
            Err(self.timeout(operation, timeout))
        }
    }

    /// Queues one frame with `queue` and writes it whole, after what is queued already (the
    /// `codec` of a client that did not wait for the hello, what a cancelled async send left),
    /// waiting for room until `deadline`; `false` when it passed first. The frame is taken
    /// back then if none of it left, and otherwise the link is broken, since the worker would
    /// read a cut frame.
    pub(crate) fn send(
        &mut self,
        queue: impl FnOnce(&mut Connection) -> Result<(), worker_channel::Error>,
        deadline: Option<Instant>,
    ) -> Result<bool, Error> {
        self.usable()?;
        // Without a deadline nothing is taken back, so the frame joins the queue and one write
        // carries both; with one, the queue is written first so that it holds only this frame.
        if self.queued_bytes() > 0 && deadline.is_some() && !self.write_out(deadline)? {
            return Ok(false);
        }
        // Encoding failed before anything was queued: the link is as it was.
        queue(self.channel.connection_mut()).map_err(|e| self.channel_error(e))?;
        let frame_len = self.queued_bytes();
        if self.write_out(deadline)? {
            return Ok(true);
        }
        if self.queued_bytes() == frame_len {
            self.channel.connection_mut().discard_queued();
        } else {
            self.broken = true;
        }
        Ok(false)
    }

    /// Bytes queued and not yet written.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.channel.connection().queued_bytes()
    }

    /// Writes the queue whole (`true`), waiting for room until `deadline` (`false` once it
    /// passed), and reads what the worker sends meanwhile (up to the read-ahead limit), so
    /// neither side waits on a full buffer.
    fn write_out(&mut self, deadline: Option<Instant>) -> Result<bool, Error> {
        while !self.flush()? {
            // Past the read-ahead limit only room to write is waited for: the worker's replies
            // wait in the socket, and a worker that cannot send judges this client.
            let read = self.channel.connection().buffered_bytes() <= READ_AHEAD_LIMIT
                && !self.channel.connection().is_read_closed();
            let ready = self.wait(deadline, read, true)?;
            if ready.readable {
                match self.read_more() {
                    // What is buffered waits for the receives; room to write comes first.
                    Ok(())
                    | Err(Error::Channel {
                        source: worker_channel::Error::ReceiveBufferFull { .. },
                        ..
                    }) => {}
                    Err(e) => return Err(e),
                }
            } else if !ready.writable {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Writes what the socket takes now; whether the queue is written. A failure (the worker
    /// went away) breaks the link with the blocking write's error.
    pub(crate) fn flush(&mut self) -> Result<bool, Error> {
        let connection = self.channel.connection_mut();
        let result = match connection.flush() {
            Ok(true) if connection.is_write_closed() => Err(worker_channel::Error::Io(
                connection
                    .write_closed_error()
                    .unwrap_or_else(|| io::ErrorKind::BrokenPipe.into()),
            )),
            Ok(empty) => return Ok(empty),
            Err(e) => Err(e),
        };
        self.sent(result).map(|()| true)
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

/// The framed connection under a link.
pub(crate) type Connection = worker_channel::FramedConnection<worker_channel::Duplex<Half, Half>>;

/// What [`Link::wait`] found.
#[derive(Clone, Copy, Debug, Default)]
struct Ready {
    readable: bool,
    writable: bool,
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
