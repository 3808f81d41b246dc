//! A native QUIC client of the protocol (tokio and quinn), for `switchboard-ctl --quic`, the
//! bench and the tests: ALPN `switchboard/1` or `switchboard/1+bin`, one bidirectional
//! stream, length-prefixed frames. It trusts the server's certificate by its SHA-256 (as a
//! browser trusts a development certificate) or by the platform's roots.

use super::framing::{prefix, Deframer};
use super::{ALPN_BIN, ALPN_JSON};
use crate::ws::handshake::Encoding;
use bytes::Bytes;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

/// How the client decides to trust the server.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Exactly the certificate with this SHA-256 (`GET /dev/quic` serves it).
    Sha256([u8; 32]),
    /// Certificates that chain to these roots (PEM files' contents, DER).
    Roots(Vec<CertificateDer<'static>>),
}

/// Why the connection ended, as the server said it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closed {
    /// An application close: the protocol's close code and reason.
    Code(u16, String),
    /// Anything else (timeout, reset, a transport error).
    Other(String),
}

pub struct Client {
    pub connection: quinn::Connection,
    pub tx: Sender,
    pub rx: Receiver,
}

/// The sending half of the protocol's stream.
pub struct Sender {
    send: quinn::SendStream,
}

/// The receiving half: whole frames out of the stream.
pub struct Receiver {
    connection: quinn::Connection,
    recv: quinn::RecvStream,
    deframer: Deframer,
    frames: VecDeque<Bytes>,
}

/// A client endpoint on `bind` (one endpoint may carry many connections); within a tokio
/// runtime.
pub fn endpoint(bind: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let socket = super::udp_socket(bind)?;
    let runtime = quinn::default_runtime().ok_or_else(|| std::io::Error::other("no tokio runtime"))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
}

fn client_config(trust: &Trust, alpn: &[u8]) -> Result<quinn::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?;
    let mut tls = match trust {
        Trust::Sha256(hash) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ByHash { hash: *hash, provider }))
            .with_no_client_auth(),
        Trust::Roots(roots) => {
            let mut store = rustls::RootCertStore::empty();
            for r in roots {
                store.add(r.clone()).map_err(|e| format!("a root certificate: {e}"))?;
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    // The server's idle timeout (two heartbeats) and its pings decide when a connection is
    // gone: a client timeout of its own (quinn's default is 30 s) would cut an idle one
    // between two heartbeats of the default 30 s.
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(None);
    config.transport_config(Arc::new(transport));
    Ok(config)
}

impl Client {
    /// Connects to `addr` in `encoding` and opens the protocol's stream (the server sees it
    /// with the first frame).
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        trust: &Trust,
        encoding: Encoding,
        frame_bytes_max: usize,
    ) -> Result<Client, String> {
        let alpn = if encoding == Encoding::Binary { ALPN_BIN } else { ALPN_JSON };
        Client::connect_alpn(endpoint, addr, trust, alpn, frame_bytes_max).await
    }

    /// [`Client::connect`] offering any ALPN (tests of refusals).
    pub async fn connect_alpn(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        trust: &Trust,
        alpn: &[u8],
        frame_bytes_max: usize,
    ) -> Result<Client, String> {
        let config = client_config(trust, alpn)?;
        let connecting = endpoint.connect_with(config, addr, "localhost").map_err(|e| e.to_string())?;
        let connection = connecting.await.map_err(|e| format!("QUIC to {addr}: {e}"))?;
        let (send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        let rx = Receiver {
            connection: connection.clone(),
            recv,
            deframer: Deframer::new(frame_bytes_max),
            frames: VecDeque::new(),
        };
        Ok(Client { connection, tx: Sender { send }, rx })
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), String> {
        self.tx.send(frame).await
    }

    /// Sends bytes as they are (tests of bad framing).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.tx.send_raw(bytes).await
    }

    /// Ends the client's side of the stream.
    pub fn finish(&mut self) {
        let _ = self.tx.send.finish();
    }

    /// The next frame; `Err` with how the connection ended once it has.
    pub async fn recv(&mut self) -> Result<Bytes, Closed> {
        self.rx.recv().await
    }

    /// Waits for the connection to end, and says how.
    pub async fn closed(&self) -> Closed {
        closed(&self.connection).await
    }
}

impl Sender {
    /// Sends one frame.
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), String> {
        self.send_raw(&[&prefix(frame.len())[..], frame].concat()).await
    }

    /// Sends bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.send.write_all(bytes).await.map_err(|e| e.to_string())
    }
}

impl Receiver {
    /// The next frame; `Err` with how the connection ended once it has.
    pub async fn recv(&mut self) -> Result<Bytes, Closed> {
        loop {
            if let Some(f) = self.frames.pop_front() {
                return Ok(f);
            }
            let mut out = Vec::new();
            match self.recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => {
                    self.deframer.feed(chunk.bytes, &mut out).map_err(|e| Closed::Other(format!("{e:?}")))?;
                    self.frames.extend(out);
                }
                Ok(None) | Err(_) => return Err(closed(&self.connection).await),
            }
        }
    }
}

async fn closed(connection: &quinn::Connection) -> Closed {
    match connection.closed().await {
        quinn::ConnectionError::ApplicationClosed(close) => Closed::Code(
            u16::try_from(close.error_code.into_inner()).unwrap_or(u16::MAX),
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        other => Closed::Other(other.to_string()),
    }
}

/// Trusts exactly one certificate, by hash; signatures are still checked.
#[derive(Debug)]
struct ByHash {
    hash: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for ByHash {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if super::cert::sha256(end_entity) == self.hash {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("the server's certificate is not the one with the expected SHA-256".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Parses a hash as `GET /dev/quic` shows it (64 hex digits).
pub fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
