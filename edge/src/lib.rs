//! The edge: client protocol, WebSocket codec, sessions, per-core shards and the `switchboard`
//! daemon (issue 3).
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | [`auth`] | JWT checks per RFC 8725 (algorithm fixed by configuration), the development secret |
//! | [`config`] | the daemon's settings: defaults, TOML file, `SWITCHBOARD_<KEY>`, flags |
//! | [`outbox`] | a connection's outbound queue, bounded in bytes, shared payloads, vectored writes |
//! | [`proto`] | the client protocol's frames (PROTOCOL.md §4) in JSON: parsing and validating what clients send, encoding what the server sends |
//! | [`rate`] | token buckets per connection, `rate_limited` then 4008 |
//! | [`ws`] | the sans-IO WebSocket codec (RFC 6455): the opening handshake, decoding with every limit and close code, encoding that shares one buffer between recipients |
//!
//! The daemon, sessions, the binary encoding and REST are not built yet.

// One `unsafe impl` (the vectored-write batch handed to io_uring, `shard::io`) and nothing else.
#![deny(unsafe_code)]

pub mod auth;
pub mod config;
pub mod daemon;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod proto;
pub mod rate;
pub mod session;
pub mod shard;
pub mod ws;
