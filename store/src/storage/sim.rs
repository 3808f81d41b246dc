//! A simulated disk for deterministic fault tests (TigerBeetle's `testing/storage.zig`).
//!
//! Each file has the bytes the process sees and the bytes that are durable. `sync` makes the
//! first durable; `sync_dir` makes creations and removals durable. [`SimDisk::crash`] throws
//! away everything not durable the way a power cut does: unsynced file tails are dropped, kept
//! in part, or kept torn (garbage in place of some bytes); unsynced creations vanish and
//! unsynced removals come back. Fsync can be made to fail, after which the unsynced data is in
//! an unknown state, as on Linux.

use super::Storage;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::rc::Rc;

#[derive(Clone, Default)]
struct SimFile {
    seen: Vec<u8>,
    durable: Vec<u8>,
}

/// The disk itself; tests keep a handle across crashes of the store that uses it.
pub struct SimDisk {
    files: BTreeMap<String, SimFile>,
    /// Names whose existence is durable, with the file as it was when last made durable by a
    /// `sync_dir`, so that an unsynced removal can come back after a crash.
    durable_names: BTreeSet<String>,
    removed: BTreeMap<String, SimFile>,
    rng: SmallRng,
    /// Chance that one `sync` fails.
    pub sync_failure_probability: f64,
    /// Makes the next `sync` fail (a crash or I/O error in the middle of a commit).
    pub fail_next_sync: bool,
    /// Counts, for tests that check the store did what durability needs.
    pub syncs: u64,
    pub dir_syncs: u64,
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such file"))
}

impl SimDisk {
    pub fn new(seed: u64) -> Rc<RefCell<SimDisk>> {
        Rc::new(RefCell::new(SimDisk {
            files: BTreeMap::new(),
            durable_names: BTreeSet::new(),
            removed: BTreeMap::new(),
            rng: SmallRng::seed_from_u64(seed),
            sync_failure_probability: 0.0,
            fail_next_sync: false,
            syncs: 0,
            dir_syncs: 0,
        }))
    }

    /// A power cut: every file goes back to its durable bytes plus, maybe, part of its unsynced
    /// tail, some of it torn.
    pub fn crash(&mut self) {
        let names: Vec<String> = self.files.keys().cloned().collect();
        for name in names {
            if !self.durable_names.contains(&name) {
                self.files.remove(&name);
            }
        }
        for (name, f) in std::mem::take(&mut self.removed) {
            if self.durable_names.contains(&name) && !self.files.contains_key(&name) {
                self.files.insert(name, f);
            }
        }
        let rng = &mut self.rng;
        for f in self.files.values_mut() {
            let mut after = f.durable.clone();
            if f.seen.len() > f.durable.len() && f.seen.starts_with(&f.durable) {
                let tail = &f.seen[f.durable.len()..];
                let keep = match rng.gen_range(0..3) {
                    0 => 0,
                    1 => tail.len(),
                    _ => rng.gen_range(0..=tail.len()),
                };
                let start = after.len();
                after.extend_from_slice(&tail[..keep]);
                if keep > 0 && rng.gen_bool(0.3) {
                    // A torn write: a run of the unsynced bytes is garbage.
                    let a = start + rng.gen_range(0..keep);
                    let b = (a + rng.gen_range(1..=64)).min(after.len());
                    rng.fill(&mut after[a..b]);
                }
            }
            f.seen = after.clone();
            f.durable = after;
        }
    }

    /// Flips one bit of durable data, as a failing disk would.
    pub fn flip_bit(&mut self, name: &str, bit: u64) {
        if let Some(f) = self.files.get_mut(name) {
            if !f.durable.is_empty() {
                let bit = bit % (f.durable.len() as u64 * 8);
                f.durable[(bit / 8) as usize] ^= 1 << (bit % 8);
                f.seen = f.durable.clone();
            }
        }
    }

    /// Puts `bytes` in place of the file `name`, durably (`None` removes it durably): a data
    /// folder damaged or written by something other than the store, for fuzzing recovery.
    pub fn replace_durable(&mut self, name: &str, bytes: Option<Vec<u8>>) {
        self.removed.remove(name);
        match bytes {
            Some(bytes) => {
                self.files.insert(name.to_string(), SimFile { seen: bytes.clone(), durable: bytes });
                self.durable_names.insert(name.to_string());
            }
            None => {
                self.files.remove(name);
                self.durable_names.remove(name);
            }
        }
    }

    pub fn file(&self, name: &str) -> Option<Vec<u8>> {
        self.files.get(name).map(|f| f.seen.clone())
    }

    pub fn names(&self) -> Vec<String> {
        self.files.keys().cloned().collect()
    }
}

/// A handle to a [`SimDisk`], used as the store's [`Storage`].
#[derive(Clone)]
pub struct SimStorage(pub Rc<RefCell<SimDisk>>);

impl Storage for SimStorage {
    fn list(&mut self) -> io::Result<Vec<String>> {
        Ok(self.0.borrow().names())
    }

    fn create(&mut self, name: &str) -> io::Result<()> {
        let mut d = self.0.borrow_mut();
        if d.files.contains_key(name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, name.to_string()));
        }
        d.files.insert(name.to_string(), SimFile::default());
        Ok(())
    }

    fn len(&mut self, name: &str) -> io::Result<u64> {
        let d = self.0.borrow();
        Ok(d.files.get(name).ok_or_else(|| not_found(name))?.seen.len() as u64)
    }

    fn read_at(&mut self, name: &str, position: u64, buf: &mut [u8]) -> io::Result<usize> {
        let d = self.0.borrow();
        let f = d.files.get(name).ok_or_else(|| not_found(name))?;
        let start = (position as usize).min(f.seen.len());
        let n = buf.len().min(f.seen.len() - start);
        buf[..n].copy_from_slice(&f.seen[start..start + n]);
        Ok(n)
    }

    fn write_at(&mut self, name: &str, position: u64, data: &[u8]) -> io::Result<()> {
        let mut d = self.0.borrow_mut();
        let f = d.files.get_mut(name).ok_or_else(|| not_found(name))?;
        let end = position as usize + data.len();
        if f.seen.len() < end {
            f.seen.resize(end, 0);
        }
        f.seen[position as usize..end].copy_from_slice(data);
        Ok(())
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        let mut d = self.0.borrow_mut();
        let p = d.sync_failure_probability;
        if std::mem::take(&mut d.fail_next_sync) || (p > 0.0 && d.rng.gen_bool(p)) {
            return Err(io::Error::other("simulated fsync failure"));
        }
        d.syncs += 1;
        let f = d.files.get_mut(name).ok_or_else(|| not_found(name))?;
        f.durable = f.seen.clone();
        Ok(())
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        let mut d = self.0.borrow_mut();
        let f = d.files.get_mut(name).ok_or_else(|| not_found(name))?;
        f.seen.truncate(len as usize);
        Ok(())
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        let mut d = self.0.borrow_mut();
        let f = d.files.remove(name).ok_or_else(|| not_found(name))?;
        d.removed.insert(name.to_string(), f);
        Ok(())
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        let mut d = self.0.borrow_mut();
        d.dir_syncs += 1;
        d.durable_names = d.files.keys().cloned().collect();
        d.removed.clear();
        Ok(())
    }
}
