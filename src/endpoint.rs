//! The two WebSocket endpoints, named once: `/ws` (walcast's plain JSON protocol) and
//! `/realtime/v1/websocket` (the Supabase Realtime protocol).
//!
//! A leaf: the client registry, the broadcaster mode, the consistency check and both sessions
//! all use this one enum. Wire strings: [`Endpoint::as_str`] (`ws`, `realtime`) in the client
//! registry, `/v1/status`, reports and metric labels; [`Endpoint::mode_name`] (`direct`,
//! `realtime`) where the broadcaster mode names the endpoint it serves (`/v1/flags/evaluate`,
//! `mode_disabled` errors).

use serde::{Serialize, Serializer};

/// One of the two WebSocket endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// `/ws`, the plain JSON protocol.
    Ws,
    /// `/realtime/v1/websocket`, the Supabase Realtime protocol.
    Realtime,
}

impl Endpoint {
    /// Both, `/ws` first.
    pub const ALL: [Endpoint; 2] = [Endpoint::Ws, Endpoint::Realtime];

    /// The name in the client registry, `/v1/status`, reports and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Ws => "ws",
            Endpoint::Realtime => "realtime",
        }
    }

    /// The name the broadcaster mode uses for the endpoint it serves.
    pub fn mode_name(self) -> &'static str {
        match self {
            Endpoint::Ws => "direct",
            Endpoint::Realtime => "realtime",
        }
    }

    /// The HTTP path.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Ws => "/ws",
            Endpoint::Realtime => "/realtime/v1/websocket",
        }
    }

    /// The other endpoint.
    pub fn other(self) -> Endpoint {
        match self {
            Endpoint::Ws => Endpoint::Realtime,
            Endpoint::Realtime => Endpoint::Ws,
        }
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Serializes endpoints by their broadcaster-mode names (`direct`, `realtime`).
pub fn serialize_mode_names<S: Serializer>(
    endpoints: &[Endpoint],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(endpoints.iter().map(|e| e.mode_name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(Endpoint::Ws.as_str(), "ws");
        assert_eq!(Endpoint::Ws.mode_name(), "direct");
        assert_eq!(Endpoint::Realtime.path(), "/realtime/v1/websocket");
        assert_eq!(Endpoint::Ws.other(), Endpoint::Realtime);
        assert_eq!(
            serde_json::to_string(&Endpoint::Realtime).unwrap(),
            "\"realtime\""
        );
    }
}
