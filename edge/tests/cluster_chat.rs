//! Three nodes on loopback, the third edge-only: every frame and REST call works the same
//! whichever node each client uses.

mod support;

use serde_json::json;
use support::{Client, Cluster};

/// Reads frames until one of type `t` (skipping `receipt`s and `typing`s that other tests'
/// steps cause), which it returns.
fn next_of(c: &mut Client, t: &str) -> serde_json::Value {
    loop {
        let v = c.recv();
        if v["t"] == t {
            return v;
        }
        assert!(v["t"] == "receipt" || v["t"] == "typing" || v["t"] == "notify", "expected {t}, got {v}");
    }
}

#[test]
fn one_to_one_groups_channels_receipts_and_typing_work_across_nodes() {
    let cluster = Cluster::start(3, 1);
    let (n1, n2, n3) = (cluster.node(1), cluster.node(2), cluster.node(3));

    // A dm across nodes, to both of the recipient's devices on two other nodes.
    let mut alice = n1.client("alice");
    let mut bob = n2.client("bob");
    let mut bob_phone = n3.client("bob");
    alice.send(json!({"t":"send","conv":"dm:alice:bob","id":"m1","body":{"text":"hi"}}));
    let ack = alice.expect("ack");
    assert_eq!((ack["seq"].as_u64(), ack["dup"].as_bool()), (Some(1), Some(false)), "{ack}");
    for b in [&mut bob, &mut bob_phone] {
        let m = b.expect("msg");
        assert_eq!(
            (m["conv"].as_str(), m["seq"].as_u64(), m["from"].as_str()),
            (Some("dm:alice:bob"), Some(1), Some("alice"))
        );
        assert_eq!(m["body"], json!({"text":"hi"}));
    }
    // The reply from the edge-only node reaches the sender and the recipient's other device.
    bob_phone.send(json!({"t":"send","conv":"dm:alice:bob","id":"r1","body":"hello"}));
    assert_eq!(bob_phone.expect("ack")["seq"], 2);
    assert_eq!(alice.expect("msg")["seq"], 2);
    assert_eq!(bob.expect("msg")["seq"], 2);

    // A retried send on another node is `dup` with the original seq, and nobody gets it twice.
    let mut alice_laptop = n3.client("alice");
    alice_laptop.send(json!({"t":"send","conv":"dm:alice:bob","id":"m1","body":{"text":"hi"}}));
    let dup = alice_laptop.expect("ack");
    assert_eq!((dup["seq"].as_u64(), dup["dup"].as_bool()), (Some(1), Some(true)), "{dup}");
    bob.expect_silence(300);
    bob_phone.expect_silence(100);

    // Receipts and typing cross nodes too.
    bob.send(json!({"t":"receipt","conv":"dm:alice:bob","seq":2,"kind":"read"}));
    let r = next_of(&mut alice, "receipt");
    assert_eq!((r["user"].as_str(), r["seq"].as_u64(), r["kind"].as_str()), (Some("bob"), Some(2), Some("read")));
    bob_phone.send(json!({"t":"typing","conv":"dm:alice:bob"}));
    assert_eq!(next_of(&mut alice, "typing")["user"], "bob");

    // A group with members on all three nodes, created on the edge-only one.
    let mut carol = n3.client("carol");
    let group = n3.create("alice", "group", &["bob", "carol"]);
    for c in [&mut carol, &mut bob, &mut bob_phone, &mut alice, &mut alice_laptop] {
        assert_eq!(next_of(c, "joined")["conv"], group.as_str());
    }
    alice.send(json!({"t":"send","conv":group,"id":"g1","body":"all"}));
    let seq = next_of(&mut alice, "ack")["seq"].as_u64().unwrap();
    for c in [&mut bob, &mut bob_phone, &mut carol, &mut alice_laptop] {
        let m = next_of(c, "msg");
        assert_eq!((m["conv"].as_str(), m["seq"].as_u64()), (Some(group.as_str()), Some(seq)));
    }

    // `sync`, `inbox` and REST history answer the same from any node.
    carol.send(json!({"t":"sync","conv":group,"after":0,"req":"s"}));
    let mut seqs = Vec::new();
    loop {
        let v = next_of_any(&mut carol);
        match v["t"].as_str() {
            Some("msg") => seqs.push(v["seq"].as_u64().unwrap()),
            Some("synced") => break,
            _ => panic!("{v}"),
        }
    }
    assert_eq!(seqs.last(), Some(&seq), "{seqs:?}");
    bob_phone.send(json!({"t":"inbox","req":"i"}));
    let inbox = next_of(&mut bob_phone, "inbox");
    let convs: Vec<&str> = inbox["convs"].as_array().unwrap().iter().map(|c| c["conv"].as_str().unwrap()).collect();
    assert!(convs.contains(&"dm:alice:bob") && convs.contains(&group.as_str()), "{inbox}");
    for node in [n1, n2, n3] {
        let (status, page) =
            node.http("GET", &format!("/v1/conversations/{group}/messages"), Some(&node.token("bob")), None);
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["messages"][0]["seq"].as_u64(), Some(seq), "{page}");
    }

    // A member removed on one node gets nothing after the removal's seq, on any node.
    let (status, changes) = n2.http(
        "POST",
        &format!("/v1/conversations/{group}/members"),
        Some(&n2.token("alice")),
        Some(json!({"remove":["carol"]})),
    );
    assert_eq!(status, 200, "{changes}");
    let removal = changes["changes"][0]["seq"].as_u64().unwrap();
    assert_eq!(next_of(&mut carol, "left")["conv"], group.as_str());
    assert_eq!(next_of(&mut bob, "msg")["seq"].as_u64(), Some(removal));
    assert_eq!(next_of(&mut alice, "msg")["seq"].as_u64(), Some(removal));
    alice.send(json!({"t":"send","conv":group,"id":"g2","body":"without carol"}));
    assert_eq!(next_of(&mut alice, "ack")["seq"].as_u64(), Some(removal + 1));
    assert_eq!(next_of(&mut bob, "msg")["seq"].as_u64(), Some(removal + 1));
    carol.expect_silence(300);

    // A channel: pushes where it is open, `notify` elsewhere.
    let mut dave = n3.client("dave");
    let mut erin = n1.client("erin");
    let channel = n2.create("alice", "channel", &["dave", "erin"]);
    for c in [&mut dave, &mut erin, &mut alice] {
        assert_eq!(next_of(c, "joined")["conv"], channel.as_str());
    }
    dave.send(json!({"t":"open","conv":channel}));
    // `open` has no answer: a sync on the same conversation shows it was handled.
    dave.send(json!({"t":"sync","conv":channel,"after":0,"req":"o"}));
    next_of(&mut dave, "synced");
    alice.send(json!({"t":"send","conv":channel,"id":"c1","body":"news"}));
    let seq = next_of(&mut alice, "ack")["seq"].as_u64().unwrap();
    assert_eq!(next_of(&mut dave, "msg")["seq"].as_u64(), Some(seq));
    let n = erin.expect("notify");
    assert_eq!((n["conv"].as_str(), n["head"].as_u64()), (Some(channel.as_str()), Some(seq)));

    // Presence asked on one node about users on the others; last-seen once they leave.
    dave.send(json!({"t":"presence","users":["alice","carol","erin","zed"],"req":"p"}));
    let p = next_of(&mut dave, "presence");
    let online: Vec<bool> = p["users"].as_array().unwrap().iter().map(|u| u["online"].as_bool().unwrap()).collect();
    assert_eq!(online, [true, true, true, false], "{p}");
    carol.close();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, p) = n1.http("GET", "/v1/presence?users=carol", Some(&n1.token("alice")), None);
        assert_eq!(status, 200, "{p}");
        let carol = &p["users"][0];
        if carol["online"] == false {
            assert!(carol["last_seen"].as_u64().is_some_and(|ms| ms > 0), "{p}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "carol stayed online: {p}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn next_of_any(c: &mut Client) -> serde_json::Value {
    loop {
        let v = c.recv();
        if v["t"] != "receipt" && v["t"] != "typing" {
            return v;
        }
    }
}

#[test]
fn a_store_node_holds_conversations_and_serves_no_clients() {
    use support::{dm_on, Role};
    let cluster = Cluster::with_roles(&[Role::Both, Role::Store, Role::Edge], |_| "127.0.0.1".to_string());
    let (n1, store, n3) = (cluster.node(1), cluster.node(2), cluster.node(3));

    // Its listener answers operators, not clients, and says where clients go.
    assert_eq!(store.http("GET", "/readyz", None, None).0, 200);
    let (_, metrics) = store.http("GET", "/metrics", None, None);
    assert!(metrics.as_str().unwrap().lines().any(|l| l == "switchboard_backplane_peers_up 2"));
    for node in [n1, store, n3] {
        let (_, metrics) = node.http("GET", "/metrics", None, None);
        let text = metrics.as_str().unwrap();
        assert!(text.contains("# TYPE switchboard_backplane_lag_seconds histogram"), "{text}");
        assert_eq!(support::metrics_problems(text), Vec::<String>::new(), "{text}");
        assert_eq!(support::promtool_says(text), "", "{text}");
    }
    let refused = tungstenite::connect(format!("ws://{}/v1/ws?token={}", store.addr, store.token("alice")));
    match refused {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 404),
        other => panic!("a store node upgraded a client: {:?}", other.map(|(_, r)| r.status())),
    }
    let (status, body) = store.http("GET", "/v1/presence?users=alice", Some(&store.token("alice")), None);
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("role store") && message.contains(&n1.addr) && message.contains(&n3.addr), "{message}");
    // Clients are not sent there to reconnect.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut probe = support::Client::connect(n1, &format!("/v1/ws?token={}", n1.token("probe")), None);
        probe.send(json!({"t":"hello"}));
        let welcome = probe.expect("welcome");
        if welcome["nodes"] == json!([format!("ws://{}/v1/ws", n3.addr)]) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "welcome.nodes: {welcome}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // Its conversations are sequenced there and delivered across the edges.
    let mut alice = n1.client("alice");
    let (bob, dm) = dm_on(2, &[1, 2], "alice");
    let mut bob = n3.client(&bob);
    alice.send(json!({"t":"send","conv":dm,"id":"s1","body":"stored on node 2"}));
    assert_eq!(next_of(&mut alice, "ack")["seq"], 1);
    let m = next_of(&mut bob, "msg");
    assert_eq!((m["conv"].as_str(), m["seq"].as_u64()), (Some(dm.as_str()), Some(1)));
    let (status, history) = n3.http("GET", &format!("/v1/conversations/{dm}/messages"), Some(&n3.token("alice")), None);
    assert_eq!((status, history["messages"][0]["id"].as_str()), (200, Some("s1")), "{history}");
    let store_data = store.dir.join("store");
    assert!(store_data.join("SHARDS").exists(), "the store node keeps the log in {}", store_data.display());
}
