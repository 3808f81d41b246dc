//! The peer: Debian's `nats-server` with its WebSocket listener, started by the harness on
//! loopback for the same scenarios. NATS core is not durable (nothing is written to disk, no
//! acknowledgement means "stored"); Switchboard is. The numbers sit side by side with that said.

use crate::daemon::proc_usage;
use anyhow::{bail, Context};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nats {
    child: Child,
    /// The WebSocket listener (`ws://ADDR/`).
    pub ws_addr: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Debian's `nats-server`.
pub fn binary() -> anyhow::Result<&'static str> {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .context("nats-server is not installed (apt-get install nats-server)")
}

impl Nats {
    pub fn start() -> anyhow::Result<Nats> {
        let bin = binary()?;
        let dir = tempfile::tempdir()?;
        let (port, ws) = (free_port()?, free_port()?);
        let conf = dir.path().join("nats.conf");
        let mut f = std::fs::File::create(&conf)?;
        // The client limit and payload as generous as Switchboard's; no TLS on loopback.
        writeln!(f, "host: 127.0.0.1\nport: {port}\nmax_connections: 1000000\nwebsocket {{\n  host: 127.0.0.1\n  port: {ws}\n  no_tls: true\n}}")?;
        let child = Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        let ws_addr = format!("127.0.0.1:{ws}");
        let addr: SocketAddr = ws_addr.parse()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not open {ws_addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Nats { child, ws_addr, _dir: dir })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn usage(&self) -> (f64, u64) {
        proc_usage(self.child.id())
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a NATS client says first, and the `PING` whose `PONG` proves the connection is up.
pub const CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\nPING\r\n";

/// A NATS client over WebSocket, on the same monoio client as Switchboard's: `CONNECT`, then
/// `PING` until `PONG`; subjects `u.<user>`, one per user, for one-to-one.
pub mod client {
    use crate::wsclient::{self, Reader, Writer};
    use bytes::{Buf, Bytes, BytesMut};
    use std::io;
    use std::net::SocketAddr;

    /// Connects and waits for the server's `PONG` (after `subscribe`, if given).
    pub async fn connect(addr: SocketAddr, subscribe: Option<&str>) -> io::Result<(Messages, Writer)> {
        connect_on(monoio::net::TcpStream::connect(addr).await?, addr, subscribe).await
    }

    /// [`connect`] on a connected stream.
    pub async fn connect_on(
        stream: monoio::net::TcpStream,
        addr: SocketAddr,
        subscribe: Option<&str>,
    ) -> io::Result<(Messages, Writer)> {
        let (r, mut w) = wsclient::upgrade(stream, addr, "/").await?;
        let mut hello = super::CONNECT.to_vec();
        if let Some(subject) = subscribe {
            hello.splice(hello.len() - 6.., format!("SUB {subject} 1\r\nPING\r\n").into_bytes());
        }
        w.send_binary(&hello).await?;
        let mut m = Messages { r, buf: BytesMut::new() };
        m.until_pong().await?;
        Ok((m, w))
    }

    pub fn publish(subject: &str, payload: &str) -> Vec<u8> {
        format!("PUB {subject} {}\r\n{payload}\r\n", payload.len()).into_bytes()
    }

    /// The `MSG` payloads of a connection's protocol stream (frames may split or join lines).
    pub struct Messages {
        r: Reader,
        buf: BytesMut,
    }

    impl Messages {
        /// Sends `PING` and waits for the `PONG`.
        pub async fn ping(&mut self, w: &mut Writer) -> io::Result<()> {
            w.send_binary(b"PING\r\n").await?;
            self.until_pong().await
        }

        async fn until_pong(&mut self) -> io::Result<()> {
            loop {
                if let Some(p) = self.buf.windows(6).position(|w| w == b"PONG\r\n") {
                    self.buf.advance(p + 6);
                    return Ok(());
                }
                match self.r.next().await? {
                    Some(frame) => self.buf.extend_from_slice(&frame),
                    None => return Err(io::ErrorKind::UnexpectedEof.into()),
                }
            }
        }

        pub async fn next(&mut self) -> io::Result<Option<Bytes>> {
            loop {
                if let Some(p) = self.parse() {
                    return Ok(Some(p));
                }
                match self.r.next().await? {
                    Some(frame) => self.buf.extend_from_slice(&frame),
                    None => return Ok(None),
                }
            }
        }

        fn parse(&mut self) -> Option<Bytes> {
            loop {
                let eol = self.buf.windows(2).position(|w| w == b"\r\n")?;
                if !self.buf.starts_with(b"MSG ") {
                    self.buf.advance(eol + 2);
                    continue;
                }
                let line = std::str::from_utf8(&self.buf[..eol]).ok()?;
                let size: usize = line.rsplit(' ').next()?.parse().ok()?;
                if self.buf.len() < eol + 2 + size + 2 {
                    return None;
                }
                self.buf.advance(eol + 2);
                let payload = self.buf.split_to(size).freeze();
                self.buf.advance(2);
                return Some(payload);
            }
        }
    }
}

/// Which protocol a load client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Switchboard,
    /// The peer: a subject per user, `PUB`/`MSG`, nothing stored, nothing acknowledged.
    Nats,
    /// The durable peer: JetStream, publish acknowledgements and a push consumer per user.
    JetStream,
}

/// A receiver's incoming messages, whichever the server.
pub enum Inbox {
    Ws(crate::wsclient::Reader),
    Nats(client::Messages),
}

impl Inbox {
    pub async fn next(&mut self) -> std::io::Result<Option<bytes::Bytes>> {
        match self {
            Inbox::Ws(r) => r.next().await,
            Inbox::Nats(m) => m.next().await,
        }
    }
}

/// The server under test.
pub enum Server<'a> {
    Switchboard(&'a crate::daemon::Daemon),
    /// The same daemon, its clients over QUIC (`--transport quic`).
    SwitchboardQuic(&'a crate::daemon::Daemon, &'a crate::quicclient::QuicTarget),
    Nats(&'a Nats),
    /// Switchboard nodes joined by the backplane.
    Cluster(&'a crate::cluster::Cluster),
    /// nats-servers joined by routes.
    NatsCluster(&'a crate::cluster::NatsCluster),
    /// NATS JetStream, the durable peer, on one server or several routed together.
    JetStream(&'a crate::jetstream::JetStream),
}

impl Server<'_> {
    /// The first node's client address.
    pub fn addr(&self) -> &str {
        self.addr_of(0)
    }

    /// Node `i`'s client address (`i` modulo the node count).
    pub fn addr_of(&self, i: usize) -> &str {
        match self {
            Server::Switchboard(d) => &d.addr,
            Server::SwitchboardQuic(_, q) => &q.addr_text,
            Server::Nats(n) => &n.ws_addr,
            Server::Cluster(c) => &c.nodes[i % c.nodes.len()].addr,
            Server::NatsCluster(c) => &c.ws_addrs[i % c.ws_addrs.len()],
            Server::JetStream(j) => &j.servers.ws_addrs[i % j.servers.ws_addrs.len()],
        }
    }

    /// CPU seconds and resident bytes of every server process together.
    pub fn usage(&self) -> (f64, u64) {
        match self {
            Server::Switchboard(d) | Server::SwitchboardQuic(d, _) => d.usage(),
            Server::Nats(n) => n.usage(),
            Server::Cluster(c) => c.usage(),
            Server::NatsCluster(c) => c.usage(),
            Server::JetStream(j) => j.servers.usage(),
        }
    }

    /// The process of a single Switchboard daemon (its threads are measured apart).
    pub fn daemon_pid(&self) -> Option<u32> {
        match self {
            Server::Switchboard(d) | Server::SwitchboardQuic(d, _) => Some(d.pid()),
            _ => None,
        }
    }

    pub fn proto(&self) -> Proto {
        match self {
            Server::Switchboard(_) | Server::SwitchboardQuic(..) | Server::Cluster(_) => Proto::Switchboard,
            Server::Nats(_) | Server::NatsCluster(_) => Proto::Nats,
            Server::JetStream(_) => Proto::JetStream,
        }
    }

    pub fn token(&self, user: &str) -> anyhow::Result<String> {
        match self {
            Server::Switchboard(d) | Server::SwitchboardQuic(d, _) => d.token(user),
            Server::Cluster(c) => c.token(user),
            Server::Nats(_) | Server::NatsCluster(_) | Server::JetStream(_) => Ok(String::new()),
        }
    }
}
