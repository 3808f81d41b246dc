//! The load client over QUIC (`--transport quic`): the edge's own native QUIC client
//! (`switchboard_edge::quic::client`, quinn on a current-thread tokio runtime), trusting the
//! daemon's development certificate by the hash its `GET /dev/quic` serves. One endpoint (one
//! UDP socket) carries all of a thread's connections.
//!
//! For `one-to-one`: the same open-loop pairs as over WebSocket (`one_to_one::client_thread`),
//! a paced sender, an ack reader and a receiver per pair. For `density`: the worker's
//! commands (`ping`, `idle`, `exchange`) over QUIC connections.

use crate::daemon::Daemon;
use crate::gate::Gate;
use crate::wsclient::{contains, number_after};
use anyhow::{anyhow, Context};
use hdrhistogram::Histogram;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard_edge::quic::client::{parse_sha256, Client, Trust};
use switchboard_edge::ws::handshake::Encoding;

/// Frames this large at most come back (the daemon's default limit).
const FRAME_BYTES_MAX: usize = 64 * 1024;
/// Connections a worker opens at once.
const OPENING_AT_ONCE: usize = 128;

/// Where a daemon serves QUIC, and how to trust it.
#[derive(Clone, Debug)]
pub struct QuicTarget {
    pub addr: SocketAddr,
    /// `addr` as text, as the other servers' addresses are kept.
    pub addr_text: String,
    pub hash: [u8; 32],
}

impl QuicTarget {
    pub fn of(d: &Daemon) -> anyhow::Result<QuicTarget> {
        let (status, text) = d.http_text("/dev/quic")?;
        anyhow::ensure!(status == 200, "GET /dev/quic: {status} {text}");
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let addr_text = v["addr"].as_str().context("/dev/quic: addr")?.to_string();
        let hash = v["cert_sha256"].as_str().and_then(parse_sha256).context("/dev/quic: a development certificate")?;
        Ok(QuicTarget { addr: addr_text.parse()?, addr_text, hash })
    }

    fn trust(&self) -> Trust {
        Trust::Sha256(self.hash)
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// A connection that said hello as the token's user and got its welcome.
async fn session(endpoint: &quinn::Endpoint, target: &QuicTarget, token: &str) -> anyhow::Result<Client> {
    let mut c = Client::connect(endpoint, target.addr, &target.trust(), Encoding::Json, FRAME_BYTES_MAX)
        .await
        .map_err(|e| anyhow!(e))?;
    c.send(format!(r#"{{"t":"hello","token":"{token}"}}"#).as_bytes()).await.map_err(|e| anyhow!(e))?;
    let welcome = c.recv().await.map_err(|e| anyhow!("no welcome: {e:?}"))?;
    anyhow::ensure!(contains(&welcome, b"\"welcome\""), "no welcome: {}", String::from_utf8_lossy(&welcome));
    Ok(c)
}

/// One pair of `one-to-one`: the recipient, its sender's token, the receiver's token.
pub struct Pair {
    pub to: String,
    pub sender_token: String,
    pub receiver_token: String,
}

/// What a `one-to-one` client thread runs: its pairs on the schedule the ramp gives.
pub struct Schedule {
    pub n: u64,
    pub interval_us: f64,
    pub t0: Instant,
    pub start_us: u64,
    pub deadline: Instant,
    pub pad: String,
    pub connect_budget: Duration,
}

/// `one-to-one` over QUIC: as `one_to_one::client_thread`, on tokio.
pub fn one_to_one_thread(
    target: QuicTarget,
    pairs: Vec<Pair>,
    s: Schedule,
    ready: Arc<Gate>,
) -> anyhow::Result<Histogram<u64>> {
    let rt = runtime()?;
    rt.block_on(async move {
        let endpoint = switchboard_edge::quic::client::endpoint("127.0.0.1:0".parse()?)?;
        let connected = async {
            let mut out = Vec::new();
            for p in pairs {
                let receiver = session(&endpoint, &target, &p.receiver_token).await?;
                let sender = session(&endpoint, &target, &p.sender_token).await?;
                out.push((p.to, sender, receiver));
            }
            Ok::<_, anyhow::Error>(out)
        };
        let connected = match connected.await {
            Ok(c) => c,
            Err(e) => {
                ready.fail(&e);
                return Err(e);
            }
        };
        ready.arrive(s.connect_budget)?;
        let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?));
        let (mut senders, mut receivers) = (Vec::new(), Vec::new());
        for (p, (to, sender, receiver)) in connected.into_iter().enumerate() {
            let Client { connection: sender_connection, tx: mut w, rx: mut acks } = sender;
            let Client { connection: receiver_connection, tx: receiver_tx, rx: mut r } = receiver;
            let (pad, t0, n, interval_us) = (s.pad.clone(), s.t0, s.n, s.interval_us);
            // Pairs start spread over one interval, not all at once.
            let offset = s.start_us as f64 + interval_us * (p % 16) as f64 / 16.0;
            senders.push(tokio::spawn(async move {
                for i in 0..n {
                    let intended = (offset + interval_us * i as f64) as u64;
                    let due = t0 + Duration::from_micros(intended);
                    tokio::time::sleep_until(due.into()).await;
                    let frame =
                        format!(r#"{{"t":"send","to":"{to}","id":"{i}","body":{{"at":{intended},"pad":"{pad}"}}}}"#);
                    if w.send(frame.as_bytes()).await.is_err() {
                        break;
                    }
                }
                // Kept open until every receiver is done: its end would close the connection.
                (w, sender_connection)
            }));
            // The acks are read, so that the sender's queue on the server never fills.
            tokio::spawn(async move { while acks.recv().await.is_ok() {} });
            let (latency, deadline) = (latency.clone(), s.deadline);
            receivers.push(tokio::spawn(async move {
                let mut got = 0;
                let _ = tokio::time::timeout_at(deadline.into(), async {
                    while got < n {
                        let Ok(frame) = r.recv().await else { break };
                        if let Some(at) = number_after(&frame, b"\"at\":") {
                            let now = t0.elapsed().as_micros() as u64;
                            latency.lock().expect("unpoisoned").saturating_record(now.saturating_sub(at).max(1));
                            got += 1;
                        }
                    }
                })
                .await;
                drop((receiver_tx, receiver_connection));
            }));
        }
        for t in receivers {
            let _ = t.await;
        }
        for t in senders {
            let _ = t.await;
        }
        endpoint.close(0u32.into(), b"");
        let h = latency.lock().expect("unpoisoned").clone();
        Ok(h)
    })
}

/// The `density` worker over QUIC: connections `first..first + count` (users `d<i>`) from
/// `source`, all on one endpoint; then the commands of `density::worker` on stdin: `ping`,
/// `idle MS` (the server's heartbeat frames are counted: a QUIC client need not answer them)
/// and `exchange`. Stdin is read on a thread of its own, so that the runtime keeps
/// acknowledging the server's packets while the worker waits for a command.
pub fn density_worker(
    target: QuicTarget,
    secret: &str,
    first: usize,
    count: usize,
    source: std::net::Ipv4Addr,
) -> anyhow::Result<()> {
    let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let rt = runtime()?;
    rt.block_on(async move {
        let endpoint = switchboard_edge::quic::client::endpoint(SocketAddr::from((source, 0)))?;
        let mut conns = Vec::with_capacity(count);
        let mut next = first;
        while next < first + count {
            let batch = OPENING_AT_ONCE.min(first + count - next);
            let mut opening = Vec::with_capacity(batch);
            for i in next..next + batch {
                let user = switchboard_store::UserId::new(&format!("d{i}"))?;
                let token = switchboard_edge::auth::mint_hs256(secret.as_bytes(), &user, now, 3600, false);
                let (endpoint, target) = (endpoint.clone(), target.clone());
                opening.push(tokio::spawn(async move { session(&endpoint, &target, &token).await }));
            }
            for (k, o) in opening.into_iter().enumerate() {
                conns.push(o.await?.with_context(|| format!("connection {}", next + k))?);
            }
            next += batch;
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {}", conns.len())?;
        out.flush()?;
        drop(out);
        while let Some(line) = commands.recv().await {
            let answer = match line.trim() {
                "ping" => {
                    let (c, alive) = on_all(conns, |_, mut c| async move {
                        let mut good = c.send(br#"{"t":"ping"}"#).await.is_ok();
                        good = good && until(&mut c, |f| contains(f, b"\"pong\"")).await;
                        (c, good)
                    })
                    .await;
                    conns = c;
                    format!("alive {alive}")
                }
                "exchange" => {
                    let (c, done) = on_all(conns, |k, mut c| async move {
                        let (me, partner) = (first + k, (first + k) ^ 1);
                        let send = format!(r#"{{"t":"send","to":"d{partner}","id":"x{me}","body":"from d{me}"}}"#);
                        let from = format!("from d{partner}");
                        let (mut acked, mut got) = (false, false);
                        let mut good = c.send(send.as_bytes()).await.is_ok();
                        while good && !(acked && got) {
                            match c.recv().await {
                                Ok(f) if contains(&f, b"\"ack\"") => acked = true,
                                Ok(f) if contains(&f, b"\"msg\"") => got |= contains(&f, from.as_bytes()),
                                Ok(_) => {}
                                Err(_) => good = false,
                            }
                        }
                        (c, good)
                    })
                    .await;
                    conns = c;
                    format!("exchanged {done}")
                }
                command if command.starts_with("idle ") => {
                    let until_at = Instant::now() + Duration::from_millis(command["idle ".len()..].parse()?);
                    let (c, counts) = on_all_counted(conns, move |mut c| async move {
                        let (mut pings, mut good) = (0usize, true);
                        while good {
                            match tokio::time::timeout_at(until_at.into(), c.recv()).await {
                                Err(_) => break,
                                Ok(Ok(f)) => pings += usize::from(contains(&f, b"\"ping\"")),
                                Ok(Err(_)) => good = false,
                            }
                        }
                        (c, good.then_some(pings))
                    })
                    .await;
                    conns = c;
                    let answered: Vec<usize> = counts.into_iter().flatten().collect();
                    format!("idled {} {}", answered.len(), answered.iter().min().copied().unwrap_or(0))
                }
                _ => break,
            };
            let mut out = std::io::stdout().lock();
            writeln!(out, "{answer}")?;
            out.flush()?;
        }
        endpoint.close(0u32.into(), b"");
        Ok(())
    })
}

/// Reads frames until one satisfies `f` (true), or the connection ends (false).
async fn until(c: &mut Client, f: impl Fn(&[u8]) -> bool) -> bool {
    loop {
        match c.recv().await {
            Ok(frame) if f(&frame) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

/// Runs `f` on every connection at once; how many succeeded.
async fn on_all<F, Fut>(conns: Vec<Client>, f: F) -> (Vec<Client>, usize)
where
    F: Fn(usize, Client) -> Fut,
    Fut: std::future::Future<Output = (Client, bool)> + Send + 'static,
{
    let tasks: Vec<_> = conns.into_iter().enumerate().map(|(i, c)| tokio::spawn(f(i, c))).collect();
    let (mut out, mut ok) = (Vec::with_capacity(tasks.len()), 0);
    for t in tasks {
        let (c, good) = t.await.expect("a connection's task");
        ok += usize::from(good);
        out.push(c);
    }
    (out, ok)
}

/// Runs `f` on every connection at once, collecting what each counted.
async fn on_all_counted<F, Fut>(conns: Vec<Client>, f: F) -> (Vec<Client>, Vec<Option<usize>>)
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = (Client, Option<usize>)> + Send + 'static,
{
    let tasks: Vec<_> = conns.into_iter().map(|c| tokio::spawn(f(c))).collect();
    let (mut out, mut counts) = (Vec::with_capacity(tasks.len()), Vec::with_capacity(tasks.len()));
    for t in tasks {
        let (c, n) = t.await.expect("a connection's task");
        counts.push(n);
        out.push(c);
    }
    (out, counts)
}
