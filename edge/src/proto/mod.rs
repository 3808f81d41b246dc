//! The client protocol's frames (PROTOCOL.md §4), in both encodings: parsing what clients send,
//! writing what the server sends. No runtime: clients, tests and tools use it as it is.
//!
//! | module | what it holds |
//! |---|---|
//! | [`client`] | client → server frames, validated: ids, limits, required fields |
//! | [`binary`] | `switchboard.v1.bin`, field for field the JSON frames |
//! | [`server`] | server → client frames, encoded once into a shared `Bytes` |
//! | [`error`] | the error codes of PROTOCOL.md §4 |

pub mod binary;
pub mod client;
pub mod error;
pub mod server;

pub use client::{parse, ClientFrame, ParseLimits, Request, Target};
pub use error::{ErrorCode, FrameError};
pub use server::ServerFrame;
