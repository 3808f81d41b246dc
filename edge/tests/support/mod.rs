//! A real `switchboard` process on a loopback port with its own data folder, and small
//! clients for it: WebSocket (tungstenite, a client nobody here wrote), raw sockets for
//! protocol violations, and HTTP/1.1 for REST.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchboard_edge::auth::mint_hs256;
pub use switchboard_edge::cluster::Role;
use switchboard_store::UserId;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

pub mod quic;

pub struct Server {
    pub addr: String,
    pub dir: PathBuf,
    child: Child,
    args: Vec<String>,
    /// The JWT secret: `jwt.secret` in the data folder, or a cluster's shared one.
    secret: PathBuf,
}

fn unique_dir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("switchboard-e2e-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

impl Server {
    /// Starts a daemon with two shards and generous rate limits, plus `args`.
    pub fn start(args: &[&str]) -> Server {
        let dir = unique_dir();
        let mut all: Vec<String> = ["--shards", "2", "--set", "sends_per_s=100000", "--set", "sends_burst=100000"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        all.extend(args.iter().map(|s| s.to_string()));
        Server::spawn(dir, all, "127.0.0.1:0")
    }

    fn spawn(dir: PathBuf, args: Vec<String>, listen: &str) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["--listen", listen, "--quic-listen", "127.0.0.1:0", "--data-dir"])
            .arg(&dir)
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start switchboard");
        let mut first = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut first).unwrap();
        // Keep reading, so that the daemon never writes to a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let addr = first
            .split("ws://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .to_string();
        let secret = args
            .iter()
            .find_map(|a| a.strip_prefix("jwt_secret_file="))
            .map(|f| PathBuf::from(f.trim_matches('"')))
            .unwrap_or_else(|| dir.join("jwt.secret"));
        Server { addr, dir, child, args, secret }
    }

    /// SIGKILL, then a new process on the same data folder (and a new port: the old one may
    /// already belong to another test's server).
    pub fn kill_and_restart(mut self) -> Server {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (dir, args) = (self.dir.clone(), self.args.clone());
        std::mem::forget(self);
        Server::spawn(dir, args, "127.0.0.1:0")
    }

    /// SIGKILL, keeping the data folder for [`Server::kill_and_restart`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (a drain), then a new process on the same data folder.
    pub fn terminate_and_restart(mut self) -> Server {
        assert!(self.terminate().success());
        let (dir, args) = (self.dir.clone(), self.args.clone());
        std::mem::forget(self);
        Server::spawn(dir, args, "127.0.0.1:0")
    }

    /// SIGTERM, and waits for the process to end; returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), "TERM");
        self.child.wait().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to end (after a signal sent with [`Server::pid`]).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    /// The sum of a metric's samples (every label set) in `/metrics`.
    pub fn metrics_value(&self, name: &str) -> f64 {
        let (_, text) = self.http("GET", "/metrics", None, None);
        let text = text.as_str().unwrap().to_string();
        text.lines()
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn token(&self, user: &str) -> String {
        self.token_with(user, false)
    }

    pub fn token_with(&self, user: &str, admin: bool) -> String {
        let secret = std::fs::read_to_string(&self.secret).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        mint_hs256(secret.trim().as_bytes(), &UserId::new(user).unwrap(), now, 3600, admin)
    }

    /// A connected client that said hello as `user`.
    pub fn client(&self, user: &str) -> Client {
        let mut c = Client::connect(self, &format!("/v1/ws?token={}", self.token(user)), None);
        c.send(json!({"t":"hello"}));
        let w = c.expect("welcome");
        assert_eq!(w["user"], user);
        c
    }

    /// An HTTP request; returns (status, JSON body or the text as a string).
    pub fn http(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let text = String::from_utf8_lossy(&out).to_string();
        let status: u16 = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{text}"));
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (status, serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string())))
    }

    /// Creates a conversation as `owner`; returns its id.
    pub fn create(&self, owner: &str, kind: &str, members: &[&str]) -> String {
        let (status, v) = self.http(
            "POST",
            "/v1/conversations",
            Some(&self.token(owner)),
            Some(json!({"kind": kind, "members": members, "title": "t"})),
        );
        assert_eq!(status, 201, "{v}");
        v["conv"].as_str().unwrap().to_string()
    }
}

/// Nodes of one cluster on loopback, as `switchboard-ctl cluster up` starts them: the last
/// `edge_only` of them hold no store, all share one JWT secret.
pub struct Cluster {
    pub nodes: Vec<Server>,
    /// Node `i`'s backplane (mesh) address at `mesh[i - 1]`.
    pub mesh: Vec<std::net::SocketAddr>,
    /// The cluster's certificates (`write_cluster_certs`) and JWT secret.
    pub dir: PathBuf,
}

impl Cluster {
    pub fn start(n: u16, edge_only: u16) -> Cluster {
        Cluster::start_on(n, edge_only, |_| "127.0.0.1".to_string())
    }

    /// [`Cluster::start`] with node `i` on address `host(i)`.
    pub fn start_on(n: u16, edge_only: u16, host: impl Fn(u16) -> String) -> Cluster {
        Cluster::with_roles(&switchboard_edge::cluster::local::roles(n, edge_only), host)
    }

    /// Nodes 1..=`roles.len()`, node `i` of role `roles[i - 1]` on address `host(i)`.
    pub fn with_roles(roles: &[Role], host: impl Fn(u16) -> String) -> Cluster {
        let n = roles.len() as u16;
        let dir = unique_dir();
        switchboard_backplane::tls::write_cluster_certs(n, &dir).unwrap();
        switchboard_edge::auth::dev_secret(&dir).unwrap();
        let held: Vec<std::net::UdpSocket> =
            (1..=n).map(|i| std::net::UdpSocket::bind(format!("{}:0", host(i))).unwrap()).collect();
        let ports: Vec<u16> = held.iter().map(|s| s.local_addr().unwrap().port()).collect();
        drop(held);
        let backplane = |j: u16| format!("{}:{}", host(j), ports[j as usize - 1]);
        let mut nodes = Vec::new();
        for i in 1..=n {
            let mut sets = switchboard_edge::cluster::local::node_settings(i, roles, &backplane, &dir);
            sets.extend(["sends_per_s=100000".into(), "sends_burst=100000".into()]);
            let mut args: Vec<String> = vec!["--shards".into(), "2".into()];
            for set in sets {
                args.extend(["--set".into(), set]);
            }
            nodes.push(Server::spawn(dir.join(format!("node-{i}")), args, &format!("{}:0", host(i))));
        }
        let mesh = (1..=n).map(|j| backplane(j).parse().unwrap()).collect();
        let c = Cluster { nodes, mesh, dir };
        c.wait_meshed();
        c
    }

    /// Waits until every node holds every other up.
    pub fn wait_meshed(&self) {
        let want = format!("switchboard_backplane_peers_up {}", self.nodes.len() - 1);
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &self.nodes {
            loop {
                let (_, metrics) = node.http("GET", "/metrics", None, None);
                if metrics.as_str().is_some_and(|m| m.lines().any(|l| l == want)) {
                    break;
                }
                assert!(Instant::now() < deadline, "node {} never saw the others up", node.addr);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Node `i` (1-based).
    pub fn node(&self, i: usize) -> &Server {
        &self.nodes[i - 1]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unsafe_kill(pid: u32, sig: &str) {
    Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap();
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

impl Client {
    /// Upgrades `path` (with its query); `protocol` is offered as `Sec-WebSocket-Protocol`.
    pub fn connect(server: &Server, path: &str, protocol: Option<&str>) -> Client {
        Client::connect_with(server, path, protocol, None)
    }

    pub fn connect_with(server: &Server, path: &str, protocol: Option<&str>, origin: Option<&str>) -> Client {
        use tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{}{path}", server.addr).into_client_request().unwrap();
        if let Some(p) = protocol {
            req.headers_mut().insert("Sec-WebSocket-Protocol", p.parse().unwrap());
        }
        if let Some(o) = origin {
            req.headers_mut().insert("Origin", o.parse().unwrap());
        }
        let stream = TcpStream::connect(&server.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (ws, _) = tungstenite::client(req, stream).expect("upgrade");
        Client { ws }
    }

    pub fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).unwrap();
    }

    pub fn send_raw(&mut self, m: Message) {
        self.ws.send(m).unwrap();
    }

    /// The next protocol frame (pings are answered by tungstenite), within 10 s.
    pub fn recv(&mut self) -> Value {
        loop {
            match self.ws.read().unwrap_or_else(|e| panic!("read: {e}")) {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Binary(b) => return json!({"binary": hex(&b)}),
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame, which must be of type `t`.
    pub fn expect(&mut self, t: &str) -> Value {
        let v = self.recv();
        assert_eq!(v["t"], t, "expected {t}, got {v}");
        v
    }

    /// Asserts that nothing arrives for `ms`.
    pub fn expect_silence(&mut self, ms: u64) {
        self.ws.get_ref().set_read_timeout(Some(Duration::from_millis(ms))).unwrap();
        let got = self.ws.read();
        self.ws.get_ref().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        match got {
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// Reads until the server closes; returns the close code.
    pub fn closed(&mut self) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Close(Some(f))) => return u16::from(f.code),
                Ok(Message::Close(None)) => return 1005,
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => return 1006,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        panic!("not closed within 15 s")
    }

    pub fn close(&mut self) {
        let _ = self.ws.close(Some(tungstenite::protocol::CloseFrame { code: CloseCode::Normal, reason: "".into() }));
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A raw socket that has done the upgrade, for sending what no library would.
pub fn raw_upgraded(server: &Server, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

/// A masked client frame.
pub fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![(fin as u8) << 7 | opcode];
    let m = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n < 65536 => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [1u8, 2, 3, 4];
    if masked {
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// Reads one server frame from a raw socket: its opcode and payload; `None` when the stream
/// ends (or fails) before a whole frame.
pub fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).ok()?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).ok()?;
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).ok()?;
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).ok()?;
    Some((h[0] & 0x0f, p))
}

/// Reads server frames from a raw socket until a close frame: its code, or `None` if the
/// stream ends first.
pub fn close_or_end(s: &mut TcpStream) -> Option<u16> {
    loop {
        let (opcode, p) = read_frame(s)?;
        if opcode == 0x8 {
            return p.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
        }
    }
}

/// [`close_or_end`], with 1006 for a stream that ends without a close frame.
pub fn raw_close_code(s: &mut TcpStream) -> u16 {
    close_or_end(s).unwrap_or(1006)
}

/// A user whose dm with `a` lives on store node `owner` (of the cluster's store nodes
/// `stores`, 256 partitions), and that dm.
pub fn dm_on(owner: u16, stores: &[u16], a: &str) -> (String, String) {
    use switchboard_backplane::NodeId;
    let stores: Vec<NodeId> = stores.iter().map(|n| NodeId(*n)).collect();
    let placement = switchboard_edge::cluster::placement::Placement::new(256, &stores);
    let me = UserId::new(a).unwrap();
    (0..)
        .map(|i| format!("peer{i}"))
        .find_map(|b| {
            let conv = switchboard_store::ConvId::dm(&me, &UserId::new(&b).unwrap());
            (placement.owner(&conv) == NodeId(owner)).then(|| (b, conv.as_str().to_string()))
        })
        .unwrap()
}

/// What is wrong with a `/metrics` text by the Prometheus conventions (`promtool check
/// metrics` finds the same, where it is installed): a sample of a family without `# HELP`
/// and `# TYPE` before it, a counter not named `_total`, a summary (its quantiles cannot be
/// aggregated across nodes), a histogram whose buckets are not cumulative up to `_count`.
pub fn metrics_problems(text: &str) -> Vec<String> {
    use std::collections::HashMap;
    let (mut help, mut kind) = (HashMap::new(), HashMap::<String, String>::new());
    let mut problems = Vec::new();
    let mut buckets: HashMap<String, Vec<u64>> = HashMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_whitespace().next().unwrap_or("");
            if help.insert(name.to_string(), ()).is_some() {
                problems.push(format!("{name}: HELP twice"));
            }
            continue;
        }
        if line.starts_with("# TYPE ") {
            let (name, k) = (words.nth(2).unwrap_or(""), words.next().unwrap_or(""));
            if !help.contains_key(name) {
                problems.push(format!("{name}: TYPE without HELP"));
            }
            if k == "counter" && !name.ends_with("_total") {
                problems.push(format!("{name}: a counter not named _total"));
            }
            if k == "summary" {
                problems.push(format!("{name}: a summary, not a histogram"));
            }
            kind.insert(name.to_string(), k.to_string());
            continue;
        }
        let Some(sample) = words.next() else { continue };
        let name = sample.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| kind.get(*f).is_some_and(|k| k == "histogram")))
            .unwrap_or(name);
        if !kind.contains_key(family) {
            problems.push(format!("{name}: a sample before its family's TYPE"));
        }
        let value = words.next().unwrap_or("");
        if value.parse::<f64>().is_err() {
            problems.push(format!("{line}: not a number"));
        }
        if name.ends_with("_bucket") {
            let labels = sample.split_once('{').map_or("", |(_, l)| l.split("le=").next().unwrap_or(""));
            let series = format!("{family}{{{labels}");
            buckets.entry(series).or_default().push(value.parse().unwrap_or(0));
        }
        if name.ends_with("_count") && kind.get(family).is_some_and(|k| k == "histogram") {
            let labels = sample.split_once('{').map_or("", |(_, l)| l.trim_end_matches('}'));
            let labels = if labels.is_empty() { String::new() } else { format!("{labels},") };
            let all = buckets.get(&format!("{family}{{{labels}")).cloned().unwrap_or_default();
            if all.windows(2).any(|w| w[0] > w[1]) || all.last() != value.parse().ok().as_ref() {
                problems.push(format!("{family}: buckets {all:?} not cumulative up to the count {value}"));
            }
        }
    }
    problems
}

/// What `promtool check metrics` says of a `/metrics` text (nothing, when it is clean), from
/// Debian's `prometheus` package, which the test command installs.
pub fn promtool_says(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool, from Debian's prometheus package (tools/test.sh installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        said
    } else {
        format!("exit {}: {said}", out.status)
    }
}
