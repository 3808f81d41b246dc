//! Error codes (PROTOCOL.md §4), and the error a bad frame earns.

use serde::{Serialize, Serializer};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    TooLarge,
    RateLimited,
    Conflict,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The code as both encodings carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The code [`ErrorCode::as_str`] wrote (another node's answer).
    pub fn parse(s: &str) -> Option<ErrorCode> {
        use ErrorCode::*;
        [BadRequest, Unauthorized, Forbidden, NotFound, TooLarge, RateLimited, Conflict, Unavailable, Internal]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A frame the server will not act on: answered with an `error` frame carrying the request's
/// `id` (a `send`) or `req`, and the connection stays open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    pub id: Option<String>,
    pub req: Option<String>,
    /// With `rate_limited` and `unavailable`: when a retry may succeed.
    pub retry_after_ms: Option<u64>,
}
