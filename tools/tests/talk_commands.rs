//! `switchboard-ctl send|tail|history|presence|inbox|create|members` against a real daemon:
//! what each prints for people and with `--json`, and that each failure exits non-zero with
//! a line that says what to do.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Output, Stdio};
use support::{ctl, daemon};

struct Node {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(daemon())
        .args(["--listen", "127.0.0.1:0", "--quic-listen", "127.0.0.1:0", "--shards", "1", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut first).unwrap();
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let addr = first.split("ws://").nth(1).and_then(|s| s.split('/').next()).unwrap().to_string();
    Node { child, url: format!("http://{addr}"), dir }
}

impl Node {
    /// `switchboard-ctl ARGS --url … --user USER --data-dir …`.
    fn run(&self, user: &str, args: &[&str]) -> Output {
        ctl().args(args).args(["--url", &self.url, "--user", user, "--data-dir"]).arg(self.dir.path()).output().unwrap()
    }
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn failed(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "stdout {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn send_history_inbox_presence_and_tail_as_people_and_scripts_see_them() {
    let n = node();
    let sent = ok(&n.run("alice", &["send", "--to", "bob", "--id", "m1", "hello bob"]));
    assert_eq!(sent.trim_end(), "sent: dm:alice:bob seq 1 (id m1)");
    // The same id again is the same message: its ack says so, as JSON for scripts.
    let again: Value =
        serde_json::from_str(&ok(&n.run("alice", &["send", "--to", "bob", "--id", "m1", "hello bob", "--json"])))
            .unwrap();
    assert_eq!(
        (again["t"].as_str(), again["seq"].as_u64(), again["dup"].as_bool()),
        (Some("ack"), Some(1), Some(true))
    );
    ok(&n.run("bob", &["send", "--conv", "dm:alice:bob", "hi alice"]));

    let history = ok(&n.run("bob", &["history", "dm:alice:bob"]));
    assert_eq!(history, "dm:alice:bob #2 bob: hi alice\ndm:alice:bob #1 alice: hello bob\n");
    let page: Value =
        serde_json::from_str(&ok(&n.run("bob", &["history", "dm:alice:bob", "--limit", "1", "--json"]))).unwrap();
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().unwrap();
    let older = ok(&n.run("bob", &["history", "dm:alice:bob", "--limit", "1", "--cursor", cursor]));
    assert_eq!(older, "dm:alice:bob #1 alice: hello bob\n");

    let inbox = ok(&n.run("alice", &["inbox"]));
    let line = inbox.lines().find(|l| l.starts_with("dm:alice:bob")).unwrap_or_else(|| panic!("{inbox}"));
    assert!(line.contains("head 2") && line.contains("unread 2"), "{line}");

    let presence = ok(&n.run("alice", &["presence", "bob", "nobody"]));
    assert!(presence.contains("bob: last seen") && presence.contains("nobody: never seen"), "{presence}");

    // Tail follows live, after printing what came after --after.
    let mut tail = ctl()
        .args(["tail", "--conv", "dm:alice:bob", "--after", "1", "--url", &n.url, "--user", "bob", "--data-dir"])
        .arg(n.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "dm:alice:bob #2 bob: hi alice");
    ok(&n.run("alice", &["send", "--to", "bob", "live"]));
    assert_eq!(lines.next().unwrap().unwrap(), "dm:alice:bob #3 alice: live");
    let _ = tail.kill();
    let _ = tail.wait();
}

#[test]
fn groups_and_members_and_every_refusal_says_what_to_do() {
    let n = node();
    let group = ok(&n.run("alice", &["create", "--kind", "group", "--title", "Team", "--members", "bob"]));
    let group = group.trim();
    assert!(group.starts_with("g_"), "{group}");
    assert_eq!(ok(&n.run("alice", &["members", group, "--add", "carol"])).trim(), "carol member_added (seq 1)");
    ok(&n.run("carol", &["send", "--conv", group, "hi team"]));

    let err = failed(&n.run("bob", &["members", group, "--add", "mallory"]));
    assert!(err.starts_with("switchboard-ctl: forbidden:") && err.contains("owner"), "{err}");
    let err = failed(&n.run("mallory", &["history", group]));
    assert!(err.contains("forbidden") && err.contains("members"), "{err}");
    // A usage mistake is clap's: exit 2 and the usage.
    let usage = n.run("alice", &["send", "--to", "bob"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("<TEXT>"));

    let nobody =
        ctl().args(["send", "--to", "bob", "x", "--url", "http://127.0.0.1:1", "--token", "t"]).output().unwrap();
    let err = failed(&nobody);
    assert!(err.contains("no server at http://127.0.0.1:1") && err.contains("cargo run --release"), "{err}");
    let refused = ctl().args(["inbox", "--url", &n.url, "--token", "not-a-jwt"]).output().unwrap();
    let err = failed(&refused);
    assert!(err.contains("4001") && err.contains("token"), "{err}");
    let anonymous = ctl().args(["inbox", "--url", &n.url]).output().unwrap();
    assert!(failed(&anonymous).contains("--token T, or --user NAME"));
}

/// `--quic`: the same commands over native QUIC, trusting the development certificate by the
/// hash the node serves; a refused token over QUIC says so as over WebSocket.
#[test]
fn send_tail_and_inbox_over_quic() {
    let n = node();
    let sent = ok(&n.run("alice", &["send", "--quic", "--to", "bob", "--id", "q1", "over quic"]));
    assert_eq!(sent.trim_end(), "sent: dm:alice:bob seq 1 (id q1)");
    let again = ok(&n.run("alice", &["send", "--quic", "--to", "bob", "--id", "q1", "over quic"]));
    assert_eq!(again.trim_end(), "already stored: dm:alice:bob seq 1 (id q1)");
    let mut tail = ctl()
        .args([
            "tail",
            "--quic",
            "--conv",
            "dm:alice:bob",
            "--after",
            "0",
            "--url",
            &n.url,
            "--user",
            "bob",
            "--data-dir",
        ])
        .arg(n.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "dm:alice:bob #1 alice: over quic");
    // Sent over WebSocket, followed over QUIC.
    ok(&n.run("alice", &["send", "--to", "bob", "over websocket"]));
    assert_eq!(lines.next().unwrap().unwrap(), "dm:alice:bob #2 alice: over websocket");
    let _ = tail.kill();
    let _ = tail.wait();
    let inbox = ok(&n.run("bob", &["inbox", "--quic"]));
    assert!(inbox.lines().any(|l| l.starts_with("dm:alice:bob") && l.contains("head 2")), "{inbox}");
    let out =
        ctl().args(["send", "--quic", "--to", "bob", "x", "--url", &n.url, "--token", "not.a.token"]).output().unwrap();
    let err = failed(&out);
    assert!(err.contains("4001") && err.contains("token was refused"), "{err}");
}
