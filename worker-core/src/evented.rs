//! Evented workers and the runtime that serves them.

use std::{collections::HashMap, fmt, marker::PhantomData, sync::Arc};

use serde::{Serialize, de::DeserializeOwned};
use worker_channel::FrameKind;

use mio::Interest;

use crate::{
    BoxError, Error, EventLoop, NbChannel, Readiness, SourceId, TimerId, Worker, WorkerChannel,
    event_loop::Rearm,
};

/// The event loop an [`EventedWorker`] runs on: its state is the worker's [`WorkerHost`].
pub type WorkerLoop<W> = EventLoop<WorkerHost<W>>;

/// A worker that reacts to events instead of running its own loop (the seed's
/// `EventedWorkerImplementationInterface`).
///
/// The runtime calls, in this order and each exactly once per worker or per connection:
/// [`set_loop`](EventedWorker::set_loop), [`initialize`](EventedWorker::initialize), then for
/// each connection [`on_connect`](EventedWorker::on_connect),
/// [`on_message`](EventedWorker::on_message) for every message in arrival order, and
/// [`on_disconnect`](EventedWorker::on_disconnect); and finally
/// [`terminate`](EventedWorker::terminate).
///
/// The seed hands the loop over once, in `setLoop`, for the worker to keep; Rust cannot lend
/// the loop and the worker to each other for good, so every callback that may want to add a
/// timer or a socket receives the loop, and handlers registered on it receive the
/// [`WorkerHost`] (the worker and its connections). The seed's `$peerName` argument is
/// [`Connection::peer_name`].
///
/// An error from a callback, or from a handler the worker registered, ends the runtime with
/// [`Error::Handler`] naming the callback; a panic unwinds out of the runtime, unless its host
/// catches panics ([`WorkerHost::set_panic_handler`], as a shared-worker server does).
///
/// A worker that squares numbers and, on its own timer, tells its master it is alive; a thread
/// stands in for the master here:
///
/// ```
/// use std::{fs::File, os::fd::OwnedFd, time::Duration};
/// use worker_channel::{Channel, Codec};
/// use worker_core::{BoxError, Connection, EventedWorker, TimerId, Worker, WorkerLoop};
///
/// struct Squarer { heartbeat: Option<TimerId> }
///
/// impl Worker for Squarer {
///     const NAME: &'static str = "squarer";
///     type Args = ();
///     fn new((): ()) -> Result<Self, BoxError> { Ok(Squarer { heartbeat: None }) }
/// }
///
/// impl EventedWorker for Squarer {
///     type Message = i64;
///     type Reply = String;
///
///     fn set_loop(&mut self, event_loop: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
///         let timer = event_loop.add_periodic_timer(Duration::from_secs(1), |host, _| {
///             for connection in host.connections_mut().iter_mut() {
///                 connection.send(&"still here".to_owned())?;
///             }
///             Ok(())
///         });
///         self.heartbeat = Some(timer);
///         Ok(())
///     }
///
///     fn on_message(
///         &mut self,
///         n: i64,
///         connection: &mut Connection<String>,
///         _: &mut WorkerLoop<Self>,
///     ) -> Result<(), BoxError> {
///         connection.send(&format!("{n} squared is {}", n * n))?;
///         Ok(())
///     }
///
///     fn terminate(&mut self, event_loop: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
///         // Without this the timer would keep the worker alive after its master left.
///         event_loop.cancel_timer(self.heartbeat.take().unwrap());
///         Ok(())
///     }
/// }
///
/// fn pipe() -> std::io::Result<(File, File)> {
///     let (tx, rx) = mio::unix::pipe::new()?;
///     rx.set_nonblocking(false)?;
///     tx.set_nonblocking(false)?;
///     Ok((File::from(OwnedFd::from(rx)), File::from(OwnedFd::from(tx))))
/// }
/// let ((worker_in, mut master_out), (mut master_in, worker_out)) = (pipe()?, pipe()?);
/// let worker = std::thread::spawn(move || {
///     let channel = Channel::new(worker_in, worker_out.into(), Codec::MessagePack);
///     worker_core::run_evented(Squarer::new(())?, channel)
/// });
/// let mut master = Channel::new(&mut master_in, &mut master_out, Codec::MessagePack);
/// master.send_message(&7)?;
/// assert_eq!(master.receive_message::<String>()?, "7 squared is 49");
/// drop(master);
/// drop(master_out); // the master leaves: the worker finishes and `run_evented` returns
/// worker.join().unwrap()?;
/// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
/// ```
pub trait EventedWorker: Worker {
    /// What the master sends.
    type Message: DeserializeOwned;
    /// What the worker sends back.
    type Reply: Serialize;

    /// The chance to put the worker's own resources (timers, sockets, pipes of its own
    /// sub-workers) on the loop, before anything else happens.
    fn set_loop(&mut self, event_loop: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
        let _ = event_loop;
        Ok(())
    }

    /// Runs once the loop is set, before the first connection.
    fn initialize(&mut self) -> Result<(), BoxError> {
        Ok(())
    }

    /// A master connected (for a dedicated worker: the one master, over standard input and
    /// output).
    fn on_connect(
        &mut self,
        connection: &mut Connection<Self::Reply>,
        event_loop: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        let _ = (connection, event_loop);
        Ok(())
    }

    /// A message arrived on `connection`; replies go out with [`Connection::send`].
    fn on_message(
        &mut self,
        message: Self::Message,
        connection: &mut Connection<Self::Reply>,
        event_loop: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError>;

    /// A master is gone: it closed its end and every message it sent has been handled and
    /// every reply queued for it written (or it stopped reading, and they were dropped).
    fn on_disconnect(
        &mut self,
        connection: &mut Connection<Self::Reply>,
        event_loop: &mut WorkerLoop<Self>,
    ) -> Result<(), BoxError> {
        let _ = (connection, event_loop);
        Ok(())
    }

    /// The worker is ending: deregister and cancel what [`EventedWorker::set_loop`] put on the
    /// loop, since the runtime returns only once nothing is registered.
    fn terminate(&mut self, event_loop: &mut WorkerLoop<Self>) -> Result<(), BoxError> {
        let _ = event_loop;
        Ok(())
    }
}

/// Identifies a connection for the lifetime of its worker; never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// One master's channel as an evented worker sees it (the seed's `ChannelInterface`), sending
/// replies of type `R`.
pub struct Connection<R> {
    id: ConnectionId,
    peer_name: String,
    channel: NbChannel,
    source: SourceId,
    /// Changes the channel's interest, from wherever a send happens.
    rearm: Rearm,
    /// Whether the channel is watched for writability: only while bytes are queued, so a peer
    /// reading its replies wakes nobody up.
    write_interest: bool,
    /// [`Connection::close`] was called: no more frames are handed out, and the connection
    /// ends once its queue is written.
    closing: bool,
    /// Complete frames received from the peer, data and control.
    frames_received: u64,
    /// Why the host ended this connection, when it ended it for an error of its own.
    error: Option<Error>,
    /// In a shared host: schedules work on this connection from outside its callbacks (its
    /// end, after a send from a timer that failed; a watch on a queue at its bound).
    later: Option<Later>,
    /// A failure of its own in a shared host (a failed write, a peer that cannot keep up):
    /// it ends at once.
    doomed: bool,
    /// Whether its data frames reach the worker; until then they go to the host's
    /// [`DataGuard`] (see [`WorkerHost::set_data_guard`]).
    data_open: bool,
    /// Whether [`EventedWorker::on_connect`] ran for it: when it arrived, or, behind a
    /// [`DataGuard`], once it was opened for data. Only then does `on_disconnect` run for it.
    announced: bool,
    /// In a shared host, while its queue is at the bound: the timer that checks it progresses
    /// (`None` until the loop armed it).
    stall_watch: Option<Option<TimerId>>,
    /// Its frames are being handed out (the host arms what its callbacks ask for itself,
    /// without posting).
    serving: bool,
    reply: PhantomData<fn(&R)>,
}

/// What a connection asks its host's loop to do for it, from wherever it is.
#[derive(Clone, Copy, Debug)]
enum Deferred {
    /// Disconnect it.
    Drop,
    /// Watch that its queue, at the bound, makes progress.
    WatchStall,
}

/// Posts work on a connection to the host's loop.
type Later = Arc<dyn Fn(ConnectionId, Deferred) + Send + Sync>;

impl<R> fmt::Debug for Connection<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("peer_name", &self.peer_name)
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl<R: Serialize> Connection<R> {
    /// The connection's id.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// Who is on the other end: `master` for a dedicated worker, the peer's address for a
    /// socket.
    pub fn peer_name(&self) -> &str {
        &self.peer_name
    }

    /// Sends a reply, writing at once when nothing is queued (see [`NbChannel::send`] for the
    /// queue bound and what happens once the peer is gone).
    ///
    /// In a [shared](WorkerHost::shared) host a send never fails: a peer that cannot take it is
    /// dropped instead, and the message with it, and [`Connection::error`] says why. A peer is
    /// judged by whether it reads, never by the size of one frame: one whose queue stays at its
    /// bound with no byte taken for [`NbChannel::stall_timeout`] is dropped ([`Error::Stalled`]),
    /// and so is one that would have the bound plus one largest frame waiting
    /// ([`worker_channel::Error::QueueFull`]).
    pub fn send(&mut self, reply: &R) -> Result<(), Error> {
        if self.doomed {
            return Ok(());
        }
        let sent = self.channel.send(FrameKind::Data, reply);
        self.sent(sent)
    }

    /// Sends a payload already encoded (with this connection's codec for data frames, or with
    /// whatever the library's protocol says for control frames) as one frame of `kind`, with the
    /// same queue rules as [`Connection::send`].
    pub fn send_raw(&mut self, kind: FrameKind, payload: &[u8]) -> Result<(), Error> {
        if self.doomed {
            return Ok(());
        }
        let sent = self.channel.send_raw(kind, payload);
        self.sent(sent)
    }

    /// In a shared host, turns a queue at its bound (or a stream that failed) into the end of
    /// this connection rather than an error for the worker; then watches the channel for
    /// writability when the send left bytes queued.
    fn sent(&mut self, result: Result<(), Error>) -> Result<(), Error> {
        self.judge(result)?;
        if self.doomed {
            return Ok(());
        }
        match self.sync_write_interest() {
            Err(e) if self.later.is_some() => {
                self.fail(e);
                Ok(())
            }
            other => other,
        }
    }

    /// Watches the channel for writability exactly while bytes are queued for the peer (edge
    /// triggered: turning it on reports a socket that is writable already).
    fn sync_write_interest(&mut self) -> Result<(), Error> {
        let wanted = self.channel.queued_bytes() > 0 && !self.channel.is_write_closed();
        if wanted != self.write_interest {
            let interest = if wanted {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            self.rearm
                .reregister(&mut self.channel, interest)
                .map_err(|source| Error::Io {
                    op: "reregister",
                    source,
                })?;
            self.write_interest = wanted;
        }
        Ok(())
    }

    fn judge(&mut self, result: Result<(), Error>) -> Result<(), Error> {
        if self.later.is_none() {
            return result;
        }
        match result {
            Err(Error::Channel(
                e @ (worker_channel::Error::QueueFull { .. } | worker_channel::Error::Io(_)),
            )) => self.fail(Error::Channel(e)),
            Ok(()) if self.channel.is_backpressured() => {
                // What the socket takes now does not count against the bound.
                match self.channel.flush() {
                    Err(e) => self.fail(e),
                    Ok(_) if self.channel.is_backpressured() => self.watch_stall(),
                    Ok(_) => {}
                }
            }
            other => return other,
        }
        Ok(())
    }

    /// Has the host's loop watch that the peer takes bytes while its queue is at the bound
    /// (see [`WorkerHost::check_stall`]), unless it does already.
    fn watch_stall(&mut self) {
        if self.stall_watch.is_none() {
            self.stall_watch = Some(None);
            if let Some(later) = self.later.as_ref().filter(|_| !self.serving) {
                later(self.id, Deferred::WatchStall);
            }
        }
    }

    /// Marks the connection to be dropped at once, and makes sure someone does.
    fn fail(&mut self, error: Error) {
        if std::mem::replace(&mut self.doomed, true) {
            return;
        }
        self.error = Some(error);
        if let Some(later) = &self.later {
            later(self.id, Deferred::Drop);
        }
    }

    /// Decodes a payload with this connection's codec and depth limit (a control frame's, in a
    /// [`ControlHandler`]).
    pub fn decode<T: DeserializeOwned>(&self, payload: &[u8]) -> Result<T, Error> {
        Ok(self.channel.connection().decode(payload)?)
    }

    /// Sends a message of the library's own protocol as a control frame (a reply to what a
    /// [`ControlHandler`] received, say), encoded with the connection's codec, with the same
    /// queue rules as [`Connection::send`].
    pub fn send_control<T: Serialize + ?Sized>(&mut self, message: &T) -> Result<(), Error> {
        if self.doomed {
            return Ok(());
        }
        let sent = self.channel.send(FrameKind::Control, message);
        self.sent(sent)
    }

    /// Bytes queued for this peer and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.channel.queued_bytes()
    }

    /// Ends this connection on purpose once the current callback returns, leaving the others
    /// as they are.
    ///
    /// No frame received after this call reaches the worker. What is queued for the peer
    /// (a goodbye sent just before, say) is still written; then, as for a peer that left,
    /// [`EventedWorker::on_disconnect`] runs and the connection's descriptors close, so the
    /// peer sees the end of the stream. A peer that never reads what is queued keeps the
    /// connection until it does or goes; [`WorkerHost::disconnect`] ends one at once.
    ///
    /// This is for the connection's own callbacks (`on_message`, `on_connect`, a
    /// [`ControlHandler`]); from a timer or a posted closure, use [`WorkerHost::close`].
    pub fn close(&mut self) {
        self.closing = true;
    }

    /// Whether [`Connection::close`] was called.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Lets this connection's data frames reach the worker from now on, in a host with a
    /// [`DataGuard`] (a server's, once the peer authenticated); called from the
    /// [`ControlHandler`], after which the host runs [`EventedWorker::on_connect`].
    pub fn open_data(&mut self) {
        self.data_open = true;
    }

    /// Whether this connection's data frames reach the worker: always without a
    /// [`DataGuard`], and once [`Connection::open_data`] was called with one.
    pub fn is_data_open(&self) -> bool {
        self.data_open
    }

    /// How many complete frames (data and control) arrived from the peer so far: a server's
    /// handshake deadline drops a connection that sent none in time.
    pub fn frames_received(&self) -> u64 {
        self.frames_received
    }

    /// Why the host ended this connection, when it did so for an error of the connection's
    /// own (in a [shared](WorkerHost::shared) host: garbage, an oversized or cut frame, a
    /// message that does not decode, a queue at its bound); `None` while it is open, and for a
    /// peer that left or a connection ended on purpose.
    ///
    /// [`EventedWorker::on_disconnect`] and the [`DisconnectHandler`] can read it.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// The underlying channel, for frames of other kinds.
    pub fn channel_mut(&mut self) -> &mut NbChannel {
        &mut self.channel
    }
}

/// The connections of a worker, by id.
pub struct Connections<R> {
    map: HashMap<ConnectionId, Connection<R>>,
}

impl<R> fmt::Debug for Connections<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.map.values()).finish()
    }
}

impl<R> Connections<R> {
    /// A connection by id, if it is still connected.
    pub fn get(&self, id: ConnectionId) -> Option<&Connection<R>> {
        self.map.get(&id)
    }

    /// Every connection's id, in no particular order.
    pub fn ids(&self) -> Vec<ConnectionId> {
        self.map.keys().copied().collect()
    }

    /// A connection by id, if it is still connected, mutably.
    pub fn get_mut(&mut self, id: ConnectionId) -> Option<&mut Connection<R>> {
        self.map.get_mut(&id)
    }

    /// Every connection, in no particular order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Connection<R>> {
        self.map.values_mut()
    }

    /// How many connections there are.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// What a [`WorkerHost`] does with a control frame: the worker, the connection it came on, the
/// loop, and the frame's payload, still encoded with the connection's codec (decode it with
/// [`Connection::decode`]).
///
/// An error from it ends the host as a callback's would ([`Error::Handler`] naming
/// `control`); to refuse one peer only, [`Connection::close`] it instead.
pub type ControlHandler<W> = Box<
    dyn FnMut(
        &mut W,
        &mut Connection<<W as EventedWorker>::Reply>,
        &mut WorkerLoop<W>,
        &[u8],
    ) -> Result<(), BoxError>,
>;

/// What a [`WorkerHost`] runs when a connection ends, after
/// [`EventedWorker::on_disconnect`] and before the connection's descriptors close: the host's
/// own bookkeeping (a server forgets the connection's session), with
/// [`Connection::error`] telling why it ended.
///
/// An error from it ends the host as a callback's would ([`Error::Handler`] naming
/// `disconnect`).
pub type DisconnectHandler<W> = Box<
    dyn FnMut(
        &mut W,
        &mut Connection<<W as EventedWorker>::Reply>,
        &mut WorkerLoop<W>,
    ) -> Result<(), BoxError>,
>;

/// What a [`WorkerHost`] that isolates panics does when a callback run for a connection
/// panicked (`on_connect`, `on_message`, a [`ControlHandler`], `on_disconnect`): the
/// connection, the loop, and the panic as [`Error::Panicked`].
///
/// It runs before the connection closes: a last frame queued now (an error for the peer) is
/// written before the end of the stream. An error from it ends the host as a callback's would
/// ([`Error::Handler`] naming `panic`).
pub type PanicHandler<W> = Box<
    dyn FnMut(
        &mut Connection<<W as EventedWorker>::Reply>,
        &mut WorkerLoop<W>,
        &Error,
    ) -> Result<(), BoxError>,
>;

/// What a [`WorkerHost`] with a guard does with a data frame that reaches a connection not
/// yet [open for data](Connection::open_data): the connection and the loop. The frame is
/// dropped undecoded whatever the guard does; a server tells its peer why and
/// [closes](Connection::close) the connection.
///
/// An error from it ends the host as a callback's would ([`Error::Handler`] naming `guard`).
pub type DataGuard<W> = Box<
    dyn FnMut(
        &mut Connection<<W as EventedWorker>::Reply>,
        &mut WorkerLoop<W>,
    ) -> Result<(), BoxError>,
>;

/// A connection's failure, told from the worker's.
enum Fault {
    /// The connection broke the protocol, or its stream failed.
    Connection(Error),
    /// A callback or a handler failed.
    Host(Error),
    /// A callback run for the connection panicked, in a host that isolates panics.
    Panic(Error),
}

impl Fault {
    /// A callback's failure: a caught panic, or the end of the host.
    fn of_callback(error: Error) -> Self {
        match error {
            Error::Panicked { .. } => Fault::Panic(error),
            error => Fault::Host(error),
        }
    }
}

/// Calls a worker's callback named `name`, catching its panic when `catching`: a panic (or an
/// [`Error::Panicked`] the callback passed on, from a panic it caught itself) comes back as
/// [`Error::Panicked`], any other error as [`Error::Handler`].
fn call<T>(
    catching: bool,
    name: &'static str,
    f: impl FnOnce() -> Result<T, BoxError>,
) -> Result<T, Error> {
    let returned = if catching {
        crate::catch_panic(name, f)?
    } else {
        f()
    };
    returned.map_err(|e| match e.downcast::<Error>() {
        Ok(panicked) if matches!(*panicked, Error::Panicked { .. }) => *panicked,
        Ok(source) => Error::Handler {
            callback: name,
            source,
        },
        Err(source) => Error::Handler {
            callback: name,
            source,
        },
    })
}

/// An evented worker together with its connections: the state of its [`WorkerLoop`], which
/// every handler on that loop receives.
///
/// [`run_evented`] builds one for a dedicated worker; a shared-worker server builds one with
/// [`WorkerHost::shared`], registers its listener on the loop, hands each accepted stream to
/// [`WorkerHost::connect`], handles the control frames of its protocol (hello, query, stop)
/// with [`WorkerHost::set_control_handler`], learns that a connection ended with
/// [`WorkerHost::set_disconnect_handler`], isolates the worker's panics with
/// [`WorkerHost::set_panic_handler`], keeps data from peers that have not authenticated with
/// [`WorkerHost::set_data_guard`], and ends one connection on purpose with
/// [`Connection::close`], [`WorkerHost::close`], [`WorkerHost::finish`] or
/// [`WorkerHost::disconnect`].
pub struct WorkerHost<W: EventedWorker> {
    worker: W,
    connections: Connections<W::Reply>,
    control: Option<ControlHandler<W>>,
    on_disconnect: Option<DisconnectHandler<W>>,
    /// Isolates the worker's panics when set (see [`WorkerHost::set_panic_handler`]).
    on_panic: Option<PanicHandler<W>>,
    /// Keeps data frames from the worker until a connection is opened for them.
    data_guard: Option<DataGuard<W>>,
    /// A control frame's payload, copied out of its channel so the handler can take the
    /// connection mutably; reused.
    control_payload: Vec<u8>,
    next_id: u64,
    /// Terminate when the last connection goes (the dedicated worker's life is its master's).
    dedicated: bool,
    started: bool,
    terminated: bool,
}

impl<W: EventedWorker + fmt::Debug> fmt::Debug for WorkerHost<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerHost")
            .field("worker", &self.worker)
            .field("connections", &self.connections)
            .field("dedicated", &self.dedicated)
            .field("terminated", &self.terminated)
            .finish_non_exhaustive()
    }
}

fn callback(name: &'static str) -> impl FnOnce(BoxError) -> Error {
    move |source| Error::Handler {
        callback: name,
        source,
    }
}

impl<W: EventedWorker> WorkerHost<W> {
    /// A host that terminates the worker when its last connection goes, as a dedicated worker
    /// ends with its master.
    pub fn dedicated(worker: W) -> Self {
        Self::new(worker, true)
    }

    /// A host whose worker lives on without connections until [`WorkerHost::terminate`], as a
    /// shared worker does until it is stopped.
    ///
    /// Its connections are isolated from each other: what goes wrong with one peer ends that
    /// connection only, and the host serves the others on. That is garbage or a frame of a kind
    /// nobody handles, an oversized header, a frame cut by the end of the stream, a data
    /// message that does not decode, a failing read or write, and a peer that stopped reading
    /// (its queue at the bound, no byte taken for its [stall
    /// timeout](NbChannel::stall_timeout); nobody else waits for it meanwhile).
    /// [`EventedWorker::on_disconnect`] runs as for a peer that left, and
    /// [`Connection::error`] says why. (A dedicated host ends on such errors instead: its one
    /// master must hear of them.)
    pub fn shared(worker: W) -> Self {
        Self::new(worker, false)
    }

    fn new(worker: W, dedicated: bool) -> Self {
        WorkerHost {
            worker,
            connections: Connections {
                map: HashMap::new(),
            },
            control: None,
            on_disconnect: None,
            on_panic: None,
            data_guard: None,
            control_payload: Vec::new(),
            next_id: 0,
            dedicated,
            started: false,
            terminated: false,
        }
    }

    /// Hands every control frame that reaches a connection to `handler`, in arrival order
    /// with the data frames around it.
    ///
    /// Without a handler a control frame is a protocol error
    /// ([`worker_channel::Error::UnexpectedFrameKind`] in [`Error::Channel`]) that ends the
    /// host, as for a dedicated worker, whose master sends none.
    pub fn set_control_handler(&mut self, handler: ControlHandler<W>) {
        self.control = Some(handler);
    }

    /// Runs `handler` whenever a connection ends (see [`DisconnectHandler`]).
    pub fn set_disconnect_handler(&mut self, handler: DisconnectHandler<W>) {
        self.on_disconnect = Some(handler);
    }

    /// Isolates the worker's panics from now on: a panic of a callback run for a connection
    /// (`on_connect`, `on_message`, the [`ControlHandler`], `on_disconnect`) ends that
    /// connection only, after `handler` has had its say (see [`PanicHandler`]), with
    /// [`Connection::error`] saying [`Error::Panicked`]; a panic of `set_loop`, `initialize`
    /// or `terminate` is their error, [`Error::Panicked`]. Without it, a panic unwinds out of
    /// the host, as it does by default.
    ///
    /// The worker is left as the panicking callback left it: a change it was making may be
    /// half made. The loop's own handlers (the worker's timers and sources) are caught by
    /// [`EventLoop::set_panic_handler`](crate::EventLoop::set_panic_handler).
    pub fn set_panic_handler(&mut self, handler: PanicHandler<W>) {
        self.on_panic = Some(handler);
    }

    /// Keeps the data frames of every connection connected from now on away from the worker
    /// until the connection is [opened for them](Connection::open_data), handing each to
    /// `guard` instead (see [`DataGuard`]): how a server makes its peers authenticate first.
    /// Control frames go to the [`ControlHandler`] as before.
    ///
    /// The worker meets such a connection only once it is opened: its
    /// [`EventedWorker::on_connect`] runs then (right after the [`ControlHandler`] call that
    /// opened it), not when it arrives, and a connection never opened reaches neither
    /// `on_connect` nor `on_disconnect`.
    pub fn set_data_guard(&mut self, guard: DataGuard<W>) {
        self.data_guard = Some(guard);
    }

    fn catching(&self) -> bool {
        self.on_panic.is_some()
    }

    /// The connections, to count or look at them.
    pub fn connections(&self) -> &Connections<W::Reply> {
        &self.connections
    }

    /// The id the next [`WorkerHost::connect`] gives, for state kept beside a connection that
    /// must exist before its first frame is handled.
    pub fn next_connection_id(&self) -> ConnectionId {
        ConnectionId(self.next_id)
    }

    /// Whether [`WorkerHost::terminate`] ran.
    pub fn is_terminated(&self) -> bool {
        self.terminated
    }

    /// The worker.
    pub fn worker(&self) -> &W {
        &self.worker
    }

    /// The worker, mutably.
    pub fn worker_mut(&mut self) -> &mut W {
        &mut self.worker
    }

    /// The connections.
    pub fn connections_mut(&mut self) -> &mut Connections<W::Reply> {
        &mut self.connections
    }

    /// The worker and its connections at once, for a handler that replies from a timer.
    pub fn split_mut(&mut self) -> (&mut W, &mut Connections<W::Reply>) {
        (&mut self.worker, &mut self.connections)
    }

    /// Calls [`EventedWorker::set_loop`] then [`EventedWorker::initialize`]; only the first
    /// call does anything.
    pub fn start(&mut self, event_loop: &mut WorkerLoop<W>) -> Result<(), Error> {
        if std::mem::replace(&mut self.started, true) {
            return Ok(());
        }
        let catching = self.catching();
        call(catching, "set_loop", || self.worker.set_loop(event_loop))?;
        call(catching, "initialize", || self.worker.initialize())
    }

    /// Calls [`EventedWorker::terminate`]; only the first call does anything.
    pub fn terminate(&mut self, event_loop: &mut WorkerLoop<W>) -> Result<(), Error> {
        if std::mem::replace(&mut self.terminated, true) {
            return Ok(());
        }
        let catching = self.catching();
        call(catching, "terminate", || self.worker.terminate(event_loop))
    }

    /// Puts a channel on the loop as a new connection, calls [`EventedWorker::on_connect`],
    /// then handles whatever the channel already holds.
    pub fn connect(
        &mut self,
        event_loop: &mut WorkerLoop<W>,
        mut channel: NbChannel,
        peer_name: impl Into<String>,
    ) -> Result<ConnectionId, Error> {
        let id = ConnectionId(self.next_id);
        self.next_id += 1;
        // Writability matters only while bytes are queued: what is queued now (a hello) is
        // written by the drive below, which watches writability if the socket did not take it.
        let write_interest = false;
        let source = event_loop.register_ref(
            &mut channel,
            Interest::READABLE,
            move |host: &mut WorkerHost<W>, event_loop, ready| {
                host.drive(event_loop, id, ready).map_err(Into::into)
            },
        )?;
        let later = (!self.dedicated).then(|| {
            let handle = event_loop.handle();
            Arc::new(move |id, work| {
                // Only fails once the loop is gone, and the connection with it.
                let _ = handle.post(move |host: &mut WorkerHost<W>, event_loop| {
                    match work {
                        Deferred::Drop => drop(host.disconnect(event_loop, id)?),
                        Deferred::WatchStall => host.arm_stall_check(event_loop, id),
                    }
                    Ok(())
                });
            }) as Later
        });
        let rearm = match event_loop.rearm(source) {
            Ok(rearm) => rearm,
            Err(e) => {
                event_loop.deregister_ref(source, &mut channel);
                return Err(e);
            }
        };
        let mut connection = Connection {
            id,
            peer_name: peer_name.into(),
            channel,
            source,
            rearm,
            write_interest,
            closing: false,
            frames_received: 0,
            error: None,
            later,
            doomed: false,
            data_open: self.data_guard.is_none(),
            announced: false,
            stall_watch: None,
            serving: false,
            reply: PhantomData,
        };
        let catching = self.catching();
        let connected = if connection.data_open {
            connection.announced = true;
            call(catching, "on_connect", || {
                self.worker.on_connect(&mut connection, event_loop)
            })
        } else {
            Ok(())
        };
        self.connections.map.insert(id, connection);
        if let Err(e @ Error::Panicked { .. }) = connected {
            self.panicked(event_loop, id, e)?;
            return Ok(id);
        }
        connected?;
        // Bytes handed over in the decoder raise no event: handle them now.
        self.drive(event_loop, id, Readiness::default())?;
        Ok(id)
    }

    /// Handles one readiness event of a connection: write what is queued, then receive and
    /// dispatch every complete frame (unless the queue is at its bound, or the connection is
    /// closing), then disconnect if the conversation is over.
    ///
    /// In a shared host a failure of the connection itself ends that connection only.
    fn drive(
        &mut self,
        event_loop: &mut WorkerLoop<W>,
        id: ConnectionId,
        ready: Readiness,
    ) -> Result<(), Error> {
        match self.serve(event_loop, id, ready) {
            Ok(()) => Ok(()),
            Err(Fault::Host(e)) => Err(e),
            Err(Fault::Connection(e)) if !self.dedicated => {
                if let Some(connection) = self.connections.map.get_mut(&id) {
                    connection.error = Some(e);
                }
                self.disconnect(event_loop, id).map(drop)
            }
            Err(Fault::Connection(e)) => Err(e),
            Err(Fault::Panic(e)) => self.panicked(event_loop, id, e),
        }
    }

    /// A callback run for connection `id` panicked: the panic handler has its say, then the
    /// connection closes once what is queued for it is written.
    fn panicked(
        &mut self,
        event_loop: &mut WorkerLoop<W>,
        id: ConnectionId,
        error: Error,
    ) -> Result<(), Error> {
        let Some(connection) = self.connections.map.get_mut(&id) else {
            return Ok(());
        };
        tell_panic(&mut self.on_panic, connection, event_loop, error)?;
        self.close(event_loop, id).map(drop)
    }

    fn serve(
        &mut self,
        event_loop: &mut WorkerLoop<W>,
        id: ConnectionId,
        ready: Readiness,
    ) -> Result<(), Fault> {
        let Some(connection) = self.connections.map.get_mut(&id) else {
            return Ok(());
        };
        connection.channel.note_readiness(ready);
        // Room first, when the queue holds back the reading; otherwise what the callbacks add
        // joins what waits, and one write below carries it all (a shared server's hello and
        // its first reply, say).
        if connection.channel.is_backpressured() {
            connection.channel.flush().map_err(Fault::Connection)?;
        }
        connection.serving = true;
        let served = self.dispatch(event_loop, id);
        let Some(connection) = self.connections.map.get_mut(&id) else {
            return served;
        };
        connection.serving = false;
        served?;
        connection.channel.flush().map_err(Fault::Connection)?;
        // A reply its callbacks sent left the queue at its bound: watch that the peer reads.
        let watch = matches!(connection.stall_watch, Some(None));
        if connection.doomed {
            return self
                .disconnect(event_loop, id)
                .map(drop)
                .map_err(Fault::Host);
        }
        let channel = &mut connection.channel;
        let finished = channel.is_finished()
            || (connection.closing && channel.flush().map_err(Fault::Connection)?);
        if finished {
            self.disconnect(event_loop, id).map_err(Fault::Host)?;
        } else {
            // Replies the peer did not take yet need a writable event; a drained queue none.
            connection
                .sync_write_interest()
                .map_err(Fault::Connection)?;
            if watch {
                self.arm_stall_check(event_loop, id);
            }
        }
        Ok(())
    }

    /// Hands every complete frame connection `id` received to the worker (or the control
    /// handler), until none is left, the queue is at its bound, or the connection ends.
    fn dispatch(&mut self, event_loop: &mut WorkerLoop<W>, id: ConnectionId) -> Result<(), Fault> {
        let catching = self.catching();
        let Some(connection) = self.connections.map.get_mut(&id) else {
            return Ok(());
        };
        // Once the peer is gone for writing, nobody is left to reply to.
        while !connection.closing && !connection.doomed && !connection.channel.is_write_closed() {
            let channel = &mut connection.channel;
            let (codec, max_depth) = (channel.codec(), channel.connection().max_depth());
            let message = match channel.receive().map_err(Fault::Connection)? {
                Some(frame) if frame.kind == FrameKind::Data && !connection.data_open => {
                    connection.frames_received += 1;
                    if let Some(guard) = self.data_guard.as_mut() {
                        guard(connection, event_loop)
                            .map_err(|e| Fault::Host(callback("guard")(e)))?;
                    }
                    continue;
                }
                Some(frame) if frame.kind == FrameKind::Data => codec
                    .decode_with_max_depth::<W::Message>(frame.payload, max_depth)
                    .map_err(|e| Fault::Connection(e.into()))?,
                Some(frame) => {
                    let Some(control) = self.control.as_mut() else {
                        return Err(Fault::Connection(Error::Channel(
                            worker_channel::Error::UnexpectedFrameKind { kind: frame.kind },
                        )));
                    };
                    self.control_payload.clear();
                    self.control_payload.extend_from_slice(frame.payload);
                    connection.frames_received += 1;
                    let (worker, payload) = (&mut self.worker, &self.control_payload);
                    call(catching, "control", || {
                        control(worker, connection, event_loop, payload)
                    })
                    .map_err(Fault::of_callback)?;
                    if connection.data_open && !connection.announced {
                        connection.announced = true;
                        call(catching, "on_connect", || {
                            worker.on_connect(connection, event_loop)
                        })
                        .map_err(Fault::of_callback)?;
                    }
                    continue;
                }
                None => break,
            };
            connection.frames_received += 1;
            let worker = &mut self.worker;
            call(catching, "on_message", || {
                worker.on_message(message, connection, event_loop)
            })
            .map_err(Fault::of_callback)?;
        }
        Ok(())
    }

    /// Ends connection `id` gracefully once it has had its say: every complete frame its peer
    /// already sent (read until the socket would block) is handled as usual, then the
    /// connection closes as [`WorkerHost::close`] does, after what is queued for the peer is
    /// written.
    ///
    /// This is how a server that stops answers the requests already in flight. Returns
    /// `Ok(false)` for a connection that is already gone.
    pub fn finish(
        &mut self,
        event_loop: &mut WorkerLoop<W>,
        id: ConnectionId,
    ) -> Result<bool, Error> {
        self.finish_with(event_loop, id, None)
    }

    /// As [`finish`](Self::finish), sending `last` (a frame's kind and payload, with the queue
    /// rules of [`Connection::send_raw`]) after the replies to what was read, as the last frame
    /// the peer gets: a server's notice that it is stopping, say.
    pub fn finish_with(
        &mut self,
        event_loop: &mut WorkerLoop<W>,
        id: ConnectionId,
        last: Option<(FrameKind, &[u8])>,
    ) -> Result<bool, Error> {
        let Some(connection) = self.connections.map.get_mut(&id) else {
            return Ok(false);
        };
        // Read even without a readiness event: bytes may wait that no event will announce
        // again.
        connection.channel.note_readiness(Readiness {
            readable: true,
            ..Readiness::default()
        });
        self.drive(event_loop, id, Readiness::default())?;
        if let (Some((kind, payload)), Some(connection)) = (last, self.connections.map.get_mut(&id))
        {
            if !connection.closing {
                connection.send_raw(kind, payload)?;
            }
        }
        self.close(event_loop, id)
    }

    /// Ends connection `id` gracefully, as [`Connection::close`] does, from outside its own
    /// callbacks (a timer, a posted closure): what is queued for the peer is written first.
    ///
    /// Returns `Ok(false)` for a connection that is already gone.
    pub fn close(
        &mut self,
        event_loop: &mut WorkerLoop<W>,
        id: ConnectionId,
    ) -> Result<bool, Error> {
        let Some(connection) = self.connections.map.get_mut(&id) else {
            return Ok(false);
        };
        connection.closing = true;
        // Nothing else may wake this connection up: see now whether its queue is written.
        self.drive(event_loop, id, Readiness::default())?;
        Ok(true)
    }

    /// Ends connection `id` at once, leaving the others as they are: as for a peer that left,
    /// [`EventedWorker::on_disconnect`] runs, then the connection leaves the loop and its
    /// descriptors close (what was still queued for the peer is dropped); for a dedicated
    /// worker whose last connection this was, [`EventedWorker::terminate`] follows.
    ///
    /// Returns `Ok(false)` for a connection that is already gone. A timer or a posted closure
    /// can call this; a callback of the connection itself uses [`Connection::close`].
    pub fn disconnect(
        &mut self,
        event_loop: &mut WorkerLoop<W>,
        id: ConnectionId,
    ) -> Result<bool, Error> {
        let Some(mut connection) = self.connections.map.remove(&id) else {
            return Ok(false);
        };
        if let Some(Some(timer)) = connection.stall_watch.take() {
            event_loop.cancel_timer(timer);
        }
        let catching = self.catching();
        let disconnected = if connection.announced {
            call(catching, "on_disconnect", || {
                self.worker.on_disconnect(&mut connection, event_loop)
            })
        } else {
            Ok(())
        };
        let result = match disconnected {
            // The connection ends anyway; the panic is told, and is its error.
            Err(e @ Error::Panicked { .. }) => {
                tell_panic(&mut self.on_panic, &mut connection, event_loop, e)
            }
            other => other,
        };
        let handled = match self.on_disconnect.as_mut() {
            Some(handler) => handler(&mut self.worker, &mut connection, event_loop)
                .map_err(callback("disconnect")),
            None => Ok(()),
        };
        // Out of the poller while the descriptors are still open; they close when `connection`
        // drops.
        event_loop.deregister_ref(connection.source, &mut connection.channel);
        drop(connection);
        result?;
        handled?;
        if self.dedicated && self.connections.is_empty() {
            self.terminate(event_loop)?;
        }
        Ok(true)
    }
}

impl<W: EventedWorker> WorkerHost<W> {
    /// Arms the check that connection `id`, whose queue is at its bound, takes bytes within
    /// its stall timeout.
    fn arm_stall_check(&mut self, event_loop: &mut WorkerLoop<W>, id: ConnectionId) {
        let Some(connection) = self.connections.map.get_mut(&id) else {
            return;
        };
        // Armed already, or no longer wanted.
        if !matches!(connection.stall_watch, Some(None)) {
            return;
        }
        let mark = connection.channel.written_bytes();
        let timer = event_loop.add_timer(connection.channel.stall_timeout(), move |host, el| {
            host.check_stall(el, id, mark)
        });
        connection.stall_watch = Some(Some(timer));
    }

    /// A stall timer fired: a peer whose queue is still at its bound and took no byte since
    /// `mark` stopped reading, and is dropped; one that took some is watched on; one whose
    /// queue drained below the bound is no longer watched.
    fn check_stall(
        &mut self,
        event_loop: &mut WorkerLoop<W>,
        id: ConnectionId,
        mark: u64,
    ) -> Result<(), BoxError> {
        let Some(connection) = self.connections.map.get_mut(&id) else {
            return Ok(());
        };
        connection.stall_watch = None;
        // The peer may have read since the last event: what the socket takes now counts.
        if let Err(e) = connection.channel.flush() {
            connection.error = Some(e);
            self.disconnect(event_loop, id)?;
            return Ok(());
        }
        if !connection.channel.is_backpressured() {
            return Ok(());
        }
        if connection.channel.written_bytes() != mark {
            connection.stall_watch = Some(None);
            self.arm_stall_check(event_loop, id);
            return Ok(());
        }
        connection.error = Some(Error::Stalled {
            queued: connection.channel.queued_bytes(),
            waited: connection.channel.stall_timeout(),
        });
        self.disconnect(event_loop, id)?;
        Ok(())
    }
}

/// Serves one [`EventedWorker`] over the channel to its master, until the master is gone and
/// nothing remains on the loop.
///
/// `channel` is what the bootstrap code received on: the files of
/// [`take_stdio_channel`](crate::take_stdio_channel) in a blocking
/// [`Channel`](worker_channel::Channel), whose codec and maximum frame length are kept, as are
/// the bytes its decoder already holds (frames the bootstrap read ahead are handled first).
///
/// The callbacks run in the order [`EventedWorker`] documents. When the master closes its end
/// the worker handles every complete frame it received, writes every reply it queued (the
/// master may still be reading), then calls `on_disconnect` and `terminate`; `run_evented`
/// returns once the worker has taken everything off the loop. The loop spins as the channel's
/// latency mode says ([`FramedConnection::spin`](worker_channel::FramedConnection::spin),
/// set by the bootstrap from the master's profile; see [`EventLoop::set_spin`]). A master that dies takes the
/// same path: its end of the pipe closes as its process ends, and replies it can no longer
/// read are dropped. A frame cut short by the end of stream is an error
/// ([`worker_channel::Error::Truncated`] in [`Error::Channel`]), and so is a
/// callback's error ([`Error::Handler`]); the runtime ends at once then, without
/// `terminate`. The returned error is always an [`Error`].
pub fn run_evented<W: EventedWorker>(worker: W, channel: WorkerChannel) -> Result<(), BoxError> {
    let spin = channel.connection().spin();
    let channel = NbChannel::from_channel(channel).map_err(|source| Error::Io {
        op: "set up channel",
        source,
    })?;
    let mut event_loop = WorkerLoop::<W>::new()?;
    event_loop.set_spin(spin);
    let mut host = WorkerHost::dedicated(worker);
    host.start(&mut event_loop)?;
    host.connect(&mut event_loop, channel, "master")?;
    event_loop.run(&mut host)?;
    Ok(())
}

/// Hands a panic of a connection's callback to the panic handler, then keeps it as the
/// connection's error.
fn tell_panic<W: EventedWorker>(
    on_panic: &mut Option<PanicHandler<W>>,
    connection: &mut Connection<W::Reply>,
    event_loop: &mut WorkerLoop<W>,
    error: Error,
) -> Result<(), Error> {
    let told = match on_panic.as_mut() {
        Some(handler) => handler(connection, event_loop, &error).map_err(callback("panic")),
        None => Ok(()),
    };
    connection.error.get_or_insert(error);
    told
}
