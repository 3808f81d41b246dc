//! A real `switchboard` daemon for a scenario: started by the harness on loopback with a fresh
//! data folder and the development secret (fsync on), measured from outside through
//! `/proc/PID`, and killed at the end.

use anyhow::{bail, Context};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use switchboard_store::UserId;
use tungstenite::{Message, WebSocket};

#[derive(clap::Args, Clone)]
pub struct ServerArgs {
    /// The daemon binary (default: `switchboard` beside this one).
    #[arg(long)]
    pub server: Option<PathBuf>,
    /// Server shards (threads).
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    #[arg(long)]
    pub json: bool,
    /// Write SVG charts of the run into this folder.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// A daemon setting for this run, `KEY=VALUE` (as its `--set`); repeatable.
    #[arg(long = "server-set")]
    pub sets: Vec<String>,
}

pub struct Daemon {
    child: Child,
    pub addr: String,
    dir: tempfile::TempDir,
    bin: PathBuf,
    shards: usize,
    sets: Vec<String>,
}

impl Daemon {
    pub fn start(s: &ServerArgs) -> anyhow::Result<Daemon> {
        let bin = match &s.server {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("switchboard"),
        };
        if !bin.exists() {
            bail!("{} not found: build it (cargo build --release -p switchboard-edge) or pass --server", bin.display());
        }
        let dir = tempfile::tempdir()?;
        let (child, addr) = Daemon::spawn(&bin, s.shards, &s.sets, dir.path(), "127.0.0.1:0")?;
        Ok(Daemon { child, addr, dir, bin, shards: s.shards, sets: s.sets.clone() })
    }

    fn spawn(
        bin: &std::path::Path,
        shards: usize,
        sets: &[String],
        dir: &std::path::Path,
        listen: &str,
    ) -> anyhow::Result<(Child, String)> {
        let mut child = Command::new(bin)
            .args(["--listen", listen, "--quic-listen", "127.0.0.1:0", "--shards", &shards.to_string(), "--data-dir"])
            .arg(dir)
            .args(["--set", "sends_per_s=10000000", "--set", "sends_burst=10000000"])
            .args(sets.iter().flat_map(|s| ["--set", s.as_str()]))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut first = String::new();
        out.read_line(&mut first)?;
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let addr = first.split("ws://").nth(1).and_then(|s| s.split('/').next()).context("no address")?.to_string();
        Ok((child, addr))
    }

    /// SIGKILL only (the caller restarts when it chooses).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new process on the same data folder and address.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let (child, _) = Daemon::spawn(&self.bin, self.shards, &self.sets, self.dir.path(), &self.addr)?;
        self.child = child;
        Ok(())
    }

    /// The development secret the daemon created.
    pub fn secret(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.dir.path().join("jwt.secret"))?.trim().to_string())
    }

    pub fn token(&self, user: &str) -> anyhow::Result<String> {
        let secret = self.secret()?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        Ok(switchboard_edge::auth::mint_hs256(secret.trim().as_bytes(), &UserId::new(user)?, now, 3600, false))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (user + system CPU seconds, resident bytes) of the daemon.
    pub fn usage(&self) -> (f64, u64) {
        proc_usage(self.child.id())
    }

    pub fn client(&self, user: &str) -> anyhow::Result<WebSocket<TcpStream>> {
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

impl Daemon {
    /// One HTTP/1.1 request; returns the status and the JSON body.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(&self.addr)?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).context("no status")?;
        let json = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("null");
        Ok((status, serde_json::from_str(json).unwrap_or(serde_json::Value::Null)))
    }

    /// A GET without a token; returns the status and the body as text.
    pub fn http_text(&self, path: &str) -> anyhow::Result<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(&self.addr)?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).context("no status")?;
        Ok((status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
    }
}

/// CPU seconds of a process's threads whose name starts with `prefix` (`shard-`, `quic`).
pub fn threads_cpu(pid: u32, prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix)))
        .map(|t| cpu_of(&t.path().join("stat")))
        .sum()
}

/// user + system CPU seconds in a `stat` file of `/proc`.
fn cpu_of(stat: &std::path::Path) -> f64 {
    let stat = std::fs::read_to_string(stat).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    // After the command name: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Safety: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(14) + ticks(15)) / hz
}

/// (user + system CPU seconds, resident bytes) of a process, from `/proc`.
pub fn proc_usage(pid: u32) -> (f64, u64) {
    let cpu = cpu_of(std::path::Path::new(&format!("/proc/{pid}/stat")));
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    (cpu, pages * 4096)
}
