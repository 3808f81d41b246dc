//! Authorization across nodes, fuzzed: a random membership graph over three nodes and 10,000
//! random operations (sends, syncs, history reads, receipts, typing, members added and
//! removed) from users connected to random nodes. Checked against a model of who was a member
//! when: no message, receipt or typing reaches a non-member, no read by a non-member
//! succeeds, and a removed member receives nothing sequenced after its removal.
//!
//! `AUTHZ_SEED` replays a run; `AUTHZ_OPS` sets the number of operations (10,000).

mod support;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use support::{Client, Cluster};

const USERS: usize = 8;
const GROUPS: usize = 4;

/// Who was a member of one conversation, and when.
#[derive(Default)]
struct Membership {
    initial: BTreeSet<String>,
    /// (seq, user, added) in seq order.
    changes: Vec<(u64, String, bool)>,
}

impl Membership {
    fn now(&self) -> BTreeSet<String> {
        self.at(u64::MAX)
    }

    /// The members once every change up to and including `seq` applied.
    fn at(&self, seq: u64) -> BTreeSet<String> {
        let mut m = self.initial.clone();
        for (s, user, added) in &self.changes {
            if *s <= seq {
                if *added {
                    m.insert(user.clone());
                } else {
                    m.remove(user);
                }
            }
        }
        m
    }
}

struct User {
    name: String,
    client: Client,
    /// Every frame it was pushed, in order.
    frames: Vec<Value>,
}

impl User {
    /// Reads until `done` says a frame is the answer awaited; keeps the rest.
    fn until(&mut self, done: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.client.recv();
            if done(&v) {
                return v;
            }
            self.frames.push(v);
        }
    }

    /// Reads until the answer to sync `req` of `conv`; the page's messages are the reader's
    /// to read as a member now, not pushes, and are not kept.
    fn until_synced(&mut self, req: &str, conv: &str) -> Value {
        loop {
            let v = self.client.recv();
            if v["req"] == req || (v["t"] == "synced" && v["conv"] == conv) {
                return v;
            }
            if !(v["t"] == "msg" && v["conv"] == conv) {
                self.frames.push(v);
            }
        }
    }

    /// Reads what is already there.
    fn drain(&mut self) {
        self.client.ws.get_ref().set_read_timeout(Some(Duration::from_millis(2))).unwrap();
        while let Ok(m) = self.client.ws.read() {
            if let tungstenite::Message::Text(t) = m {
                self.frames.push(serde_json::from_str(&t).unwrap());
            }
        }
        self.client.ws.get_ref().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
}

#[test]
fn random_operations_across_nodes_never_reach_or_serve_a_non_member() {
    let seed: u64 = std::env::var("AUTHZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(rand::random);
    let ops: usize = std::env::var("AUTHZ_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    eprintln!("AUTHZ_SEED={seed}");
    let mut rng = SmallRng::seed_from_u64(seed);
    let cluster = Cluster::start(3, 1);
    let names: Vec<String> = (0..USERS).map(|u| format!("u{u}")).collect();
    let mut convs: Vec<(String, Membership)> = Vec::new();
    for _ in 0..GROUPS {
        let members: Vec<&str> = names.iter().filter(|_| rng.gen_bool(0.5)).map(String::as_str).collect();
        let conv = cluster.node(1).create("boss", "group", &members);
        let initial = members.iter().map(|s| s.to_string()).chain(["boss".to_string()]).collect();
        convs.push((conv, Membership { initial, changes: Vec::new() }));
    }
    let mut users: Vec<User> = names
        .iter()
        .map(|n| User { name: n.clone(), client: cluster.node(rng.gen_range(1..=3)).client(n), frames: Vec::new() })
        .collect();
    // (conv, sender, frame type) → everyone who was a member when such a frame was sent.
    let mut ephemeral_audience: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
    let mut refused = 0;
    for op in 0..ops {
        let u = rng.gen_range(0..USERS);
        let c = rng.gen_range(0..GROUPS);
        let (conv, membership) = &mut convs[c];
        let member = membership.now().contains(&users[u].name);
        let user = &mut users[u];
        match rng.gen_range(0..10) {
            0..=3 => {
                let id = format!("op{op}");
                user.client.send(json!({"t":"send","conv":conv,"id":id,"body":{"op":op}}));
                let v = user.until(|v| v["id"] == id.as_str() && (v["t"] == "ack" || v["t"] == "error"));
                if member {
                    assert_eq!(v["t"], "ack", "op {op}: a member's send: {v}");
                } else {
                    assert_eq!(
                        (v["t"].as_str(), v["code"].as_str()),
                        (Some("error"), Some("forbidden")),
                        "op {op}: {v}"
                    );
                    refused += 1;
                }
            }
            4 => {
                let req = format!("op{op}");
                user.client.send(json!({"t":"sync","conv":conv,"after":0,"limit":5,"req":req}));
                let v = user.until_synced(&req, conv);
                if member {
                    assert_eq!(v["t"], "synced", "op {op}: {v}");
                } else {
                    assert_eq!(v["code"], "forbidden", "op {op}: a non-member's sync: {v}");
                }
            }
            5 => {
                let node = cluster.node(rng.gen_range(1..=3));
                let (status, v) = node.http(
                    "GET",
                    &format!("/v1/conversations/{conv}/messages?limit=5"),
                    Some(&node.token(&user.name)),
                    None,
                );
                if member {
                    assert_eq!(status, 200, "op {op}: {v}");
                } else {
                    assert_eq!(status, 403, "op {op}: a non-member read history: {v}");
                }
            }
            6 | 7 => {
                let t = if rng.gen_bool(0.5) { "typing" } else { "receipt" };
                let frame = if t == "typing" {
                    json!({"t":"typing","conv":conv})
                } else {
                    json!({"t":"receipt","conv":conv,"seq":1,"kind":"read"})
                };
                ephemeral_audience
                    .entry((conv.clone(), user.name.clone(), t.to_string()))
                    .or_default()
                    .extend(membership.now());
                user.client.send(frame);
                // A sync behind it on the same conversation: answered once the owner has
                // taken the frame before it, so its fan-out is done before the next change.
                let req = format!("op{op}");
                user.client.send(json!({"t":"sync","conv":conv,"after":0,"limit":1,"req":req}));
                user.until_synced(&req, conv);
            }
            _ => {
                // boss adds a non-member or removes a member, through any node.
                let now = membership.now();
                let target = &names[rng.gen_range(0..USERS)];
                let add = !now.contains(target);
                let body = if add { json!({"add":[target]}) } else { json!({"remove":[target]}) };
                let node = cluster.node(rng.gen_range(1..=3));
                let (status, v) = node.http(
                    "POST",
                    &format!("/v1/conversations/{conv}/members"),
                    Some(&node.token("boss")),
                    Some(body),
                );
                assert_eq!(status, 200, "op {op}: {v}");
                for change in v["changes"].as_array().unwrap() {
                    let seq = change["seq"].as_u64().unwrap();
                    let added = change["event"] == "member_added";
                    membership.changes.push((seq, change["user"].as_str().unwrap().to_string(), added));
                }
            }
        }
        if op % 50 == 49 {
            for u in &mut users {
                u.drain();
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut delivered = 0;
    for u in &mut users {
        u.drain();
        for f in &u.frames {
            let Some(conv) = f["conv"].as_str() else { continue };
            let Some((_, membership)) = convs.iter().find(|(c, _)| c == conv) else { continue };
            match f["t"].as_str() {
                Some("msg") => {
                    let seq = f["seq"].as_u64().unwrap();
                    assert!(
                        membership.at(seq).contains(&u.name),
                        "{} got {conv} seq {seq} while not a member (AUTHZ_SEED={seed}): {f}",
                        u.name
                    );
                    delivered += 1;
                }
                Some(t @ ("typing" | "receipt")) => {
                    let from = f["user"].as_str().unwrap().to_string();
                    let audience = ephemeral_audience.get(&(conv.to_string(), from, t.to_string()));
                    assert!(
                        audience.is_some_and(|a| a.contains(&u.name)),
                        "{} got a {t} of {conv} while never a member when one was sent (AUTHZ_SEED={seed}): {f}",
                        u.name
                    );
                }
                _ => {}
            }
        }
    }
    // What the store holds: every message sent by someone who was a member at its seq.
    let boss = cluster.node(2).token("boss");
    for (conv, membership) in &convs {
        let (status, v) = cluster.node(2).http(
            "GET",
            &format!("/v1/conversations/{conv}/messages?after=0&limit=1000"),
            Some(&boss),
            None,
        );
        assert_eq!(status, 200, "{v}");
        for m in v["messages"].as_array().unwrap() {
            if m["kind"] == "system" {
                continue;
            }
            let (seq, from) = (m["seq"].as_u64().unwrap(), m["from"].as_str().unwrap());
            assert!(membership.at(seq).contains(from), "{conv} seq {seq} stored from non-member {from}");
        }
    }
    eprintln!("{ops} operations: {refused} sends by non-members refused, {delivered} messages pushed, all to members");
    assert!(refused > 0 && delivered > 0, "the run exercised both sides");
}
