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
//! 5. **Data frames** go to `on_message` as for any evented worker.
//!    This module never sees them, so an application message can never be taken for a command.
//! 6. **Framing errors** (garbage, an oversized header, a frame cut by the end of the stream) end only that connection: the shared host drops it, and the others go on; its disconnect handler logs why ([`Connection::error`](worker_core::Connection::error)) and forgets the session.

use worker_channel::Codec;
use worker_core::WorkerStatus;

use crate::{
    AdminCookie,
    auth::{self, AuthError, Nonce},
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
    /// Nothing to send.
    Nothing,
}

/// One connection's admin state.
#[derive(Debug)]
pub(crate) struct ServerSession {
    nonce: Nonce,
    authenticated: bool,
    failures: u32,
}

/// The reply to a query.
pub(crate) fn status(privileged: bool, status: Option<WorkerStatus>) -> ServerMessage {
    ServerMessage::Status { privileged, status }
}

impl ServerSession {
    /// A session for a new connection, with a nonce never used before (see
    /// [`auth::fresh_nonce`]).
    pub(crate) fn new(nonce: Nonce) -> Self {
        ServerSession {
            nonce,
            authenticated: false,
            failures: 0,
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
        })
    }

    /// Whether the client proved it knows the cookie.
    #[cfg(test)]
    pub(crate) fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// How many authentications failed on this connection.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Handles one control payload from the client; `cookie` is the worker's, if it has one,
    /// and `codec` its data codec.
    pub(crate) fn handle(
        &mut self,
        cookie: Option<&AdminCookie>,
        codec: Codec,
        payload: &[u8],
    ) -> Step {
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
            ClientMessage::Authenticate { nonce, proof } => {
                match auth::verify_client(cookie, &self.nonce, &nonce, &proof) {
                    Ok(proof) => {
                        self.authenticated = true;
                        Step::Reply(ServerMessage::Authenticated { proof })
                    }
                    Err(AuthError::BadNonce) => Step::Close(ServerMessage::error(
                        ErrorCode::ProtocolError,
                        format!("a nonce is {} bytes long", wire::NONCE_LEN),
                    )),
                    Err(e) => self.failed(e),
                }
            }
            ClientMessage::Query => Step::Query {
                privileged: self.authenticated,
            },
            ClientMessage::Stop if self.authenticated => Step::Stop(ServerMessage::Stopping),
            ClientMessage::Stop => Step::Reply(ServerMessage::error(
                ErrorCode::AuthenticationRequired,
                "stop needs an authenticated connection",
            )),
            ClientMessage::Codec { codec: expected } if expected == codec => Step::Nothing,
            // Its data frames are in another codec: none of them may reach the worker.
            ClientMessage::Codec { codec: expected } => Step::Close(ServerMessage::error(
                ErrorCode::CodecMismatch,
                format!("this worker's codec is {codec}, not {expected}"),
            )),
        }
    }

    /// A failed authentication: refused, and the connection closed once it failed too often.
    fn failed(&mut self, error: AuthError) -> Step {
        // A connection that authenticated before stays so only while it does not fail.
        self.authenticated = false;
        self.failures += 1;
        let reply = match error {
            AuthError::NoCookie => ServerMessage::error(
                ErrorCode::NoCookie,
                "this worker has no admin cookie configured",
            ),
            _ => ServerMessage::error(ErrorCode::Unauthorized, "wrong admin cookie"),
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

    fn cookie(text: &str) -> AdminCookie {
        AdminCookie::new(text).unwrap()
    }

    fn payload<T: Serialize>(message: &T) -> Vec<u8> {
        wire::encode(message).unwrap()
    }

    /// What a client holding `cookie` sends to authenticate on `session`'s connection.
    fn authenticate(cookie: &AdminCookie) -> (Vec<u8>, ClientAuth<'_>) {
        let auth = ClientAuth::start(Some(cookie), &NS, NC).unwrap();
        let message = ClientMessage::Authenticate {
            nonce: auth.client_nonce().to_vec(),
            proof: auth.proof(),
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
        let session = ServerSession::new(NS);
        assert_eq!(
            session.hello(&info()),
            ServerMessage::Hello(Hello {
                version: PROTOCOL_VERSION,
                pid: 77,
                implementation: "counter".into(),
                codec: Codec::Json,
                max_frame_len: 4096,
                nonce: NS.to_vec(),
            })
        );
    }

    #[test]
    fn the_right_cookie_makes_the_connection_privileged() {
        let c = cookie("s3cret");
        let mut session = ServerSession::new(NS);
        assert_eq!(
            session.handle(
                Some(&c),
                Codec::MessagePack,
                &payload(&ClientMessage::Query)
            ),
            Step::Query { privileged: false }
        );
        let (request, client) = authenticate(&c);
        let Step::Reply(ServerMessage::Authenticated { proof }) =
            session.handle(Some(&c), Codec::MessagePack, &request)
        else {
            panic!("not authenticated");
        };
        assert_eq!(client.verify_server(&proof), Ok(()));
        assert!(session.is_authenticated());
        assert_eq!(
            session.handle(
                Some(&c),
                Codec::MessagePack,
                &payload(&ClientMessage::Query)
            ),
            Step::Query { privileged: true }
        );
        assert_eq!(
            session.handle(Some(&c), Codec::MessagePack, &payload(&ClientMessage::Stop)),
            Step::Stop(ServerMessage::Stopping)
        );
    }

    #[test]
    fn a_wrong_cookie_is_refused_and_stop_stays_impossible() {
        let mut session = ServerSession::new(NS);
        let guess = cookie("guess");
        let (request, _) = authenticate(&guess);
        let step = session.handle(Some(&cookie("s3cret")), Codec::MessagePack, &request);
        assert!(
            matches!(step, Step::Reply(_)),
            "the first failure keeps the connection"
        );
        assert_eq!(error_code(&step), &ErrorCode::Unauthorized);
        let stop = session.handle(
            Some(&cookie("s3cret")),
            Codec::MessagePack,
            &payload(&ClientMessage::Stop),
        );
        assert_eq!(error_code(&stop), &ErrorCode::AuthenticationRequired);
        assert_eq!(
            session.handle(
                Some(&cookie("s3cret")),
                Codec::MessagePack,
                &payload(&ClientMessage::Query)
            ),
            Step::Query { privileged: false }
        );
    }

    #[test]
    fn repeated_failures_close_the_connection() {
        let mut session = ServerSession::new(NS);
        let (request, _) = authenticate(&cookie("guess"));
        let real = cookie("s3cret");
        for _ in 1..MAX_AUTH_FAILURES {
            assert!(matches!(
                session.handle(Some(&real), Codec::MessagePack, &request),
                Step::Reply(_)
            ));
        }
        let last = session.handle(Some(&real), Codec::MessagePack, &request);
        assert!(matches!(last, Step::Close(_)));
        assert_eq!(error_code(&last), &ErrorCode::Unauthorized);
    }

    #[test]
    fn a_proof_replayed_on_another_connection_is_refused() {
        let c = cookie("s3cret");
        let (captured, _) = authenticate(&c);
        let mut first = ServerSession::new(NS);
        assert!(matches!(
            first.handle(Some(&c), Codec::MessagePack, &captured),
            Step::Reply(ServerMessage::Authenticated { .. })
        ));
        let mut second = ServerSession::new([0x77; 32]);
        let step = second.handle(Some(&c), Codec::MessagePack, &captured);
        assert_eq!(error_code(&step), &ErrorCode::Unauthorized);
        assert!(!second.is_authenticated());
    }

    #[test]
    fn a_server_without_a_cookie_says_so() {
        let mut session = ServerSession::new(NS);
        let (request, _) = authenticate(&cookie("s3cret"));
        let step = session.handle(None, Codec::MessagePack, &request);
        assert_eq!(error_code(&step), &ErrorCode::NoCookie);
        let stop = session.handle(None, Codec::MessagePack, &payload(&ClientMessage::Stop));
        assert_eq!(error_code(&stop), &ErrorCode::AuthenticationRequired);
    }

    #[test]
    fn unknown_messages_get_a_typed_reply_and_garbage_closes() {
        #[derive(Serialize)]
        struct Drain {
            #[serde(rename = "type")]
            kind: &'static str,
        }
        let mut session = ServerSession::new(NS);
        let unknown = session.handle(None, Codec::MessagePack, &payload(&Drain { kind: "drain" }));
        assert!(matches!(unknown, Step::Reply(_)));
        assert_eq!(error_code(&unknown), &ErrorCode::UnknownMessage);
        let garbage = session.handle(None, Codec::MessagePack, b"\xc1\xc1");
        assert!(matches!(garbage, Step::Close(_)));
        assert_eq!(error_code(&garbage), &ErrorCode::ProtocolError);
        let short = ClientMessage::Authenticate {
            nonce: vec![1; 8],
            proof: vec![0; 32],
        };
        let short = session.handle(Some(&cookie("x")), Codec::MessagePack, &payload(&short));
        assert!(matches!(short, Step::Close(_)));
        assert_eq!(error_code(&short), &ErrorCode::ProtocolError);
    }

    #[test]
    fn a_failure_after_success_drops_the_privilege() {
        let c = cookie("s3cret");
        let mut session = ServerSession::new(NS);
        let (good, _) = authenticate(&c);
        session.handle(Some(&c), Codec::MessagePack, &good);
        let (bad, _) = authenticate(&cookie("guess"));
        session.handle(Some(&c), Codec::MessagePack, &bad);
        assert!(!session.is_authenticated());
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
        let mut session = ServerSession::new(NS);
        let json = payload(&ClientMessage::Codec { codec: Codec::Json });
        assert_eq!(session.handle(None, Codec::Json, &json), Step::Nothing);
        match session.handle(None, Codec::MessagePack, &json) {
            Step::Close(ServerMessage::Error { code, message }) => {
                assert_eq!(code, ErrorCode::CodecMismatch);
                assert_eq!(message, "this worker's codec is messagepack, not json");
            }
            other => panic!("expected a close, got {other:?}"),
        }
    }
}
