//! The cluster's trust: one CA, a certificate per node naming its id, mutual TLS 1.3.
//!
//! A node's certificate carries the DNS name `node-<id>.switchboard-mesh`. A dialer checks
//! the name of the node it meant to reach (rustls does, as for any server name), and an
//! acceptor reads the id off the client certificate by asking which configured peer's name
//! it is valid for. A certificate from another CA fails the handshake on either side; one
//! for another node's name fails the dialer's check, and the acceptor then holds the
//! dialer to that id (a stream header claiming another is refused).

use crate::ids::NodeId;
use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::Path;
use std::sync::Arc;

/// The mesh's ALPN: a peer speaking anything else is refused in the handshake.
pub const ALPN: &[u8] = b"switchboard-mesh/1";

/// The DNS name in `node`'s certificate.
pub fn node_name(node: NodeId) -> String {
    format!("node-{}.switchboard-mesh", node.0)
}

/// Writes `ca.pem`, `ca.key` and `node-<i>.pem`, `node-<i>.key` for nodes 1..=`nodes`
/// into `dir` (created if missing; keys mode 0600). Existing files are kept, so that a
/// cluster's certificates are made once: it is an error if only some are there.
pub fn write_cluster_certs(nodes: u16, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let names: Vec<String> =
        std::iter::once("ca".to_string()).chain((1..=nodes).map(|i| format!("node-{i}"))).collect();
    let present = names.iter().filter(|n| dir.join(format!("{n}.pem")).exists()).count();
    if present == names.len() {
        return Ok(());
    }
    if present > 0 {
        bail!(
            "{} holds some of the cluster's certificates but not all; remove them or use another folder",
            dir.display()
        );
    }
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    ca.distinguished_name.push(rcgen::DnType::CommonName, "Switchboard cluster CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    write_pair(dir, "ca", &ca_cert.pem(), &ca_key.serialize_pem())?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    for i in 1..=nodes {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec![node_name(NodeId(i))])?;
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("Switchboard node {i}"));
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &issuer)?;
        write_pair(dir, &format!("node-{i}"), &cert.pem(), &key.serialize_pem())?;
    }
    Ok(())
}

fn write_pair(dir: &Path, name: &str, cert: &str, key: &str) -> anyhow::Result<()> {
    std::fs::write(dir.join(format!("{name}.pem")), cert)?;
    write_private(&dir.join(format!("{name}.key")), key.as_bytes())
}

/// Writes a file only its owner can read (mode 0600), whole or not at all: beside it first,
/// synced, then renamed over.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The TLS settings of one node of the mesh.
#[derive(Clone)]
pub struct MeshTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl MeshTls {
    /// From the cluster CA's certificate and this node's certificate and key (PEM files).
    pub fn load(ca_file: &Path, cert_file: &Path, key_file: &Path) -> anyhow::Result<MeshTls> {
        let read = |path: &Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&read(ca_file)?) {
            roots.add(cert.with_context(|| format!("parsing {}", ca_file.display()))?)?;
        }
        if roots.is_empty() {
            bail!("{} holds no certificate", ca_file.display());
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert_file)?)
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing {}", cert_file.display()))?;
        let key = PrivateKeyDer::from_pem_slice(&read(key_file)?)
            .with_context(|| format!("parsing {}", key_file.display()))?;
        let roots = Arc::new(roots);
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider()).build()?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        // No 0-RTT: a replayed first flight must never carry frames.
        server.max_early_data_size = 0;
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        client.enable_early_data = false;
        Ok(MeshTls { server: Arc::new(server), client: Arc::new(client) })
    }

    /// `<dir>/ca.pem`, `<dir>/node-<node>.pem` and `.key`, as `write_cluster_certs` names them.
    pub fn load_dir(dir: &Path, node: NodeId) -> anyhow::Result<MeshTls> {
        MeshTls::load(&dir.join("ca.pem"), &dir.join(format!("node-{node}.pem")), &dir.join(format!("node-{node}.key")))
    }
}

/// Which of `candidates` the (already CA-verified) end-entity certificate names, if exactly
/// one.
pub fn node_of(cert: &CertificateDer<'_>, candidates: impl IntoIterator<Item = NodeId>) -> Option<NodeId> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut found = None;
    for node in candidates {
        let name = ServerName::try_from(node_name(node)).ok()?;
        if cert.verify_is_valid_for_subject_name(&name).is_ok() {
            if found.is_some() {
                return None;
            }
            found = Some(node);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_name_their_node_and_only_it() {
        let dir = std::env::temp_dir().join(format!("sb-mesh-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_cluster_certs(3, &dir).unwrap();
        // Made once: a second call keeps them.
        let before = std::fs::read(dir.join("node-2.pem")).unwrap();
        write_cluster_certs(3, &dir).unwrap();
        assert_eq!(std::fs::read(dir.join("node-2.pem")).unwrap(), before);
        for i in 1..=3u16 {
            MeshTls::load_dir(&dir, NodeId(i)).unwrap();
            let cert = CertificateDer::from_pem_file(dir.join(format!("node-{i}.pem"))).unwrap();
            assert_eq!(node_of(&cert, (1..=3).map(NodeId)), Some(NodeId(i)));
            assert_eq!(node_of(&cert, [NodeId(i % 3 + 1)]), None);
        }
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.join("ca.key")).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_file(dir.join("node-3.pem")).unwrap();
        assert!(write_cluster_certs(3, &dir).is_err(), "a half-made folder is an error");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
