//! The quinn shell: one endpoint on one thread with a current-thread tokio runtime, as the
//! backplane runs its own. It does the transport's work only (handshakes, ALPN, the
//! WebTransport CONNECT, the one stream, length prefixes); each connection's session lives on
//! a shard, reached through its [`Link`].
//!
//! One endpoint thread rather than one per core: a client that moves to another address
//! (connection migration) keeps landing on the endpoint that knows its connection, with no
//! connection-id steering between sockets; the cost is that all QUIC packet and crypto work
//! of the node shares one core (docs/quic.md has the measurement).
//!
//! Per connection: one task reads the stream into frames and watches the connection (a second
//! stream or its end), one writes what the shard hands it.

use super::framing::{Deframer, TooLarge};
use super::link::{Link, QuicEvent};
use super::{Listener, ALPN_BIN, ALPN_JSON, WEBTRANSPORT_PATH};
use crate::node::{Node, ShardEvent};
use crate::session::UNAUTHENTICATED_CLOSE;
use crate::ws::close_code;
use crate::ws::handshake::Encoding;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use web_transport_quinn::Session;

/// The largest chunk taken from a stream at once.
const READ_CHUNK: usize = 64 * 1024;
/// How long a closing connection waits for the client to acknowledge the last bytes.
const FAREWELL: Duration = Duration::from_secs(2);

/// The running endpoint: stops when told, after closing every connection.
pub struct Handle {
    stop: Arc<Notify>,
    thread: std::thread::JoinHandle<()>,
}

impl Handle {
    pub fn stop(self) {
        self.stop.notify_one();
        let _ = self.thread.join();
    }
}

/// Starts the endpoint thread; returns once it accepts connections.
pub fn spawn(listener: Listener, node: Arc<Node>) -> Result<Handle, String> {
    let Listener { socket, server, .. } = listener;
    let stop = Arc::new(Notify::new());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let stopped = stop.clone();
    let thread = std::thread::Builder::new()
        .name("quic".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => return drop(ready_tx.send(Err(format!("the QUIC thread's runtime: {e}")))),
            };
            runtime.block_on(async move {
                let config = quinn::EndpointConfig::default();
                let endpoint = match quinn::Endpoint::new(config, Some(server), socket, Arc::new(quinn::TokioRuntime)) {
                    Ok(e) => e,
                    Err(e) => return drop(ready_tx.send(Err(format!("the QUIC endpoint: {e}")))),
                };
                let _ = ready_tx.send(Ok(()));
                accept(&endpoint, node, &stopped).await;
                endpoint.close(quinn::VarInt::from_u32(close_code::GOING_AWAY.into()), b"server stopped");
                let _ = tokio::time::timeout(FAREWELL, endpoint.wait_idle()).await;
            });
        })
        .map_err(|e| format!("the QUIC thread: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Handle { stop, thread }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the QUIC thread ended before it started".into()),
    }
}

async fn accept(endpoint: &quinn::Endpoint, node: Arc<Node>, stop: &Notify) {
    let mut next_id = 0u64;
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = stop.notified() => return,
        };
        let Some(incoming) = incoming else { return };
        if node.draining.load(Ordering::Relaxed) {
            incoming.refuse();
            continue;
        }
        next_id += 1;
        tokio::spawn(connection(incoming, node.clone(), next_id));
    }
}

/// A connection whose protocol stream is open.
struct Opened {
    conn: quinn::Connection,
    session: Session,
    encoding: Encoding,
    token: Option<String>,
    send: web_transport_quinn::SendStream,
    recv: web_transport_quinn::RecvStream,
}

/// What the handshake settled: the session, its encoding, and a token from the URL.
struct Accepted {
    session: Session,
    encoding: Encoding,
    token: Option<String>,
}

async fn connection(incoming: quinn::Incoming, node: Arc<Node>, id: u64) {
    let cfg = &node.config;
    // The opening is boxed: its futures are large and done with once the stream is open,
    // and the task that lives as long as the connection should not keep their room.
    let Some(Opened { conn, session, encoding, token, send, mut recv }) = Box::pin(open(incoming, &node)).await else {
        return;
    };
    let link = Arc::new(Link::new(id, conn, node.hub.metrics.quic_links.clone()));
    let shard = node.hub.shards[(id % node.hub.shards.len() as u64) as usize].clone();
    let post = |event| shard.post(ShardEvent::Quic(event));
    post(QuicEvent::Opened { link: link.clone(), encoding, token });
    tokio::spawn(write(session.clone(), send, link.clone(), shard.clone()));

    let mut deframer = Deframer::new(cfg.frame_bytes_max);
    let mut frames = Vec::new();
    let mut reading = true;
    let violation = |code, reason| post(QuicEvent::Violation { link: id, code, reason });
    loop {
        tokio::select! {
            chunk = recv.read_chunk(READ_CHUNK, true), if reading && link.has_room() => match chunk {
                Ok(Some(chunk)) => match deframer.feed(chunk.bytes, &mut frames) {
                    Ok(()) => {
                        for frame in frames.drain(..) {
                            link.posted(frame.len());
                            post(QuicEvent::Frame { link: id, frame });
                        }
                    }
                    Err(TooLarge { .. }) => {
                        reading = false;
                        violation(close_code::TOO_BIG, "frame too large");
                    }
                },
                // The client ended its side: as a WebSocket close frame would.
                Ok(None) => {
                    reading = false;
                    violation(close_code::NORMAL, "");
                }
                // A reset stream, or the connection is gone (then `closed` ends the loop).
                Err(_) => {
                    reading = false;
                    violation(close_code::PROTOCOL_ERROR, "stream reset");
                }
            },
            _ = link.room(), if reading && !link.has_room() => {}
            extra = session.accept_bi() => match extra {
                Ok(_) => violation(close_code::PROTOCOL_ERROR, "one bidirectional stream per connection"),
                Err(_) => break,
            },
            extra = session.accept_uni() => match extra {
                Ok(_) => violation(close_code::PROTOCOL_ERROR, "no unidirectional streams"),
                Err(_) => break,
            },
            _ = session.closed() => break,
        }
    }
    post(QuicEvent::Gone { link: id });
}

/// The handshakes, then the first client-opened bidirectional stream, which carries the
/// protocol; all within the handshake deadline.
async fn open(incoming: quinn::Incoming, node: &Node) -> Option<Opened> {
    let deadline = Duration::from_millis(node.config.auth_timeout_ms);
    // A client whose ALPN is not ours never gets here: rustls refuses the handshake.
    let Ok(Ok(conn)) = tokio::time::timeout(deadline, incoming).await else { return None };
    let Accepted { session, encoding, token } = handshake(&conn, node, deadline).await?;
    match tokio::time::timeout(deadline, session.accept_bi()).await {
        Ok(Ok((send, recv))) => Some(Opened { conn, session, encoding, token, send, recv }),
        Ok(Err(_)) => None,
        Err(_) => {
            session.close(UNAUTHENTICATED_CLOSE.into(), b"hello timeout");
            None
        }
    }
}

/// ALPN `switchboard/1` and `switchboard/1+bin` are the protocol at once; `h3` is a
/// WebTransport CONNECT to [`WEBTRANSPORT_PATH`] first, refused like a WebSocket upgrade is
/// (unknown path, origin not allowed, draining).
async fn handshake(conn: &quinn::Connection, node: &Node, deadline: Duration) -> Option<Accepted> {
    let alpn = conn
        .handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol);
    let raw = |encoding| Some(Accepted { session: Session::raw(conn.clone()), encoding, token: None });
    match alpn.as_deref() {
        Some(ALPN_JSON) => raw(Encoding::Json),
        Some(ALPN_BIN) => raw(Encoding::Binary),
        Some(b"h3") => {
            let Ok(Ok(request)) =
                tokio::time::timeout(deadline, web_transport_quinn::Request::accept(conn.clone())).await
            else {
                conn.close(quinn::VarInt::from_u32(UNAUTHENTICATED_CLOSE.into()), b"no WebTransport request");
                return None;
            };
            if request.url.path() != WEBTRANSPORT_PATH {
                let _ = request.reject(http::StatusCode::NOT_FOUND).await;
                return None;
            }
            let allowed = &node.config.allowed_origins;
            let origin = request.headers.get("origin").and_then(|o| o.to_str().ok());
            if !allowed.is_empty() && origin.is_some_and(|o| !allowed.iter().any(|a| a == o)) {
                let _ = request.reject(http::StatusCode::FORBIDDEN).await;
                return None;
            }
            if node.draining.load(Ordering::Relaxed) {
                let _ = request.reject(http::StatusCode::SERVICE_UNAVAILABLE).await;
                return None;
            }
            let mut encoding = Encoding::Json;
            let mut token = None;
            for (k, v) in request.url.query_pairs() {
                match (&*k, &*v) {
                    ("encoding", "bin") => encoding = Encoding::Binary,
                    ("token", t) => token = Some(t.to_string()),
                    _ => {}
                }
            }
            let session = request.ok().await.ok()?;
            Some(Accepted { session, encoding, token })
        }
        _ => {
            conn.close(
                quinn::VarInt::from_u32(close_code::PROTOCOL_ERROR.into()),
                b"no ALPN: offer switchboard/1, switchboard/1+bin or h3",
            );
            None
        }
    }
}

/// Writes each batch the shard hands over, then tells it the next may come; a batch with a
/// close ends the connection once the client has the bytes (or [`FAREWELL`] passed).
async fn write(
    session: Session,
    mut send: web_transport_quinn::SendStream,
    link: Arc<Link>,
    shard: crate::node::mailbox::Postbox<ShardEvent>,
) {
    loop {
        // A connection that ends by the client's doing (or its idle timeout) gets no more
        // batches: the task ends with it.
        let out = tokio::select! {
            out = link.next() => out,
            _ = session.closed() => return,
        };
        // Boxed, as the opening is: an idle connection's task keeps only what waits for the
        // next batch.
        if !out.bytes.is_empty() && Box::pin(send.write_all(&out.bytes)).await.is_err() {
            // The client stopped reading its stream (or the connection is gone).
            return session.close(close_code::NORMAL.into(), b"stream stopped");
        }
        if let Some((code, reason)) = out.close {
            let _ = send.finish();
            let _ = Box::pin(tokio::time::timeout(FAREWELL, send.stopped())).await;
            return session.close(code.into(), reason.as_bytes());
        }
        shard.post(ShardEvent::Quic(QuicEvent::Written { link: link.id }));
    }
}
