//! Presence (DESIGN.md): a user is online while any of their connections is alive; last-seen
//! is written when the last one goes. Read on demand, never broadcast.
//!
//! Written on connect and disconnect only, read by `presence` requests: never on the message
//! path, so a few striped mutexes are enough. One entry per user seen since start (about
//! 60 B); last-seen is kept in memory and starts empty after a restart.

use crate::proto::server::{PresenceItem, ServerFrame};
use crate::ws::handshake::Encoding;
use bytes::Bytes;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use switchboard_store::UserId;

const STRIPES: usize = 64;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    connections: u32,
    last_seen_ms: u64,
}

pub struct Presence {
    stripes: Vec<Mutex<HashMap<Box<str>, Entry>>>,
    hasher: RandomState,
}

impl Default for Presence {
    fn default() -> Self {
        Presence { stripes: (0..STRIPES).map(|_| Mutex::default()).collect(), hasher: RandomState::new() }
    }
}

impl Presence {
    fn stripe(&self, user: &str) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Entry>> {
        let i = self.hasher.hash_one(user) as usize % STRIPES;
        self.stripes[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn connected(&self, user: &str) {
        self.stripe(user).entry(user.into()).or_default().connections += 1;
    }

    pub fn disconnected(&self, user: &str, now_ms: u64) {
        if let Some(e) = self.stripe(user).get_mut(user) {
            e.connections = e.connections.saturating_sub(1);
            e.last_seen_ms = now_ms;
        }
    }

    /// The `presence` frame for `users`, in `encoding`.
    pub fn frame(&self, users: &[UserId], req: Option<&str>, encoding: Encoding) -> Bytes {
        let states: Vec<(bool, Option<u64>)> = users.iter().map(|u| self.get(u.as_str())).collect();
        let items = users
            .iter()
            .zip(&states)
            .map(|(u, &(online, last_seen))| PresenceItem { user: u.as_str(), online, last_seen })
            .collect();
        ServerFrame::Presence { users: items, req }.encode(encoding)
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
}
