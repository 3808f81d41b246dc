//! Starting and stopping a node: the store shards, the edge shards with their listeners, and
//! the drain on SIGTERM. The `switchboard` binary is a thin shell over [`start`].

use crate::auth::{dev_secret, Verifier};
use crate::cluster::{identity, Cluster, Role};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::node::mailbox::mailbox;
use crate::node::{Hub, Node, ShardEvent};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use switchboard_store::log::{recovery_helpers_pay, Fsync, LogConfig};
use switchboard_store::rt::{self, DriverKind};
use switchboard_store::{Retention, ShardConfig};

/// Jobs waiting per store shard; past it a request is answered `unavailable`.
const STORE_QUEUE_MAX: usize = 65_536;
/// Events waiting per edge shard; past it store threads wait (the shard is stuck).
const SHARD_INBOX_MAX: usize = 1 << 16;

/// A running node.
pub struct Daemon {
    pub addr: SocketAddr,
    /// `wss`/`https` or `ws`/`http`.
    pub tls: bool,
    pub data_dir: PathBuf,
    /// The development secret was created by this start (the operator needs to hear of it).
    pub dev_secret_created: bool,
    /// For a node of a cluster: its id, backplane address and peers, for the operator.
    pub cluster_line: Option<String>,
    /// The QUIC listener's address and development certificate, when it runs.
    pub quic: Option<crate::quic::Info>,
    node: Arc<Node>,
    shards: Vec<JoinHandle<()>>,
    stores: Vec<JoinHandle<()>>,
    quic_endpoint: Option<crate::quic::endpoint::Handle>,
}

/// The token verifier; the generated development secret when tokens are checked with it (the
/// chat page's development sign-in mints with it); whether this start created that secret.
fn verifier(config: &Config) -> Result<(Verifier, Option<Vec<u8>>, bool), String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let (v, dev, created) = match config.jwt_algorithm.as_str() {
        "HS256" => match &config.jwt_secret_file {
            Some(p) => (Verifier::hs256(String::from_utf8_lossy(&read(p)?).trim().as_bytes()), None, false),
            None => {
                let (secret, created) = dev_secret(&config.data_dir).map_err(|e| format!("development secret: {e}"))?;
                (Verifier::hs256(&secret), Some(secret), created)
            }
        },
        alg => {
            let path = config.jwt_public_key_file.as_deref().ok_or("a public key file is required")?;
            let pem = read(path)?;
            let v = if alg == "EdDSA" { Verifier::ed25519_pem(&pem) } else { Verifier::es256_pem(&pem) };
            (v.map_err(|e| format!("{}: {e}", path.display()))?, None, false)
        }
    };
    let v = match &config.jwt_issuer {
        Some(i) => v.with_issuer(i),
        None => v,
    };
    let v = match &config.jwt_audience {
        Some(a) => v.with_audience(a),
        None => v,
    };
    Ok((v, dev, created))
}

/// The number of store shards is fixed when the data folder is created: conversations are
/// placed by hashing over it. Later starts read it back, whatever `--shards` says.
fn store_shards(data_dir: &Path, wanted: usize) -> Result<usize, String> {
    let dir = data_dir.join("store");
    let file = dir.join("SHARDS");
    match std::fs::read_to_string(&file) {
        Ok(s) => s.trim().parse().map_err(|_| format!("{}: not a number", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            std::fs::write(&file, format!("{wanted}\n")).map_err(|e| format!("{}: {e}", file.display()))?;
            Ok(wanted)
        }
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
}

fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    // Accepted sockets inherit it: a direct descriptor cannot be given options by syscall,
    // and without it Nagle's algorithm meets delayed acks and small frames wait 40 ms.
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(crate::shard::driver::LISTEN_BACKLOG as i32)?;
    Ok(s.into())
}

/// Opens the store, starts every shard and listens. Returns once clients can connect.
pub fn start(config: Config) -> Result<Daemon, String> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let pin = config.pin_threads;
    let shards = if config.shards == 0 { cores } else { config.shards };
    let addr: SocketAddr =
        config.listen.parse().map_err(|e| format!("listen {:?}: not an address: {e}", config.listen))?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| format!("{}: {e}", config.data_dir.display()))?;
    let cluster = Cluster::from_config(&config)?;
    identity::check_or_record(&config.data_dir, config.node_id, config.partitions)?;
    let (verifier, dev_secret, dev_secret_created) = verifier(&config)?;
    // An edge-only node holds no store: every conversation is another node's.
    let store_count = if cluster.role.holds_store() { store_shards(&config.data_dir, shards)? } else { 0 };

    let log = LogConfig {
        segment_bytes_max: config.segment_bytes_max,
        // The shards recover at once (below): helper threads only where cores are left over.
        recovery_helpers: recovery_helpers_pay(store_count),
        fsync: if config.fsync == "never" { Fsync::Never } else { Fsync::Always },
        ..LogConfig::default()
    };
    let retention = Retention {
        age_ms_max: (config.retention_age_ms > 0).then_some(config.retention_age_ms),
        bytes_max: (config.retention_bytes_max > 0).then_some(config.retention_bytes_max),
    };
    let store_config = ShardConfig { log, retention, ..ShardConfig::default() };
    // The shards recover their logs at once, a thread each: a restart takes as long as the
    // largest shard, not the sum of them.
    let opened = std::thread::scope(|threads| {
        let opening: Vec<_> = (0..store_count)
            .map(|i| {
                let (dir, store_config) = (config.data_dir.join("store").join(i.to_string()), store_config.clone());
                threads.spawn(move || {
                    rt::spawn(&dir, store_config, STORE_QUEUE_MAX, pin.then_some(i % cores), DriverKind::Uring)
                        .map_err(|e| format!("store shard {i} ({}): {e}", dir.display()))
                })
            })
            .collect();
        opening.into_iter().map(|o| o.join().expect("a store shard's recovery panicked")).collect::<Result<Vec<_>, _>>()
    })?;
    let (mut store_handles, mut store_threads) = (Vec::new(), Vec::new());
    for (handle, thread, _) in opened {
        store_handles.push(handle);
        store_threads.push(thread);
    }

    // Every shard's listener shares the port (SO_REUSEPORT), which would also let a second
    // daemon share it silently and take half the connections: refuse a port that answers.
    // (A bind probe would also trip over the sockets a killed predecessor left closing.)
    // A predecessor that was just killed can keep answering for a moment (its io_uring is
    // torn down after the process), so only a port that keeps answering is refused.
    if addr.port() != 0 {
        let answers = || std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)).is_ok();
        let mut tries = 0;
        while answers() {
            tries += 1;
            if tries == 20 {
                return Err(format!("listen on {addr}: another process is listening there"));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let first = listener(addr).map_err(|e| format!("listen on {addr}: {e}"))?;
    let addr = first.local_addr().map_err(|e| e.to_string())?;
    let mut listeners = vec![first];
    for _ in 1..shards {
        listeners.push(listener(addr).map_err(|e| format!("listen on {addr}: {e}"))?);
    }

    // A store node serves no clients, so it opens no QUIC listener either.
    let quic = if cluster.role == Role::Store { None } else { crate::quic::bind(&config)? };

    let mesh = if cluster.is_single() { None } else { Some(crate::cluster::join::start(&config, &cluster)?) };
    let (postboxes, mailboxes): (Vec<_>, Vec<_>) = (0..shards).map(|_| mailbox::<ShardEvent>(SHARD_INBOX_MAX)).unzip();
    let hub = Arc::new(Hub {
        me: cluster.me.0,
        shards: postboxes,
        metrics: Metrics::new(shards, store_count),
        receipts_fanout_max: config.receipts_fanout_max,
        fanout: mesh.as_ref().map(|(m, _)| Arc::new(crate::cluster::fanout::Fanout::new(m.clone(), store_count))),
    });
    let tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(Arc::new(crate::shard::transport::server_config(cert, key)?)),
        _ => None,
    };
    let name = format!("{}:{}", hostname(), addr.port());
    let data_dir = config.data_dir.clone();
    let view = Arc::new(crate::cluster::View::default());
    // A store node serves no clients, so the others do not offer it in `welcome.nodes`.
    let serves_clients = cluster.role != Role::Store;
    let client_url = if serves_clients {
        format!("{}://{addr}/v1/ws", if tls.is_some() { "wss" } else { "ws" })
    } else {
        String::new()
    };
    let router = mesh.as_ref().map(|(m, _)| {
        let placement = crate::cluster::placement::Placement::new(cluster.partitions, &cluster.store_nodes());
        Arc::new(crate::cluster::route::Router::new(m.clone(), placement, cluster.store_nodes()))
    });
    let interest = router.as_ref().map(|r| Arc::new(crate::cluster::interest::Interest::new(hub.clone(), r.clone())));
    let cluster_line = (!cluster.is_single()).then(|| {
        let peers: Vec<String> = cluster.peers.iter().map(|p| format!("{}@{}", p.node, p.backplane)).collect();
        format!(
            "node {} of a cluster (role {}, {} partitions): backplane on udp://{}, peers {}",
            cluster.me,
            cluster.role.name(),
            cluster.partitions,
            config.backplane_listen,
            if peers.is_empty() { "none".to_string() } else { peers.join(", ") }
        )
    });
    let presence_dir = config.data_dir.join("presence");
    let presence = crate::node::presence::Presence::open(&presence_dir)
        .map_err(|e| format!("last-seen in {}: {e}", presence_dir.display()))?;
    let mut node = Node::new(config, name, verifier, store_handles, hub, presence);
    node.tls = tls;
    node.quic = quic.as_ref().map(|q| q.info.clone());
    node.serves_clients = serves_clients;
    node.dev_secret = dev_secret;
    node.backplane = mesh.as_ref().map(|(m, _)| m.clone());
    node.cluster_view = view.clone();
    node.registry = router.as_ref().map(|r| Arc::new(crate::cluster::registry::Registry::new(r.me())));
    node.router = router;
    node.interest = interest;
    let node = Arc::new(node);
    if let Some((m, inbox)) = mesh {
        let terms = crate::cluster::terms::Terms::of(&cluster, client_url);
        crate::cluster::join::run(node.clone(), m, inbox, terms, view)?;
    }
    let mut threads = Vec::new();
    for (i, (mailbox, listener)) in mailboxes.into_iter().zip(listeners).enumerate() {
        let node = node.clone();
        let thread = std::thread::Builder::new()
            .name(format!("shard-{i}"))
            .spawn(move || {
                if pin {
                    rt::pin_to_core(i % cores);
                }
                crate::shard::run(i as u16, node, mailbox, listener)
            })
            .map_err(|e| format!("shard thread: {e}"))?;
        threads.push(thread);
    }
    let quic_info = node.quic.clone();
    let quic_endpoint = match quic {
        Some(listener) => Some(crate::quic::endpoint::spawn(listener, node.clone())?),
        None => None,
    };
    let tls = node.tls.is_some();
    Ok(Daemon {
        addr,
        tls,
        data_dir,
        dev_secret_created,
        cluster_line,
        quic: quic_info,
        node,
        shards: threads,
        stores: store_threads,
        quic_endpoint,
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "node".into())
}

impl Daemon {
    /// The development secret, when tokens are checked with it (none configured).
    pub fn dev_secret(&self) -> Option<&[u8]> {
        self.node.dev_secret.as_deref()
    }

    /// Stops accepting; every client hears `reconnect` (after a random delay up to
    /// `spread_ms`, so that they do not all come back at once) and a 4010 close.
    pub fn drain(&self, spread_ms: u64) {
        self.node.draining.store(true, Ordering::Relaxed);
        for p in &self.node.hub.shards {
            p.post(ShardEvent::Drain { after_ms: rand::random::<u64>() % spread_ms.max(1) });
        }
    }

    /// Waits for the shards to finish, then for the store to commit what it holds.
    pub fn wait(self) {
        for t in self.shards {
            let _ = t.join();
        }
        if let Some(endpoint) = self.quic_endpoint {
            endpoint.stop();
        }
        // Tasks of the finished shards may still hold the node; stop the store threads
        // explicitly once the jobs they hold are committed.
        for store in &self.node.stores {
            store.stop();
        }
        if let Some(backplane) = &self.node.backplane {
            backplane.stop();
        }
        self.node.presence.close();
        drop(self.node);
        for t in self.stores {
            let _ = t.join();
        }
    }
}
