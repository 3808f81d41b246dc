//! The Redis peer: `redis-server` with `appendfsync always`, started by the harness on loopback,
//! driven by `redis-benchmark` with a pipelined client (its best case), `XADD` of the same body
//! size over the same number of streams as the store scenario.

use anyhow::{bail, Context};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisResult {
    pub appends_per_s: f64,
    pub p99_ms: f64,
    pub command: String,
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs the peer; `Err` says why it could not (e.g. redis-server is not installed).
pub fn xadd_always(dir: &Path, requests: u64, streams: u32, body_bytes: usize) -> anyhow::Result<RedisResult> {
    let port = free_port()?.to_string();
    let child = Command::new("redis-server")
        .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
        .args(["--appendfsync", "always", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server (install Debian's redis-server)")?;
    let _server = Server(child);
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port.parse::<u16>()?)).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("redis-server did not start listening");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let body = "x".repeat(body_bytes);
    let args = [
        "-p".to_string(),
        port,
        "-P".into(),
        "32".into(),
        "-c".into(),
        "50".into(),
        "-n".into(),
        requests.to_string(),
        "-r".into(),
        streams.to_string(),
        "--csv".into(),
        "XADD".into(),
        "stream:__rand_int__".into(),
        "*".into(),
        "body".into(),
    ];
    let out = Command::new("redis-benchmark").args(&args).arg(&body).output().context("running redis-benchmark")?;
    if !out.status.success() {
        bail!("redis-benchmark failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",...
    let row = text.lines().find(|l| l.starts_with("\"XADD")).context("no XADD row in redis-benchmark output")?;
    let fields: Vec<f64> = row.rsplit("\",\"").map(|f| f.trim_matches('"').parse().unwrap_or(f64::NAN)).collect();
    // rsplit yields the last field first: max, p99, p95, p50, min, avg, rps.
    let (rps, p99) = (fields[6], fields[1]);
    if !rps.is_finite() {
        bail!("could not parse redis-benchmark output: {row}");
    }
    let command = format!("redis-benchmark {} XADD … body <{body_bytes} bytes>", args[2..11].join(" "));
    Ok(RedisResult { appends_per_s: rps, p99_ms: p99, command })
}
