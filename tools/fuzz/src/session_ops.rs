//! A client connection's session, driven by sequences of frames (quinn's `streams.rs` style:
//! an `Arbitrary` list of operations): well-formed frames of every kind, raw bytes, tokens good
//! and bad, and time passing.
//!
//! Whatever the order: nothing is routed before a successful `hello`, `welcome` comes at most
//! once, the session closes only with the codes PROTOCOL.md §5 gives it (4001 before `hello`,
//! 1007, 4008), a routed `send` carries the id and the body text its frame had, and sends
//! routed never outrun the rate limit's burst plus its rate over the time that passed.

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use serde_json::json;
use switchboard_edge::auth::{mint_hs256, Verifier};
use switchboard_edge::proto::binary::encode_client;
use switchboard_edge::proto::{ClientFrame, ParseLimits, Target};
use switchboard_edge::session::{Command, Session, SessionLimits, Step};
use switchboard_edge::ws::handshake::Encoding;
use switchboard_store::{ConvId, CursorKind, Seq, UserId};

const SECRET: &[u8] = b"fuzz secret";
const LIMITS: SessionLimits = SessionLimits {
    parse: ParseLimits { message_bytes_max: 512 },
    sends_per_s: 5,
    sends_burst: 3,
    typing_per_s: 2,
    syncs_per_s: 2,
    rate_refusals_max: 4,
};

#[derive(Arbitrary, Debug, Clone)]
enum Token {
    Valid,
    Expired,
    OtherKey,
    Garbage(String),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Hello { token: Option<Token>, req: bool },
    Send { conv: u8, to: bool, id: u8, body: u8 },
    Sync { conv: u8, after: u16, limit: u16 },
    Receipt { conv: u8, seq: u16, read: bool },
    Typing { conv: u8 },
    Inbox { after_ts: Option<u32> },
    Presence { users: u8 },
    Ping { req: bool },
    Raw { binary: bool, bytes: Vec<u8> },
    Wait { ms: u16 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    binary: bool,
    upgrade_token: Option<Token>,
    ops: Vec<Op>,
}

/// The session's clock starts here (Unix milliseconds); tokens are minted against it, so a
/// run reads no wall clock and replays the same.
const START_MS: u64 = 1_800_000_000_000;

fn token(t: &Token) -> String {
    let user = UserId::new("ann").unwrap();
    let now = START_MS / 1000;
    match t {
        Token::Valid => mint_hs256(SECRET, &user, now, 86_400, false),
        Token::Expired => mint_hs256(SECRET, &user, 1_000, 60, false),
        Token::OtherKey => mint_hs256(b"another secret", &user, now, 86_400, false),
        Token::Garbage(s) => s.clone(),
    }
}

fn conv(i: u8) -> ConvId {
    ConvId::new(&format!("g:c{}", i % 4)).unwrap()
}

/// The frame raw bytes are in the encoding they are sent in, if they are one.
fn parsed(bytes: &[u8], binary: bool) -> Option<ClientFrame<'_>> {
    let limits = LIMITS.parse;
    if binary {
        switchboard_edge::proto::binary::parse_binary(bytes, limits).ok().map(|r| r.frame)
    } else {
        std::str::from_utf8(bytes).ok().and_then(|t| switchboard_edge::proto::parse(t, limits).ok()).map(|r| r.frame)
    }
}

/// The frame an op stands for, the same frame as JSON, and the `req` it carries.
fn frame(op: &Op) -> Option<(ClientFrame<'static>, serde_json::Value, Option<&'static str>)> {
    let mut req = None;
    let (frame, json) = match *op {
        Op::Hello { ref token, req: with_req } => {
            let t = token.as_ref().map(self::token);
            let mut v = json!({"t": "hello"});
            if let Some(t) = &t {
                v["token"] = json!(t);
            }
            if with_req {
                v["req"] = json!("h");
                req = Some("h");
            }
            (ClientFrame::Hello { token: t.map(Into::into), device: None }, v)
        }
        Op::Send { conv: c, to, id, body } => {
            let id = format!("m{id}");
            let text: &'static str = ["1", "\"hi\"", "{\"a\":[1,2]}", "null"][body as usize % 4];
            let (target, mut v) = if to {
                let user = UserId::new(["bob", "cy"][c as usize % 2]).unwrap();
                (Target::To(user.clone()), json!({"t": "send", "to": user.as_str()}))
            } else {
                (Target::Conv(conv(c)), json!({"t": "send", "conv": conv(c).as_str()}))
            };
            v["id"] = json!(id);
            v["body"] = serde_json::from_str(text).unwrap();
            (ClientFrame::Send { target, id: id.into(), body: text, kind: "text".into() }, v)
        }
        Op::Sync { conv: c, after, limit } => {
            let limit = limit % 1000 + 1;
            (
                ClientFrame::Sync { conv: conv(c), after: Seq(after.into()), limit },
                json!({"t": "sync", "conv": conv(c).as_str(), "after": after, "limit": limit}),
            )
        }
        Op::Receipt { conv: c, seq, read } => {
            let kind = if read { CursorKind::Read } else { CursorKind::Delivered };
            (
                ClientFrame::Receipt { conv: conv(c), seq: Seq(seq.into()), kind },
                json!({"t": "receipt", "conv": conv(c).as_str(), "seq": seq, "kind": if read { "read" } else { "delivered" }}),
            )
        }
        Op::Typing { conv: c } => {
            (ClientFrame::Typing { conv: conv(c) }, json!({"t": "typing", "conv": conv(c).as_str()}))
        }
        Op::Inbox { after_ts } => {
            let mut v = json!({"t": "inbox"});
            if let Some(ts) = after_ts {
                v["after_ts"] = json!(ts);
            }
            (ClientFrame::Inbox { after_ts: after_ts.map(u64::from) }, v)
        }
        Op::Presence { users } => {
            let list: Vec<UserId> = (0..users % 4).map(|i| UserId::new(&format!("u{i}")).unwrap()).collect();
            let names: Vec<&str> = list.iter().map(UserId::as_str).collect();
            (ClientFrame::Presence { users: list.clone() }, json!({"t": "presence", "users": names}))
        }
        Op::Ping { req: with_req } => {
            let mut v = json!({"t": "ping"});
            if with_req {
                v["req"] = json!("p");
                req = Some("p");
            }
            (ClientFrame::Ping, v)
        }
        Op::Raw { .. } | Op::Wait { .. } => return None,
    };
    Some((frame, json, req))
}

pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let verifier = Verifier::hs256(SECRET);
    let encoding = if input.binary { Encoding::Binary } else { Encoding::Json };
    let from_upgrade = input.upgrade_token.as_ref().map(|t| verifier.verify(&token(t), START_MS / 1000));
    let mut now_ms = START_MS;
    let mut session = Session::new(encoding, LIMITS, from_upgrade, now_ms);
    let mut ready = false;
    let mut sends = 0u64;
    for op in input.ops.iter().take(256) {
        // Raw bytes may happen to be a well-formed frame (found by the fuzzer: ten bytes of
        // binary encoding are a `hello`, thirteen a `send`): then they are that frame.
        let (payload, binary, sent) = match op {
            Op::Wait { ms } => {
                now_ms += u64::from(*ms);
                continue;
            }
            Op::Raw { binary, bytes } => (Bytes::copy_from_slice(bytes), *binary, parsed(bytes, *binary)),
            _ => {
                let (frame, value, req) = frame(op).expect("a frame op");
                let payload = match encoding {
                    Encoding::Binary => encode_client(&frame, req),
                    Encoding::Json => Bytes::from(value.to_string()),
                };
                (payload, encoding == Encoding::Binary, Some(frame))
            }
        };
        match session.on_message(&payload, binary, &verifier, now_ms) {
            Step::Welcome { identity, .. } => {
                assert!(!ready, "a second welcome");
                assert!(matches!(sent, Some(ClientFrame::Hello { .. })), "welcome for {op:?}");
                assert_eq!(identity.user.as_str(), "ann");
                ready = true;
            }
            Step::Command(command) => {
                assert!(ready, "{command:?} routed before hello");
                if let Command::Send { id, body, .. } = &command {
                    sends += 1;
                    let Some(ClientFrame::Send { id: sent_id, body: sent_body, .. }) = &sent else {
                        panic!("a send routed for {op:?}")
                    };
                    assert_eq!((id.as_str(), std::str::from_utf8(body).unwrap()), (&sent_id[..], *sent_body));
                }
                let allowed =
                    u64::from(LIMITS.sends_burst) + u64::from(LIMITS.sends_per_s) * (now_ms - START_MS) / 1000 + 1;
                assert!(sends <= allowed, "{sends} sends routed within {} ms", now_ms - START_MS);
            }
            Step::Reply(bytes, _) => {
                if encoding == Encoding::Json {
                    serde_json::from_slice::<serde_json::Value>(&bytes).expect("replies are JSON");
                }
            }
            Step::Close(code, why) => {
                match code {
                    4001 => assert!(!ready, "4001 after hello ({why})"),
                    1007 | 4008 => {}
                    other => panic!("close code {other} ({why})"),
                }
                return;
            }
            Step::Nothing => {}
        }
    }
}
