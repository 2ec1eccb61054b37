//! What a shared-worker server is told: its cookie, codec, socket options and limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use worker_channel::{Codec, DEFAULT_MAX_FRAME_LEN, Spin};

use crate::{AdminCookie, Error};

/// Which Unix peers a server accepts, by the user id the kernel recorded when they connected
/// (`SO_PEERCRED`); and which servers a client trusts
/// ([`SharedWorker::connect_trusting`](crate::SharedWorker::connect_trusting)), by the user id
/// recorded when they listened. TCP peers have no user id: this does not apply to them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PeerUids {
    /// For a server, only processes running as its own effective user; for a client, servers
    /// running as its own effective user or as root (who could impersonate anyone anyway).
    /// The default.
    #[default]
    Owner,
    /// Anyone who can open the socket file (its mode decides who can).
    Any,
    /// Only these users.
    Only(Vec<u32>),
}

/// What a server does when a callback of its worker panics (`on_connect`, `on_message`,
/// `on_query`, `on_disconnect`, `on_stop`, `terminate`, a timer or a source of the worker's).
///
/// Either way the panic is caught: the connection it was serving (if any) gets a typed error
/// ([`Error::WorkerFailed`] for the client) and closes once what was queued for it before is
/// written, never in the middle of a frame; the panic's message is logged; the process's panic
/// hook still runs (by default a line on standard error).
///
/// After a caught panic the worker is in whatever state the panicking callback left it: a
/// change it was making may be half made, and nothing is rolled back. A worker whose state
/// cannot be trusted after that should choose [`PanicPolicy::Stop`] (its `on_stop` and
/// `terminate` still run, on that same state, and may panic too: they are caught and
/// reported). A panic in `on_stop` does not stop the stop; a panic in `terminate`, `set_loop`
/// or `initialize` ends the server with [`Error::Serve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PanicPolicy {
    /// The default (10 panics within 60 s): the other clients go on being served; once
    /// `max_panics` panics happened within `within`, the server stops gracefully, as
    /// [`PanicPolicy::Stop`] does at once.
    Isolate {
        /// How many panics within `within` stop the server; 1 to 65536.
        max_panics: u32,
        /// The window they are counted in (`Duration::MAX`: since the start).
        #[serde(with = "millis")]
        within: Duration,
    },
    /// Stop gracefully at the first panic: stop accepting, `on_stop`, answer what the others
    /// already sent, deliver every queued reply, close every connection, `terminate`. The run
    /// then returns [`Error::Serve`] with the panic.
    Stop,
}

/// The most panics [`PanicPolicy::Isolate`] may count.
const MAX_PANICS: u32 = 65536;

impl Default for PanicPolicy {
    fn default() -> Self {
        PanicPolicy::Isolate {
            max_panics: 10,
            within: Duration::from_secs(60),
        }
    }
}

/// When a connection must prove it knows the client cookie (or the admin cookie) before the
/// server takes a data message or a query from it.
///
/// An unauthenticated peer of a server that does not require it can send the worker any data
/// message and read its replies, and ask for its public status; only stopping it and the
/// privileged status need the admin cookie.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClientAuth {
    /// Required on a TCP listener whose address is not a loopback one (`0.0.0.0`, `[::]` and
    /// every routable address included); not on a Unix socket (its mode and the peer's uid
    /// decide who connects) nor on `127.0.0.0/8` or `[::1]`. The default.
    #[default]
    NonLoopback,
    /// Required on every listener.
    Always,
    /// Never required: anyone who can connect can send data messages.
    Never,
}

/// How a shared-worker server behaves: the admin cookie, the data codec, the Unix socket's
/// mode and who may connect, the limits, and the deadlines.
///
/// Every setting has a default, so `SharedServerConfig::default()` serves MessagePack with no
/// cookie (nobody can stop it through its socket), a socket file of mode `0600` for its own
/// user only, at most 4096 connections with 1 MiB of replies queued each, and a 30 s handshake
/// deadline.
///
/// It is serializable: a daemon receives it through its private start pipe (see
/// [`daemon_extensions`](crate::daemon_extensions)). The cookie serializes as its bytes, so keep
/// a serialized configuration as secret as the cookie; `Debug` shows it redacted.
///
/// ```
/// use std::time::Duration;
/// use worker_shared::{AdminCookie, PeerUids, SharedServerConfig};
///
/// let config = SharedServerConfig::default()
///     .with_cookie(AdminCookie::new("change me in your app")?)
///     .with_socket_mode(0o660)
///     .with_peer_uids(PeerUids::Any)
///     .with_max_connections(100)
///     .with_idle_timeout(Some(Duration::from_secs(600)));
/// assert_eq!(config.socket_mode(), 0o660);
/// assert!(format!("{config:?}").contains("<redacted>"));
/// # Ok::<(), worker_shared::Error>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct SharedServerConfig {
    #[serde(with = "cookie_bytes")]
    cookie: Option<AdminCookie>,
    #[serde(with = "cookie_bytes")]
    client_cookie: Option<AdminCookie>,
    client_auth: ClientAuth,
    codec: Codec,
    max_frame_len: u32,
    socket_mode: u32,
    peer_uids: PeerUids,
    backlog: u32,
    max_connections: usize,
    max_queued: usize,
    #[serde(with = "millis")]
    stall_timeout: Duration,
    #[serde(with = "millis_opt")]
    handshake_timeout: Option<Duration>,
    #[serde(with = "millis")]
    drain_timeout: Duration,
    #[serde(with = "millis_opt")]
    idle_timeout: Option<Duration>,
    #[serde(with = "millis_opt")]
    connection_idle_timeout: Option<Duration>,
    panic_policy: PanicPolicy,
    socket_activation: bool,
    stop_on_signals: bool,
    spin: Spin,
}

impl Default for SharedServerConfig {
    fn default() -> Self {
        SharedServerConfig {
            cookie: None,
            client_cookie: None,
            client_auth: ClientAuth::NonLoopback,
            codec: Codec::MessagePack,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            socket_mode: 0o600,
            peer_uids: PeerUids::Owner,
            backlog: 1024,
            max_connections: 4096,
            max_queued: 1024 * 1024,
            stall_timeout: worker_core::DEFAULT_STALL_TIMEOUT,
            handshake_timeout: Some(Duration::from_secs(30)),
            drain_timeout: Duration::from_secs(10),
            idle_timeout: None,
            connection_idle_timeout: None,
            panic_policy: PanicPolicy::default(),
            socket_activation: true,
            stop_on_signals: false,
            spin: Spin::OFF,
        }
    }
}

impl SharedServerConfig {
    /// The default configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// The admin cookie that stopping and the privileged query need; without one, neither is
    /// possible through the socket.
    pub fn with_cookie(mut self, cookie: AdminCookie) -> Self {
        self.cookie = Some(cookie);
        self
    }

    /// The codec of data messages (MessagePack by default); control frames are always
    /// MessagePack. A daemon takes its profile's codec instead.
    pub fn with_codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// The largest payload either side sends (16 MiB by default); a peer announcing more
    /// is dropped. A daemon takes its profile's instead.
    pub fn with_max_frame_len(mut self, max_frame_len: u32) -> Self {
        self.max_frame_len = max_frame_len;
        self
    }

    /// The permission bits of the Unix socket file (`0600` by default): the file is never
    /// created more open than this, whatever the umask.
    pub fn with_socket_mode(mut self, mode: u32) -> Self {
        self.socket_mode = mode;
        self
    }

    /// Which Unix peers are accepted ([`PeerUids::Owner`] by default).
    pub fn with_peer_uids(mut self, uids: PeerUids) -> Self {
        self.peer_uids = uids;
        self
    }

    /// How many connections may wait to be accepted (the `listen(2)` backlog; 1024 by default).
    pub fn with_backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }

    /// How many connections are served at once (4096 by default); one more is accepted and
    /// closed at once, before any hello, so its client sees the end of the stream.
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// How many bytes of replies may wait for one client before the server reads nothing more
    /// from it (1 MiB by default): a client that sends faster than it reads is slowed down.
    ///
    /// The bound never cuts a reply: any one reply up to the frame limit is queued whole,
    /// whatever the bound, and a client that reads gets it. A client whose queue stays at the
    /// bound and takes no byte for the [stall timeout](Self::with_stall_timeout) stopped
    /// reading and is dropped, and so is one that would have the bound plus one largest frame
    /// waiting (its worker sends more than it reads); nobody else waits for it.
    pub fn with_max_queued(mut self, max: usize) -> Self {
        self.max_queued = max;
        self
    }

    /// How long a client whose queue is at the [bound](Self::with_max_queued) may take no byte
    /// of its replies before it is dropped as one that stopped reading (30 s by default;
    /// `Duration::MAX`: never).
    pub fn with_stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// How long a new connection may stay silent (no complete frame) before it is dropped
    /// (30 s by default; `None`: for ever). A client's first message, query or authentication
    /// counts. Where [client authentication](Self::with_client_auth) is required, it is also
    /// how long a connection has to authenticate: one that has not by then is closed.
    pub fn with_handshake_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How long a stopping server waits for its clients to take the replies already queued
    /// before it closes the remaining connections (10 s by default).
    pub fn with_drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Stops the server gracefully once it has had no connection for this long (`None`, the
    /// default: never).
    pub fn with_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How long one connection may stay idle, neither sending a frame nor having replies queued
    /// for it, before the server closes it (`None`, the default: as long as it likes). Its
    /// client reads a [`Error::Rejected`] with the code `idle_timeout`, then the end of the
    /// stream.
    ///
    /// A client that only listens for what the worker pushes must send something within the
    /// timeout (a [`query`](crate::SharedWorker::query) will do). Connections are looked at
    /// every quarter of the timeout (at least every 10 ms), so one is closed between the
    /// timeout and a quarter more; `Duration::MAX` is the same as `None`, and zero is an
    /// [`Error::Config`].
    pub fn with_connection_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connection_idle_timeout = timeout;
        self
    }

    /// What the server does when a callback of its worker panics (see [`PanicPolicy`]; by
    /// default it isolates the panic, and stops after 10 within 60 s).
    pub fn with_panic_policy(mut self, policy: PanicPolicy) -> Self {
        self.panic_policy = policy;
        self
    }

    /// The client cookie: the secret a connection proves it knows (as it proves the admin
    /// cookie, by HMAC challenge-response, see [`protocol`](crate::protocol)) to send data
    /// messages where [client authentication](Self::with_client_auth) is required. It may
    /// differ from the admin cookie, which authenticates a client too, with its privileges.
    pub fn with_client_cookie(mut self, cookie: AdminCookie) -> Self {
        self.client_cookie = Some(cookie);
        self
    }

    /// Where a connection must authenticate before any data message or query is accepted
    /// (see [`ClientAuth`]; by default on a TCP address that is not loopback).
    ///
    /// A server that requires it without a client cookie nor an admin cookie could serve
    /// nobody: binding it is an [`Error::Config`].
    pub fn with_client_auth(mut self, when: ClientAuth) -> Self {
        self.client_auth = when;
        self
    }

    /// Whether [`SharedServer::bind`](crate::SharedServer::bind) serves on the listener systemd
    /// hands over (`LISTEN_PID`, `LISTEN_FDS`) instead of binding (`true` by default).
    pub fn with_socket_activation(mut self, enabled: bool) -> Self {
        self.socket_activation = enabled;
        self
    }

    /// Whether the server takes its process's signals (`false` by default, as a program that
    /// embeds a server owns its signals; a daemon always does): SIGTERM and SIGINT then stop
    /// it gracefully, and SIGHUP is logged and ignored, so a daemon outlives the terminal or
    /// the session that started it (there is no reload: a shared worker's settings come with
    /// its start).
    ///
    /// Without it the server touches no signal: SIGHUP keeps whatever action the host program
    /// gave it (by default it ends the process, server and all, as it ends any program).
    ///
    /// The signals are taken when the server is bound, and given back when it is dropped or
    /// its run ends; one server per process at a time may take them, a second one fails to
    /// bind with [`Error::Signals`].
    pub fn with_stop_on_signals(mut self, enabled: bool) -> Self {
        self.stop_on_signals = enabled;
        self
    }

    /// The latency mode of the server's event loop (see [`Spin`]): a wait that finds no event
    /// looks again without blocking for up to `budget` before it sleeps, so a client in full
    /// conversation is answered without a wake-up. Zero (the default) is off; budgets over
    /// [`Spin::MAX_BUDGET`] are cut to it. The server spends at most one budget of CPU per
    /// wait that finds nothing, so an idle server sleeps one budget after its last event.
    ///
    /// A daemon started by [`start`](crate::start) or [`connect_or_start`](crate::connect_or_start)
    /// without one takes its profile's ([`BootstrapProfile::with_spin`](worker_bootstrap::BootstrapProfile::with_spin)).
    /// The client's side is [`SharedWorker::set_spin`](crate::SharedWorker::set_spin).
    pub fn with_spin(mut self, budget: Duration) -> Self {
        self.spin = Spin::new(budget);
        self
    }

    /// The latency mode of the server's event loop.
    pub fn spin(&self) -> Spin {
        self.spin
    }

    /// The admin cookie, if any.
    pub fn cookie(&self) -> Option<&AdminCookie> {
        self.cookie.as_ref()
    }

    /// The codec of data messages.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The largest payload either side sends.
    pub fn max_frame_len(&self) -> u32 {
        self.max_frame_len
    }

    /// The permission bits of the Unix socket file.
    pub fn socket_mode(&self) -> u32 {
        self.socket_mode
    }

    /// Which Unix peers are accepted.
    pub fn peer_uids(&self) -> &PeerUids {
        &self.peer_uids
    }

    /// The `listen(2)` backlog.
    pub fn backlog(&self) -> u32 {
        self.backlog
    }

    /// How many connections are served at once.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// How many bytes of replies may wait for one client.
    pub fn max_queued(&self) -> usize {
        self.max_queued
    }

    /// How long a client at the queue's bound may take nothing.
    pub fn stall_timeout(&self) -> Duration {
        self.stall_timeout
    }

    /// How long a new connection may stay silent.
    pub fn handshake_timeout(&self) -> Option<Duration> {
        self.handshake_timeout
    }

    /// How long a stopping server waits for its clients.
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// How long the server may have no connection before it stops itself.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// How long one connection may stay idle before it is closed.
    pub fn connection_idle_timeout(&self) -> Option<Duration> {
        self.connection_idle_timeout
    }

    /// What the server does when a callback of its worker panics.
    pub fn panic_policy(&self) -> PanicPolicy {
        self.panic_policy
    }

    /// The client cookie, if any.
    pub fn client_cookie(&self) -> Option<&AdminCookie> {
        self.client_cookie.as_ref()
    }

    /// Where client authentication is required.
    pub fn client_auth(&self) -> ClientAuth {
        self.client_auth
    }

    /// Whether socket activation is honoured.
    pub fn socket_activation(&self) -> bool {
        self.socket_activation
    }

    /// Whether SIGTERM and SIGINT stop the server (and SIGHUP is ignored).
    pub fn stop_on_signals(&self) -> bool {
        self.stop_on_signals
    }

    /// Refuses settings that cannot work.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let bad = |what, why: &str| {
            Err(Error::Config {
                what,
                why: why.to_owned(),
            })
        };
        if self.socket_mode & !0o777 != 0 {
            return bad("socket_mode", "has bits beyond 0o777");
        }
        if self.socket_mode & 0o600 != 0o600 {
            return bad(
                "socket_mode",
                "must let the owner read and write (0o600), or the server's own user could not \
                 connect",
            );
        }
        if self.max_connections == 0 {
            return bad("max_connections", "is zero: nobody could connect");
        }
        if self.max_queued == 0 {
            return bad("max_queued", "is zero: no reply could be queued");
        }
        if self.stall_timeout.is_zero() {
            return bad(
                "stall_timeout",
                "is zero: a client would be dropped the moment its replies filled the queue",
            );
        }
        if self.max_frame_len == 0 {
            return bad("max_frame_len", "is zero: no message could cross");
        }
        if self.backlog == 0 || self.backlog > i32::MAX as u32 {
            return bad("backlog", "is not between 1 and 2^31 - 1");
        }
        if let PanicPolicy::Isolate { max_panics, .. } = self.panic_policy {
            if max_panics == 0 {
                return bad(
                    "panic_policy",
                    "isolates at most 0 panics: say PanicPolicy::Stop to stop at the first",
                );
            }
            // Each panic of the window is remembered until it leaves the window.
            if max_panics > MAX_PANICS {
                return bad("panic_policy", "counts more than 65536 panics");
            }
        }
        if self.connection_idle_timeout == Some(Duration::ZERO) {
            return bad(
                "connection_idle_timeout",
                "is zero: every connection would be closed as soon as it is looked at",
            );
        }
        Ok(())
    }
}

/// The cookie as its bytes: it travels only in a daemon's private start pipe.
mod cookie_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_bytes::ByteBuf;

    use crate::AdminCookie;

    pub(super) fn serialize<S: Serializer>(
        cookie: &Option<AdminCookie>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        cookie
            .as_ref()
            .map(|c| serde_bytes::Bytes::new(c.expose()))
            .serialize(serializer)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<AdminCookie>, D::Error> {
        Option::<ByteBuf>::deserialize(deserializer)?
            .map(|bytes| AdminCookie::new(bytes.into_vec()).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// A duration as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// An optional duration as whole milliseconds.
mod millis_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(d).map(|d| d.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_round_trips_with_its_cookie() {
        let config = SharedServerConfig::default()
            .with_cookie(AdminCookie::new("s3cret").unwrap())
            .with_codec(Codec::Json)
            .with_peer_uids(PeerUids::Only(vec![0, 1000]))
            .with_handshake_timeout(None)
            .with_idle_timeout(Some(Duration::from_millis(1500)))
            .with_spin(Duration::from_micros(150))
            .with_client_cookie(AdminCookie::new("for clients").unwrap())
            .with_client_auth(ClientAuth::Always)
            .with_connection_idle_timeout(Some(Duration::from_secs(90)))
            .with_panic_policy(PanicPolicy::Isolate {
                max_panics: 3,
                within: Duration::from_secs(5),
            });
        let bytes = Codec::MessagePack.encode(&config).unwrap();
        let back: SharedServerConfig = Codec::MessagePack.decode(&bytes).unwrap();
        assert_eq!(back.cookie().unwrap().expose(), b"s3cret");
        assert_eq!(back.codec(), Codec::Json);
        assert_eq!(back.peer_uids(), &PeerUids::Only(vec![0, 1000]));
        assert_eq!(back.handshake_timeout(), None);
        assert_eq!(back.idle_timeout(), Some(Duration::from_millis(1500)));
        assert_eq!(back.drain_timeout(), Duration::from_secs(10));
        assert_eq!(back.spin(), Spin::from_micros(150));
        assert_eq!(back.client_cookie().unwrap().expose(), b"for clients");
        assert_eq!(back.client_auth(), ClientAuth::Always);
        assert_eq!(
            back.connection_idle_timeout(),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            back.panic_policy(),
            PanicPolicy::Isolate {
                max_panics: 3,
                within: Duration::from_secs(5)
            }
        );
        // A configuration from before these settings reads with their defaults.
        let old: SharedServerConfig = Codec::Json.decode(br#"{"codec":"json"}"#).unwrap();
        assert_eq!(old.client_auth(), ClientAuth::NonLoopback);
        assert_eq!(old.panic_policy(), PanicPolicy::default());
        assert!(old.client_cookie().is_none());
        assert_eq!(old.connection_idle_timeout(), None);
    }

    #[test]
    fn missing_keys_take_their_defaults() {
        let back: SharedServerConfig = Codec::Json.decode(b"{}").unwrap();
        assert!(back.cookie().is_none());
        assert_eq!(back.socket_mode(), 0o600);
        assert_eq!(back.max_connections(), 4096);
        assert!(back.spin().is_off());
        // Duration::MAX is not "spin for ever".
        let capped = SharedServerConfig::default().with_spin(Duration::MAX);
        assert_eq!(capped.spin().budget(), Spin::MAX_BUDGET);
    }

    #[test]
    fn impossible_settings_are_refused() {
        for (config, setting) in [
            (
                SharedServerConfig::default().with_socket_mode(0o1600),
                "socket_mode",
            ),
            (
                SharedServerConfig::default().with_socket_mode(0o066),
                "socket_mode",
            ),
            (
                SharedServerConfig::default().with_max_connections(0),
                "max_connections",
            ),
            (
                SharedServerConfig::default().with_max_queued(0),
                "max_queued",
            ),
            (
                SharedServerConfig::default().with_max_frame_len(0),
                "max_frame_len",
            ),
            (SharedServerConfig::default().with_backlog(0), "backlog"),
            (
                SharedServerConfig::default().with_stall_timeout(Duration::ZERO),
                "stall_timeout",
            ),
        ] {
            match config.validate() {
                Err(Error::Config { what: s, .. }) => assert_eq!(s, setting),
                other => panic!("{setting}: {other:?}"),
            }
        }
        assert!(SharedServerConfig::default().validate().is_ok());
    }
}
