//! The durable peer: NATS JetStream on Debian's `nats-server`, for "durable first, delivered
//! second". Core NATS neither stores nor acknowledges; JetStream does both: one file-backed
//! stream `SB` over the subjects `u.>`, one replica, a publisher that asks for the publish
//! acknowledgement (`PUB subject reply`, read as Switchboard's acks are), and a push consumer
//! per recipient (`deliver_subject` `d.<user>`, filtered to `u.<user>`, no acks).
//!
//! Its durability is printed beside the numbers: Debian's nats-server (2.9) has no
//! `sync_interval` setting, so JetStream's file store leaves each message in the page cache
//! and syncs every two minutes, where Switchboard fsyncs before every `ack`. The peer is as
//! durable as that version allows, which is less than Switchboard.

use crate::daemon::proc_usage;
use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the peer's durability is, for the printed tables.
pub const DURABILITY: &str =
    "JetStream file store, 1 replica, publish acks awaited; nats-server 2.9 has no sync_interval: the page cache, synced every 2 min";

pub struct JetStream {
    children: Vec<Child>,
    pub ws_addrs: Vec<String>,
    _dir: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl JetStream {
    /// `n` servers (routed together when more than one), with the stream made.
    pub fn start(n: usize) -> anyhow::Result<JetStream> {
        let bin = crate::nats::binary()?;
        let dir = tempfile::tempdir()?;
        let ports: Vec<[u16; 3]> =
            (0..n).map(|_| Ok([free_port()?, free_port()?, free_port()?])).collect::<anyhow::Result<_>>()?;
        let mut children = Vec::new();
        let mut ws_addrs = Vec::new();
        for (i, [client, ws, route]) in ports.iter().enumerate() {
            let store = dir.path().join(format!("js-{i}"));
            let mut conf = format!(
                "server_name: js{i}\nhost: 127.0.0.1\nport: {client}\nmax_connections: 1000000\nwebsocket {{\n  host: 127.0.0.1\n  port: {ws}\n  no_tls: true\n}}\njetstream {{\n  store_dir: {:?}\n}}\n",
                store.display().to_string()
            );
            if n > 1 {
                let routes: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| format!("nats-route://127.0.0.1:{}", p[2]))
                    .collect();
                conf += &format!(
                    "cluster {{\n  name: bench\n  host: 127.0.0.1\n  port: {route}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                );
            }
            let file = dir.path().join(format!("js-{i}.conf"));
            std::fs::write(&file, conf)?;
            children.push(Command::new(bin).arg("-c").arg(&file).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
            ws_addrs.push(format!("127.0.0.1:{ws}"));
        }
        let js = JetStream { children, ws_addrs, _dir: dir };
        // The stream, once the servers (and, clustered, their meta leader) answer.
        let stream = r#"{"name":"SB","subjects":["u.>"],"storage":"file","num_replicas":1}"#;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match request(ports[0][0], "$JS.API.STREAM.CREATE.SB", stream) {
                Ok(answer) if !answer.contains("\"error\"") => break,
                Ok(answer) if Instant::now() > deadline => bail!("JetStream refused the stream: {answer}"),
                Err(e) if Instant::now() > deadline => return Err(e.context("JetStream never answered")),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        Ok(js)
    }

    pub fn usage(&self) -> (f64, u64) {
        self.children.iter().map(|c| proc_usage(c.id())).fold((0.0, 0), |(c, r), (c2, r2)| (c + c2, r + r2))
    }
}

impl Drop for JetStream {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One request over the plain NATS protocol (for setting up); returns the answer's payload.
fn request(port: u16, subject: &str, payload: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "CONNECT {{\"verbose\":false,\"protocol\":1}}\r\nSUB _INBOX.setup 1\r\nPUB {subject} _INBOX.setup {}\r\n{payload}\r\n",
        payload.len()
    )?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("closed before answering");
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(at) = text.find("MSG _INBOX.setup") {
            let rest = &text[at..];
            if let Some((line, body)) = rest.split_once("\r\n") {
                let size: usize = line.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
                if body.len() >= size {
                    return Ok(body[..size].to_string());
                }
            }
        }
        if text.starts_with("-ERR") {
            bail!("{text}");
        }
    }
}

/// Clients of the peer, on the same monoio WebSocket client as the others.
pub mod client {
    use crate::nats::client::{connect, Messages};
    use crate::wsclient::Writer;
    use std::io;
    use std::net::SocketAddr;

    /// A recipient: its push consumer made, its deliveries subscribed.
    pub async fn consumer(addr: SocketAddr, user: &str) -> io::Result<(Messages, Writer)> {
        let inbox = format!("_INBOX.c.{user}");
        let (mut m, mut w) = connect(addr, Some(&inbox)).await?;
        let config = format!(
            r#"{{"stream_name":"SB","config":{{"deliver_subject":"d.{user}","filter_subject":"u.{user}","ack_policy":"none","deliver_policy":"new"}}}}"#
        );
        let create = format!("PUB $JS.API.CONSUMER.CREATE.SB {inbox} {}\r\n{config}\r\n", config.len());
        w.send_binary(create.as_bytes()).await?;
        let answer = m.next().await?.ok_or(io::ErrorKind::UnexpectedEof)?;
        if answer.windows(7).any(|x| x == b"\"error\"") {
            return Err(io::Error::other(format!("consumer for {user}: {}", String::from_utf8_lossy(&answer))));
        }
        w.send_binary(format!("SUB d.{user} 2\r\n").as_bytes()).await?;
        m.ping(&mut w).await?;
        Ok((m, w))
    }

    /// A publisher whose acknowledgements arrive on its own inbox (read like acks).
    pub async fn publisher(addr: SocketAddr, name: &str) -> io::Result<(Messages, Writer, String)> {
        let inbox = format!("_INBOX.p.{name}");
        let (m, w) = connect(addr, Some(&inbox)).await?;
        Ok((m, w, inbox))
    }

    /// `PUB` asking for the stream's acknowledgement on `reply`.
    pub fn publish(subject: &str, reply: &str, payload: &str) -> Vec<u8> {
        format!("PUB {subject} {reply} {}\r\n{payload}\r\n", payload.len()).into_bytes()
    }
}
