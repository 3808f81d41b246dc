//! End to end, over real sockets against the real `switchboard` binary: every frame of
//! PROTOCOL.md §4 and every bullet of "Semantics that clients rely on".

mod support;

use serde_json::json;
use support::{Client, Server};
use tungstenite::Message;

#[test]
fn one_to_one_ack_then_delivery_to_every_connection_but_the_sender() {
    let s = Server::start(&[]);
    let mut alice = s.client("alice");
    let mut alice2 = s.client("alice");
    let mut bob = s.client("bob");
    alice.send(json!({"t":"send","to":"bob","id":"m1","body":{"text":"hi"}}));
    let ack = alice.expect("ack");
    assert_eq!(
        (ack["id"].as_str(), ack["conv"].as_str(), ack["seq"].as_u64(), ack["dup"].as_bool()),
        (Some("m1"), Some("dm:alice:bob"), Some(1), Some(false))
    );
    assert!(ack["ts"].as_u64().unwrap() > 1_700_000_000_000);
    for c in [&mut bob, &mut alice2] {
        let m = c.expect("msg");
        assert_eq!(
            (m["conv"].as_str(), m["seq"].as_u64(), m["id"].as_str(), m["from"].as_str(), m["kind"].as_str()),
            (Some("dm:alice:bob"), Some(1), Some("m1"), Some("alice"), Some("text"))
        );
        assert_eq!(m["body"], json!({"text":"hi"}), "the body arrives as the sender's JSON");
        assert_eq!(m["ts"], ack["ts"]);
    }
    alice.expect_silence(300);
    // The reply goes the other way by conversation id, in seq order.
    for i in 0..20 {
        bob.send(json!({"t":"send","conv":"dm:alice:bob","id":format!("b{i}"),"body":i}));
    }
    for i in 0..20 {
        assert_eq!(bob.expect("ack")["seq"], 2 + i);
        let m = alice.expect("msg");
        assert_eq!((m["seq"].as_u64(), m["body"].as_u64()), (Some(2 + i), Some(i)));
    }
}

#[test]
fn retried_send_is_a_dup_with_the_same_seq_and_no_second_msg_and_conflict_on_a_new_body() {
    let s = Server::start(&[]);
    let mut alice = s.client("alice");
    let mut bob = s.client("bob");
    alice.send(json!({"t":"send","to":"bob","id":"same","body":"x"}));
    assert_eq!(alice.expect("ack")["seq"], 1);
    assert_eq!(bob.expect("msg")["seq"], 1);
    // A retry from a new connection (as after a reconnect) is still the same message.
    let mut again = s.client("alice");
    again.send(json!({"t":"send","to":"bob","id":"same","body":"x"}));
    let ack = again.expect("ack");
    assert_eq!((ack["seq"].as_u64(), ack["dup"].as_bool()), (Some(1), Some(true)));
    again.send(json!({"t":"send","to":"bob","id":"same","body":"different"}));
    let e = again.expect("error");
    assert_eq!((e["code"].as_str(), e["id"].as_str()), (Some("conflict"), Some("same")));
    again.send(json!({"t":"send","to":"bob","id":"next","body":"y"}));
    assert_eq!(again.expect("ack")["seq"], 2);
    let m = bob.expect("msg");
    assert_eq!((m["seq"].as_u64(), m["id"].as_str()), (Some(2), Some("next")), "no second msg for the dup");
}

#[test]
fn group_of_five_with_one_offline_who_resyncs() {
    let s = Server::start(&[]);
    let g = s.create("u1", "group", &["u2", "u3", "u4", "u5"]);
    let mut online: Vec<Client> = ["u1", "u2", "u3", "u4"].iter().map(|u| s.client(u)).collect();
    for i in 0..5 {
        let from = i % 4;
        online[from].send(json!({"t":"send","conv":g,"id":format!("g{i}"),"body":{"n":i}}));
        assert_eq!(online[from].expect("ack")["seq"], i as u64 + 1);
        for (j, c) in online.iter_mut().enumerate() {
            if j != from {
                let m = c.expect("msg");
                assert_eq!(
                    (m["seq"].as_u64(), m["from"].as_str()),
                    (Some(i as u64 + 1), Some(["u1", "u2", "u3", "u4"][from]))
                );
            }
        }
    }
    let mut u5 = s.client("u5");
    u5.send(json!({"t":"inbox","req":"i"}));
    let inbox = u5.expect("inbox");
    assert_eq!(inbox["convs"], json!([{"conv":g,"kind":"group","head":5,"delivered":0,"read":0}]));
    assert_eq!(inbox["req"], "i");
    u5.send(json!({"t":"sync","conv":g,"after":0,"limit":3,"req":"s1"}));
    for seq in 1..=3 {
        assert_eq!(u5.expect("msg")["seq"], seq);
    }
    let synced = u5.expect("synced");
    assert_eq!(synced, json!({"t":"synced","conv":g,"upto":3,"head":5,"more":true,"req":"s1"}));
    u5.send(json!({"t":"sync","conv":g,"after":3}));
    for seq in 4..=5 {
        let m = u5.expect("msg");
        assert_eq!((m["seq"].as_u64(), m["body"]["n"].as_u64()), (Some(seq), Some(seq - 1)));
    }
    assert_eq!(u5.expect("synced")["more"], false);
    // Online now: live pushes reach u5 too.
    online[0].send(json!({"t":"send","conv":g,"id":"live","body":1}));
    assert_eq!(u5.expect("msg")["seq"], 6);
}

#[test]
fn channel_pushes_only_while_open_and_notifies_otherwise() {
    let s = Server::start(&["--set", "notify_interval_ms=100"]);
    let ch = s.create("owner", "channel", &["fan"]);
    let mut owner = s.client("owner");
    let mut fan = s.client("fan");
    for i in 0..3 {
        owner.send(json!({"t":"send","conv":ch,"id":format!("c{i}"),"body":i}));
        owner.expect("ack");
    }
    // Three messages while not open: one coalesced notify with the newest head.
    let n = fan.expect("notify");
    assert_eq!(n, json!({"t":"notify","conv":ch,"head":3}));
    fan.expect_silence(300);
    fan.send(json!({"t":"open","conv":ch}));
    fan.expect_silence(200);
    owner.send(json!({"t":"send","conv":ch,"id":"c3","body":3}));
    assert_eq!(fan.expect("msg")["seq"], 4);
    fan.send(json!({"t":"close","conv":ch}));
    fan.expect_silence(200);
    owner.send(json!({"t":"send","conv":ch,"id":"c4","body":4}));
    assert_eq!(fan.expect("notify")["head"], 5);
    // Only members may open it.
    let mut stranger = s.client("stranger");
    stranger.send(json!({"t":"open","conv":ch,"req":"o"}));
    let e = stranger.expect("error");
    assert_eq!((e["code"].as_str(), e["req"].as_str()), (Some("forbidden"), Some("o")));
}

#[test]
fn receipts_are_monotonic_cursors_forwarded_to_members() {
    let s = Server::start(&[]);
    let mut alice = s.client("alice");
    let mut bob = s.client("bob");
    for i in 0..3 {
        alice.send(json!({"t":"send","to":"bob","id":format!("r{i}"),"body":i}));
        alice.expect("ack");
        bob.expect("msg");
    }
    bob.send(json!({"t":"receipt","conv":"dm:alice:bob","seq":2,"kind":"read"}));
    assert_eq!(
        alice.expect("receipt"),
        json!({"t":"receipt","conv":"dm:alice:bob","user":"bob","seq":2,"kind":"read"})
    );
    // A smaller seq than stored is ignored: no frame.
    bob.send(json!({"t":"receipt","conv":"dm:alice:bob","seq":1,"kind":"read"}));
    alice.expect_silence(300);
    bob.send(json!({"t":"receipt","conv":"dm:alice:bob","seq":3,"kind":"delivered"}));
    assert_eq!(alice.expect("receipt")["kind"], "delivered");
    bob.send(json!({"t":"inbox"}));
    assert_eq!(
        bob.expect("inbox")["convs"][0],
        json!({"conv":"dm:alice:bob","kind":"dm","head":3,"delivered":3,"read":2})
    );
}

#[test]
fn typing_reaches_other_members_and_is_not_stored() {
    let s = Server::start(&[]);
    let mut alice = s.client("alice");
    let mut bob = s.client("bob");
    alice.send(json!({"t":"send","to":"bob","id":"t0","body":0}));
    alice.expect("ack");
    bob.expect("msg");
    bob.send(json!({"t":"typing","conv":"dm:alice:bob"}));
    assert_eq!(alice.expect("typing"), json!({"t":"typing","conv":"dm:alice:bob","user":"bob"}));
    bob.expect_silence(200);
    alice.send(json!({"t":"sync","conv":"dm:alice:bob","after":0}));
    alice.expect("msg");
    assert_eq!(alice.expect("synced")["head"], 1, "typing took no seq");
}

#[test]
fn presence_before_and_after_disconnect() {
    let s = Server::start(&[]);
    let mut alice = s.client("alice");
    let mut bob = s.client("bob");
    alice.send(json!({"t":"presence","users":["bob","nobody"],"req":"p"}));
    let p = alice.expect("presence");
    assert_eq!(p["users"], json!([{"user":"bob","online":true},{"user":"nobody","online":false}]));
    bob.close();
    let _ = bob.closed();
    std::thread::sleep(std::time::Duration::from_millis(200));
    alice.send(json!({"t":"presence","users":["bob"]}));
    let p = alice.expect("presence");
    assert_eq!(p["users"][0]["online"], false);
    assert!(p["users"][0]["last_seen"].as_u64().unwrap() > 1_700_000_000_000);
    let (status, v) = s.http("GET", "/v1/presence?users=alice,bob", Some(&s.token("carol")), None);
    assert_eq!(status, 200);
    assert_eq!((v["users"][0]["online"].as_bool(), v["users"][1]["online"].as_bool()), (Some(true), Some(false)));
    // Last-seen survives a restart.
    let bob_seen = p["users"][0]["last_seen"].as_u64();
    drop(alice);
    let s = s.terminate_and_restart();
    let (_, v) = s.http("GET", "/v1/presence?users=bob,alice", Some(&s.token("carol")), None);
    assert_eq!(v["users"][0]["last_seen"].as_u64(), bob_seen, "{v}");
    assert_eq!(v["users"][1]["online"], false);
    assert!(v["users"][1]["last_seen"].as_u64() >= bob_seen, "alice left at the drain: {v}");
}

#[test]
fn membership_removal_cuts_delivery_and_is_a_sequenced_system_message() {
    let s = Server::start(&[]);
    let g = s.create("owner", "group", &["carol", "dave"]);
    let mut owner = s.client("owner");
    let mut carol = s.client("carol");
    let mut dave = s.client("dave");
    owner.send(json!({"t":"send","conv":g,"id":"before","body":1}));
    owner.expect("ack");
    assert_eq!(carol.expect("msg")["seq"], 1);
    dave.expect("msg");
    // Only the owner (or an admin) changes members.
    let (status, _) = s.http(
        "POST",
        &format!("/v1/conversations/{g}/members"),
        Some(&s.token("dave")),
        Some(json!({"remove":["carol"]})),
    );
    assert_eq!(status, 403);
    let (status, v) = s.http(
        "POST",
        &format!("/v1/conversations/{g}/members"),
        Some(&s.token("owner")),
        Some(json!({"remove":["carol"]})),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["changes"], json!([{"user":"carol","event":"member_removed","seq":2}]));
    assert_eq!(carol.expect("left"), json!({"t":"left","conv":g,"kind":"group"}));
    let sys = dave.expect("msg");
    assert_eq!(
        (sys["seq"].as_u64(), sys["kind"].as_str(), sys["from"].as_str()),
        (Some(2), Some("system"), Some("owner"))
    );
    assert_eq!(sys["body"], json!({"event":"member_removed","user":"carol"}));
    owner.expect("msg");
    owner.send(json!({"t":"send","conv":g,"id":"after","body":2}));
    owner.expect("ack");
    assert_eq!(dave.expect("msg")["seq"], 3);
    carol.expect_silence(300);
    carol.send(json!({"t":"sync","conv":g,"after":0,"req":"x"}));
    assert_eq!(carol.expect("error")["code"], "forbidden");
    carol.send(json!({"t":"send","conv":g,"id":"nope","body":0}));
    let e = carol.expect("error");
    assert_eq!((e["code"].as_str(), e["id"].as_str()), (Some("forbidden"), Some("nope")));
    // Adding is the same: `joined`, and a system message the new member sees.
    let (status, _) = s.http(
        "POST",
        &format!("/v1/conversations/{g}/members"),
        Some(&s.token("owner")),
        Some(json!({"add":["carol"]})),
    );
    assert_eq!(status, 200);
    assert_eq!(carol.expect("joined")["conv"], g.as_str());
    let m = carol.expect("msg");
    assert_eq!((m["seq"].as_u64(), m["body"]["event"].as_str()), (Some(4), Some("member_added")));
}

#[test]
fn history_pages_newest_first_through_the_cursor_and_forward_with_after() {
    let s = Server::start(&[]);
    let g = s.create("alice", "group", &["bob"]);
    let t = s.token("alice");
    for i in 1..=7 {
        let (status, v) = s.http(
            "POST",
            &format!("/v1/conversations/{g}/messages"),
            Some(&t),
            Some(json!({"id":format!("h{i}"),"body":{"i":i}})),
        );
        assert_eq!((status, v["seq"].as_u64(), v["dup"].as_bool()), (200, Some(i), Some(false)));
    }
    let (_, v) =
        s.http("POST", &format!("/v1/conversations/{g}/messages"), Some(&t), Some(json!({"id":"h7","body":{"i":7}})));
    assert_eq!((v["seq"].as_u64(), v["dup"].as_bool()), (Some(7), Some(true)));
    let mut seqs = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => format!("/v1/conversations/{g}/messages?limit=3"),
            Some(c) => format!("/v1/conversations/{g}/messages?limit=3&cursor={c}"),
        };
        let (status, v) = s.http("GET", &path, Some(&s.token("bob")), None);
        assert_eq!(status, 200, "{v}");
        seqs.extend(v["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()));
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seqs, vec![7, 6, 5, 4, 3, 2, 1]);
    let (_, v) = s.http("GET", &format!("/v1/conversations/{g}/messages?after=5"), Some(&t), None);
    let fwd: Vec<u64> = v["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!((fwd, v["next_cursor"].is_null()), (vec![6, 7], true));
    assert_eq!(v["messages"][0]["body"], json!({"i":6}));
    // Membership is checked on every read.
    let (status, v) = s.http("GET", &format!("/v1/conversations/{g}/messages"), Some(&s.token("eve")), None);
    assert_eq!((status, v["code"].as_str()), (403, Some("forbidden")));
    let (status, v) = s.http("GET", &format!("/v1/conversations/{g}"), Some(&t), None);
    assert_eq!(status, 200);
    assert_eq!(v, json!({"conv":g,"kind":"group","title":"t","head":7,"members_count":2}));
    let (status, _) = s.http("GET", &format!("/v1/conversations/{g}"), Some(&s.token("eve")), None);
    assert_eq!(status, 403);
    let (status, v) = s.http("GET", "/v1/conversations/nope", Some(&t), None);
    assert_eq!((status, v["code"].as_str()), (404, Some("not_found")));
    let (status, v) = s.http("GET", "/v1/conversations/nope", None, None);
    assert_eq!((status, v["code"].as_str()), (401, Some("unauthorized")));
}

#[test]
fn messages_survive_kill_9_and_a_restart() {
    let s = Server::start(&[]);
    let mut alice = s.client("alice");
    for i in 0..50 {
        alice.send(json!({"t":"send","to":"bob","id":format!("k{i}"),"body":i}));
    }
    for _ in 0..50 {
        alice.expect("ack");
    }
    drop(alice);
    let s = s.kill_and_restart();
    let mut bob = s.client("bob");
    bob.send(json!({"t":"sync","conv":"dm:alice:bob","after":40}));
    for seq in 41..=50 {
        assert_eq!(bob.expect("msg")["seq"], seq);
    }
    assert_eq!(bob.expect("synced")["head"], 50);
    let mut alice = s.client("alice");
    alice.send(json!({"t":"send","to":"bob","id":"k3","body":3}));
    let ack = alice.expect("ack");
    assert_eq!((ack["seq"].as_u64(), ack["dup"].as_bool()), (Some(4), Some(true)), "dedup survives the restart");
}

#[test]
fn binary_encoding_round_trip() {
    let s = Server::start(&[]);
    let t = s.token("alice");
    let mut alice = Client::connect(&s, &format!("/v1/ws?token={t}"), Some("switchboard.v1.bin"));
    // hello: type 1, no token, no device, req "h".
    alice.send_raw(Message::binary(vec![1, 0, 0, 1, 1, b'h']));
    let welcome = alice.recv()["binary"].as_str().unwrap().to_string();
    assert!(welcome.starts_with("4005616c696365"), "welcome for alice: {welcome}");
    let mut bob = s.client("bob");
    // send: type 2, no conv, to "bob", id "b1", body "1", no kind, no req.
    alice.send_raw(Message::binary(vec![2, 0, 1, 3, b'b', b'o', b'b', 2, b'b', b'1', 1, b'1', 0, 0]));
    let ack = alice.recv()["binary"].as_str().unwrap().to_string();
    assert!(ack.starts_with("410262310c646d3a616c6963653a626f6201"), "ack: {ack}");
    let m = bob.expect("msg");
    assert_eq!((m["id"].as_str(), m["body"].as_u64()), (Some("b1"), Some(1)), "JSON and binary clients talk");
}

#[test]
fn retention_cuts_old_segments_and_sync_reports_the_gap() {
    let s = Server::start(&[
        "--set",
        "shards=1",
        "--set",
        "segment_bytes_max=65536",
        "--set",
        "retention_bytes_max=100000",
        "--set",
        "retention_check_ms=50",
    ]);
    let mut alice = s.client("alice");
    let body = "r".repeat(1000);
    // In rounds, so that the store rolls segments between them (it rolls between commits).
    for round in 0..8 {
        for i in 0..50 {
            alice.send(json!({"t":"send","to":"bob","id":format!("old{}", round * 50 + i),"body":body}));
        }
        for _ in 0..50 {
            alice.expect("ack");
        }
    }
    // Let retention run: a resync from the start then begins with a gap.
    let mut bob = s.client("bob");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        bob.send(json!({"t":"sync","conv":"dm:alice:bob","after":0,"limit":1}));
        let first = bob.recv();
        while bob.recv()["t"] != "synced" {}
        if first["t"] == "gap" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "retention did not run within 10 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The sequence goes on after the cut.
    alice.send(json!({"t":"send","to":"bob","id":"new","body":1}));
    assert_eq!(alice.expect("ack")["seq"], 401);
    bob.expect("msg");
    bob.send(json!({"t":"sync","conv":"dm:alice:bob","after":0,"limit":1000}));
    let gap = bob.expect("gap");
    let to = gap["to"].as_u64().unwrap();
    assert_eq!((gap["conv"].as_str(), gap["from"].as_u64()), (Some("dm:alice:bob"), Some(1)));
    assert!((1..=400).contains(&to), "{gap}");
    for seq in to + 1..=401 {
        assert_eq!(bob.expect("msg")["seq"], seq, "after the gap, every retained seq, in order");
    }
    assert_eq!(bob.expect("synced"), json!({"t":"synced","conv":"dm:alice:bob","upto":401,"head":401,"more":false}));
}

#[test]
fn a_burst_of_thousands_of_frames_arrives_whole() {
    // More frames queued at once than one writev may carry (IOV_MAX): the writer must split
    // them, not fail.
    let s = Server::start(&[]);
    let mut alice = s.client("alice");
    for i in 0..3000 {
        alice.send(json!({"t":"send","to":format!("u{}", i % 7),"id":format!("b{i}"),"body":i}));
    }
    for _ in 0..3000 {
        alice.expect("ack");
    }
}
