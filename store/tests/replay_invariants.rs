//! A log whose every checksum is right but whose messages break the sequencer's rules is
//! corruption. Recovery replays most messages from a digest worked out ahead of the replay,
//! without decoding them, and the rest decoded: both ways must hold the same rules, on every
//! recovery path (real files, read in place or with `O_DIRECT`, verified on a second thread or
//! on the opening one; the simulated disk, read into a buffer, inline).

mod common;
use common::*;
use switchboard_store::log::Log;
use switchboard_store::record::{ConvRecord, MemberChange, MembersRecord, MessageRecord, Record};
use switchboard_store::storage::{FsStorage, SimDisk, SimStorage, Storage};
use switchboard_store::*;

/// A message as written: conversation, seq, membership change.
type Msg = (&'static str, u64, Option<(MemberChange, &'static str)>);

/// Writes group `g` (alice its only member), then `messages` from alice, as they are given.
fn write_raw<S: Storage>(storage: S, messages: &[Msg]) {
    let config = LogConfig::default();
    let (mut log, _) = Log::open(storage, config, &mut |_: Location, _: &Record<'_>| Ok(())).unwrap();
    let conv = ConvRecord {
        conv: "g",
        kind: ConvKind::Group,
        ts_ms: 1,
        floor: Seq(1),
        head: Seq(0),
        head_location: None,
        owner: "alice",
        title: "",
    };
    log.stage(&Record::Conv(conv), 1).unwrap();
    log.stage(&Record::Members(MembersRecord { conv: "g", users: vec!["alice"] }), 1).unwrap();
    let ids: Vec<String> = (0..messages.len()).map(|i| format!("c{i}")).collect();
    // Each message links to the one before it in its conversation, as reads expect.
    let mut prev: std::collections::HashMap<&str, Location> = Default::default();
    for (&(conv, seq, effect), id) in messages.iter().zip(&ids) {
        let (kind, client_id): (&str, &[u8]) = match effect {
            Some(_) => ("system", b""),
            None => ("text", id.as_bytes()),
        };
        let m = MessageRecord {
            conv,
            seq: Seq(seq),
            ts_ms: 2,
            prev: prev.get(conv).copied(),
            sender: "alice",
            client_id,
            kind,
            body: b"\"x\"",
            effect,
        };
        prev.insert(conv, log.stage(&Record::Message(m), 2).unwrap());
    }
    log.commit().unwrap();
}

/// Logs that must be refused, and why.
const BROKEN: &[(&str, &[Msg])] = &[
    ("a gap", &[("g", 1, None), ("g", 2, None), ("g", 4, None)]),
    ("a seq repeated", &[("g", 1, None), ("g", 2, None), ("g", 2, None)]),
    ("seq 0", &[("g", 0, None)]),
    ("a gap after a membership change", &[("g", 1, Some((MemberChange::Added, "bob"))), ("g", 3, None)]),
    ("a conversation never created", &[("g", 1, None), ("h", 1, None)]),
];

/// A good log that mixes plain messages and membership changes.
const GOOD: &[Msg] = &[
    ("g", 1, None),
    ("g", 2, Some((MemberChange::Added, "bob"))),
    ("g", 3, None),
    ("g", 4, Some((MemberChange::Removed, "alice"))),
    ("g", 5, Some((MemberChange::Added, "alice"))),
    ("g", 6, None),
];

fn expect_corrupt<S: Storage>(opened: Result<(Shard<S>, Recovery)>, why: &str) {
    match opened {
        Err(Error::Corrupt { .. }) => {}
        Err(e) => panic!("{why}: expected corruption, got {e}"),
        Ok(_) => panic!("{why}: the log was accepted"),
    }
}

/// The good log's state is all there, and its messages' client ids are known after the
/// restart: a retry is a duplicate with the original seq.
fn check_good<S: Storage>(opened: Result<(Shard<S>, Recovery)>) {
    let (mut s, _) = opened.unwrap();
    let g = conv("g");
    assert_eq!(s.conv_info(&g).unwrap().head, Seq(6));
    assert!(s.is_member(&g, &user("bob")));
    assert!(s.is_member(&g, &user("alice")));
    for (i, seq) in [(0, 1), (2, 3), (5, 6)] {
        let a = send(&mut s, &g, &user("alice"), &format!("c{i}"), b"\"x\"").unwrap();
        assert!(a.dup, "c{i} is a retry");
        assert_eq!(a.seq, Seq(seq));
    }
    assert_eq!(send(&mut s, &g, &user("alice"), "new", b"\"x\"").unwrap().seq, Seq(7));
}

#[test]
fn broken_sequencing_is_corruption_in_files() {
    for log in file_recovery_configs() {
        let config = || ShardConfig { log: log.clone(), ..Default::default() };
        for (why, messages) in BROKEN {
            let dir = tempfile::tempdir().unwrap();
            write_raw(FsStorage::open(dir.path()).unwrap(), messages);
            expect_corrupt(Shard::open(FsStorage::open(dir.path()).unwrap(), config()), why);
        }
        let dir = tempfile::tempdir().unwrap();
        write_raw(FsStorage::open(dir.path()).unwrap(), GOOD);
        check_good(Shard::open(FsStorage::open(dir.path()).unwrap(), config()));
    }
}

#[test]
fn broken_sequencing_is_corruption_on_the_simulated_disk() {
    for (i, (why, messages)) in BROKEN.iter().enumerate() {
        let disk = SimDisk::new(i as u64);
        write_raw(SimStorage(disk.clone()), messages);
        expect_corrupt(Shard::open(SimStorage(disk.clone()), ShardConfig::default()), why);
    }
    let disk = SimDisk::new(99);
    write_raw(SimStorage(disk.clone()), GOOD);
    check_good(Shard::open(SimStorage(disk), ShardConfig::default()));
}
