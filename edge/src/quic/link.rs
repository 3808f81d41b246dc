//! The bridge between one QUIC connection's tasks on the endpoint thread and its connection on
//! a shard, where its session runs exactly as a WebSocket's does.
//!
//! In: the endpoint thread posts each whole frame to the shard's inbox ([`QuicEvent::Frame`]),
//! counting its bytes here; past [`INBOUND_BYTES_MAX`] waiting on the shard it stops reading
//! the stream, so QUIC's flow control pushes back on a client that sends faster than the
//! shard takes in (the shard itself stops taking in while the connection's requests fill its
//! window, as it stops reading a WebSocket).
//!
//! Out: the shard moves a batch of the connection's queued frames, already length-prefixed,
//! into [`Link::put`] and waits for [`QuicEvent::Written`] before it moves the next, so at
//! most one batch is on the endpoint thread per connection and the rest stays in the
//! connection's bounded outbound queue, where a slow consumer overflows to 4009 as it would
//! over WebSocket.

use crate::ws::handshake::Encoding;
use bytes::Bytes;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Bytes of frames posted to the shard and not yet taken in, at most, per connection.
pub const INBOUND_BYTES_MAX: usize = 256 * 1024;

/// What the endpoint thread tells a shard.
pub enum QuicEvent {
    /// A client opened its stream: a new connection on this shard.
    Opened {
        link: Arc<Link>,
        encoding: Encoding,
        /// The token of a WebTransport URL (`?token=`), checked as a WebSocket's is.
        token: Option<String>,
    },
    /// One whole frame from the client.
    Frame { link: u64, frame: Bytes },
    /// The last batch is written: the next may go.
    Written { link: u64 },
    /// The client broke a rule of the transport (a frame over the limit, a second stream, an
    /// ended stream): close the connection with this code.
    Violation { link: u64, code: u16, reason: &'static str },
    /// The QUIC connection is closed, by either side or by its idle timeout.
    Gone { link: u64 },
}

/// A batch for the endpoint thread to write.
#[derive(Default)]
pub struct Out {
    pub bytes: Vec<u8>,
    /// After the bytes: close the connection with this code and reason.
    pub close: Option<(u16, &'static str)>,
}

pub struct Link {
    pub id: u64,
    /// The gauge of live links (`switchboard_quic_connections`): one less when this is dropped.
    live: Arc<AtomicI64>,
    /// The QUIC connection, so that the shard can cut it at once (a peer that never reads).
    pub connection: quinn::Connection,
    inbound: AtomicUsize,
    room: Notify,
    out: Mutex<Out>,
    ready: Notify,
}

impl Link {
    pub fn new(id: u64, connection: quinn::Connection, live: Arc<AtomicI64>) -> Link {
        live.fetch_add(1, Ordering::Relaxed);
        Link {
            id,
            live,
            connection,
            inbound: AtomicUsize::new(0),
            room: Notify::new(),
            out: Mutex::new(Out::default()),
            ready: Notify::new(),
        }
    }

    /// Endpoint thread: a frame of `len` bytes goes to the shard.
    pub fn posted(&self, len: usize) {
        self.inbound.fetch_add(len.max(1), Ordering::AcqRel);
    }

    /// Endpoint thread: whether more may be read from the stream.
    pub fn has_room(&self) -> bool {
        self.inbound.load(Ordering::Acquire) < INBOUND_BYTES_MAX
    }

    /// Endpoint thread: waits until [`Link::has_room`] may have changed.
    pub async fn room(&self) {
        self.room.notified().await
    }

    /// Shard: a frame of `len` bytes was taken in.
    pub fn taken(&self, len: usize) {
        let before = self.inbound.fetch_sub(len.max(1), Ordering::AcqRel);
        if before >= INBOUND_BYTES_MAX && before - len.max(1) < INBOUND_BYTES_MAX {
            self.room.notify_one();
        }
    }

    /// Shard: hands a batch to the endpoint thread (the one before it is written).
    pub fn put(&self, out: Out) {
        *self.out.lock().expect("no panics while held") = out;
        self.ready.notify_one();
    }

    /// Endpoint thread: waits for the next batch.
    pub async fn next(&self) -> Out {
        self.ready.notified().await;
        std::mem::take(&mut *self.out.lock().expect("no panics while held"))
    }

    /// Shard: closes the connection now, dropping what is unsent.
    pub fn abort(&self, code: u16, reason: &'static str) {
        self.connection.close(quinn::VarInt::from_u32(code.into()), reason.as_bytes());
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}
