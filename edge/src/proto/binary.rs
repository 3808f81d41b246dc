//! `switchboard.v1.bin`: the compact encoding, field for field the JSON frames
//! (docs/protocol.md, "Binary encoding", has the byte tables and golden vectors).
//!
//! A frame is a type byte, then its fields in a fixed order. Integers are unsigned LEB128
//! varints; strings are a varint byte length then UTF-8; booleans one byte (0 or 1); an optional
//! field is a presence byte (0 or 1) then the field; a list is a varint count then the items.
//! A `body` is a string holding the value's JSON text, so a message reads the same in both
//! encodings. Bytes after the last field are ignored (as JSON ignores unknown fields).

use super::client::{validate, ClientFrame, ParseLimits, Request, Target, Wire};
use super::error::{ErrorCode, FrameError};
use super::server::ServerFrame;
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::value::RawValue;
use std::borrow::Cow;
use switchboard_store::CursorKind;

/// Type bytes of client frames.
pub mod client_type {
    pub const HELLO: u8 = 1;
    pub const SEND: u8 = 2;
    pub const RECEIPT: u8 = 3;
    pub const TYPING: u8 = 4;
    pub const SYNC: u8 = 5;
    pub const INBOX: u8 = 6;
    pub const OPEN: u8 = 7;
    pub const CLOSE: u8 = 8;
    pub const PRESENCE: u8 = 9;
    pub const PING: u8 = 10;
}

/// Type bytes of server frames.
pub mod server_type {
    pub const WELCOME: u8 = 64;
    pub const ACK: u8 = 65;
    pub const MSG: u8 = 66;
    pub const RECEIPT: u8 = 67;
    pub const TYPING: u8 = 68;
    pub const SYNCED: u8 = 69;
    pub const GAP: u8 = 70;
    pub const INBOX: u8 = 71;
    pub const NOTIFY: u8 = 72;
    pub const PRESENCE: u8 = 73;
    pub const JOINED: u8 = 74;
    pub const LEFT: u8 = 75;
    pub const RECONNECT: u8 = 76;
    pub const ERROR: u8 = 77;
    pub const PONG: u8 = 78;
    pub const PING: u8 = 79;
}

fn bad(message: &str) -> FrameError {
    FrameError { code: ErrorCode::BadRequest, message: message.to_string(), id: None, req: None, retry_after_ms: None }
}

/// Reads fields without ever reading past the end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, FrameError> {
        let (&b, rest) = self.bytes.split_first().ok_or_else(|| bad("frame ends early"))?;
        self.bytes = rest;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, FrameError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= ((b & 0x7F) as u64)
                .checked_shl(shift)
                .filter(|_| shift < 63 || b <= 1)
                .ok_or_else(|| bad("varint too long"))?;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }

    fn string(&mut self) -> Result<Cow<'a, str>, FrameError> {
        let n = usize::try_from(self.varint()?).map_err(|_| bad("string too long"))?;
        if n > self.bytes.len() {
            return Err(bad("frame ends early"));
        }
        let (s, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        std::str::from_utf8(s).map(Cow::Borrowed).map_err(|_| bad("string is not UTF-8"))
    }

    fn present(&mut self) -> Result<bool, FrameError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(bad("presence byte is not 0 or 1")),
        }
    }

    fn opt_string(&mut self) -> Result<Option<Cow<'a, str>>, FrameError> {
        if self.present()? {
            self.string().map(Some)
        } else {
            Ok(None)
        }
    }

    fn opt_varint(&mut self) -> Result<Option<u64>, FrameError> {
        if self.present()? {
            self.varint().map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Parses one binary client frame.
pub fn parse_binary(bytes: &[u8], limits: ParseLimits) -> Result<Request<'_>, FrameError> {
    use client_type::*;
    let mut r = Reader { bytes };
    let mut w = Wire::default();
    let t = r.u8()?;
    let name = match t {
        HELLO => {
            w.token = r.opt_string()?;
            w.device = r.opt_string()?;
            "hello"
        }
        SEND => {
            w.conv = r.opt_string()?;
            w.to = r.opt_string()?;
            w.id = Some(r.string()?);
            let body = r.string()?;
            let Cow::Borrowed(body) = body else { unreachable!("strings borrow from the frame") };
            let raw: &RawValue = serde_json::from_str(body).map_err(|_| bad("body is not one JSON value"))?;
            w.body = Some(raw);
            w.kind = r.opt_string()?;
            "send"
        }
        RECEIPT => {
            w.conv = Some(r.string()?);
            w.seq = Some(r.varint()?);
            w.kind = Some(r.string()?);
            "receipt"
        }
        TYPING => {
            w.conv = Some(r.string()?);
            "typing"
        }
        SYNC => {
            w.conv = Some(r.string()?);
            w.after = Some(r.varint()?);
            w.limit = r.opt_varint()?;
            "sync"
        }
        INBOX => {
            w.after_ts = r.opt_varint()?;
            "inbox"
        }
        OPEN | CLOSE => {
            w.conv = Some(r.string()?);
            if t == OPEN {
                "open"
            } else {
                "close"
            }
        }
        PRESENCE => {
            let n = r.varint()?;
            // Each user takes at least one byte: a count beyond what is left is a lie.
            if n > r.bytes.len() as u64 {
                return Err(bad("frame ends early"));
            }
            w.users = Some((0..n).map(|_| r.string()).collect::<Result<_, _>>()?);
            "presence"
        }
        PING => "ping",
        _ => return Err(bad("unknown frame type")),
    };
    w.t = Some(Cow::Borrowed(name));
    w.req = r.opt_string()?;
    validate(w, limits)
}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8(v as u8 | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn put_str(out: &mut BytesMut, s: &str) {
    put_varint(out, s.len() as u64);
    out.put_slice(s.as_bytes());
}

fn put_opt_str(out: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => {
            out.put_u8(1);
            put_str(out, s);
        }
        None => out.put_u8(0),
    }
}

fn put_opt_varint(out: &mut BytesMut, v: Option<u64>) {
    match v {
        Some(v) => {
            out.put_u8(1);
            put_varint(out, v);
        }
        None => out.put_u8(0),
    }
}

/// Encodes a server frame.
pub fn encode_server(frame: &ServerFrame<'_>) -> Bytes {
    use server_type::*;
    let mut o = BytesMut::with_capacity(64);
    match frame {
        ServerFrame::Welcome { user, session, node, heartbeat_ms, req, nodes } => {
            o.put_u8(WELCOME);
            put_str(&mut o, user);
            put_str(&mut o, session);
            put_str(&mut o, node);
            put_varint(&mut o, *heartbeat_ms);
            put_opt_str(&mut o, *req);
            put_varint(&mut o, nodes.len() as u64);
            for url in nodes.iter() {
                put_str(&mut o, url);
            }
        }
        ServerFrame::Ack { id, conv, seq, ts, dup } => {
            o.put_u8(ACK);
            put_str(&mut o, id);
            put_str(&mut o, conv);
            put_varint(&mut o, *seq);
            put_varint(&mut o, *ts);
            o.put_u8(*dup as u8);
        }
        ServerFrame::Msg { conv, seq, id, from, ts, kind, body } => {
            o.put_u8(MSG);
            put_str(&mut o, conv);
            put_varint(&mut o, *seq);
            put_str(&mut o, id);
            put_str(&mut o, from);
            put_varint(&mut o, *ts);
            put_str(&mut o, kind);
            put_str(&mut o, body.get());
        }
        ServerFrame::Receipt { conv, user, seq, kind } => {
            o.put_u8(RECEIPT);
            put_str(&mut o, conv);
            put_str(&mut o, user);
            put_varint(&mut o, *seq);
            put_str(&mut o, kind);
        }
        ServerFrame::Typing { conv, user } => {
            o.put_u8(TYPING);
            put_str(&mut o, conv);
            put_str(&mut o, user);
        }
        ServerFrame::Synced { conv, upto, head, more, req } => {
            o.put_u8(SYNCED);
            put_str(&mut o, conv);
            put_varint(&mut o, *upto);
            put_varint(&mut o, *head);
            o.put_u8(*more as u8);
            put_opt_str(&mut o, *req);
        }
        ServerFrame::Gap { conv, from, to } => {
            o.put_u8(GAP);
            put_str(&mut o, conv);
            put_varint(&mut o, *from);
            put_varint(&mut o, *to);
        }
        ServerFrame::Inbox { convs, req } => {
            o.put_u8(INBOX);
            put_varint(&mut o, convs.len() as u64);
            for c in convs {
                put_str(&mut o, c.conv);
                put_str(&mut o, c.kind);
                put_varint(&mut o, c.head);
                put_varint(&mut o, c.delivered);
                put_varint(&mut o, c.read);
            }
            put_opt_str(&mut o, *req);
        }
        ServerFrame::Notify { conv, head } => {
            o.put_u8(NOTIFY);
            put_str(&mut o, conv);
            put_varint(&mut o, *head);
        }
        ServerFrame::Presence { users, req } => {
            o.put_u8(PRESENCE);
            put_varint(&mut o, users.len() as u64);
            for u in users {
                put_str(&mut o, u.user);
                o.put_u8(u.online as u8);
                put_opt_varint(&mut o, u.last_seen);
            }
            put_opt_str(&mut o, *req);
        }
        ServerFrame::Joined { conv, kind } | ServerFrame::Left { conv, kind } => {
            o.put_u8(if matches!(frame, ServerFrame::Joined { .. }) { JOINED } else { LEFT });
            put_str(&mut o, conv);
            put_str(&mut o, kind);
        }
        ServerFrame::Reconnect { after_ms } => {
            o.put_u8(RECONNECT);
            put_varint(&mut o, *after_ms);
        }
        ServerFrame::Error { code, message, id, req, retry_after_ms } => {
            o.put_u8(ERROR);
            put_str(&mut o, code.as_str());
            put_str(&mut o, message);
            put_opt_str(&mut o, *id);
            put_opt_str(&mut o, *req);
            put_opt_varint(&mut o, *retry_after_ms);
        }
        ServerFrame::Pong { req } => {
            o.put_u8(PONG);
            put_opt_str(&mut o, *req);
        }
        ServerFrame::Ping => o.put_u8(PING),
    }
    o.freeze()
}

/// A binary server frame read back as the JSON object its JSON encoding is, field for field
/// (absent options and an empty `nodes` left out, as the JSON leaves them out): for clients
/// and tests that read both encodings with one code path. Bad input is an error, never a
/// panic.
pub fn server_frame_json(bytes: &[u8]) -> Result<serde_json::Value, FrameError> {
    use serde_json::{Map, Value};
    use server_type::*;
    let mut r = Reader { bytes };
    let mut o = Map::new();
    let s = |r: &mut Reader| r.string().map(|s| Value::String(s.into_owned()));
    let n = |r: &mut Reader| r.varint().map(Value::from);
    let flag = |r: &mut Reader| r.present().map(Value::Bool);
    let os = |r: &mut Reader| r.opt_string().map(|v| v.map(|v| Value::String(v.into_owned())));
    // Optional fields: present, or left out.
    fn opt(o: &mut Map<String, Value>, name: &str, v: Option<Value>) {
        if let Some(v) = v {
            o.insert(name.into(), v);
        }
    }
    let t = match r.u8()? {
        WELCOME => {
            for f in ["user", "session", "node"] {
                o.insert(f.into(), s(&mut r)?);
            }
            o.insert("heartbeat_ms".into(), n(&mut r)?);
            opt(&mut o, "req", os(&mut r)?);
            let count = r.varint()?;
            let mut nodes = Vec::new();
            for _ in 0..count {
                nodes.push(s(&mut r)?);
            }
            opt(&mut o, "nodes", (!nodes.is_empty()).then_some(Value::Array(nodes)));
            "welcome"
        }
        ACK => {
            o.insert("id".into(), s(&mut r)?);
            o.insert("conv".into(), s(&mut r)?);
            o.insert("seq".into(), n(&mut r)?);
            o.insert("ts".into(), n(&mut r)?);
            o.insert("dup".into(), flag(&mut r)?);
            "ack"
        }
        MSG => {
            o.insert("conv".into(), s(&mut r)?);
            o.insert("seq".into(), n(&mut r)?);
            for f in ["id", "from"] {
                o.insert(f.into(), s(&mut r)?);
            }
            o.insert("ts".into(), n(&mut r)?);
            o.insert("kind".into(), s(&mut r)?);
            let body = r.string()?;
            o.insert("body".into(), serde_json::from_str(&body).map_err(|_| bad("body is not JSON"))?);
            "msg"
        }
        RECEIPT => {
            o.insert("conv".into(), s(&mut r)?);
            o.insert("user".into(), s(&mut r)?);
            o.insert("seq".into(), n(&mut r)?);
            o.insert("kind".into(), s(&mut r)?);
            "receipt"
        }
        TYPING => {
            o.insert("conv".into(), s(&mut r)?);
            o.insert("user".into(), s(&mut r)?);
            "typing"
        }
        SYNCED => {
            o.insert("conv".into(), s(&mut r)?);
            o.insert("upto".into(), n(&mut r)?);
            o.insert("head".into(), n(&mut r)?);
            o.insert("more".into(), flag(&mut r)?);
            opt(&mut o, "req", os(&mut r)?);
            "synced"
        }
        GAP => {
            o.insert("conv".into(), s(&mut r)?);
            o.insert("from".into(), n(&mut r)?);
            o.insert("to".into(), n(&mut r)?);
            "gap"
        }
        INBOX => {
            let count = r.varint()?;
            let mut convs = Vec::new();
            for _ in 0..count {
                let mut c = Map::new();
                c.insert("conv".into(), s(&mut r)?);
                c.insert("kind".into(), s(&mut r)?);
                for f in ["head", "delivered", "read"] {
                    c.insert(f.into(), n(&mut r)?);
                }
                convs.push(Value::Object(c));
            }
            o.insert("convs".into(), Value::Array(convs));
            opt(&mut o, "req", os(&mut r)?);
            "inbox"
        }
        NOTIFY => {
            o.insert("conv".into(), s(&mut r)?);
            o.insert("head".into(), n(&mut r)?);
            "notify"
        }
        PRESENCE => {
            let count = r.varint()?;
            let mut users = Vec::new();
            for _ in 0..count {
                let mut u = Map::new();
                u.insert("user".into(), s(&mut r)?);
                u.insert("online".into(), flag(&mut r)?);
                opt(&mut u, "last_seen", r.opt_varint()?.map(Value::from));
                users.push(Value::Object(u));
            }
            o.insert("users".into(), Value::Array(users));
            opt(&mut o, "req", os(&mut r)?);
            "presence"
        }
        t @ (JOINED | LEFT) => {
            o.insert("conv".into(), s(&mut r)?);
            o.insert("kind".into(), s(&mut r)?);
            if t == JOINED {
                "joined"
            } else {
                "left"
            }
        }
        RECONNECT => {
            o.insert("after_ms".into(), n(&mut r)?);
            "reconnect"
        }
        ERROR => {
            o.insert("code".into(), s(&mut r)?);
            o.insert("message".into(), s(&mut r)?);
            for f in ["id", "req"] {
                opt(&mut o, f, os(&mut r)?);
            }
            opt(&mut o, "retry_after_ms", r.opt_varint()?.map(Value::from));
            "error"
        }
        PONG => {
            opt(&mut o, "req", os(&mut r)?);
            "pong"
        }
        PING => "ping",
        other => return Err(bad(&format!("unknown server frame type {other}"))),
    };
    // The tag: where it stands in the map does not matter to a reader, nor to equality.
    o.insert("t".into(), Value::String(t.into()));
    Ok(Value::Object(o))
}

/// Encodes a client frame (for clients, the bench and tests).
pub fn encode_client(frame: &ClientFrame<'_>, req: Option<&str>) -> Bytes {
    use client_type::*;
    let mut o = BytesMut::with_capacity(64);
    match frame {
        ClientFrame::Hello { token, device } => {
            o.put_u8(HELLO);
            put_opt_str(&mut o, token.as_deref());
            put_opt_str(&mut o, device.as_deref());
        }
        ClientFrame::Send { target, id, body, kind } => {
            o.put_u8(SEND);
            let (conv, to) = match target {
                Target::Conv(c) => (Some(c.as_str()), None),
                Target::To(u) => (None, Some(u.as_str())),
            };
            put_opt_str(&mut o, conv);
            put_opt_str(&mut o, to);
            put_str(&mut o, id);
            put_str(&mut o, body);
            put_opt_str(&mut o, (kind != "text").then_some(kind.as_ref()));
        }
        ClientFrame::Receipt { conv, seq, kind } => {
            o.put_u8(RECEIPT);
            put_str(&mut o, conv.as_str());
            put_varint(&mut o, seq.0);
            put_str(&mut o, if *kind == CursorKind::Read { "read" } else { "delivered" });
        }
        ClientFrame::Typing { conv } => {
            o.put_u8(TYPING);
            put_str(&mut o, conv.as_str());
        }
        ClientFrame::Sync { conv, after, limit } => {
            o.put_u8(SYNC);
            put_str(&mut o, conv.as_str());
            put_varint(&mut o, after.0);
            put_opt_varint(&mut o, Some(*limit as u64));
        }
        ClientFrame::Inbox { after_ts } => {
            o.put_u8(INBOX);
            put_opt_varint(&mut o, *after_ts);
        }
        ClientFrame::Open { conv } | ClientFrame::Close { conv } => {
            o.put_u8(if matches!(frame, ClientFrame::Open { .. }) { OPEN } else { CLOSE });
            put_str(&mut o, conv.as_str());
        }
        ClientFrame::Presence { users } => {
            o.put_u8(PRESENCE);
            put_varint(&mut o, users.len() as u64);
            for u in users {
                put_str(&mut o, u.as_str());
            }
        }
        ClientFrame::Ping => o.put_u8(PING),
    }
    put_opt_str(&mut o, req);
    o.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::client::parse;
    use crate::proto::server::{InboxItem, PresenceItem};
    use proptest::prelude::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
    }

    /// The golden vectors of docs/protocol.md.
    #[test]
    fn golden_vectors() {
        let l = ParseLimits::default();
        let send =
            parse_binary(&[2, 1, 2, b'g', b'1', 0, 2, b'm', b'1', 4, b'"', b'h', b'i', b'"', 0, 1, 2, b'r', b'1'], l)
                .unwrap();
        let json = parse(r#"{"t":"send","conv":"g1","id":"m1","body":"hi","req":"r1"}"#, l).unwrap();
        assert_eq!(send, json);
        let body = RawValue::from_string(r#"{"text":"hi"}"#.into()).unwrap();
        let msg = ServerFrame::Msg { conv: "g1", seq: 300, id: "m1", from: "bob", ts: 1, kind: "text", body: &body };
        assert_eq!(
            hex(&encode_server(&msg)),
            "42 02 67 31 ac 02 02 6d 31 03 62 6f 62 01 04 74 65 78 74 0d 7b 22 74 65 78 74 22 3a 22 68 69 22 7d"
        );
        let ack = ServerFrame::Ack { id: "m1", conv: "g1", seq: 5, ts: 1700000000000, dup: true };
        assert_eq!(hex(&encode_server(&ack)), "41 02 6d 31 02 67 31 05 80 d0 95 ff bc 31 01");
        assert_eq!(hex(&encode_server(&ServerFrame::Pong { req: Some("r") })), "4e 01 01 72");
        assert_eq!(hex(&encode_server(&ServerFrame::Ping)), "4f");
        assert_eq!(hex(&encode_client(&ClientFrame::Ping, None)), "0a 00");
    }

    #[test]
    fn every_client_frame_reads_the_same_in_both_encodings() {
        let l = ParseLimits::default();
        for json in [
            r#"{"t":"hello","token":"jwt","device":"phone","req":"a"}"#,
            r#"{"t":"hello"}"#,
            r#"{"t":"send","to":"bob","id":"x","body":{"a":[1,2,null]},"kind":"sticker"}"#,
            r#"{"t":"send","conv":"g1","id":"y","body":null}"#,
            r#"{"t":"receipt","conv":"g1","seq":9,"kind":"delivered"}"#,
            r#"{"t":"typing","conv":"g1"}"#,
            r#"{"t":"sync","conv":"g1","after":12,"limit":1000,"req":"s"}"#,
            r#"{"t":"inbox","after_ts":5}"#,
            r#"{"t":"open","conv":"ch"}"#,
            r#"{"t":"close","conv":"ch"}"#,
            r#"{"t":"presence","users":["a","b","c"]}"#,
            r#"{"t":"ping"}"#,
        ] {
            let from_json = parse(json, l).unwrap();
            let bin = encode_client(&from_json.frame, from_json.req.as_deref());
            assert_eq!(parse_binary(&bin, l).unwrap(), from_json, "{json}");
        }
    }

    #[test]
    fn every_server_frame_encodes() {
        let body = RawValue::from_string("1".into()).unwrap();
        let frames = [
            ServerFrame::Welcome { user: "a", session: "s", node: "n", heartbeat_ms: 30000, req: None, nodes: &[] },
            ServerFrame::Msg { conv: "c", seq: 1, id: "i", from: "a", ts: 2, kind: "text", body: &body },
            ServerFrame::Receipt { conv: "c", user: "u", seq: 3, kind: "read" },
            ServerFrame::Typing { conv: "c", user: "u" },
            ServerFrame::Synced { conv: "c", upto: 1, head: 2, more: false, req: Some("q") },
            ServerFrame::Gap { conv: "c", from: 1, to: 2 },
            ServerFrame::Inbox {
                convs: vec![InboxItem { conv: "c", kind: "dm", head: 1, delivered: 1, read: 0 }],
                req: None,
            },
            ServerFrame::Notify { conv: "c", head: 4 },
            ServerFrame::Presence {
                users: vec![PresenceItem { user: "u", online: false, last_seen: Some(9) }],
                req: None,
            },
            ServerFrame::Joined { conv: "c", kind: "group" },
            ServerFrame::Left { conv: "c", kind: "group" },
            ServerFrame::Reconnect { after_ms: 250 },
            ServerFrame::Error {
                code: ErrorCode::TooLarge,
                message: "m",
                id: Some("i"),
                req: None,
                retry_after_ms: None,
            },
            ServerFrame::Error {
                code: ErrorCode::Unavailable,
                message: "m",
                id: None,
                req: None,
                retry_after_ms: Some(300),
            },
        ];
        let types: Vec<u8> = frames.iter().map(|f| encode_server(f)[0]).collect();
        assert_eq!(types, vec![64, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 77]);
        assert_eq!(hex(&encode_server(&frames[12])), "4d 09 74 6f 6f 5f 6c 61 72 67 65 01 6d 01 01 69 00 00");
        let nodes = ["ws://b/v1/ws".to_string()];
        let welcome =
            ServerFrame::Welcome { user: "a", session: "s", node: "n", heartbeat_ms: 1, req: None, nodes: &nodes };
        assert_eq!(
            hex(&encode_server(&welcome)),
            "40 01 61 01 73 01 6e 01 00 01 0c 77 73 3a 2f 2f 62 2f 76 31 2f 77 73"
        );
        assert_eq!(hex(&encode_server(&frames[13])), "4d 0b 75 6e 61 76 61 69 6c 61 62 6c 65 01 6d 00 00 01 ac 02");
    }

    #[test]
    fn malformed_binary_is_bad_request() {
        let l = ParseLimits::default();
        for b in [
            &[][..],
            &[99],
            &[2, 1],
            &[2, 1, 200, b'g'],
            &[2, 1, 2, b'g', b'1', 0, 2, b'm', b'1', 3, b'{', b'x', b'}', 0],
            &[9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
            &[9, 200, 1],
            &[10, 2],
            &[4, 2, 0xff, 0xfe],
        ] {
            assert_eq!(parse_binary(b, l).unwrap_err().code, ErrorCode::BadRequest, "{b:?}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_binary(&b, ParseLimits::default());
        }

        #[test]
        fn varints_roundtrip(v: u64) {
            let mut o = BytesMut::new();
            put_varint(&mut o, v);
            prop_assert_eq!(Reader { bytes: &o }.varint().unwrap(), v);
        }
    }
}
