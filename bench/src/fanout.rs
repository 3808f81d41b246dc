//! `fanout`: one sender posting to groups of 10, 100 and 1,000 members, and to a channel whose
//! members all have it open, at a fixed open-loop rate. Reports deliveries per second and per
//! server CPU-second, and the latency to the last recipient of each message (from its intended
//! send time, so coordinated omission is accounted for).

use crate::daemon::{Daemon, ServerArgs};
use crate::gate::Gate;
use crate::host::Host;
use crate::nats::{self, Inbox, Nats, Proto, Server};
use crate::wsclient;
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::json;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Group sizes (members, the sender included).
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    pub groups: Vec<usize>,
    /// Channel members connected with the channel open (0: no channel run). The server's
    /// open-files limit bounds it until the io_uring connection path (issue 5).
    #[arg(long, default_value_t = 10_000)]
    pub channel: usize,
    /// Deliveries per second to aim at (messages per second = this / recipients).
    #[arg(long, default_value_t = 100_000)]
    pub deliveries_per_s: u64,
    #[arg(long, default_value_t = 4.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,
    #[arg(long)]
    pub smoke: bool,
    /// Measure a peer in the same run: `nats` (a subject with every member subscribed).
    #[arg(long, value_parser = ["nats"])]
    pub peer: Option<String>,
    /// Instead of the groups and the channel: a group of 500 twice, with 8 KiB bodies, the
    /// second time with one member that stops reading (a 4 KiB receive buffer). Reports the
    /// others' latency beside the slow consumer against without it, and whether the node
    /// closed it with 4009.
    #[arg(long)]
    pub slow_consumer: bool,
}

/// A slow-consumer run's group size and body padding (enough that what the slow member is
/// sent passes the node's 1 MiB outbound queue within the run).
const SLOW_GROUP: usize = 500;
const SLOW_PAD: usize = 8192;

/// How one run's messages look and who reads them.
#[derive(Clone, Copy, Default)]
struct Shape {
    /// Bytes of padding in each body.
    pad: usize,
    /// One member (the first of the first client thread) stops reading after its `welcome`.
    slow: bool,
}

struct Outcome {
    members: usize,
    messages: u64,
    deliveries: u64,
    expected: u64,
    wall_s: f64,
    server_cpu_s: f64,
    /// Per message: intended send → the last recipient's `msg`.
    last: Histogram<u64>,
    /// The slow member, if the run had one.
    slow: Option<SlowMember>,
}

/// What the member that stopped reading found when it read again.
#[derive(Default)]
struct SlowMember {
    /// Messages it was sent before its connection was closed.
    messages: u64,
    /// The close code it read at the end (`None`: the connection ended without one).
    close: Option<u16>,
}

/// Creates the conversation with `members` (user ids) and returns its id; channels are filled
/// in chunks (a creation takes at most 1,000).
pub(crate) fn create(d: &Daemon, kind: &str, owner: &str, members: &[String]) -> anyhow::Result<String> {
    let token = d.token(owner)?;
    let (first, rest) = members.split_at(members.len().min(999));
    let (status, v) = d.http("POST", "/v1/conversations", &token, Some(&json!({"kind": kind, "members": first})))?;
    if status != 201 {
        bail!("create {kind}: {status} {v}");
    }
    let conv = v["conv"].as_str().context("conv")?.to_string();
    for chunk in rest.chunks(1000) {
        let path = format!("/v1/conversations/{conv}/members");
        let (status, v) = d.http("POST", &path, &token, Some(&json!({ "add": chunk })))?;
        if status != 200 {
            bail!("add members: {status} {v}");
        }
    }
    Ok(conv)
}

#[allow(clippy::too_many_arguments)]
fn recipients_thread(
    proto: Proto,
    addr: SocketAddr,
    tokens: Vec<(std::net::Ipv4Addr, String)>,
    conv: String,
    open: bool,
    t0: Instant,
    deadline: Instant,
    expected_each: u64,
    ready: Arc<Gate>,
    connect_budget: Duration,
    slow: bool,
) -> anyhow::Result<(HashMap<u64, u64>, u64, Option<SlowMember>)> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build()?;
    rt.block_on(async move {
        let connected = async {
            let mut readers = Vec::new();
            for (i, (source, token)) in tokens.iter().enumerate() {
                let reader = async {
                    let recv_buffer = (slow && i == 0).then_some(4096);
                    let from = crate::density::connect_from_with(*source, &addr.to_string(), recv_buffer)?;
                    from.set_nonblocking(true)?;
                    let stream = monoio::net::TcpStream::from_std(from)?;
                    match proto {
                        Proto::Switchboard => {
                            let (r, mut w) = wsclient::session_on(stream, addr, token).await?;
                            if open {
                                w.send_text(format!(r#"{{"t":"open","conv":"{conv}"}}"#).as_bytes()).await?;
                            }
                            Ok::<_, anyhow::Error>((Inbox::Ws(r), w))
                        }
                        // The conversation's name is the subject every member subscribes to.
                        Proto::Nats => {
                            let (m, w) = nats::client::connect_on(stream, addr, Some(&conv)).await?;
                            Ok((Inbox::Nats(m), w))
                        }
                        Proto::JetStream => anyhow::bail!("fanout has no JetStream peer"),
                    }
                };
                readers.push(
                    reader.await.with_context(|| format!("recipient {i} of this thread, from {source} to {addr}"))?,
                );
            }
            Ok::<_, anyhow::Error>(readers)
        };
        let readers = match connected.await {
            Ok(readers) => readers,
            Err(e) => {
                ready.fail(&e);
                return Err(e);
            }
        };
        ready.arrive(connect_budget)?;
        // seq → the largest latency seen for it in this thread.
        let last: Rc<RefCell<HashMap<u64, u64>>> = Rc::default();
        let count = Rc::new(std::cell::Cell::new(0u64));
        let mut tasks = Vec::new();
        let mut readers = readers.into_iter();
        // The slow member holds its connection and reads nothing until the others are done.
        let held = if slow { readers.next() } else { None };
        for (mut r, w) in readers {
            let (last, count) = (last.clone(), count.clone());
            tasks.push(monoio::spawn(async move {
                let mut got = 0;
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = monoio::time::timeout(left, async {
                    while got < expected_each {
                        let Ok(Some(frame)) = r.next().await else { break };
                        if proto == Proto::Nats || wsclient::contains(&frame, b"\"msg\"") {
                            // Each message is known by its index `i` in the body.
                            if let (Some(seq), Some(at)) =
                                (wsclient::number_after(&frame, b"\"i\":"), wsclient::number_after(&frame, b"\"at\":"))
                            {
                                let lat = (t0.elapsed().as_micros() as u64).saturating_sub(at).max(1);
                                let mut m = last.borrow_mut();
                                let e = m.entry(seq).or_insert(0);
                                *e = (*e).max(lat);
                                got += 1;
                                count.set(count.get() + 1);
                            }
                        }
                    }
                })
                .await;
                drop((r, w));
            }));
        }
        for t in tasks {
            t.await;
        }
        let slow = match held {
            Some((Inbox::Ws(mut r), w)) => {
                // Then it reads what it was sent, to the end.
                let mut member = SlowMember::default();
                let read = r.read_to_close(|frame| member.messages += u64::from(wsclient::contains(frame, b"\"msg\"")));
                let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(5));
                member.close = monoio::time::timeout(left, read).await.ok().and_then(Result::ok).flatten();
                drop(w);
                Some(member)
            }
            _ => None,
        };
        let last = last.borrow().clone();
        Ok((last, count.get(), slow))
    })
}

fn run_one(
    d: &Server<'_>,
    a: &Args,
    kind: &str,
    members: usize,
    round: usize,
    shape: Shape,
) -> anyhow::Result<Outcome> {
    let users: Vec<String> = (0..members).map(|i| format!("f{round}m{i}")).collect();
    let sender = &users[0];
    let proto = d.proto();
    let conv = match d {
        Server::Switchboard(daemon) => create(daemon, kind, sender, &users[1..])?,
        Server::Nats(_) => format!("{kind}.{round}"),
        Server::Cluster(_) | Server::NatsCluster(_) | Server::JetStream(_) | Server::SwitchboardQuic(..) => {
            anyhow::bail!("fanout runs on one node over WebSocket, against core NATS")
        }
    };
    // The slow member's deliveries are neither expected nor counted.
    let recipients = (members - 1 - usize::from(shape.slow)) as u64;
    let msgs_per_s = (a.deliveries_per_s as f64 / recipients as f64).max(1.0);
    let n = ((msgs_per_s * a.seconds).ceil() as u64).max(1);
    let interval_us = 1e6 / msgs_per_s;
    let addr: SocketAddr = d.addr().parse()?;
    let threads = a.client_threads.max(1);
    let mut shares: Vec<Vec<(std::net::Ipv4Addr, String)>> = vec![Vec::new(); threads];
    for (i, u) in users[1..].iter().enumerate() {
        // As `density` does: a source address per 20,000 recipients, so that the ports of
        // one address never run short.
        let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + ((i / 20_000) % 250) as u8);
        shares[i % threads].push((source, d.token(u)?));
    }
    let t0 = Instant::now();
    let connect_budget = Duration::from_secs(30);
    let deadline = t0 + connect_budget + Duration::from_secs_f64(a.seconds) + Duration::from_secs(10);
    let ready = Gate::new(threads + 1);
    let open = kind == "channel";
    let mut first = true;
    let handles: Vec<_> = shares
        .into_iter()
        .map(|tokens| {
            let (ready, conv) = (ready.clone(), conv.clone());
            let slow = shape.slow && std::mem::take(&mut first);
            std::thread::spawn(move || {
                recipients_thread(proto, addr, tokens, conv, open, t0, deadline, n, ready, connect_budget, slow)
            })
        })
        .collect();
    let handles = ready.start(connect_budget, handles).with_context(|| format!("{kind} of {members}"))?;
    // The `open`s are answered after a store read; give them a moment.
    std::thread::sleep(Duration::from_millis(500));
    let sender_token = d.token(sender)?;
    let (cpu0, _) = d.usage();
    let began = Instant::now();
    let start_us = t0.elapsed().as_micros() as u64 + 100_000;
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build()?;
    // Bodies carry no padding field unless the run asks for one.
    let pad = if shape.pad == 0 { String::new() } else { format!(r#","pad":"{}""#, "x".repeat(shape.pad)) };
    rt.block_on(async {
        let mut w = match proto {
            Proto::Switchboard => {
                let (mut acks, w) = wsclient::session(addr, &sender_token).await?;
                monoio::spawn(async move { while let Ok(Some(_)) = acks.next().await {} });
                w
            }
            Proto::Nats => nats::client::connect(addr, None).await?.1,
            Proto::JetStream => anyhow::bail!("fanout has no JetStream peer"),
        };
        for i in 0..n {
            let intended = start_us + (interval_us * i as f64) as u64;
            let due = t0 + Duration::from_micros(intended);
            if Instant::now() < due {
                monoio::time::sleep_until(due.into()).await;
            }
            let body = format!(r#"{{"at":{intended},"i":{i}{pad}}}"#);
            match proto {
                Proto::Switchboard => {
                    let frame = format!(r#"{{"t":"send","conv":"{conv}","id":"{i}","body":{body}}}"#);
                    w.send_text(frame.as_bytes()).await?
                }
                Proto::Nats => w.send_binary(&nats::client::publish(&conv, &body)).await?,
                Proto::JetStream => anyhow::bail!("fanout has no JetStream peer"),
            }
        }
        anyhow::Ok(())
    })?;
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut deliveries = 0;
    let mut slow = None;
    for h in handles {
        let (m, count, member) = h.join().expect("recipient thread")?;
        deliveries += count;
        slow = slow.or(member);
        for (seq, lat) in m {
            let e = last.entry(seq).or_insert(0);
            *e = (*e).max(lat);
        }
    }
    let wall_s = began.elapsed().as_secs_f64();
    let (cpu1, _) = d.usage();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for lat in last.values() {
        hist.saturating_record(*lat);
    }
    Ok(Outcome {
        members,
        messages: n,
        deliveries,
        expected: n * recipients,
        wall_s,
        server_cpu_s: cpu1 - cpu0,
        last: hist,
        slow,
    })
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let a =
        if a.smoke { Args { groups: vec![10], channel: 50, deliveries_per_s: 2_000, seconds: 0.5, ..a } } else { a };
    let host = Host::read();
    println!(
        "switchboard-bench fanout: groups {:?}, a channel of {} open members, aiming at {} deliveries/s for {} s; {} server shard(s)",
        a.groups, a.channel, a.deliveries_per_s, a.seconds, a.server.shards
    );
    println!("host: {}", host.line());
    let mut runs: Vec<(String, Outcome)> = Vec::new();
    let all = |d: &Server<'_>, label: &str, runs: &mut Vec<(String, Outcome)>| -> anyhow::Result<()> {
        let total = a.groups.len() + usize::from(a.channel > 1);
        let bar = crate::chart::Progress::new(format!("{label}conversations"), total);
        for (i, &g) in a.groups.iter().enumerate() {
            runs.push((format!("{label}group {g}"), run_one(d, &a, "group", g, i, Shape::default())?));
            bar.set(i + 1);
        }
        if a.channel > 1 {
            let shape = Shape::default();
            runs.push((format!("{label}channel {}", a.channel), run_one(d, &a, "channel", a.channel, 100, shape)?));
            bar.set(total);
        }
        bar.finish();
        Ok(())
    };
    if a.slow_consumer {
        let d = Daemon::start(&a.server)?;
        let d = Server::Switchboard(&d);
        let normal = Shape { pad: SLOW_PAD, slow: false };
        runs.push((
            format!("group {SLOW_GROUP}, {SLOW_PAD} B bodies"),
            run_one(&d, &a, "group", SLOW_GROUP, 200, normal)?,
        ));
        let slow = Shape { slow: true, ..normal };
        let name = format!("group {SLOW_GROUP}, {SLOW_PAD} B bodies, one member not reading");
        runs.push((name, run_one(&d, &a, "group", SLOW_GROUP, 201, slow)?));
    } else {
        let d = Daemon::start(&a.server)?;
        all(&Server::Switchboard(&d), "", &mut runs)?;
    }
    if a.peer.is_some() && !a.slow_consumer {
        let n = Nats::start()?;
        all(&Server::Nats(&n), "nats: ", &mut runs)?;
    }
    println!("| conversation | messages | deliveries (expected) | deliveries/s | per server CPU-s | last recipient p50 | p99 | max |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut out = Vec::new();
    for (name, o) in &runs {
        let per_s = o.deliveries as f64 / o.wall_s;
        let per_cpu = o.deliveries as f64 / o.server_cpu_s.max(1e-9);
        let ms = |q: f64| o.last.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "| {name} | {} | {} ({}) | {per_s:.0} | {per_cpu:.0} | {:.2} ms | {:.2} ms | {:.2} ms |",
            o.messages,
            o.deliveries,
            o.expected,
            ms(0.5),
            ms(0.99),
            o.last.max() as f64 / 1000.0
        );
        out.push(json!({
            "conversation": name, "members": o.members, "messages": o.messages,
            "deliveries": o.deliveries, "expected_deliveries": o.expected,
            "deliveries_per_s": per_s, "deliveries_per_server_cpu_s": per_cpu,
            "last_recipient_p50_ms": ms(0.5), "last_recipient_p99_ms": ms(0.99),
            "slow_member_close": o.slow.as_ref().map(|m| m.close),
            "slow_member_messages": o.slow.as_ref().map(|m| m.messages),
        }));
    }
    if let [(_, normal), (_, slow)] = &runs[..] {
        if let Some(member) = &slow.slow {
            let p99 = |o: &Outcome| o.last.value_at_quantile(0.99) as f64 / 1000.0;
            println!(
                "slow consumer: read {} of {} messages, then its close: {:?}; the other {} members' last-recipient p99 {:.2} ms beside it against {:.2} ms without it: {:.2}×",
                member.messages,
                slow.messages,
                member.close,
                slow.members - 2,
                p99(slow),
                p99(normal),
                p99(slow) / p99(normal).max(1e-9)
            );
        }
    }
    if a.server.json {
        // The peer's runs (labelled "nats: …") sit in a `peer` object, as in the other scenarios.
        let (theirs, ours): (Vec<_>, Vec<_>) =
            out.into_iter().partition(|r| r["conversation"].as_str().is_some_and(|c| c.starts_with("nats: ")));
        let mut o = json!({"scenario": "fanout", "runs": ours});
        if !theirs.is_empty() {
            o["peer"] = json!({"name": "nats", "runs": theirs});
        }
        println!("{o}");
    }
    Ok(())
}
