//! One blocking REST call on a connection of its own, for what talks to a node from outside
//! its shards: `switchboard --demo` and `switchboard-ctl`.

use serde_json::Value;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long an answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `method path` with the bearer `token` and a JSON `body` to `host` over `stream`;
/// returns the status and the answer (its text as a JSON string when it is not JSON).
pub fn call(
    mut stream: TcpStream,
    host: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> io::Result<(u16, Value)> {
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out);
    let no_answer = || io::Error::new(io::ErrorKind::InvalidData, format!("{host}: no HTTP answer"));
    let (head, answer) = text.split_once("\r\n\r\n").ok_or_else(no_answer)?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(no_answer)?;
    Ok((status, serde_json::from_str(answer).unwrap_or_else(|_| Value::String(answer.to_string()))))
}
