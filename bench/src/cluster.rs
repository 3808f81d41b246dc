//! Clusters for the scenarios that run across nodes (`--cluster N`): N Switchboard daemons
//! joined by the backplane, as `switchboard-ctl cluster up` starts them (one cluster CA, one
//! JWT secret), and beside them N `nats-server`s joined by routes, the peer.

use crate::daemon::{proc_usage, Daemon, ServerArgs};
use anyhow::{bail, Context};
use std::io::Write;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchboard_store::UserId;

/// Switchboard nodes 1..=N, every one of role `both` except the last `edge_only`.
pub struct Cluster {
    pub nodes: Vec<Daemon>,
    secret: String,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start(s: &ServerArgs, n: u16, edge_only: u16) -> anyhow::Result<Cluster> {
        if n < 2 || edge_only >= n {
            bail!("a cluster needs 2 nodes or more, and a node holding the store");
        }
        let dir = tempfile::tempdir()?;
        switchboard_backplane::tls::write_cluster_certs(n, dir.path())?;
        let (secret, _) = switchboard_edge::auth::dev_secret(dir.path())?;
        let held: Vec<UdpSocket> = (0..n).map(|_| UdpSocket::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
        let ports: Vec<u16> = held.iter().map(|s| s.local_addr().map(|a| a.port())).collect::<Result<_, _>>()?;
        drop(held);
        let backplane = |j: u16| format!("127.0.0.1:{}", ports[j as usize - 1]);
        let roles = switchboard_edge::cluster::local::roles(n, edge_only);
        let mut nodes = Vec::new();
        for i in 1..=n {
            let mut node = s.clone();
            node.sets.extend(switchboard_edge::cluster::local::node_settings(i, &roles, &backplane, dir.path()));
            nodes.push(Daemon::start(&node)?);
        }
        let cluster = Cluster { nodes, secret: String::from_utf8(secret)?.trim().to_string(), _dir: dir };
        cluster.wait_meshed()?;
        Ok(cluster)
    }

    fn wait_meshed(&self) -> anyhow::Result<()> {
        let want = format!("switchboard_backplane_peers_up {}", self.nodes.len() - 1);
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, node) in self.nodes.iter().enumerate() {
            while !node.http_text("/metrics")?.1.lines().any(|l| l == want) {
                if Instant::now() > deadline {
                    bail!("node {} did not see the others up within 30 s", i + 1);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// The cluster's JWT secret.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    pub fn token(&self, user: &str) -> anyhow::Result<String> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        Ok(switchboard_edge::auth::mint_hs256(self.secret.as_bytes(), &UserId::new(user)?, now, 3600, false))
    }

    /// CPU seconds and resident bytes of every node together.
    pub fn usage(&self) -> (f64, u64) {
        self.nodes.iter().map(|d| d.usage()).fold((0.0, 0), |(c, r), (c2, r2)| (c + c2, r + r2))
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// N `nats-server`s with WebSocket listeners, joined by routes (a full mesh of them) when N
/// is more than one, with JetStream on (a file store each) when asked.
pub struct NatsCluster {
    children: Vec<Child>,
    pub ws_addrs: Vec<String>,
    /// The plain NATS client port of each server.
    pub client_ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    pub fn start(n: usize, jetstream: bool) -> anyhow::Result<NatsCluster> {
        let bin = crate::nats::binary()?;
        let dir = tempfile::tempdir()?;
        let ports: Vec<(u16, u16, u16, u16)> = (0..n)
            .map(|_| Ok((free_port()?, free_port()?, free_port()?, free_port()?)))
            .collect::<anyhow::Result<_>>()?;
        let mut children = Vec::new();
        let mut ws_addrs = Vec::new();
        for (i, (client, ws, route, http)) in ports.iter().enumerate() {
            let mut conf = format!(
                "server_name: n{i}\nhost: 127.0.0.1\nport: {client}\nhttp_port: {http}\nmax_connections: 1000000\nwebsocket {{\n  host: 127.0.0.1\n  port: {ws}\n  no_tls: true\n}}\n"
            );
            if jetstream {
                let store = dir.path().join(format!("js-{i}"));
                conf += &format!("jetstream {{\n  store_dir: {:?}\n}}\n", store.display().to_string());
            }
            if n > 1 {
                let routes: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| format!("nats-route://127.0.0.1:{}", p.2))
                    .collect();
                conf += &format!(
                    "cluster {{\n  name: bench\n  host: 127.0.0.1\n  port: {route}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                );
            }
            let file = dir.path().join(format!("nats-{i}.conf"));
            std::fs::write(&file, conf)?;
            children.push(Command::new(bin).arg("-c").arg(&file).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
            ws_addrs.push(format!("127.0.0.1:{ws}"));
        }
        let client_ports = ports.iter().map(|p| p.0).collect();
        let cluster = NatsCluster { children, ws_addrs, client_ports, _dir: dir };
        // Up when every server routes to every other.
        let deadline = Instant::now() + Duration::from_secs(20);
        for (i, p) in ports.iter().enumerate() {
            loop {
                let routes = http_get(p.3, "/routez").unwrap_or_default();
                if routes.contains(&format!("\"num_routes\": {}", n - 1)) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("nats-server {i} did not route to the others within 20 s: {routes}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(cluster)
    }

    pub fn usage(&self) -> (f64, u64) {
        self.children.iter().map(|c| proc_usage(c.id())).fold((0.0, 0), |(c, r), (c2, r2)| (c + c2, r + r2))
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use std::io::Read;
    let mut s = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
