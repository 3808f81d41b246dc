//! Server → client frames (PROTOCOL.md §4), encoded once into a `Bytes` that every recipient's
//! connection can queue without a copy.

use super::error::ErrorCode;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

/// One of a user's conversations, in an `inbox` answer.
#[derive(Clone, Debug, Serialize)]
pub struct InboxItem<'a> {
    pub conv: &'a str,
    pub kind: &'a str,
    pub head: u64,
    pub delivered: u64,
    pub read: u64,
}

/// One user's presence.
#[derive(Clone, Debug, Serialize)]
pub struct PresenceItem<'a> {
    pub user: &'a str,
    pub online: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
}

/// Every frame the server sends. `req` echoes the client's `req` in answers to requests that
/// carry no `id`.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Welcome {
        user: &'a str,
        session: &'a str,
        node: &'a str,
        heartbeat_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<&'a str>,
        /// The client URLs of the cluster's other live nodes, for reconnecting elsewhere.
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        nodes: &'a [String],
    },
    Ack {
        id: &'a str,
        conv: &'a str,
        seq: u64,
        ts: u64,
        dup: bool,
    },
    Msg {
        conv: &'a str,
        seq: u64,
        id: &'a str,
        from: &'a str,
        ts: u64,
        kind: &'a str,
        /// The sender's JSON text, as stored.
        body: &'a RawValue,
    },
    Receipt {
        conv: &'a str,
        user: &'a str,
        seq: u64,
        kind: &'a str,
    },
    Typing {
        conv: &'a str,
        user: &'a str,
    },
    Synced {
        conv: &'a str,
        upto: u64,
        head: u64,
        more: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<&'a str>,
    },
    Gap {
        conv: &'a str,
        from: u64,
        to: u64,
    },
    Inbox {
        convs: Vec<InboxItem<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<&'a str>,
    },
    Notify {
        conv: &'a str,
        head: u64,
    },
    Presence {
        users: Vec<PresenceItem<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<&'a str>,
    },
    Joined {
        conv: &'a str,
        kind: &'a str,
    },
    Left {
        conv: &'a str,
        kind: &'a str,
    },
    Reconnect {
        after_ms: u64,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<&'a str>,
        /// With `rate_limited` and `unavailable`: when a retry may succeed.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<&'a str>,
    },
    /// The heartbeat on QUIC, where there are no WebSocket pings (PROTOCOL.md §3). Clients
    /// need not answer: the transport's acknowledgements show they are there.
    Ping,
}

impl ServerFrame<'_> {
    /// The frame as one JSON text.
    pub fn to_json(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("server frames always serialize"))
    }

    /// The frame in the connection's encoding.
    pub fn encode(&self, encoding: crate::ws::handshake::Encoding) -> Bytes {
        match encoding {
            crate::ws::handshake::Encoding::Json => self.to_json(),
            crate::ws::handshake::Encoding::Binary => super::binary::encode_server(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden texts: what outside clients, written from PROTOCOL.md alone, will receive.
    #[test]
    fn golden_json() {
        let body = RawValue::from_string(r#"{"text":"hi"}"#.to_string()).unwrap();
        let other_nodes = ["ws://10.0.0.2:7400/v1/ws".to_string()];
        let cases: Vec<(ServerFrame, &str)> = vec![
            (
                ServerFrame::Welcome {
                    user: "alice",
                    session: "s1",
                    node: "n1",
                    heartbeat_ms: 30000,
                    req: None,
                    nodes: &[],
                },
                r#"{"t":"welcome","user":"alice","session":"s1","node":"n1","heartbeat_ms":30000}"#,
            ),
            (
                ServerFrame::Welcome {
                    user: "alice",
                    session: "s1",
                    node: "n1",
                    heartbeat_ms: 30000,
                    req: None,
                    nodes: &other_nodes,
                },
                r#"{"t":"welcome","user":"alice","session":"s1","node":"n1","heartbeat_ms":30000,"nodes":["ws://10.0.0.2:7400/v1/ws"]}"#,
            ),
            (
                ServerFrame::Ack { id: "m1", conv: "dm:alice:bob", seq: 3, ts: 1700, dup: false },
                r#"{"t":"ack","id":"m1","conv":"dm:alice:bob","seq":3,"ts":1700,"dup":false}"#,
            ),
            (
                ServerFrame::Msg { conv: "g1", seq: 4, id: "m2", from: "bob", ts: 1701, kind: "text", body: &body },
                r#"{"t":"msg","conv":"g1","seq":4,"id":"m2","from":"bob","ts":1701,"kind":"text","body":{"text":"hi"}}"#,
            ),
            (
                ServerFrame::Receipt { conv: "g1", user: "bob", seq: 4, kind: "read" },
                r#"{"t":"receipt","conv":"g1","user":"bob","seq":4,"kind":"read"}"#,
            ),
            (ServerFrame::Typing { conv: "g1", user: "bob" }, r#"{"t":"typing","conv":"g1","user":"bob"}"#),
            (
                ServerFrame::Synced { conv: "g1", upto: 100, head: 250, more: true, req: Some("r1") },
                r#"{"t":"synced","conv":"g1","upto":100,"head":250,"more":true,"req":"r1"}"#,
            ),
            (ServerFrame::Gap { conv: "g1", from: 1, to: 9 }, r#"{"t":"gap","conv":"g1","from":1,"to":9}"#),
            (
                ServerFrame::Inbox {
                    convs: vec![InboxItem { conv: "g1", kind: "group", head: 4, delivered: 4, read: 2 }],
                    req: None,
                },
                r#"{"t":"inbox","convs":[{"conv":"g1","kind":"group","head":4,"delivered":4,"read":2}]}"#,
            ),
            (ServerFrame::Notify { conv: "ch", head: 77 }, r#"{"t":"notify","conv":"ch","head":77}"#),
            (
                ServerFrame::Presence {
                    users: vec![
                        PresenceItem { user: "a", online: true, last_seen: None },
                        PresenceItem { user: "b", online: false, last_seen: Some(1690) },
                    ],
                    req: None,
                },
                r#"{"t":"presence","users":[{"user":"a","online":true},{"user":"b","online":false,"last_seen":1690}]}"#,
            ),
            (ServerFrame::Joined { conv: "g1", kind: "group" }, r#"{"t":"joined","conv":"g1","kind":"group"}"#),
            (ServerFrame::Left { conv: "g1", kind: "group" }, r#"{"t":"left","conv":"g1","kind":"group"}"#),
            (ServerFrame::Reconnect { after_ms: 500 }, r#"{"t":"reconnect","after_ms":500}"#),
            (
                ServerFrame::Error {
                    code: ErrorCode::Conflict,
                    message: "id reused",
                    id: Some("m1"),
                    req: None,
                    retry_after_ms: None,
                },
                r#"{"t":"error","code":"conflict","message":"id reused","id":"m1"}"#,
            ),
            (
                ServerFrame::Error {
                    code: ErrorCode::RateLimited,
                    message: "slow down",
                    id: Some("m2"),
                    req: None,
                    retry_after_ms: Some(120),
                },
                r#"{"t":"error","code":"rate_limited","message":"slow down","id":"m2","retry_after_ms":120}"#,
            ),
            (ServerFrame::Pong { req: None }, r#"{"t":"pong"}"#),
            (ServerFrame::Ping, r#"{"t":"ping"}"#),
        ];
        for (frame, want) in cases {
            assert_eq!(std::str::from_utf8(&frame.to_json()).unwrap(), want);
            // The binary encoding carries the same fields: read back, it is the same object.
            let json: serde_json::Value = serde_json::from_str(want).unwrap();
            let binary = super::super::binary::encode_server(&frame);
            assert_eq!(super::super::binary::server_frame_json(&binary).unwrap(), json, "{want}");
            // Cut short anywhere, it is an error, not a panic.
            for cut in 0..binary.len() {
                assert!(super::super::binary::server_frame_json(&binary[..cut]).is_err(), "{want} cut at {cut}");
            }
        }
    }
}
