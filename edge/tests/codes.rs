//! Every error code and close code of PROTOCOL.md that a client can cause, from the outside,
//! and the operator's endpoints.

mod support;

use serde_json::json;
use std::io::Write;
use support::{frame, raw_close_code, raw_upgraded, Client, Server};
use tungstenite::Message;

#[test]
fn error_codes_keep_the_connection_open() {
    let s = Server::start(&["--set", "message_bytes_max=100"]);
    let g = s.create("owner", "group", &[]);
    let mut c = s.client("alice");
    let check = |c: &mut Client, frame: serde_json::Value, code: &str| {
        c.send(frame.clone());
        let e = c.expect("error");
        assert_eq!(e["code"], code, "{frame} → {e}");
        assert!(!e["message"].as_str().unwrap().is_empty());
        e
    };
    let e = check(&mut c, json!({"t":"teleport","req":"r1"}), "bad_request");
    assert_eq!(e["req"], "r1");
    check(&mut c, json!({"t":"send","conv":g,"id":"x","body":1}), "forbidden");
    check(&mut c, json!({"t":"sync","conv":"no-such","after":0}), "not_found");
    let e = check(&mut c, json!({"t":"send","to":"bob","id":"big","body":"x".repeat(200)}), "too_large");
    assert_eq!(e["id"], "big");
    check(&mut c, json!({"t":"receipt","conv":"dm:alice:bob","seq":1,"kind":"read"}), "not_found");
    // Still open and answering.
    c.send(json!({"t":"ping","req":"still"}));
    assert_eq!(c.expect("pong"), json!({"t":"pong","req":"still"}));
    // REST errors carry the same codes with matching statuses.
    let (status, v) = s.http("GET", "/v1/nowhere", Some(&s.token("a")), None);
    assert_eq!((status, v["code"].as_str()), (404, Some("not_found")));
    let (status, v) = s.http("POST", "/v1/conversations", Some(&s.token("a")), Some(json!({"kind":"party"})));
    assert_eq!((status, v["code"].as_str()), (400, Some("bad_request")));
    let (status, v) = s.http(
        "POST",
        &format!("/v1/conversations/{g}/messages"),
        Some(&s.token("owner")),
        Some(json!({"id":"a","body":"x".repeat(200)})),
    );
    assert_eq!((status, v["code"].as_str()), (413, Some("too_large")));
    let (status, v) = s.http(
        "POST",
        &format!("/v1/conversations/{g}/messages"),
        Some(&s.token("owner")),
        Some(json!({"id":"a","body":1})),
    );
    assert_eq!(status, 200, "{v}");
    let (status, v) = s.http(
        "POST",
        &format!("/v1/conversations/{g}/messages"),
        Some(&s.token("owner")),
        Some(json!({"id":"a","body":2})),
    );
    assert_eq!((status, v["code"].as_str()), (409, Some("conflict")));
    let (status, v) = s.http(
        "POST",
        &format!("/v1/conversations/{g}/messages"),
        Some(&s.token("owner")),
        Some(json!({"id":"b","body":2,"from":"x"})),
    );
    assert_eq!((status, v["code"].as_str()), (403, Some("forbidden")));
    let (status, v) = s.http(
        "POST",
        &format!("/v1/conversations/{g}/messages"),
        Some(&s.token_with("root", true)),
        Some(json!({"id":"b","body":2,"from":"owner"})),
    );
    assert_eq!((status, v["seq"].as_u64()), (200, Some(2)), "an admin sends as another user");
}

#[test]
fn rate_limited_then_4008() {
    let s = Server::start(&["--set", "sends_per_s=1", "--set", "sends_burst=1", "--set", "rate_refusals_max=3"]);
    let mut c = s.client("alice");
    for i in 0..5 {
        c.send(json!({"t":"send","to":"bob","id":format!("r{i}"),"body":i}));
    }
    // The refusals are answered at once, the ack once the message is durable: in any order.
    let mut refused = Vec::new();
    for _ in 0..4 {
        let v = c.recv();
        if v["t"] == "ack" {
            assert_eq!(v["id"], "r0");
            continue;
        }
        assert_eq!((v["t"].as_str(), v["code"].as_str()), (Some("error"), Some("rate_limited")), "{v}");
        // One send per second: the next token is at most a second away, and never now.
        let retry = v["retry_after_ms"].as_u64().unwrap_or_else(|| panic!("no retry_after_ms in {v}"));
        assert!((1..=1000).contains(&retry), "{v}");
        refused.push(v["id"].as_str().unwrap().to_string());
    }
    assert_eq!(refused, ["r1", "r2", "r3"]);
    assert_eq!(c.closed(), 4008);
}

#[test]
fn close_codes_for_protocol_violations() {
    let s = Server::start(&["--set", "frame_bytes_max=1024", "--set", "message_bytes_max=512"]);
    let t = s.token("alice");
    let hello = json!({"t":"hello","token":t}).to_string();
    // 1002: an unmasked client frame.
    let mut raw = raw_upgraded(&s, "/v1/ws");
    raw.write_all(&frame(true, 1, hello.as_bytes(), false)).unwrap();
    assert_eq!(raw_close_code(&mut raw), 1002);
    // 1007: a text message that is not UTF-8.
    let mut raw = raw_upgraded(&s, "/v1/ws");
    raw.write_all(&frame(true, 1, &[0xff, 0xfe], true)).unwrap();
    assert_eq!(raw_close_code(&mut raw), 1007);
    // 1009: a frame over frame_bytes_max, refused from its header.
    let mut raw = raw_upgraded(&s, "/v1/ws");
    raw.write_all(&frame(true, 1, &vec![b' '; 2000], true)[..20]).unwrap();
    assert_eq!(raw_close_code(&mut raw), 1009);
    // Fragments with a ping between them are one message; the ping gets its pong.
    let mut raw = raw_upgraded(&s, "/v1/ws");
    let (a, b) = hello.as_bytes().split_at(10);
    raw.write_all(&frame(false, 1, a, true)).unwrap();
    raw.write_all(&frame(true, 9, b"p", true)).unwrap();
    raw.write_all(&frame(true, 0, b, true)).unwrap();
    raw.write_all(&frame(true, 8, &1000u16.to_be_bytes(), true)).unwrap();
    assert_eq!(raw_close_code(&mut raw), 1000, "the close handshake echoes the client's code");
}

#[test]
fn close_codes_for_auth_and_origin() {
    let s = Server::start(&["--set", "auth_timeout_ms=300", "--set", "allowed_origins=[\"https://ok.example\"]"]);
    // 4001: a bad token.
    let mut c = Client::connect(&s, "/v1/ws", None);
    c.send(json!({"t":"hello","token":"not.a.jwt"}));
    assert_eq!(c.closed(), 4001);
    // 4001: something other than hello first.
    let mut c = Client::connect(&s, &format!("/v1/ws?token={}", s.token("a")), None);
    c.send(json!({"t":"ping"}));
    assert_eq!(c.closed(), 4001);
    // 4001: no hello within auth_timeout.
    let mut c = Client::connect(&s, "/v1/ws", None);
    assert_eq!(c.closed(), 4001);
    // An expired token.
    let secret = std::fs::read_to_string(s.dir.join("jwt.secret")).unwrap();
    let old = switchboard_edge::auth::mint_hs256(
        secret.trim().as_bytes(),
        &switchboard_store::UserId::new("a").unwrap(),
        1_000,
        60,
        false,
    );
    let mut c = Client::connect(&s, "/v1/ws", None);
    c.send(json!({"t":"hello","token":old}));
    assert_eq!(c.closed(), 4001);
    // 4003: an origin not on the list; an allowed one works, with the token in Authorization.
    let mut c = Client::connect_with(&s, "/v1/ws", None, Some("https://evil.example"));
    assert_eq!(c.closed(), 4003);
    let mut c = Client::connect_with(&s, &format!("/v1/ws?token={}", s.token("a")), None, Some("https://ok.example"));
    c.send(json!({"t":"hello","req":"ok"}));
    assert_eq!(c.expect("welcome")["req"], "ok");
}

#[test]
fn slow_consumer_is_closed_with_4009() {
    let s = Server::start(&[
        "--set",
        "shards=1",
        "--set",
        "frame_bytes_max=8192",
        "--set",
        "message_bytes_max=8192",
        "--set",
        "outbox_bytes_max=16384",
    ]);
    let mut reader = s.client("slow");
    // The slow client stops reading; its socket buffers fill, then its outbox.
    reader.ws.get_ref().set_nonblocking(false).unwrap();
    let mut sender = s.client("fast");
    let body = "x".repeat(8000);
    let mut sent = 0;
    let closed = loop {
        // In rounds small enough that the sender's own burst of acks fits its 16 KiB queue.
        for i in 0..50 {
            sender.send(json!({"t":"send","to":"slow","id":format!("f{sent}-{i}"),"body":body}));
        }
        for _ in 0..50 {
            sender.expect("ack");
        }
        sent += 50;
        let (_, v) = s.http("GET", "/metrics", None, None);
        let text = v.as_str().unwrap().to_string();
        if text.contains("switchboard_closes_total{code=\"4009\"} 1") {
            break true;
        }
        if sent >= 20_000 {
            break false;
        }
    };
    assert!(closed, "no 4009 after {sent} messages of 8 KB to a client that does not read");
    assert_eq!(reader.closed(), 4009);
}

#[test]
fn sigterm_drains_with_reconnect_then_4010() {
    let mut s = Server::start(&[]);
    let mut c = s.client("alice");
    c.send(json!({"t":"send","to":"bob","id":"d1","body":1}));
    c.expect("ack");
    let status = {
        let handle = std::thread::spawn({
            let mut ws = std::mem::replace(&mut c, s.client("spare"));
            move || {
                let r = ws.expect("reconnect");
                assert!(r["after_ms"].as_u64().unwrap() <= 5000);
                ws.closed()
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        let status = s.terminate();
        assert_eq!(handle.join().unwrap(), 4010);
        status
    };
    assert!(status.success(), "switchboard exits cleanly after a drain: {status:?}");
}

#[test]
fn echo_endpoint_only_when_asked() {
    let s = Server::start(&[]);
    let (status, _) = s.http("GET", "/v1/echo", None, None);
    assert_eq!(status, 404);
    let s = Server::start(&["--echo-endpoint"]);
    let mut c = Client::connect(&s, "/v1/echo", None);
    c.send_raw(Message::text("hello"));
    assert_eq!(c.ws.read().unwrap(), Message::text("hello"));
    c.send_raw(Message::binary(vec![0, 1, 2]));
    assert_eq!(c.ws.read().unwrap(), Message::binary(vec![0, 1, 2]));
}

#[test]
fn operator_endpoints() {
    let s = Server::start(&[]);
    let (status, v) = s.http("GET", "/healthz", None, None);
    assert_eq!((status, v["status"].as_str()), (200, Some("ok")));
    let (status, v) = s.http("GET", "/readyz", None, None);
    assert_eq!((status, v["status"].as_str()), (200, Some("ready")));
    let mut a = s.client("alice");
    a.send(json!({"t":"send","to":"bob","id":"m","body":1}));
    a.expect("ack");
    let (status, v) = s.http("GET", "/metrics", None, None);
    assert_eq!(status, 200);
    let text = v.as_str().unwrap();
    for needle in [
        "switchboard_connections{shard=\"0\"}",
        "switchboard_frames_in_total{type=\"send\"} 1",
        "switchboard_frames_out_total{type=\"ack\"} 1",
        "switchboard_store_commit_latency_seconds_count",
        "switchboard_delivery_latency_seconds_bucket{le=\"0.01\"}",
        "switchboard_ack_latency_seconds_bucket{le=\"+Inf\"} 1",
        "# HELP switchboard_connects_total ",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    assert_eq!(support::metrics_problems(text), Vec::<String>::new(), "{text}");
    assert_eq!(support::promtool_says(text), "", "{text}");
}

#[test]
fn a_second_daemon_on_a_taken_port_refuses_to_start() {
    let s = Server::start(&[]);
    let dir = std::env::temp_dir().join(format!("switchboard-second-{}", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["--listen", &s.addr, "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("listen on {}", s.addr)), "{stderr}");
}

#[test]
fn print_config_shows_the_effective_settings_from_every_layer() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["--print-config", "--shards", "3", "--set", "heartbeat_ms=1234"])
        .env("SWITCHBOARD_FRAME_BYTES_MAX", "32768")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for line in ["shards = 3", "heartbeat_ms = 1234", "frame_bytes_max = 32768", "listen = \"127.0.0.1:7400\""] {
        assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["--print-config", "--set", "hearbeat_ms=1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hearbeat_ms"), "a misspelt key is named");
}

#[test]
fn the_server_pings_each_heartbeat_and_closes_a_connection_silent_for_two() {
    let s = Server::start(&["--set", "heartbeat_ms=300"]);
    // A client that answers (tungstenite answers every ping as it reads) gets a ping each
    // heartbeat and stays.
    let mut live = s.client("alice");
    // One that never answers hears pings, then 1001 after two heartbeats of silence.
    let mut silent = raw_upgraded(&s, "/v1/ws");
    let hello = json!({"t":"hello","token":s.token("bob")}).to_string();
    silent.write_all(&frame(true, 1, hello.as_bytes(), true)).unwrap();
    let started = std::time::Instant::now();
    let mut pings = 0;
    live.ws.get_ref().set_read_timeout(Some(std::time::Duration::from_millis(50))).unwrap();
    while started.elapsed() < std::time::Duration::from_millis(1500) {
        match live.ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => assert!(matches!(other, Message::Text(_)), "{other:?}"),
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("the answering client lost its connection: {e}"),
        }
    }
    assert!((2..=6).contains(&pings), "{pings} pings in 1.5 s of 300 ms heartbeats");
    live.ws.get_ref().set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    live.send(json!({"t":"ping"}));
    assert_eq!(live.recv()["t"], "pong");
    assert_eq!(raw_close_code(&mut silent), 1001);
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("switchboard-logs-{}", std::process::id()));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["--listen", "127.0.0.1:0", "--quic-listen", "127.0.0.1:0", "--shards", "1", "--set", "log_format=json"])
        .arg("--data-dir")
        .arg(&dir)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let v: serde_json::Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{first:?}: {e}"));
    assert_eq!(v["level"], "INFO", "{v}");
    assert!(v["fields"]["message"].is_string() && v["timestamp"].is_string(), "{v}");
}

/// RFC 9112 §6.3: a request whose end two readers could place differently (a proxy in front,
/// and this node) gets one 400 and a close, and nothing after it is read as a request.
#[test]
fn ambiguous_request_framing_gets_one_400_and_a_close() {
    use std::io::{Read, Write};
    let s = Server::start(&[]);
    let token = s.token("alice");
    let smuggled = "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
    for framing in [
        "Content-Length: 2\r\nContent-Length: 40".to_string(),
        format!("Content-Length: {}\r\nTransfer-Encoding: chunked", smuggled.len()),
        "Transfer-Encoding: chunked\r\nContent-Length: 2".to_string(),
        "Content-Length: +2".to_string(),
    ] {
        let mut sock = std::net::TcpStream::connect(&s.addr).unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let request = format!(
            "POST /v1/conversations HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n{framing}\r\n\r\n{{}}{smuggled}"
        );
        sock.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        sock.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{framing:?}: {answer}");
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{framing:?}: a second answer: {answer}");
        assert!(answer.contains("Connection: close"), "{framing:?}: {answer}");
    }
    // An upgrade carrying a body is refused the same way.
    let mut sock = std::net::TcpStream::connect(&s.addr).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let upgrade = "GET /v1/ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 4\r\n\r\nabcd";
    sock.write_all(upgrade.as_bytes()).unwrap();
    let mut answer = String::new();
    sock.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
}
