//! Daemons with a `node_id`: they join the backplane with the cluster's certificates and say
//! so in `/metrics`; a data folder keeps the node id and partition count it was made with.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchboard_backplane::tls::write_cluster_certs;

struct Node {
    child: Child,
    addr: String,
}

impl Node {
    /// Waits up to `limit` for the process to exit; its status and what it printed on stderr.
    fn exits_within(&mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "still running after {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        (status, err)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cluster_args(id: u16, certs: &Path, backplane: u16, peers: &[String], data: &Path) -> Vec<String> {
    let set = |k: &str, v: String| ["--set".to_string(), format!("{k}={v}")];
    let mut args = vec!["--listen".into(), "127.0.0.1:0".into(), "--quic-listen".into(), "127.0.0.1:0".into()];
    args.extend(["--shards".into(), "1".into()]);
    args.extend(["--data-dir".into(), data.display().to_string()]);
    args.extend(set("node_id", id.to_string()));
    args.extend(set("backplane_listen", format!("\"127.0.0.1:{backplane}\"")));
    args.extend(set("peers", format!("[{}]", peers.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(","))));
    for (key, file) in [
        ("cluster_ca_file", "ca.pem".to_string()),
        ("node_cert_file", format!("node-{id}.pem")),
        ("node_key_file", format!("node-{id}.key")),
    ] {
        args.extend(set(key, format!("{:?}", certs.join(file).display().to_string())));
    }
    args
}

/// Starts the daemon; `Err` with what it printed if it exits instead.
fn start(args: &[String]) -> Result<Node, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start switchboard");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    if first.is_empty() {
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let status = child.wait().unwrap();
        return Err(format!("{status}: {err}"));
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let addr = first.split("ws://").nth(1).and_then(|s| s.split('/').next()).expect("an address").to_string();
    Ok(Node { child, addr })
}

fn get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

/// The `welcome` a client gets from the daemon at `addr` whose data folder is `dir`.
fn welcome(addr: &str, dir: &Path) -> serde_json::Value {
    let secret = std::fs::read_to_string(dir.join("jwt.secret")).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let user = switchboard_store::UserId::new("alice").unwrap();
    let token = switchboard_edge::auth::mint_hs256(secret.trim().as_bytes(), &user, now, 3600, false);
    let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/v1/ws?token={token}")).unwrap();
    ws.send(tungstenite::Message::text(r#"{"t":"hello"}"#)).unwrap();
    let tungstenite::Message::Text(text) = ws.read().unwrap() else { panic!("not text") };
    serde_json::from_str(&text).unwrap()
}

fn free_udp_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::UdpSocket> = (0..n).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    held.iter().map(|s| s.local_addr().unwrap().port()).collect()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sb-cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn two_daemons_join_the_mesh_and_show_it_in_their_metrics() {
    let dir = temp("mesh");
    let certs = dir.join("certs");
    write_cluster_certs(2, &certs).unwrap();
    let ports = free_udp_ports(2);
    let peer = |i: usize| format!("{}@127.0.0.1:{}", i + 1, ports[i]);
    let one = start(&cluster_args(1, &certs, ports[0], &[peer(1)], &dir.join("node-1"))).unwrap();
    let two = start(&cluster_args(2, &certs, ports[1], &[peer(0)], &dir.join("node-2"))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in [&one, &two] {
        loop {
            let metrics = get(&node.addr, "/metrics");
            if metrics.lines().any(|l| l == "switchboard_backplane_peers_up 1") {
                assert!(metrics.contains("switchboard_backplane_rtt_seconds{peer="), "{metrics}");
                break;
            }
            assert!(Instant::now() < deadline, "never saw the peer up:\n{metrics}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Each tells its clients where the other is, for reconnecting elsewhere.
    for (node, other, dir) in [(&one, &two, dir.join("node-1")), (&two, &one, dir.join("node-2"))] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let welcome = welcome(&node.addr, &dir);
            if welcome["nodes"] == serde_json::json!([format!("ws://{}/v1/ws", other.addr)]) {
                break;
            }
            assert!(Instant::now() < deadline, "welcome never listed the other node: {welcome}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // A single node's metrics carry no backplane.
    let single = start(&[
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--quic-listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        dir.join("single").display().to_string(),
    ])
    .unwrap();
    assert!(!get(&single.addr, "/metrics").contains("switchboard_backplane_"));
    drop((one, two, single));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_data_folder_refuses_another_node_id_or_partition_count() {
    let dir = temp("identity");
    let certs = dir.join("certs");
    write_cluster_certs(2, &certs).unwrap();
    let data = dir.join("data");
    let port = free_udp_ports(1)[0];
    let first = start(&cluster_args(1, &certs, port, &[], &data)).unwrap();
    drop(first);
    let mut partitions = cluster_args(1, &certs, port, &[], &data);
    partitions.extend(["--set".into(), "partitions=128".into()]);
    let e = start(&partitions).err().expect("refused");
    assert!(e.contains("partitions = 256") && e.contains("says 128"), "{e}");
    let e = start(&cluster_args(2, &certs, port, &[], &data)).err().expect("refused");
    assert!(e.contains("belongs to node 1"), "{e}");
    // The same folder under its own id and count starts again.
    drop(start(&cluster_args(1, &certs, port, &[], &data)).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_node_that_disagrees_on_the_partition_count_refuses_to_join() {
    let dir = temp("terms");
    let certs = dir.join("certs");
    write_cluster_certs(2, &certs).unwrap();
    let ports = free_udp_ports(2);
    let peer = |i: usize| format!("{}@127.0.0.1:{}", i + 1, ports[i]);
    let one = start(&cluster_args(1, &certs, ports[0], &[peer(1)], &dir.join("node-1"))).unwrap();
    let mut args = cluster_args(2, &certs, ports[1], &[peer(0)], &dir.join("node-2"));
    args.extend(["--set".into(), "partitions=128".into()]);
    // The later node leaves as soon as it hears the earlier one's terms, which can be before
    // or after it prints where to connect.
    let (code, err) = match start(&args) {
        Err(e) => (e.clone(), e),
        Ok(mut two) => {
            let (status, err) = two.exits_within(Duration::from_secs(30));
            (status.to_string(), err)
        }
    };
    assert!(code.starts_with("exit status: 2"), "{code}: {err}");
    assert!(err.contains("refusing to join") && err.contains("partitions = 256"), "{err}");
    // The earlier node is still up.
    assert!(get(&one.addr, "/readyz").starts_with("HTTP/1.1 200"));
    drop(one);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_process_under_a_node_id_in_use_refuses_to_join_and_the_first_keeps_it() {
    let dir = temp("reused");
    let certs = dir.join("certs");
    write_cluster_certs(2, &certs).unwrap();
    let ports = free_udp_ports(3);
    let peer = |i: usize| format!("{}@127.0.0.1:{}", i + 1, ports[i]);
    let one = start(&cluster_args(1, &certs, ports[0], &[peer(1)], &dir.join("node-1"))).unwrap();
    let two = start(&cluster_args(2, &certs, ports[1], &[peer(0)], &dir.join("node-2"))).unwrap();
    let meshed = |node: &Node| get(&node.addr, "/metrics").lines().any(|l| l == "switchboard_backplane_peers_up 1");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(meshed(&one) && meshed(&two)) {
        assert!(Instant::now() < deadline, "never meshed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Node 2's configuration copied to another folder and port, as a careless operator would.
    let mut second = start(&cluster_args(2, &certs, ports[2], &[peer(0)], &dir.join("node-2-copy"))).unwrap();
    let (status, err) = second.exits_within(Duration::from_secs(60));
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("node id 2 is in use") && err.contains("node 1 has refused it"), "{err}");
    // The first node 2 kept its place throughout: node 1 never let it go.
    let metrics = get(&one.addr, "/metrics");
    assert!(metrics.lines().any(|l| l == "switchboard_backplane_peers_up 1"), "{metrics}");
    let refused = metrics.lines().find(|l| l.starts_with("switchboard_backplane_id_in_use_refused_total ")).unwrap();
    assert_ne!(refused, "switchboard_backplane_id_in_use_refused_total 0");
    assert_eq!(
        welcome(&one.addr, &dir.join("node-1"))["nodes"],
        serde_json::json!([format!("ws://{}/v1/ws", two.addr)])
    );
    drop((one, two));
    std::fs::remove_dir_all(&dir).unwrap();
}
