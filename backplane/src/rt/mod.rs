//! The shell: the quinn endpoint on a thread of its own (a current-thread tokio runtime),
//! meeting the rest of the process only through bounded queues.
//!
//! - [`Handle::send`] runs on any thread and never waits: it reserves room on the peer's
//!   [`Depth`] (or learns "full", "down", "too large" at once) and hands the frame over.
//! - What arrives waits in the [`Inbox`], bounded in bytes per class; when a class is full
//!   the mesh stops reading those streams and QUIC's flow control holds the sender, whose
//!   queue then fills and whose `send` says so. A wakeup the caller provides is called
//!   after each arrival, as a shard's inbox wakes its loop.

mod driver;
pub mod metrics;

use crate::class::Class;
use crate::config::MeshConfig;
use crate::ids::{Boot, NodeId};
use crate::mesh::{Event, Inbound};
use crate::queue::{Depth, Queued, SendError};
use crate::tls::{write_private, MeshTls};
use anyhow::Context;
use bytes::Bytes;
use metrics::Metrics;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// What a node needs to join the mesh.
pub struct Settings {
    pub node: NodeId,
    pub listen: SocketAddr,
    /// Every other node and where it listens.
    pub peers: Vec<(NodeId, SocketAddr)>,
    pub tls: MeshTls,
    /// Holds the stateless-reset key and the last boot id.
    pub data_dir: PathBuf,
    pub config: MeshConfig,
}

/// Called after something arrives in the inbox (from the mesh thread).
pub type Wake = Arc<dyn Fn() + Send + Sync>;

enum Command {
    Send { node: NodeId, class: Class, lane_key: u64, item: Queued },
    Stop,
}

struct Shared {
    config: MeshConfig,
    me: NodeId,
    boot: Boot,
    depths: BTreeMap<NodeId, Arc<Depth>>,
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    live: Mutex<Vec<(NodeId, Boot)>>,
    metrics: Arc<Metrics>,
}

/// The sending side of the mesh; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

/// Microseconds since the epoch: the stamp a frame goes out with.
pub fn now_unix_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

impl Handle {
    /// Queues `frame` for `node`; see [`crate::mesh::Mesh::send`]. Never waits.
    pub fn send(&self, node: NodeId, class: Class, lane_key: u64, frame: Bytes) -> Result<(), SendError> {
        let shared = &*self.shared;
        let depth = shared.depths.get(&node).ok_or(SendError::UnknownNode)?;
        depth.admit(class, frame.len(), &shared.config)?;
        let item = Queued { frame, stamp: now_unix_us() };
        if let Err(refused) = shared.commands.send(Command::Send { node, class, lane_key, item }) {
            // The mesh thread is gone: nothing will ever drain this reservation's queue.
            if let Command::Send { item, .. } = refused.0 {
                depth.release(class, item.frame.len());
            }
            return Err(SendError::Down);
        }
        Ok(())
    }

    pub fn me(&self) -> NodeId {
        self.shared.me
    }

    pub fn boot(&self) -> Boot {
        self.shared.boot
    }

    /// The nodes SWIM holds alive now, with their runs.
    pub fn live(&self) -> Vec<(NodeId, Boot)> {
        self.shared.live.lock().expect("live view").clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Closes every connection and ends the mesh thread.
    pub fn stop(&self) {
        let _ = self.shared.commands.send(Command::Stop);
    }
}

/// What arrives: members up and down, connections, frames. Bounded in bytes per class.
pub struct Inbox {
    rx: crossbeam_channel::Receiver<Event>,
    budgets: Arc<Budgets>,
}

/// Bytes each class may have waiting in the inbox.
pub(crate) struct Budgets {
    pub(crate) classes: [tokio::sync::Semaphore; 3],
}

impl Budgets {
    /// Permits are counted in bytes; a frame of `len` takes `len` at least one.
    pub(crate) fn permits(len: usize) -> u32 {
        len.max(1) as u32
    }
}

impl Inbox {
    pub fn try_recv(&self) -> Option<Event> {
        self.taken(self.rx.try_recv().ok()?)
    }

    /// Waits up to `timeout` for the next arrival (for threads with nothing else to do).
    pub fn recv_timeout(&self, timeout: std::time::Duration) -> Option<Event> {
        self.taken(self.rx.recv_timeout(timeout).ok()?)
    }

    /// A frame taken out gives its bytes back to its class's budget.
    fn taken(&self, event: Event) -> Option<Event> {
        if let Event::Frame(Inbound { class, frame, .. }) = &event {
            self.budgets.classes[class.index()].add_permits(Budgets::permits(frame.len()) as usize);
        }
        Some(event)
    }
}

/// Joins the mesh: binds the endpoint, starts the mesh thread, dials every peer.
pub fn start(settings: Settings, wake: Wake) -> anyhow::Result<(Handle, Inbox, std::thread::JoinHandle<()>)> {
    settings.config.check().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&settings.data_dir).with_context(|| format!("creating {}", settings.data_dir.display()))?;
    let reset_key = reset_key(&settings.data_dir)?;
    let boot = next_boot(&settings.data_dir)?;
    let socket = std::net::UdpSocket::bind(settings.listen)
        .with_context(|| format!("binding the backplane to {}", settings.listen))?;
    let (commands, commands_rx) = tokio::sync::mpsc::unbounded_channel();
    let (tx, rx) = crossbeam_channel::unbounded();
    let budgets = Arc::new(Budgets {
        classes: Class::ALL.map(|c| tokio::sync::Semaphore::new(settings.config.inbox_bytes_max(c))),
    });
    let mut driver = driver::Driver::new(settings, boot, socket, &reset_key, tx, budgets.clone(), wake, commands_rx)?;
    let shared = Arc::new(Shared {
        config: driver.config().clone(),
        me: driver.me(),
        boot,
        depths: driver.depths(),
        commands,
        live: Mutex::new(Vec::new()),
        metrics: driver.metrics(),
    });
    driver.set_shared(shared.clone());
    let thread = std::thread::Builder::new().name("backplane".into()).spawn(move || driver.run())?;
    Ok((Handle { shared }, Inbox { rx, budgets }, thread))
}

/// The stateless-reset key, kept in the data folder: a restarted node answers packets of
/// its earlier run's connections with resets its peers can verify, so they drop those
/// connections at once instead of after the idle timeout.
fn reset_key(dir: &Path) -> anyhow::Result<[u8; 32]> {
    let path = dir.join("backplane.reset-key");
    if let Ok(bytes) = std::fs::read(&path) {
        return bytes.try_into().map_err(|_| anyhow::anyhow!("{} is not 32 bytes", path.display()));
    }
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    write_private(&path, &key)?;
    Ok(key)
}

/// A boot id later than any before it from this data folder.
fn next_boot(dir: &Path) -> anyhow::Result<Boot> {
    let path = dir.join("backplane.boot");
    let last = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
    let boot = now_unix_us().max(last + 1);
    write_private(&path, boot.to_string().as_bytes())?;
    Ok(Boot(boot))
}
