//! Joining the backplane: the mesh started with the cluster's certificates ([`start`]), and
//! the thread that handles everything that arrives on it ([`run`]):
//!
//! - membership: a node up or down reaches the owner's subscriptions ([`super::fanout`]),
//!   the requests waiting on it ([`super::route`]), the edge's tracking
//!   ([`super::interest`]) and `welcome.nodes` ([`View`]);
//! - the cluster's [`Terms`], checked on every chosen connection;
//! - requests from other nodes, run by the same `ops::apply` a local request runs by, and
//!   answered on the request's lane; answers to this node's requests; owners' deliveries.

use super::terms::{self, Terms};
use super::wire::{self, Wire};
use super::{Cluster, View};
use crate::config::Config;
use crate::node::Node;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_backplane::mesh::Event;
use switchboard_backplane::rt::{Handle, Inbox};
use switchboard_backplane::{Class, NodeId};

/// How often requests past their deadline are answered `unavailable`.
const SWEEP_MS: u64 = 100;

/// How long a peer may refuse this node's id as held by a live earlier run before this node
/// gives up. A restart is refused only until its stateless reset has closed the earlier run's
/// connection at the peer (a moment), so refusals that go on this long mean a second process.
const ID_IN_USE_PATIENCE: Duration = Duration::from_secs(10);

/// Refusals further apart than this are separate episodes (the mesh redials within 2 s).
const ID_IN_USE_EPISODE_GAP: Duration = Duration::from_secs(5);

/// Peers refusing this node's id ([`Event::IdInUse`]): the first and the latest refusal of
/// each one's current episode. (A refusing peer with a higher id may still see the
/// connection chosen first, so being connected says nothing; only the refusals stopping do.)
#[derive(Default)]
struct InUse {
    episodes: std::collections::HashMap<NodeId, (Instant, Instant)>,
}

impl InUse {
    /// `by` refused again: how long it has been refusing.
    fn refused(&mut self, by: NodeId, now: Instant) -> Duration {
        let (first, last) = self.episodes.entry(by).or_insert((now, now));
        if now - *last > ID_IN_USE_EPISODE_GAP {
            *first = now;
        }
        *last = now;
        now - *first
    }
}

/// Joins the mesh with the cluster's certificates; what arrives waits in the [`Inbox`] for
/// [`run`].
pub fn start(config: &Config, cluster: &Cluster) -> Result<(Handle, Inbox), String> {
    let files = (&config.cluster_ca_file, &config.node_cert_file, &config.node_key_file);
    let (Some(ca), Some(cert), Some(key)) = files else { unreachable!("checked with the configuration") };
    let tls = switchboard_backplane::tls::MeshTls::load(ca, cert, key).map_err(|e| format!("backplane TLS: {e:#}"))?;
    let listen = config
        .backplane_listen
        .parse()
        .map_err(|e| format!("backplane_listen {:?}: not an address: {e}", config.backplane_listen))?;
    let settings = switchboard_backplane::rt::Settings {
        node: cluster.me,
        listen,
        peers: cluster.peers.iter().map(|p| (p.node, p.backplane)).collect(),
        tls,
        data_dir: config.data_dir.join("backplane"),
        config: switchboard_backplane::MeshConfig::default(),
    };
    let (handle, inbox, _thread) =
        switchboard_backplane::rt::start(settings, Arc::new(|| {})).map_err(|e| format!("backplane: {e:#}"))?;
    Ok((handle, inbox))
}

/// Starts the thread that handles what arrives, for good.
pub fn run(node: Arc<Node>, mesh: Handle, inbox: Inbox, terms: Terms, view: Arc<View>) -> Result<(), String> {
    std::thread::Builder::new()
        .name("cluster".into())
        .spawn(move || {
            let mut swept = Instant::now();
            let mut in_use = InUse::default();
            loop {
                if let Some(event) = inbox.recv_timeout(Duration::from_millis(SWEEP_MS)) {
                    handle(&node, &mesh, &terms, &view, &mut in_use, event);
                }
                if swept.elapsed() >= Duration::from_millis(SWEEP_MS) {
                    swept = Instant::now();
                    if let Some(router) = &node.router {
                        router.sweep(swept);
                    }
                }
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cluster thread: {e}"))
}

fn handle(node: &Arc<Node>, mesh: &Handle, terms: &Terms, view: &View, in_use: &mut InUse, event: Event) {
    match event {
        Event::Up { node: peer, boot } => {
            tracing::info!(node = %peer, %boot, "peer up");
            live_changed(node, mesh, Some(peer), None);
        }
        Event::Down { node: peer, boot } => {
            tracing::warn!(node = %peer, %boot, "peer down");
            view.forget(peer);
            if let Some(fanout) = &node.hub.fanout {
                fanout.subs.down(peer, boot);
            }
            if let Some(router) = &node.router {
                router.down(peer);
            }
            if let Some(registry) = &node.registry {
                registry.forget(&node.presence, peer, crate::node::now_ms());
            }
            live_changed(node, mesh, None, Some(peer));
        }
        // Every chosen connection starts with this node's terms. Frames written on the one
        // before may be lost: the users here are subscribed again, and the heads that come
        // back show any gap, which is then filled.
        Event::Connected { node: peer, .. } => {
            let _ = mesh.send(peer, Class::Control, 0, terms.encode());
            if let Some(interest) = &node.interest {
                interest.owner_connected(peer);
            }
        }
        Event::Frame(frame) => match wire::decode(&frame.frame) {
            Some(Ok(w)) => on_wire(node, frame.from, frame.boot, w),
            Some(Err(why)) => tracing::error!(node = %frame.from, "dropped a frame from another node: {why}"),
            None => on_terms(mesh, terms, view, frame.from, frame.boot, &frame.frame),
        },
        Event::Disconnected { .. } => {}
        Event::IdInUse { by } => {
            let refused_for = in_use.refused(by, Instant::now());
            tracing::warn!(node = %by, "node {by} holds a live earlier run of this node's id {}", mesh.me());
            if refused_for >= ID_IN_USE_PATIENCE {
                let why = format!(
                    "node id {} is in use: node {by} has refused it for {} s because it holds a live earlier run of \
                     node {} (another process started with this node_id); stop that process or give this one its own node_id",
                    mesh.me(),
                    refused_for.as_secs(),
                    mesh.me(),
                );
                tracing::error!("refusing to join the cluster: {why}");
                eprintln!("switchboard: refusing to join the cluster: {why}");
                std::process::exit(2);
            }
        }
    }
}

/// The live set changed: users whose registry entry moved are registered where it is now.
fn live_changed(node: &Arc<Node>, mesh: &Handle, up: Option<NodeId>, down: Option<NodeId>) {
    let (Some(registry), Some(interest)) = (&node.registry, &node.interest) else { return };
    let mut live: Vec<NodeId> = mesh.live().into_iter().map(|(n, _)| n).chain([mesh.me()]).chain(up).collect();
    live.retain(|n| Some(*n) != down);
    let moved = registry.set_live(live.clone(), &interest.users());
    for (user, old, new) in moved {
        use crate::node::request::Request;
        registry.tell(node, new, Request::Register { user: user.clone() });
        if live.contains(&old) {
            registry.tell(node, old, Request::Unregister { user, at_ms: crate::node::now_ms() });
        }
    }
}

fn on_wire(node: &Arc<Node>, from: NodeId, boot: switchboard_backplane::Boot, w: Wire) {
    let Some(router) = &node.router else { return };
    match w {
        Wire::Request { id, request } => {
            router.metrics.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let reply = router.answer_to(from, id, request.lane_key());
            crate::node::ops::apply(node, from, boot, request, reply);
        }
        Wire::Answer { id, result } => router.answered(from, id, result.map_err(Into::into)),
        Wire::Deliver(d) => {
            if let Some(interest) = &node.interest {
                interest.deliver(d);
            }
        }
    }
}

fn on_terms(mesh: &Handle, terms: &Terms, view: &View, from: NodeId, boot: switchboard_backplane::Boot, frame: &[u8]) {
    let Some(theirs) = Terms::decode(frame) else { return };
    if !theirs.client_url.is_empty() {
        view.set_client_url(from, theirs.client_url.clone());
    }
    if let Err(why) = terms.agree(&theirs, from.0) {
        if terms::leaves(mesh.boot(), boot) {
            tracing::error!("refusing to join the cluster: {why}");
            eprintln!("switchboard: refusing to join the cluster: {why}");
            std::process::exit(2);
        }
        tracing::error!("a node that disagrees joined, and will leave: {why}");
    }
}
