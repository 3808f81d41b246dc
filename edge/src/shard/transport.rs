//! TLS (rustls) for `wss://` and `https://`, sans-IO: the driver hands ciphertext from the
//! socket in and gets plaintext out into the connection's read buffer; plaintext to send goes
//! in and ciphertext comes out for the next write. Plain connections skip this module.

use bytes::BytesMut;
use std::io::{self, Read, Write};
use std::sync::Arc;

/// The scratch size for decrypted bytes.
const PLAIN_CHUNK: usize = 4096;

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// One connection's TLS session.
pub struct Tls(rustls::ServerConnection);

impl Tls {
    pub fn new(config: Arc<rustls::ServerConfig>) -> io::Result<Tls> {
        rustls::ServerConnection::new(config).map(Tls).map_err(tls_error)
    }

    /// Takes ciphertext, appends the plaintext to `plain`. `Ok(false)`: the peer sent
    /// `close_notify`. An error leaves an alert to send ([`Tls::take_output`]).
    pub fn feed(&mut self, mut cipher: &[u8], plain: &mut BytesMut) -> io::Result<bool> {
        while !cipher.is_empty() {
            self.0.read_tls(&mut cipher)?;
            self.0.process_new_packets().map_err(tls_error)?;
            let mut chunk = [0u8; PLAIN_CHUNK];
            loop {
                match self.0.reader().read(&mut chunk) {
                    Ok(0) => return Ok(false),
                    Ok(n) => plain.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(true)
    }

    pub fn is_handshaking(&self) -> bool {
        self.0.is_handshaking()
    }

    /// Encrypts `bytes` for the next write.
    pub fn encrypt(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.writer().write_all(bytes)
    }

    pub fn wants_write(&self) -> bool {
        self.0.wants_write()
    }

    /// Moves the ciphertext ready to send into `out`.
    pub fn take_output(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        while self.0.wants_write() {
            self.0.write_tls(out)?;
        }
        Ok(())
    }

    pub fn send_close_notify(&mut self) {
        self.0.send_close_notify()
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
