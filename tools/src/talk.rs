//! The commands that talk to a running node as a client: `send`, `tail`, `history`,
//! `presence`, `inbox`, `create`, `members`. REST for what REST does (PROTOCOL.md §6), the
//! protocol for the rest: over WebSocket through `tungstenite` (blocking: a CLI holds one
//! socket), or with `--quic` over native QUIC (the edge's own client on a small runtime).
//!
//! Every failure says what to do: no server at the address, a refused token, not a member.

use anyhow::{anyhow, bail, Context};
use clap::Args;
use serde_json::{json, Value};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use switchboard_edge::auth;
use tungstenite::{Message, WebSocket};

/// Which node, and who is asking.
#[derive(Args, Clone)]
pub struct Target {
    /// The node's HTTP address (its WebSocket is the same host and port).
    #[arg(long, default_value = "http://127.0.0.1:7400")]
    pub url: String,
    /// A JWT for the node.
    #[arg(long)]
    pub token: Option<String>,
    /// Sign a token for this user with the development secret in --data-dir instead.
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// Print the server's JSON instead of lines for people.
    #[arg(long)]
    pub json: bool,
    /// Speak the protocol over QUIC (ALPN switchboard/1) instead of WebSocket. The address,
    /// and the hash of a development certificate, come from the node's GET /dev/quic.
    #[arg(long)]
    pub quic: bool,
    /// With --quic and a configured (not development) certificate: the CA that signed it (PEM).
    #[arg(long, requires = "quic")]
    pub quic_ca: Option<PathBuf>,
}

/// How long a send keeps retrying `unavailable` and `rate_limited`.
const RETRY_FOR: Duration = Duration::from_secs(30);

impl Target {
    /// `host:port` of the URL.
    fn authority(&self) -> anyhow::Result<&str> {
        if self.url.starts_with("https://") {
            bail!(
                "--url {}: this tool speaks plain HTTP and WebSocket only; use the node's http:// listener",
                self.url
            );
        }
        let rest = self.url.strip_prefix("http://").unwrap_or(&self.url);
        Ok(rest.trim_end_matches('/'))
    }

    fn token(&self) -> anyhow::Result<String> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let Some(user) = &self.user else {
            bail!(
                "who is asking? give --token T, or --user NAME to sign one with the development secret in --data-dir"
            );
        };
        let user = switchboard_store::UserId::new(user).map_err(|e| anyhow!("--user {user:?}: {e}"))?;
        let file = self.data_dir.join(auth::DEV_SECRET_FILE);
        let secret = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "--user needs the node's development secret, {}: pass --data-dir (the node's), or --token",
                file.display()
            )
        })?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        Ok(auth::mint_hs256(secret.trim().as_bytes(), &user, now, 3600, false))
    }

    fn connect_tcp(&self) -> anyhow::Result<TcpStream> {
        let at = self.authority()?;
        TcpStream::connect(at).map_err(|e| {
            anyhow!("no server at {} ({e}): start one with `cargo run --release`, or point --url at one", self.url)
        })
    }

    /// One REST call; the JSON answer, or an error that says what to do.
    pub fn rest(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let token = self.token()?;
        let stream = self.connect_tcp()?;
        let (status, value) =
            switchboard_edge::rest_client::call(stream, self.authority()?, method, path, &token, body.as_ref())?;
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(refused(&value))
        }
    }

    /// A session that said hello, over WebSocket or (`--quic`) QUIC.
    fn session(&self) -> anyhow::Result<(Session, Value)> {
        let token = self.token()?;
        let mut session = if self.quic {
            Session::Quic(Box::new(self.quic_session()?))
        } else {
            let tcp = self.connect_tcp()?;
            let url = format!("ws://{}/v1/ws", self.authority()?);
            let (ws, _) = tungstenite::client(url.as_str(), tcp).map_err(|e| anyhow!("{url}: {e}"))?;
            Session::Ws(Box::new(ws))
        };
        session.write(&json!({"t": "hello", "token": token}))?;
        let welcome = session.read()?;
        if welcome["t"] != "welcome" {
            return Err(refused(&welcome));
        }
        Ok((session, welcome))
    }

    fn quic_session(&self) -> anyhow::Result<QuicSession> {
        use switchboard_edge::quic::client::{parse_sha256, Client, Trust};
        let stream = self.connect_tcp()?;
        let (status, info) =
            switchboard_edge::rest_client::call(stream, self.authority()?, "GET", "/dev/quic", "", None)?;
        if status != 200 {
            return Err(refused(&info));
        }
        let mut addr: std::net::SocketAddr = info["addr"].as_str().unwrap_or("").parse().context("/dev/quic: addr")?;
        if addr.ip().is_unspecified() {
            // Listening on every address: reach it where --url does.
            let host = self.connect_tcp()?.peer_addr()?.ip();
            addr.set_ip(host);
        }
        let trust = match (&self.quic_ca, info["cert_sha256"].as_str()) {
            (Some(ca), _) => {
                use rustls::pki_types::pem::PemObject;
                let roots = rustls::pki_types::CertificateDer::pem_file_iter(ca)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| anyhow!("--quic-ca {}: {e}", ca.display()))?;
                Trust::Roots(roots)
            }
            (None, Some(hash)) => Trust::Sha256(parse_sha256(hash).context("/dev/quic: cert_sha256")?),
            (None, None) => {
                bail!("the node's QUIC certificate is a configured one: pass --quic-ca with the CA that signed it")
            }
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let endpoint = {
            let _in = rt.enter();
            let bind = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            switchboard_edge::quic::client::endpoint(bind.parse()?)?
        };
        let encoding = switchboard_edge::ws::handshake::Encoding::Json;
        let client = rt
            .block_on(Client::connect(&endpoint, addr, &trust, encoding, 1 << 20))
            .map_err(|e| anyhow!("no QUIC server at {addr}: {e}"))?;
        Ok(QuicSession { rt, _endpoint: endpoint, client })
    }
}

/// One protocol session, whichever transport carries it.
enum Session {
    Ws(Box<WebSocket<TcpStream>>),
    Quic(Box<QuicSession>),
}

struct QuicSession {
    rt: tokio::runtime::Runtime,
    _endpoint: quinn::Endpoint,
    client: switchboard_edge::quic::client::Client,
}

impl Session {
    fn write(&mut self, v: &Value) -> anyhow::Result<()> {
        match self {
            Session::Ws(ws) => write(ws, v),
            Session::Quic(q) => {
                q.rt.block_on(q.client.send(v.to_string().as_bytes()))
                    .map_err(|e| anyhow!("the connection failed: {e}"))
            }
        }
    }

    /// The next frame; a close is an error that names its code.
    fn read(&mut self) -> anyhow::Result<Value> {
        let q = match self {
            Session::Ws(ws) => return read(ws),
            Session::Quic(q) => q,
        };
        loop {
            match q.rt.block_on(q.client.recv()) {
                Ok(frame) => {
                    let v: Value = serde_json::from_slice(&frame).context("a frame that is not JSON")?;
                    if v["t"] != "ping" {
                        return Ok(v);
                    }
                }
                Err(switchboard_edge::quic::client::Closed::Code(code, reason)) => {
                    bail!("the server closed the connection: {code} {reason}{}", close_hint(code))
                }
                Err(switchboard_edge::quic::client::Closed::Other(why)) => bail!("the connection closed: {why}"),
            }
        }
    }

    fn close(self) {
        match self {
            Session::Ws(mut ws) => drop(ws.close(None)),
            Session::Quic(q) => q.client.connection.close(1000u32.into(), b""),
        }
    }
}

fn close_hint(code: u16) -> &'static str {
    if code == 4001 {
        ": the token was refused (expired? wrong secret?)"
    } else {
        ""
    }
}

/// What to say about a refusal (an `error` frame or a REST error body).
fn refused(v: &Value) -> anyhow::Error {
    let code = v["code"].as_str().unwrap_or("error");
    let message = v["message"].as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let hint = match code {
        "unauthorized" => {
            " (the token was refused: mint one with `switchboard-ctl token NAME --data-dir DIR`, or pass --token)"
        }
        "forbidden" => " (only members read or write a conversation, and only its owner changes who is in it)",
        "not_found" => " (no such conversation: check the id, e.g. with `switchboard-ctl inbox`)",
        "unavailable" | "rate_limited" => " (try again shortly)",
        _ => "",
    };
    anyhow!("{code}: {message}{hint}")
}

fn write(ws: &mut WebSocket<TcpStream>, v: &Value) -> anyhow::Result<()> {
    ws.send(Message::text(v.to_string())).context("the connection failed")
}

/// The next frame; a close is an error that names its code.
fn read(ws: &mut WebSocket<TcpStream>) -> anyhow::Result<Value> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).context("a frame that is not JSON"),
            Ok(Message::Close(Some(f))) => {
                let code = u16::from(f.code);
                bail!("the server closed the connection: {code} {}{}", f.reason, close_hint(code))
            }
            Ok(Message::Close(None)) => bail!("the server closed the connection"),
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => bail!("the connection closed"),
            Err(e) => return Err(anyhow!("the connection failed: {e}")),
        }
    }
}

fn text_of(body: &Value) -> String {
    body.as_str().map(str::to_string).or_else(|| body["text"].as_str().map(str::to_string)).unwrap_or(body.to_string())
}

fn show_msg(m: &Value) -> String {
    format!(
        "{} #{} {}: {}",
        m["conv"].as_str().unwrap_or("?"),
        m["seq"],
        m["from"].as_str().unwrap_or("?"),
        text_of(&m["body"])
    )
}

fn print_json(v: &Value) {
    println!("{v}");
}

/// `send`: one message, retried under the same id until acknowledged or refused.
pub fn send(
    t: &Target,
    to: Option<String>,
    conv: Option<String>,
    id: Option<String>,
    kind: Option<String>,
    text: String,
) -> anyhow::Result<()> {
    let id = id.unwrap_or_else(|| format!("ctl-{:016x}", rand::random::<u64>()));
    let mut frame = json!({"t": "send", "id": id, "body": {"text": text}});
    match (to, conv) {
        (Some(to), None) => frame["to"] = json!(to),
        (None, Some(conv)) => frame["conv"] = json!(conv),
        _ => bail!("say where: --to USER (a dm) or --conv CONV"),
    }
    if let Some(k) = kind {
        frame["kind"] = json!(k);
    }
    let (mut session, _) = t.session()?;
    let deadline = Instant::now() + RETRY_FOR;
    session.write(&frame)?;
    loop {
        let v = session.read()?;
        if v["id"] != json!(id) {
            continue;
        }
        match v["t"].as_str() {
            Some("ack") => {
                if t.json {
                    print_json(&v);
                } else if v["dup"] == true {
                    println!("already stored: {} seq {} (id {id})", v["conv"].as_str().unwrap_or("?"), v["seq"]);
                } else {
                    println!("sent: {} seq {} (id {id})", v["conv"].as_str().unwrap_or("?"), v["seq"]);
                }
                session.close();
                return Ok(());
            }
            Some("error")
                if matches!(v["code"].as_str(), Some("unavailable" | "rate_limited")) && Instant::now() < deadline =>
            {
                let wait = v["retry_after_ms"].as_u64().unwrap_or(1000);
                eprintln!("{}: retrying in {wait} ms under the same id", v["code"].as_str().unwrap_or("?"));
                std::thread::sleep(Duration::from_millis(wait));
                session.write(&frame)?;
            }
            _ => return Err(refused(&v)),
        }
    }
}

/// `tail`: messages as they come, of the given conversations or of all; `--after` first
/// prints what came after that seq. Reconnects by itself and resyncs what it missed.
pub fn tail(t: &Target, convs: Vec<String>, after: Option<u64>) -> anyhow::Result<()> {
    let mut last: std::collections::HashMap<String, u64> =
        convs.iter().map(|c| (c.clone(), after.unwrap_or(0))).collect();
    let mut first = true;
    loop {
        let (mut session, welcome) = t.session()?;
        eprintln!(
            "following {} as {} on {}{}; Ctrl-C to stop",
            if convs.is_empty() { "every conversation".to_string() } else { convs.join(", ") },
            welcome["user"].as_str().unwrap_or("?"),
            t.url,
            if t.quic { " over QUIC" } else { "" }
        );
        for c in &convs {
            // Channels push in full only while open (a dm or group answers nothing to it).
            if c.starts_with("c_") {
                session.write(&json!({"t": "open", "conv": c}))?;
            }
        }
        for (c, seq) in &last {
            if !first || after.is_some() {
                session.write(&json!({"t": "sync", "conv": c, "after": seq, "limit": 1000}))?;
            }
        }
        first = false;
        let ended = loop {
            let v = match session.read() {
                Ok(v) => v,
                Err(e) => break e,
            };
            match v["t"].as_str() {
                Some("msg") => {
                    let conv = v["conv"].as_str().unwrap_or("").to_string();
                    if !convs.is_empty() && !convs.contains(&conv) {
                        continue;
                    }
                    let seq = v["seq"].as_u64().unwrap_or(0);
                    let seen = last.entry(conv).or_insert(0);
                    if seq <= *seen {
                        continue;
                    }
                    *seen = seq;
                    if t.json {
                        print_json(&v);
                    } else {
                        println!("{}", show_msg(&v));
                    }
                }
                Some("synced") if v["more"] == true => {
                    session.write(&json!({"t": "sync", "conv": v["conv"], "after": v["upto"], "limit": 1000}))?;
                }
                Some("error") => eprintln!("{}", refused(&v)),
                Some("reconnect") => eprintln!("the node is draining"),
                _ if t.json && v["t"] != "synced" => print_json(&v),
                _ => {}
            }
        };
        let message = ended.to_string();
        if message.contains("4001") || message.contains("4003") {
            return Err(ended);
        }
        eprintln!("{message}; reconnecting");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `history`: a page of a conversation, newest first (or oldest first from `--after`).
pub fn history(t: &Target, conv: &str, limit: usize, cursor: Option<String>, after: Option<u64>) -> anyhow::Result<()> {
    let mut path = format!("/v1/conversations/{conv}/messages?limit={limit}");
    if let Some(c) = cursor {
        path.push_str(&format!("&cursor={c}"));
    }
    if let Some(a) = after {
        path.push_str(&format!("&after={a}"));
    }
    let page = t.rest("GET", &path, None)?;
    if t.json {
        print_json(&page);
        return Ok(());
    }
    for m in page["messages"].as_array().into_iter().flatten() {
        println!("{}", show_msg(m));
    }
    match page["next_cursor"].as_str() {
        Some(c) => eprintln!("older: --cursor {c}"),
        None => eprintln!("(the beginning)"),
    }
    Ok(())
}

/// `presence`: who is online, and when the others were last seen.
pub fn presence(t: &Target, users: &[String]) -> anyhow::Result<()> {
    if users.is_empty() {
        bail!("whose presence? name one or more users");
    }
    let v = t.rest("GET", &format!("/v1/presence?users={}", users.join(",")), None)?;
    if t.json {
        print_json(&v);
        return Ok(());
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    for p in v["users"].as_array().into_iter().flatten() {
        let user = p["user"].as_str().unwrap_or("?");
        match (p["online"].as_bool(), p["last_seen"].as_u64()) {
            (Some(true), _) => println!("{user}: online"),
            (_, Some(at)) => println!("{user}: last seen {} s ago", now.saturating_sub(at) / 1000),
            _ => println!("{user}: never seen"),
        }
    }
    Ok(())
}

/// `inbox`: the user's conversations with their heads and unread counts.
pub fn inbox(t: &Target) -> anyhow::Result<()> {
    let (mut session, _) = t.session()?;
    session.write(&json!({"t": "inbox", "req": "ctl"}))?;
    let v = loop {
        let v = session.read()?;
        match v["t"].as_str() {
            Some("inbox") => break v,
            Some("error") => return Err(refused(&v)),
            _ => continue,
        }
    };
    session.close();
    if t.json {
        print_json(&v);
        return Ok(());
    }
    let convs = v["convs"].as_array().cloned().unwrap_or_default();
    if convs.is_empty() {
        println!("no conversations yet");
    }
    for c in convs {
        let (head, read) = (c["head"].as_u64().unwrap_or(0), c["read"].as_u64().unwrap_or(0));
        println!(
            "{:<40} {:<8} head {:<6} unread {}",
            c["conv"].as_str().unwrap_or("?"),
            c["kind"].as_str().unwrap_or("?"),
            head,
            head.saturating_sub(read)
        );
    }
    Ok(())
}

fn list(s: &Option<String>) -> Vec<String> {
    s.as_deref().unwrap_or("").split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_string).collect()
}

/// `create`: a group or a channel; the caller owns it.
pub fn create(t: &Target, kind: &str, title: Option<String>, members: &Option<String>) -> anyhow::Result<()> {
    let body = json!({"kind": kind, "title": title.unwrap_or_default(), "members": list(members)});
    let v = t.rest("POST", "/v1/conversations", Some(body))?;
    if t.json {
        print_json(&v);
    } else {
        println!("{}", v["conv"].as_str().unwrap_or("?"));
    }
    Ok(())
}

/// `members`: adds and removes members (the owner, or an admin token).
pub fn members(t: &Target, conv: &str, add: &Option<String>, remove: &Option<String>) -> anyhow::Result<()> {
    let (add, remove) = (list(add), list(remove));
    if add.is_empty() && remove.is_empty() {
        bail!("nothing to change: --add a,b and/or --remove c");
    }
    let v =
        t.rest("POST", &format!("/v1/conversations/{conv}/members"), Some(json!({"add": add, "remove": remove})))?;
    if t.json {
        print_json(&v);
        return Ok(());
    }
    let changes = v["changes"].as_array().cloned().unwrap_or_default();
    if changes.is_empty() {
        println!("nothing changed (already so)");
    }
    for c in changes {
        println!("{} {} (seq {})", c["user"].as_str().unwrap_or("?"), c["event"].as_str().unwrap_or("?"), c["seq"]);
    }
    Ok(())
}
