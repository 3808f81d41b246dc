//! The edge: client protocol, WebSocket codec, sessions, per-core shards and the `switchboard`
//! daemon.
//!
//! Not built yet: it arrives with the edge daemon issue (PROTOCOL.md on one node).
