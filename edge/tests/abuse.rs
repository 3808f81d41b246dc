//! What a hostile or broken client does to a node, each with the outcome it must get, and the
//! node's memory bounded throughout (its resident set measured from `/proc`, around the
//! abuse, against a bound far below what the abuse would cost if it were buffered).

mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::{close_or_end, frame, raw_close_code, raw_upgraded, read_frame, Client, Cluster, Server};

/// The daemon's resident set, in KiB.
fn rss_kib(s: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The daemon's memory grew by less than `mib` over the abuse.
fn assert_grew_less_than(s: &Server, before_kib: u64, mib: u64, what: &str) {
    let after = rss_kib(s);
    let grown = after.saturating_sub(before_kib);
    eprintln!("{what}: resident set {before_kib} KiB before, {after} KiB after");
    assert!(grown < mib * 1024, "{what}: the daemon grew by {grown} KiB");
}

/// A normal client still gets its `welcome` and an ack.
fn still_serves(s: &Server) {
    let mut c = s.client("bystander");
    c.send(json!({"t":"send","to":"someone","id":"ok","body":"still here"}));
    c.expect("ack");
}

/// An upgraded socket that said `hello` and got its `welcome`.
fn hello(s: &Server, user: &str) -> TcpStream {
    let mut raw = raw_upgraded(s, &format!("/v1/ws?token={}", s.token(user)));
    raw.write_all(&frame(true, 1, br#"{"t":"hello"}"#, true)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("welcome") {
        let n = raw.read(&mut buf).unwrap();
        assert!(n > 0, "closed before welcome");
        got.extend_from_slice(&buf[..n]);
    }
    raw
}

/// The node closed `raw`, a flooder's socket, with `code`. Its close frame may not reach the
/// flooder: the node shuts a socket whose unread input makes the kernel reset the
/// connection, which can drop what the flooder had not read yet. So the close frame is read
/// where it arrives, and the node's own count of closes by code is checked either way.
fn assert_closed_with(s: &Server, raw: &mut TcpStream, code: u16) {
    raw.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let got = close_or_end(raw);
    assert!(got.is_none() || got == Some(code), "closed with {got:?}, not {code}");
    let counted = format!("switchboard_closes_total{{code=\"{code}\"}} 1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.http("GET", "/metrics", None, None).1.as_str().unwrap().contains(&counted) {
        assert!(Instant::now() < deadline, "the node never counted a close with {code}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes as much of `bytes` as the peer takes; the peer may close midway.
fn write_until_refused(raw: &mut TcpStream, bytes: &[u8]) {
    raw.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = raw.write_all(bytes);
}

/// Reads one server frame's payload as text.
fn read_text(raw: &mut TcpStream) -> String {
    String::from_utf8(read_frame(raw).expect("a frame").1).unwrap()
}

/// PROTOCOL.md's two limits: a WebSocket message over `frame_bytes_max` is closed with 1009
/// however small its fragments; a `body` over `message_bytes_max` is a `too_large` error.
#[test]
fn a_message_one_byte_over_the_limit_is_closed_1009_and_one_at_the_limit_is_taken() {
    let s = Server::start(&["--set", "frame_bytes_max=1024", "--set", "message_bytes_max=512"]);
    let mut raw = hello(&s, "alice");
    // A send whose body's JSON text is `body` bytes, padded with spaces to `total` bytes.
    let send = |id: &str, body: usize, total: usize| {
        let m = format!(r#"{{"t":"send","to":"bob","id":"{id}","body":"{}"}}"#, "x".repeat(body - 2));
        format!("{m}{}", " ".repeat(total - m.len()))
    };
    // In three fragments each time.
    let fragments = |m: &str| {
        let (a, rest) = m.as_bytes().split_at(100);
        let (b, c) = rest.split_at(300);
        [frame(false, 1, a, true), frame(false, 0, b, true), frame(true, 0, c, true)].concat()
    };
    raw.write_all(&fragments(&send("at-both-limits", 512, 1024))).unwrap();
    assert!(read_text(&mut raw).contains(r#""t":"ack""#));
    raw.write_all(&fragments(&send("body-over", 513, 1024))).unwrap();
    let answer = read_text(&mut raw);
    assert!(answer.contains(r#""code":"too_large""#), "{answer}");
    raw.write_all(&fragments(&send("message-over", 100, 1025))).unwrap();
    assert_eq!(raw_close_code(&mut raw), 1009);
}

#[test]
fn a_hundred_thousand_one_byte_continuation_frames_are_closed_1009_with_memory_bounded() {
    let s = Server::start(&[]);
    still_serves(&s);
    let before = rss_kib(&s);
    let mut raw = hello(&s, "flooder");
    let mut flood = frame(false, 1, b"[", true);
    for _ in 0..100_000 {
        flood.extend_from_slice(&frame(false, 0, b" ", true));
    }
    write_until_refused(&mut raw, &flood);
    // frame_bytes_max (64 KiB) is reached long before the frames end.
    assert_closed_with(&s, &mut raw, 1009);
    assert_grew_less_than(&s, before, 16, "100,000 continuation frames");
    still_serves(&s);
}

#[test]
fn a_ping_flood_that_never_reads_its_pongs_is_closed_4009_with_memory_bounded() {
    let s = Server::start(&["--set", "outbox_bytes_max=131072"]);
    still_serves(&s);
    let before = rss_kib(&s);
    let mut raw = hello(&s, "pinger");
    // Shrink the window we offer, so the pongs back up in the node, not in our kernel.
    set_small_receive_buffer(std::os::fd::AsRawFd::as_raw_fd(&raw));
    let ping = frame(true, 9, &[7u8; 125], true);
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    raw.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    // Pings in batches, never reading, until the node stops taking them.
    while Instant::now() < deadline {
        let batch = ping.repeat(1000);
        if raw.write_all(&batch).is_err() {
            break;
        }
        sent += 1000;
    }
    eprintln!("{sent} pings written before the node stopped reading them");
    // A client that never reads its pongs is a slow consumer.
    assert_closed_with(&s, &mut raw, 4009);
    assert_grew_less_than(&s, before, 32, "a ping flood");
    still_serves(&s);
}

#[test]
fn slowloris_and_silent_sockets_are_cut_at_the_handshake_deadline_while_a_client_connects_at_once() {
    let s = Server::start(&["--set", "auth_timeout_ms=2000"]);
    let before = rss_kib(&s);
    // 500 that send half a request head and then trickle a byte now and then, 500 that
    // never send anything.
    let mut slow: Vec<TcpStream> = Vec::new();
    for i in 0..1000 {
        let mut c = TcpStream::connect(&s.addr).unwrap();
        if i % 2 == 0 {
            c.write_all(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n").unwrap();
        }
        slow.push(c);
    }
    // A normal client meanwhile: at once, not after the deadline.
    let mut c = s.client("normal");
    c.send(json!({"t":"send","to":"other","id":"1","body":"hi"}));
    c.expect("ack");
    for round in 0..3 {
        for c in slow.iter_mut().step_by(2) {
            let _ = c.write_all(format!("X-Drip-{round}: 1\r\n").as_bytes());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // Every one of them is cut: the read ends (0 bytes or a reset), never a 101.
    for (i, c) in slow.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 64];
        match c.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("socket {i} got an answer: {:?}", String::from_utf8_lossy(&buf[..n])),
        }
    }
    assert_grew_less_than(&s, before, 64, "1,000 slowloris and silent sockets");
    c.send(json!({"t":"send","to":"other","id":"2","body":"still"}));
    c.expect("ack");
}

#[test]
fn a_request_head_over_the_limit_gets_431_and_a_close() {
    let s = Server::start(&["--set", "head_bytes_max=4096"]);
    let mut raw = TcpStream::connect(&s.addr).unwrap();
    let head = format!("GET /v1/ws HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "y".repeat(8000));
    write_until_refused(&mut raw, head.as_bytes());
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    still_serves(&s);
}

/// Every token a node must refuse, through `hello`: each is closed with 4001, and the right
/// one, with the configured issuer and audience, is welcomed.
#[test]
fn tokens_with_alg_none_another_alg_expired_future_nbf_wrong_aud_or_iss_or_signature_are_4001() {
    let s = Server::start(&["--set", "jwt_issuer=\"sb\"", "--set", "jwt_audience=\"chat\""]);
    let secret = std::fs::read_to_string(s.dir.join("jwt.secret")).unwrap();
    let secret = secret.trim().as_bytes();
    let now = switchboard_edge::node::now_ms() / 1000;
    let sign = |header: &str, claims: serde_json::Value, alg: jsonwebtoken::Algorithm| {
        let input = format!("{}.{}", B64.encode(header), B64.encode(claims.to_string()));
        let key = jsonwebtoken::EncodingKey::from_secret(secret);
        format!("{input}.{}", jsonwebtoken::crypto::sign(input.as_bytes(), &key, alg).unwrap())
    };
    let hs256 = r#"{"alg":"HS256","typ":"JWT"}"#;
    let claims = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = json!({"sub":"alice","exp":now + 600,"iss":"sb","aud":"chat"});
        f(&mut c);
        c
    };
    let good = sign(hs256, claims(&|_| {}), jsonwebtoken::Algorithm::HS256);
    let mut flipped = good.clone().into_bytes();
    let last = flipped.len() - 3;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let bad = [
        (
            "alg none",
            format!("{}.{}.", B64.encode(r#"{"alg":"none","typ":"JWT"}"#), B64.encode(claims(&|_| {}).to_string())),
        ),
        ("HS384", sign(r#"{"alg":"HS384","typ":"JWT"}"#, claims(&|_| {}), jsonwebtoken::Algorithm::HS384)),
        ("expired", sign(hs256, claims(&|c| c["exp"] = json!(now - 3600)), jsonwebtoken::Algorithm::HS256)),
        ("nbf in the future", sign(hs256, claims(&|c| c["nbf"] = json!(now + 3600)), jsonwebtoken::Algorithm::HS256)),
        ("wrong aud", sign(hs256, claims(&|c| c["aud"] = json!("other")), jsonwebtoken::Algorithm::HS256)),
        ("wrong iss", sign(hs256, claims(&|c| c["iss"] = json!("evil")), jsonwebtoken::Algorithm::HS256)),
        ("flipped signature byte", String::from_utf8(flipped).unwrap()),
    ];
    for (what, token) in bad {
        let mut c = Client::connect(&s, "/v1/ws", None);
        c.send(json!({"t":"hello","token":token}));
        assert_eq!(c.closed(), 4001, "{what}");
        // The same token in the upgrade URL.
        let mut c = Client::connect(&s, &format!("/v1/ws?token={token}"), None);
        c.send(json!({"t":"hello"}));
        assert_eq!(c.closed(), 4001, "{what}, in the URL");
    }
    let mut c = Client::connect(&s, "/v1/ws", None);
    c.send(json!({"t":"hello","token":good,"req":"r"}));
    assert_eq!(c.expect("welcome")["req"], "r");
}

/// Asks for a 4 KiB receive buffer on socket `fd` (the kernel doubles it).
fn set_small_receive_buffer(fd: std::os::fd::RawFd) {
    let small: libc::c_int = 4096;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket; the option value is a live c_int of `len` bytes.
    let r =
        unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (&small as *const libc::c_int).cast(), len) };
    assert_eq!(r, 0, "setsockopt SO_RCVBUF");
}

/// A client whose socket offers a 4 KiB window from its first packet (`SO_RCVBUF` set
/// before `connect`), so what it does not read waits in the node, not in its own kernel.
fn small_window_client(s: &Server, user: &str) -> Client {
    use std::os::fd::FromRawFd;
    let addr: std::net::SocketAddrV4 = s.addr.parse().unwrap();
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        set_small_receive_buffer(fd);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
            sin_zero: [0; 8],
        };
        let sa_len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(libc::connect(fd, (&sa as *const libc::sockaddr_in).cast(), sa_len), 0);
        TcpStream::from_raw_fd(fd)
    };
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let url = format!("ws://{}/v1/ws?token={}", s.addr, s.token(user));
    let (ws, _) = tungstenite::client(url, stream).expect("upgrade");
    let mut c = Client { ws };
    c.send(json!({"t":"hello"}));
    c.expect("welcome");
    c
}

/// A group of 500 connected members, one of which stops reading. It is closed with 4009 once
/// its queue is full (its own direct messages fill it: it takes the same queue as the group
/// traffic, and costs the test less), and when it reads again it finds a gap-free prefix and
/// then the close. Each of the other 499 gets every group message, in order, once, and the
/// node's memory stays bounded by the slow one's queue. (The others' latency beside it is a
/// benchmark's question, not a test's.)
#[test]
fn a_slow_consumer_among_500_receivers_is_closed_4009_and_the_others_get_everything() {
    let s = Server::start(&["--set", "outbox_bytes_max=262144", "--set", "message_bytes_max=8192"]);
    let members: Vec<String> = (0..500).map(|i| format!("m{i}")).collect();
    let names: Vec<&str> = members.iter().map(String::as_str).collect();
    let conv = s.create("sender", "group", &names);
    let mut slow = small_window_client(&s, "m0");
    let readers: Vec<_> = members[1..]
        .iter()
        .map(|m| {
            let mut c = s.client(m);
            std::thread::spawn(move || {
                // Every message of the group, in order, until "end".
                let mut ids = Vec::new();
                let mut last_seq = 0;
                loop {
                    let v = c.expect("msg");
                    let seq = v["seq"].as_u64().unwrap();
                    assert_eq!(seq, last_seq + 1, "a hole or a repeat");
                    last_seq = seq;
                    let id = v["id"].as_str().unwrap().to_string();
                    if id == "end" {
                        return ids;
                    }
                    ids.push(id);
                }
            })
        })
        .collect();
    let before = rss_kib(&s);
    let mut sender = s.client("sender");
    let mut flooder = s.client("flooder");
    let big = "x".repeat(8000);
    let mut sent = Vec::new();
    // 16 MB of direct messages to the slow one, far past what its queue and both kernels
    // hold; 200 group messages among them.
    for round in 0..200 {
        for i in 0..10 {
            flooder.send(json!({"t":"send","to":"m0","id":format!("f{round}-{i}"),"body":big}));
        }
        for _ in 0..10 {
            flooder.expect("ack");
        }
        let id = format!("g{round}");
        sender.send(json!({"t":"send","conv":conv,"id":id,"body":"to everyone"}));
        sender.expect("ack");
        sent.push(id);
    }
    sender.send(json!({"t":"send","conv":conv,"id":"end","body":"end"}));
    sender.expect("ack");
    for r in readers {
        assert_eq!(r.join().unwrap(), sent, "a reader beside the slow one missed or reordered");
    }
    assert_grew_less_than(&s, before, 64, "a slow consumer among 500");
    // What reached the slow one before its close: per conversation a gap-free start.
    let mut last: std::collections::BTreeMap<String, u64> = Default::default();
    let mut got = 0;
    let code = loop {
        match slow.ws.read().expect("the slow one's connection ends with a close frame") {
            tungstenite::Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["t"] == "msg" {
                    let seq = v["seq"].as_u64().unwrap();
                    let prev = last.insert(v["conv"].as_str().unwrap().to_string(), seq).unwrap_or(0);
                    assert_eq!(seq, prev + 1, "the slow one saw a hole before its close");
                    got += 1;
                }
            }
            tungstenite::Message::Close(f) => break f.map(|f| u16::from(f.code)),
            _ => {}
        }
    };
    eprintln!("the slow one got {got} of 2,200 messages, then its close");
    assert_eq!(code, Some(4009));
    assert!(got < 2_200, "the slow one was closed after it had everything");
}

/// A slow consumer that never reads again: its close frame can never be written, so it is
/// cut four heartbeats after the close was decided, and the close is still counted in
/// `switchboard_closes_total` (it once was only when the frame went out, so such a close
/// was missing from the counts).
#[test]
fn a_slow_consumer_that_never_reads_again_is_cut_and_its_close_counted() {
    let s = Server::start(&[
        "--set",
        "outbox_bytes_max=262144",
        "--set",
        "message_bytes_max=8192",
        "--set",
        "heartbeat_ms=300",
    ]);
    let slow = small_window_client(&s, "never-reads");
    let mut flooder = s.client("flooder");
    let big = "x".repeat(8000);
    // 16 MB, far past what its queue and both kernels hold.
    for round in 0..200 {
        for i in 0..10 {
            flooder.send(json!({"t":"send","to":"never-reads","id":format!("f{round}-{i}"),"body":big}));
        }
        for _ in 0..10 {
            flooder.expect("ack");
        }
    }
    let counted = "switchboard_closes_total{code=\"4009\"} 1";
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.http("GET", "/metrics", None, None).1.as_str().unwrap().contains(counted) {
        assert!(Instant::now() < deadline, "the slow consumer's close was never counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(slow);
    still_serves(&s);
}

/// How a peer's mesh connection ended: the application close code, or what else ended it.
fn mesh_close_code(connection: &quinn::Connection) -> Result<u64, String> {
    match connection.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => Ok(close.error_code.into_inner()),
        other => Err(format!("{other:?}")),
    }
}

/// A peer holding a genuine certificate of the cluster (node 2's: the CA signed it, so the
/// TLS handshake lets it in) that speaks garbage on the mesh. Each of its connections is
/// closed with the mesh's close code for what it did (3: the stream format broken; 4: a
/// header claiming another node's id) at its first bad bytes, the node's memory stays
/// bounded while 1 MiB of garbage follows each (60 MiB in all), the real node 2's connection
/// is never disturbed, and messages still cross the mesh after.
#[test]
fn a_peer_with_the_clusters_certificate_speaking_garbage_on_the_mesh_is_closed_and_the_cluster_carries_on() {
    use rand::{RngCore, SeedableRng};
    use switchboard_backplane::frame::MAGIC;
    use switchboard_backplane::{tls, NodeId, StreamKind};

    let cluster = Cluster::start(2, 0);
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    let before = rss_kib(n1);
    let impostor = tls::MeshTls::load_dir(&cluster.dir, NodeId(2)).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(impostor.client.clone()).unwrap();
    let config = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let endpoint = rt.block_on(async { quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()) }).unwrap();

    let header = |kind: u16, node: u16| {
        let mut h = MAGIC.to_vec();
        h.extend(kind.to_be_bytes());
        h.extend(node.to_be_bytes());
        h.extend(7u64.to_be_bytes());
        h
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    let mut noise = |len: usize| {
        let mut b = vec![0u8; len];
        rng.fill_bytes(&mut b);
        b
    };
    let mut closed = std::collections::BTreeMap::<u64, u32>::new();
    for round in 0..20 {
        let cases: [(&str, Vec<u8>, u64); 3] = [
            ("random bytes", noise(1 << 20), 3),
            ("the magic, then a stream kind that does not exist", [&header(999, 2)[..], &noise(1 << 20)].concat(), 3),
            (
                "a header claiming node 1's own id",
                [&header(StreamKind::Control.code(), 1)[..], &noise(1 << 20)].concat(),
                4,
            ),
        ];
        for (what, bytes, want) in cases {
            let got = rt.block_on(async {
                let connecting = endpoint.connect_with(config.clone(), cluster.mesh[0], &tls::node_name(NodeId(1)));
                let connection = connecting.unwrap().await.map_err(|e| format!("handshake: {e}"))?;
                let mut send = connection.open_uni().await.map_err(|e| format!("open: {e}"))?;
                // The node may close the connection before all of it is written.
                let _ = send.write_all(&bytes).await;
                let _ = send.finish();
                match tokio::time::timeout(Duration::from_secs(10), connection.closed()).await {
                    Ok(_) => mesh_close_code(&connection),
                    Err(_) => Err("still open after 10 s".to_string()),
                }
            });
            assert_eq!(got, Ok(want), "round {round}, {what}");
            *closed.entry(want).or_default() += 1;
        }
    }
    eprintln!("impostor connections closed, by code: {closed:?}");
    assert!(n1.metrics_value("switchboard_backplane_protocol_errors_total") >= 40.0);
    assert!(n1.metrics_value("switchboard_backplane_refused_total") >= 20.0);
    assert_grew_less_than(n1, before, 32, "60 MiB of garbage on the mesh");

    // The real node 2 was connected throughout, and the mesh still carries a dm across.
    cluster.wait_meshed();
    for n in [n1, n2] {
        assert_eq!(n.metrics_value("switchboard_backplane_reconnects_total"), 0.0, "the real connection was disturbed");
    }
    let (mut alice, mut bob) = (n1.client("alice"), n2.client("bob"));
    alice.send(json!({"t":"send","conv":"dm:alice:bob","id":"after","body":"still meshed"}));
    alice.expect("ack");
    assert_eq!(bob.expect("msg")["body"], "still meshed");
    still_serves(n1);
}
