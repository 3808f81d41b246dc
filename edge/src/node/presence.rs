//! Presence (DESIGN.md): a user is online while any of their connections is alive; last-seen
//! is written when the last one goes. Read on demand, never broadcast.
//!
//! Written on connect and disconnect only, read by `presence` requests: never on the message
//! path, so a few striped mutexes are enough. One entry per user ever seen (about 60 B).
//!
//! Last-seen survives restarts: each last disconnect is appended to
//! `<data_dir>/presence/last-seen` by a writer thread (a line `MS USER`, a flush and an
//! `fdatasync` per batch of whatever arrived meanwhile), and the file is read back, and
//! rewritten with one line per user, at start. It is soft state: the shard never waits for
//! it (a full queue drops the update and counts it), a torn last line is skipped, and a
//! process killed within a batch's few milliseconds loses that batch's updates. Users online
//! when a node dies keep the last-seen of their previous disconnect.

use crate::proto::server::{PresenceItem, ServerFrame};
use crate::ws::handshake::Encoding;
use bytes::Bytes;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use switchboard_store::UserId;

const STRIPES: usize = 64;
/// Last-seen updates waiting for the writer; past it they are dropped (and counted).
const JOURNAL_QUEUE_MAX: usize = 65_536;
const JOURNAL_FILE: &str = "last-seen";

/// What the writer thread is given.
enum Update {
    Seen(Box<str>, u64),
    /// Put down what came before, then end.
    Stop,
}

/// The writer of last-seen updates. Disconnects reach it without a lock of their own (the
/// sender is shared); only stopping takes the thread's handle.
struct Journal {
    tx: std::sync::mpsc::SyncSender<Update>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    dropped: AtomicU64,
}

impl Journal {
    /// Waits for the writer to put down everything queued before this call, and stops it.
    fn stop(&self) {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = self.tx.send(Update::Stop);
            let _ = thread.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    connections: u32,
    last_seen_ms: u64,
}

pub struct Presence {
    stripes: Vec<Mutex<HashMap<Box<str>, Entry>>>,
    hasher: RandomState,
    /// `None` in memory only.
    journal: Option<Journal>,
}

impl Default for Presence {
    /// Presence in memory only (tests).
    fn default() -> Self {
        Presence {
            stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            journal: None,
        }
    }
}

/// `MS USER` lines, later lines winning; a line that does not parse (a torn tail) is skipped.
fn read_journal(text: &str) -> HashMap<Box<str>, u64> {
    let mut seen = HashMap::new();
    for line in text.lines() {
        let Some((ms, user)) = line.split_once(' ') else { continue };
        let (Ok(ms), Ok(user)) = (ms.parse::<u64>(), UserId::new(user)) else { continue };
        seen.insert(user.as_str().into(), ms);
    }
    seen
}

impl Presence {
    /// Presence whose last-seen is kept in `dir` (created if missing).
    pub fn open(dir: &Path) -> std::io::Result<Presence> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(JOURNAL_FILE);
        let seen = match std::fs::read_to_string(&path) {
            Ok(text) => read_journal(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(e),
        };
        // Compacted: one line per user, written aside and renamed over the old file.
        let tmp = dir.join(format!("{JOURNAL_FILE}.tmp"));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for (user, ms) in &seen {
            writeln!(out, "{ms} {user}")?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()?;
        let mut presence = Presence::default();
        for (user, ms) in seen {
            presence.stripe(&user).insert(user.clone(), Entry { connections: 0, last_seen_ms: ms });
        }
        let file = std::fs::OpenOptions::new().append(true).open(&path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Update>(JOURNAL_QUEUE_MAX);
        let thread = std::thread::Builder::new().name("last-seen".into()).spawn(move || {
            let mut out = std::io::BufWriter::new(file);
            let mut stop = false;
            while let Ok(first) = rx.recv() {
                let mut next = Some(first);
                while let Some(write) = next.take() {
                    match write {
                        Update::Seen(user, ms) => {
                            let _ = writeln!(out, "{ms} {user}");
                        }
                        Update::Stop => stop = true,
                    }
                    next = if stop { None } else { rx.try_recv().ok() };
                }
                if out.flush().and_then(|()| out.get_ref().sync_data()).is_err() {
                    tracing::warn!("last-seen could not be written; presence keeps it in memory");
                }
                if stop {
                    return;
                }
            }
        })?;
        presence.journal = Some(Journal { tx, thread: Mutex::new(Some(thread)), dropped: AtomicU64::new(0) });
        Ok(presence)
    }

    /// Last-seen updates dropped because the writer fell behind (or had stopped).
    pub fn dropped(&self) -> u64 {
        self.journal.as_ref().map_or(0, |j| j.dropped.load(Ordering::Relaxed))
    }

    /// Writes down every update queued so far and stops writing (the node is stopping).
    pub fn close(&self) {
        if let Some(journal) = &self.journal {
            journal.stop();
        }
    }

    fn stripe(&self, user: &str) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Entry>> {
        let i = self.hasher.hash_one(user) as usize % STRIPES;
        self.stripes[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn connected(&self, user: &str) {
        self.stripe(user).entry(user.into()).or_default().connections += 1;
    }

    pub fn disconnected(&self, user: &str, now_ms: u64) {
        let last = match self.stripe(user).get_mut(user) {
            Some(e) => {
                e.connections = e.connections.saturating_sub(1);
                e.last_seen_ms = now_ms;
                e.connections == 0
            }
            None => false,
        };
        if let (true, Some(journal)) = (last, &self.journal) {
            if journal.tx.try_send(Update::Seen(user.into(), now_ms)).is_err() {
                journal.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// (online, last seen in ms since the epoch: `None` while online or never seen).
    pub fn get(&self, user: &str) -> (bool, Option<u64>) {
        match self.stripe(user).get(user) {
            Some(e) if e.connections > 0 => (true, None),
            Some(e) => (false, Some(e.last_seen_ms)),
            None => (false, None),
        }
    }
}

/// The `presence` frame for `users` in these states (online, last seen), in `encoding`.
pub fn frame(users: &[UserId], states: &[(bool, Option<u64>)], req: Option<&str>, encoding: Encoding) -> Bytes {
    let items = users
        .iter()
        .zip(states)
        .map(|(u, &(online, last_seen))| PresenceItem { user: u.as_str(), online, last_seen })
        .collect();
    ServerFrame::Presence { users: items, req }.encode(encoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_while_any_connection_lives() {
        let p = Presence::default();
        assert_eq!(p.get("a"), (false, None));
        p.connected("a");
        p.connected("a");
        p.disconnected("a", 10);
        assert_eq!(p.get("a"), (true, None));
        p.disconnected("a", 20);
        assert_eq!(p.get("a"), (false, Some(20)));
    }

    #[test]
    fn last_seen_survives_a_restart_and_a_torn_line() {
        let dir = std::env::temp_dir().join(format!("sb-presence-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = Presence::open(&dir).unwrap();
        for (user, ms) in [("a", 10), ("b", 20), ("a", 30)] {
            p.connected(user);
            p.disconnected(user, ms);
        }
        p.connected("c");
        drop(p);
        // A write torn by a crash, then a restart.
        let mut file = std::fs::OpenOptions::new().append(true).open(dir.join(JOURNAL_FILE)).unwrap();
        file.write_all(b"40 b\n5").unwrap();
        let p = Presence::open(&dir).unwrap();
        assert_eq!(p.get("a"), (false, Some(30)));
        assert_eq!(p.get("b"), (false, Some(40)));
        assert_eq!(p.get("c"), (false, None), "online at the stop, never disconnected");
        assert_eq!(p.dropped(), 0);
        drop(p);
        // Compacted at start: one line per user.
        let text = std::fs::read_to_string(dir.join(JOURNAL_FILE)).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
