//! Chat scenarios against a real `switchboard` daemon that the bench starts (loopback, a fresh
//! data folder, the development secret): `dm`, durable one-to-one messages (send → ack →
//! delivered) with their delivery latency, and `idle`, the server's memory per idle
//! authenticated connection. The load generator is simple (blocking clients, a thread per
//! client); the full harness is issue 4's.

use crate::host::Host;
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchboard_store::UserId;
use tungstenite::{Message, WebSocket};

#[derive(clap::Args)]
pub struct Server {
    /// The daemon binary (default: `switchboard` beside this one).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Server shards (threads).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct DmArgs {
    #[command(flatten)]
    server: Server,
    /// Sender/receiver pairs, each in its own dm conversation.
    #[arg(long, default_value_t = 8)]
    pairs: usize,
    /// Messages per pair.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Sends in flight per sender (waiting for their ack).
    #[arg(long, default_value_t = 64)]
    window: usize,
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
}

#[derive(clap::Args)]
pub struct IdleArgs {
    #[command(flatten)]
    server: Server,
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
}

struct Daemon {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start(s: &Server) -> anyhow::Result<Daemon> {
        let bin = match &s.server {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("switchboard"),
        };
        if !bin.exists() {
            bail!("{} not found: build it (cargo build --release -p switchboard-edge) or pass --server", bin.display());
        }
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(&bin)
            .args(["--listen", "127.0.0.1:0", "--shards", &s.shards.to_string(), "--data-dir"])
            .arg(dir.path())
            .args(["--set", "sends_per_s=10000000", "--set", "sends_burst=10000000"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut first = String::new();
        out.read_line(&mut first)?;
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let addr = first.split("ws://").nth(1).and_then(|s| s.split('/').next()).context("no address")?.to_string();
        Ok(Daemon { child, addr, dir })
    }

    fn token(&self, user: &str) -> anyhow::Result<String> {
        let secret = std::fs::read_to_string(self.dir.path().join("jwt.secret"))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        Ok(switchboard_edge::auth::mint_hs256(secret.trim().as_bytes(), &UserId::new(user)?, now, 3600, false))
    }

    /// (user + system CPU seconds, resident bytes) of the daemon.
    fn usage(&self) -> (f64, u64) {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        // After the command name: state is field 3, utime 14, stime 15 (1-based in proc(5)).
        let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // Safety: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
        let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        ((ticks(14) + ticks(15)) / hz, pages * 4096)
    }

    fn client(&self, user: &str) -> anyhow::Result<WebSocket<TcpStream>> {
        let url = format!("ws://{}/v1/ws?token={}", self.addr, self.token(user)?);
        let stream = TcpStream::connect(&self.addr)?;
        stream.set_nodelay(true)?;
        let (mut ws, _) = tungstenite::client(url, stream)?;
        ws.send(Message::text(r#"{"t":"hello"}"#))?;
        match ws.read()? {
            Message::Text(t) if t.contains("\"welcome\"") => Ok(ws),
            other => bail!("expected welcome, got {other:?}"),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn micros_since(t0: Instant) -> u64 {
    t0.elapsed().as_micros() as u64
}

pub fn dm(a: DmArgs) -> anyhow::Result<()> {
    let host = Host::read();
    println!(
        "switchboard-bench dm: {} pairs × {} messages, window {}, {}-byte bodies, {} server shard(s)",
        a.pairs, a.messages, a.window, a.body_bytes, a.server.shards
    );
    println!("host: {}", host.line());
    let d = Daemon::start(&a.server)?;
    let t0 = Instant::now();
    let pad = "x".repeat(a.body_bytes.saturating_sub(30));
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for p in 0..a.pairs {
        let mut rx = d.client(&format!("r{p}"))?;
        let mut tx = d.client(&format!("s{p}"))?;
        let n = a.messages;
        receivers.push(std::thread::spawn(move || -> anyhow::Result<Histogram<u64>> {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut got = 0;
            while got < n {
                if let Message::Text(t) = rx.read()? {
                    let v: serde_json::Value = serde_json::from_str(&t)?;
                    if v["t"] == "msg" {
                        let sent = v["body"]["at"].as_u64().context("body.at")?;
                        h.saturating_record(micros_since(t0).saturating_sub(sent).max(1));
                        got += 1;
                    }
                }
            }
            Ok(h)
        }));
        let (window, pad) = (a.window, pad.clone());
        senders.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let (mut sent, mut acked) = (0, 0);
            while acked < n {
                while sent < n && sent - acked < window {
                    let body = json!({"at": micros_since(t0), "pad": pad});
                    let f = json!({"t":"send","to":format!("r{p}"),"id":format!("{sent}"),"body":body});
                    tx.write(Message::text(f.to_string()))?;
                    sent += 1;
                }
                tx.flush()?;
                if let Message::Text(t) = tx.read()? {
                    if t.contains("\"ack\"") {
                        acked += 1;
                    } else if !t.contains("\"msg\"") {
                        bail!("unexpected {t}");
                    }
                }
            }
            Ok(())
        }));
    }
    let (cpu0, _) = d.usage();
    let start = Instant::now();
    for s in senders {
        s.join().expect("sender thread")?;
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for r in receivers {
        all.add(r.join().expect("receiver thread")?)?;
    }
    let wall = start.elapsed().as_secs_f64();
    let (cpu1, rss) = d.usage();
    let total = (a.pairs * a.messages) as f64;
    let per_s = total / wall;
    let per_cpu_s = total / (cpu1 - cpu0).max(1e-9);
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    println!("| delivered | msgs/s (wall) | msgs per server CPU-s | delivery p50 | p99 | p999 | server RSS |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {total} | {per_s:.0} | {per_cpu_s:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} MiB |",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        rss as f64 / 1048576.0
    );
    if a.server.json {
        println!(
            "{}",
            json!({"scenario":"dm","pairs":a.pairs,"messages":total,"msgs_per_s":per_s,"msgs_per_server_cpu_s":per_cpu_s,
            "delivery_p50_ms":ms(0.5),"delivery_p99_ms":ms(0.99),"delivery_p999_ms":ms(0.999),"server_rss_bytes":rss})
        );
    }
    Ok(())
}

pub fn idle(a: IdleArgs) -> anyhow::Result<()> {
    let host = Host::read();
    println!(
        "switchboard-bench idle: {} authenticated idle connections, {} server shard(s)",
        a.connections, a.server.shards
    );
    println!("host: {}", host.line());
    let d = Daemon::start(&a.server)?;
    // A first connection warms the allocator and the runtime, so the baseline is a serving
    // daemon, not a cold one.
    let warm = d.client("warm")?;
    std::thread::sleep(Duration::from_millis(300));
    let (_, before) = d.usage();
    let start = Instant::now();
    let mut held = Vec::with_capacity(a.connections);
    for i in 0..a.connections {
        held.push(d.client(&format!("u{i}"))?);
    }
    let connect_s = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let (_, after) = d.usage();
    let per_conn = (after.saturating_sub(before)) as f64 / a.connections as f64;
    println!("| connections | server RSS before | after | per connection | connect + upgrade + hello rate (one client thread) |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {:.1} MiB | {:.1} MiB | {:.0} B | {:.0}/s |",
        a.connections,
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per_conn,
        a.connections as f64 / connect_s
    );
    if a.server.json {
        println!(
            "{}",
            json!({"scenario":"idle","connections":a.connections,"server_rss_before_bytes":before,"server_rss_after_bytes":after,"bytes_per_connection":per_conn})
        );
    }
    drop((warm, held));
    Ok(())
}
