//! `wss://` and `https://` with rustls, when a certificate and key are configured.

mod support;

use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use support::Server;
use tungstenite::Message;

fn client_config(cert_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn tls_stream(
    addr: &str,
    config: &Arc<rustls::ClientConfig>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), "localhost".try_into().unwrap()).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

#[test]
fn wss_and_https_with_a_configured_certificate() {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!("switchboard-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, key.cert.pem()).unwrap();
    std::fs::write(&key_file, key.signing_key.serialize_pem()).unwrap();
    let s = Server::start(&[
        "--set",
        &format!("tls_cert_file={:?}", cert_file.display().to_string()),
        "--set",
        &format!("tls_key_file={:?}", key_file.display().to_string()),
    ]);
    let config = client_config(&key.cert.pem());

    // https: REST over TLS.
    let mut https = tls_stream(&s.addr, &config);
    write!(https, "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = https.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(r#"{"status":"ok"}"#), "{response}");

    // wss: two users over TLS, a message between them.
    let connect = |user: &str| {
        let url = format!("ws://localhost/v1/ws?token={}", s.token(user));
        let (mut ws, _) = tungstenite::client(url, tls_stream(&s.addr, &config)).unwrap();
        ws.send(Message::text(r#"{"t":"hello"}"#)).unwrap();
        let welcome: serde_json::Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
        assert_eq!(welcome["user"], user);
        ws
    };
    let mut alice = connect("alice");
    let mut bob = connect("bob");
    alice.send(Message::text(json!({"t":"send","to":"bob","id":"tls","body":"x".repeat(10_000)}).to_string())).unwrap();
    let ack: serde_json::Value = serde_json::from_str(alice.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!((ack["t"].as_str(), ack["seq"].as_u64()), (Some("ack"), Some(1)));
    let msg: serde_json::Value = serde_json::from_str(bob.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!((msg["t"].as_str(), msg["body"].as_str().map(str::len)), (Some("msg"), Some(10_000)));

    // Plain WebSocket is not spoken on a TLS port.
    let mut plain = TcpStream::connect(&s.addr).unwrap();
    plain.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    write!(plain, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = plain.read_to_end(&mut out);
    assert!(!out.starts_with(b"HTTP/1.1 200"), "a plaintext request must not be served on a TLS port");
    let _ = std::fs::remove_dir_all(&dir);
}
