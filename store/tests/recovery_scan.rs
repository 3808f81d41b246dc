//! The recovery scan reads each segment in 1 MiB windows (real files in place or with
//! `O_DIRECT`, on a second thread with `recovery_helpers` or on the opening thread without; the
//! simulated disk into a buffer, inline): batches larger than a window, batches cut by a
//! window's edge, segments rolled between them, and a torn tail inside a large batch. And which
//! way a segment is read: in place only if the page cache holds all of it.

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

/// `config`, with recovery reading files as `log` says.
fn config_with(segment_bytes_max: u64, log: &LogConfig) -> ShardConfig {
    let mut c = config(segment_bytes_max);
    c.log.recovery_helpers = log.recovery_helpers;
    c.log.recovery_reads = log.recovery_reads;
    c
}

/// The recovery read every segment with `O_DIRECT` if it was asked to and the files allow it,
/// and none otherwise.
fn check_reads(recovery: &Recovery, log: &LogConfig, dir: &std::path::Path) {
    let direct = log.recovery_reads == RecoveryReads::Direct && direct_io_works(dir);
    assert_eq!(recovery.segments_read_direct, if direct { recovery.segments } else { 0 }, "{log:?}");
}

#[test]
fn large_and_window_straddling_batches_come_back_whole_from_files() {
    // One segment for everything, then segments of 2 MiB (rolled between batches); read every
    // way there is.
    for (segment_bytes_max, log) in file_recovery_configs().iter().flat_map(|log| [(128 << 20, log), (2 << 20, log)]) {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (user("alice"), user("bob"));
        let dm = ConvId::dm(&a, &b);
        let (mut s, _) = Shard::open(FsStorage::open(dir.path()).unwrap(), config(segment_bytes_max)).unwrap();
        let lengths = write(&mut s, &dm, &a);
        drop(s);
        let config = config_with(segment_bytes_max, log);
        let (mut s, recovery) = Shard::open(FsStorage::open(dir.path()).unwrap(), config).unwrap();
        assert_eq!(recovery.records as usize, lengths.len() + 2, "the messages, and the dm's creation and members");
        assert_eq!(recovery.torn_bytes_cut, 0);
        check_reads(&recovery, log, dir.path());
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
    for log in file_recovery_configs() {
        torn_large_batch(&log);
    }
}

fn torn_large_batch(reads: &LogConfig) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (user("alice"), user("bob"));
    let dm = ConvId::dm(&a, &b);
    let config = || config_with(128 << 20, reads);
    let (mut s, _) = Shard::open(FsStorage::open(dir.path()).unwrap(), config()).unwrap();
    let mut lengths = write(&mut s, &dm, &a);
    let log = log_files(dir.path()).remove(0);
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
    check_reads(&recovery, reads, dir.path());
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

#[test]
fn by_default_a_segment_is_read_in_place_only_if_the_page_cache_holds_all_of_it() {
    let dir = tempfile::tempdir().unwrap();
    if !direct_io_works(dir.path()) {
        eprintln!("O_DIRECT refused here: every segment is read in place");
        return;
    }
    let (a, b) = (user("alice"), user("bob"));
    let dm = ConvId::dm(&a, &b);
    let (mut s, _) = Shard::open(FsStorage::open(dir.path()).unwrap(), config(2 << 20)).unwrap();
    let lengths = write(&mut s, &dm, &a);
    drop(s);
    let logs = log_files(dir.path());
    assert!(logs.len() > 2, "segments: {}", logs.len());
    // Out of the cache (written back first, so that every page can go): read around it.
    for log in &logs {
        let f = std::fs::File::open(log).unwrap();
        f.sync_all().unwrap();
        // Safety: advice on a descriptor we own.
        unsafe { libc::posix_fadvise(std::os::unix::io::AsRawFd::as_raw_fd(&f), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    let (mut s, recovery) = Shard::open(FsStorage::open(dir.path()).unwrap(), config(2 << 20)).unwrap();
    assert_eq!(recovery.segments_read_direct, recovery.segments);
    check(&mut s, &dm, &lengths);
    drop(s);
    // All in the cache: in place.
    for log in &logs {
        std::fs::read(log).unwrap();
    }
    let (mut s, recovery) = Shard::open(FsStorage::open(dir.path()).unwrap(), config(2 << 20)).unwrap();
    assert_eq!(recovery.segments_read_direct, 0);
    check(&mut s, &dm, &lengths);
}

#[test]
fn small_batches_over_the_ends_of_direct_read_blocks_come_back_whole() {
    // Small commits over several of `O_DIRECT`'s 4 MiB blocks: at each block's end a window
    // stops short of the batch that runs over it, and the next window, starting in the block's
    // last few KiB, is copied together from both blocks.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (user("alice"), user("bob"));
    let dm = ConvId::dm(&a, &b);
    let mut fast = config(128 << 20);
    fast.log.fsync = Fsync::Never; // what is read back is the point, not durability
    let (mut s, _) = Shard::open(FsStorage::open(dir.path()).unwrap(), fast).unwrap();
    let mut lengths = Vec::new();
    while lengths.len() < 12_000 {
        for _ in 0..5 {
            let seq = lengths.len() as u64 + 1;
            assert_eq!(send(&mut s, &dm, &a, &format!("m{seq}"), &body(seq, 1000)).unwrap().seq, Seq(seq));
            lengths.push(1000);
        }
        s.commit().unwrap();
    }
    drop(s);
    for log in file_recovery_configs() {
        let (mut s, recovery) =
            Shard::open(FsStorage::open(dir.path()).unwrap(), config_with(128 << 20, &log)).unwrap();
        assert!(recovery.bytes > 2 * (4 << 20), "{} bytes: not over two blocks", recovery.bytes);
        check_reads(&recovery, &log, dir.path());
        check(&mut s, &dm, &lengths);
    }
}

#[test]
fn a_torn_tail_before_a_segment_of_garbage_is_cut_and_the_garbage_removed() {
    // A crash just after a roll: the last batch of the segment before is torn (its index was
    // never written) and the new segment holds only garbage. Recovery starts reading the next
    // segment while it replays the one before, so this is also where a reader it opened ahead
    // must let go of a file that the cut then removes.
    let damaged = tempfile::tempdir().unwrap();
    let (a, b) = (user("alice"), user("bob"));
    let dm = ConvId::dm(&a, &b);
    let (mut s, _) = Shard::open(FsStorage::open(damaged.path()).unwrap(), config(2 << 20)).unwrap();
    let lengths = write(&mut s, &dm, &a);
    drop(s);
    let logs = log_files(damaged.path());
    assert!(logs.len() > 2, "segments: {}", logs.len());
    let (torn, garbage) = (&logs[logs.len() - 2], &logs[logs.len() - 1]);
    std::fs::remove_file(torn.with_extension("index")).unwrap();
    let torn_len = std::fs::metadata(torn).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(torn).unwrap().set_len(torn_len - 1000).unwrap();
    std::fs::write(garbage, vec![0xa5; 3 << 20]).unwrap();
    let mut heads = Vec::new();
    for log in file_recovery_configs() {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(damaged.path(), dir.path());
        let (mut s, recovery) = Shard::open(FsStorage::open(dir.path()).unwrap(), config_with(2 << 20, &log)).unwrap();
        // What was left of the last batch: more than was cut off, less than the largest batch.
        assert!((1..300_000).contains(&recovery.torn_bytes_cut), "{log:?}: cut {}", recovery.torn_bytes_cut);
        assert!(!dir.path().join(garbage.file_name().unwrap()).exists(), "{log:?}: the garbage is still there");
        let direct = log.recovery_reads == RecoveryReads::Direct && direct_io_works(dir.path());
        assert_eq!(recovery.segments_read_direct, if direct { recovery.segments - 1 } else { 0 }, "{log:?}");
        let head = s.conv_info(&dm).unwrap().head.0 as usize;
        // The torn batch (five messages) and the garbage segment's are gone; all before stay.
        assert!(head > 0 && head <= lengths.len() - 5, "{log:?}: head {head} of {}", lengths.len());
        check(&mut s, &dm, &lengths[..head]);
        heads.push(head);
        // Appends go on right after, into the torn segment, and survive a reopen.
        let next = head as u64 + 1;
        assert_eq!(send(&mut s, &dm, &a, "after", &body(next, 10)).unwrap().seq, Seq(next));
        s.commit().unwrap();
        drop(s);
        let (mut s, _) = Shard::open(FsStorage::open(dir.path()).unwrap(), config_with(2 << 20, &log)).unwrap();
        let mut after = lengths[..head].to_vec();
        after.push(10);
        check(&mut s, &dm, &after);
    }
    assert!(heads.windows(2).all(|w| w[0] == w[1]), "every way of reading agrees: {heads:?}");
}
