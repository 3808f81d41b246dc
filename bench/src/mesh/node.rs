//! One node of the `mesh` benchmark (`switchboard-bench mesh-node`, started by `mesh`): the
//! backplane, or the peer it is measured against (one TLS 1.3 TCP connection per pair), plus
//! an open-loop load of frames to both other nodes.
//!
//! It reads commands on stdin, one a line, and answers each on stdout:
//! `run RUN RATE_PER_PEER SECONDS START_UNIX_US BULK HISTOGRAM_FILE` sends
//! `RATE_PER_PEER × SECONDS` live frames to each peer on a fixed schedule from the start time
//! (and, with BULK = 1, 1 MiB bulk frames as fast as the transport takes them), waits for
//! what the peers send it, writes its latency histogram and prints one JSON line.

use super::{Transport, FRAME_BYTES};
use crate::host::process_cpu_s;
use anyhow::{bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_backplane::queue::SendError;
use switchboard_backplane::rt::now_unix_us;
use switchboard_backplane::tls::{node_name, MeshTls};
use switchboard_backplane::{Class, MeshConfig, NodeId};

const BULK_BYTES: usize = 1 << 20;

#[derive(clap::Args)]
pub struct NodeArgs {
    #[arg(long)]
    transport: String,
    #[arg(long)]
    node: u16,
    /// Every node's port, in node order (UDP for the mesh, TCP for the peer).
    #[arg(long, value_delimiter = ',')]
    ports: Vec<u16>,
    #[arg(long)]
    certs: PathBuf,
    #[arg(long)]
    data: PathBuf,
}

/// What the receiving side counts for the current run.
struct Recorder {
    run: AtomicU32,
    received: AtomicU64,
    bulk_bytes: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

impl Recorder {
    fn frame(&self, mut body: &[u8]) {
        if body.len() < 12 || body.get_u32() != self.run.load(Ordering::Acquire) {
            return;
        }
        let intended = body.get_u64();
        let now = now_unix_us();
        if let Ok(mut h) = self.latency.lock() {
            h.saturating_record(now.saturating_sub(intended).max(1));
        }
        self.received.fetch_add(1, Ordering::Release);
    }
}

fn live_frame(run: u32, intended_us: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(FRAME_BYTES);
    buf.put_u32(run);
    buf.put_u64(intended_us);
    buf.resize(FRAME_BYTES, b'x');
    buf.freeze()
}

/// How a node hands a frame to its transport: `Ok(false)` when the transport is full now.
trait Sender: Send + Sync {
    fn send(&self, to: NodeId, class: Class, lane_key: u64, frame: Bytes) -> anyhow::Result<bool>;
}

struct MeshSender(switchboard_backplane::rt::Handle);

impl Sender for MeshSender {
    fn send(&self, to: NodeId, class: Class, lane_key: u64, frame: Bytes) -> anyhow::Result<bool> {
        match self.0.send(to, class, lane_key, frame) {
            Ok(()) => Ok(true),
            Err(SendError::Full(_)) => Ok(false),
            Err(e) => bail!("send to {to}: {e}"),
        }
    }
}

pub fn run(a: NodeArgs) -> anyhow::Result<()> {
    let me = NodeId(a.node);
    let transport = Transport::parse(&a.transport)?;
    let peers: Vec<(NodeId, u16)> =
        a.ports.iter().enumerate().map(|(i, p)| (NodeId(i as u16 + 1), *p)).filter(|(n, _)| *n != me).collect();
    let tls = MeshTls::load_dir(&a.certs, me)?;
    let recorder = Arc::new(Recorder {
        run: AtomicU32::new(0),
        received: AtomicU64::new(0),
        bulk_bytes: AtomicU64::new(0),
        latency: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
    });
    let sender: Arc<dyn Sender> = match transport {
        Transport::Mesh => start_mesh(me, &a, &peers, tls, recorder.clone())?,
        Transport::TlsTcp => tcp::start(me, &a, &peers, tls, recorder.clone())?,
    };
    println!("ready");
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["run", run, rate, seconds, start, bulk, histogram] => {
                let (run, rate, seconds): (u32, f64, f64) = (run.parse()?, rate.parse()?, seconds.parse()?);
                let (start, bulk): (u64, bool) = (start.parse()?, *bulk == "1");
                one_run(&sender, &recorder, &peers, run, rate, seconds, start, bulk, histogram)?;
            }
            ["quit"] => break,
            _ => bail!("unknown command {line:?}"),
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn one_run(
    sender: &Arc<dyn Sender>,
    recorder: &Arc<Recorder>,
    peers: &[(NodeId, u16)],
    run: u32,
    rate: f64,
    seconds: f64,
    start_us: u64,
    bulk: bool,
    histogram: &str,
) -> anyhow::Result<()> {
    recorder.latency.lock().expect("histogram").reset();
    recorder.received.store(0, Ordering::Release);
    recorder.bulk_bytes.store(0, Ordering::Release);
    recorder.run.store(run, Ordering::Release);
    let per_peer = ((rate * seconds).ceil() as u64).max(1);
    let expected = per_peer * peers.len() as u64;
    let interval_us = 1e6 / rate;
    while now_unix_us() < start_us {
        std::thread::sleep(Duration::from_micros(200));
    }
    let cpu0 = process_cpu_s();
    let stop_bulk = Arc::new(AtomicBool::new(false));
    let bulk_thread = bulk.then(|| {
        let (sender, stop, targets) = (sender.clone(), stop_bulk.clone(), peers.to_vec());
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let frame = Bytes::from(vec![0u8; BULK_BYTES]);
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                for (to, _) in &targets {
                    if sender.send(*to, Class::Bulk, 0, frame.clone())? {
                        sent += 1;
                    } else {
                        std::thread::sleep(Duration::from_micros(500));
                    }
                }
            }
            Ok(sent)
        })
    });
    let mut full_waits = 0u64;
    for i in 0..per_peer {
        for (k, (to, _)) in peers.iter().enumerate() {
            // Peers' schedules interleave: each is offset by its share of the interval.
            let intended = start_us + (interval_us * (i as f64 + k as f64 / peers.len() as f64)) as u64;
            let now = now_unix_us();
            if now < intended {
                std::thread::sleep(Duration::from_micros(intended - now));
            }
            let frame = live_frame(run, intended);
            while !sender.send(*to, Class::Live, i, frame.clone())? {
                full_waits += 1;
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }
    // Bulk runs while the live schedule does; what it delivered in that time is its rate.
    stop_bulk.store(true, Ordering::Relaxed);
    let bulk_sent = match bulk_thread {
        Some(t) => t.join().expect("bulk thread")?,
        None => 0,
    };
    let bulk_bytes = recorder.bulk_bytes.load(Ordering::Acquire);
    // What the peers send us: wait until it is all here, or a drain deadline passes.
    let deadline = now_unix_us() + 5_000_000;
    while recorder.received.load(Ordering::Acquire) < expected && now_unix_us() < deadline {
        std::thread::sleep(Duration::from_micros(500));
    }
    let cpu1 = process_cpu_s();
    let received = recorder.received.load(Ordering::Acquire);
    let latency = recorder.latency.lock().expect("histogram").clone();
    let mut out = Vec::new();
    use hdrhistogram::serialization::Serializer as _;
    hdrhistogram::serialization::V2Serializer::new()
        .serialize(&latency, &mut out)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    std::fs::write(histogram, out).with_context(|| format!("writing {histogram}"))?;
    println!(
        "{}",
        serde_json::json!({
            "received": received,
            "expected": expected,
            "cpu_s": cpu1 - cpu0,
            "full_waits": full_waits,
            "bulk_sent": bulk_sent,
            "bulk_bytes_received": bulk_bytes,
        })
    );
    Ok(())
}

fn start_mesh(
    me: NodeId,
    a: &NodeArgs,
    peers: &[(NodeId, u16)],
    tls: MeshTls,
    recorder: Arc<Recorder>,
) -> anyhow::Result<Arc<dyn Sender>> {
    use switchboard_backplane::mesh::Event;
    let listen: SocketAddr = format!("127.0.0.1:{}", a.ports[me.0 as usize - 1]).parse()?;
    let peer_addrs =
        peers.iter().map(|(n, p)| Ok((*n, format!("127.0.0.1:{p}").parse()?))).collect::<anyhow::Result<_>>()?;
    let settings = switchboard_backplane::rt::Settings {
        node: me,
        listen,
        peers: peer_addrs,
        tls,
        data_dir: a.data.clone(),
        config: MeshConfig::default(),
    };
    let (handle, inbox, _thread) = switchboard_backplane::rt::start(settings, Arc::new(|| {}))?;
    let (connected_tx, connected_rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || loop {
        let Some(event) = inbox.recv_timeout(Duration::from_secs(1)) else { continue };
        match event {
            Event::Frame(f) if f.class == Class::Bulk => {
                recorder.bulk_bytes.fetch_add(f.frame.len() as u64, Ordering::Relaxed);
            }
            Event::Frame(f) => recorder.frame(&f.frame),
            Event::Connected { node, .. } => {
                let _ = connected_tx.send(node);
            }
            Event::Down { node, .. } => eprintln!("mesh-node {me}: node {node} declared down"),
            _ => {}
        }
    });
    let mut connected = std::collections::BTreeSet::new();
    while connected.len() < peers.len() {
        let node = connected_rx.recv_timeout(Duration::from_secs(30)).context("peers never connected")?;
        connected.insert(node);
    }
    Ok(Arc::new(MeshSender(handle)))
}

/// The peer: one TLS 1.3 TCP connection per pair (rustls, through tokio-rustls), frames
/// u32-length-prefixed with a class byte, written through a 64 KiB buffer flushed when the
/// writer's queue is empty: the simplest design the mesh competes with.
mod tcp {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
    use tokio::sync::mpsc;

    /// Bytes waiting per connection before `send` says full: the mesh's three queue limits
    /// together, so both transports buffer alike.
    const QUEUE_BYTES_MAX: usize = 25 << 20;

    struct Link {
        tx: mpsc::UnboundedSender<(Class, Bytes)>,
        queued: Arc<std::sync::atomic::AtomicUsize>,
    }

    struct TcpSender {
        links: std::collections::BTreeMap<NodeId, Link>,
    }

    impl Sender for TcpSender {
        fn send(&self, to: NodeId, class: Class, _lane_key: u64, frame: Bytes) -> anyhow::Result<bool> {
            let link = self.links.get(&to).context("no link")?;
            let len = frame.len();
            if link.queued.fetch_add(len, Ordering::AcqRel) + len > QUEUE_BYTES_MAX {
                link.queued.fetch_sub(len, Ordering::AcqRel);
                return Ok(false);
            }
            if link.tx.send((class, frame)).is_err() {
                bail!("link to {to} closed");
            }
            Ok(true)
        }
    }

    pub(super) fn start(
        me: NodeId,
        a: &NodeArgs,
        peers: &[(NodeId, u16)],
        tls: MeshTls,
        recorder: Arc<Recorder>,
    ) -> anyhow::Result<Arc<dyn Sender>> {
        let port = a.ports[me.0 as usize - 1];
        let peers = peers.to_vec();
        let (links_tx, links_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let result = rt.block_on(serve(me, port, peers, tls, recorder, links_tx));
            if let Err(e) = result {
                eprintln!("mesh-node {me} (tls-tcp): {e:#}");
            }
        });
        let links = links_rx.recv_timeout(Duration::from_secs(30)).context("peers never connected")?;
        Ok(Arc::new(TcpSender { links }))
    }

    async fn serve(
        me: NodeId,
        port: u16,
        peers: Vec<(NodeId, u16)>,
        tls: MeshTls,
        recorder: Arc<Recorder>,
        links_tx: std::sync::mpsc::Sender<std::collections::BTreeMap<NodeId, Link>>,
    ) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
        let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
        let mut links = std::collections::BTreeMap::new();
        // The lower node dials; the higher accepts and learns who from the first two bytes.
        for (peer, peer_port) in peers.iter().filter(|(p, _)| *p > me) {
            let tcp = loop {
                match tokio::net::TcpStream::connect(("127.0.0.1", *peer_port)).await {
                    Ok(tcp) => break tcp,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from(node_name(*peer))?;
            let mut stream = connector.connect(name, tcp).await?;
            stream.write_u16(me.0).await?;
            stream.flush().await?;
            links.insert(*peer, link(stream, recorder.clone()));
        }
        for _ in peers.iter().filter(|(p, _)| *p < me) {
            let (tcp, _) = listener.accept().await?;
            tcp.set_nodelay(true)?;
            let mut stream = acceptor.accept(tcp).await?;
            let peer = NodeId(stream.read_u16().await?);
            links.insert(peer, link(stream, recorder.clone()));
        }
        links_tx.send(links).ok();
        std::future::pending::<()>().await;
        Ok(())
    }

    fn link<S>(stream: S, recorder: Arc<Recorder>) -> Link
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::unbounded_channel::<(Class, Bytes)>();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let written = queued.clone();
        tokio::spawn(async move {
            let mut w = BufWriter::with_capacity(64 * 1024, write);
            while let Some((class, frame)) = rx.recv().await {
                let mut next = Some((class, frame));
                while let Some((class, frame)) = next.take() {
                    if w.write_u32(frame.len() as u32 + 1).await.is_err()
                        || w.write_u8(class.index() as u8).await.is_err()
                        || w.write_all(&frame).await.is_err()
                    {
                        return;
                    }
                    written.fetch_sub(frame.len(), Ordering::AcqRel);
                    next = rx.try_recv().ok();
                }
                if w.flush().await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let mut r = BufReader::with_capacity(64 * 1024, read);
            let mut body = vec![0u8; BULK_BYTES + 1];
            loop {
                let Ok(len) = r.read_u32().await else { return };
                let len = len as usize;
                if len == 0 || len > body.len() || r.read_exact(&mut body[..len]).await.is_err() {
                    return;
                }
                if body[0] == Class::Bulk.index() as u8 {
                    recorder.bulk_bytes.fetch_add(len as u64 - 1, Ordering::Relaxed);
                } else {
                    recorder.frame(&body[1..len]);
                }
            }
        });
        Link { tx, queued }
    }
}
