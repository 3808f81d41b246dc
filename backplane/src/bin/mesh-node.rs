//! `switchboard-mesh-node`: one node of the mesh and nothing else, for the backplane's
//! multi-process tests and for trying the mesh by hand.
//!
//! Once a peer's run is up and connected it sends that run `--frames` numbered frames on
//! the control class, on every live lane and on bulk (64 KiB frames, which go to the stream
//! without a copy), retrying a full queue after a millisecond. It checks what it receives:
//! per sender run, class and lane, every frame once and in order. It prints a line per
//! event (`up`, `down`, `connected`, `disconnected`), `complete NODE BOOT` when a run's
//! frames have all arrived, `error …` for any frame out of place, and `stats …` when the
//! refusal counters change. With `--bulk-flood`, it also keeps every peer's bulk queue full
//! of 1 MiB frames the whole time (received bulk frames are counted, not checked).

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_backplane::mesh::Event;
use switchboard_backplane::queue::SendError;
use switchboard_backplane::rt::{self, Handle, Settings};
use switchboard_backplane::tls::MeshTls;
use switchboard_backplane::{Boot, Class, MeshConfig, NodeId};

const BULK_BYTES: usize = 64 * 1024;
const SMALL_BYTES: usize = 100;

struct Args {
    node: NodeId,
    listen: SocketAddr,
    peers: Vec<(NodeId, SocketAddr)>,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    data: PathBuf,
    frames: u64,
    bulk_flood: bool,
}

fn parse() -> anyhow::Result<Args> {
    let mut args = std::env::args().skip(1);
    let (mut node, mut listen, mut peers, mut certs, mut ca, mut cert, mut key, mut data, mut frames) =
        (None, None, Vec::new(), None, None, None, None, None, 100);
    let mut bulk_flood = false;
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--node" => node = Some(NodeId(value()?.parse()?)),
            "--listen" => listen = Some(value()?.parse()?),
            "--peer" => {
                let v = value()?;
                let (id, addr) = v.split_once('@').context("--peer ID@ADDR")?;
                peers.push((NodeId(id.parse()?), addr.parse()?));
            }
            "--certs" => certs = Some(PathBuf::from(value()?)),
            "--ca" => ca = Some(PathBuf::from(value()?)),
            "--cert" => cert = Some(PathBuf::from(value()?)),
            "--key" => key = Some(PathBuf::from(value()?)),
            "--data" => data = Some(PathBuf::from(value()?)),
            "--frames" => frames = value()?.parse()?,
            "--bulk-flood" => bulk_flood = true,
            other => bail!("unknown flag {other}"),
        }
    }
    let node = node.context("--node")?;
    let certs = certs.unwrap_or_else(|| PathBuf::from("."));
    Ok(Args {
        node,
        listen: listen.context("--listen")?,
        peers,
        ca: ca.unwrap_or_else(|| certs.join("ca.pem")),
        cert: cert.unwrap_or_else(|| certs.join(format!("node-{node}.pem"))),
        key: key.unwrap_or_else(|| certs.join(format!("node-{node}.key"))),
        data: data.context("--data")?,
        frames,
        bulk_flood,
    })
}

/// A frame: who sent it, on which class and lane key, its number; padded.
fn frame(src: NodeId, class: Class, lane_key: u64, seq: u64, len: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(len);
    buf.put_u16(src.0);
    buf.put_u8(class.index() as u8);
    buf.put_u64(lane_key);
    buf.put_u64(seq);
    buf.resize(len, 0xAB);
    buf.freeze()
}

/// The streams a sender covers: control, each lane (lane key = lane), bulk.
fn streams(lanes: u16) -> Vec<(Class, u64)> {
    std::iter::once((Class::Control, 0))
        .chain((0..u64::from(lanes)).map(|l| (Class::Live, l)))
        .chain(std::iter::once((Class::Bulk, 0)))
        .collect()
}

fn send_all(handle: Handle, to: NodeId, frames: u64, lanes: u16, stop: Arc<AtomicBool>) {
    for seq in 0..frames {
        for (class, lane_key) in streams(lanes) {
            let len = if class == Class::Bulk { BULK_BYTES } else { SMALL_BYTES };
            let f = frame(handle.me(), class, lane_key, seq, len);
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                match handle.send(to, class, lane_key, f.clone()) {
                    Ok(()) => break,
                    Err(SendError::Full(_)) => std::thread::sleep(Duration::from_millis(1)),
                    Err(SendError::Down) => return,
                    Err(e) => {
                        println!("error send {to}: {e}");
                        return;
                    }
                }
            }
        }
    }
}

/// Keeps `to`'s bulk queue full of 1 MiB frames until `stop`.
fn flood(handle: Handle, to: NodeId, stop: Arc<AtomicBool>) {
    let frame = Bytes::from(vec![0u8; 1 << 20]);
    while !stop.load(Ordering::Relaxed) {
        match handle.send(to, Class::Bulk, 0, frame.clone()) {
            Ok(()) => {}
            Err(SendError::Full(_)) => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => return,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = parse()?;
    let config = MeshConfig::default();
    let lanes = config.lanes;
    let tls = MeshTls::load(&args.ca, &args.cert, &args.key)?;
    let (handle, inbox, _thread) = rt::start(
        Settings { node: args.node, listen: args.listen, peers: args.peers, tls, data_dir: args.data, config },
        Arc::new(|| {}),
    )?;
    let started = Instant::now();
    println!("started {} {}", handle.me(), handle.boot());
    let per_run = streams(lanes).len() as u64 * args.frames;
    // Per sender run: next seq per (class, lane key), and frames received.
    let mut next: HashMap<(NodeId, Boot), HashMap<(u8, u64), u64>> = HashMap::new();
    let mut received: HashMap<(NodeId, Boot), u64> = HashMap::new();
    let mut senders: HashMap<NodeId, Arc<AtomicBool>> = HashMap::new();
    let mut last_stats = (0, 0);
    loop {
        let metrics = handle.metrics();
        let stats = (metrics.tls_refused.load(Ordering::Relaxed), metrics.counters.refused.load(Ordering::Relaxed));
        if stats != last_stats {
            println!("stats tls_refused={} refused={}", stats.0, stats.1);
            last_stats = stats;
        }
        let Some(event) = inbox.recv_timeout(Duration::from_millis(100)) else { continue };
        let ms = started.elapsed().as_millis();
        match event {
            Event::Up { node, boot } => println!("up {node} {boot} {ms}"),
            Event::Down { node, boot } => {
                println!("down {node} {boot} {ms}");
                if let Some(stop) = senders.remove(&node) {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            Event::Disconnected { node } => println!("disconnected {node} {ms}"),
            Event::IdInUse { by } => println!("in-use {by} {ms}"),
            Event::Connected { node, boot } => {
                println!("connected {node} {boot} {ms}");
                // One sender per run of a peer: a reconnect within a run goes on as it was.
                if let std::collections::hash_map::Entry::Vacant(slot) = senders.entry(node) {
                    let stop = slot.insert(Arc::new(AtomicBool::new(false))).clone();
                    if args.bulk_flood {
                        let (handle, stop) = (handle.clone(), stop.clone());
                        std::thread::spawn(move || flood(handle, node, stop));
                    }
                    let (handle, frames) = (handle.clone(), args.frames);
                    std::thread::spawn(move || send_all(handle, node, frames, lanes, stop));
                }
            }
            Event::Frame(inbound) if inbound.frame.len() == 1 << 20 => {
                // A flood frame: bulk, not numbered.
                let _ = inbound;
            }
            Event::Frame(inbound) => {
                let mut body = inbound.frame.clone();
                if body.len() < 19 {
                    println!("error short frame from {}", inbound.from);
                    continue;
                }
                let (src, class, lane_key, seq) = (body.get_u16(), body.get_u8(), body.get_u64(), body.get_u64());
                if src != inbound.from.0 || class as usize != inbound.class.index() {
                    println!("error frame claims {src}/{class}, came from {}/{:?}", inbound.from, inbound.class);
                    continue;
                }
                let run = (inbound.from, inbound.boot);
                let expected = next.entry(run).or_default().entry((class, lane_key)).or_insert(0);
                if seq != *expected {
                    println!(
                        "error order from {} {}: class {class} lane {lane_key}: got {seq}, expected {expected}",
                        run.0, run.1
                    );
                }
                *expected = seq + 1;
                let count = received.entry(run).or_insert(0);
                *count += 1;
                if *count == per_run {
                    println!("complete {} {} {ms}", run.0, run.1);
                }
            }
        }
    }
}
