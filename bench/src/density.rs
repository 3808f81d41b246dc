//! `density`: open N authenticated connections (upgrade + `hello`), hold them idle, check that
//! every one still answers (`ping` → `pong`), and measure the server from outside: user-space
//! bytes per connection from its RSS, kernel bytes per connection from `/proc/net/sockstat`.
//! The memory is read just after the last connection opened and again in the steady state,
//! after heartbeat rounds in which every connection answered the server's pings.
//!
//! The connections are spread over worker processes (this binary again, `density-worker`),
//! each under the host's open-files limit, and over the source addresses 127.0.0.2, .3, …, so
//! that neither descriptors nor ephemeral ports run out.

use crate::daemon::{Daemon, ServerArgs};
use crate::host::Host;
use crate::nats::Nats;
use anyhow::{bail, Context};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use switchboard_store::UserId;
use tungstenite::{Message, WebSocket};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub server: ServerArgs,
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Connections per worker process (each stays under the open-files limit).
    #[arg(long, default_value_t = 8_000)]
    pub per_worker: usize,
    #[arg(long)]
    pub smoke: bool,
    /// Measure a peer in the same run: `nats` (Debian's nats-server, WebSocket listener).
    #[arg(long, value_parser = ["nats"])]
    pub peer: Option<String>,
    /// After the ping check, every connection sends its partner a message and must get both
    /// the `ack` and the partner's `msg` (Switchboard only).
    #[arg(long)]
    pub exchange: bool,
    /// Then this many more connections open (upgrade + `hello`) and close, half with a close
    /// frame and half with a reset, while the others stay; the server's sockets and
    /// descriptors are counted before and after (Switchboard only).
    #[arg(long, default_value_t = 0)]
    pub churn: usize,
    /// Then every connection's user joins one channel and opens it, and this many messages
    /// are sent to it: the latency to the last of all the members, per message (Switchboard
    /// only).
    #[arg(long, default_value_t = 0)]
    pub channel_messages: usize,
    /// Between two channel messages.
    #[arg(long, default_value_t = 200)]
    pub channel_interval_ms: u64,
    /// Then every connection stays, answering the server's pings, for this many heartbeat
    /// rounds, and the server's memory is read again: the steady state (Switchboard only).
    #[arg(long, default_value_t = 2)]
    pub heartbeats: u32,
    /// The server's `heartbeat_ms` for this run (its default; every connection must be open
    /// within two of them, as nothing reads before the steady-state wait).
    #[arg(long, default_value_t = 30_000)]
    pub heartbeat_ms: u64,
    /// Spread the connections over a cluster of this many nodes (worker i connects to node
    /// i mod N); memory and CPU are all nodes' together (0: one node).
    #[arg(long, default_value_t = 0)]
    pub cluster: u16,
    /// `quic`: after Switchboard over WebSocket, the same over native QUIC on a fresh daemon
    /// (the ping and steady-state checks, and `--exchange`), side by side.
    #[arg(long, default_value = "ws", value_parser = ["ws", "quic"])]
    pub transport: String,
}

#[derive(clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    addr: String,
    /// The development secret (hex), to mint each user's token.
    #[arg(long)]
    secret: String,
    #[arg(long)]
    first: usize,
    #[arg(long)]
    count: usize,
    /// The source address to connect from.
    #[arg(long)]
    source: std::net::Ipv4Addr,
    /// Speak NATS (the peer) instead of Switchboard.
    #[arg(long)]
    nats: bool,
    /// Speak Switchboard over QUIC to `--addr` (its QUIC address), trusting the certificate
    /// with this SHA-256 (hex).
    #[arg(long)]
    quic_hash: Option<String>,
}

/// Reads until a message holds `needle` (NATS answers in binary frames, Switchboard in text).
fn read_until(ws: &mut WebSocket<TcpStream>, needle: &[u8]) -> anyhow::Result<()> {
    loop {
        let m = ws.read()?;
        let data: &[u8] = match &m {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
            _ => continue,
        };
        if data.windows(needle.len()).any(|w| w == needle) {
            return Ok(());
        }
    }
}

/// Kernel memory that sockets use, host-wide: the slab caches (socket structs, files,
/// dentries, epoll and io_uring items; `/proc/meminfo` `Slab`) plus the pages holding socket
/// buffers (`/proc/net/sockstat` TCP `mem`). Both ends of every loopback connection count.
fn kernel_socket_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let slab_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let pages = sockstat
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "mem").nth(1))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    slab_kib * 1024 + pages * 4096
}

/// A TCP connection to `addr` from the source address `source` (any of 127.0.0.0/8).
pub(crate) fn connect_from(source: std::net::Ipv4Addr, addr: &str) -> anyhow::Result<TcpStream> {
    connect_from_with(source, addr, None)
}

/// [`connect_from`] with the socket's receive buffer set to `recv_buffer` bytes before the
/// connect (so the window it offers is that small from the start).
pub(crate) fn connect_from_with(
    source: std::net::Ipv4Addr,
    addr: &str,
    recv_buffer: Option<usize>,
) -> anyhow::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let to: SocketAddr = addr.parse()?;
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    if let Some(bytes) = recv_buffer {
        s.set_recv_buffer_size(bytes)?;
    }
    // Pick the port at connect (by the whole 4-tuple), not at bind: binding port 0 searches
    // for a port unused by any connection from this address, which gets slow and runs out.
    {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // Safety: a valid socket and a c_int option value of the right size.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    s.bind(&SocketAddr::from((source, 0)).into())?;
    s.connect(&to.into())?;
    Ok(s.into())
}

/// Connections a worker opens at once.
const OPENING_AT_ONCE: usize = 512;

/// The worker: opens its connections (many at once, on monoio), says `ready`, then answers
/// `ping` (check every connection), `exchange` (every connection sends its partner, the
/// connection next to it, a message and must see both the `ack` and the partner's `msg`) and
/// `exit` on stdin.
pub fn worker(a: WorkerArgs) -> anyhow::Result<()> {
    if a.nats {
        return nats_worker(a);
    }
    if let Some(hash) = &a.quic_hash {
        let hash = switchboard_edge::quic::client::parse_sha256(hash).context("--quic-hash")?;
        let target = crate::quicclient::QuicTarget { addr: a.addr.parse()?, addr_text: a.addr.clone(), hash };
        return crate::quicclient::density_worker(target, &a.secret, a.first, a.count, a.source);
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build()?;
    rt.block_on(switchboard_worker(a))
}

type Conn = (crate::wsclient::Reader, crate::wsclient::Writer);

/// Runs `f` on every connection, `OPENING_AT_ONCE` at a time; how many succeeded.
async fn on_all<C: 'static, F, Fut>(conns: Vec<C>, f: F) -> (Vec<C>, usize)
where
    F: Fn(usize, C) -> Fut,
    Fut: std::future::Future<Output = (C, bool)> + 'static,
{
    let mut out = Vec::with_capacity(conns.len());
    let mut ok = 0;
    let mut it = conns.into_iter().enumerate().peekable();
    while it.peek().is_some() {
        let handles: Vec<_> = it.by_ref().take(OPENING_AT_ONCE).map(|(i, c)| monoio::spawn(f(i, c))).collect();
        for h in handles {
            let (c, good) = h.await;
            ok += good as usize;
            out.push(c);
        }
    }
    (out, ok)
}

/// Opens the worker's connections from its source address, `OPENING_AT_ONCE` at a time: each
/// is connected, then handed to `handshake` (connection number, stream) for its protocol's
/// opening.
async fn open_all<C: 'static, Fut>(
    a: &WorkerArgs,
    handshake: impl Fn(usize, monoio::net::TcpStream) -> anyhow::Result<Fut>,
) -> anyhow::Result<Vec<C>>
where
    Fut: std::future::Future<Output = std::io::Result<C>> + 'static,
{
    let mut conns = Vec::with_capacity(a.count);
    let mut next = a.first;
    while next < a.first + a.count {
        let batch = OPENING_AT_ONCE.min(a.first + a.count - next);
        let mut handles = Vec::with_capacity(batch);
        for i in next..next + batch {
            let stream = connect_from(a.source, &a.addr).with_context(|| format!("connection {i}"))?;
            stream.set_nonblocking(true)?;
            handles.push(monoio::spawn(handshake(i, monoio::net::TcpStream::from_std(stream)?)?));
        }
        for (k, h) in handles.into_iter().enumerate() {
            conns.push(h.await.with_context(|| format!("connection {}", next + k))?);
        }
        next += batch;
    }
    Ok(conns)
}

async fn switchboard_worker(a: WorkerArgs) -> anyhow::Result<()> {
    use crate::wsclient::contains;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let addr: SocketAddr = a.addr.parse()?;
    let mut conns: Vec<Conn> = open_all(&a, |i, stream| {
        let user = UserId::new(&format!("d{i}"))?;
        let token = switchboard_edge::auth::mint_hs256(a.secret.as_bytes(), &user, now, 3600, false);
        Ok(async move { crate::wsclient::session_on(stream, addr, &token).await })
    })
    .await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", conns.len())?;
    out.flush()?;
    let first = a.first;
    for line in std::io::stdin().lock().lines() {
        match line?.trim() {
            "ping" => {
                let (c, alive) = on_all(conns, |_, (mut r, mut w)| async move {
                    let mut good = w.send_text(br#"{"t":"ping"}"#).await.is_ok();
                    good = good && matches!(r.next().await, Ok(Some(p)) if contains(&p, b"\"pong\""));
                    ((r, w), good)
                })
                .await;
                conns = c;
                writeln!(out, "alive {alive}")?;
            }
            "exchange" => {
                let (c, done) = on_all(conns, |k, (mut r, mut w)| async move {
                    let (me, partner) = (first + k, (first + k) ^ 1);
                    let send = format!(r#"{{"t":"send","to":"d{partner}","id":"x{me}","body":"from d{me}"}}"#);
                    let mut good = w.send_text(send.as_bytes()).await.is_ok();
                    let (mut acked, mut got) = (false, false);
                    let from = format!("from d{partner}");
                    while good && !(acked && got) {
                        match r.next().await {
                            Ok(Some(p)) if contains(&p, b"\"ack\"") => acked = true,
                            Ok(Some(p)) if contains(&p, b"\"msg\"") => got |= contains(&p, from.as_bytes()),
                            Ok(Some(_)) => {}
                            _ => good = false,
                        }
                    }
                    ((r, w), good)
                })
                .await;
                conns = c;
                writeln!(out, "exchanged {done}")?;
            }
            command if command.starts_with("open ") => {
                let conv = command["open ".len()..].to_string();
                let (c, sent) = on_all(conns, |_, (r, mut w)| {
                    let open = format!(r#"{{"t":"open","conv":"{conv}"}}"#);
                    async move {
                        let good = w.send_text(open.as_bytes()).await.is_ok();
                        ((r, w), good)
                    }
                })
                .await;
                conns = c;
                writeln!(out, "opened {sent}")?;
            }
            command if command.starts_with("listen ") => {
                let n: usize = command["listen ".len()..].parse()?;
                let (c, lines) = listen(conns, n).await;
                conns = c;
                writeln!(out, "heard {lines}")?;
            }
            command if command.starts_with("idle ") => {
                let ms: u64 = command["idle ".len()..].parse()?;
                let (c, answered, fewest) = idle(conns, Duration::from_millis(ms)).await;
                conns = c;
                writeln!(out, "idled {answered} {fewest}")?;
            }
            command if command.starts_with("churn ") => {
                let n: usize = command["churn ".len()..].parse()?;
                let done = churn(&a, addr, now, n).await?;
                writeln!(out, "churned {done}")?;
            }
            _ => break,
        }
        out.flush()?;
    }
    Ok(())
}

/// Every connection at once reads for `length`, answering each server ping with a pong, as
/// an idle client that stays does. Returns the connections, how many stayed open answering,
/// and the fewest pings any of those got.
async fn idle(conns: Vec<Conn>, length: Duration) -> (Vec<Conn>, usize, usize) {
    let until = Instant::now() + length;
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|(mut r, mut w)| {
            monoio::spawn(async move {
                let (mut pings, mut good) = (0usize, true);
                while good {
                    let left = until.saturating_duration_since(Instant::now());
                    match monoio::time::timeout(left, r.next_frame()).await {
                        Err(_) => break,
                        Ok(Ok(Some((0x9, payload)))) => {
                            pings += 1;
                            good = w.send_pong(&payload).await.is_ok();
                        }
                        Ok(Ok(Some(_))) => {}
                        Ok(_) => good = false,
                    }
                }
                ((r, w), good.then_some(pings))
            })
        })
        .collect();
    let (mut out, mut answered, mut fewest) = (Vec::with_capacity(tasks.len()), 0, usize::MAX);
    for t in tasks {
        let (c, pings) = t.await;
        if let Some(p) = pings {
            answered += 1;
            fewest = fewest.min(p);
        }
        out.push(c);
    }
    (out, answered, if answered == 0 { 0 } else { fewest })
}

/// Microseconds since the epoch: the clock the sender stamps channel messages with.
fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Every connection reads until it has `n` channel messages stamped by the sender (or 60 s
/// pass); all at once, so that none reads late. Answers, per message stamp, the latest
/// arrival among this worker's connections: `stamp:latency_us,…` after the count heard.
async fn listen(conns: Vec<Conn>, n: usize) -> (Vec<Conn>, String) {
    use std::cell::RefCell;
    use std::rc::Rc;
    let latest: Rc<RefCell<std::collections::BTreeMap<u64, u64>>> = Rc::default();
    let heard = Rc::new(std::cell::Cell::new(0usize));
    let handles: Vec<_> = conns
        .into_iter()
        .map(|(mut r, w)| {
            let (latest, heard) = (latest.clone(), heard.clone());
            monoio::spawn(async move {
                let mut got = 0;
                while got < n {
                    let next = monoio::time::timeout(Duration::from_secs(60), r.next()).await;
                    let Ok(Ok(Some(p))) = next else { break };
                    let at = now_us();
                    let Some(stamp) = crate::wsclient::number_after(&p, b"\"bench_us\":") else { continue };
                    got += 1;
                    heard.set(heard.get() + 1);
                    let mut l = latest.borrow_mut();
                    let e = l.entry(stamp).or_default();
                    *e = (*e).max(at.saturating_sub(stamp));
                }
                (r, w)
            })
        })
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await);
    }
    let list: Vec<String> = latest.borrow().iter().map(|(s, l)| format!("{s}:{l}")).collect();
    (out, format!("{} {}", heard.get(), list.join(",")))
}

/// Opens and closes `n` connections of fresh users, `OPENING_AT_ONCE` at a time: upgrade,
/// `hello`, `welcome`, then a close frame (and the server's close back) for even ones and a
/// reset (linger 0) for odd ones. Returns how many got their `welcome`.
async fn churn(a: &WorkerArgs, addr: SocketAddr, now: u64, n: usize) -> anyhow::Result<usize> {
    let mut done = 0;
    let mut next = 0;
    while next < n {
        let batch = OPENING_AT_ONCE.min(n - next);
        let mut handles = Vec::with_capacity(batch);
        for j in next..next + batch {
            let stream = connect_from(a.source, &a.addr)?;
            if j % 2 == 1 {
                socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
            }
            stream.set_nonblocking(true)?;
            let stream = monoio::net::TcpStream::from_std(stream)?;
            let user = UserId::new(&format!("c{}-{j}", a.first))?;
            let token = switchboard_edge::auth::mint_hs256(a.secret.as_bytes(), &user, now, 3600, false);
            handles.push(monoio::spawn(async move {
                let Ok((mut r, mut w)) = crate::wsclient::session_on(stream, addr, &token).await else { return false };
                if j % 2 == 0 && w.send_close().await.is_ok() {
                    // The server's close frame, then the end of the stream.
                    while let Ok(Some(_)) = r.next().await {}
                }
                true
            }));
        }
        for h in handles {
            done += h.await as usize;
        }
        next += batch;
    }
    Ok(done)
}

/// The NATS worker: the same monoio client and the same 512 connections at a time as
/// Switchboard's, so that the connect rates compare; `CONNECT`, then `PING` → `PONG`.
fn nats_worker(a: WorkerArgs) -> anyhow::Result<()> {
    type NatsConn = (crate::nats::client::Messages, crate::wsclient::Writer);
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build()?;
    rt.block_on(async move {
        let addr: SocketAddr = a.addr.parse()?;
        let mut conns: Vec<NatsConn> =
            open_all(&a, |_, stream| Ok(crate::nats::client::connect_on(stream, addr, None))).await?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {}", conns.len())?;
        out.flush()?;
        for line in std::io::stdin().lock().lines() {
            if line?.trim() != "ping" {
                break;
            }
            let (c, alive) = on_all(conns, |_, (mut m, mut w): NatsConn| async move {
                let good = m.ping(&mut w).await.is_ok();
                ((m, w), good)
            })
            .await;
            conns = c;
            writeln!(out, "alive {alive}")?;
            out.flush()?;
        }
        Ok(())
    })
}

/// What the churn check counts on the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    /// Sockets in its rings (`switchboard_sockets`).
    sockets: i64,
    /// Entries of its descriptor table.
    fds: usize,
}

/// One server measured: where to connect, how to read its usage, and how to speak to it.
struct Target<'a> {
    name: &'static str,
    /// Where workers connect, worker i to `addrs[i % len]`.
    addrs: Vec<String>,
    usage: &'a dyn Fn() -> (f64, u64),
    /// Switchboard only: what it holds now.
    held: Option<&'a dyn Fn() -> anyhow::Result<Held>>,
    /// Switchboard only: the daemon, for the channel check.
    daemon: Option<&'a Daemon>,
    /// (connections it holds, its RSS), sampled while the connections open.
    sample: &'a (dyn Fn() -> (usize, u64) + Sync),
    /// Switchboard's development secret; `None` for NATS.
    secret: Option<String>,
    /// Over QUIC: the hash of the certificate to trust (`addrs` are QUIC addresses).
    quic_hash: Option<String>,
}

/// What one target measured.
struct Row {
    name: &'static str,
    alive: usize,
    connect_per_s: f64,
    rss: (u64, u64),
    rss_per: f64,
    kernel_per: f64,
    cpu_s: f64,
    /// Descriptors the server held with every connection open.
    fds: Option<usize>,
    exchanged: Option<usize>,
    /// Cycles done, and what the server held before and after them.
    churn: Option<(usize, Held, Held)>,
    channel: Option<Channel>,
    /// (connections, server RSS in MiB) while the connections opened.
    memory: Vec<(f64, f64)>,
    steady: Option<Steady>,
}

/// The server after its connections answered its pings for some heartbeat rounds.
struct Steady {
    /// Connections that stayed open, answering.
    answered: usize,
    /// The fewest pings any of them got.
    rounds: usize,
    rss: u64,
    rss_per: f64,
}

/// The channel check: every connection's user a member with the channel open.
struct Channel {
    messages: usize,
    /// Deliveries counted by the workers (messages × members when nothing is missing).
    heard: usize,
    /// Per message, the latency to the last member to get it.
    last_us: Vec<u64>,
    server_cpu_s: f64,
}

fn channel(
    t: &Target<'_>,
    d: &Daemon,
    connections: usize,
    checks: &Checks,
    workers: &mut [std::process::Child],
    lines: &mut [BufReader<std::process::ChildStdout>],
) -> anyhow::Result<Channel> {
    let messages = checks.channel_messages;
    let members: Vec<String> = (0..connections).map(|i| format!("d{i}")).collect();
    let conv = crate::fanout::create(d, "channel", "announcer", &members)?;
    let opened = ask(workers, lines, |_| format!("open {conv}"), "opened")?;
    if opened != connections {
        bail!("{} of {connections} connections could not send open", connections - opened);
    }
    // The opens go through the sequencer's membership check; let them land.
    std::thread::sleep(Duration::from_secs(3));
    for w in workers.iter_mut() {
        writeln!(w.stdin.as_mut().expect("piped"), "listen {messages}")?;
    }
    let (cpu0, _) = (t.usage)();
    let mut sender = d.client("announcer")?;
    for k in 0..messages {
        let send = json!({"t":"send","conv":conv,"id":format!("b{k}"),"body":{"bench_us": now_us()}});
        sender.send(Message::text(send.to_string()))?;
        read_until(&mut sender, b"\"ack\"")?;
        std::thread::sleep(checks.channel_interval);
    }
    let mut heard = 0;
    let mut last: std::collections::BTreeMap<u64, u64> = Default::default();
    for r in lines.iter_mut() {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let mut parts = line.trim().strip_prefix("heard ").unwrap_or("").split(' ');
        heard += parts.next().and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
        for pair in parts.next().unwrap_or("").split(',').filter(|p| !p.is_empty()) {
            if let Some((stamp, lat)) = pair.split_once(':') {
                let (stamp, lat): (u64, u64) = (stamp.parse()?, lat.parse()?);
                let e = last.entry(stamp).or_default();
                *e = (*e).max(lat);
            }
        }
    }
    let (cpu1, _) = (t.usage)();
    let mut last_us: Vec<u64> = last.into_values().collect();
    last_us.sort_unstable();
    Ok(Channel { messages, heard, last_us, server_cpu_s: cpu1 - cpu0 })
}

/// The `q` quantile of sorted values.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    sorted.get(((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0)
}

/// Sends `command` to every worker and sums the number after `answer` in their replies.
fn ask(
    workers: &mut [std::process::Child],
    lines: &mut [BufReader<std::process::ChildStdout>],
    command: impl Fn(usize) -> String,
    answer: &str,
) -> anyhow::Result<usize> {
    let answers = ask_lines(workers, lines, command)?;
    Ok(answers.iter().map(|l| l.strip_prefix(answer).and_then(|n| n.trim().parse::<usize>().ok()).unwrap_or(0)).sum())
}

/// Sends every worker its command, and returns each one's answer line.
fn ask_lines(
    workers: &mut [std::process::Child],
    lines: &mut [BufReader<std::process::ChildStdout>],
    command: impl Fn(usize) -> String,
) -> anyhow::Result<Vec<String>> {
    for (i, w) in workers.iter_mut().enumerate() {
        writeln!(w.stdin.as_mut().expect("piped"), "{}", command(i))?;
    }
    let mut answers = Vec::new();
    for r in lines.iter_mut() {
        let mut line = String::new();
        r.read_line(&mut line)?;
        answers.push(line.trim().to_string());
    }
    Ok(answers)
}

/// What a daemon holds now: its sockets (from `/metrics`) and descriptors.
fn held_by(d: &Daemon) -> anyhow::Result<Held> {
    let (_, metrics) = d.http_text("/metrics")?;
    let sockets = metrics
        .lines()
        .filter(|l| l.starts_with("switchboard_sockets{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
        .sum::<i64>();
    let fds = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))?.count();
    // The scrape's own connection is still held while it is counted.
    Ok(Held { sockets: sockets - 1, fds })
}

/// The open-files limit of process `pid`.
fn files_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or("");
    line.split_whitespace().nth(3).and_then(|n| n.parse().ok()).unwrap_or(0)
}

struct Checks {
    /// Heartbeat rounds to wait for the steady state, and the server's heartbeat.
    heartbeats: u32,
    heartbeat_ms: u64,
    exchange: bool,
    churn: usize,
    channel_messages: usize,
    channel_interval: Duration,
}

fn measure(t: &Target<'_>, connections: usize, per_worker: usize, checks: &Checks) -> anyhow::Result<Row> {
    std::thread::sleep(Duration::from_millis(300));
    let (cpu0, rss0) = (t.usage)();
    let kernel0 = kernel_socket_bytes();
    let exe = std::env::current_exe()?;
    let start = Instant::now();
    let mut workers = Vec::new();
    let mut first = 0;
    while first < connections {
        let count = per_worker.min(connections - first);
        // A source address per worker: its ports never run short, even beside the TIME_WAIT
        // connections of an earlier run.
        let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + (workers.len() % 250) as u8);
        let mut cmd = Command::new(&exe);
        let addr = &t.addrs[workers.len() % t.addrs.len()];
        cmd.args(["density-worker", "--addr", addr, "--secret", t.secret.as_deref().unwrap_or("")]).args([
            "--first",
            &first.to_string(),
            "--count",
            &count.to_string(),
            "--source",
            &source.to_string(),
        ]);
        if t.secret.is_none() {
            cmd.arg("--nats");
        }
        if let Some(hash) = &t.quic_hash {
            cmd.args(["--quic-hash", hash]);
        }
        workers.push(cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?);
        first += count;
    }
    let mut lines = Vec::new();
    let opening = std::sync::atomic::AtomicBool::new(true);
    let memory = std::thread::scope(|scope| -> anyhow::Result<Vec<(f64, f64)>> {
        let sampler = scope.spawn(|| {
            let mut points = Vec::new();
            while opening.load(std::sync::atomic::Ordering::Relaxed) {
                let (n, rss) = (t.sample)();
                points.push((n as f64, rss as f64 / 1048576.0));
                std::thread::sleep(Duration::from_millis(250));
            }
            points
        });
        let bar = crate::chart::Progress::new(format!("{} workers ready", t.name), workers.len());
        let ready = workers.iter_mut().enumerate().try_for_each(|(i, w)| {
            let mut r = BufReader::new(w.stdout.take().expect("piped"));
            let mut line = String::new();
            r.read_line(&mut line)?;
            if !line.starts_with("ready") {
                bail!("a {} worker failed to connect: {line:?}", t.name);
            }
            lines.push(r);
            bar.set(i + 1);
            Ok(())
        });
        bar.finish();
        opening.store(false, std::sync::atomic::Ordering::Relaxed);
        let mut points = sampler.join().expect("sampler");
        points.push({
            let (n, rss) = (t.sample)();
            (n as f64, rss as f64 / 1048576.0)
        });
        ready.map(|()| points)
    })?;
    let connect_s = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let (cpu1, rss1) = (t.usage)();
    let kernel1 = kernel_socket_bytes();
    let fds = t.held.map(|held| held().map(|h| h.fds)).transpose()?;
    let mut steady = None;
    if t.held.is_some() && checks.heartbeats > 0 {
        let ms = u64::from(checks.heartbeats) * checks.heartbeat_ms + checks.heartbeat_ms / 2;
        let answers = ask_lines(&mut workers, &mut lines, |_| format!("idle {ms}"))?;
        let (mut answered, mut rounds) = (0, usize::MAX);
        for line in answers {
            let mut words = line.split_whitespace().skip(1).map(|w| w.parse::<usize>().unwrap_or(0));
            answered += words.next().unwrap_or(0);
            rounds = rounds.min(words.next().unwrap_or(0));
        }
        let (_, rss) = (t.usage)();
        steady = Some(Steady { answered, rounds, rss, rss_per: rss.saturating_sub(rss0) as f64 / connections as f64 });
    }
    let alive = ask(&mut workers, &mut lines, |_| "ping".into(), "alive")?;
    let mut exchanged = None;
    let mut churn = None;
    if let Some(held) = t.held {
        if checks.exchange {
            exchanged = Some(ask(&mut workers, &mut lines, |_| "exchange".into(), "exchanged")?);
        }
        if checks.churn > 0 {
            let before = held()?;
            let n = workers.len();
            let share = |i: usize| checks.churn / n + usize::from(i < checks.churn % n);
            let done = ask(&mut workers, &mut lines, |i| format!("churn {}", share(i)), "churned")?;
            // The last closes finish on the server a moment after the clients see them.
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut after = held()?;
            while after != before && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
                after = held()?;
            }
            churn = Some((done, before, after));
        }
    }
    let mut channel_row = None;
    if let (Some(d), true) = (t.daemon, checks.channel_messages > 0) {
        channel_row = Some(channel(t, d, connections, checks, &mut workers, &mut lines)?);
    }
    for w in &mut workers {
        let _ = writeln!(w.stdin.as_mut().expect("piped"), "exit");
        let _ = w.wait();
    }
    Ok(Row {
        name: t.name,
        alive,
        connect_per_s: connections as f64 / connect_s,
        rss: (rss0, rss1),
        rss_per: rss1.saturating_sub(rss0) as f64 / connections as f64,
        kernel_per: kernel1.saturating_sub(kernel0) as f64 / connections as f64,
        cpu_s: cpu1 - cpu0,
        fds,
        exchanged,
        churn,
        channel: channel_row,
        memory,
        steady,
    })
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let connections = if a.smoke { 200 } else { a.connections };
    let per_worker = if a.smoke { 100 } else { a.per_worker };
    let host = Host::read();
    let heartbeat_ms = if a.smoke { 1_000 } else { a.heartbeat_ms };
    let checks = Checks {
        heartbeats: if a.smoke { a.heartbeats.min(1) } else { a.heartbeats },
        heartbeat_ms,
        exchange: a.exchange,
        churn: if a.smoke { a.churn.min(1000) } else { a.churn },
        channel_messages: a.channel_messages,
        channel_interval: Duration::from_millis(a.channel_interval_ms),
    };
    println!(
        "switchboard-bench density: {connections} authenticated idle connections, {per_worker} per worker process, {} server shard(s){}",
        a.server.shards,
        if a.peer.is_some() { ", NATS beside" } else { "" }
    );
    println!("host: {}", host.line());
    let mut rows = Vec::new();
    let mut server = a.server.clone();
    server.sets.push(format!("heartbeat_ms={heartbeat_ms}"));
    // Switchboard's open-files limit, beside the descriptors it held (set below).
    let files;
    if a.cluster > 0 {
        let c = crate::cluster::Cluster::start(&server, a.cluster, 0)?;
        let usage = || c.usage();
        let held = || -> anyhow::Result<Held> {
            let mut all = Held { sockets: 0, fds: 0 };
            for d in &c.nodes {
                let h = held_by(d)?;
                all.sockets += h.sockets;
                all.fds += h.fds;
            }
            Ok(all)
        };
        let sample = || (held().map(|h| h.sockets.max(0) as usize).unwrap_or(0), c.usage().1);
        let t = Target {
            name: "switchboard, all nodes",
            addrs: c.nodes.iter().map(|d| d.addr.clone()).collect(),
            usage: &usage,
            sample: &sample,
            held: Some(&held),
            daemon: None,
            secret: Some(c.secret().to_string()),
            quic_hash: None,
        };
        files = files_limit(c.nodes[0].pid());
        rows.push(measure(&t, connections, per_worker, &checks)?);
    } else {
        let d = Daemon::start(&server)?;
        let warm = d.client("warm")?;
        let usage = || d.usage();
        let held = || held_by(&d);
        let sample = || {
            let held = held().map(|h| h.sockets.max(0) as usize).unwrap_or(0);
            (held, d.usage().1)
        };
        let t = Target {
            name: "switchboard",
            addrs: vec![d.addr.clone()],
            usage: &usage,
            sample: &sample,
            held: Some(&held),
            daemon: Some(&d),
            secret: Some(d.secret()?),
            quic_hash: None,
        };
        files = files_limit(d.pid());
        rows.push(measure(&t, connections, per_worker, &checks)?);
        drop(warm);
    }
    if a.transport == "quic" {
        if a.cluster > 0 {
            bail!("--transport quic measures one node (leave out --cluster)");
        }
        let d = Daemon::start(&server)?;
        let warm = d.client("warm")?;
        let quic = crate::quicclient::QuicTarget::of(&d)?;
        let usage = || d.usage();
        let held = || held_by(&d);
        let sample = || (held().map(|h| h.sockets.max(0) as usize).unwrap_or(0), d.usage().1);
        let t = Target {
            name: "switchboard over QUIC",
            addrs: vec![quic.addr.to_string()],
            usage: &usage,
            sample: &sample,
            held: Some(&held),
            daemon: None,
            secret: Some(d.secret()?),
            quic_hash: Some(switchboard_edge::quic::hex(&quic.hash)),
        };
        // The churn and channel checks are WebSocket's.
        let quic_checks = Checks { churn: 0, channel_messages: 0, ..checks };
        rows.push(measure(&t, connections, per_worker, &quic_checks)?);
        drop(warm);
    }
    if a.peer.is_some() {
        let n = Nats::start()?;
        let usage = || n.usage();
        // NATS holds a descriptor per connection: count them (less the ones it started with).
        let fds0 = std::fs::read_dir(format!("/proc/{}/fd", n.pid()))?.count();
        let sample = || {
            let fds = std::fs::read_dir(format!("/proc/{}/fd", n.pid())).map(|d| d.count()).unwrap_or(0);
            (fds.saturating_sub(fds0), n.usage().1)
        };
        let t = Target {
            sample: &sample,
            name: "nats-server (WebSocket, not durable)",
            addrs: vec![n.ws_addr.clone()],
            usage: &usage,
            held: None,
            daemon: None,
            secret: None,
            quic_hash: None,
        };
        rows.push(measure(&t, connections, per_worker, &checks)?);
    }
    println!("| server | connections | alive (ping → pong) | connects/s | server RSS before → after | user-space per conn | kernel per conn (both ends) | server CPU-s |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {connections} | {} | {:.0} | {:.1} → {:.1} MiB | {:.0} B | {:.0} B | {:.2} |",
            r.name,
            r.alive,
            r.connect_per_s,
            r.rss.0 as f64 / 1048576.0,
            r.rss.1 as f64 / 1048576.0,
            r.rss_per,
            r.kernel_per,
            r.cpu_s
        );
    }
    let s = &rows[0];
    let quic_row = rows.iter().find(|r| r.name == "switchboard over QUIC");
    if let Some(p) = rows.iter().find(|r| r.name.starts_with("nats")) {
        println!(
            "switchboard / nats: connects/s {:.2}x, user-space per connection {:.2}x",
            s.connect_per_s / p.connect_per_s,
            s.rss_per / p.rss_per.max(1.0)
        );
    }
    if let Some(q) = quic_row {
        println!(
            "QUIC / WebSocket: connects/s {:.2}x, user-space per connection {:.2}x (steady state {:.2}x)",
            q.connect_per_s / s.connect_per_s,
            q.rss_per / s.rss_per.max(1.0),
            q.steady.as_ref().map_or(0.0, |q| q.rss_per) / s.steady.as_ref().map_or(1.0, |s| s.rss_per.max(1.0))
        );
    }
    for r in rows.iter().filter(|r| r.steady.is_some()) {
        let st = r.steady.as_ref().expect("filtered");
        println!(
            "steady state, {}: {} of {connections} connections answered at least {} heartbeat round(s) of {} ms; server RSS {:.1} MiB, {:.0} B per connection (just connected: {:.0} B)",
            r.name,
            st.answered,
            st.rounds,
            checks.heartbeat_ms,
            st.rss as f64 / 1048576.0,
            st.rss_per,
            r.rss_per
        );
    }
    if let Some(n) = quic_row.and_then(|q| q.exchanged) {
        println!("exchange over QUIC: {n} of {connections} connections sent their partner a message and got the ack and the partner's");
    }
    if let Some(n) = s.fds {
        println!("switchboard held {connections} connections with {n} descriptors open (open-files limit {files})");
    }
    if let Some(n) = s.exchanged {
        println!(
            "exchange: {n} of {connections} connections sent their partner a message and got the ack and the partner's"
        );
    }
    if let Some((done, before, after)) = s.churn {
        println!(
            "churn: {done} connections opened and closed; server sockets {} → {}, descriptors {} → {}",
            before.sockets, after.sockets, before.fds, after.fds
        );
    }
    if let Some(c) = &s.channel {
        let (p50, p99, max) = (quantile(&c.last_us, 0.5), quantile(&c.last_us, 0.99), quantile(&c.last_us, 1.0));
        println!(
            "channel of {connections} open members: {} messages, {} of {} deliveries; last member p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {:.0} deliveries per server CPU-s",
            c.messages,
            c.heard,
            c.messages * connections,
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0,
            max as f64 / 1000.0,
            c.heard as f64 / c.server_cpu_s.max(1e-9)
        );
    }
    for r in &rows {
        if r.alive != connections {
            bail!("{}: {} of {connections} connections did not answer", r.name, connections - r.alive);
        }
        if let Some(st) = r.steady.as_ref().filter(|st| st.answered != connections || st.rounds == 0) {
            bail!(
                "{}: in the steady state {} of {connections} connections answered, the fewest pings was {}",
                r.name,
                st.answered,
                st.rounds
            );
        }
    }
    if let Some(dir) = &a.server.chart {
        let series: Vec<crate::chart::Series> =
            rows.iter().map(|r| crate::chart::Series { name: r.name.to_string(), points: r.memory.clone() }).collect();
        let title = format!("server memory while {connections} connections open (upgrade + hello)");
        crate::chart::lines(dir, "density-memory.svg", &title, ("connections held", "server RSS (MiB)"), &series)?;
    }
    if a.server.json {
        let fields = |r: &Row| {
            json!({
                "connections": connections,
                "alive": r.alive,
                "connect_per_s": r.connect_per_s,
                "server_rss_bytes_per_conn": r.rss_per,
                "kernel_bytes_per_conn": r.kernel_per,
            })
        };
        let mut out = fields(&rows[0]);
        out["scenario"] = json!("density");
        if let Some(n) = s.fds {
            out["server_fds"] = json!(n);
            out["server_files_limit"] = json!(files);
        }
        if let Some(n) = s.exchanged {
            out["exchanged"] = json!(n);
        }
        if let Some(st) = &s.steady {
            out["steady"] = json!({
                "heartbeat_ms": checks.heartbeat_ms,
                "rounds": st.rounds,
                "answered": st.answered,
                "server_rss_bytes_per_conn": st.rss_per,
            });
        }
        if let Some(c) = &s.channel {
            out["channel"] = json!({
                "members": connections,
                "messages": c.messages,
                "deliveries": c.heard,
                "expected_deliveries": c.messages * connections,
                "last_member_p50_ms": quantile(&c.last_us, 0.5) as f64 / 1000.0,
                "last_member_p99_ms": quantile(&c.last_us, 0.99) as f64 / 1000.0,
                "deliveries_per_server_cpu_s": c.heard as f64 / c.server_cpu_s.max(1e-9),
            });
        }
        if let Some((done, before, after)) = s.churn {
            out["churn"] = json!({
                "cycles": done,
                "sockets_before": before.sockets, "sockets_after": after.sockets,
                "fds_before": before.fds, "fds_after": after.fds,
            });
        }
        if let Some(p) = rows.iter().find(|r| r.name.starts_with("nats")) {
            out["peer"] = fields(p);
            out["peer"]["name"] = json!("nats");
        }
        if let Some(q) = quic_row {
            out["quic"] = fields(q);
            if let Some(st) = &q.steady {
                out["quic"]["steady_server_rss_bytes_per_conn"] = json!(st.rss_per);
            }
        }
        println!("{out}");
    }
    Ok(())
}
