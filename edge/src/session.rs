//! One client connection's protocol state, sans-IO: a WebSocket message in, one [`Step`] out.
//!
//! The session knows the rules of PROTOCOL.md §3–4 that need no other connection and no
//! store: `hello` first (else 4001), token checks, frame parsing in the connection's encoding,
//! rate limits (`rate_limited`, then 4008), `ping`. Everything that touches a conversation
//! leaves as a [`Command`] for the shard to route to the conversation's sequencer. No sockets,
//! no clock (time comes in as an argument), so it is tested frame by frame.

use crate::auth::{AuthError, Identity, Verifier};
use crate::proto::binary::parse_binary;
use crate::proto::{parse, ClientFrame, ErrorCode, FrameError, ParseLimits, Request, ServerFrame, Target};
use crate::rate::{Limiter, Verdict, RATE_LIMITED_CLOSE};
use crate::ws::handshake::Encoding;
use bytes::Bytes;
use switchboard_store::{ConvId, CursorKind, Seq, UserId};

/// PROTOCOL.md §5: not authenticated.
pub const UNAUTHENTICATED_CLOSE: u16 = 4001;
/// PROTOCOL.md §5: forbidden (origin not allowed).
pub const FORBIDDEN_CLOSE: u16 = 4003;
/// PROTOCOL.md §5: the server is draining.
pub const DRAINING_CLOSE: u16 = 4010;

/// The per-connection limits, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    pub parse: ParseLimits,
    pub sends_per_s: u32,
    pub sends_burst: u32,
    pub typing_per_s: u32,
    pub syncs_per_s: u32,
    pub rate_refusals_max: u32,
}

/// What the shard does with a conversation-scoped request, on the conversation's sequencer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `body` is the client's JSON text, a slice of the message it came in (not a copy).
    Send {
        conv: ConvId,
        id: String,
        body: Bytes,
        kind: String,
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
        req: Option<String>,
    },
    Inbox {
        after_ts: Option<u64>,
        req: Option<String>,
    },
    Open {
        conv: ConvId,
        req: Option<String>,
    },
    Close {
        conv: ConvId,
    },
    Presence {
        users: Vec<UserId>,
        req: Option<String>,
    },
}

/// What a [`Step::Reply`] answered, for the frame and error counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replied {
    Pong,
    Error(ErrorCode),
}

/// What one client message leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do (a frame that needs no answer and no routing).
    Nothing,
    /// Queue this encoded frame on the connection.
    Reply(Bytes, Replied),
    /// The `hello` succeeded: register the connection under this user, then answer `welcome`
    /// with `req`.
    Welcome { identity: Identity, req: Option<String> },
    /// Route to the conversation's sequencer (or answer from node state).
    Command(Command),
    /// Close the connection with this code.
    Close(u16, &'static str),
}

enum State {
    /// Waiting for `hello`. The upgrade request may already have carried a token (query or
    /// `Authorization`); a token in `hello` replaces it.
    Greeting {
        from_upgrade: Option<Result<Identity, AuthError>>,
    },
    Ready {
        user: UserId,
    },
}

pub struct Session {
    encoding: Encoding,
    limits: SessionLimits,
    state: State,
    sends: Limiter,
    typing: Limiter,
    syncs: Limiter,
}

impl Session {
    pub fn new(
        encoding: Encoding,
        limits: SessionLimits,
        from_upgrade: Option<Result<Identity, AuthError>>,
        now_ms: u64,
    ) -> Session {
        let l = limits;
        Session {
            encoding,
            limits,
            state: State::Greeting { from_upgrade },
            sends: Limiter::new(l.sends_per_s, l.sends_burst, l.rate_refusals_max, now_ms),
            typing: Limiter::new(l.typing_per_s, l.typing_per_s.max(1) * 2, l.rate_refusals_max, now_ms),
            syncs: Limiter::new(l.syncs_per_s, l.syncs_per_s.max(1) * 2, l.rate_refusals_max, now_ms),
        }
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The authenticated user, once `hello` succeeded.
    pub fn user(&self) -> Option<&UserId> {
        match &self.state {
            State::Ready { user } => Some(user),
            State::Greeting { .. } => None,
        }
    }

    /// Encodes a frame in this connection's encoding.
    pub fn encode(&self, frame: &ServerFrame<'_>) -> Bytes {
        frame.encode(self.encoding)
    }

    fn error(&self, e: FrameError) -> Step {
        let frame = ServerFrame::Error {
            code: e.code,
            message: &e.message,
            id: e.id.as_deref(),
            req: e.req.as_deref(),
            retry_after_ms: e.retry_after_ms,
        };
        Step::Reply(self.encode(&frame), Replied::Error(e.code))
    }

    /// One whole WebSocket data message (`binary`: its opcode was binary).
    pub fn on_message(&mut self, payload: &Bytes, binary: bool, verifier: &Verifier, now_ms: u64) -> Step {
        let parsed = match (self.encoding, binary) {
            (Encoding::Json, false) => match std::str::from_utf8(payload) {
                Ok(text) => parse(text, self.limits.parse),
                Err(_) => return Step::Close(crate::ws::close_code::INVALID_PAYLOAD, "invalid UTF-8"),
            },
            (Encoding::Binary, true) => parse_binary(payload, self.limits.parse),
            (Encoding::Json, true) | (Encoding::Binary, false) => Err(FrameError {
                code: ErrorCode::BadRequest,
                message: format!(
                    "{} carries {} messages",
                    self.encoding.subprotocol(),
                    if binary { "text" } else { "binary" }
                ),
                id: None,
                req: None,
                retry_after_ms: None,
            }),
        };
        let request = match (parsed, &self.state) {
            (Ok(r), _) => r,
            (Err(_), State::Greeting { .. }) => return Step::Close(UNAUTHENTICATED_CLOSE, "hello expected"),
            (Err(e), State::Ready { .. }) => return self.error(e),
        };
        match &mut self.state {
            State::Greeting { from_upgrade } => {
                let Request { frame: ClientFrame::Hello { token, .. }, req } = request else {
                    return Step::Close(UNAUTHENTICATED_CLOSE, "the first frame must be hello");
                };
                let checked = match token {
                    Some(t) => Some(verifier.verify(&t, now_ms / 1000)),
                    None => from_upgrade.take(),
                };
                match checked {
                    Some(Ok(identity)) => {
                        self.state = State::Ready { user: identity.user.clone() };
                        Step::Welcome { identity, req: req.map(|r| r.into_owned()) }
                    }
                    Some(Err(AuthError::Expired)) => Step::Close(UNAUTHENTICATED_CLOSE, "token expired"),
                    Some(Err(AuthError::Invalid(_))) => Step::Close(UNAUTHENTICATED_CLOSE, "invalid token"),
                    None => Step::Close(UNAUTHENTICATED_CLOSE, "no token"),
                }
            }
            State::Ready { user } => {
                let user = user.clone();
                self.on_request(&user, request, payload, now_ms)
            }
        }
    }

    fn on_request(&mut self, user: &UserId, request: Request<'_>, payload: &Bytes, now_ms: u64) -> Step {
        let req = request.req.map(|r| r.into_owned());
        let limiter = match &request.frame {
            ClientFrame::Send { .. } => Some(&mut self.sends),
            ClientFrame::Typing { .. } => Some(&mut self.typing),
            ClientFrame::Sync { .. } => Some(&mut self.syncs),
            _ => None,
        };
        if let Some(l) = limiter {
            let verdict = l.check(now_ms);
            let retry_after_ms = l.retry_after_ms();
            match verdict {
                Verdict::Allow => {}
                Verdict::Close => return Step::Close(RATE_LIMITED_CLOSE, "rate limited"),
                Verdict::Refuse => {
                    let id = match &request.frame {
                        ClientFrame::Send { id, .. } => Some(id.to_string()),
                        _ => None,
                    };
                    let req = if id.is_some() { None } else { req };
                    return self.error(FrameError {
                        code: ErrorCode::RateLimited,
                        message: "slow down".into(),
                        id,
                        req,
                        retry_after_ms: Some(retry_after_ms),
                    });
                }
            }
        }
        let command = match request.frame {
            ClientFrame::Hello { .. } => {
                return self.error(FrameError {
                    code: ErrorCode::BadRequest,
                    message: "already authenticated".into(),
                    id: None,
                    req,
                    retry_after_ms: None,
                })
            }
            ClientFrame::Ping => {
                return Step::Reply(self.encode(&ServerFrame::Pong { req: req.as_deref() }), Replied::Pong)
            }
            ClientFrame::Send { target, id, body, kind } => {
                let conv = match target {
                    Target::Conv(c) => c,
                    Target::To(to) => ConvId::dm(user, &to),
                };
                Command::Send { conv, id: id.into_owned(), body: payload.slice_ref(body.as_bytes()), kind: kind.into() }
            }
            ClientFrame::Receipt { conv, seq, kind } => Command::Receipt { conv, seq, kind },
            ClientFrame::Typing { conv } => Command::Typing { conv },
            ClientFrame::Sync { conv, after, limit } => Command::Sync { conv, after, limit, req },
            ClientFrame::Inbox { after_ts } => Command::Inbox { after_ts, req },
            ClientFrame::Open { conv } => Command::Open { conv, req },
            ClientFrame::Close { conv } => Command::Close { conv },
            ClientFrame::Presence { users } => Command::Presence { users, req },
        };
        Step::Command(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::mint_hs256;

    const SECRET: &[u8] = b"test secret";

    fn limits() -> SessionLimits {
        SessionLimits {
            parse: ParseLimits::default(),
            sends_per_s: 1,
            sends_burst: 2,
            typing_per_s: 1,
            syncs_per_s: 1,
            rate_refusals_max: 2,
        }
    }

    fn token(user: &str) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        mint_hs256(SECRET, &UserId::new(user).unwrap(), now, 60, false)
    }

    fn text(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn json(step: Step) -> serde_json::Value {
        match step {
            Step::Reply(b, _) => serde_json::from_slice(&b).unwrap(),
            s => panic!("expected a reply, got {s:?}"),
        }
    }

    #[test]
    fn hello_first_then_commands() {
        let v = Verifier::hs256(SECRET);
        let mut s = Session::new(Encoding::Json, limits(), None, 0);
        assert_eq!(
            s.on_message(&text(r#"{"t":"ping"}"#), false, &v, 0),
            Step::Close(4001, "the first frame must be hello")
        );
        let mut s = Session::new(Encoding::Json, limits(), None, 0);
        assert_eq!(s.on_message(&text(r#"{"t":"hello"}"#), false, &v, 0), Step::Close(4001, "no token"));
        let mut s = Session::new(Encoding::Json, limits(), None, 0);
        assert_eq!(
            s.on_message(&text(r#"{"t":"hello","token":"x.y.z"}"#), false, &v, 0),
            Step::Close(4001, "invalid token")
        );
        let mut s = Session::new(Encoding::Json, limits(), Some(v.verify(&token("alice"), 0)), 0);
        match s.on_message(&text(r#"{"t":"hello","req":"h"}"#), false, &v, 0) {
            Step::Welcome { identity, req } => {
                assert_eq!((identity.user.as_str(), req.as_deref()), ("alice", Some("h")))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(json(s.on_message(&text(r#"{"t":"ping","req":"p"}"#), false, &v, 0))["t"], "pong");
        assert_eq!(json(s.on_message(&text(r#"{"t":"hello"}"#), false, &v, 0))["code"], "bad_request");
        assert_eq!(json(s.on_message(&text(r#"{"t":"what"}"#), false, &v, 0))["code"], "bad_request");
        match s.on_message(&text(r#"{"t":"send","to":"bob","id":"1","body":{"a":1}}"#), false, &v, 0) {
            Step::Command(Command::Send { conv, body, .. }) => {
                assert_eq!(conv.as_str(), "dm:alice:bob");
                assert_eq!(&body[..], br#"{"a":1}"#);
            }
            other => panic!("{other:?}"),
        }
        // The wrong message type for the encoding is a bad request, not a close.
        assert_eq!(json(s.on_message(&text(r#"{"t":"ping"}"#), true, &v, 0))["code"], "bad_request");
    }

    #[test]
    fn rate_limits_refuse_then_close() {
        let v = Verifier::hs256(SECRET);
        let mut s = Session::new(Encoding::Json, limits(), None, 0);
        let hello = format!(r#"{{"t":"hello","token":"{}"}}"#, token("a"));
        assert!(matches!(s.on_message(&text(&hello), false, &v, 0), Step::Welcome { .. }));
        let send = text(r#"{"t":"send","conv":"g","id":"m","body":1}"#);
        for _ in 0..2 {
            assert!(matches!(s.on_message(&send, false, &v, 0), Step::Command(_)));
        }
        for _ in 0..2 {
            let e = json(s.on_message(&send, false, &v, 0));
            assert_eq!((e["code"].as_str(), e["id"].as_str()), (Some("rate_limited"), Some("m")));
        }
        assert_eq!(s.on_message(&send, false, &v, 0), Step::Close(4008, "rate limited"));
    }
}
