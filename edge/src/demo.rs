//! `switchboard --demo`: a first look is not an empty room. Once the node listens, it seeds a
//! dm, a group and a channel with a few messages, through its own REST API as any client
//! would, signed with the development secret. Message ids are fixed, so a second `--demo`
//! on the same data folder changes nothing (the sends are `dup`), and the conversations are
//! made once (their ids are kept in `<data-dir>/demo.json`).

use crate::auth::{dev_secret, mint_hs256};
use serde_json::{json, Value};
use std::io::{Read, Write};
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

/// One REST call to the node; the status and the JSON answer.
fn call(addr: SocketAddr, method: &str, path: &str, token: &str, body: &Value) -> Result<(u16, Value), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let body = body.to_string();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let status = out.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("no HTTP status")?;
    let answer = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, serde_json::from_str(answer).unwrap_or(Value::Null)))
}

/// Seeds the node listening on `addr` whose data folder is `data_dir`.
pub fn seed(addr: SocketAddr, data_dir: &Path) -> Result<Seeded, String> {
    let (secret, _) = dev_secret(data_dir).map_err(|e| format!("development secret: {e}"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let token = |user: &str| mint_hs256(&secret, &UserId::new(user).expect("a demo name"), now, 600, false);
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
