//! Real processes of `switchboard-mesh-node` on loopback: frames between every pair on every
//! class, a node killed with SIGKILL and restarted, and peers with the wrong certificates.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard_backplane::tls::write_cluster_certs;

/// Long enough for a loaded CI host; every wait ends as soon as its line is there.
const WAIT: Duration = Duration::from_secs(60);

struct Node {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Node {
    fn start(args: &[String]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard-mesh-node"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a mesh node");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = BufReader::new(child.stdout.take().unwrap());
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        Node { child, lines }
    }

    /// Waits for a line starting with `prefix`; returns it and when it was read.
    fn wait_for(&self, prefix: &str) -> (Instant, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = self.lines.lock().unwrap().iter().find(|(_, l)| l.starts_with(prefix)) {
                return found.clone();
            }
            assert!(Instant::now() < deadline, "no line {prefix:?} in {:#?}", self.lines());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().iter().map(|(_, l)| l.clone()).collect()
    }

    fn boot(&self) -> String {
        self.wait_for("started ").1.split(' ').nth(2).unwrap().to_string()
    }

    fn assert_no_errors(&self) {
        let errors: Vec<String> = self.lines().into_iter().filter(|l| l.starts_with("error")).collect();
        assert!(errors.is_empty(), "{errors:#?}");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_udp_ports(n: usize) -> Vec<u16> {
    let sockets: Vec<std::net::UdpSocket> = (0..n).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    sockets.iter().map(|s| s.local_addr().unwrap().port()).collect()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sb-mesh-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn args(node: u16, ports: &[u16], certs: &Path, data: &Path, frames: u64) -> Vec<String> {
    let mut args = vec![
        "--node".into(),
        node.to_string(),
        "--listen".into(),
        format!("127.0.0.1:{}", ports[node as usize - 1]),
        "--certs".into(),
        certs.display().to_string(),
        "--data".into(),
        data.join(format!("node-{node}")).display().to_string(),
        "--frames".into(),
        frames.to_string(),
    ];
    for (i, port) in ports.iter().enumerate() {
        args.extend(["--peer".into(), format!("{}@127.0.0.1:{port}", i + 1)]);
    }
    args
}

#[test]
fn three_processes_exchange_in_order_survive_a_kill_and_take_the_restart_as_a_new_run() {
    let dir = temp_dir("three");
    let certs = dir.join("certs");
    write_cluster_certs(3, &certs).unwrap();
    let ports = free_udp_ports(3);
    let frames = 300;
    let mut nodes: Vec<Node> = (1..=3).map(|i| Node::start(&args(i, &ports, &certs, &dir, frames))).collect();
    let boots: Vec<String> = nodes.iter().map(Node::boot).collect();
    // Every node gets every frame of every other, on every class and lane, once and in order.
    for (i, node) in nodes.iter().enumerate() {
        for (j, boot) in boots.iter().enumerate() {
            if i != j {
                node.wait_for(&format!("complete {} {boot}", j + 1));
            }
        }
        node.assert_no_errors();
    }

    // SIGKILL node 3: both others declare its run down within 3 s.
    nodes[2].kill();
    let killed = Instant::now();
    for node in &nodes[..2] {
        let (at, line) = node.wait_for(&format!("down 3 {}", boots[2]));
        let detected = at.duration_since(killed);
        eprintln!("{line}: declared down {detected:?} after the kill");
        assert!(detected <= Duration::from_secs(3), "took {detected:?}");
    }

    // Restart it: a new run, which both others connect to and exchange with from frame 0.
    nodes[2] = Node::start(&args(3, &ports, &certs, &dir, frames));
    let reborn = nodes[2].boot();
    assert!(reborn.parse::<u64>().unwrap() > boots[2].parse::<u64>().unwrap(), "a later run");
    for (i, node) in nodes[..2].iter().enumerate() {
        node.wait_for(&format!("up 3 {reborn}"));
        node.wait_for(&format!("complete 3 {reborn}"));
        nodes[2].wait_for(&format!("complete {} {}", i + 1, boots[i]));
    }
    for node in &nodes {
        node.assert_no_errors();
    }
    drop(nodes);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_certificate_from_another_ca_and_one_for_another_node_are_refused() {
    let dir = temp_dir("impostors");
    let (certs, rogue) = (dir.join("certs"), dir.join("rogue"));
    write_cluster_certs(3, &certs).unwrap();
    write_cluster_certs(3, &rogue).unwrap();
    let ports = free_udp_ports(3);
    let honest = Node::start(&args(1, &ports, &certs, &dir, 1));

    // Node 2 with the right id but another CA's certificate and trust.
    let mut other_ca = args(2, &ports, &rogue, &dir, 1);
    other_ca.extend(["--ca".into(), rogue.join("ca.pem").display().to_string()]);
    let other_ca = Node::start(&other_ca);
    // "Node 3" holding node 2's genuine certificate: the cluster's CA signed it, for node 2.
    let mut wrong_id = args(3, &ports, &certs, &dir, 1);
    wrong_id.extend([
        "--cert".into(),
        certs.join("node-2.pem").display().to_string(),
        "--key".into(),
        certs.join("node-2.key").display().to_string(),
    ]);
    let wrong_id = Node::start(&wrong_id);

    // The honest node refuses both in the TLS handshake (another CA; a dial to node 3
    // answered by node 2's name) and refuses the impostor's own dial, whose certificate says
    // node 2 and whose streams say node 3.
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = honest.lines().into_iter().rfind(|l| l.starts_with("stats ")).unwrap_or_default();
        let count = |key: &str| -> u64 {
            stats.split(' ').find_map(|kv| kv.strip_prefix(key)).map(|v| v.parse().unwrap()).unwrap_or(0)
        };
        if count("tls_refused=") >= 2 && count("refused=") >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "not refused: {:#?}", honest.lines());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    for line in honest.lines() {
        assert!(!line.starts_with("up ") && !line.starts_with("connected "), "{line}");
    }
    for impostor in [&other_ca, &wrong_id] {
        for line in impostor.lines() {
            assert!(!line.starts_with("up 1") && !line.starts_with("connected 1"), "{line}");
        }
    }
    drop((honest, other_ca, wrong_id));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn live_frames_keep_flowing_in_order_while_bulk_is_saturated() {
    let dir = temp_dir("bulk");
    let certs = dir.join("certs");
    write_cluster_certs(2, &certs).unwrap();
    let ports = free_udp_ports(2);
    let nodes: Vec<Node> = (1..=2)
        .map(|i| {
            let mut args = args(i, &ports, &certs, &dir, 300);
            args.push("--bulk-flood".into());
            Node::start(&args)
        })
        .collect();
    let boots: Vec<String> = nodes.iter().map(Node::boot).collect();
    // Every numbered frame (control, live lanes, and the numbered 64 KiB bulk frames that
    // queue behind the flood) arrives once and in order, while both bulk queues stay full.
    nodes[0].wait_for(&format!("complete 2 {}", boots[1]));
    nodes[1].wait_for(&format!("complete 1 {}", boots[0]));
    for node in &nodes {
        node.assert_no_errors();
        assert!(!node.lines().iter().any(|l| l.starts_with("down ")), "{:#?}", node.lines());
    }
    drop(nodes);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_node_whose_cpu_is_saturated_is_not_declared_down() {
    let dir = temp_dir("busy");
    let certs = dir.join("certs");
    write_cluster_certs(3, &certs).unwrap();
    let ports = free_udp_ports(3);
    let nodes: Vec<Node> = (1..=3).map(|i| Node::start(&args(i, &ports, &certs, &dir, 50))).collect();
    for (i, node) in nodes.iter().enumerate() {
        for j in (1..=3).filter(|j| *j != i as u16 + 1) {
            node.wait_for(&format!("up {j} "));
        }
    }
    // Twice as many spinning threads as the host has cores, for 8 s: every node's mesh thread
    // now waits its turn for a core, as under a load test.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let end = Instant::now() + Duration::from_secs(8);
    let spinners: Vec<_> = (0..2 * cores)
        .map(|_| {
            std::thread::spawn(move || {
                let mut x = 0u64;
                while Instant::now() < end {
                    for _ in 0..10_000 {
                        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                    }
                }
            })
        })
        .collect();
    for spinner in spinners {
        spinner.join().unwrap();
    }
    for node in &nodes {
        let downs: Vec<String> = node.lines().into_iter().filter(|l| l.starts_with("down ")).collect();
        assert!(downs.is_empty(), "declared down under load: {downs:#?}");
        node.assert_no_errors();
    }
    drop(nodes);
    std::fs::remove_dir_all(&dir).unwrap();
}
