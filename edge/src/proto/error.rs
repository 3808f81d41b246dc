//! Error codes (PROTOCOL.md §4), and the error a bad frame earns.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
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

/// A frame the server will not act on: answered with an `error` frame carrying the request's
/// `id` (a `send`) or `req`, and the connection stays open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    pub id: Option<String>,
    pub req: Option<String>,
}
