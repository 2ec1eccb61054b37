//! The admin plane's messages as they cross in control frames; the [`protocol`](crate::protocol)
//! guide is their description for other languages, and the tests below hold the two together.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::DeserializeOwned};
use worker_channel::Codec;
use worker_core::WorkerStatus;

/// The version of the admin protocol this crate speaks, announced in the hello.
pub(crate) const PROTOCOL_VERSION: u32 = 1;

/// Length of each side's nonce, in bytes.
pub(crate) const NONCE_LEN: usize = 32;

/// The codec of every control frame, whatever the codec of the data: a client reads the data
/// codec from the hello, so it can talk to a JSON worker without being told beforehand.
pub(crate) const CONTROL_CODEC: Codec = Codec::MessagePack;

/// What a server sends, in control frames.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ServerMessage {
    /// The first frame on every connection.
    Hello(Hello),
    /// The client's proof is right; here is the server's.
    Authenticated {
        #[serde(with = "serde_bytes")]
        proof: Vec<u8>,
    },
    /// The answer to a query.
    Status {
        privileged: bool,
        status: Option<WorkerStatus>,
    },
    /// The answer to a stop: the worker is stopping.
    Stopping,
    /// A request was refused.
    Error { code: ErrorCode, message: String },
}

/// The server's first words.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) version: u32,
    pub(crate) pid: u32,
    pub(crate) implementation: String,
    pub(crate) codec: Codec,
    pub(crate) max_frame_len: u32,
    #[serde(with = "serde_bytes")]
    pub(crate) nonce: Vec<u8>,
    /// Whether this connection must authenticate before any data message or query; absent
    /// (from an older server) is `false`.
    #[serde(default)]
    pub(crate) auth_required: bool,
}

/// Which cookie an authentication proves, and so what it grants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Role {
    /// The admin cookie: data, the privileged query, and stop. The default, when a client
    /// says no role.
    #[default]
    Admin,
    /// The client cookie (or the admin cookie): data and the public query.
    Client,
}

impl Role {
    fn is_admin(&self) -> bool {
        *self == Role::Admin
    }
}

/// What a client sends, in control frames.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ClientMessage {
    /// The client's nonce and its proof that it knows the cookie.
    Authenticate {
        #[serde(with = "serde_bytes")]
        nonce: Vec<u8>,
        #[serde(with = "serde_bytes")]
        proof: Vec<u8>,
        /// Absent for the admin role, as before roles existed.
        #[serde(default, skip_serializing_if = "Role::is_admin")]
        role: Role,
    },
    /// Asks for the worker's status; privileged once the connection is authenticated.
    Query,
    /// Asks the worker to stop; only on an authenticated connection.
    Stop,
    /// The data codec the client already encodes its messages with, sent before it read the
    /// hello: the server closes a connection that expects another one, without reading its
    /// data, and replies nothing otherwise.
    Codec { codec: Codec },
}

impl ClientMessage {
    /// The `type` of every client message this version knows, to tell an unknown message from a
    /// malformed one.
    pub(crate) const TYPES: &'static [&'static str] = &["authenticate", "query", "stop", "codec"];
}

impl ServerMessage {
    /// The `type` of every server message this version knows.
    pub(crate) const TYPES: &'static [&'static str] =
        &["hello", "authenticated", "status", "stopping", "error"];

    /// The notice a stopping server sends on every connection, last.
    pub(crate) fn stopping() -> Self {
        Self::error(ErrorCode::Stopping, "the worker is stopping")
    }

    pub(crate) fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
        }
    }
}

/// Why a server refused a request. On the wire a string, so that a client meets codes newer
/// than itself as [`ErrorCode::Other`] instead of failing to read the reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    /// The client's proof is wrong: it does not know the cookie.
    Unauthorized,
    /// The server has no cookie, so nobody can authenticate.
    NoCookie,
    /// A privileged request on a connection that is not authenticated.
    AuthenticationRequired,
    /// A control message of a type the server does not know.
    UnknownMessage,
    /// A control message the server cannot read.
    ProtocolError,
    /// Too many failed authentications from this peer lately: the proof was not checked.
    TooManyFailures,
    /// A callback of the worker failed while serving this connection, which closes.
    WorkerFailed,
    /// The connection was idle past the server's limit, and closes.
    IdleTimeout,
    /// The client announced a data codec that is not the worker's.
    CodecMismatch,
    /// Not a refusal of a request but a notice: the worker is stopping, has answered what the
    /// connection sent before, and closes it.
    Stopping,
    /// A code this version does not know.
    Other(String),
}

impl ErrorCode {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NoCookie => "no_cookie",
            ErrorCode::AuthenticationRequired => "authentication_required",
            ErrorCode::UnknownMessage => "unknown_message",
            ErrorCode::ProtocolError => "protocol_error",
            ErrorCode::TooManyFailures => "too_many_failures",
            ErrorCode::WorkerFailed => "worker_failed",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::CodecMismatch => "codec_mismatch",
            ErrorCode::Stopping => "stopping",
            ErrorCode::Other(code) => code,
        }
    }

    fn from_wire(code: String) -> Self {
        match code.as_str() {
            "unauthorized" => ErrorCode::Unauthorized,
            "no_cookie" => ErrorCode::NoCookie,
            "authentication_required" => ErrorCode::AuthenticationRequired,
            "unknown_message" => ErrorCode::UnknownMessage,
            "protocol_error" => ErrorCode::ProtocolError,
            "too_many_failures" => ErrorCode::TooManyFailures,
            "worker_failed" => ErrorCode::WorkerFailed,
            "idle_timeout" => ErrorCode::IdleTimeout,
            "codec_mismatch" => ErrorCode::CodecMismatch,
            "stopping" => ErrorCode::Stopping,
            _ => ErrorCode::Other(code),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(ErrorCode::from_wire)
    }
}

/// A control payload, read.
#[derive(Debug, PartialEq)]
pub(crate) enum Inbound<T> {
    /// A message this version knows.
    Message(T),
    /// A well-formed message of a type this version does not know.
    Unknown(String),
    /// Not a message: not a map, no `type`, or a known type with missing or mistyped fields.
    Malformed(String),
}

/// Just the `type` of a control message.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
}

/// Reads a control payload, telling a message of an unknown type (which deserves an
/// `unknown_message` reply) from garbage.
pub(crate) fn decode<T: DeserializeOwned>(payload: &[u8], known: &[&str]) -> Inbound<T> {
    match CONTROL_CODEC.decode::<T>(payload) {
        Ok(message) => Inbound::Message(message),
        Err(e) => match CONTROL_CODEC.decode::<Envelope>(payload) {
            Ok(Envelope { kind }) if !known.contains(&kind.as_str()) => Inbound::Unknown(kind),
            Ok(Envelope { kind }) => Inbound::Malformed(format!(
                "malformed {kind} message: {}",
                worker_core::error_chain(&e)
            )),
            Err(_) => Inbound::Malformed("control message is not a map with a type".into()),
        },
    }
}

/// The `version` of a hello too new (or too old) to read as this version's: a future version
/// may change the hello's other keys, but never its `type` and `version`.
pub(crate) fn hello_version(payload: &[u8]) -> Option<u32> {
    #[derive(Deserialize)]
    struct Versioned {
        #[serde(rename = "type")]
        kind: String,
        version: u32,
    }
    let hello: Versioned = CONTROL_CODEC.decode(payload).ok()?;
    (hello.kind == "hello").then_some(hello.version)
}

/// Encodes a control message's payload.
pub(crate) fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, worker_channel::Error> {
    CONTROL_CODEC.encode(message)
}

#[cfg(test)]
mod tests {
    use worker_core::Counter;

    use super::*;

    /// Control payloads as JSON text, for readable assertions of the field names; the wire is
    /// MessagePack with the same maps.
    fn json<T: Serialize>(message: &T) -> String {
        String::from_utf8(Codec::Json.encode(message).unwrap()).unwrap()
    }

    #[test]
    fn messages_have_the_documented_shape() {
        let hello = ServerMessage::Hello(Hello {
            version: 1,
            pid: 42,
            implementation: "counter".into(),
            codec: Codec::Json,
            max_frame_len: 1024,
            nonce: vec![7; 2],
            auth_required: false,
        });
        assert_eq!(
            json(&hello),
            r#"{"type":"hello","version":1,"pid":42,"implementation":"counter","codec":"json","max_frame_len":1024,"nonce":[7,7],"auth_required":false}"#
        );
        assert_eq!(
            json(&ServerMessage::Authenticated { proof: vec![1] }),
            r#"{"type":"authenticated","proof":[1]}"#
        );
        assert_eq!(
            json(&ServerMessage::Status {
                privileged: false,
                status: None
            }),
            r#"{"type":"status","privileged":false,"status":null}"#
        );
        assert_eq!(json(&ServerMessage::Stopping), r#"{"type":"stopping"}"#);
        assert_eq!(
            json(&ServerMessage::error(ErrorCode::NoCookie, "none")),
            r#"{"type":"error","code":"no_cookie","message":"none"}"#
        );
        assert_eq!(
            json(&ClientMessage::Authenticate {
                nonce: vec![1],
                proof: vec![2],
                role: Role::Admin,
            }),
            r#"{"type":"authenticate","nonce":[1],"proof":[2]}"#
        );
        assert_eq!(json(&ClientMessage::Query), r#"{"type":"query"}"#);
        assert_eq!(json(&ClientMessage::Stop), r#"{"type":"stop"}"#);
    }

    #[test]
    fn every_message_round_trips_through_messagepack() {
        let server = [
            ServerMessage::Hello(Hello {
                version: 1,
                pid: 1,
                implementation: "x".into(),
                codec: Codec::MessagePack,
                max_frame_len: 9,
                nonce: vec![3; NONCE_LEN],
                auth_required: false,
            }),
            ServerMessage::Authenticated { proof: vec![9; 32] },
            ServerMessage::Status {
                privileged: true,
                status: Some(
                    WorkerStatus::new("ok").with_counter(Counter::new("n", 2.0).with_unit("B")),
                ),
            },
            ServerMessage::Stopping,
            ServerMessage::error(ErrorCode::Other("future".into()), "later"),
        ];
        for message in server {
            let bytes = encode(&message).unwrap();
            assert_eq!(
                decode::<ServerMessage>(&bytes, ServerMessage::TYPES),
                Inbound::Message(message)
            );
        }
        for message in [
            ClientMessage::Authenticate {
                nonce: vec![1; NONCE_LEN],
                proof: vec![2; 32],
                role: Role::Admin,
            },
            ClientMessage::Query,
            ClientMessage::Stop,
        ] {
            let bytes = encode(&message).unwrap();
            assert_eq!(
                decode::<ClientMessage>(&bytes, ClientMessage::TYPES),
                Inbound::Message(message)
            );
        }
    }

    #[test]
    fn binary_fields_are_messagepack_bin_not_arrays() {
        let bytes = encode(&ClientMessage::Authenticate {
            nonce: vec![0xAB; NONCE_LEN],
            proof: vec![0xCD; 32],
            role: Role::Admin,
        })
        .unwrap();
        // bin 8 (0xc4), length 32, then the bytes themselves.
        let bin = [&[0xc4, 32][..], &[0xAB; NONCE_LEN][..]].concat();
        assert!(bytes.windows(bin.len()).any(|w| w == bin));
    }

    #[test]
    fn unknown_types_are_told_from_garbage() {
        #[derive(Serialize)]
        struct Future {
            #[serde(rename = "type")]
            kind: &'static str,
            extra: u32,
        }
        let future = encode(&Future {
            kind: "drain",
            extra: 1,
        })
        .unwrap();
        assert_eq!(
            decode::<ClientMessage>(&future, ClientMessage::TYPES),
            Inbound::Unknown("drain".into())
        );
        let bad_auth = encode(&Future {
            kind: "authenticate",
            extra: 1,
        })
        .unwrap();
        assert!(matches!(
            decode::<ClientMessage>(&bad_auth, ClientMessage::TYPES),
            Inbound::Malformed(reason) if reason.starts_with("malformed authenticate message")
        ));
        for garbage in [&b""[..], b"\xc1", &encode(&42u8).unwrap()] {
            assert!(matches!(
                decode::<ClientMessage>(garbage, ClientMessage::TYPES),
                Inbound::Malformed(_)
            ));
        }
    }

    #[test]
    fn a_future_hello_still_tells_its_version() {
        #[derive(Serialize)]
        struct FutureHello {
            #[serde(rename = "type")]
            kind: &'static str,
            version: u32,
            nonce: &'static str,
        }
        let future = encode(&FutureHello {
            kind: "hello",
            version: 2,
            nonce: "a string now",
        })
        .unwrap();
        assert!(matches!(
            decode::<ServerMessage>(&future, ServerMessage::TYPES),
            Inbound::Malformed(_)
        ));
        assert_eq!(hello_version(&future), Some(2));
        assert_eq!(
            hello_version(&encode(&ServerMessage::Stopping).unwrap()),
            None
        );
    }

    #[test]
    fn unknown_error_codes_are_kept() {
        let bytes = encode(&ServerMessage::error(
            ErrorCode::Other("rate_limited".into()),
            "slow down",
        ))
        .unwrap();
        let Inbound::Message(ServerMessage::Error { code, .. }) =
            decode::<ServerMessage>(&bytes, ServerMessage::TYPES)
        else {
            panic!("not an error message");
        };
        assert_eq!(code, ErrorCode::Other("rate_limited".into()));
        assert_eq!(code.to_string(), "rate_limited");
    }
    /// A status reply as a server in another language may write it (the guide's "Status
    /// maps"): an integer where a float is expected, a counter's optional keys left out.
    #[test]
    fn a_status_written_by_hand_with_integers_and_missing_keys_decodes() {
        let mut bytes = vec![0x83];
        let text = |bytes: &mut Vec<u8>, s: &str| {
            bytes.push(0xa0 | s.len() as u8);
            bytes.extend_from_slice(s.as_bytes());
        };
        text(&mut bytes, "type");
        text(&mut bytes, "status");
        text(&mut bytes, "privileged");
        bytes.push(0xc2);
        text(&mut bytes, "status");
        bytes.push(0x82);
        text(&mut bytes, "text");
        text(&mut bytes, "ok");
        text(&mut bytes, "counters");
        bytes.extend([0x91, 0x83]);
        text(&mut bytes, "name");
        text(&mut bytes, "jobs");
        text(&mut bytes, "value");
        bytes.push(0x07);
        text(&mut bytes, "warning");
        text(&mut bytes, "~:6");
        let Inbound::Message(ServerMessage::Status {
            privileged: false,
            status: Some(status),
        }) = decode::<ServerMessage>(&bytes, ServerMessage::TYPES)
        else {
            panic!("not a status reply");
        };
        assert_eq!(status.text(), "ok");
        let jobs = status.counter("jobs").expect("the counter");
        assert_eq!(jobs.value(), Some(7.0));
        assert_eq!(jobs.unit(), None);
        assert_eq!(
            jobs.warning().map(|t| t.to_string()).as_deref(),
            Some("~:6")
        );
    }
}
