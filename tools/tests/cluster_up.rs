//! `switchboard-ctl cluster up`: real daemons on loopback, the ports and `cluster.json` that
//! DESIGN.md fixes, one JWT secret for all, the mesh up between them, and a clean stop on
//! SIGTERM.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::daemon;

/// A base port whose 3 nodes' TCP and UDP ports are free now.
fn free_base() -> u16 {
    for base in (21_000..40_000).step_by(97) {
        let free = (0..3u16).all(|i| {
            let p = base + 10 * i;
            std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", p + 2)).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no free ports");
}

fn http(addr: &str, path: &str, token: Option<&str>) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn a_local_cluster_comes_up_as_designed_and_stops_on_sigterm() {
    let server = daemon();
    let dir = tempfile::tempdir().unwrap();
    let base = free_base();
    let mut up = Command::new(env!("CARGO_BIN_EXE_switchboard-ctl"))
        .args(["cluster", "up", "--nodes", "3", "--edge-only", "1", "--base-port", &base.to_string(), "--server"])
        .arg(&server)
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let json = dir.path().join("cluster.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !json.exists() {
        assert!(up.try_wait().unwrap().is_none(), "cluster up exited early");
        assert!(Instant::now() < deadline, "no cluster.json");
        std::thread::sleep(Duration::from_millis(50));
    }
    let listing: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let nodes = listing["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let mut pids = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let p = base + 10 * i as u16;
        assert_eq!(node["id"], i + 1);
        assert_eq!(node["role"], if i == 2 { "edge" } else { "both" });
        assert_eq!(node["ws"], format!("ws://127.0.0.1:{p}/v1/ws"));
        assert_eq!(node["http"], format!("http://127.0.0.1:{p}"));
        assert_eq!(node["backplane"], format!("127.0.0.1:{}", p + 2));
        assert_eq!(
            node["data_dir"],
            dir.path().canonicalize().unwrap().join(format!("node-{}", i + 1)).display().to_string()
        );
        pids.push(node["pid"].as_u64().unwrap());
        for file in ["ca.pem", &format!("node-{}.pem", i + 1), &format!("node-{}.key", i + 1), "jwt.secret"] {
            assert!(dir.path().join(file).is_file(), "{file}");
        }
    }
    // One secret for all: a token minted from DIR works on every node.
    let token = Command::new(env!("CARGO_BIN_EXE_switchboard-ctl"))
        .args(["token", "alice", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    for i in 0..3u16 {
        let addr = format!("127.0.0.1:{}", base + 10 * i);
        let answer = http(&addr, "/v1/presence?users=bob", Some(&token));
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // And the mesh is up: each node sees both others.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http(&addr, "/metrics", None).lines().any(|l| l == "switchboard_backplane_peers_up 2") {
            assert!(Instant::now() < deadline, "node {} never saw both peers", i + 1);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let mut out = String::new();
    // SIGTERM: every node drains and exits, then the command.
    // Safety: kill(2) on a child of this test.
    unsafe { libc::kill(up.id() as i32, libc::SIGTERM) };
    let status = up.wait().unwrap();
    up.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(status.success(), "{status}\n{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("node ")).count(), 3, "{out}");
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "node {pid} still running");
    }
}

#[test]
fn edge_only_nodes_need_a_store_node_left() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard-ctl"))
        .args(["cluster", "up", "--nodes", "2", "--edge-only", "2", "--dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node to hold the store"));
}
