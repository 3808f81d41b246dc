//! `storm`: N connected clients lose their server at once (SIGKILL, then a restart on the same
//! data). Each reconnects with exponential backoff and full jitter (PROTOCOL.md §3: base
//! 250 ms, cap 30 s) and resyncs with `sync` from the last seq it saw. Measures the time until
//! every client is back (its resync done), and checks that every acknowledged message, sent
//! before the kill or while the clients were coming back, reached its client.
//!
//! With `--cluster N` the clients are spread over N nodes, the last of them edge-only, and
//! that one is killed for good: its clients reconnect to the next node, as a client does
//! from `welcome.nodes`. It also measures how long the others take to declare it down.

use crate::daemon::{Daemon, ServerArgs};
use crate::host::Host;
use crate::wsclient;
use anyhow::bail;
use serde_json::json;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub server: ServerArgs,
    #[arg(long, default_value_t = 5_000)]
    pub clients: usize,
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,
    #[arg(long)]
    pub smoke: bool,
    /// Spread the clients over a cluster of this many nodes (the last edge-only) and kill
    /// the edge-only one (0: one node, killed and restarted).
    #[arg(long, default_value_t = 0)]
    pub cluster: u16,
}

/// What the clients share with the harness.
struct Shared {
    /// Messages received, all clients together (the harness waits on it).
    received: AtomicU64,
    /// Connections made, all clients together.
    connected: AtomicU64,
    /// Set when the server is killed.
    killed_at: Mutex<Option<Instant>>,
}

/// One client's life: connect, read, and after each loss reconnect and resync from its last
/// seq. Returns (seqs received, time back after the kill).
async fn client(
    addrs: Vec<SocketAddr>,
    home: usize,
    token: String,
    conv: String,
    expected: usize,
    shared: Arc<Shared>,
    deadline: Instant,
) -> (BTreeSet<u64>, Option<Duration>) {
    let mut seen = BTreeSet::new();
    let mut back = None;
    let mut attempt = 0u32;
    let mut node = home;
    while Instant::now() < deadline && seen.len() < expected {
        let addr = addrs[node % addrs.len()];
        let Ok((mut r, mut w)) = wsclient::session(addr, &token).await else {
            // Another node next time, as from `welcome.nodes`.
            node += 1;
            // Full jitter: a random delay up to min(cap, base × 2^attempt).
            let cap = 250u64.saturating_mul(1 << attempt.min(7)).min(30_000);
            attempt += 1;
            monoio::time::sleep(Duration::from_millis(rand::random::<u64>() % cap.max(1))).await;
            continue;
        };
        attempt = 0;
        shared.connected.fetch_add(1, Ordering::Relaxed);
        // Every connection, the first included, starts with a resync from the last seq seen,
        // as a real client does.
        let last = seen.iter().next_back().copied().unwrap_or(0);
        let frame = format!(r#"{{"t":"sync","conv":"{conv}","after":{last}}}"#);
        if w.send_text(frame.as_bytes()).await.is_err() {
            continue;
        }
        let mut syncing = true;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Ok(Some(frame))) = monoio::time::timeout(left, r.next()).await else { break };
            if wsclient::contains(&frame, b"\"msg\"") {
                if let Some(seq) = wsclient::number_after(&frame, b"\"seq\":") {
                    if seen.insert(seq) {
                        shared.received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            } else if syncing && wsclient::contains(&frame, b"\"synced\"") {
                if wsclient::contains(&frame, b"\"more\":true") {
                    let upto = wsclient::number_after(&frame, b"\"upto\":").unwrap_or(0);
                    let again = format!(r#"{{"t":"sync","conv":"{conv}","after":{upto}}}"#);
                    if w.send_text(again.as_bytes()).await.is_err() {
                        break;
                    }
                } else {
                    syncing = false;
                    let killed = *shared.killed_at.lock().unwrap_or_else(|p| p.into_inner());
                    if let (None, Some(k)) = (back, killed) {
                        back = Some(k.elapsed());
                    }
                }
            }
            if seen.len() >= expected && !syncing {
                break;
            }
        }
    }
    (seen, back)
}

type ClientResult = (usize, BTreeSet<u64>, Option<Duration>);

fn client_thread(
    addrs: Vec<SocketAddr>,
    clients: Vec<(usize, String, String)>,
    expected: usize,
    shared: Arc<Shared>,
    deadline: Instant,
    ready: Arc<Barrier>,
) -> anyhow::Result<Vec<ClientResult>> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build()?;
    rt.block_on(async move {
        let out: Rc<RefCell<Vec<ClientResult>>> = Rc::default();
        let mut tasks = Vec::new();
        for (i, token, conv) in clients {
            let (shared, out, addrs) = (shared.clone(), out.clone(), addrs.clone());
            tasks.push(monoio::spawn(async move {
                let (seen, back) = client(addrs, i, token, conv, expected, shared, deadline).await;
                out.borrow_mut().push((i, seen, back));
            }));
        }
        ready.wait();
        for t in tasks {
            t.await;
        }
        let v = out.borrow_mut().drain(..).collect();
        Ok(v)
    })
}

/// Sends one message to every client's dm as user `w`; returns (client, seq) for each ack.
fn send_round(addr: SocketAddr, token: &str, clients: usize, round: usize) -> anyhow::Result<Vec<(usize, u64)>> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build()?;
    rt.block_on(async move {
        let (mut r, mut w) = wsclient::session(addr, token).await?;
        // Acks are read while the sends go out: the writer is a reader too, or its own
        // outbound queue fills with acks (4009).
        let reader = monoio::spawn(async move {
            let mut acked = Vec::with_capacity(clients);
            while acked.len() < clients {
                let Some(frame) = r.next().await? else {
                    bail!("round {round}: the writer's connection closed after {} acks", acked.len())
                };
                if !wsclient::contains(&frame, b"\"ack\"") {
                    bail!("expected ack, got {}", String::from_utf8_lossy(&frame));
                }
                let seq = wsclient::number_after(&frame, b"\"seq\":").unwrap_or(0);
                let text = String::from_utf8_lossy(&frame);
                let id = text.split("\"id\":\"").nth(1).and_then(|s| s.split('"').next());
                let client = id.and_then(|id| id.split('c').nth(1)).and_then(|n| n.parse().ok()).unwrap_or(usize::MAX);
                acked.push((client, seq));
            }
            anyhow::Ok(acked)
        });
        for i in 0..clients {
            let f = format!(r#"{{"t":"send","to":"c{i}","id":"r{round}c{i}","body":{{"round":{round}}}}}"#);
            w.send_text(f.as_bytes()).await?;
        }
        let acked = reader.await?;
        Ok(acked)
    })
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let clients = if a.smoke { 50 } else { a.clients };
    let host = Host::read();
    let what = if a.cluster > 0 {
        format!("spread over {} nodes, SIGKILL of the edge-only node {}", a.cluster, a.cluster)
    } else {
        "SIGKILL and restart of the server".to_string()
    };
    println!("switchboard-bench storm: {clients} clients, {what}; {} server shard(s) per node", a.server.shards);
    println!("host: {}", host.line());
    let mut target = if a.cluster > 0 {
        Target::Cluster(crate::cluster::Cluster::start(&a.server, a.cluster, 1)?)
    } else {
        Target::One(Daemon::start(&a.server)?)
    };
    let addrs: Vec<SocketAddr> = target.addrs().iter().map(|a| a.parse()).collect::<Result<_, _>>()?;
    let addr = addrs[0];
    let writer = target.token("w")?;
    // Two messages before the kill, one while the clients come back.
    let expected = 3;
    let shared =
        Arc::new(Shared { received: AtomicU64::new(0), connected: AtomicU64::new(0), killed_at: Mutex::new(None) });
    let deadline = Instant::now() + Duration::from_secs(120);
    let threads = a.client_threads.max(1);
    let mut shares: Vec<Vec<(usize, String, String)>> = vec![Vec::new(); threads];
    for i in 0..clients {
        let user = format!("c{i}");
        let conv = if user.as_str() < "w" { format!("dm:{user}:w") } else { format!("dm:w:{user}") };
        shares[i % threads].push((i, target.token(&user)?, conv));
    }
    let ready = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = shares
        .into_iter()
        .map(|c| {
            let (shared, ready, addrs) = (shared.clone(), ready.clone(), addrs.clone());
            std::thread::spawn(move || client_thread(addrs, c, expected, shared, deadline, ready))
        })
        .collect();
    ready.wait();
    let wait_until = Instant::now() + Duration::from_secs(60);
    while shared.connected.load(Ordering::Relaxed) < clients as u64 && Instant::now() < wait_until {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut acked: Vec<(usize, u64)> = Vec::new();
    for round in 0..2 {
        acked.extend(send_round(addr, &writer, clients, round)?);
    }
    // Everyone has the first two before the kill.
    let wait_until = Instant::now() + Duration::from_secs(60);
    while shared.received.load(Ordering::Relaxed) < (2 * clients) as u64 && Instant::now() < wait_until {
        std::thread::sleep(Duration::from_millis(10));
    }
    let killed = Instant::now();
    let restarted_s = match &mut target {
        Target::One(d) => {
            d.kill();
            *shared.killed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(killed);
            d.restart()?;
            killed.elapsed().as_secs_f64()
        }
        Target::Cluster(c) => {
            let dead = c.nodes.len() - 1;
            c.nodes[dead].kill();
            *shared.killed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(killed);
            // Until node 1 no longer holds it up.
            let want = format!("switchboard_backplane_peers_up {}", dead - 1);
            while !c.nodes[0].http_text("/metrics")?.1.lines().any(|l| l == want) {
                if killed.elapsed() > Duration::from_secs(60) {
                    bail!("the killed node was never declared down");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            killed.elapsed().as_secs_f64()
        }
    };
    acked.extend(send_round(addr, &writer, clients, 2)?);
    let mut got: HashMap<usize, (BTreeSet<u64>, Option<Duration>)> = HashMap::new();
    // Reconnections since the kill (every client connected once before it).
    let bar = crate::chart::Progress::new("clients reconnected", clients);
    let watching = std::sync::atomic::AtomicBool::new(true);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while watching.load(Ordering::Relaxed) {
                bar.set((shared.connected.load(Ordering::Relaxed) as usize).saturating_sub(clients));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let joined = handles.into_iter().try_for_each(|h| -> anyhow::Result<()> {
            for (i, seen, back) in h.join().expect("client thread")? {
                got.insert(i, (seen, back));
            }
            Ok(())
        });
        watching.store(false, Ordering::Relaxed);
        joined
    })?;
    bar.finish();
    let lost: Vec<&(usize, u64)> =
        acked.iter().filter(|(c, seq)| !got.get(c).is_some_and(|(s, _)| s.contains(seq))).collect();
    let missing = lost.len();
    if let Some((c, seq)) = lost.first() {
        eprintln!("first missing: client {c} seq {seq}; it has {:?}", got.get(c).map(|(s, _)| s));
    }
    // The clients that lost their node: all of them, or the killed node's.
    let lost_node = |i: usize| a.cluster == 0 || i % addrs.len() == addrs.len() - 1;
    let cut_off = (0..clients).filter(|i| lost_node(*i)).count();
    let backs: Vec<f64> =
        got.iter().filter(|(i, _)| lost_node(**i)).filter_map(|(_, (_, b))| b.map(|d| d.as_secs_f64())).collect();
    let not_back = cut_off - backs.len();
    let all_back_s = backs.iter().cloned().fold(0.0, f64::max);
    let mut sorted = backs.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let p50 = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let server = if a.cluster > 0 { "node declared down" } else { "server back (restart + recovery)" };
    println!("| clients | {server} | clients back: p50 | all | not back | acknowledged messages | missing |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {clients} | {restarted_s:.2} s | {p50:.2} s | {all_back_s:.2} s | {not_back} | {} | {missing} |",
        acked.len()
    );
    if a.server.json {
        println!(
            "{}",
            json!({"scenario": "storm", "clients": clients, "nodes": a.cluster.max(1), "all_back_s": all_back_s,
                   "clients_not_back": not_back, "server_restart_s": restarted_s, "acknowledged": acked.len(),
                   "missing_messages": missing})
        );
    }
    if missing > 0 || not_back > 0 {
        bail!("{missing} acknowledged messages missing, {not_back} clients not back");
    }
    Ok(())
}

/// What the storm runs against.
enum Target {
    One(Daemon),
    Cluster(crate::cluster::Cluster),
}

impl Target {
    fn addrs(&self) -> Vec<String> {
        match self {
            Target::One(d) => vec![d.addr.clone()],
            Target::Cluster(c) => c.nodes.iter().map(|d| d.addr.clone()).collect(),
        }
    }

    fn token(&self, user: &str) -> anyhow::Result<String> {
        match self {
            Target::One(d) => d.token(user),
            Target::Cluster(c) => c.token(user),
        }
    }
}
