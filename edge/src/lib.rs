//! The edge: client protocol, WebSocket codec, sessions, per-core shards and the `switchboard`
//! daemon (issue 3), with its io_uring connection path (issue 5, docs/architecture.md).
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | [`auth`] | JWT checks per RFC 8725 (algorithm fixed by configuration), the development secret |
//! | [`cluster`] | this node's place in a cluster: its id, role and peers, the placement of conversations on store nodes, the data folder's record of both |
//! | [`config`] | the daemon's settings: defaults, TOML file, `SWITCHBOARD_<KEY>`, flags |
//! | [`daemon`] | start (store, shards, listeners), drain, stop |
//! | [`demo`] | `--demo`: a dm, a group and a channel with messages, seeded through REST |
//! | [`metrics`] | counters and histograms in the Prometheus text format |
//! | [`node`] | what the shards share: the store handles, the hub that routes answers and deliveries, presence |
//! | [`outbox`] | a connection's outbound queue, bounded in bytes, shared payloads, vectored writes |
//! | [`proto`] | the client protocol's frames (PROTOCOL.md §4) in JSON: parsing and validating what clients send, encoding what the server sends |
//! | [`quic`] | clients over QUIC and WebTransport: the quinn endpoint thread, length-prefixed frames, the bridge to the shards, the development certificate |
//! | [`rest_client`] | one blocking REST call, for `--demo` and `switchboard-ctl` |
//! | [`rate`] | token buckets per connection, `rate_limited` then 4008 |
//! | [`web`] | the chat page at `/`: its assets, embedded, and the client library it imports |
//! | [`ws`] | the sans-IO WebSocket codec (RFC 6455): the opening handshake, decoding with every limit and close code, encoding that shares one buffer between recipients |

// `unsafe` is allowed in one module, `shard::uring` (the raw rings: buffer memory the kernel
// writes, sends whose pointers must outlive them), and in the driver's three libc calls.
#![deny(unsafe_code)]

pub mod auth;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod proto;
pub mod quic;
pub mod rate;
pub mod rest_client;
pub mod session;
pub mod shard;
pub mod web;
pub mod ws;
