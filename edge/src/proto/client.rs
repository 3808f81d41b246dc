//! Client → server frames (PROTOCOL.md §4), parsed from one JSON text and validated.
//!
//! Parsing is two steps: the JSON object into a flat record of every field any frame may carry
//! (unknown fields are ignored, as the protocol says), then that record into a typed frame,
//! checking that the fields `t` needs are there and valid. A send's `body` is kept as the
//! client's own JSON text (borrowed, not re-encoded): it is stored verbatim.

use super::error::{ErrorCode, FrameError};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::borrow::Cow;
use switchboard_store::{ClientId, ConvId, CursorKind, Seq, UserId};

/// Limits that parsing enforces (from the configuration).
#[derive(Clone, Copy, Debug)]
pub struct ParseLimits {
    /// The largest `body`, as JSON text (PROTOCOL.md `message_bytes_max`, default 16 KiB).
    pub message_bytes_max: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits { message_bytes_max: 16 * 1024 }
    }
}

/// The longest `req` a client may attach.
pub const REQ_BYTES_MAX: usize = 64;
/// The longest `device` in `hello`.
pub const DEVICE_BYTES_MAX: usize = 64;
/// The longest `kind` of a message.
pub const KIND_BYTES_MAX: usize = 32;
/// Users in one `presence` request.
pub const PRESENCE_USERS_MAX: usize = 256;
/// `sync` page sizes.
pub const SYNC_LIMIT_MAX: u16 = 1000;
pub const SYNC_LIMIT_DEFAULT: u16 = 100;

/// Where a `send` goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Conv(ConvId),
    /// A user: the dm conversation with them.
    To(UserId),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    Hello {
        token: Option<Cow<'a, str>>,
        device: Option<Cow<'a, str>>,
    },
    /// `body` is the client's JSON text of the value, exactly as sent.
    Send {
        target: Target,
        id: Cow<'a, str>,
        body: &'a str,
        kind: Cow<'a, str>,
    },
    Receipt {
        conv: ConvId,
        seq: Seq,
        kind: CursorKind,
    },
    Typing {
        conv: ConvId,
    },
    Sync {
        conv: ConvId,
        after: Seq,
        limit: u16,
    },
    Inbox {
        after_ts: Option<u64>,
    },
    Open {
        conv: ConvId,
    },
    Close {
        conv: ConvId,
    },
    Presence {
        users: Vec<UserId>,
    },
    Ping,
}

/// A parsed frame and the `req` to echo in its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub frame: ClientFrame<'a>,
    pub req: Option<Cow<'a, str>>,
}

/// Every field any client frame carries, all optional: what both encodings decode into before
/// one validation turns it into a [`ClientFrame`].
#[derive(Deserialize, Default)]
pub(super) struct Wire<'a> {
    #[serde(borrow)]
    pub(super) t: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) req: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) token: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) device: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) conv: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) to: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) kind: Option<Cow<'a, str>>,
    /// `null` is a body like any other, so it must not read as "absent".
    #[serde(borrow, default, deserialize_with = "present")]
    pub(super) body: Option<&'a RawValue>,
    #[serde(default)]
    pub(super) seq: Option<u64>,
    #[serde(default)]
    pub(super) after: Option<u64>,
    #[serde(default)]
    pub(super) limit: Option<u64>,
    #[serde(default)]
    pub(super) after_ts: Option<u64>,
    #[serde(borrow, default)]
    pub(super) users: Option<Vec<Cow<'a, str>>>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Parses one frame's JSON text (`switchboard.v1.json`).
pub fn parse(text: &str, limits: ParseLimits) -> Result<Request<'_>, FrameError> {
    let wire: Wire<'_> = serde_json::from_str(text).map_err(|e| FrameError {
        code: ErrorCode::BadRequest,
        message: format!("not a frame: {e}"),
        id: None,
        req: None,
        retry_after_ms: None,
    })?;
    validate(wire, limits)
}

/// Turns the fields of a frame, from either encoding, into a checked frame.
pub(super) fn validate(wire: Wire<'_>, limits: ParseLimits) -> Result<Request<'_>, FrameError> {
    let req = wire.req.clone();
    let fail = |code: ErrorCode, message: String, id: Option<&Cow<'_, str>>| FrameError {
        code,
        message,
        id: id.map(|i| i.to_string()),
        req: req.as_deref().map(str::to_string),
        retry_after_ms: None,
    };
    if req.as_ref().is_some_and(|r| r.len() > REQ_BYTES_MAX) {
        return Err(FrameError {
            code: ErrorCode::BadRequest,
            message: format!("req is over {REQ_BYTES_MAX} bytes"),
            id: None,
            req: None,
            retry_after_ms: None,
        });
    }
    let bad = |message: String| fail(ErrorCode::BadRequest, message, None);
    let conv = || -> Result<ConvId, FrameError> {
        let c = wire.conv.as_deref().ok_or_else(|| bad("conv is required".into()))?;
        ConvId::new(c).map_err(|e| bad(e.to_string()))
    };
    let t = wire.t.as_deref().ok_or_else(|| bad("t is required".into()))?;
    let frame = match t {
        "hello" => {
            if wire.device.as_ref().is_some_and(|d| d.len() > DEVICE_BYTES_MAX) {
                return Err(bad(format!("device is over {DEVICE_BYTES_MAX} bytes")));
            }
            ClientFrame::Hello { token: wire.token, device: wire.device }
        }
        "send" => {
            let id = wire.id.ok_or_else(|| bad("id is required".into()))?;
            let fail_send = |code, message: String| fail(code, message, Some(&id));
            ClientId::check(id.as_bytes()).map_err(|e| fail_send(ErrorCode::BadRequest, e.to_string()))?;
            let target = match (wire.conv.as_deref(), wire.to.as_deref()) {
                (Some(c), None) => {
                    Target::Conv(ConvId::new(c).map_err(|e| fail_send(ErrorCode::BadRequest, e.to_string()))?)
                }
                (None, Some(u)) => {
                    Target::To(UserId::new(u).map_err(|e| fail_send(ErrorCode::BadRequest, e.to_string()))?)
                }
                _ => return Err(fail_send(ErrorCode::BadRequest, "exactly one of conv and to is required".into())),
            };
            let body = wire.body.ok_or_else(|| fail_send(ErrorCode::BadRequest, "body is required".into()))?.get();
            if body.len() > limits.message_bytes_max {
                return Err(fail_send(
                    ErrorCode::TooLarge,
                    format!("body is over message_bytes_max ({} bytes)", limits.message_bytes_max),
                ));
            }
            let kind = wire.kind.unwrap_or(Cow::Borrowed("text"));
            if kind.is_empty() || kind.len() > KIND_BYTES_MAX || kind == "system" {
                return Err(fail_send(
                    ErrorCode::BadRequest,
                    format!("kind must be 1 to {KIND_BYTES_MAX} bytes, not \"system\""),
                ));
            }
            ClientFrame::Send { target, id, body, kind }
        }
        "receipt" => {
            let kind = match wire.kind.as_deref() {
                Some("delivered") => CursorKind::Delivered,
                Some("read") => CursorKind::Read,
                _ => return Err(bad("kind must be \"delivered\" or \"read\"".into())),
            };
            let seq = wire.seq.filter(|&s| s > 0).ok_or_else(|| bad("seq (≥ 1) is required".into()))?;
            ClientFrame::Receipt { conv: conv()?, seq: Seq(seq), kind }
        }
        "typing" => ClientFrame::Typing { conv: conv()? },
        "sync" => {
            let after = wire.after.ok_or_else(|| bad("after is required (0 for all)".into()))?;
            let limit = match wire.limit {
                None => SYNC_LIMIT_DEFAULT,
                Some(l @ 1..=1000) => l as u16,
                Some(_) => return Err(bad(format!("limit must be 1 to {SYNC_LIMIT_MAX}"))),
            };
            ClientFrame::Sync { conv: conv()?, after: Seq(after), limit }
        }
        "inbox" => ClientFrame::Inbox { after_ts: wire.after_ts },
        "open" => ClientFrame::Open { conv: conv()? },
        "close" => ClientFrame::Close { conv: conv()? },
        "presence" => {
            let users = wire.users.ok_or_else(|| bad("users is required".into()))?;
            if users.len() > PRESENCE_USERS_MAX {
                return Err(bad(format!("at most {PRESENCE_USERS_MAX} users")));
            }
            let users =
                users.iter().map(|u| UserId::new(u)).collect::<Result<_, _>>().map_err(|e| bad(e.to_string()))?;
            ClientFrame::Presence { users }
        }
        "ping" => ClientFrame::Ping,
        other => return Err(bad(format!("unknown frame type {other:?}"))),
    };
    Ok(Request { frame, req })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> ClientFrame<'_> {
        parse(text, ParseLimits::default()).unwrap_or_else(|e| panic!("{text}: {e:?}")).frame
    }

    fn err(text: &str) -> FrameError {
        parse(text, ParseLimits::default()).unwrap_err()
    }

    #[test]
    fn every_client_frame() {
        assert_eq!(
            ok(r#"{"t":"hello","token":"jwt","device":"phone","extra":1}"#),
            ClientFrame::Hello { token: Some("jwt".into()), device: Some("phone".into()) }
        );
        match ok(r#"{"t":"send","conv":"g1","id":"u-1","body":{"text":"hi \"you\""}}"#) {
            ClientFrame::Send { target, id, body, kind } => {
                assert_eq!(target, Target::Conv(ConvId::new("g1").unwrap()));
                assert_eq!((id.as_ref(), kind.as_ref()), ("u-1", "text"));
                assert_eq!(body, r#"{"text":"hi \"you\""}"#, "the body is the client's own text");
            }
            f => panic!("{f:?}"),
        }
        match ok(r#"{"t":"send","to":"bob","id":"x","body":null,"kind":"sticker"}"#) {
            ClientFrame::Send { target, body, kind, .. } => {
                assert_eq!(target, Target::To(UserId::new("bob").unwrap()));
                assert_eq!((body, kind.as_ref()), ("null", "sticker"));
            }
            f => panic!("{f:?}"),
        }
        assert_eq!(
            ok(r#"{"t":"receipt","conv":"g1","seq":4,"kind":"read"}"#),
            ClientFrame::Receipt { conv: ConvId::new("g1").unwrap(), seq: Seq(4), kind: CursorKind::Read }
        );
        assert_eq!(ok(r#"{"t":"typing","conv":"g1"}"#), ClientFrame::Typing { conv: ConvId::new("g1").unwrap() });
        assert_eq!(
            ok(r#"{"t":"sync","conv":"g1","after":0}"#),
            ClientFrame::Sync { conv: ConvId::new("g1").unwrap(), after: Seq(0), limit: 100 }
        );
        assert_eq!(ok(r#"{"t":"inbox"}"#), ClientFrame::Inbox { after_ts: None });
        assert_eq!(ok(r#"{"t":"inbox","after_ts":17}"#), ClientFrame::Inbox { after_ts: Some(17) });
        assert_eq!(ok(r#"{"t":"open","conv":"c"}"#), ClientFrame::Open { conv: ConvId::new("c").unwrap() });
        assert_eq!(ok(r#"{"t":"close","conv":"c"}"#), ClientFrame::Close { conv: ConvId::new("c").unwrap() });
        assert_eq!(
            ok(r#"{"t":"presence","users":["a","b"]}"#),
            ClientFrame::Presence { users: vec![UserId::new("a").unwrap(), UserId::new("b").unwrap()] }
        );
        let r = parse(r#"{"t":"ping","req":"r7"}"#, ParseLimits::default()).unwrap();
        assert_eq!((r.frame, r.req.as_deref()), (ClientFrame::Ping, Some("r7")));
    }

    #[test]
    fn bad_frames_name_the_problem_and_carry_id_or_req() {
        use ErrorCode::*;
        for (text, code) in [
            ("[]", BadRequest),
            ("not json", BadRequest),
            (r#"{"req":"x"}"#, BadRequest),
            (r#"{"t":"teleport"}"#, BadRequest),
            (r#"{"t":"send","conv":"g1","body":1}"#, BadRequest),
            (r#"{"t":"send","conv":"g1","id":"","body":1}"#, BadRequest),
            (r#"{"t":"send","id":"1","body":1}"#, BadRequest),
            (r#"{"t":"send","conv":"g1","to":"b","id":"1","body":1}"#, BadRequest),
            (r#"{"t":"send","conv":"g 1","id":"1","body":1}"#, BadRequest),
            (r#"{"t":"send","conv":"g1","id":"1"}"#, BadRequest),
            (r#"{"t":"send","conv":"g1","id":"1","body":1,"kind":"system"}"#, BadRequest),
            (r#"{"t":"receipt","conv":"g1","seq":1,"kind":"seen"}"#, BadRequest),
            (r#"{"t":"receipt","conv":"g1","seq":0,"kind":"read"}"#, BadRequest),
            (r#"{"t":"receipt","conv":"g1","seq":"1","kind":"read"}"#, BadRequest),
            (r#"{"t":"sync","conv":"g1"}"#, BadRequest),
            (r#"{"t":"sync","conv":"g1","after":0,"limit":1001}"#, BadRequest),
            (r#"{"t":"sync","conv":"g1","after":0,"limit":0}"#, BadRequest),
            (r#"{"t":"typing"}"#, BadRequest),
            (r#"{"t":"presence","users":["ok","not ok"]}"#, BadRequest),
        ] {
            assert_eq!(err(text).code, code, "{text}");
        }
        let e = err(r#"{"t":"send","conv":"g1","id":"m-9","req":"r1"}"#);
        assert_eq!((e.id.as_deref(), e.req.as_deref()), (Some("m-9"), Some("r1")));
        let e = err(r#"{"t":"sync","conv":"g1","req":"r2"}"#);
        assert_eq!((e.id, e.req.as_deref()), (None, Some("r2")));
        let many: Vec<String> = (0..257).map(|i| format!("\"u{i}\"")).collect();
        assert_eq!(err(&format!(r#"{{"t":"presence","users":[{}]}}"#, many.join(","))).code, BadRequest);
        assert_eq!(err(&format!(r#"{{"t":"ping","req":"{}"}}"#, "r".repeat(65))).code, BadRequest);
    }

    #[test]
    fn body_limit_is_too_large_and_keeps_the_id() {
        let limits = ParseLimits { message_bytes_max: 10 };
        let e = parse(r#"{"t":"send","conv":"g1","id":"big","body":"0123456789"}"#, limits).unwrap_err();
        assert_eq!((e.code, e.id.as_deref()), (ErrorCode::TooLarge, Some("big")));
        assert!(parse(r#"{"t":"send","conv":"g1","id":"ok","body":"01234567"}"#, limits).is_ok());
    }
}
