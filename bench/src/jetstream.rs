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

use crate::cluster::NatsCluster;
use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// What the peer's durability is, for the printed tables.
pub const DURABILITY: &str =
    "JetStream file store, 1 replica, publish acks awaited; nats-server 2.9 has no sync_interval: the page cache, synced every 2 min";

/// JetStream servers with the stream made.
pub struct JetStream {
    pub servers: NatsCluster,
}

impl JetStream {
    /// `n` servers (routed together when more than one), with the stream made.
    pub fn start(n: usize) -> anyhow::Result<JetStream> {
        let servers = NatsCluster::start(n, true)?;
        // The stream, once the servers (and, clustered, their meta leader) answer.
        let stream = r#"{"name":"SB","subjects":["u.>"],"storage":"file","num_replicas":1}"#;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match request(servers.client_ports[0], "$JS.API.STREAM.CREATE.SB", stream) {
                Ok(answer) if !answer.contains("\"error\"") => break,
                Ok(answer) if Instant::now() > deadline => bail!("JetStream refused the stream: {answer}"),
                Err(e) if Instant::now() > deadline => return Err(e.context("JetStream never answered")),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        Ok(JetStream { servers })
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
