//! `one-to-one`: pairs of users sending 100-byte durable messages at a fixed open-loop rate
//! (wrk2 style), ramping to find the highest rate whose p99 stays under the bound, then
//! measuring at 70% of it.
//!
//! Open loop: every message has an intended send time on a fixed schedule, and its latency is
//! counted from that time to the `msg` arriving at the recipient. A sender that falls behind
//! (the server or the client stalled) still charges the stall to every message it delays, so
//! the percentiles are corrected for coordinated omission.

use crate::daemon::{Daemon, ServerArgs};
use crate::gate::Gate;
use crate::host::Host;
use crate::nats::{self, Inbox, Nats, Proto, Server};
use crate::wsclient;
use crate::wsclient::Encoding;
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::json;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Sender/receiver pairs, each its own dm conversation.
    #[arg(long, default_value_t = 16)]
    pub pairs: usize,
    /// The first rate of the ramp (messages per second, all pairs together).
    #[arg(long, default_value_t = 5_000)]
    pub rate_start: u64,
    /// Each ramp step multiplies the rate by this.
    #[arg(long, default_value_t = 1.5)]
    pub rate_step: f64,
    /// Seconds per ramp step and for the final run.
    #[arg(long, default_value_t = 4.0)]
    pub seconds: f64,
    /// The p99 bound that a rate must keep to pass (ms).
    #[arg(long, default_value_t = 10.0)]
    pub p99_ms_max: f64,
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
    /// Client threads (each a monoio runtime driving its share of the pairs).
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// A tiny run that proves the scenario works (no timing claims).
    #[arg(long)]
    pub smoke: bool,
    /// Measure a peer in the same run: `nats` (Debian's nats-server, WebSocket listener).
    #[arg(long, value_parser = ["nats"])]
    pub peer: Option<String>,
    /// Switchboard's encoding: `json` or `binary` (PROTOCOL.md's `switchboard.v1.bin`).
    #[arg(long, default_value = "json", value_parser = ["json", "binary"])]
    pub encoding: String,
    /// Also measure NATS JetStream, the durable peer (file store, publish acks awaited, a
    /// push consumer per recipient), on one server and, with `--cluster`, on as many.
    #[arg(long)]
    pub durable_peer: bool,
    /// `quic`: after the ramp over WebSocket, the same ramp with every client over native QUIC
    /// on the same daemon, and the ratio of the two.
    #[arg(long, default_value = "ws", value_parser = ["ws", "quic"])]
    pub transport: String,
    /// Also run across a cluster of this many nodes (and, with `--peer nats`, as many
    /// nats-servers joined by routes): each pair's sender on one node, its recipient on the
    /// next. The single-node run comes first, as the same-node baseline.
    #[arg(long, default_value_t = 0)]
    pub cluster: u16,
}

/// One pair's users and where each connects.
#[derive(Clone)]
struct Pair {
    to: String,
    sender_token: String,
    receiver_token: String,
    sender_addr: SocketAddr,
    receiver_addr: SocketAddr,
}

/// What one fixed-rate run measured.
struct Step {
    offered_per_s: f64,
    delivered_per_s: f64,
    per_server_cpu_s: f64,
    latency: Histogram<u64>,
    /// Messages that never arrived before the run's drain deadline.
    missing: u64,
    /// A single daemon's CPU seconds in the run: its shard threads, its QUIC thread.
    threads: Option<(f64, f64)>,
}

/// CPU seconds of a daemon's shard threads and its QUIC thread so far.
fn threads_cpu(pid: Option<u32>) -> Option<(f64, f64)> {
    pid.map(|p| (crate::daemon::threads_cpu(p, "shard-"), crate::daemon::threads_cpu(p, "quic")))
}

/// What a run's threads spent per delivered message, in µs: shards, QUIC thread, the rest.
fn per_message_us(s: &Step, cpu_s: f64) -> Option<(f64, f64, f64)> {
    let (shards, quic) = s.threads?;
    let n = s.latency.len().max(1) as f64;
    Some((shards * 1e6 / n, quic * 1e6 / n, (cpu_s - shards - quic).max(0.0) * 1e6 / n))
}

impl Step {
    fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

fn micros(t0: Instant) -> u64 {
    t0.elapsed().as_micros() as u64
}

/// One client thread's pairs, on its own monoio runtime: connect them all, wait for the other
/// threads, then run every pair's paced sender, its ack reader and its receiver as tasks.
#[allow(clippy::too_many_arguments)]
fn client_thread(
    proto: Proto,
    tokens: Vec<Pair>,
    n: u64,
    interval_us: f64,
    t0: Instant,
    start_us: u64,
    deadline: Instant,
    pad: String,
    ready: Arc<Gate>,
    encoding: Encoding,
    connect_budget: Duration,
) -> anyhow::Result<Histogram<u64>> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build()?;
    rt.block_on(async move {
        let connected = async {
            let mut pairs = Vec::new();
            for Pair { to, sender_token, receiver_token, sender_addr, receiver_addr } in tokens {
                let pair = async {
                    match proto {
                        Proto::Switchboard => {
                            let (r, w) = wsclient::session_in(receiver_addr, &receiver_token, encoding).await?;
                            let (ar, aw) = wsclient::session_in(sender_addr, &sender_token, encoding).await?;
                            Ok::<_, anyhow::Error>(((Inbox::Ws(r), w), (Some(Inbox::Ws(ar)), aw)))
                        }
                        Proto::Nats => {
                            let (r, w) = nats::client::connect(receiver_addr, Some(&format!("u.{to}"))).await?;
                            let (_, aw) = nats::client::connect(sender_addr, None).await?;
                            Ok(((Inbox::Nats(r), w), (None, aw)))
                        }
                        Proto::JetStream => {
                            let (r, w) = crate::jetstream::client::consumer(receiver_addr, &to).await?;
                            let (ar, aw, _) = crate::jetstream::client::publisher(sender_addr, &to).await?;
                            Ok(((Inbox::Nats(r), w), (Some(Inbox::Nats(ar)), aw)))
                        }
                    }
                };
                let (rx, tx) = pair.await.with_context(|| {
                    format!("the pair for {to}, sending to {sender_addr}, receiving from {receiver_addr}")
                })?;
                pairs.push((to, tx, rx));
            }
            Ok::<_, anyhow::Error>(pairs)
        };
        let pairs = match connected.await {
            Ok(pairs) => pairs,
            Err(e) => {
                ready.fail(&e);
                return Err(e);
            }
        };
        ready.arrive(connect_budget)?;
        let latency = Rc::new(RefCell::new(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?));
        let mut tasks = Vec::new();
        for (p, (to, (ack_reader, mut w), (mut r, _rw))) in pairs.into_iter().enumerate() {
            let pad = pad.clone();
            let to_user = switchboard_store::UserId::new(&to)?;
            // Pairs start spread over one interval, not all at once.
            let offset = start_us as f64 + interval_us * (p % 16) as f64 / 16.0;
            tasks.push(monoio::spawn(async move {
                for i in 0..n {
                    let intended = (offset + interval_us * i as f64) as u64;
                    let due = t0 + Duration::from_micros(intended);
                    if Instant::now() < due {
                        monoio::time::sleep_until(due.into()).await;
                    }
                    let sent = match proto {
                        Proto::Switchboard if encoding == Encoding::Binary => {
                            use switchboard_edge::proto::{binary, ClientFrame, Target};
                            let body = format!(r#"{{"at":{intended},"pad":"{pad}"}}"#);
                            let id = i.to_string();
                            let send = ClientFrame::Send {
                                target: Target::To(to_user.clone()),
                                id: id.as_str().into(),
                                body: &body,
                                kind: "text".into(),
                            };
                            w.send_binary(&binary::encode_client(&send, None)).await
                        }
                        Proto::Switchboard => {
                            let frame = format!(
                                r#"{{"t":"send","to":"{to}","id":"{i}","body":{{"at":{intended},"pad":"{pad}"}}}}"#
                            );
                            w.send_text(frame.as_bytes()).await
                        }
                        Proto::Nats => {
                            let body = format!(r#"{{"at":{intended},"pad":"{pad}"}}"#);
                            w.send_binary(&nats::client::publish(&format!("u.{to}"), &body)).await
                        }
                        Proto::JetStream => {
                            let body = format!(r#"{{"at":{intended},"pad":"{pad}"}}"#);
                            let reply = format!("_INBOX.p.{to}");
                            w.send_binary(&crate::jetstream::client::publish(&format!("u.{to}"), &reply, &body)).await
                        }
                    };
                    if sent.is_err() {
                        break;
                    }
                }
            }));
            // The sender's acks are read, so that its queue on the server never fills; what
            // counts is each message reaching its recipient.
            if let Some(mut ack_reader) = ack_reader {
                monoio::spawn(async move { while let Ok(Some(_)) = ack_reader.next().await {} });
            }
            let latency = latency.clone();
            tasks.push(monoio::spawn(async move {
                let mut got = 0;
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = monoio::time::timeout(left, async {
                    while got < n {
                        match r.next().await {
                            Ok(Some(frame)) => {
                                if let Some(at) = wsclient::number_after(&frame, b"\"at\":") {
                                    let now = micros(t0);
                                    latency.borrow_mut().saturating_record(now.saturating_sub(at).max(1));
                                    got += 1;
                                }
                            }
                            _ => break,
                        }
                    }
                })
                .await;
                // The receiver's write half lives until here, keeping its socket open.
                drop((r, _rw));
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let h = latency.borrow().clone();
        Ok(h)
    })
}

/// Runs `pairs` senders at `rate` messages per second in total for `seconds`.
/// `cross`: how many nodes after the sender's its recipient connects to (0: the same node).
fn run_at(d: &Server<'_>, a: &Args, rate: f64, round: usize, cross: usize) -> anyhow::Result<Step> {
    let per_pair = rate / a.pairs as f64;
    let n = ((per_pair * a.seconds).ceil() as u64).max(1);
    let interval_us = 1e6 / per_pair;
    let pad = "x".repeat(a.body_bytes.saturating_sub(40));
    let proto = d.proto();
    let encoding = if a.encoding == "binary" { Encoding::Binary } else { Encoding::Json };
    let threads = a.client_threads.clamp(1, a.pairs);
    let mut shares: Vec<Vec<Pair>> = vec![Vec::new(); threads];
    for p in 0..a.pairs {
        // Fresh users (and so fresh conversations and ids) for every run of every ramp: a
        // reused id would rightly be a `dup`, and not delivered again.
        // (A ramp over QUIC on the same daemon has users of its own, too.)
        let over = if matches!(d, Server::SwitchboardQuic(..)) { "q" } else { "" };
        let (sender, receiver) = (format!("s{round}x{p}c{cross}{over}"), format!("r{round}x{p}c{cross}{over}"));
        // On a cluster the senders are spread over the nodes, each recipient `cross` after.
        let (sender_addr, receiver_addr) = (d.addr_of(p).parse()?, d.addr_of(p + cross).parse()?);
        let (sender_token, receiver_token) = (d.token(&sender)?, d.token(&receiver)?);
        shares[p % threads].push(Pair { to: receiver, sender_token, receiver_token, sender_addr, receiver_addr });
    }
    let t0 = Instant::now();
    let ready = Gate::new(threads + 1);
    // The schedule starts once everyone is connected (set below, read by the threads through
    // the barrier's ordering).
    let connect_budget = Duration::from_secs(5);
    let start_us = (connect_budget + Duration::from_millis(200)).as_micros() as u64;
    let deadline = t0 + connect_budget + Duration::from_secs_f64(a.seconds) + Duration::from_secs(5);
    let handles: Vec<_> = match d {
        // Over QUIC, the same pairs on the same schedule, on tokio (`quicclient`).
        Server::SwitchboardQuic(_, quic) => shares
            .into_iter()
            .map(|share| {
                let pairs = share
                    .into_iter()
                    .map(|p| crate::quicclient::Pair {
                        to: p.to,
                        sender_token: p.sender_token,
                        receiver_token: p.receiver_token,
                    })
                    .collect();
                let schedule = crate::quicclient::Schedule {
                    n,
                    interval_us,
                    t0,
                    start_us,
                    deadline,
                    pad: pad.clone(),
                    connect_budget,
                };
                let (ready, quic) = (ready.clone(), (*quic).clone());
                std::thread::spawn(move || crate::quicclient::one_to_one_thread(quic, pairs, schedule, ready))
            })
            .collect(),
        _ => shares
            .into_iter()
            .map(|tokens| {
                let (ready, pad) = (ready.clone(), pad.clone());
                std::thread::spawn(move || {
                    client_thread(
                        proto,
                        tokens,
                        n,
                        interval_us,
                        t0,
                        start_us,
                        deadline,
                        pad,
                        ready,
                        encoding,
                        connect_budget,
                    )
                })
            })
            .collect(),
    };
    let handles = ready.start(connect_budget, handles).with_context(|| format!("connecting {} pairs", a.pairs))?;
    if t0.elapsed() > connect_budget {
        bail!("connecting {} pairs took over {connect_budget:?}", a.pairs);
    }
    let (cpu0, _) = d.usage();
    let threads0 = threads_cpu(d.daemon_pid());
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        scope.spawn(|| {
            let label = format!("{rate:.0} msgs/s");
            let tenths = (a.seconds * 10.0) as usize;
            let bar = crate::chart::Progress::new(label, tenths);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                bar.set((t0.elapsed().saturating_sub(Duration::from_micros(start_us)).as_secs_f64() * 10.0) as usize);
            }
            bar.finish();
        });
        let joined: anyhow::Result<()> = handles.into_iter().try_for_each(|h| {
            latency.add(h.join().expect("client thread")?)?;
            Ok(())
        });
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        joined
    })?;
    let (cpu1, _) = d.usage();
    let threads = threads_cpu(d.daemon_pid()).zip(threads0).map(|((s1, q1), (s0, q0))| (s1 - s0, q1 - q0));
    let expected = n * a.pairs as u64;
    let delivered = latency.len();
    Ok(Step {
        offered_per_s: rate,
        // Messages were scheduled over `seconds`; what arrived of them, per second.
        delivered_per_s: delivered as f64 / a.seconds,
        per_server_cpu_s: delivered as f64 / (cpu1 - cpu0).max(1e-9),
        latency,
        missing: expected - delivered,
        threads,
    })
}

/// What a ramp found: the highest passing rate and the run at 70% of it.
struct Ramp {
    max: f64,
    at70: Step,
    /// Every step of the ramp: (offered, delivered) per second.
    steps: Vec<(f64, f64)>,
}

impl Ramp {
    fn json(&self) -> serde_json::Value {
        json!({
            "max_msgs_per_s": self.max,
            "rate_at_70_per_s": self.at70.offered_per_s,
            "msgs_per_server_cpu_s": self.at70.per_server_cpu_s,
            "p50_ms": self.at70.ms(0.5),
            "p99_ms": self.at70.ms(0.99),
            "p999_ms": self.at70.ms(0.999),
            "max_ms": self.at70.latency.max() as f64 / 1000.0,
            "missing": self.at70.missing,
        })
    }
}

fn ramp(d: &Server<'_>, a: &Args) -> anyhow::Result<Ramp> {
    ramp_with(d, a, 1)
}

fn ramp_with(d: &Server<'_>, a: &Args, cross: usize) -> anyhow::Result<Ramp> {
    println!("| offered msgs/s | delivered/s | per server CPU-s | p50 | p99 | p999 | max | missing | pass |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let print = |s: &Step, pass: bool| {
        println!(
            "| {:.0} | {:.0} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {} | {} |",
            s.offered_per_s,
            s.delivered_per_s,
            s.per_server_cpu_s,
            s.ms(0.5),
            s.ms(0.99),
            s.ms(0.999),
            s.latency.max() as f64 / 1000.0,
            s.missing,
            if pass { "yes" } else { "no" }
        )
    };
    let mut rate = a.rate_start as f64;
    let mut max_pass: Option<f64> = None;
    let mut steps = Vec::new();
    // Between runs the server finishes what an overloaded run left queued, so that no run
    // pays for the one before.
    let settle = || std::thread::sleep(Duration::from_secs(if a.smoke { 0 } else { 3 }));
    for round in 0.. {
        settle();
        let s = run_at(d, a, rate, round, cross)?;
        steps.push((s.offered_per_s, s.delivered_per_s));
        let pass = s.missing == 0 && s.ms(0.99) < a.p99_ms_max && s.delivered_per_s >= 0.9 * rate;
        print(&s, pass);
        if !pass || a.smoke {
            break;
        }
        max_pass = Some(rate);
        rate *= a.rate_step;
    }
    let Some(max) = max_pass.or(a.smoke.then_some(rate)) else {
        bail!("even {} msgs/s missed the bound; lower --rate-start", a.rate_start)
    };
    println!("highest passing rate: {max:.0} msgs/s; at 70% of it:");
    settle();
    let at70 = run_at(d, a, max * 0.7, 1000, cross)?;
    print(&at70, at70.missing == 0);
    if let Some((shards, quic, rest)) = per_message_us(&at70, at70.latency.len() as f64 / at70.per_server_cpu_s) {
        println!("server CPU per message at 70%: shard threads {shards:.1} µs, QUIC thread {quic:.1} µs, the rest (store, …) {rest:.1} µs");
    }
    steps.push((at70.offered_per_s, at70.delivered_per_s));
    Ok(Ramp { max, at70, steps })
}

/// One ramp against another: the ratios of their highest passing rates, their messages per
/// server CPU-second and their p99 at 70%.
fn compare(label: &str, ours: &Ramp, theirs: &Ramp) {
    println!(
        "{label}: highest passing rate {:.2}x, messages per server CPU-second {:.2}x, p99 at 70% {:.2}x",
        ours.max / theirs.max,
        ours.at70.per_server_cpu_s / theirs.at70.per_server_cpu_s.max(1e-9),
        ours.at70.ms(0.99) / theirs.at70.ms(0.99).max(1e-9)
    );
}

/// The ramp's delivered rate against time: each step holds its rate for its seconds.
fn over_time(r: &Ramp, seconds: f64) -> Vec<(f64, f64)> {
    r.steps
        .iter()
        .enumerate()
        .flat_map(|(i, &(_, d))| [(i as f64 * seconds, d), ((i + 1) as f64 * seconds, d)])
        .collect()
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (seconds, rate_start) = if a.smoke { (0.5, 200) } else { (a.seconds, a.rate_start) };
    let a = Args { seconds, rate_start, ..a };
    let host = Host::read();
    println!(
        "switchboard-bench one-to-one: {} pairs, {}-byte bodies, {} encoding, open loop, ramp from {}/s ×{} per step of {} s, pass: p99 < {} ms; {} server shard(s)",
        a.pairs, a.body_bytes, a.encoding, a.rate_start, a.rate_step, a.seconds, a.p99_ms_max, a.server.shards
    );
    println!("host: {}", host.line());
    let (ours, over_quic) = {
        let d = Daemon::start(&a.server)?;
        println!("switchboard (durable: an ack and a delivery only after fsync):");
        let ours = ramp(&Server::Switchboard(&d), &a)?;
        let over_quic = if a.transport == "quic" {
            let quic = crate::quicclient::QuicTarget::of(&d)?;
            println!("switchboard, every client over QUIC (the same daemon):");
            let q = ramp(&Server::SwitchboardQuic(&d, &quic), &a)?;
            compare("QUIC / WebSocket", &q, &ours);
            Some(q)
        } else {
            None
        };
        (ours, over_quic)
    };
    let peer = match &a.peer {
        Some(_) => {
            let n = Nats::start()?;
            println!("nats-server over WebSocket (a subject per user; not durable, no acks):");
            Some(ramp(&Server::Nats(&n), &a)?)
        }
        None => None,
    };
    if let Some(p) = &peer {
        println!(
            "switchboard / nats: highest passing rate {:.2}x, p99 at 70% {:.2}x",
            ours.max / p.max,
            ours.at70.ms(0.99) / p.at70.ms(0.99).max(1e-9)
        );
    }
    let durable = if a.durable_peer {
        let j = crate::jetstream::JetStream::start(1)?;
        println!("nats JetStream, one server ({}):", crate::jetstream::DURABILITY);
        let r = ramp(&Server::JetStream(&j), &a)?;
        compare("switchboard / jetstream", &ours, &r);
        Some(r)
    } else {
        None
    };
    let across = if a.cluster > 0 {
        let n = a.cluster;
        let c = crate::cluster::Cluster::start(&a.server, n, 0)?;
        println!("switchboard, {n} nodes, each sender's recipient on the same node (durable; CPU of all nodes):");
        let same = ramp_with(&Server::Cluster(&c), &a, 0)?;
        println!("switchboard, {n} nodes, each sender's recipient on another node (durable; CPU of all nodes):");
        let ours_n = ramp(&Server::Cluster(&c), &a)?;
        drop(c);
        let peer_n = match &a.peer {
            Some(_) => {
                let n = crate::cluster::NatsCluster::start(n as usize, false)?;
                println!(
                    "{} nats-servers joined by routes, each subscriber on another server than its publisher:",
                    a.cluster
                );
                Some(ramp(&Server::NatsCluster(&n), &a)?)
            }
            None => None,
        };
        println!(
            "across nodes / same node of the {n}: CPU per message {:.2}x, highest passing rate {:.2}x; across {n} nodes / one process: CPU per message {:.2}x",
            same.at70.per_server_cpu_s / ours_n.at70.per_server_cpu_s.max(1e-9),
            ours_n.max / same.max,
            ours.at70.per_server_cpu_s / ours_n.at70.per_server_cpu_s.max(1e-9),
        );
        if let Some(p) = &peer_n {
            println!(
                "switchboard / nats across {n} nodes: messages per server CPU-second {:.2}x, p99 at 70% {:.2}x",
                ours_n.at70.per_server_cpu_s / p.at70.per_server_cpu_s.max(1e-9),
                ours_n.at70.ms(0.99) / p.at70.ms(0.99).max(1e-9)
            );
        }
        let durable_n = if a.durable_peer {
            let j = crate::jetstream::JetStream::start(n as usize)?;
            println!("nats JetStream, {n} servers routed together ({}):", crate::jetstream::DURABILITY);
            let r = ramp(&Server::JetStream(&j), &a)?;
            println!(
                "switchboard / jetstream across {n} nodes: messages per server CPU-second {:.2}x, p99 at 70% {:.2}x",
                ours_n.at70.per_server_cpu_s / r.at70.per_server_cpu_s.max(1e-9),
                ours_n.at70.ms(0.99) / r.at70.ms(0.99).max(1e-9)
            );
            Some(r)
        } else {
            None
        };
        Some((same, ours_n, peer_n, durable_n))
    } else {
        None
    };
    if let Some(dir) = &a.server.chart {
        use crate::chart::{lines, percentiles, Series};
        let mut curves = vec![Series { name: "switchboard (durable)".into(), points: percentiles(&ours.at70.latency) }];
        let mut through = vec![Series { name: "switchboard delivered/s".into(), points: over_time(&ours, a.seconds) }];
        if let Some(p) = &peer {
            curves.push(Series { name: "nats-server (not durable)".into(), points: percentiles(&p.at70.latency) });
            through.push(Series { name: "nats-server delivered/s".into(), points: over_time(p, a.seconds) });
        }
        let title =
            format!("one-to-one latency at 70% of the highest passing rate ({:.0} msgs/s)", ours.at70.offered_per_s);
        lines(
            dir,
            "one-to-one-latency.svg",
            &title,
            ("percentile, in nines (1 = p90, 2 = p99, 3 = p99.9)", "latency (ms)"),
            &curves,
        )?;
        let title = format!("one-to-one throughput over the ramp (steps of {} s, then the 70% run)", a.seconds);
        lines(
            dir,
            "one-to-one-throughput.svg",
            &title,
            ("time in the ramp (s, without the pauses)", "delivered msgs/s"),
            &through,
        )?;
    }
    if a.server.json {
        let mut out = ours.json();
        out["scenario"] = json!("one-to-one");
        out["pairs"] = json!(a.pairs);
        if let Some(q) = &over_quic {
            out["quic"] = q.json();
            out["quic"]["rate_vs_websocket"] = json!(q.max / ours.max);
        }
        if let Some(p) = &peer {
            out["peer"] = p.json();
            out["peer"]["name"] = json!("nats");
        }
        if let Some(r) = &durable {
            out["durable_peer"] = r.json();
            out["durable_peer"]["name"] = json!("jetstream");
            out["durable_peer"]["durability"] = json!(crate::jetstream::DURABILITY);
        }
        if let Some((same, ours_n, peer_n, durable_n)) = &across {
            out["cluster"] = ours_n.json();
            out["cluster"]["nodes"] = json!(a.cluster);
            out["cluster"]["same_node"] = same.json();
            out["cluster"]["cpu_per_msg_vs_same_node"] =
                json!(same.at70.per_server_cpu_s / ours_n.at70.per_server_cpu_s.max(1e-9));
            out["cluster"]["cpu_per_msg_vs_one_node"] =
                json!(ours.at70.per_server_cpu_s / ours_n.at70.per_server_cpu_s.max(1e-9));
            if let Some(p) = peer_n {
                out["cluster"]["peer"] = p.json();
                out["cluster"]["peer"]["name"] = json!("nats-cluster");
            }
            if let Some(r) = durable_n {
                out["cluster"]["durable_peer"] = r.json();
                out["cluster"]["durable_peer"]["name"] = json!("jetstream-cluster");
            }
        }
        println!("{out}");
    }
    Ok(())
}
