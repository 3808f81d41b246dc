//! Clients over QUIC (PROTOCOL.md §1): native QUIC with ALPN `switchboard/1` (JSON) or
//! `switchboard/1+bin` (binary), and WebTransport over HTTP/3 (ALPN `h3`) at `/v1/wt` for
//! browsers, all on `quic_listen`. Every frame travels on the first client-opened
//! bidirectional stream with a u32 big-endian length before it, and ends in the same
//! [`crate::session::Session`] as a WebSocket message does, on a shard: same limits, rate
//! limits and answers. Close codes are the QUIC application error codes (and a WebTransport
//! session's close code), unchanged (docs/protocol.md, "QUIC").
//!
//! | module | what it holds |
//! |---|---|
//! | [`framing`] | length-prefixed frames, sans-IO, the limit checked on the prefix |
//! | [`link`] | the bridge between a connection's tasks on the endpoint thread and its shard |
//! | [`endpoint`] | the quinn endpoint on its own thread: handshakes, ALPN, WebTransport, the stream |
//! | [`cert`] | the configured certificate, or the development one (under 14 days, by hash) |
//! | [`client`] | a native QUIC client of the protocol (ctl, bench, tests), trusting a certificate by hash |

pub mod cert;
pub mod client;
pub mod endpoint;
pub mod framing;
pub mod link;

use crate::config::Config;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// ALPN of the protocol in JSON, and in the binary encoding.
pub const ALPN_JSON: &[u8] = b"switchboard/1";
pub const ALPN_BIN: &[u8] = b"switchboard/1+bin";
/// Where WebTransport sessions are accepted.
pub const WEBTRANSPORT_PATH: &str = "/v1/wt";

/// What clients need to know of the listener (`GET /dev/quic`, the banner).
#[derive(Clone, Debug)]
pub struct Info {
    pub addr: SocketAddr,
    /// Set when the certificate is the development one.
    pub dev: Option<cert::DevCert>,
}

/// Lower-case hex, as certificate hashes are shown.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Socket buffers asked for (the kernel caps them at `net.core.rmem_max` and `wmem_max`).
const UDP_BUFFER_BYTES: usize = 8 << 20;

/// A UDP socket on `addr` with large buffers: every connection of the endpoint shares it, and
/// a burst of handshakes (each client's first packet is padded to 1,200 bytes) overflows the
/// default 208 KiB, whose drops then cost retransmissions after a timeout.
pub fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller cap is still a working socket.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The bound socket and its configuration, before the endpoint thread starts.
pub struct Listener {
    socket: std::net::UdpSocket,
    server: quinn::ServerConfig,
    pub info: Info,
}

/// Binds `quic_listen` (none when it is empty) and prepares its TLS and transport settings.
pub fn bind(config: &Config) -> Result<Option<Listener>, String> {
    if config.quic_listen.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr =
        config.quic_listen.parse().map_err(|e| format!("quic_listen {:?}: not an address: {e}", config.quic_listen))?;
    let socket = udp_socket(addr).map_err(|e| format!("quic_listen {addr}: {e}"))?;
    let addr = socket.local_addr().map_err(|e| e.to_string())?;
    let identity = cert::load(config.tls_cert_file.as_deref(), config.tls_key_file.as_deref(), &config.data_dir, addr)?;
    let dev = identity.dev.clone();
    let server = server_config(identity, config)?;
    Ok(Some(Listener { socket, server, info: Info { addr, dev } }))
}

fn server_config(identity: cert::Identity, config: &Config) -> Result<quinn::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .map_err(|e| format!("the QUIC certificate: {e}"))?;
    // A client offering none of these is refused in the handshake (no_application_protocol).
    tls.alpn_protocols = vec![ALPN_JSON.to_vec(), ALPN_BIN.to_vec(), web_transport_quinn::ALPN.as_bytes().to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport(config)?));
    // A phone that changes networks keeps its connection (the default, said out loud).
    server.migration(true);
    Ok(server)
}

/// Transport settings per connection: liveness from `heartbeat_ms`, and windows sized for
/// one frame in flight each way, so that a client can make the server hold little.
fn transport(config: &Config) -> Result<quinn::TransportConfig, String> {
    let mut t = quinn::TransportConfig::default();
    let heartbeat = Duration::from_millis(config.heartbeat_ms.max(1));
    // Silent for two heartbeats (no packet, not even an acknowledgement): gone, as PROTOCOL.md
    // §3 says of a WebSocket.
    let idle = quinn::IdleTimeout::try_from(heartbeat * 2).map_err(|e| format!("heartbeat_ms: {e}"))?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(Some(heartbeat));
    // The protocol's stream, and WebTransport's CONNECT stream; HTTP/3's control and QPACK
    // streams. A further stream is refused with 1002.
    t.max_concurrent_bidi_streams(2u32.into());
    t.max_concurrent_uni_streams(3u32.into());
    let frame = (config.frame_bytes_max + framing::PREFIX_BYTES) as u64;
    let stream_window = quinn::VarInt::from_u64(frame * 2).map_err(|e| e.to_string())?;
    t.stream_receive_window(stream_window);
    t.receive_window(quinn::VarInt::from_u64(frame * 4).map_err(|e| e.to_string())?);
    t.send_window((link::INBOUND_BYTES_MAX * 2) as u64);
    // WebTransport needs datagrams offered; none are read, so their buffer stays small.
    t.datagram_receive_buffer_size(Some(16 * 1024));
    t.datagram_send_buffer_size(16 * 1024);
    Ok(t)
}
