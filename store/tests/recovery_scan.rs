//! The recovery scan reads each segment in 1 MiB windows (real files in place, on a second
//! thread with `recovery_helpers` or on the opening thread without; the simulated disk into a
//! buffer, inline): batches larger than a window, batches cut by a window's edge, segments
//! rolled between them, and a torn tail inside a large batch.

mod common;
use common::*;
use switchboard_store::storage::{FsStorage, SimDisk, SimStorage, Storage};
use switchboard_store::*;

/// Commits of these many messages each, with bodies of these many bytes: small batches, one of
/// ~3 MiB (three windows), and ~300 KiB ones that straddle window edges.
const COMMITS: &[(usize, usize)] = &[(7, 100), (50, 60_000), (5, 300), (5, 60_000), (50, 60_000), (3, 10)];
const MEDIUM_COMMITS: usize = 12;

/// The body of message `seq`: its length and a byte that both depend on the seq.
fn body(seq: u64, len: usize) -> Vec<u8> {
    let mut b = vec![b'a' + (seq % 26) as u8; len];
    b[0] = b'"';
    b[len - 1] = b'"';
    b
}

/// Writes every commit of `COMMITS`, then `MEDIUM_COMMITS` more of ~300 KiB; returns each
/// message's body length, by seq (index 0 is seq 1).
fn write<S: Storage>(s: &mut Shard<S>, dm: &ConvId, from: &UserId) -> Vec<usize> {
    let mut lengths = Vec::new();
    let medium = std::iter::repeat_n((5, 60_000), MEDIUM_COMMITS);
    for (count, len) in COMMITS.iter().copied().chain(medium) {
        for _ in 0..count {
            let seq = lengths.len() as u64 + 1;
            let a = send(s, dm, from, &format!("m{seq}"), &body(seq, len)).unwrap();
            assert_eq!(a.seq, Seq(seq));
            lengths.push(len);
        }
        s.commit().unwrap();
    }
    lengths
}

/// Every message is back, whole and in order.
fn check<S: Storage>(s: &mut Shard<S>, dm: &ConvId, lengths: &[usize]) {
    let (gap, all) = read_all(s, dm, 64).unwrap();
    assert_eq!(gap, None);
    assert_eq!(all.len(), lengths.len());
    for (m, &len) in all.iter().zip(lengths) {
        assert_eq!(&m.body[..], &body(m.seq.0, len)[..], "message {}", m.seq.0);
    }
    assert_eq!(s.conv_info(dm).unwrap().head, Seq(lengths.len() as u64));
}

fn config(segment_bytes_max: u64) -> ShardConfig {
    ShardConfig { log: LogConfig { segment_bytes_max, ..LogConfig::default() }, ..ShardConfig::default() }
}

/// `config`, with recovery's helper threads on or off.
fn config_with(segment_bytes_max: u64, recovery_helpers: bool) -> ShardConfig {
    let mut c = config(segment_bytes_max);
    c.log.recovery_helpers = recovery_helpers;
    c
}

#[test]
fn large_and_window_straddling_batches_come_back_whole_from_files() {
    // One segment for everything, then segments of 2 MiB (rolled between batches); verified on
    // a second thread, then on the opening thread.
    for (segment_bytes_max, helpers) in [(128 << 20, true), (2 << 20, true), (128 << 20, false), (2 << 20, false)] {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (user("alice"), user("bob"));
        let dm = ConvId::dm(&a, &b);
        let (mut s, _) = Shard::open(FsStorage::open(dir.path()).unwrap(), config(segment_bytes_max)).unwrap();
        let lengths = write(&mut s, &dm, &a);
        drop(s);
        let config = config_with(segment_bytes_max, helpers);
        let (mut s, recovery) = Shard::open(FsStorage::open(dir.path()).unwrap(), config).unwrap();
        assert_eq!(recovery.records as usize, lengths.len() + 2, "the messages, and the dm's creation and members");
        assert_eq!(recovery.torn_bytes_cut, 0);
        check(&mut s, &dm, &lengths);
    }
}

#[test]
fn large_and_window_straddling_batches_come_back_whole_from_the_simulated_disk() {
    let disk = SimDisk::new(7);
    let (a, b) = (user("alice"), user("bob"));
    let dm = ConvId::dm(&a, &b);
    let mut s = open_sim(&disk, config(2 << 20)).unwrap();
    let lengths = write(&mut s, &dm, &a);
    drop(s);
    let (mut s, recovery) = Shard::open(SimStorage(disk.clone()), config(2 << 20)).unwrap();
    assert_eq!(recovery.torn_bytes_cut, 0);
    check(&mut s, &dm, &lengths);
}

#[test]
fn a_large_batch_torn_by_the_crash_is_cut_and_the_ones_before_it_kept() {
    for helpers in [true, false] {
        torn_large_batch(helpers);
    }
}

fn torn_large_batch(helpers: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (user("alice"), user("bob"));
    let dm = ConvId::dm(&a, &b);
    let config = || config_with(128 << 20, helpers);
    let (mut s, _) = Shard::open(FsStorage::open(dir.path()).unwrap(), config()).unwrap();
    let mut lengths = write(&mut s, &dm, &a);
    let log = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    let before = std::fs::metadata(&log).unwrap().len();
    // One more commit of ~3 MiB, then the crash tears it in its second window.
    for i in 0..50 {
        let seq = lengths.len() as u64 + 1 + i;
        assert_eq!(send(&mut s, &dm, &a, &format!("torn{i}"), &body(seq, 60_000)).unwrap().seq, Seq(seq));
    }
    s.commit().unwrap();
    drop(s);
    let file = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    file.set_len(before + (1 << 20) + 12_345).unwrap();
    drop(file);
    let (mut s, recovery) = Shard::open(FsStorage::open(dir.path()).unwrap(), config()).unwrap();
    assert_eq!(recovery.torn_bytes_cut, (1 << 20) + 12_345);
    check(&mut s, &dm, &lengths);
    // Appends go on right after the last whole batch.
    let next = lengths.len() as u64 + 1;
    assert_eq!(send(&mut s, &dm, &a, "after", &body(next, 10)).unwrap().seq, Seq(next));
    s.commit().unwrap();
    lengths.push(10);
    drop(s);
    let (mut s, _) = Shard::open(FsStorage::open(dir.path()).unwrap(), config()).unwrap();
    check(&mut s, &dm, &lengths);
}
