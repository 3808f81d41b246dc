//! The edge: client protocol, WebSocket codec, sessions, per-core shards and the `switchboard`
//! daemon (issue 3).
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | [`ws`] | the sans-IO WebSocket codec (RFC 6455): the opening handshake, decoding with every limit and close code, encoding that shares one buffer between recipients |
//!
//! The daemon, sessions and the protocol frames are not built yet.

#![forbid(unsafe_code)]

pub mod ws;
