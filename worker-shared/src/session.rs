//! The server's side of one connection's admin plane, as a pure state machine.
//!
//! # How the server sits on worker-core's evented host
//!
//! The shared-worker server (`server.rs`) is a [`WorkerHost::shared`](worker_core::WorkerHost::shared) on a [`WorkerLoop`](worker_core::WorkerLoop), with the listener registered on the loop.
//! Everything runs on the loop's one thread, so none of this needs a lock.
//!
//! 1. **Accept.**
//!    The listener's handler accepts until `WouldBlock`.
//!    Past the connection limit, or for a Unix peer with another uid (`SO_PEERCRED`, refused by default), the new stream is closed at once: the client sees the end of the stream before any hello, which its connect reports as [`Error::Closed`](crate::Error::Closed).
//! 2. **Hello.**
//!    Each accepted stream becomes an `NbChannel` with the worker's codec and its own bounded output queue, so a client that stops reading is dropped when its queue is full and nobody else waits for it.
//!    It is handed to `WorkerHost::connect` with its peer name (pid and uid, or the remote address), and gets a [`ServerSession`] with a fresh nonce ([`auth::fresh_nonce`]), kept beside the connection by [`ConnectionId`](worker_core::ConnectionId).
//!    [`ServerSession::hello`] is queued before `on_connect` runs, so it is the first frame the client reads.
//! 3. **Handshake deadline.**
//!    A timer per connection (`EventLoop::add_timer`) drops the connection on purpose ([`WorkerHost::disconnect`](worker_core::WorkerHost::disconnect)) if no complete frame arrived from it in time ([`Connection::frames_received`](worker_core::Connection::frames_received)); the connection's end cancels the timer.
//!    500 silent sockets then cost 500 timers, and are gone at the deadline.
//! 4. **Control frames.**
//!    The host's control handler hands each control payload to [`ServerSession::handle`], with the cookie the daemon received through its private start pipe, and acts on the [`Step`]:
//!    - [`Step::Reply`]: queue the message on that connection only;
//!    - [`Step::Query`]: call the worker's `on_query(privileged)` and queue [`status`]`(privileged, answer)`;
//!    - [`Step::Stop`]: queue the acknowledgement, then stop gracefully (stop accepting, remove the socket file if it is still ours, `on_stop`, deliver every queued reply, close, `terminate`);
//!    - [`Step::Close`]: queue the message, then drop the connection once it is written (after [`MAX_AUTH_FAILURES`] failed authentications, or a malformed control message).
//!
//!    The host logs a failed authentication (address and peer, never the proof) and keeps serving everyone else.
//! 5. **Data frames** go to `on_message` as for any evented worker, once the connection [may send data](ServerSession::may_send_data): at once, or after it authenticated where the server requires it; until then the host's data guard (`WorkerHost::set_data_guard`) refuses them.
//!    This module never sees them, so an application message can never be taken for a command.
//! 6. **Framing errors** (garbage, an oversized header, a frame cut by the end of the stream) end only that connection: the shared host drops it, and the others go on; its disconnect handler logs why ([`Connection::error`](worker_core::Connection::error)) and forgets the session.

use worker_channel::Codec;
use worker_core::WorkerStatus;

use crate::{
    AdminCookie,
    auth::{self, AuthError, Nonce, Role},
    wire::{self, ClientMessage, ErrorCode, Hello, Inbound, PROTOCOL_VERSION, ServerMessage},
};

/// Failed authentications a connection may make before the server closes it: enough for a
/// client that retries with a second cookie, too few for guessing.
pub(crate) const MAX_AUTH_FAILURES: u32 = 3;

/// What the server says about itself in every hello.
#[derive(Clone, Debug)]
pub(crate) struct ServerInfo {
    pub(crate) pid: u32,
    pub(crate) implementation: String,
    pub(crate) codec: Codec,
    pub(crate) max_frame_len: u32,
}

/// What the host must do with a control message it handed to [`ServerSession::handle`].
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    /// Send this on the connection.
    Reply(ServerMessage),
    /// Ask the worker for its status, then send [`status`] with the answer.
    Query {
        /// Whether the connection is authenticated.
        privileged: bool,
    },
    /// Send this acknowledgement, then stop the worker gracefully.
    Stop(ServerMessage),
    /// Send this, then close the connection.
    Close(ServerMessage),
    /// An authentication from a peer that failed too often lately: it was not checked. Send
    /// [`throttled`] once the peer's window ends, then close the connection.
    Throttled,
    /// Nothing to send.
    Nothing,
}

/// What a session checks a control message against: the server's cookies and rules, and
/// whether its peer may have a proof checked now.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Context<'a> {
    /// The admin cookie, if the server has one.
    pub(crate) admin: Option<&'a AdminCookie>,
    /// The client cookie, if the server has one.
    pub(crate) client: Option<&'a AdminCookie>,
    /// Whether the peer failed too many authentications lately.
    pub(crate) throttled: bool,
    /// The worker's data codec.
    pub(crate) codec: Codec,
}

/// The late answer to an authentication that was [`Step::Throttled`].
pub(crate) fn throttled() -> ServerMessage {
    ServerMessage::error(
        ErrorCode::TooManyFailures,
        "too many failed authentications from this peer lately; the proof was not checked",
    )
}

/// The answer to a data message or a query from a connection that must authenticate first.
pub(crate) fn authentication_required() -> ServerMessage {
    ServerMessage::error(
        ErrorCode::AuthenticationRequired,
        "this worker takes data and queries only from authenticated connections",
    )
}

/// One connection's admin state.
#[derive(Debug)]
pub(crate) struct ServerSession {
    nonce: Nonce,
    /// What the connection proved, if anything.
    granted: Option<Role>,
    failures: u32,
    auth_required: bool,
}

/// The reply to a query.
pub(crate) fn status(privileged: bool, status: Option<WorkerStatus>) -> ServerMessage {
    ServerMessage::Status { privileged, status }
}

impl ServerSession {
    /// A session for a new connection, with a nonce never used before (see
    /// [`auth::fresh_nonce`]).
    ///
    /// `auth_required`: whether the connection must authenticate before data messages and
    /// queries (the hello says so).
    pub(crate) fn new(nonce: Nonce, auth_required: bool) -> Self {
        ServerSession {
            nonce,
            granted: None,
            failures: 0,
            auth_required,
        }
    }

    /// The first frame to send on the connection.
    pub(crate) fn hello(&self, info: &ServerInfo) -> ServerMessage {
        ServerMessage::Hello(Hello {
            version: PROTOCOL_VERSION,
            pid: info.pid,
            implementation: info.implementation.clone(),
            codec: info.codec,
            max_frame_len: info.max_frame_len,
            nonce: self.nonce.to_vec(),
            auth_required: self.auth_required,
        })
    }

    /// Whether the client proved it knows the admin cookie.
    #[cfg(test)]
    pub(crate) fn is_authenticated(&self) -> bool {
        self.granted == Some(Role::Admin)
    }

    /// Whether the worker may take data messages from this connection.
    pub(crate) fn may_send_data(&self) -> bool {
        !self.auth_required || self.granted.is_some()
    }

    /// How many authentications failed on this connection.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Handles one control payload from the client.
    pub(crate) fn handle(&mut self, cx: &Context<'_>, payload: &[u8]) -> Step {
        let message = match wire::decode::<ClientMessage>(payload, ClientMessage::TYPES) {
            Inbound::Message(message) => message,
            // A newer client may probe for what this server offers; it is told, not dropped.
            Inbound::Unknown(kind) => {
                return Step::Reply(ServerMessage::error(
                    ErrorCode::UnknownMessage,
                    format!("unknown control message type {kind:?}"),
                ));
            }
            Inbound::Malformed(reason) => {
                return Step::Close(ServerMessage::error(ErrorCode::ProtocolError, reason));
            }
        };
        match message {
            ClientMessage::Authenticate { .. } if cx.throttled => Step::Throttled,
            ClientMessage::Authenticate { nonce, proof, role } => {
                let cookies = match role {
                    Role::Admin => [cx.admin, None],
                    Role::Client => [cx.client, cx.admin],
                };
                match auth::verify_client(role, &cookies, &self.nonce, &nonce, &proof) {
                    Ok(proof) => {
                        self.granted = Some(role);
                        Step::Reply(ServerMessage::Authenticated { proof })
                    }
                    Err(AuthError::BadNonce) => Step::Close(ServerMessage::error(
                        ErrorCode::ProtocolError,
                        format!("a nonce is {} bytes long", wire::NONCE_LEN),
                    )),
                    Err(e) => self.failed(e, role),
                }
            }
            ClientMessage::Query if !self.may_send_data() => Step::Close(authentication_required()),
            ClientMessage::Query => Step::Query {
                privileged: self.granted == Some(Role::Admin),
            },
            ClientMessage::Stop if self.granted == Some(Role::Admin) => {
                Step::Stop(ServerMessage::Stopping)
            }
            ClientMessage::Stop => Step::Reply(ServerMessage::error(
                ErrorCode::AuthenticationRequired,
                "stop needs a connection authenticated with the admin cookie",
            )),
            ClientMessage::Codec { codec: expected } if expected == cx.codec => Step::Nothing,
            // Its data frames are in another codec: none of them may reach the worker.
            ClientMessage::Codec { codec: expected } => Step::Close(ServerMessage::error(
                ErrorCode::CodecMismatch,
                format!("this worker's codec is {}, not {expected}", cx.codec),
            )),
        }
    }

    /// A failed authentication: refused, and the connection closed once it failed too often.
    fn failed(&mut self, error: AuthError, role: Role) -> Step {
        // A connection that authenticated before stays so only while it does not fail.
        self.granted = None;
        self.failures += 1;
        let reply = match (error, role) {
            (AuthError::NoCookie, Role::Admin) => ServerMessage::error(
                ErrorCode::NoCookie,
                "this worker has no admin cookie configured",
            ),
            (AuthError::NoCookie, Role::Client) => ServerMessage::error(
                ErrorCode::NoCookie,
                "this worker has no client cookie nor admin cookie configured",
            ),
            (_, Role::Admin) => ServerMessage::error(ErrorCode::Unauthorized, "wrong admin cookie"),
            (_, Role::Client) => ServerMessage::error(ErrorCode::Unauthorized, "wrong cookie"),
        };
        if self.failures >= MAX_AUTH_FAILURES {
            Step::Close(reply)
        } else {
            Step::Reply(reply)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::*;
    use crate::auth::ClientAuth;

    const NS: Nonce = [0x5a; 32];
    const NC: Nonce = [0xa5; 32];

    fn info() -> ServerInfo {
        ServerInfo {
            pid: 77,
            implementation: "counter".into(),
            codec: Codec::Json,
            max_frame_len: 4096,
        }
    }

    /// The context of a server with `admin` as its only cookie.
    fn cx(admin: Option<&AdminCookie>) -> Context<'_> {
        Context {
            admin,
            ..Context::default()
        }
    }

    fn cookie(text: &str) -> AdminCookie {
        AdminCookie::new(text).unwrap()
    }

    fn payload<T: Serialize>(message: &T) -> Vec<u8> {
        wire::encode(message).unwrap()
    }

    /// What a client holding `cookie` sends to authenticate on `session`'s connection.
    fn authenticate(cookie: &AdminCookie) -> (Vec<u8>, ClientAuth<'_>) {
        let auth = ClientAuth::start(Role::Admin, Some(cookie), &NS, NC).unwrap();
        let message = ClientMessage::Authenticate {
            nonce: auth.client_nonce().to_vec(),
            proof: auth.proof(),
            role: Role::Admin,
        };
        (payload(&message), auth)
    }

    fn error_code(step: &Step) -> &ErrorCode {
        match step {
            Step::Reply(ServerMessage::Error { code, .. })
            | Step::Close(ServerMessage::Error { code, .. }) => code,
            other => panic!("not an error reply: {other:?}"),
        }
    }

    #[test]
    fn the_hello_carries_the_server_and_the_nonce() {
        let session = ServerSession::new(NS, false);
        assert_eq!(
            session.hello(&info()),
            ServerMessage::Hello(Hello {
                version: PROTOCOL_VERSION,
                pid: 77,
                implementation: "counter".into(),
                codec: Codec::Json,
                max_frame_len: 4096,
                nonce: NS.to_vec(),
                auth_required: false,
            })
        );
    }

    #[test]
    fn the_right_cookie_makes_the_connection_privileged() {
        let c = cookie("s3cret");
        let mut session = ServerSession::new(NS, false);
        assert_eq!(
            session.handle(&cx(Some(&c)), &payload(&ClientMessage::Query)),
            Step::Query { privileged: false }
        );
        let (request, client) = authenticate(&c);
        let Step::Reply(ServerMessage::Authenticated { proof }) =
            session.handle(&cx(Some(&c)), &request)
        else {
            panic!("not authenticated");
        };
        assert_eq!(client.verify_server(&proof), Ok(()));
        assert!(session.is_authenticated());
        assert_eq!(
            session.handle(&cx(Some(&c)), &payload(&ClientMessage::Query)),
            Step::Query { privileged: true }
        );
        assert_eq!(
            session.handle(&cx(Some(&c)), &payload(&ClientMessage::Stop)),
            Step::Stop(ServerMessage::Stopping)
        );
    }

    #[test]
    fn a_wrong_cookie_is_refused_and_stop_stays_impossible() {
        let mut session = ServerSession::new(NS, false);
        let guess = cookie("guess");
        let (request, _) = authenticate(&guess);
        let step = session.handle(&cx(Some(&cookie("s3cret"))), &request);
        assert!(
            matches!(step, Step::Reply(_)),
            "the first failure keeps the connection"
        );
        assert_eq!(error_code(&step), &ErrorCode::Unauthorized);
        let stop = session.handle(&cx(Some(&cookie("s3cret"))), &payload(&ClientMessage::Stop));
        assert_eq!(error_code(&stop), &ErrorCode::AuthenticationRequired);
        assert_eq!(
            session.handle(
                &cx(Some(&cookie("s3cret"))),
                &payload(&ClientMessage::Query)
            ),
            Step::Query { privileged: false }
        );
    }

    #[test]
    fn repeated_failures_close_the_connection() {
        let mut session = ServerSession::new(NS, false);
        let (request, _) = authenticate(&cookie("guess"));
        let real = cookie("s3cret");
        for _ in 1..MAX_AUTH_FAILURES {
            assert!(matches!(
                session.handle(&cx(Some(&real)), &request),
                Step::Reply(_)
            ));
        }
        let last = session.handle(&cx(Some(&real)), &request);
        assert!(matches!(last, Step::Close(_)));
        assert_eq!(error_code(&last), &ErrorCode::Unauthorized);
    }

    #[test]
    fn a_proof_replayed_on_another_connection_is_refused() {
        let c = cookie("s3cret");
        let (captured, _) = authenticate(&c);
        let mut first = ServerSession::new(NS, false);
        assert!(matches!(
            first.handle(&cx(Some(&c)), &captured),
            Step::Reply(ServerMessage::Authenticated { .. })
        ));
        let mut second = ServerSession::new([0x77; 32], false);
        let step = second.handle(&cx(Some(&c)), &captured);
        assert_eq!(error_code(&step), &ErrorCode::Unauthorized);
        assert!(!second.is_authenticated());
    }

    #[test]
    fn a_server_without_a_cookie_says_so() {
        let mut session = ServerSession::new(NS, false);
        let (request, _) = authenticate(&cookie("s3cret"));
        let step = session.handle(&cx(None), &request);
        assert_eq!(error_code(&step), &ErrorCode::NoCookie);
        let stop = session.handle(&cx(None), &payload(&ClientMessage::Stop));
        assert_eq!(error_code(&stop), &ErrorCode::AuthenticationRequired);
    }

    #[test]
    fn unknown_messages_get_a_typed_reply_and_garbage_closes() {
        #[derive(Serialize)]
        struct Drain {
            #[serde(rename = "type")]
            kind: &'static str,
        }
        let mut session = ServerSession::new(NS, false);
        let unknown = session.handle(&cx(None), &payload(&Drain { kind: "drain" }));
        assert!(matches!(unknown, Step::Reply(_)));
        assert_eq!(error_code(&unknown), &ErrorCode::UnknownMessage);
        let garbage = session.handle(&cx(None), b"\xc1\xc1");
        assert!(matches!(garbage, Step::Close(_)));
        assert_eq!(error_code(&garbage), &ErrorCode::ProtocolError);
        let short = ClientMessage::Authenticate {
            nonce: vec![1; 8],
            proof: vec![0; 32],
            role: Role::Admin,
        };
        let short = session.handle(&cx(Some(&cookie("x"))), &payload(&short));
        assert!(matches!(short, Step::Close(_)));
        assert_eq!(error_code(&short), &ErrorCode::ProtocolError);
    }

    #[test]
    fn a_failure_after_success_drops_the_privilege() {
        let c = cookie("s3cret");
        let mut session = ServerSession::new(NS, false);
        let (good, _) = authenticate(&c);
        session.handle(&cx(Some(&c)), &good);
        let (bad, _) = authenticate(&cookie("guess"));
        session.handle(&cx(Some(&c)), &bad);
        assert!(!session.is_authenticated());
    }

    /// What a client holding `cookie` sends to authenticate for `role`.
    fn authenticate_as(cookie: &AdminCookie, role: Role) -> Vec<u8> {
        let auth = ClientAuth::start(role, Some(cookie), &NS, NC).unwrap();
        payload(&ClientMessage::Authenticate {
            nonce: auth.client_nonce().to_vec(),
            proof: auth.proof(),
            role,
        })
    }

    #[test]
    fn where_authentication_is_required_only_an_authenticated_connection_gets_data_and_queries() {
        let (admin, client) = (cookie("admin"), cookie("client"));
        let cx = Context {
            admin: Some(&admin),
            client: Some(&client),
            ..Context::default()
        };
        // (role, cookie, then may send data, privileged)
        let cases = [
            (Role::Client, &client, true, false),
            (Role::Client, &admin, true, false),
            (Role::Admin, &admin, true, true),
            (Role::Admin, &client, false, false),
        ];
        for (role, with, data, privileged) in cases {
            let mut session = ServerSession::new(NS, true);
            assert!(!session.may_send_data());
            let hello = session.hello(&info());
            assert!(matches!(
                hello,
                ServerMessage::Hello(Hello {
                    auth_required: true,
                    ..
                })
            ));
            let step = session.handle(&cx, &authenticate_as(with, role));
            assert_eq!(session.may_send_data(), data, "{role:?}");
            if !data {
                assert_eq!(error_code(&step), &ErrorCode::Unauthorized);
                let query = session.handle(&cx, &payload(&ClientMessage::Query));
                assert!(matches!(query, Step::Close(_)));
                assert_eq!(error_code(&query), &ErrorCode::AuthenticationRequired);
                continue;
            }
            assert_eq!(
                session.handle(&cx, &payload(&ClientMessage::Query)),
                Step::Query { privileged }
            );
            let stop = session.handle(&cx, &payload(&ClientMessage::Stop));
            assert_eq!(matches!(stop, Step::Stop(_)), privileged, "{role:?}");
        }
        // Where it is not required, data flows from the start.
        assert!(ServerSession::new(NS, false).may_send_data());
    }

    #[test]
    fn a_throttled_peers_proof_is_not_checked_even_when_right() {
        let c = cookie("s3cret");
        let throttled = Context {
            admin: Some(&c),
            throttled: true,
            ..Context::default()
        };
        let mut session = ServerSession::new(NS, true);
        let (right, _) = authenticate(&c);
        assert_eq!(session.handle(&throttled, &right), Step::Throttled);
        assert!(!session.may_send_data());
        assert_eq!(session.failures(), 0);
    }

    #[test]
    fn status_replies_say_which_answer_they_are() {
        assert_eq!(
            status(true, Some("full".into())),
            ServerMessage::Status {
                privileged: true,
                status: Some(WorkerStatus::new("full"))
            }
        );
    }

    #[test]
    fn a_client_expecting_another_codec_is_closed_and_one_expecting_this_one_hears_nothing() {
        let mut session = ServerSession::new(NS, false);
        let json = payload(&ClientMessage::Codec { codec: Codec::Json });
        let with = |codec| Context {
            codec,
            ..Context::default()
        };
        assert_eq!(session.handle(&with(Codec::Json), &json), Step::Nothing);
        match session.handle(&with(Codec::MessagePack), &json) {
            Step::Close(ServerMessage::Error { code, message }) => {
                assert_eq!(code, ErrorCode::CodecMismatch);
                assert_eq!(message, "this worker's codec is messagepack, not json");
            }
            other => panic!("expected a close, got {other:?}"),
        }
    }
}
