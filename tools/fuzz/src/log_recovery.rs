//! Log recovery from an arbitrary data folder.
//!
//! A real log is written first (messages in a few conversations, segments rolling every few
//! KiB), then the input damages the folder: bits flipped, files cut, overwritten, lengthened,
//! removed, and files of the store's names made up whole. Opening it must either refuse with
//! an error, or open a store that serves only messages that were written, each under the seq
//! it was acknowledged with, in increasing seq order, and the same ones when opened again.
//! Untouched, every message comes back.

use arbitrary::{Arbitrary, Unstructured};
use std::collections::BTreeMap;
use switchboard_store::storage::{SimDisk, SimStorage};
use switchboard_store::{ConvId, LogConfig, Retention, SendRequest, Shard, ShardConfig, UserId};

#[derive(Arbitrary, Debug)]
enum Edit {
    Flip {
        file: u8,
        bit: u32,
    },
    Truncate {
        file: u8,
        len: u16,
    },
    Overwrite {
        file: u8,
        at: u16,
        bytes: Vec<u8>,
    },
    Append {
        file: u8,
        bytes: Vec<u8>,
    },
    Remove {
        file: u8,
    },
    /// A file named as a segment or an index at some base offset.
    Make {
        base: u16,
        index: bool,
        bytes: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    messages: u8,
    edits: Vec<Edit>,
}

fn config() -> ShardConfig {
    ShardConfig {
        log: LogConfig { segment_bytes_max: 2048, index_interval_bytes: 256, ..LogConfig::default() },
        retention: Retention::default(),
        ..ShardConfig::default()
    }
}

const USERS: [&str; 3] = ["ann", "bob", "cy"];

/// conv → seq → body: what was acknowledged.
type Written = BTreeMap<String, BTreeMap<u64, Vec<u8>>>;

fn write(disk: &std::rc::Rc<std::cell::RefCell<SimDisk>>, messages: u8) -> Written {
    let (mut shard, _) = Shard::open(SimStorage(disk.clone()), config()).expect("an empty disk opens");
    let mut written = Written::new();
    for i in 0..messages as usize % 64 {
        let (a, b) = (UserId::new(USERS[i % 3]).unwrap(), UserId::new(USERS[(i / 3) % 3]).unwrap());
        let conv = ConvId::dm(&a, &b);
        let body = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i * 7 % 90)).into_bytes();
        let id = format!("m{i}");
        let req =
            SendRequest { conv: &conv, sender: &a, client_id: id.as_bytes(), kind: "text", body: &body, ts_ms: 1000 };
        let appended = shard.send(req).expect("a fresh store takes a message");
        written.entry(conv.to_string()).or_default().insert(appended.seq.0, body);
        if i % 4 == 3 {
            shard.commit().expect("the simulated disk does not fail here");
        }
    }
    shard.commit().expect("the simulated disk does not fail here");
    written
}

fn damage(disk: &mut SimDisk, edit: Edit) {
    let names = disk.names();
    let pick = |i: u8| (!names.is_empty()).then(|| names[i as usize % names.len()].clone());
    match edit {
        Edit::Flip { file, bit } => {
            if let Some(name) = pick(file) {
                disk.flip_bit(&name, u64::from(bit));
            }
        }
        Edit::Truncate { file, len } => {
            if let Some(name) = pick(file) {
                let mut bytes = disk.file(&name).unwrap_or_default();
                bytes.truncate(len as usize);
                disk.replace_durable(&name, Some(bytes));
            }
        }
        Edit::Overwrite { file, at, bytes } => {
            if let Some(name) = pick(file) {
                let mut old = disk.file(&name).unwrap_or_default();
                let at = (at as usize).min(old.len());
                let end = (at + bytes.len()).min(old.len());
                old[at..end].copy_from_slice(&bytes[..end - at]);
                disk.replace_durable(&name, Some(old));
            }
        }
        Edit::Append { file, bytes } => {
            if let Some(name) = pick(file) {
                let mut old = disk.file(&name).unwrap_or_default();
                old.extend_from_slice(&bytes);
                disk.replace_durable(&name, Some(old));
            }
        }
        Edit::Remove { file } => {
            if let Some(name) = pick(file) {
                disk.replace_durable(&name, None);
            }
        }
        Edit::Make { base, index, bytes } => {
            let name = format!("{:020}.{}", base, if index { "index" } else { "log" });
            disk.replace_durable(&name, Some(bytes));
        }
    }
}

/// Everything the store serves, per conversation; `None` if it refuses to open.
fn served(disk: &std::rc::Rc<std::cell::RefCell<SimDisk>>, written: &Written) -> Option<BTreeMap<String, Vec<u64>>> {
    let (mut shard, _) = Shard::open(SimStorage(disk.clone()), config()).ok()?;
    let mut out = BTreeMap::new();
    for (conv, acked) in written {
        let id = ConvId::new(conv).expect("written under this id");
        // An error stops the reading: refusing to serve damaged data is allowed.
        let mut seqs = Vec::new();
        for m in crate::read_forward(&mut shard, &id, 16).messages {
            let body = acked.get(&m.seq.0).unwrap_or_else(|| panic!("{conv} seq {} was never written", m.seq.0));
            assert_eq!(&m.body[..], &body[..], "{conv} seq {} served with another body", m.seq.0);
            seqs.push(m.seq.0);
        }
        out.insert(conv.clone(), seqs);
    }
    Some(out)
}

pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let disk = SimDisk::new(0);
    let written = write(&disk, input.messages);
    let untouched = input.edits.is_empty();
    for edit in input.edits.into_iter().take(16) {
        damage(&mut disk.borrow_mut(), edit);
    }
    let first = served(&disk, &written);
    if untouched {
        let all: BTreeMap<String, Vec<u64>> =
            written.iter().map(|(c, m)| (c.clone(), m.keys().copied().collect())).collect();
        assert_eq!(first.as_ref(), Some(&all), "an undamaged folder lost messages");
    }
    // Recovery may repair (cut a torn tail) on the first open; the second sees its result.
    let second = served(&disk, &written);
    if first.is_some() {
        assert_eq!(first, second, "a second open served something else");
    }
}
