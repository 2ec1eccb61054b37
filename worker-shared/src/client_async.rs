//! The async client (feature `tokio`): one connection to a shared worker, on tokio's reactor.

use std::{
    future::poll_fn,
    io,
    os::fd::{AsFd, OwnedFd},
    task::{Context, Poll},
    time::Duration,
};

use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{Interest, unix::AsyncFd};
use worker_channel::{Codec, FrameKind};

use crate::{
    AdminCookie, Error, PeerUids, SharedWorker, StatusReply,
    address::{self, Stream},
    client::{DEFAULT_CONTROL_TIMEOUT, Link},
    wire::{self, ClientMessage, Role, ServerMessage},
};

/// A connection to a shared worker driven from async code: [`send_message`](Self::send_message),
/// [`receive_message`](Self::receive_message), the queries and the stop wait on tokio's
/// reactor, with no thread per connection.
///
/// It is a [`SharedWorker`] whose socket is non-blocking and registered with the runtime's
/// reactor through [`AsyncFd`]: the framing, the limits, the backlog of data messages that
/// arrive while a query waits for its reply, and every error are the blocking client's.
/// Writes never raise SIGPIPE.
///
/// Sends and receives are cancel-safe: a receive dropped before it returned (by
/// [`tokio::time::timeout`], or a `select!` that took another branch) loses nothing; a send
/// dropped before it returned queued either nothing or its whole frame, which is taken back if
/// none of it was written, and otherwise written before anything else by the next call, so the
/// stream stays whole. A query or stop dropped after its request left leaves its reply on the
/// way, which the next receive reports as a protocol error (as after the blocking client's
/// timeout): drop the connection then.
///
/// ```
/// use worker_shared::{AdminCookie, AsyncSharedWorker, SharedServer, SharedServerConfig};
/// # use worker_core::{BoxError, Connection, EventedWorker, Worker, WorkerLoop, WorkerStatus};
/// # use worker_shared::SharedWorkerImpl;
/// # struct Greeter;
/// # impl Worker for Greeter {
/// #     const NAME: &'static str = "greeter";
/// #     type Args = ();
/// #     fn new((): ()) -> Result<Self, BoxError> { Ok(Greeter) }
/// # }
/// # impl EventedWorker for Greeter {
/// #     type Message = String;
/// #     type Reply = String;
/// #     fn on_message(&mut self, name: String, connection: &mut Connection<String>,
/// #                   _: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
/// #         connection.send(&format!("Hello {name}"))?;
/// #         Ok(())
/// #     }
/// # }
/// # impl SharedWorkerImpl for Greeter {
/// #     fn on_query(&mut self, _privileged: bool) -> Option<WorkerStatus> {
/// #         Some("greeting".into())
/// #     }
/// # }
///
/// let dir = tempfile::tempdir()?;
/// let address = format!("unix://{}/worker.sock", dir.path().display());
/// let cookie = AdminCookie::new("change me in your app")?;
/// // A shared worker served on a thread of this program (a daemon is the same to a client).
/// let config = SharedServerConfig::default().with_cookie(cookie.clone());
/// let server = SharedServer::bind(&address, config)?.spawn(|| Greeter::new(()))?;
///
/// let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// runtime.block_on(async {
///     let mut worker = AsyncSharedWorker::connect(&address).await?;
///     worker.send_message("world").await?;
///     assert_eq!(worker.receive_message::<String>().await?, "Hello world");
///     assert_eq!(worker.query().await?.status.unwrap().text(), "greeting");
///     worker.stop(&cookie).await // returns once the worker acknowledged
/// })?;
/// server.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct AsyncSharedWorker {
    /// A duplicate of the socket, registered; closed before the client's own descriptor.
    fd: AsyncFd<OwnedFd>,
    client: SharedWorker,
}

/// Takes back a frame when its send is dropped before any of it was written.
struct TakeBack<'a> {
    worker: &'a mut AsyncSharedWorker,
    frame_len: usize,
}

impl Drop for TakeBack<'_> {
    fn drop(&mut self) {
        let connection = self.worker.client.link.channel.connection_mut();
        // The queue held only this frame: all of it still queued means none of it left.
        if self.frame_len > 0 && connection.queued_bytes() == self.frame_len {
            connection.discard_queued();
        }
    }
}

/// A frame to queue.
enum Outgoing<'m, T: ?Sized> {
    Data(&'m T),
    Control(&'m ClientMessage),
}

impl SharedWorker {
    /// This connection, driven from async code on tokio's reactor: see [`AsyncSharedWorker`].
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or in one built without IO (`enable_io`), as every
    /// registration with tokio's reactor does. The timeouts and the control requests also
    /// need the runtime's timer (`enable_time`; `enable_all` gives both).
    pub fn into_async(self) -> Result<AsyncSharedWorker, Error> {
        AsyncSharedWorker::new(self)
    }
}

impl AsyncSharedWorker {
    /// Connects to the shared worker at `address` (as [`SharedWorker::connect`]) and reads its
    /// hello, waiting at most [`DEFAULT_CONTROL_TIMEOUT`], without blocking the runtime's
    /// thread.
    ///
    /// Resolving a host name goes through the system's resolver on tokio's blocking pool;
    /// addresses given as IP literals, and Unix sockets, need no resolution.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with IO and the timer enabled (`enable_all`).
    pub async fn connect(address: &str) -> Result<Self, Error> {
        Self::connect_timeout(address, DEFAULT_CONTROL_TIMEOUT).await
    }

    /// Connects and reads the hello within `timeout` (`Duration::MAX`: no limit), which also
    /// becomes the [control timeout](Self::set_control_timeout); the errors are
    /// [`SharedWorker::connect_timeout`]'s.
    pub async fn connect_timeout(address: &str, timeout: Duration) -> Result<Self, Error> {
        Self::connect_trusting(address, timeout, &PeerUids::Owner).await
    }

    /// As [`connect_timeout`](Self::connect_timeout), trusting the Unix sockets served by the
    /// users in `servers`, as [`SharedWorker::connect_trusting`] does.
    pub async fn connect_trusting(
        address: &str,
        timeout: Duration,
        servers: &PeerUids,
    ) -> Result<Self, Error> {
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        let link = open(address, deadline, servers).await?;
        let fd = register(&link)?;
        // A link without its hello yet: the client is built once it came.
        let mut connecting = Connecting { fd, link };
        if within(deadline, connecting.fill())
            .await
            .transpose()?
            .is_none()
        {
            return Err(connecting.link.timeout("hello", timeout));
        }
        let hello = connecting.link.accept_hello()?;
        let Connecting { fd, link } = connecting;
        Ok(AsyncSharedWorker {
            fd,
            client: SharedWorker::from_link(link, Some(hello), timeout),
        })
    }

    /// Connects to the shared worker at `address` without waiting for its hello, as
    /// [`SharedWorker::connect_with_codec`] does: the first message leaves at once, encoded
    /// with `codec`, and the hello is read on first need.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with IO and the timer enabled (`enable_all`).
    pub async fn connect_with_codec(address: &str, codec: Codec) -> Result<Self, Error> {
        let timeout = DEFAULT_CONTROL_TIMEOUT;
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        let mut link = open(address, deadline, &PeerUids::Owner).await?;
        link.expect_codec(codec)?;
        let fd = register(&link)?;
        Ok(AsyncSharedWorker {
            fd,
            client: SharedWorker::from_link(link, None, timeout),
        })
    }

    /// Connects and proves knowledge of the client cookie, as
    /// [`SharedWorker::connect_with_cookie`] does, with its errors.
    pub async fn connect_with_cookie(address: &str, cookie: &AdminCookie) -> Result<Self, Error> {
        Self::connect_with_cookie_timeout(address, cookie, DEFAULT_CONTROL_TIMEOUT).await
    }

    /// As [`connect_with_cookie`](Self::connect_with_cookie), within `timeout` in all (the
    /// hello and the authentication), which also becomes the control timeout.
    pub async fn connect_with_cookie_timeout(
        address: &str,
        cookie: &AdminCookie,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        let mut worker = Self::connect_timeout(address, timeout).await?;
        worker
            .authenticate_as(cookie, Role::Client, deadline)
            .await?;
        Ok(worker)
    }

    /// Registers a connected client's socket with the current runtime's reactor
    /// (see [`SharedWorker::into_async`]).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or in one built without IO (`enable_io`), as every
    /// registration with tokio's reactor does. The timeouts and the control requests also
    /// need the runtime's timer (`enable_time`; `enable_all` gives both).
    pub fn new(client: SharedWorker) -> Result<Self, Error> {
        // The socket is non-blocking already: both clients wait for readiness their own way.
        let fd = register(&client.link)?;
        Ok(AsyncSharedWorker { fd, client })
    }

    /// The blocking client back, with every message buffered, kept or queued.
    pub fn into_inner(self) -> Result<SharedWorker, Error> {
        let AsyncSharedWorker { fd, client } = self;
        drop(fd);
        Ok(client)
    }

    /// The blocking client, for what needs no waiting: its address, pid, codec.
    pub fn get_ref(&self) -> &SharedWorker {
        &self.client
    }

    /// The worker's address, in canonical form.
    pub fn address(&self) -> &str {
        self.client.address()
    }

    /// The worker's process id, from its hello.
    pub fn pid(&self) -> u32 {
        self.client.pid()
    }

    /// The name of the implementation the worker runs, from its hello.
    pub fn implementation(&self) -> &str {
        self.client.implementation()
    }

    /// The codec of data messages, from the worker's hello.
    pub fn codec(&self) -> Codec {
        self.client.codec()
    }

    /// How long a query, an authentication or a stop waits for its reply.
    pub fn control_timeout(&self) -> Duration {
        self.client.control_timeout()
    }

    /// Sets how long a query, an authentication or a stop waits for its reply
    /// (`Duration::MAX`: no limit).
    pub fn set_control_timeout(&mut self, timeout: Duration) {
        self.client.set_control_timeout(timeout);
    }

    /// Sends one message, waiting asynchronously until the socket took all of it.
    ///
    /// A send that fails (the worker went away, say) may have sent part of a frame: every later
    /// call then fails with [`Error::Broken`], as with the blocking client. Cancel-safe.
    pub async fn send_message<T: Serialize + ?Sized>(&mut self, message: &T) -> Result<(), Error> {
        let sent = self.send(Outgoing::Data(message)).await;
        sent.map_err(|e| self.client.why_send_failed(e))
    }

    /// Receives one message, waiting asynchronously until it arrives.
    ///
    /// The worker closing the connection gives [`Error::Closed`]. Cancel-safe.
    pub async fn receive_message<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        if let Some(message) = self.client.take_backlogged() {
            return message;
        }
        self.hello().await?;
        self.fill().await?;
        self.client.take_message()
    }

    /// Receives one message, waiting at most `timeout`; [`Error::Timeout`] when nothing came.
    ///
    /// A timeout leaves the connection usable: part of a message that did arrive is kept.
    pub async fn receive_message_timeout<T: DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> Result<T, Error> {
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        match within(deadline, self.receive_message()).await {
            Some(result) => result,
            None => Err(self.client.link.timeout("message", timeout)),
        }
    }

    /// Asks the worker for its status, without privilege (as [`SharedWorker::query`]).
    ///
    /// Waits at most the [control timeout](Self::set_control_timeout); data messages that
    /// arrive meanwhile are kept, and the next receives return them first, in order.
    pub async fn query(&mut self) -> Result<StatusReply, Error> {
        let deadline = self.control_deadline();
        self.hello_within(deadline, "query").await?;
        let reply = self
            .control(&ClientMessage::Query, deadline, "query")
            .await?;
        self.client.status_reply(reply)
    }

    /// Proves knowledge of the admin cookie (once per connection), then asks for the
    /// privileged status (as [`SharedWorker::query_privileged`]), within the control timeout
    /// in all.
    pub async fn query_privileged(&mut self, cookie: &AdminCookie) -> Result<StatusReply, Error> {
        let deadline = self.control_deadline();
        self.hello_within(deadline, "query").await?;
        self.authenticate(cookie, deadline).await?;
        let reply = self
            .control(&ClientMessage::Query, deadline, "query")
            .await?;
        self.client.status_reply(reply)
    }

    /// Proves knowledge of the admin cookie, asks the worker to stop, and returns once it
    /// acknowledged (as [`SharedWorker::stop`]), within the control timeout in all.
    pub async fn stop(&mut self, cookie: &AdminCookie) -> Result<(), Error> {
        let deadline = self.control_deadline();
        self.hello_within(deadline, "stop").await?;
        self.authenticate(cookie, deadline).await?;
        let reply = self.control(&ClientMessage::Stop, deadline, "stop").await?;
        self.client.stop_reply(reply)
    }

    /// Reads the hello if it has not arrived yet (a client made with
    /// [`SharedWorker::connect_with_codec`]). Cancel-safe.
    async fn hello(&mut self) -> Result<(), Error> {
        while !self.client.has_hello() {
            self.fill().await?;
            self.client.take_hello_if_pending()?;
        }
        Ok(())
    }

    /// [`hello`](Self::hello) until `deadline` ([`Error::Timeout`] naming `operation`).
    async fn hello_within(
        &mut self,
        deadline: Option<tokio::time::Instant>,
        operation: &'static str,
    ) -> Result<(), Error> {
        match within(deadline, self.hello()).await {
            Some(result) => result,
            None => Err(self
                .client
                .link
                .timeout(operation, self.client.control_timeout())),
        }
    }

    fn control_deadline(&self) -> Option<tokio::time::Instant> {
        tokio::time::Instant::now().checked_add(self.client.control_timeout())
    }

    async fn authenticate(
        &mut self,
        cookie: &AdminCookie,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), Error> {
        if self.client.granted() == Some(Role::Admin) {
            return Ok(());
        }
        self.authenticate_as(cookie, Role::Admin, deadline).await
    }

    /// Proves knowledge of `cookie` for `role`, whatever this connection proved before.
    async fn authenticate_as(
        &mut self,
        cookie: &AdminCookie,
        role: Role,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), Error> {
        let (auth, request) = self.client.auth_request(cookie, role)?;
        let reply = self.control(&request, deadline, "authentication").await?;
        self.client.auth_reply(&auth, reply)
    }

    /// Sends a control request and waits for its reply, keeping the data messages that arrive
    /// first, until `deadline` ([`Error::Timeout`] naming `operation` after it).
    async fn control(
        &mut self,
        request: &ClientMessage,
        deadline: Option<tokio::time::Instant>,
        operation: &'static str,
    ) -> Result<ServerMessage, Error> {
        let exchange = async {
            let sent = self.send(Outgoing::<()>::Control(request)).await;
            sent.map_err(|e| self.client.why_send_failed(e))?;
            loop {
                self.fill().await?;
                if let Some(reply) = self.client.control_frame()? {
                    return Ok(reply);
                }
            }
        };
        match within(deadline, exchange).await {
            Some(result) => result,
            None => Err(self
                .client
                .link
                .timeout(operation, self.client.control_timeout())),
        }
    }

    /// Queues one frame and writes it whole, after what a cancelled send left.
    async fn send<T: Serialize + ?Sized>(&mut self, frame: Outgoing<'_, T>) -> Result<(), Error> {
        self.client.link.usable()?;
        if self.queued_bytes() > 0 {
            self.write_out().await?;
        }
        let link = &mut self.client.link;
        let queued = match frame {
            Outgoing::Data(message) => link
                .channel
                .connection_mut()
                .queue(FrameKind::Data, message),
            Outgoing::Control(message) => {
                let payload = wire::encode(message).map_err(|e| link.channel_error(e))?;
                link.channel
                    .connection_mut()
                    .queue_raw(FrameKind::Control, &payload)
            }
        };
        // Encoding failed before anything was queued: the link is as it was.
        queued.map_err(|e| link.channel_error(e))?;
        let frame_len = self.queued_bytes();
        let send = TakeBack {
            worker: self,
            frame_len,
        };
        send.worker.write_out().await
    }

    /// Bytes of a cancelled send not yet written (the next call writes them first).
    pub fn queued_bytes(&self) -> usize {
        self.client.link.queued_bytes()
    }

    /// Writes the queue whole, waiting for the socket as the blocking client's writes do; a
    /// failure (the worker went away) breaks the link, as theirs does.
    async fn write_out(&mut self) -> Result<(), Error> {
        while !self.client.link.flush()? {
            poll_fn(|cx| self.poll_ready(cx, false, true)).await?;
        }
        Ok(())
    }

    /// Reads until a whole frame is buffered, writing what a cancelled send left meanwhile.
    async fn fill(&mut self) -> Result<(), Error> {
        loop {
            if self.client.link.filled()? {
                return Ok(());
            }
            let write = self.queued_bytes() > 0 && self.client.link.usable().is_ok();
            if poll_fn(|cx| self.poll_ready(cx, true, write)).await? {
                self.client.link.read_more()?;
            } else {
                self.client.link.flush()?;
            }
        }
    }

    /// Ready once the socket is readable (with `read`; `true`) or writable (with `write`;
    /// `false`). The readiness reported is cleared at once, before the caller reads or writes:
    /// an edge that comes after is a new wake-up.
    fn poll_ready(
        &self,
        cx: &mut Context<'_>,
        read: bool,
        write: bool,
    ) -> Poll<Result<bool, Error>> {
        let io = |e| self.client.link.io_error(e);
        if read {
            if let Poll::Ready(guard) = self.fd.poll_read_ready(cx) {
                guard.map_err(io)?.clear_ready();
                return Poll::Ready(Ok(true));
            }
        }
        if write {
            if let Poll::Ready(guard) = self.fd.poll_write_ready(cx) {
                guard.map_err(io)?.clear_ready();
                return Poll::Ready(Ok(false));
            }
        }
        Poll::Pending
    }
}

/// A link waiting for its hello.
struct Connecting {
    fd: AsyncFd<OwnedFd>,
    link: Link,
}

impl Connecting {
    async fn fill(&mut self) -> Result<(), Error> {
        loop {
            if self.link.filled()? {
                return Ok(());
            }
            let ready = poll_fn(|cx| self.fd.poll_read_ready(cx)).await;
            ready.map_err(|e| self.link.io_error(e))?.clear_ready();
            self.link.read_more()?;
        }
    }
}

/// Connects to `address` without blocking the runtime's thread, until `deadline`.
/// Connects to `address` within `deadline`, refusing a Unix socket that a user outside
/// `servers` serves before anything is sent.
async fn open(
    address: &str,
    deadline: Option<tokio::time::Instant>,
    servers: &PeerUids,
) -> Result<Link, Error> {
    let parsed = address::parse(address)?;
    let connect_error = |source| Error::Connect {
        address: parsed.to_string(),
        source,
    };
    let stream = match within(deadline, address::connect_async(&parsed)).await {
        Some(stream) => stream.map_err(connect_error)?,
        None => {
            return Err(connect_error(io::Error::new(
                io::ErrorKind::TimedOut,
                "no address answered in time",
            )));
        }
    };
    crate::local::check_server(&stream, parsed.as_str(), servers)?;
    Link::new(parsed.to_string(), stream)
}

/// Registers the link's socket with the current runtime's reactor.
fn register(link: &Link) -> Result<AsyncFd<OwnedFd>, Error> {
    let stream: &Stream = link.channel.reader();
    worker_core::os::register_async(stream.as_fd(), Interest::READABLE | Interest::WRITABLE)
        .map_err(|e| link.io_error(e))
}

/// `future`'s output, or `None` once `deadline` passed (`None`: no deadline).
async fn within<F: Future>(deadline: Option<tokio::time::Instant>, future: F) -> Option<F::Output> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
        None => Some(future.await),
    }
}
