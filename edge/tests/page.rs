//! The chat page at `/` and its development sign-in (`POST /dev/token`), against a real
//! daemon: the sign-in mints tokens only on a node that checks them with the development
//! secret it generated, and is refused with a configured secret or public key.

mod support;

use serde_json::{json, Value};
use std::io::{Read, Write};
use support::Server;

/// A GET's status line, content type and body.
fn get(server: &Server, path: &str) -> (String, String, String) {
    let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_string();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or_else(|| panic!("no content type in {head}"))
        .to_string();
    (status, content_type, body.to_string())
}

#[test]
fn the_chat_page_and_the_client_it_imports_are_served_from_the_binary() {
    let server = Server::start(&[]);
    let (status, content_type, page) = get(&server, "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(page.contains("/app.js"), "{page}");
    let (status, content_type, client) = get(&server, "/switchboard-client.js");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(content_type.starts_with("text/javascript"), "{content_type}");
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/js-client/src/index.js")).unwrap();
    assert_eq!(client, source, "the page gets the npm package's own source");
    let (status, _, _) = get(&server, "/nothing-here.js");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[test]
fn the_development_sign_in_mints_a_token_that_the_node_accepts() {
    let server = Server::start(&[]);
    let (status, v) = server.http("POST", "/dev/token", None, Some(json!({"user": "alice"})));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["user"], "alice");
    let token = v["token"].as_str().unwrap();
    let mut c = support::Client::connect(&server, &format!("/v1/ws?token={token}"), None);
    c.send(json!({"t": "hello"}));
    assert_eq!(c.expect("welcome")["user"], "alice");
    let (status, v) = server.http("GET", "/v1/presence?users=alice", Some(token), None);
    assert_eq!((status, v["users"][0]["online"].clone()), (200, Value::Bool(true)), "{v}");
    // Not an admin: the sign-in gives ordinary users only.
    let (status, _) = server.http("POST", "/v1/conversations/dm:alice:bob/messages", Some(token), None);
    assert_eq!(status, 400);
    let (status, v) = server.http(
        "POST",
        "/v1/conversations/dm:alice:bob/messages",
        Some(token),
        Some(json!({"id": "1", "body": "x", "from": "bob"})),
    );
    assert_eq!((status, v["code"].as_str()), (403, Some("forbidden")), "{v}");
    for bad in [json!({"user": "no spaces"}), json!({"user": ""}), json!({}), json!({"user": 7})] {
        let (status, v) = server.http("POST", "/dev/token", None, Some(bad.clone()));
        assert_eq!((status, v["code"].as_str()), (400, Some("bad_request")), "{bad}: {v}");
    }
}

#[test]
fn a_node_with_its_own_secret_or_public_key_refuses_the_development_sign_in() {
    let dir = std::env::temp_dir().join(format!("switchboard-page-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, "a secret the operator chose").unwrap();
    let public = dir.join("es256.pem");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let with_secret = format!("jwt_secret_file={:?}", secret.display().to_string());
    let with_key = format!("jwt_public_key_file={:?}", public.display().to_string());
    for args in [vec!["--set", &with_secret], vec!["--set", "jwt_algorithm=\"ES256\"", "--set", &with_key]] {
        let server = Server::start(&args);
        let (status, v) = server.http("POST", "/dev/token", None, Some(json!({"user": "mallory"})));
        assert_eq!((status, v["code"].as_str()), (403, Some("forbidden")), "{args:?}: {v}");
        assert!(v["message"].as_str().unwrap().contains("development sign-in is off"), "{v}");
        // The page itself is still there (it asks for a token instead).
        assert_eq!(get(&server, "/").0, "HTTP/1.1 200 OK");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The history of `conv` as `user` sees it, once `--demo` has seeded `count` messages.
fn seeded(server: &Server, user: &str, conv: &str, count: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let path = format!("/v1/conversations/{conv}/messages?limit=100");
        let (status, v) = server.http("GET", &path, Some(&server.token(user)), None);
        let messages = v["messages"].as_array().cloned().unwrap_or_default();
        if status == 200 && messages.len() >= count {
            return messages;
        }
        assert!(std::time::Instant::now() < deadline, "never seeded: {status} {v}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn demo_seeds_a_dm_a_group_and_a_channel_once() {
    let server = Server::start(&["--demo"]);
    assert_eq!(seeded(&server, "bob", "dm:alice:bob", 4).len(), 4);
    let ids: Value = serde_json::from_slice(&std::fs::read(server.dir.join("demo.json")).unwrap()).unwrap();
    let (group, channel) =
        (ids["Team"].as_str().unwrap().to_string(), ids["Announcements"].as_str().unwrap().to_string());
    assert_eq!(seeded(&server, "carol", &group, 3).len(), 3);
    assert_eq!(seeded(&server, "dave", &channel, 2).len(), 2);
    // Again on the same data folder: the same conversations, and no message twice.
    let server = server.terminate_and_restart();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let again: Value = serde_json::from_slice(&std::fs::read(server.dir.join("demo.json")).unwrap()).unwrap();
    assert_eq!(again, ids);
    assert_eq!(seeded(&server, "alice", "dm:alice:bob", 4).len(), 4);
    assert_eq!(seeded(&server, "alice", &group, 3).len(), 3);
}
