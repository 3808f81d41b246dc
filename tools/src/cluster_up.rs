//! `switchboard-ctl cluster up`: a local cluster on loopback, as DESIGN.md "Names and
//! defaults" fixes it. Node i listens on ports P+10(i-1) (WebSocket, REST, metrics), +1
//! (QUIC) and +2 (backplane), keeps its data in `DIR/node-<i>` and its log in
//! `DIR/node-<i>.log`; the certificates are made in `DIR` if absent, and one JWT secret,
//! `DIR/jwt.secret`, serves every node. `DIR/cluster.json` is written once every node
//! answers `/readyz`; SIGINT or SIGTERM drains and stops them all.

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long every node has to answer `/readyz`.
const READY_WAIT: Duration = Duration::from_secs(60);
/// How long a drained node has to exit before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(15);

pub struct Up {
    pub nodes: u16,
    pub edge_only: u16,
    pub dir: PathBuf,
    pub base_port: u16,
    pub server: Option<PathBuf>,
}

struct Node {
    id: u16,
    role: &'static str,
    ws: String,
    backplane: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Child,
}

fn port(base: u16, node: u16, offset: u16) -> anyhow::Result<u16> {
    u32::from(base)
        .checked_add(10 * u32::from(node - 1) + u32::from(offset))
        .and_then(|p| u16::try_from(p).ok())
        .with_context(|| format!("--base-port {base} leaves no room for node {node}'s ports"))
}

fn daemon_binary(given: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let bin = match given {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("switchboard"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: build the daemon beside switchboard-ctl (cargo build -p switchboard-edge, with --release if this is a release build) or pass --server PATH",
            bin.display()
        );
    }
    Ok(bin)
}

/// Answers `GET /readyz` with 200.
fn ready(ws: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&ws.parse().expect("an address"), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if write!(s, "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

pub fn run(up: Up) -> anyhow::Result<()> {
    if up.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if up.edge_only >= up.nodes {
        bail!("--edge-only {} leaves no node to hold the store: it must be below --nodes {}", up.edge_only, up.nodes);
    }
    port(up.base_port, up.nodes, 2)?;
    let bin = daemon_binary(&up.server)?;
    std::fs::create_dir_all(&up.dir).with_context(|| format!("creating {}", up.dir.display()))?;
    let dir = std::fs::canonicalize(&up.dir)?;
    switchboard_backplane::tls::write_cluster_certs(up.nodes, &dir)?;
    switchboard_edge::auth::dev_secret(&dir).with_context(|| format!("the JWT secret in {}", dir.display()))?;
    let roles = switchboard_edge::cluster::local::roles(up.nodes, up.edge_only);
    let role = |i: u16| roles[i as usize - 1].name();
    // The last node's highest port was checked above, so every node's backplane port exists.
    let backplane = |i: u16| format!("127.0.0.1:{}", port(up.base_port, i, 2).expect("checked above"));
    let signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    let mut nodes: Vec<Node> = Vec::new();
    for i in 1..=up.nodes {
        let ws = format!("127.0.0.1:{}", port(up.base_port, i, 0)?);
        let data_dir = dir.join(format!("node-{i}"));
        let log = dir.join(format!("node-{i}.log"));
        let mut sets = switchboard_edge::cluster::local::node_settings(i, &roles, &backplane, &dir);
        sets.push(format!("quic_listen=\"127.0.0.1:{}\"", port(up.base_port, i, 1)?));
        let output = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(&bin);
        cmd.args(["--listen", &ws, "--data-dir"]).arg(&data_dir);
        for set in &sets {
            cmd.args(["--set", set]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        nodes.push(Node { id: i, role: role(i), ws, backplane: backplane(i), data_dir, log, child });
    }
    if let Err(why) = wait_ready(&mut nodes) {
        stop(&mut nodes);
        return Err(why);
    }
    let listing: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "id": n.id,
                "role": n.role,
                "ws": format!("ws://{}/v1/ws", n.ws),
                "http": format!("http://{}", n.ws),
                "backplane": n.backplane,
                "pid": n.child.id(),
                "data_dir": n.data_dir.display().to_string(),
            })
        })
        .collect();
    let json = dir.join("cluster.json");
    let tmp = dir.join("cluster.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&serde_json::json!({ "nodes": listing }))?)?;
    std::fs::rename(&tmp, &json)?;
    for n in &nodes {
        println!(
            "node {} ({}): ws://{}/v1/ws, http://{}, backplane udp://{}, pid {}, data {}, log {}",
            n.id,
            n.role,
            n.ws,
            n.ws,
            n.backplane,
            n.child.id(),
            n.data_dir.display(),
            n.log.display()
        );
    }
    println!(
        "cluster of {} in {} ({}); tokens: switchboard-ctl token USER --data-dir {}; Ctrl-C stops it",
        up.nodes,
        dir.display(),
        json.display(),
        dir.display()
    );
    let _ = std::io::stdout().flush();
    // Until a signal: report a node that dies, keep the others up.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut signals = signals;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let _ = tx.send(sig);
        }
    });
    let mut reported = std::collections::BTreeSet::new();
    while rx.recv_timeout(Duration::from_millis(500)).is_err() {
        for node in &mut nodes {
            if let Some(status) = node.child.try_wait()? {
                if reported.insert(node.id) {
                    eprintln!("node {} exited ({status}); see {}", node.id, node.log.display());
                }
            }
        }
    }
    println!("stopping {} nodes", nodes.len());
    stop(&mut nodes);
    Ok(())
}

fn wait_ready(nodes: &mut [Node]) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_WAIT;
    for node in nodes.iter_mut() {
        while !ready(&node.ws) {
            if let Some(status) = node.child.try_wait()? {
                bail!("node {} exited ({status}) before it was ready:\n{}", node.id, tail(&node.log));
            }
            if Instant::now() > deadline {
                bail!("node {} did not answer /readyz within {READY_WAIT:?}", node.id);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// SIGTERM (a drain: clients hear `reconnect`), then SIGKILL for any still there after
/// [`STOP_WAIT`].
fn stop(nodes: &mut [Node]) {
    for node in nodes.iter() {
        // Safety: kill(2) on a child we started and have not reaped.
        unsafe { libc::kill(node.child.id() as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + STOP_WAIT;
    for node in nodes.iter_mut() {
        while node.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = node.child.kill();
                let _ = node.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
