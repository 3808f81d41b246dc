//! The backplane: a QUIC mesh between Switchboard nodes. It carries opaque frames between
//! numbered nodes and knows nothing of chat.
//!
//! ```text
//!  shard / store threads           mesh thread (current-thread tokio)          peer nodes
//!  Handle::send ──► per-peer queues (bounded in bytes, per class) ──► QUIC uni streams ──►
//!  Inbox::try_recv ◄── bounded per class, with a wakeup ◄── stream readers ◄────────────────
//! ```
//!
//! # Layout
//! The sans-IO core, driven by bytes and time (no sockets, no clock), so that tests and the
//! whole-cluster simulator run it as it runs in production:
//! - [`ids`]: node ids and boot ids.
//! - [`class`]: traffic classes (control, live lanes, bulk) and the streams that carry them.
//! - [`frame`]: the u32 big-endian length prefix and the stream header.
//! - [`queue`]: per-peer outbound queues bounded in bytes per class.
//! - [`backoff`]: exponential backoff with full jitter for redials.
//! - [`membership`]: SWIM failure detection (foca), with its timers as data.
//! - [`mesh`]: one node's view of the mesh: connections, the choice of one connection per
//!   pair, queues, redials and membership; inputs `handle_*(now, …)`, outputs `poll_*`.
//! - [`sim`]: a simulated network (delay, reordering between streams, partitions, crashes,
//!   stalled readers) that drives several [`mesh::Mesh`]es in one thread.
//!
//! The thin shell around it:
//! - [`tls`]: the cluster CA, node certificates and the rustls configurations (mutual TLS,
//!   the node id taken from the certificate).
//! - [`rt`]: the quinn endpoint on its own thread, [`rt::Handle`] for senders on any thread,
//!   [`rt::Inbox`] for what arrives, and [`rt::metrics`].

pub mod backoff;
pub mod class;
pub mod config;
pub mod frame;
pub mod ids;
pub mod membership;
pub mod mesh;
pub mod queue;
pub mod rt;
pub mod sim;
pub mod tls;

pub use class::{Class, StreamKind};
pub use config::MeshConfig;
pub use ids::{Boot, NodeId};
