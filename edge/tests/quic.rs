//! The protocol over native QUIC (a quinn client, trusting the development certificate by
//! hash): the representative set of the WebSocket end-to-end tests, the close codes that
//! apply, bad input, an unknown ALPN, and a client that moves to another address mid-chat.

mod support;

use serde_json::{json, Value};
use support::quic::Quic;
use support::Server;
use switchboard_edge::quic::client::Closed;
use switchboard_edge::ws::handshake::Encoding;

fn code(c: Closed) -> u16 {
    match c {
        Closed::Code(code, _) => code,
        other => panic!("expected a close code, got {other:?}"),
    }
}

#[test]
fn send_ack_dup_and_messages_both_ways_between_quic_and_websocket() {
    let s = Server::start(&[]);
    let mut alice = Quic::hello(&s, "alice");
    let mut bob = s.client("bob");
    alice.send(json!({"t":"send","to":"bob","id":"m1","body":{"text":"over quic"}}));
    let ack = alice.expect("ack");
    assert_eq!(
        (ack["conv"].as_str(), ack["seq"].as_u64(), ack["dup"].as_bool()),
        (Some("dm:alice:bob"), Some(1), Some(false))
    );
    let m = bob.expect("msg");
    assert_eq!((m["from"].as_str(), m["body"]["text"].as_str()), (Some("alice"), Some("over quic")));
    // A retry is a dup with the same seq, and nobody gets a second msg.
    alice.send(json!({"t":"send","to":"bob","id":"m1","body":{"text":"over quic"}}));
    let dup = alice.expect("ack");
    assert_eq!((dup["seq"].as_u64(), dup["dup"].as_bool()), (Some(1), Some(true)));
    bob.send(json!({"t":"send","to":"alice","id":"r1","body":{"text":"over websocket"}}));
    assert_eq!(bob.expect("ack")["seq"], 2);
    let back = alice.expect("msg");
    assert_eq!((back["seq"].as_u64(), back["body"]["text"].as_str()), (Some(2), Some("over websocket")));
    bob.expect_silence(300);
    // ping/pong, req echoed, and an unknown frame is a bad request that keeps the session.
    alice.send(json!({"t":"ping","req":"p1"}));
    assert_eq!(alice.expect("pong")["req"], "p1");
    alice.send(json!({"t":"what"}));
    assert_eq!(alice.expect("error")["code"], "bad_request");
}

#[test]
fn sync_inbox_and_presence_over_quic() {
    let s = Server::start(&[]);
    let mut bob = s.client("bob");
    for i in 1..=3 {
        bob.send(json!({"t":"send","to":"carol","id":format!("b{i}"),"body":i}));
        bob.expect("ack");
    }
    let mut carol = Quic::hello(&s, "carol");
    carol.send(json!({"t":"sync","conv":"dm:bob:carol","after":1,"req":"s"}));
    let seqs: Vec<u64> = (0..2).map(|_| carol.expect("msg")["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [2, 3], "exactly the missing range");
    let synced = carol.expect("synced");
    assert_eq!(
        (synced["upto"].as_u64(), synced["more"].as_bool(), synced["req"].as_str()),
        (Some(3), Some(false), Some("s"))
    );
    carol.send(json!({"t":"inbox"}));
    let inbox = carol.expect("inbox");
    assert_eq!(inbox["convs"][0]["head"], 3);
    carol.send(json!({"t":"presence","users":["bob","nobody"]}));
    let p = carol.expect("presence");
    assert_eq!(p["users"][0]["online"], true);
    assert_eq!(p["users"][1]["online"], false);
    // And bob sees carol online while she is connected over QUIC.
    bob.send(json!({"t":"presence","users":["carol"]}));
    assert_eq!(bob.expect("presence")["users"][0]["online"], true);
}

#[test]
fn the_binary_encoding_over_alpn_switchboard_1_bin() {
    use switchboard_edge::proto::binary::{encode_client, server_frame_json, server_type};
    use switchboard_edge::proto::ClientFrame;
    let s = Server::start(&[]);
    let mut q = Quic::connect_with(&s, Encoding::Binary);
    let token = s.token("dave");
    q.send_bytes(&encode_client(&ClientFrame::Hello { token: Some(token.into()), device: None }, None));
    let welcome = q.recv_bytes().unwrap();
    assert_eq!(welcome[0], server_type::WELCOME);
    let welcome = server_frame_json(&welcome).unwrap();
    assert_eq!((welcome["t"].as_str(), welcome["user"].as_str()), (Some("welcome"), Some("dave")), "{welcome}");
    q.send_bytes(&encode_client(&ClientFrame::Ping, Some("r")));
    let pong = q.recv_bytes().unwrap();
    assert_eq!(&pong[..], [server_type::PONG, 1, 1, b'r'], "a pong with req r");
    assert_eq!(server_frame_json(&pong).unwrap(), json!({"t": "pong", "req": "r"}));
}

#[test]
fn hello_rules_and_close_codes_over_quic() {
    let s = Server::start(&[
        "--set",
        "auth_timeout_ms=500",
        "--set",
        "frame_bytes_max=1024",
        "--set",
        "message_bytes_max=512",
    ]);
    // A stream that never says hello: 4001 at the handshake deadline.
    let mut silent = Quic::connect(&s);
    silent.send_raw(&[0, 0]);
    assert_eq!(code(silent.closed()), 4001);
    // The first frame must be hello, and the token must be good.
    let mut first = Quic::connect(&s);
    first.send(json!({"t":"ping"}));
    assert_eq!(first.closed(), Closed::Code(4001, "the first frame must be hello".into()));
    let mut bad = Quic::connect(&s);
    bad.send(json!({"t":"hello","token":"x.y.z"}));
    assert_eq!(bad.closed(), Closed::Code(4001, "invalid token".into()));
    // Invalid UTF-8 in a JSON connection: 1007, as over WebSocket.
    let mut utf8 = Quic::hello(&s, "erin");
    utf8.send_bytes(&[0xff, 0xfe]);
    assert_eq!(code(utf8.closed()), 1007);
    // A body over message_bytes_max is too_large and the connection stays.
    let mut big = Quic::hello(&s, "erin");
    big.send(json!({"t":"send","to":"bob","id":"b","body":"x".repeat(600)}));
    assert_eq!(big.expect("error")["code"], "too_large");
    // A length prefix over frame_bytes_max closes with 1009 before the frame arrives.
    big.send_raw(&1025u32.to_be_bytes());
    assert_eq!(code(big.closed()), 1009);
    // A frame of exactly the limit is taken in (and is a bad request, being no JSON).
    let mut limit = Quic::hello(&s, "erin");
    limit.send_bytes(&[b' '; 1024]);
    assert_eq!(limit.expect("error")["code"], "bad_request");
    // A second bidirectional stream: 1002.
    let mut two = Quic::hello(&s, "erin");
    let conn = two.client.connection.clone();
    two.send_raw(&[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        let _ = send.write_all(b"\0\0\0\x02{}").await;
    });
    assert_eq!(two.closed(), Closed::Code(1002, "one bidirectional stream per connection".into()));
    // Ending the stream is a normal close.
    let mut done = Quic::hello(&s, "erin");
    done.finish();
    assert_eq!(code(done.closed()), 1000);
}

#[test]
fn rate_limits_refuse_then_close_with_4008() {
    let s = Server::start(&["--set", "sends_per_s=1", "--set", "sends_burst=1", "--set", "rate_refusals_max=2"]);
    let mut q = Quic::hello(&s, "frank");
    q.send(json!({"t":"send","to":"bob","id":"r0","body":1}));
    assert_eq!(q.expect("ack")["seq"], 1);
    let mut codes = Vec::new();
    for i in 1..4 {
        q.send(json!({"t":"send","to":"bob","id":format!("r{i}"),"body":1}));
    }
    loop {
        match q.recv_bytes() {
            Ok(b) => {
                let v: Value = serde_json::from_slice(&b).unwrap();
                codes.push(v["code"].as_str().unwrap_or(v["t"].as_str().unwrap()).to_string());
            }
            Err(c) => {
                assert_eq!(code(c), 4008);
                break;
            }
        }
    }
    assert_eq!(codes, ["rate_limited", "rate_limited"], "then the close");
}

#[test]
fn draining_tells_quic_clients_to_reconnect_then_closes_with_4010() {
    let mut s = Server::start(&[]);
    let mut q = Quic::hello(&s, "gina");
    let pid = s.pid();
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(q.expect("reconnect")["after_ms"].is_u64());
    assert_eq!(code(q.closed()), 4010);
    assert!(s.wait().success());
}

#[test]
fn a_client_without_a_switchboard_alpn_is_refused_in_the_handshake() {
    let s = Server::start(&[]);
    let refused = Quic::try_connect_alpn(&s, b"http/1.1").err().expect("refused");
    assert!(refused.contains("no_application_protocol") || refused.contains("120"), "{refused}");
    // The development endpoint names what is offered.
    let (status, v) = s.http("GET", "/dev/quic", None, None);
    assert_eq!(status, 200);
    assert_eq!(v["alpn"], json!(["switchboard/1", "switchboard/1+bin", "h3"]));
    assert_eq!(v["path"], "/v1/wt");
}

/// Connection migration: the client moves to another local port twice while messages keep
/// coming; it receives every one, in order, once, on the same session (no new welcome), and
/// its own sends after the move are acknowledged.
#[test]
fn a_client_that_moves_to_another_address_keeps_its_session() {
    let s = Server::start(&[]);
    let mut hana = Quic::hello(&s, "hana");
    let mut ivan = s.client("ivan");
    let before = hana.local_port();
    let mut got = Vec::new();
    let mut ports = vec![before];
    for round in 0..3 {
        for i in 0..20 {
            let n = round * 20 + i;
            ivan.send(json!({"t":"send","to":"hana","id":format!("i{n}"),"body":n}));
            ivan.expect("ack");
        }
        for _ in 0..20 {
            let m = hana.expect("msg");
            got.push(m["seq"].as_u64().unwrap());
        }
        if round < 2 {
            hana.rebind();
            ports.push(hana.local_port());
            // Something must go out from the new address for the server to see the move.
            hana.send(json!({"t":"send","to":"ivan","id":format!("h{round}"),"body":"moved"}));
            assert_eq!(hana.expect("ack")["dup"], false);
            assert_eq!(ivan.expect("msg")["body"], "moved");
        }
    }
    ports.dedup();
    assert_eq!(ports.len(), 3, "the client really moved: {ports:?}");
    let want: Vec<u64> = (1..=62).filter(|s| *s != 21 && *s != 42).collect();
    assert_eq!(got, want, "every message once, in order, across the moves");
    assert_eq!(
        s.metrics_value("switchboard_connects_total"),
        2.0,
        "one QUIC and one WebSocket connection, no reconnect"
    );
}

/// Both ends over QUIC, each with its own connection, on one shard or two.
#[test]
fn two_quic_clients_talk() {
    let s = Server::start(&[]);
    let mut a = Quic::hello(&s, "ann");
    let mut b = Quic::hello(&s, "ben");
    for i in 0..5 {
        a.send(json!({"t":"send","to":"ben","id":format!("a{i}"),"body":i}));
        assert_eq!(a.expect("ack")["seq"], i + 1);
        assert_eq!(b.expect("msg")["body"], i);
    }
}

/// Two connections on one client endpoint (one UDP socket), as a load generator has them.
#[test]
fn two_connections_on_one_endpoint() {
    use switchboard_edge::quic::client::{endpoint, Client};
    let s = Server::start(&[]);
    let (addr, trust) = support::quic::quic_of(&s);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let ep = endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut r = Client::connect(&ep, addr, &trust, Encoding::Json, 1 << 20).await.unwrap();
        r.send(json!({"t":"hello","token": s.token("rita")}).to_string().as_bytes()).await.unwrap();
        assert!(String::from_utf8_lossy(&r.recv().await.unwrap()).contains("welcome"));
        let mut w = Client::connect(&ep, addr, &trust, Encoding::Json, 1 << 20).await.unwrap();
        w.send(json!({"t":"hello","token": s.token("sam")}).to_string().as_bytes()).await.unwrap();
        assert!(String::from_utf8_lossy(&w.recv().await.unwrap()).contains("welcome"));
        let Client { tx: mut wtx, rx: mut wrx, .. } = w;
        let Client { rx: mut rrx, tx: _rtx, .. } = r;
        for i in 0..3 {
            wtx.send(json!({"t":"send","to":"rita","id":format!("{i}"),"body":{"at":i}}).to_string().as_bytes())
                .await
                .unwrap();
        }
        for _ in 0..3 {
            assert!(String::from_utf8_lossy(&wrx.recv().await.unwrap()).contains("ack"));
        }
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), rrx.recv()).await.expect("a msg").unwrap();
        assert!(String::from_utf8_lossy(&got).contains("msg"), "{got:?}");
    });
}

/// Nothing of a connection outlives it: after clients leave (closing themselves, or closed by
/// the server), every link, with the two tasks and the shard's state that hold it, is gone.
#[test]
fn a_closed_connection_leaves_nothing_behind() {
    // Two heartbeats of silence end a connection whose client vanished without a word.
    let s = Server::start(&["--set", "heartbeat_ms=1000"]);
    let held = || s.metrics_value("switchboard_quic_connections");
    let mut clients: Vec<Quic> = (0..10).map(|i| Quic::hello(&s, &format!("leaver{i}"))).collect();
    let mut refused = Quic::connect(&s);
    refused.send(json!({"t":"hello","token":"bad"}));
    assert_eq!(code(refused.closed()), 4001);
    assert!(held() >= 10.0, "the live ones are counted: {}", held());
    // Half end their stream (the server closes them), half vanish (their runtime goes
    // before their close can be sent).
    let gone: Vec<Quic> = clients.drain(5..).collect();
    for c in gone {
        c.client.connection.close(0u32.into(), b"bye");
    }
    for c in &mut clients {
        c.finish();
    }
    for c in &mut clients {
        assert_eq!(code(c.closed()), 1000);
    }
    drop(clients);
    drop(refused);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while held() > 0.0 {
        assert!(std::time::Instant::now() < deadline, "{} QUIC connections still held", held());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(s.metrics_value("switchboard_connections"), 0.0);
}
