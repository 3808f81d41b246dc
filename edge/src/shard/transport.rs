//! The bytes under HTTP and WebSocket: plain TCP, or TLS (rustls) over it when a certificate
//! is configured (`wss://`, `https://`).
//!
//! rustls is used sans-IO: ciphertext read from the socket goes into the session, plaintext
//! comes out into the connection's read buffer; plaintext to send goes in, ciphertext comes out
//! and is written. The session is shared (`Rc<RefCell<…>>`, never borrowed across an await)
//! between a WebSocket connection's reader and writer.

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::sync::Arc;

pub type Tls = Rc<RefCell<rustls::ServerConnection>>;

/// The scratch size for decrypted bytes.
pub const READ_CHUNK: usize = 4096;
/// How much the first read asks for; reads grow while they come back full, and shrink back
/// when the connection goes quiet, so that an idle connection's pending read holds a small
/// buffer.
pub const READ_CHUNK_MIN: usize = 512;
const READ_CHUNK_MAX: usize = 64 * 1024;

/// Room for the next read: `chunk` bytes. An empty buffer that grew large is replaced by a
/// small one (the pending read of an idle connection should not pin a burst's buffer).
fn room(buf: &mut BytesMut, chunk: usize) {
    if buf.is_empty() && buf.capacity() > 2 * chunk {
        *buf = BytesMut::with_capacity(chunk);
    } else {
        buf.reserve(chunk);
    }
}

/// The next read's size, from how full this one came back.
fn next_chunk(chunk: usize, got: usize) -> usize {
    if got >= chunk {
        (chunk * 4).min(READ_CHUNK_MAX)
    } else if got < chunk / 4 {
        (chunk / 2).max(READ_CHUNK_MIN)
    } else {
        chunk
    }
}

/// Reads more bytes onto the end of `buf`. `Ok(0)`: the peer closed.
pub async fn read_raw<R: AsyncReadRent>(r: &mut R, buf: &mut BytesMut) -> io::Result<usize> {
    read_chunk(r, buf, READ_CHUNK).await
}

async fn read_chunk<R: AsyncReadRent>(r: &mut R, buf: &mut BytesMut, chunk: usize) -> io::Result<usize> {
    room(buf, chunk);
    let len = buf.len();
    let cap = buf.capacity();
    let owned = std::mem::take(buf);
    let (res, slice) = r.read(owned.slice_mut(len..cap)).await;
    *buf = slice.into_inner();
    res
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The reading side: plaintext out, whatever is underneath.
pub struct Inbound {
    tls: Option<Tls>,
    /// The next plain read's size (see [`READ_CHUNK_MIN`]).
    chunk: usize,
    /// Ciphertext read but not yet handed to rustls (TLS only).
    cipher: BytesMut,
}

impl Inbound {
    pub fn new(tls: Option<Tls>) -> Inbound {
        Inbound { tls, chunk: READ_CHUNK_MIN, cipher: BytesMut::new() }
    }

    /// Reads ciphertext and hands it to the TLS session. `Ok(0)`: the peer closed.
    async fn pull<R: AsyncReadRent>(&mut self, r: &mut R, tls: &Tls) -> io::Result<usize> {
        let n = read_raw(r, &mut self.cipher).await?;
        if n == 0 {
            return Ok(0);
        }
        let mut t = tls.borrow_mut();
        let mut rest = &self.cipher[..];
        while !rest.is_empty() {
            t.read_tls(&mut rest)?;
            t.process_new_packets().map_err(tls_error)?;
        }
        self.cipher.clear();
        Ok(n)
    }

    /// Appends plaintext to `buf`. `Ok(0)`: the peer closed.
    pub async fn read_more<R: AsyncReadRent>(&mut self, r: &mut R, buf: &mut BytesMut) -> io::Result<usize> {
        let Some(tls) = self.tls.clone() else {
            let n = read_chunk(r, buf, self.chunk).await?;
            self.chunk = next_chunk(self.chunk, n);
            return Ok(n);
        };
        loop {
            match plaintext(&tls, buf) {
                Ok(0) => return Ok(0), // close_notify
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.pull(r, &tls).await? == 0 {
                return Ok(0);
            }
        }
    }
}

/// Moves decrypted bytes into `buf`. A plain function, not async: its scratch array must not
/// become part of every connection's reader future (4 KiB each, TLS or not).
fn plaintext(tls: &Tls, buf: &mut BytesMut) -> io::Result<usize> {
    let mut chunk = [0u8; READ_CHUNK];
    let n = tls.borrow_mut().reader().read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Writes whatever ciphertext the session has ready.
pub async fn flush_tls<W: AsyncWriteRent>(w: &mut W, tls: &Tls) -> io::Result<()> {
    loop {
        let mut out = Vec::new();
        {
            let mut t = tls.borrow_mut();
            while t.wants_write() {
                t.write_tls(&mut out)?;
            }
        }
        if out.is_empty() {
            return Ok(());
        }
        w.write_all(out).await.0?;
    }
}

/// Writes `data` whole, encrypted when there is TLS.
pub async fn write_all<W: AsyncWriteRent>(w: &mut W, tls: Option<&Tls>, data: Vec<u8>) -> io::Result<()> {
    match tls {
        None => w.write_all(data).await.0.map(drop),
        Some(t) => {
            t.borrow_mut().writer().write_all(&data)?;
            flush_tls(w, t).await
        }
    }
}

/// An accepted connection, after its TLS handshake if there is one.
pub struct Transport {
    pub stream: TcpStream,
    pub tls: Option<Tls>,
    pub inbound: Inbound,
}

impl Transport {
    /// Plain TCP, or the TLS handshake first (the caller bounds it with the handshake
    /// deadline).
    pub async fn accept(mut stream: TcpStream, config: Option<Arc<rustls::ServerConfig>>) -> io::Result<Transport> {
        let Some(config) = config else { return Ok(Transport { stream, tls: None, inbound: Inbound::new(None) }) };
        let tls: Tls = Rc::new(RefCell::new(rustls::ServerConnection::new(config).map_err(tls_error)?));
        let mut inbound = Inbound::new(Some(tls.clone()));
        loop {
            let pulled = inbound.pull(&mut stream, &tls).await;
            // Whatever rustls has to say goes out, the alert for a failed handshake included.
            flush_tls(&mut stream, &tls).await?;
            if pulled? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if !tls.borrow().is_handshaking() {
                break;
            }
        }
        Ok(Transport { stream, tls: Some(tls), inbound })
    }

    pub async fn read_more(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        self.inbound.read_more(&mut self.stream, buf).await
    }

    pub async fn write_all(&mut self, data: Vec<u8>) -> io::Result<()> {
        write_all(&mut self.stream, self.tls.as_ref(), data).await
    }
}

/// The server's TLS configuration from PEM files: a certificate chain and its private key.
pub fn server_config(cert_file: &std::path::Path, key_file: &std::path::Path) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|i| i.collect())
        .map_err(|e| format!("{}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} and {}: {e}", cert_file.display(), key_file.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
