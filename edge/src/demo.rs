//! `switchboard --demo`: a first look is not an empty room. Once the node listens, it seeds a
//! dm, a group and a channel with a few messages, through its own REST API as any client
//! would, signed with the development secret. Message ids are fixed, so a second `--demo`
//! on the same data folder changes nothing (the sends are `dup`), and the conversations are
//! made once (their ids are kept in `<data-dir>/demo.json`).

use crate::auth::mint_hs256;
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;
use switchboard_store::UserId;

/// The people of the demo.
pub const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];

/// What `seed` made: the conversations, by name.
pub struct Seeded {
    pub dm: String,
    pub group: String,
    pub channel: String,
}

/// One REST call to the node.
fn call(addr: SocketAddr, method: &str, path: &str, token: &str, body: &Value) -> Result<(u16, Value), String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("{addr}: {e}"))?;
    crate::rest_client::call(stream, &addr.to_string(), method, path, token, Some(body)).map_err(|e| e.to_string())
}

/// Seeds the node listening on `addr`, whose development secret is `secret` and whose data
/// folder is `data_dir`.
pub fn seed(addr: SocketAddr, secret: &[u8], data_dir: &Path) -> Result<Seeded, String> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let token = |user: &str| mint_hs256(secret, &UserId::new(user).expect("a demo name"), now, 600, false);
    let expect = |what: &str, wanted: u16, (status, v): (u16, Value)| {
        if status == wanted {
            Ok(v)
        } else {
            Err(format!("{what}: {status} {v}"))
        }
    };

    let record = data_dir.join("demo.json");
    let made: Value = std::fs::read(&record).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null);
    let make = |kind: &str, title: &str, members: &[&str]| -> Result<String, String> {
        if let Some(id) = made[title].as_str() {
            return Ok(id.to_string());
        }
        let body = json!({"kind": kind, "title": title, "members": members});
        let v = expect(title, 201, call(addr, "POST", "/v1/conversations", &token("alice"), &body)?)?;
        Ok(v["conv"].as_str().ok_or("no conv in the answer")?.to_string())
    };
    let group = make("group", "Team", &["bob", "carol"])?;
    let channel = make("channel", "Announcements", &["bob", "carol", "dave"])?;
    std::fs::write(&record, json!({"Team": group, "Announcements": channel}).to_string())
        .map_err(|e| format!("{}: {e}", record.display()))?;
    let dm = "dm:alice:bob".to_string();

    let script: [(&str, &str, &str); 9] = [
        (&dm, "bob", "Hi Alice! Is the new chat server up?"),
        (&dm, "alice", "It is. Messages here are durable before they are acknowledged."),
        (&dm, "bob", "And if I go offline?"),
        (&group, "alice", "Welcome to the team room 👋"),
        (&group, "carol", "Hello both. Try the typing indicator."),
        (&group, "bob", "Read ticks turn blue once you have seen a message."),
        (&channel, "alice", "Channels push in full only while open; elsewhere you get a notify."),
        (&channel, "alice", "Sign in as dave to see this one from the outside."),
        (&dm, "alice", "Then you resync on reconnect: nothing lost, nothing twice."),
    ];
    for (i, (conv, from, text)) in script.iter().enumerate() {
        let path = format!("/v1/conversations/{conv}/messages");
        let body = json!({"id": format!("demo-{i}"), "body": {"text": text}});
        expect(conv, 200, call(addr, "POST", &path, &token(from), &body)?)?;
    }
    Ok(Seeded { dm, group, channel })
}
