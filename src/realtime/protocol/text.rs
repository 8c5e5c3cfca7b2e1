//! The texts Realtime clients show their users: join error reasons, token problems at each
//! stage (HTTP upgrade, join, live channel) and `system` message payloads.
//!
//! The wording follows Supabase Realtime so that client code matching on it keeps working; the
//! `Code: message` prefix of join errors is the stable part.

use serde_json::json;

pub use crate::auth::TokenProblem;

/// How a refused token is worded for Realtime clients: the same problem is worded differently
/// at connect time (HTTP body), at join time (`phx_reply` reason) and on a live channel
/// (`system` message). The problems themselves are the one token policy's
/// ([`crate::auth::TokenProblem`]).
impl TokenProblem {
    /// The `error` text of the HTTP 401 body that refuses the WebSocket upgrade.
    pub fn connect_message(&self) -> &'static str {
        match self {
            TokenProblem::Missing => "API key is missing",
            TokenProblem::Expired { .. } => "Token has expired",
            TokenProblem::MissingClaims => "Fields `role` and `exp` are required in JWT",
            TokenProblem::Malformed => "The token provided is not a valid JWT",
            TokenProblem::BadSignature => "Failed to validate JWT signature",
            TokenProblem::NotYetValid => "Token is not valid yet",
            TokenProblem::WrongIssuer => "Token issuer is not accepted",
            TokenProblem::WrongAudience => "Token audience is not accepted",
            TokenProblem::RoleNotAllowed { .. } => "Token role is not an API role",
            TokenProblem::AlgorithmNotAllowed { .. } => "Token signing algorithm is not accepted",
            TokenProblem::UnknownKey { .. } => "No signing key matches the token's kid",
            TokenProblem::KeyMismatch { .. } => {
                "The token's algorithm does not fit its signing key"
            }
            TokenProblem::UnknownApiKey => "Invalid API key",
        }
    }

    /// The message of a `system` error on a live channel (token refresh or expiry).
    pub fn live_message(&self) -> String {
        match self {
            TokenProblem::Expired { seconds_ago } => {
                format!("Token has expired {seconds_ago} seconds ago")
            }
            other => other.connect_message().to_owned(),
        }
    }

    /// The join error for this problem.
    pub fn join_error(&self) -> JoinError {
        JoinError::Token(self.clone())
    }
}

/// Why a `phx_join` was refused; [`JoinError::reason`] is the reply's `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    /// The topic does not start with `realtime:` (Phoenix's own wording).
    UnmatchedTopic,
    /// The topic is exactly `realtime:`.
    TopicNameRequired,
    /// The effective token is not acceptable.
    Token(TokenProblem),
    /// A private channel the role may not read.
    Unauthorized {
        /// The topic without `realtime:`.
        sub_topic: String,
    },
    /// The socket already has [`super::MAX_CHANNELS`] channels.
    TooManyChannels,
    /// The database could not be asked (a private channel's policies).
    DatabaseUnavailable,
    /// A public channel on a node that serves private channels only (`--private-only`).
    PrivateOnly,
    /// `broadcast.replay` on a public channel.
    ReplayOnPublicChannel,
    /// `broadcast.replay` without an integer `since`, or with a `limit` that is not one.
    ReplayParamsInvalid,
    /// The stored broadcasts could not be read.
    ReplayFailed,
    /// With `postgres_changes_options.wait`: a binding that can never be served.
    SubscribeFailed(String),
    /// With `postgres_changes_options.wait`: the subscription was not live within the wait.
    SubscribeTimeout {
        /// The wait, in milliseconds.
        ms: u64,
    },
    /// Something unexpected.
    Unknown,
}

impl JoinError {
    /// The `reason` of the error reply.
    pub fn reason(&self) -> String {
        match self {
            JoinError::UnmatchedTopic => "unmatched topic".to_owned(),
            JoinError::TopicNameRequired => {
                "TopicNameRequired: You must provide a topic name".to_owned()
            }
            JoinError::Token(p) => match p {
                TokenProblem::Expired { .. } => format!("InvalidJWTToken: {}", p.live_message()),
                TokenProblem::MissingClaims
                | TokenProblem::NotYetValid
                | TokenProblem::WrongIssuer
                | TokenProblem::WrongAudience
                | TokenProblem::RoleNotAllowed { .. } => {
                    format!("InvalidJWTToken: {}", p.connect_message())
                }
                TokenProblem::Malformed | TokenProblem::Missing => {
                    format!(
                        "MalformedJWT: {}",
                        TokenProblem::Malformed.connect_message()
                    )
                }
                TokenProblem::BadSignature
                | TokenProblem::AlgorithmNotAllowed { .. }
                | TokenProblem::UnknownKey { .. }
                | TokenProblem::KeyMismatch { .. } => {
                    format!("JwtSignatureError: {}", p.connect_message())
                }
                TokenProblem::UnknownApiKey => {
                    format!("InvalidJWTToken: {}", p.connect_message())
                }
            },
            JoinError::Unauthorized { sub_topic } => format!(
                "Unauthorized: You do not have permissions to read from this Channel topic: \
                 {sub_topic}"
            ),
            JoinError::TooManyChannels => "ChannelRateLimitReached: Too many channels".to_owned(),
            JoinError::DatabaseUnavailable => {
                format!("UnableToConnectToProject: {DATABASE_UNAVAILABLE}")
            }
            JoinError::PrivateOnly => {
                "PrivateOnly: This project only allows private channels".to_owned()
            }
            JoinError::ReplayOnPublicChannel => {
                "UnableToReplayMessages: Replay is not allowed for public channels".to_owned()
            }
            JoinError::ReplayParamsInvalid => {
                "UnableToReplayMessages: Replay params are not valid".to_owned()
            }
            JoinError::ReplayFailed => {
                "UnableToReplayMessages: Realtime was unable to replay messages".to_owned()
            }
            JoinError::SubscribeFailed(cause) => {
                format!("RealtimeDisabledForConfiguration: {cause}")
            }
            JoinError::SubscribeTimeout { ms } => format!(
                "PostgresChangesSubscribeTimeout: Timed out after {ms}ms waiting for the \
                 postgres_changes subscription"
            ),
            JoinError::Unknown => "Unknown Error on Channel".to_owned(),
        }
    }
}

/// The error a sender with `ack` gets when its broadcast, sent with `persist`, could not be
/// stored for replay (it was still relayed).
pub const PERSIST_FAILED: &str = "Realtime was unable to store the message for replay";

/// The `system` message of a channel joined with `broadcast.replication_ready`.
pub const REPLICATION_READY: &str = "Replication connection established";

/// The `system` message after a successful `postgres_changes` subscription.
pub const SUBSCRIBED_TO_POSTGRES: &str = "Subscribed to PostgreSQL";

/// The `system` message when walcast cannot check row visibility in Postgres.
pub const DATABASE_UNAVAILABLE: &str = "Realtime was unable to connect to the project database";

/// The `system` message that closes a private channel whose refreshed token may no longer read
/// it.
pub fn read_revoked(sub_topic: &str) -> String {
    format!("You no longer have permission to read from this Channel topic: {sub_topic}")
}

/// The `system` message before the server closes the socket on shutdown.
pub const SERVER_DISCONNECT: &str = "Server requested disconnect";

/// The `system` message when presence calls exceed the per-channel limit.
pub const PRESENCE_RATE_LIMIT: &str = "Client presence rate limit exceeded";

/// The `system` message when the client read too slowly and the server dropped it.
pub const CLIENT_LAGGED: &str =
    "Too many messages: this client fell behind and is disconnected; reconnect and refetch";

/// The `system` message (extension `postgres_changes`, status `error`) when a channel's resume
/// position is older than what walcast still retains; the channel is live from now on. Both
/// are commit LSNs (`0/16B3748`); `oldest` is the first one walcast can still replay.
pub fn resume_expired(position: &str, oldest: &str) -> String {
    format!(
        "Resume position {position} has expired: changes are kept from {oldest} on \
         (--retention), earlier ones cannot be replayed: refetch, then carry on live"
    )
}

/// The `system` message (extension `postgres_changes`, status `error`) when a channel's resume
/// position could not be read or replayed; the channel is live from now on.
pub const RESUME_FAILED: &str = "Resume position could not be read or replayed: refetch, then \
     carry on live";

/// The join reply reason when a socket joins too often (Supabase's text); the socket is then
/// closed.
pub const TOO_MANY_JOINS: &str = "ClientJoinRateLimitReached: Too many joins per second";

/// The `system` message when a socket sends too many broadcast or presence messages (Supabase's
/// text); its channels are closed, then the socket.
pub const TOO_MANY_MESSAGES: &str = "Too many messages per second";

/// The HTTP 429 body's `error` when a client address is at its session cap (Supabase's text
/// for its concurrent-users limit).
pub const TOO_MANY_CONNECTED_USERS: &str = "Too many connected users";

/// The `postgres_changes` `system` error when a join would give the socket more filter
/// conditions than walcast matches per socket (walcast's own limit; Supabase has none to copy).
pub fn too_many_conditions(asked: usize, max: usize) -> String {
    format!(
        "Too many filter conditions: this socket would have {asked}, at most {max} are allowed over all its channels' postgres_changes bindings"
    )
}

/// The reply reason for a presence `track` whose payload is not an object.
pub const PRESENCE_NOT_A_MAP: &str = "Presence track payload must be a map";

/// The payload of a `system` message: `{extension, status, message, channel}` where `channel`
/// is the topic without `realtime:`.
pub fn system_payload(extension: &str, ok: bool, message: &str, sub_topic: &str) -> String {
    json!({
        "extension": extension,
        "status": if ok { "ok" } else { "error" },
        "message": message,
        "channel": sub_topic,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_messages() {
        assert_eq!(
            TokenProblem::Missing.connect_message(),
            "API key is missing"
        );
        assert_eq!(
            TokenProblem::Expired { seconds_ago: 3 }.connect_message(),
            "Token has expired"
        );
        assert_eq!(
            TokenProblem::MissingClaims.connect_message(),
            "Fields `role` and `exp` are required in JWT"
        );
        assert_eq!(
            TokenProblem::Malformed.connect_message(),
            "The token provided is not a valid JWT"
        );
        assert_eq!(
            TokenProblem::BadSignature.connect_message(),
            "Failed to validate JWT signature"
        );
    }

    #[test]
    fn join_reasons() {
        let cases = [
            (JoinError::UnmatchedTopic, "unmatched topic"),
            (
                JoinError::TopicNameRequired,
                "TopicNameRequired: You must provide a topic name",
            ),
            (
                TokenProblem::Expired { seconds_ago: 12 }.join_error(),
                "InvalidJWTToken: Token has expired 12 seconds ago",
            ),
            (
                TokenProblem::MissingClaims.join_error(),
                "InvalidJWTToken: Fields `role` and `exp` are required in JWT",
            ),
            (
                TokenProblem::Malformed.join_error(),
                "MalformedJWT: The token provided is not a valid JWT",
            ),
            (
                TokenProblem::BadSignature.join_error(),
                "JwtSignatureError: Failed to validate JWT signature",
            ),
            (
                JoinError::Unauthorized {
                    sub_topic: "room1".into(),
                },
                "Unauthorized: You do not have permissions to read from this Channel topic: room1",
            ),
            (
                JoinError::TooManyChannels,
                "ChannelRateLimitReached: Too many channels",
            ),
            (JoinError::Unknown, "Unknown Error on Channel"),
        ];
        for (e, want) in cases {
            assert_eq!(e.reason(), want);
        }
    }

    #[test]
    fn live_messages_and_system_payloads() {
        assert_eq!(
            TokenProblem::Expired { seconds_ago: 0 }.live_message(),
            "Token has expired 0 seconds ago"
        );
        assert_eq!(
            TokenProblem::MissingClaims.live_message(),
            "Fields `role` and `exp` are required in JWT"
        );
        let p: serde_json::Value = serde_json::from_str(&system_payload(
            "postgres_changes",
            true,
            SUBSCRIBED_TO_POSTGRES,
            "room1",
        ))
        .unwrap();
        assert_eq!(
            p,
            json!({"extension":"postgres_changes","status":"ok","message":"Subscribed to PostgreSQL","channel":"room1"})
        );
        let p: serde_json::Value = serde_json::from_str(&system_payload(
            "system",
            false,
            "Token has expired 1 seconds ago",
            "room1",
        ))
        .unwrap();
        assert_eq!(p["status"], "error");
        assert_eq!(p["extension"], "system");
    }
}
