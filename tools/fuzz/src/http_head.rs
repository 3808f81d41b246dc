//! The HTTP request head: the upgrade parser and the body framing rules (RFC 9112 §6.3).
//!
//! An upgrade that parses took a head no longer than the limit, parses the same from the head
//! alone, and every shorter prefix of it waits for more rather than being refused (bytes
//! arrive in any pieces). A body length that is accepted agrees with every `Content-Length`
//! the request carries, and no `Transfer-Encoding` came with it.

use switchboard_edge::ws::handshake::{body_length, parse, HeadLimits};

const LIMITS: HeadLimits = HeadLimits { head_bytes_max: 1024, headers_max: 32 };

pub fn run(data: &[u8]) {
    let whole = parse(data, LIMITS);
    if let Ok(Some((upgrade, n))) = &whole {
        assert!(*n <= data.len() && *n <= LIMITS.head_bytes_max);
        assert_eq!(parse(&data[..*n], LIMITS), Ok(Some((upgrade.clone(), *n))));
        for cut in [0, n / 3, n / 2, n - 1] {
            assert_eq!(parse(&data[..cut], LIMITS), Ok(None), "a prefix of {cut} bytes of a good head");
        }
        assert!(upgrade.path.starts_with('/'), "an upgrade to {:?}", upgrade.path);
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    if let Ok(httparse::Status::Complete(_)) = req.parse(data) {
        if let Ok(n) = body_length(req.headers) {
            for h in req.headers.iter() {
                assert!(!h.name.eq_ignore_ascii_case("transfer-encoding"), "a length beside Transfer-Encoding");
                if h.name.eq_ignore_ascii_case("content-length") {
                    for v in h.value.split(|&b| b == b',') {
                        let v = std::str::from_utf8(v).expect("digits").trim();
                        assert_eq!(v.parse::<usize>().ok(), Some(n), "Content-Length {v:?} against {n}");
                    }
                }
            }
        }
    }
}
