//! `switchboard-ctl log inspect` and `log verify` against real data folders.

use std::process::Command;

use switchboard_store::storage::FsStorage;
use switchboard_store::*;

fn ctl(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard-ctl")).args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn build(dir: &std::path::Path) {
    let (mut s, _) = Shard::open(FsStorage::open(dir).unwrap(), ShardConfig::default()).unwrap();
    let (a, b) = (UserId::new("alice").unwrap(), UserId::new("bob").unwrap());
    let dm = ConvId::dm(&a, &b);
    for i in 0..50 {
        let id = format!("m{i}");
        let body = format!("\"hello {i}\"");
        s.send(SendRequest {
            conv: &dm,
            sender: &a,
            client_id: id.as_bytes(),
            kind: "text",
            body: body.as_bytes(),
            ts_ms: 7,
        })
        .unwrap();
    }
    s.commit().unwrap();
    s.move_cursor(&dm, &b, CursorKind::Read, Seq(50)).unwrap();
    s.commit().unwrap();
}

#[test]
fn verify_and_inspect_a_healthy_folder() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let d = dir.path().to_str().unwrap();
    let (ok, out) = ctl(&["log", "verify", d]);
    assert!(ok, "{out}");
    assert!(out.contains("ok: 53 records (50 messages, 50 reached through their chains)"), "{out}");
    let (ok, out) = ctl(&["log", "inspect", d, "--conv", "dm:alice:bob", "--limit", "3"]);
    assert!(ok, "{out}");
    assert!(out.contains("conv    dm:alice:bob kind=dm"), "{out}");
    assert!(out.contains("msg     dm:alice:bob seq=1 ts=7 from=alice id=\"m0\" kind=text body=\"hello 0\""), "{out}");
    assert_eq!(out.lines().filter(|l| l.contains(" msg ") || l.contains("conv ") || l.contains("members ")).count(), 3);
    // A live store holds the lock; the tools only read, so they work beside it.
    let _live = FsStorage::open(dir.path()).unwrap();
    assert!(ctl(&["log", "verify", d]).0);
}

#[test]
fn verify_reports_damage_and_never_repairs() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let seg = dir.path().join("00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    // Damage the first batch; the second (the cursor's) is valid after it: corruption.
    bytes[100] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, out) = ctl(&["log", "verify", d]);
    assert!(!ok);
    assert!(out.contains("damaged: corrupt data in 00000000000000000000.log at byte 0"), "{out}");
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "verify never writes");
    // Junk after the last batch is a torn tail: reported, not an error, and not cut.
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let seg = dir.path().join("00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(b"SBB1 torn");
    std::fs::write(&seg, &bytes).unwrap();
    let (ok, out) = ctl(&["log", "verify", dir.path().to_str().unwrap()]);
    assert!(ok && out.contains("a torn tail of 9 bytes"), "{out}");
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
    let (ok, out) = ctl(&["log", "verify", "/nonexistent-folder"]);
    assert!(!ok && out.contains("not a folder"), "{out}");
}

#[test]
fn token_mints_a_jwt_the_daemon_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, out) = ctl(&["token", "alice", "--data-dir", d, "--ttl", "2h", "--admin"]);
    assert!(ok, "{out}");
    assert!(out.contains("created a development secret"));
    let token = out.lines().find(|l| l.starts_with("ey")).unwrap();
    let (secret, created) = switchboard_edge::auth::dev_secret(dir.path()).unwrap();
    assert!(!created, "the same secret is used again");
    let id = switchboard_edge::auth::Verifier::hs256(&secret)
        .verify(token, switchboard_edge::node::now_ms() / 1000)
        .unwrap();
    assert_eq!((id.user.as_str(), id.admin), ("alice", true));
    let (ok, out) = ctl(&["token", "not a user", "--data-dir", d]);
    assert!(!ok && out.contains("user id"), "{out}");
    let (ok, out) = ctl(&["token", "bob", "--data-dir", d, "--ttl", "forever"]);
    assert!(!ok && out.contains("--ttl"), "{out}");
}
