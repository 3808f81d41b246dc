//! `switchboard-ctl cluster certs`: the files DESIGN.md names, usable by the backplane.

use std::process::Command;
use switchboard_backplane::tls::{node_of, MeshTls};
use switchboard_backplane::NodeId;

#[test]
fn writes_a_ca_and_one_certificate_per_node_that_the_mesh_loads() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard-ctl"))
        .args(["cluster", "certs", "--nodes", "3"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for name in ["ca.pem", "ca.key", "node-1.pem", "node-1.key", "node-2.pem", "node-2.key", "node-3.pem", "node-3.key"]
    {
        assert!(certs.join(name).is_file(), "{name}");
    }
    assert!(!certs.join("node-4.pem").exists());
    use rustls::pki_types::pem::PemObject;
    for i in 1..=3 {
        MeshTls::load_dir(&certs, NodeId(i)).unwrap();
        let cert = rustls::pki_types::CertificateDer::from_pem_file(certs.join(format!("node-{i}.pem"))).unwrap();
        assert_eq!(node_of(&cert, (1..=3).map(NodeId)), Some(NodeId(i)));
    }
    let zero = Command::new(env!("CARGO_BIN_EXE_switchboard-ctl"))
        .args(["cluster", "certs", "--nodes", "0"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(!zero.status.success());
}
