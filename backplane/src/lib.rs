//! The QUIC mesh between Switchboard nodes (quinn, mutual TLS), addressed by server id.
//!
//! Not built yet: it arrives with the multi-node issue. This crate exists so that the
//! workspace has its final shape and dependencies point the right way from the start.
