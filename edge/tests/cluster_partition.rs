//! A backplane partition between two nodes: delivery between them stops, nothing
//! acknowledged is lost, and everything arrives, in order and once, after it heals.
//!
//! The nodes run on 127.0.0.11, .12 and .13 inside a network namespace that the test makes
//! (so nothing outside it is touched); the partition is a pair of policy-routing rules there
//! that black-hole the two nodes' traffic to each other, in both directions. The outer test
//! makes the namespace and runs the inner one in it.

mod support;

use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};
use support::Cluster;

const INSIDE: &str = "PARTITION_TEST_NETNS";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("the ip command (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_partition_between_two_nodes_heals_with_nothing_lost() {
    let ns = format!("sb-part-{}", std::process::id());
    ip(&["netns", "add", &ns]);
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _gone = Gone(ns.clone());
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    // The local table is looked up first by default; the partition's rules go before it.
    ip(&["-n", &ns, "rule", "add", "pref", "100", "lookup", "local"]);
    ip(&["-n", &ns, "rule", "del", "pref", "0"]);
    let status = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "inside_the_namespace", "--include-ignored", "--nocapture"])
        .env(INSIDE, &ns)
        .status()
        .unwrap();
    assert!(status.success(), "the test inside the namespace failed");
}

fn partition(on: bool) {
    let verb = if on { "add" } else { "del" };
    for (from, to) in [("127.0.0.11", "127.0.0.12"), ("127.0.0.12", "127.0.0.11")] {
        ip(&["rule", verb, "pref", "10", "from", from, "to", to, "blackhole"]);
    }
}

/// A client and every `msg` pushed to it.
struct Side {
    who: &'static str,
    client: support::Client,
    pushed: Vec<u64>,
}

impl Side {
    /// The next frame that is not a `msg` (those are logged).
    fn answer(&mut self) -> serde_json::Value {
        loop {
            let v = self.client.recv();
            if v["t"] != "msg" {
                return v;
            }
            self.pushed.push(v["seq"].as_u64().unwrap());
        }
    }

    /// Sends; `Some(seq)` when acknowledged, `None` when unavailable.
    fn send(&mut self, id: &str) -> Option<u64> {
        self.client.send(json!({"t":"send","conv":CONV,"id":id,"body":id}));
        let v = self.answer();
        match v["t"].as_str() {
            Some("ack") => Some(v["seq"].as_u64().unwrap()),
            Some("error") if v["code"] == "unavailable" => None,
            _ => panic!("{}: {v}", self.who),
        }
    }
}

const CONV: &str = "dm:alice:bob";

#[test]
#[ignore = "run by a_partition_between_two_nodes_heals_with_nothing_lost, in its namespace"]
fn inside_the_namespace() {
    assert!(std::env::var(INSIDE).is_ok(), "run by the outer test only");
    let cluster = Cluster::start_on(3, 1, |i| format!("127.0.0.1{i}"));
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    // alice on node 1, bob on node 2; their dm lives on one of the two, so the other is cut
    // off from it.
    let mut sides = [
        Side { who: "alice", client: n1.client("alice"), pushed: Vec::new() },
        Side { who: "bob", client: n2.client("bob"), pushed: Vec::new() },
    ];
    let mut acked: Vec<(u64, String)> = Vec::new();
    acked.push((sides[0].send("before").expect("acknowledged"), "alice-before".into()));

    partition(true);
    let cut = Instant::now();
    let mut unacked = Vec::new();
    for i in 0..3 {
        for (k, side) in sides.iter_mut().enumerate() {
            let id = format!("{}-{i}", side.who);
            match side.send(&id) {
                Some(seq) => acked.push((seq, id)),
                None => unacked.push((k, id)),
            }
        }
    }
    assert!(!unacked.is_empty(), "the cut-off side kept getting acks: {acked:?}");
    eprintln!("partitioned for {:?}: {} acknowledged, {} unavailable", cut.elapsed(), acked.len(), unacked.len());

    partition(false);
    let deadline = Instant::now() + Duration::from_secs(60);
    for (k, id) in unacked {
        loop {
            if let Some(seq) = sides[k].send(&id) {
                acked.push((seq, id));
                break;
            }
            assert!(Instant::now() < deadline, "never healed");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    acked.sort();
    let head = acked.last().unwrap().0;
    // Every seq is someone's acknowledged message, once.
    assert_eq!(acked.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=head).collect::<Vec<_>>(), "{acked:?}");
    for node in [n1, n2] {
        let (status, page) =
            node.http("GET", &format!("/v1/conversations/{CONV}/messages?after=0"), Some(&node.token("bob")), None);
        assert_eq!(status, 200, "{page}");
        let seqs: Vec<u64> = page["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=head).collect::<Vec<_>>(), "{page}");
    }
    // Each live connection got every message of the other, in order and once: pushed, or
    // filled from the owner after the heal.
    for side in &mut sides {
        let theirs: Vec<u64> = acked.iter().filter(|(_, id)| !id.starts_with(side.who)).map(|(s, _)| *s).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while side.pushed.len() < theirs.len() {
            assert!(Instant::now() < deadline, "{}: got {:?} of {theirs:?}", side.who, side.pushed);
            let v = side.client.recv();
            if v["t"] == "msg" {
                side.pushed.push(v["seq"].as_u64().unwrap());
            }
        }
        assert_eq!(side.pushed, theirs, "{}", side.who);
        side.client.expect_silence(300);
    }
    let repairs: Vec<String> = [n1, n2]
        .iter()
        .map(|n| {
            let (_, m) = n.http("GET", "/metrics", None, None);
            let m = m.as_str().unwrap_or_default().to_string();
            m.lines().filter(|l| l.starts_with("switchboard_cluster_gap_repairs_total")).collect()
        })
        .collect();
    eprintln!("gap repairs on nodes 1 and 2: {repairs:?}");
}
