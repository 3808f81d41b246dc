//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use switchboard_store::storage::{SimDisk, SimStorage, Storage};
use switchboard_store::*;

pub fn user(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

pub fn conv(s: &str) -> ConvId {
    ConvId::new(s).unwrap()
}

/// A small-segment configuration so that tests roll segments often.
pub fn small_config() -> ShardConfig {
    ShardConfig {
        log: LogConfig { segment_bytes_max: 4096, index_interval_bytes: 256, ..LogConfig::default() },
        retention: Retention::default(),
        ..ShardConfig::default()
    }
}

/// `small_config`, with the dedup index rebuilt on a helper thread at every open.
pub fn small_config_parallel() -> ShardConfig {
    ShardConfig { parallel_dedup_rebuild_bytes_min: 0, ..small_config() }
}

pub fn open_sim(disk: &std::rc::Rc<std::cell::RefCell<SimDisk>>, config: ShardConfig) -> Result<Shard<SimStorage>> {
    Shard::open(SimStorage(disk.clone()), config).map(|(s, _)| s)
}

pub fn send<S: Storage>(shard: &mut Shard<S>, c: &ConvId, from: &UserId, id: &str, body: &[u8]) -> Result<Appended> {
    shard.send(SendRequest { conv: c, sender: from, client_id: id.as_bytes(), kind: "text", body, ts_ms: 1000 })
}

/// The first gap reported, and the messages.
pub type Pages = (Option<(Seq, Seq)>, Vec<StoredMessage>);

/// Every retained message of a conversation, read forward in pages of `page`.
pub fn read_all<S: Storage>(shard: &mut Shard<S>, c: &ConvId, page: usize) -> Result<Pages> {
    let mut after = Seq(0);
    let mut out = Vec::new();
    let mut first_gap = None;
    loop {
        let p = shard.range(c, None, after, page)?;
        if first_gap.is_none() {
            first_gap = p.gap;
        }
        out.extend(p.messages);
        after = p.upto;
        if !p.more {
            return Ok((first_gap, out));
        }
    }
}

/// Whether files in `dir` can be opened with `O_DIRECT` (not on tmpfs, for one), so that a
/// test can insist that recovery read them that way where it can.
pub fn direct_io_works(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join("direct-probe");
    std::fs::write(&probe, [0u8; 4096]).unwrap();
    let works = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(&probe).is_ok();
    std::fs::remove_file(&probe).unwrap();
    works
}

/// Every way recovery can read files: in place, or with `O_DIRECT`; each with its helper
/// threads and without.
pub fn file_recovery_configs() -> Vec<LogConfig> {
    let mut all = Vec::new();
    for recovery_reads in [RecoveryReads::Mapped, RecoveryReads::Direct] {
        for recovery_helpers in [true, false] {
            all.push(LogConfig { recovery_reads, recovery_helpers, ..LogConfig::default() });
        }
    }
    all
}

/// The log segment files in a data folder, in log order.
pub fn log_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

/// Copies a data folder's files (not its lock) into another folder.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
