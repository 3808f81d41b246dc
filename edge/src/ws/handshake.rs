//! The opening handshake (RFC 6455 §4.2), sans-IO: parse the client's upgrade request from the
//! bytes read so far, and write the server's answer.
//!
//! `httparse` parses; this module checks what RFC 6455 requires of the request, enforces the
//! header limits, picks the subprotocol (PROTOCOL.md §1) and computes `Sec-WebSocket-Accept`.
//! `permessage-deflate` is declined by never naming an extension in the answer.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use sha1::{Digest, Sha1};

/// Limits on the request head, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// The request line and headers together.
    pub head_bytes_max: usize,
    pub headers_max: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits { head_bytes_max: 8 * 1024, headers_max: 32 }
    }
}

/// The message encodings a client can choose (PROTOCOL.md §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Binary,
}

impl Encoding {
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => "switchboard.v1.json",
            Encoding::Binary => "switchboard.v1.bin",
        }
    }
}

/// A valid upgrade request, with what the session needs from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// The path without the query (`/v1/ws`, `/v1/echo`).
    pub path: String,
    /// The query string without `?`, if any (it may carry `token=`).
    pub query: Option<String>,
    pub encoding: Encoding,
    /// Whether the client named the subprotocol (then the answer must name it too).
    pub encoding_offered: bool,
    pub origin: Option<String>,
    /// The `Authorization` header as sent.
    pub authorization: Option<String>,
    /// The `Sec-WebSocket-Accept` value to answer with.
    pub accept: String,
}

/// Why the request cannot be upgraded; answered with an HTTP error and the connection closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 400: malformed, or not a WebSocket upgrade as RFC 6455 defines it.
    BadRequest(&'static str),
    /// 405: not a GET.
    MethodNotAllowed,
    /// 426: a WebSocket version other than 13 (the answer names 13).
    UnsupportedVersion,
    /// 431: the request head is over its limits.
    HeadTooLarge,
}

impl Refusal {
    /// The full HTTP response to send before closing.
    pub fn response(self) -> Vec<u8> {
        let (status, text, extra, body) = match self {
            Refusal::BadRequest(why) => (400, "Bad Request", "", why),
            Refusal::MethodNotAllowed => (405, "Method Not Allowed", "Allow: GET\r\n", "method not allowed"),
            Refusal::UnsupportedVersion => {
                (426, "Upgrade Required", "Sec-WebSocket-Version: 13\r\n", "unsupported WebSocket version")
            }
            Refusal::HeadTooLarge => (431, "Request Header Fields Too Large", "", "request head too large"),
        };
        format!(
            "HTTP/1.1 {status} {text}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// The length of a request's body from its framing headers (RFC 9112 §6.3), or why the
/// request cannot be framed without doubt.
///
/// A proxy in front of the node and the node must agree on where a request ends, or a second
/// request can be smuggled inside the first one's body. So anything two readers could take two
/// ways is refused rather than resolved: `Transfer-Encoding` at all (bodies come with a
/// length), a `Content-Length` beside it, `Content-Length` values that differ (in separate
/// headers or one comma list), and a value that is not plain digits (`+5`, ` 5 5`, `0x5`).
/// Repeats of one value are the one case RFC 9110 §8.6 lets a recipient take as one.
pub fn body_length(headers: &[httparse::Header<'_>]) -> Result<usize, &'static str> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("content-length") {
            for v in h.value.split(|&b| b == b',') {
                let v = v.trim_ascii();
                if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                    return Err("Content-Length is not a number");
                }
                let n = v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
                if length.is_some_and(|l| l != n) {
                    return Err("differing Content-Length values");
                }
                length = Some(n);
            }
        }
    }
    match (chunked, length) {
        (true, Some(_)) => Err("Content-Length beside Transfer-Encoding"),
        (true, None) => Err("send bodies with Content-Length, not Transfer-Encoding"),
        (false, n) => usize::try_from(n.unwrap_or(0)).map_err(|_| "Content-Length is too large"),
    }
}

/// The `Sec-WebSocket-Accept` value for a client's key (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    BASE64.encode(sha.finalize())
}

/// Parses the request at the start of `buf`. `Ok(None)`: not all of it has arrived yet.
/// `Ok(Some((upgrade, n)))`: the head took `n` bytes; what follows is WebSocket frames.
pub fn parse(buf: &[u8], limits: HeadLimits) -> Result<Option<(Upgrade, usize)>, Refusal> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.headers_max];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= limits.head_bytes_max => n,
        Ok(httparse::Status::Complete(_)) => return Err(Refusal::HeadTooLarge),
        Ok(httparse::Status::Partial) if buf.len() > limits.head_bytes_max => return Err(Refusal::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::HeadTooLarge),
        Err(_) => return Err(Refusal::BadRequest("malformed HTTP request")),
    };
    if req.method != Some("GET") {
        return Err(Refusal::MethodNotAllowed);
    }
    if req.version != Some(1) {
        return Err(Refusal::BadRequest("HTTP/1.1 required"));
    }
    let header = |name: &str| -> Option<&str> {
        req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &str, token: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if header("Host").is_none() {
        return Err(Refusal::BadRequest("missing Host"));
    }
    // What follows the head is WebSocket frames: a body would be read as frames by the node
    // and as a body by a proxy that does not know of the upgrade.
    match body_length(req.headers) {
        Ok(0) => {}
        Ok(_) => return Err(Refusal::BadRequest("an upgrade request has no body")),
        Err(why) => return Err(Refusal::BadRequest(why)),
    }
    if !has_token("Upgrade", "websocket") {
        return Err(Refusal::BadRequest("not a WebSocket upgrade (Upgrade: websocket)"));
    }
    if !has_token("Connection", "upgrade") {
        return Err(Refusal::BadRequest("not a WebSocket upgrade (Connection: Upgrade)"));
    }
    if header("Sec-WebSocket-Version").map(str::trim) != Some("13") {
        return Err(Refusal::UnsupportedVersion);
    }
    let key = header("Sec-WebSocket-Key").map(str::trim).ok_or(Refusal::BadRequest("missing Sec-WebSocket-Key"))?;
    if BASE64.decode(key).map(|k| k.len()) != Ok(16) {
        return Err(Refusal::BadRequest("Sec-WebSocket-Key is not 16 bytes of base64"));
    }
    let offered: Vec<&str> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Sec-WebSocket-Protocol"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    // The first offered that we speak; JSON when none is offered.
    let encoding = if offered.is_empty() {
        Encoding::Json
    } else {
        offered
            .iter()
            .find_map(|p| [Encoding::Json, Encoding::Binary].into_iter().find(|e| e.subprotocol() == *p))
            .ok_or(Refusal::BadRequest("no supported subprotocol (switchboard.v1.json, switchboard.v1.bin)"))?
    };
    let target = req.path.ok_or(Refusal::BadRequest("missing path"))?;
    // RFC 9112 §3.2.1: a request to an origin server names a path that starts at `/`.
    if !target.starts_with('/') {
        return Err(Refusal::BadRequest("the request target must be a path starting with /"));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (target, None),
    };
    Ok(Some((
        Upgrade {
            path: path.to_string(),
            query,
            encoding,
            encoding_offered: !offered.is_empty(),
            origin: header("Origin").map(str::to_string),
            authorization: header("Authorization").map(str::to_string),
            accept: accept_key(key),
        },
        n,
    )))
}

/// The `101 Switching Protocols` answer.
pub fn switching_protocols(upgrade: &Upgrade) -> Vec<u8> {
    let protocol = if upgrade.encoding_offered {
        format!("Sec-WebSocket-Protocol: {}\r\n", upgrade.encoding.subprotocol())
    } else {
        String::new()
    };
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{protocol}\r\n",
        upgrade.accept
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(extra: &str) -> String {
        format!(
            "GET /v1/ws?token=abc HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    #[test]
    fn rfc_example_key() {
        assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn a_valid_request_upgrades_and_partial_heads_wait() {
        let r = request("Origin: https://app.example\r\nAuthorization: Bearer t\r\n");
        let with_frame = format!("{r}\u{81}");
        let (u, n) = parse(with_frame.as_bytes(), HeadLimits::default()).unwrap().unwrap();
        assert_eq!(n, r.len());
        assert_eq!(u.path, "/v1/ws");
        assert_eq!(u.query.as_deref(), Some("token=abc"));
        assert_eq!((u.encoding, u.encoding_offered), (Encoding::Json, false));
        assert_eq!(u.origin.as_deref(), Some("https://app.example"));
        assert_eq!(u.authorization.as_deref(), Some("Bearer t"));
        let answer = String::from_utf8(switching_protocols(&u)).unwrap();
        assert!(answer.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(!answer.contains("Sec-WebSocket-Protocol") && !answer.contains("Extensions"));
        for cut in 0..r.len() {
            assert_eq!(parse(&r.as_bytes()[..cut], HeadLimits::default()), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn subprotocols() {
        let pick = |offer: &str| parse(request(offer).as_bytes(), HeadLimits::default()).map(|r| r.unwrap().0.encoding);
        assert_eq!(pick("Sec-WebSocket-Protocol: chat, switchboard.v1.bin\r\n"), Ok(Encoding::Binary));
        assert_eq!(pick("Sec-WebSocket-Protocol: switchboard.v1.json\r\n"), Ok(Encoding::Json));
        assert!(matches!(pick("Sec-WebSocket-Protocol: chat\r\n"), Err(Refusal::BadRequest(_))));
        let (u, _) = parse(request("Sec-WebSocket-Protocol: switchboard.v1.bin\r\n").as_bytes(), HeadLimits::default())
            .unwrap()
            .unwrap();
        let answer = String::from_utf8(switching_protocols(&u)).unwrap();
        assert!(answer.contains("Sec-WebSocket-Protocol: switchboard.v1.bin\r\n"));
    }

    #[test]
    fn refusals() {
        let limits = HeadLimits::default();
        let bad = |r: String| parse(r.as_bytes(), limits).unwrap_err();
        assert_eq!(bad(request("").replace("GET", "POST")), Refusal::MethodNotAllowed);
        assert!(matches!(bad(request("").replace("HTTP/1.1", "HTTP/1.0")), Refusal::BadRequest(_)));
        assert!(matches!(bad(request("").replace("Host: localhost\r\n", "")), Refusal::BadRequest(_)));
        assert!(matches!(bad(request("").replace("Upgrade: websocket\r\n", "")), Refusal::BadRequest(_)));
        assert!(matches!(bad(request("").replace("keep-alive, Upgrade", "keep-alive")), Refusal::BadRequest(_)));
        assert_eq!(bad(request("").replace("Version: 13", "Version: 8")), Refusal::UnsupportedVersion);
        assert!(matches!(bad(request("").replace(KEY, "c2hvcnQ=")), Refusal::BadRequest(_)));
        assert!(matches!(bad("GET /\r\n\r\n".into()), Refusal::BadRequest(_)));
        assert!(matches!(bad(request("").replace("GET /v1/ws?", "GET ?/v1/ws?")), Refusal::BadRequest(_)));
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(bad(request(&many)), Refusal::HeadTooLarge);
        let huge = format!("X-Big: {}\r\n", "y".repeat(9000));
        assert_eq!(bad(request(&huge)), Refusal::HeadTooLarge);
        // An endless head is refused once it passes the limit, without waiting for its end.
        let endless = format!("GET / HTTP/1.1\r\nX-A: {}", "y".repeat(9000));
        assert_eq!(bad(endless), Refusal::HeadTooLarge);
        for framing in [
            "Content-Length: 5\r\n",
            "Transfer-Encoding: chunked\r\n",
            "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
            "Content-Length: 0\r\nContent-Length: 4\r\n",
            "Content-Length: +0\r\n",
        ] {
            assert!(matches!(bad(request(framing)), Refusal::BadRequest(_)), "{framing:?}");
        }
        assert!(parse(request("Content-Length: 0\r\n").as_bytes(), limits).unwrap().is_some());
        let r = String::from_utf8(Refusal::UnsupportedVersion.response()).unwrap();
        assert!(r.starts_with("HTTP/1.1 426 ") && r.contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn body_length_refuses_every_framing_two_readers_could_disagree_on() {
        let length = |lines: &[(&str, &str)]| {
            let headers: Vec<httparse::Header<'_>> =
                lines.iter().map(|(name, value)| httparse::Header { name, value: value.as_bytes() }).collect();
            body_length(&headers)
        };
        assert_eq!(length(&[]), Ok(0));
        assert_eq!(length(&[("Content-Length", "12")]), Ok(12));
        assert_eq!(length(&[("content-length", " 12 ")]), Ok(12));
        assert_eq!(length(&[("Content-Length", "12"), ("Content-Length", "12")]), Ok(12));
        assert_eq!(length(&[("Content-Length", "12, 12")]), Ok(12));
        for refused in [
            vec![("Content-Length", "3"), ("Content-Length", "12")],
            vec![("Content-Length", "12"), ("Content-Length", "3")],
            vec![("Content-Length", "3, 12")],
            vec![("Content-Length", "3"), ("Transfer-Encoding", "chunked")],
            vec![("Transfer-Encoding", "chunked"), ("Content-Length", "3")],
            vec![("Transfer-Encoding", "identity")],
            vec![("Content-Length", "+3")],
            vec![("Content-Length", "-3")],
            vec![("Content-Length", "0x3")],
            vec![("Content-Length", "3 3")],
            vec![("Content-Length", "")],
            vec![("Content-Length", "99999999999999999999")],
        ] {
            assert!(length(&refused).is_err(), "{refused:?}");
        }
    }
}
