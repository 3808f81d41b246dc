//! `mesh`: three nodes on loopback, each sending 100-byte frames to both others on live
//! lanes, open loop on a fixed schedule, ramping to the highest rate whose p99 stays under
//! the bound (5 ms) and then measuring at 70% of it. Beside it, in the same run, the same
//! frames between the same three processes over one TLS 1.3 TCP connection per pair.
//! Last, at that 70% rate, each transport again with every node also pushing 1 MiB bulk
//! frames to both others as fast as they are taken: live latency under bulk saturation.
//!
//! Latency is counted from each frame's intended send time to its arrival (the nodes share
//! the host's clock), so a sender that falls behind charges its stall to every frame it
//! delays. CPU is each node process's own, load generation included (the same for both).

pub mod node;

use crate::host::Host;
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

/// Bytes per live frame, the caller's part.
pub const FRAME_BYTES: usize = 100;
const NODES: u16 = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Transport {
    Mesh,
    TlsTcp,
}

impl Transport {
    fn parse(s: &str) -> anyhow::Result<Transport> {
        match s {
            "mesh" => Ok(Transport::Mesh),
            "tls-tcp" => Ok(Transport::TlsTcp),
            _ => bail!("unknown transport {s}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Transport::Mesh => "mesh",
            Transport::TlsTcp => "tls-tcp",
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// The first rate of the ramp: frames per second, all six directions together.
    #[arg(long, default_value_t = 30_000)]
    pub rate_start: u64,
    #[arg(long, default_value_t = 1.5)]
    pub rate_step: f64,
    /// Seconds per ramp step and for the final runs.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// The p99 bound a rate must keep to pass (ms).
    #[arg(long, default_value_t = 5.0)]
    pub p99_ms_max: f64,
    /// Stop the ramp after this many passing steps, taking the last as the highest (a fixed
    /// rate with `--steps 1`); 0: ramp until a step fails.
    #[arg(long, default_value_t = 0)]
    pub steps: usize,
    /// Skip the TLS-over-TCP peer.
    #[arg(long)]
    pub no_peer: bool,
    #[arg(long)]
    pub smoke: bool,
    #[arg(long)]
    pub json: bool,
}

struct Node {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Node {
    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("a mesh node exited");
        }
        Ok(line.trim().to_string())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        std::thread::sleep(Duration::from_millis(50));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
    runs: u32,
}

/// What one fixed-rate run measured, all nodes together.
struct Step {
    offered_per_s: f64,
    delivered_per_s: f64,
    per_server_cpu_s: f64,
    latency: Histogram<u64>,
    missing: u64,
    bulk_mib_per_s: f64,
}

impl Step {
    fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

fn free_ports(transport: Transport) -> anyhow::Result<Vec<u16>> {
    // Held together so that they differ, then released for the nodes to bind.
    let ports = match transport {
        Transport::Mesh => {
            let held: Vec<std::net::UdpSocket> =
                (0..NODES).map(|_| std::net::UdpSocket::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
            held.iter().map(|s| s.local_addr().map(|a| a.port())).collect::<Result<_, _>>()?
        }
        Transport::TlsTcp => {
            let held: Vec<std::net::TcpListener> =
                (0..NODES).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
            held.iter().map(|s| s.local_addr().map(|a| a.port())).collect::<Result<_, _>>()?
        }
    };
    Ok(ports)
}

impl Cluster {
    fn start(transport: Transport) -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let certs = dir.path().join("certs");
        switchboard_backplane::tls::write_cluster_certs(NODES, &certs)?;
        let ports = free_ports(transport)?;
        let ports_arg = ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
        let exe = std::env::current_exe()?;
        let mut nodes = Vec::new();
        for i in 1..=NODES {
            let mut child = Command::new(&exe)
                .args(["mesh-node", "--transport", transport.name(), "--node", &i.to_string(), "--ports", &ports_arg])
                .arg("--certs")
                .arg(&certs)
                .arg("--data")
                .arg(dir.path().join(format!("node-{i}")))
                .env("RUST_LOG", "warn")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting a mesh node")?;
            let stdin = child.stdin.take().expect("piped");
            let stdout = BufReader::new(child.stdout.take().expect("piped"));
            nodes.push(Node { child, stdin, stdout });
        }
        for node in &mut nodes {
            let line = node.line()?;
            if line != "ready" {
                bail!("a mesh node said {line:?}");
            }
        }
        Ok(Cluster { nodes, dir, runs: 0 })
    }

    /// Every node sends `rate / 6` frames per second to each of the other two for `seconds`.
    fn run_at(&mut self, rate: f64, seconds: f64, bulk: bool) -> anyhow::Result<Step> {
        self.runs += 1;
        let per_direction = rate / f64::from(NODES * (NODES - 1));
        let start = switchboard_backplane::rt::now_unix_us() + 300_000;
        let mut files = Vec::new();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let file = self.dir.path().join(format!("latency-{}-{i}", self.runs));
            writeln!(
                node.stdin,
                "run {} {per_direction} {seconds} {start} {} {}",
                self.runs,
                u8::from(bulk),
                file.display()
            )?;
            node.stdin.flush()?;
            files.push(file);
        }
        let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let (mut received, mut expected, mut cpu_s, mut bulk_bytes) = (0u64, 0u64, 0f64, 0u64);
        for (node, file) in self.nodes.iter_mut().zip(&files) {
            let line = node.line()?;
            let v: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("node said {line:?}"))?;
            received += v["received"].as_u64().unwrap_or(0);
            expected += v["expected"].as_u64().unwrap_or(0);
            cpu_s += v["cpu_s"].as_f64().unwrap_or(0.0);
            bulk_bytes += v["bulk_bytes_received"].as_u64().unwrap_or(0);
            let bytes = std::fs::read(file)?;
            let h: Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
                .deserialize(&mut &bytes[..])
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            latency.add(h)?;
        }
        Ok(Step {
            offered_per_s: rate,
            delivered_per_s: received as f64 / seconds,
            per_server_cpu_s: received as f64 / cpu_s.max(1e-9),
            latency,
            missing: expected.saturating_sub(received),
            bulk_mib_per_s: bulk_bytes as f64 / seconds / (1 << 20) as f64,
        })
    }
}

struct Ramp {
    max: f64,
    at70: Step,
    with_bulk: Step,
}

impl Ramp {
    fn json(&self) -> serde_json::Value {
        json!({
            "max_frames_per_s": self.max,
            "rate_at_70_per_s": self.at70.offered_per_s,
            "frames_per_s": self.at70.delivered_per_s,
            "frames_per_server_cpu_s": self.at70.per_server_cpu_s,
            "p50_ms": self.at70.ms(0.5),
            "p99_ms": self.at70.ms(0.99),
            "p999_ms": self.at70.ms(0.999),
            "missing": self.at70.missing,
            "live_p99_with_bulk_ms": self.with_bulk.ms(0.99),
            "live_p999_with_bulk_ms": self.with_bulk.ms(0.999),
            "bulk_mib_per_s": self.with_bulk.bulk_mib_per_s,
        })
    }
}

fn print_step(s: &Step, pass: bool) {
    println!(
        "| {:.0} | {:.0} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {} | {:.0} | {} |",
        s.offered_per_s,
        s.delivered_per_s,
        s.per_server_cpu_s,
        s.ms(0.5),
        s.ms(0.99),
        s.ms(0.999),
        s.latency.max() as f64 / 1000.0,
        s.missing,
        s.bulk_mib_per_s,
        if pass { "yes" } else { "no" }
    );
}

fn ramp(transport: Transport, a: &Args) -> anyhow::Result<Ramp> {
    let mut cluster = Cluster::start(transport)?;
    println!("{}:", transport.name());
    println!(
        "| offered frames/s | delivered/s | per server CPU-s | p50 | p99 | p999 | max | missing | bulk MiB/s | pass |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut rate = a.rate_start as f64;
    let mut max = None;
    let mut passed = 0;
    let settle = || std::thread::sleep(Duration::from_secs(if a.smoke { 0 } else { 1 }));
    loop {
        settle();
        let s = cluster.run_at(rate, a.seconds, false)?;
        let pass = s.missing == 0 && s.ms(0.99) < a.p99_ms_max && s.delivered_per_s >= 0.9 * rate;
        print_step(&s, pass);
        if !pass || a.smoke {
            break;
        }
        max = Some(rate);
        passed += 1;
        if a.steps > 0 && passed >= a.steps {
            break;
        }
        rate *= a.rate_step;
    }
    let Some(max) = max.or(a.smoke.then_some(rate)) else {
        bail!("{}: even {} frames/s missed the bound; lower --rate-start", transport.name(), a.rate_start)
    };
    println!("highest passing rate: {max:.0} frames/s; at 70% of it, then at 70% with bulk saturating:");
    settle();
    let at70 = cluster.run_at(max * 0.7, a.seconds, false)?;
    print_step(&at70, at70.missing == 0);
    settle();
    let with_bulk = cluster.run_at(max * 0.7, a.seconds, true)?;
    print_step(&with_bulk, with_bulk.missing == 0);
    Ok(Ramp { max, at70, with_bulk })
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (seconds, rate_start) = if a.smoke { (0.5, 600) } else { (a.seconds, a.rate_start) };
    let a = Args { seconds, rate_start, ..a };
    println!(
        "switchboard-bench mesh: {NODES} nodes on loopback, {FRAME_BYTES}-byte frames to both others, open loop, ramp from {}/s ×{} per step of {} s, pass: p99 < {} ms",
        a.rate_start, a.rate_step, a.seconds, a.p99_ms_max
    );
    println!("host: {}", Host::read().line());
    let ours = ramp(Transport::Mesh, &a)?;
    let peer = if a.no_peer { None } else { Some(ramp(Transport::TlsTcp, &a)?) };
    if let Some(p) = &peer {
        println!(
            "mesh / tls-tcp: frames per server CPU-s {:.2}x, highest passing rate {:.2}x, p99 at 70% {:.2}x, live p99 under bulk {:.2}x",
            ours.at70.per_server_cpu_s / p.at70.per_server_cpu_s.max(1e-9),
            ours.max / p.max,
            ours.at70.ms(0.99) / p.at70.ms(0.99).max(1e-9),
            ours.with_bulk.ms(0.99) / p.with_bulk.ms(0.99).max(1e-9),
        );
    }
    println!("mesh: live p99 under bulk {:.2}x its p99 alone", ours.with_bulk.ms(0.99) / ours.at70.ms(0.99).max(1e-9));
    if a.json {
        let mut out = ours.json();
        out["scenario"] = json!("mesh");
        if let Some(p) = &peer {
            out["peer"] = p.json();
            out["peer"]["name"] = json!("tls-tcp");
        }
        println!("{out}");
    }
    Ok(())
}
