//! The QUIC listener's certificate: the configured one (`tls_cert_file`, `tls_key_file`), or
//! else a development certificate the node makes itself and keeps in its data folder.
//!
//! Browsers accept a self-signed certificate for WebTransport only by its hash
//! (`serverCertificateHashes`), and Chromium only if it is ECDSA and valid for less than 14
//! days. So the development certificate is ECDSA P-256, valid for 13 days from an hour
//! before it was made, and replaced at start when less than a day is left. Its SHA-256 is
//! served at `GET /dev/quic` for the chat page. It names `localhost`, `127.0.0.1` and `::1`,
//! and the listening address when that is another one.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The development certificate's whole validity, under Chromium's 14 days.
pub const DEV_VALID_S: u64 = 13 * 86_400;
/// It is valid from this long before it was made (clocks differ a little).
const DEV_BACKDATE_S: u64 = 3_600;
/// It is replaced at start when less than this is left.
const DEV_RENEW_S: u64 = 86_400;

/// A certificate chain and its key, for the listener.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Set for the development certificate.
    pub dev: Option<DevCert>,
}

/// What clients need to trust the development certificate.
#[derive(Clone, Debug)]
pub struct DevCert {
    pub sha256: [u8; 32],
    /// Seconds since the Unix epoch.
    pub not_after_s: u64,
    pub cert_file: PathBuf,
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub fn sha256(der: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, der).as_ref().try_into().expect("32 bytes")
}

/// The configured certificate, or the development one from `data_dir/quic/` (made or
/// renewed as needed).
pub fn load(
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
    data_dir: &Path,
    listen: SocketAddr,
) -> Result<Identity, String> {
    if let (Some(cert), Some(key)) = (cert_file, key_file) {
        let chain = read_chain(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
        return Ok(Identity { chain, key, dev: None });
    }
    let dir = data_dir.join("quic");
    let (cert_file, key_file, expiry_file) =
        (dir.join("dev-cert.pem"), dir.join("dev-key.pem"), dir.join("dev-cert.not-after"));
    let kept = std::fs::read_to_string(&expiry_file).ok().and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(not_after_s) = kept.filter(|t| *t > now_s() + DEV_RENEW_S) {
        if let (Ok(chain), Ok(key)) = (read_chain(&cert_file), PrivateKeyDer::from_pem_file(&key_file)) {
            let dev = DevCert { sha256: sha256(&chain[0]), not_after_s, cert_file };
            return Ok(Identity { chain, key, dev: Some(dev) });
        }
    }
    make_dev(&dir, &cert_file, &key_file, &expiry_file, listen)
}

fn read_chain(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .and_then(|i| i.collect())
        .map_err(|e| format!("{}: {e}", file.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate", file.display()));
    }
    Ok(chain)
}

fn make_dev(
    dir: &Path,
    cert_file: &Path,
    key_file: &Path,
    expiry_file: &Path,
    listen: SocketAddr,
) -> Result<Identity, String> {
    let fail = |e: &dyn std::fmt::Display| format!("the development certificate in {}: {e}", dir.display());
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if !listen.ip().is_unspecified() && !names.contains(&listen.ip().to_string()) {
        names.push(listen.ip().to_string());
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| fail(&e))?;
    let mut params = rcgen::CertificateParams::new(names).map_err(|e| fail(&e))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "Switchboard development certificate");
    let from = now_s() - DEV_BACKDATE_S;
    let not_after_s = from + DEV_VALID_S;
    let at = |s: u64| time::OffsetDateTime::from_unix_timestamp(s as i64).map_err(|e| fail(&e));
    params.not_before = at(from)?;
    params.not_after = at(not_after_s)?;
    let cert = params.self_signed(&key).map_err(|e| fail(&e))?;
    std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
    write_private(key_file, key.serialize_pem().as_bytes()).map_err(|e| fail(&e))?;
    std::fs::write(cert_file, cert.pem()).map_err(|e| fail(&e))?;
    // Written last: a folder without it is made again.
    std::fs::write(expiry_file, not_after_s.to_string()).map_err(|e| fail(&e))?;
    let der = cert.der().clone();
    let dev = DevCert { sha256: sha256(&der), not_after_s, cert_file: cert_file.to_path_buf() };
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    Ok(Identity { chain: vec![der], key, dev: Some(dev) })
}

/// Writes a key readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("switchboard-quic-cert-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// Made once, kept across starts with the same hash, made again when it nears its end;
    /// always under 14 days in all.
    #[test]
    fn the_development_certificate_is_kept_then_renewed() {
        let d = dir("renew");
        let listen: SocketAddr = "127.0.0.1:7401".parse().unwrap();
        let first = load(None, None, &d, listen).unwrap().dev.unwrap();
        assert!(first.not_after_s > now_s() + 12 * 86_400 && first.not_after_s < now_s() + 14 * 86_400);
        let again = load(None, None, &d, listen).unwrap().dev.unwrap();
        assert_eq!(first.sha256, again.sha256, "kept across starts");
        std::fs::write(d.join("quic/dev-cert.not-after"), (now_s() + 3_600).to_string()).unwrap();
        let renewed = load(None, None, &d, listen).unwrap().dev.unwrap();
        assert_ne!(first.sha256, renewed.sha256, "renewed with less than a day left");
        let pem = std::fs::read(&renewed.cert_file).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        assert_eq!(sha256(&der), renewed.sha256, "the hash served is the certificate's");
        let _ = std::fs::remove_dir_all(&d);
    }
}
