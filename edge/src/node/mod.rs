//! What the shards of one process share: the store shards (the conversations' sequencers),
//! the shards' inboxes, presence, metrics, and the settings every connection needs.
//!
//! Data flows one way around a loop with no locks on it:
//!
//! 1. A connection's shard turns a client frame into a [`request::Request`] and hands it to
//!    [`Node::call`], without waiting: [`ops::apply`] turns it into a job for the
//!    conversation's store shard (`router::shard_for`), here or, for a conversation another
//!    node owns, on that node (`crate::cluster::route` carries it there and back).
//! 2. The store thread stages it, commits the group (write + fsync), and only then runs the
//!    job's finisher: durable first, delivered second.
//! 3. The finisher posts the fan-out ([`Delivery`], encoded once per encoding) to every
//!    shard's inbox and to each subscribed node (`crate::cluster::fanout`), then the answer to
//!    the requester, in commit order, which is seq order: each connection sees a
//!    conversation's messages in order.

pub mod mailbox;
pub mod ops;
pub mod owner;
pub mod presence;
pub mod request;

use crate::auth::Verifier;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::session::SessionLimits;
use bytes::Bytes;
use mailbox::Postbox;
use presence::Presence;
use request::Origin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use switchboard_store::rt::ShardHandle;
use switchboard_store::storage::FsStorage;
use switchboard_store::{ConvId, InboxEntry, MemberSet, RangePage};

/// One connection, anywhere in the process: its shard, its slot there, and the slot's
/// generation (so an answer for a connection that is gone never reaches its slot's next user).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ConnRef {
    pub shard: u16,
    pub slot: u32,
    pub generation: u32,
}

/// What a shard's inbox carries.
pub enum ShardEvent {
    /// The answer to one connection's request.
    Answer(ConnRef, Answer),
    /// Frames for every local connection of the audience.
    Deliver(Arc<Delivery>),
    /// Close every local connection of these users with this code: they missed messages
    /// that could not be filled, and resync after reconnecting.
    Evict { users: Arc<MemberSet>, code: u16, reason: &'static str },
    /// Stop accepting, tell every client to reconnect elsewhere, and close.
    Drain { after_ms: u64 },
    /// News of a QUIC connection from the endpoint thread.
    Quic(crate::quic::link::QuicEvent),
}

/// Answers to a connection's requests, encoded by the connection's shard in its encoding.
#[derive(Debug)]
pub enum Answer {
    Ack {
        id: String,
        conv: ConvId,
        seq: u64,
        ts: u64,
        dup: bool,
        started: Instant,
    },
    Error {
        error: ops::OpError,
        id: Option<String>,
        req: Option<String>,
    },
    Synced {
        conv: ConvId,
        page: RangePage,
        req: Option<String>,
    },
    /// One store shard's part of an `inbox`; the connection's shard gathers them.
    InboxPart {
        request: u64,
        entries: Result<Vec<InboxEntry>, ops::OpError>,
    },
    /// `open` was allowed: start full pushes of this channel.
    Opened {
        conv: ConvId,
    },
    /// A frame made elsewhere (a `presence` answer), encoded.
    Frame {
        bytes: Bytes,
        name: &'static str,
    },
    /// The connection's `welcome`, encoded, sent once the cluster has subscribed the user;
    /// what was held for the connection meanwhile follows it.
    Welcome(Bytes),
    /// A request that has no answer on success (`receipt`, `typing`) is done.
    Done,
    /// A REST request's answer (`close`: the client asked to close after it).
    Rest {
        finish: crate::shard::http::Finish,
        close: bool,
    },
}

/// How a delivery reaches a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Reach {
    /// Every connection of every member (dm and group messages, receipts, typing, joined/left).
    Everyone,
    /// A channel message: full push where the channel is open, a coalesced `notify` of `head`
    /// everywhere else.
    Channel { head: u64 },
}

/// A frame for many connections, encoded once per encoding and shared by all of them.
#[derive(Debug)]
pub struct Delivery {
    pub conv: Box<str>,
    pub audience: Arc<MemberSet>,
    /// The connection the message came from, which does not get it back.
    pub except: Option<Origin>,
    /// The client id of a message whose sending connection is not known (an edge's gap
    /// repair read it from the store): the connection that sent it knows it by this id, and
    /// does not get it back either.
    pub sent_as: Option<Box<str>>,
    pub reach: Reach,
    /// The frame type, for metrics.
    pub frame: &'static str,
    pub json: Bytes,
    pub bin: Bytes,
    /// When the append began (for the delivery latency histogram).
    pub started: Option<Instant>,
    /// The message's seq (0 for frames that are not messages): other nodes fill gaps by it.
    pub seq: u64,
    /// Who it is for, as other nodes must know it (`crate::cluster::fanout`).
    pub addressed: Addressed,
}

/// Who a delivery is for, beyond its `audience`: what the nodes subscribed to the
/// conversation need to keep their own list of its members connected there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addressed {
    /// The conversation's members, unchanged.
    Members,
    /// The conversation is new: every member of the audience joined.
    Created,
    /// A member change, delivered to the members as of it.
    Change { user: Box<str>, added: bool },
    /// One user's connections, wherever they are (`joined`, `left`).
    User(Box<str>),
}

/// Where store threads send what they produce; cloned into every job's finisher. Holds no
/// store handle, so that the store threads can finish once the shards are gone.
pub struct Hub {
    /// This node's id (0 for a single node), which [`Origin`]s are compared with.
    pub me: u16,
    pub shards: Vec<Postbox<ShardEvent>>,
    pub metrics: Metrics,
    pub receipts_fanout_max: usize,
    /// The nodes subscribed to this node's conversations, on a node of a cluster.
    pub fanout: Option<Arc<crate::cluster::fanout::Fanout>>,
}

impl Hub {
    pub fn answer(&self, to: ConnRef, answer: Answer) {
        self.shards[to.shard as usize].post(ShardEvent::Answer(to, answer));
    }

    /// Delivers what store shard `store` committed: to this node's connections, and to the
    /// other nodes subscribed to the conversation.
    pub fn deliver(&self, store: usize, delivery: Delivery) {
        if let Some(fanout) = &self.fanout {
            fanout.deliver(store, &delivery);
        }
        self.deliver_here(delivery);
    }

    /// Delivers to this node's connections only.
    pub fn deliver_here(&self, delivery: Delivery) {
        let d = Arc::new(delivery);
        for s in &self.shards {
            s.post(ShardEvent::Deliver(d.clone()));
        }
    }

    /// The connection of `except` if it is on this node.
    pub fn local(&self, except: Option<Origin>) -> Option<ConnRef> {
        except.filter(|o| o.node == self.me).map(|o| o.conn)
    }
}

pub type Store = ShardHandle<FsStorage>;

/// The process-wide state every shard holds an `Arc` of.
pub struct Node {
    pub config: Config,
    /// This node's name in `welcome`.
    pub name: String,
    pub verifier: Verifier,
    pub limits: SessionLimits,
    pub stores: Vec<Store>,
    pub hub: Arc<Hub>,
    pub presence: Presence,
    pub draining: AtomicBool,
    /// Whether `/metrics` may be read without an admin token (a loopback or private listener).
    pub metrics_open: bool,
    /// False on a node of role `store`: its listener answers `/healthz`, `/readyz` and
    /// `/metrics` only.
    pub serves_clients: bool,
    /// The development secret the node generated, when tokens are checked with it (no secret
    /// or public key configured): only then does `POST /dev/token` mint tokens for any name.
    pub dev_secret: Option<Vec<u8>>,
    /// `wss://` and `https://` when a certificate is configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The QUIC listener, unless `quic_listen` is empty.
    pub quic: Option<crate::quic::Info>,
    /// The backplane, on a node of a cluster (`node_id` set).
    pub backplane: Option<switchboard_backplane::rt::Handle>,
    /// The other live nodes, as far as this one knows them.
    pub cluster_view: Arc<crate::cluster::View>,
    /// Where requests for other nodes' conversations go, on a node of a cluster.
    pub router: Option<Arc<crate::cluster::route::Router>>,
    /// The conversations of this node's users that other nodes own, on a node of a cluster.
    pub interest: Option<Arc<crate::cluster::interest::Interest>>,
    /// Who is connected where, for presence, on a node of a cluster.
    pub registry: Option<Arc<crate::cluster::registry::Registry>>,
    next_session: AtomicU64,
    next_request: AtomicU64,
}

impl Node {
    pub fn new(
        config: Config,
        name: String,
        verifier: Verifier,
        stores: Vec<Store>,
        hub: Arc<Hub>,
        presence: Presence,
    ) -> Node {
        let c = &config;
        let limits = SessionLimits {
            parse: crate::proto::ParseLimits { message_bytes_max: c.message_bytes_max },
            sends_per_s: c.sends_per_s,
            sends_burst: c.sends_burst,
            typing_per_s: c.typing_per_s,
            syncs_per_s: c.syncs_per_s,
            rate_refusals_max: c.rate_refusals_max,
        };
        let metrics_open = c.listen.parse::<std::net::SocketAddr>().is_ok_and(|a| match a.ip() {
            std::net::IpAddr::V4(ip) => ip.is_loopback() || ip.is_private(),
            std::net::IpAddr::V6(ip) => ip.is_loopback(),
        });
        Node {
            config,
            name,
            verifier,
            limits,
            stores,
            hub,
            presence,
            draining: AtomicBool::new(false),
            metrics_open,
            serves_clients: true,
            dev_secret: None,
            tls: None,
            quic: None,
            backplane: None,
            cluster_view: Arc::default(),
            router: None,
            interest: None,
            registry: None,
            next_session: AtomicU64::new(1),
            next_request: AtomicU64::new(1),
        }
    }

    /// The store shard of this node that sequences `conv`, and its index.
    pub fn store_for(&self, conv: &ConvId) -> (&Store, usize) {
        let i = switchboard_store::router::shard_for(conv, self.stores.len());
        (&self.stores[i], i)
    }

    /// This node's id: 0 for a single node.
    pub fn me(&self) -> switchboard_backplane::NodeId {
        switchboard_backplane::NodeId(self.hub.me)
    }

    /// Runs `request` on the conversation's owner: here, or across the backplane. Either way
    /// the same [`ops::apply`] runs it; `reply` hears the outcome, or why there is none.
    pub fn call<T>(&self, request: request::Request, reply: ops::Reply<T>)
    where
        T: TryFrom<request::Outcome, Error = ops::OpError> + Send + 'static,
    {
        let owner = match (&self.router, request.conv()) {
            (Some(router), Some(conv)) => router.owner(conv),
            _ => self.me(),
        };
        self.call_on(owner, request, reply)
    }

    /// Runs `request` on `node`, which holds the store it needs.
    pub fn call_on<T>(&self, node: switchboard_backplane::NodeId, request: request::Request, reply: ops::Reply<T>)
    where
        T: TryFrom<request::Outcome, Error = ops::OpError> + Send + 'static,
    {
        let reply = reply.expecting();
        match &self.router {
            Some(router) if node != self.me() => router.forward(node, request, reply),
            _ => ops::apply(self, self.me(), switchboard_backplane::Boot(0), request, reply),
        }
    }

    /// The nodes whose stores hold some of every user's conversations: this one alone, or
    /// the cluster's store nodes.
    pub fn store_nodes(&self) -> Vec<switchboard_backplane::NodeId> {
        match &self.router {
            Some(router) => router.store_nodes().to_vec(),
            None => vec![self.me()],
        }
    }

    /// A process-unique session id for `welcome`.
    pub fn next_session(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub fn next_request(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// A connection of `user` said `hello` here; `first`: the only one of theirs here.
    pub fn user_connected(&self, user: &switchboard_store::UserId, first: bool) {
        match &self.registry {
            None => self.presence.connected(user.as_str()),
            Some(_) if first => self.tell_registry(user, request::Request::Register { user: user.clone() }),
            Some(_) => {}
        }
    }

    /// A connection of `user` here closed at `at_ms` (Unix time); `last`: none of theirs is
    /// left here.
    pub fn user_disconnected(&self, user: &switchboard_store::UserId, last: bool, at_ms: u64) {
        match &self.registry {
            None => self.presence.disconnected(user.as_str(), at_ms),
            Some(_) if last => self.tell_registry(user, request::Request::Unregister { user: user.clone(), at_ms }),
            Some(_) => {}
        }
    }

    /// Sends `request` about `user` to the node holding the user's registry entry.
    fn tell_registry(&self, user: &switchboard_store::UserId, request: request::Request) {
        if let Some(registry) = &self.registry {
            registry.tell(self, registry.home(user.as_str()), request);
        }
    }

    /// `presence` for `users`, from wherever their registry entries are.
    pub fn presence(&self, users: Vec<switchboard_store::UserId>, reply: ops::Reply<Vec<(bool, Option<u64>)>>) {
        match &self.registry {
            Some(registry) => registry.lookup(self, users, reply),
            None => reply.send(Ok(users.iter().map(|u| self.presence.get(u.as_str())).collect())),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
