//! The checkers: what the simulated cluster must never do, kept apart from the code under
//! test and fed only what a client or an operator could see (acks, pushes, sync pages, and
//! the store read back after a restart). A violation is recorded, not panicked on, so a run
//! reports all it found with the virtual time of each.

use std::collections::{BTreeMap, BTreeSet};

/// One connection's view: which conversation's pushes it saw last, what it sent, and the
/// holes between its pushes, each to be told apart at the end from the connection's own
/// messages (which it is never pushed: its `ack` tells their seq).
#[derive(Default, Debug)]
pub struct ConnView {
    last_push: BTreeMap<String, u64>,
    /// (conv, client id) of every send written on this connection.
    sent: BTreeSet<(String, String)>,
    holes: Vec<Hole>,
}

/// Seqs `after + 1 .. pushed` missing between two pushes of one connection.
#[derive(Debug)]
struct Hole {
    now: u64,
    who: String,
    conv: String,
    after: u64,
    pushed: u64,
}

impl ConnView {
    /// The connection's user joined or left `conv`: its order starts again.
    pub fn forget(&mut self, conv: &str) {
        self.last_push.remove(conv);
    }

    /// The client wrote a send of `id` to `conv` on this connection.
    pub fn sent(&mut self, conv: &str, id: &str) {
        self.sent.insert((conv.to_string(), id.to_string()));
    }
}

/// A group's members over its seqs: those it was created with, then each change with its
/// seq, as the group's own `system` messages record them.
#[derive(Default, Debug)]
pub struct Membership {
    initial: BTreeSet<String>,
    /// (seq, user, added), in seq order.
    changes: Vec<(u64, String, bool)>,
}

impl Membership {
    /// Whether `user` was a member as of `seq` (the change at `seq` itself counts: an added
    /// member gets the message that added it, a removed one not the one that removed it).
    fn member_at(&self, user: &str, seq: u64) -> bool {
        let mut member = self.initial.contains(user);
        for (_, _, added) in self.changes.iter().take_while(|(s, _, _)| *s <= seq).filter(|(_, u, _)| u == user) {
            member = *added;
        }
        member
    }

    /// Whether `user` was added after `seq`: a member again, it may read the history before.
    fn added_after(&self, user: &str, seq: u64) -> bool {
        self.changes.iter().any(|(s, u, added)| *s > seq && u == user && *added)
    }

    /// Whether `user` was outside the group at some point (a `forbidden` then is right).
    fn ever_out(&self, user: &str) -> bool {
        !self.initial.contains(user) || self.changes.iter().any(|(_, u, added)| u == user && !*added)
    }
}

#[derive(Default, Debug)]
pub struct Checker {
    /// conv → seq → client id: every acknowledged message.
    pub acked: BTreeMap<String, BTreeMap<u64, String>>,
    /// (conv, client id) → the seq it was acknowledged with.
    by_id: BTreeMap<(String, String), u64>,
    /// What went wrong, with the virtual time (the first 20).
    pub violations: Vec<String>,
    /// (user, conv, client id) → the seq the user first received it under.
    received: BTreeMap<(String, String, String), u64>,
    pub acks: u64,
    pub pushes: u64,
    pub dup_acks: u64,
    /// (user, conv) → the highest read receipt sent, and the highest answered (durable).
    pub receipts_sent: BTreeMap<(String, String), u64>,
    receipts_acked: BTreeMap<(String, String), u64>,
    pub receipts: u64,
    /// Each group's membership over its seqs.
    members: BTreeMap<String, Membership>,
    /// (time, user, conv): a request refused as `forbidden`.
    forbidden: Vec<(u64, String, String)>,
    /// The views of closed connections that saw holes, settled at the end.
    gone: Vec<ConnView>,
    /// conv → seq → client id: each group as its owner's store holds it at the end.
    stored: BTreeMap<String, BTreeMap<u64, String>>,
    /// (conv, client id) → the connections that wrote a send of it (a retry may come on
    /// another connection).
    writers: BTreeMap<(String, String), BTreeSet<u32>>,
}

impl Checker {
    fn fail(&mut self, now: u64, what: String) {
        if self.violations.len() < 20 {
            self.violations.push(format!("t={now}ms: {what}"));
        }
    }

    /// A send was acknowledged with `seq` (`dup`: as a retry of an earlier one).
    pub fn ack(&mut self, now: u64, conv: &str, id: &str, seq: u64, dup: bool) {
        self.acks += 1;
        self.dup_acks += dup as u64;
        match self.by_id.get(&(conv.to_string(), id.to_string())) {
            Some(&first) if first != seq => self.fail(
                now,
                format!("{conv} id {id}: acknowledged as seq {first}, then as seq {seq} (a retry not idempotent)"),
            ),
            Some(_) => {}
            None => {
                self.by_id.insert((conv.to_string(), id.to_string()), seq);
            }
        }
        let seqs = self.acked.entry(conv.to_string()).or_default();
        match seqs.get(&seq) {
            Some(other) if other != id => {
                let other = other.clone();
                self.fail(
                    now,
                    format!("{conv} seq {seq}: acknowledged for id {other}, then for id {id} (a seq reused)"),
                )
            }
            _ => {
                seqs.insert(seq, id.to_string());
            }
        }
    }

    /// A push reached a connection: per conversation its seqs rise, never repeat, and never
    /// skip but over the connection's own messages (a hole is closed with 4009 and resynced
    /// instead); which seqs those are is known once every send is acknowledged
    /// ([`Checker::holes`]).
    pub fn push(&mut self, now: u64, who: &str, view: &mut ConnView, conv: &str, seq: u64) {
        self.pushes += 1;
        if let Some(&last) = view.last_push.get(conv) {
            if seq <= last {
                self.fail(now, format!("{who}: {conv} seq {seq} pushed after seq {last} (a duplicate or a reorder)"));
            } else if seq != last + 1 {
                let (who, conv) = (who.to_string(), conv.to_string());
                view.holes.push(Hole { now, who, conv, after: last, pushed: seq });
            }
        }
        view.last_push.insert(conv.to_string(), seq.max(view.last_push.get(conv).copied().unwrap_or(0)));
    }

    /// A connection closed: its holes are settled at the end.
    pub fn gone(&mut self, view: ConnView) {
        if !view.holes.is_empty() {
            self.gone.push(view);
        }
    }

    /// The messages of `conv` its owner's store holds at the end: (seq, client id).
    pub fn stored(&mut self, conv: &str, ids: BTreeMap<u64, String>) {
        self.stored.insert(conv.to_string(), ids);
    }

    /// At the end: each hole between a connection's pushes holds only messages that
    /// connection sent (under any of its tries), which it knows from their `ack` (or, where
    /// a removal ended the send before its ack, it never needs); anything else is a hole
    /// without `gap` or close.
    pub fn holes<'a>(&mut self, live: impl Iterator<Item = &'a ConnView>) {
        let mut found = Vec::new();
        let mut settle = |view: &ConnView| {
            for h in &view.holes {
                let (acked, stored) = (self.acked.get(&h.conv), self.stored.get(&h.conv));
                let own = |seq: u64| {
                    let id = acked.and_then(|a| a.get(&seq)).or_else(|| stored.and_then(|s| s.get(&seq)));
                    id.is_some_and(|id| view.sent.contains(&(h.conv.clone(), id.clone())))
                };
                if !(h.after + 1..h.pushed).all(own) {
                    let (who, conv) = (&h.who, &h.conv);
                    let what = format!(
                        "{who}: {conv} pushed seq {} after seq {}: a hole without gap or close",
                        h.pushed, h.after
                    );
                    found.push((h.now, what));
                }
            }
        };
        self.gone.iter().for_each(&mut settle);
        live.for_each(settle);
        for (now, what) in found {
            self.fail(now, what);
        }
    }

    /// `user` received (by push or sync) message `id` of `conv` as `seq`: one id is one
    /// message, so another seq under the same id is a duplicate the user would see twice.
    pub fn received(&mut self, now: u64, user: &str, conv: &str, id: &str, seq: u64) {
        let key = (user.to_string(), conv.to_string(), id.to_string());
        match self.received.get(&key) {
            Some(&first) if first != seq => {
                self.fail(now, format!("{user} received {conv} id {id} twice: as seq {first} and as seq {seq}"))
            }
            Some(_) => {}
            None => {
                self.received.insert(key, seq);
            }
        }
    }

    /// Connection `conn` wrote a send of `id` to `conv`.
    pub fn wrote(&mut self, conn: u32, conv: &str, id: &str) {
        self.writers.entry((conv.to_string(), id.to_string())).or_default().insert(conn);
    }

    /// Connection `conn` was pushed the message `id` of `conv`: never the connection that
    /// sent it (PROTOCOL.md: every connection of every member but the sending one). Only
    /// when `conn` alone wrote it is the sending connection known for sure: a retry on
    /// another connection may be the one that was stored, or a duplicate of it.
    pub fn pushed_id(&mut self, now: u64, who: &str, conn: u32, conv: &str, id: &str) {
        let only = |w: &BTreeSet<u32>| w.len() == 1 && w.contains(&conn);
        if self.writers.get(&(conv.to_string(), id.to_string())).is_some_and(only) {
            self.fail(now, format!("{who}: pushed {conv} id {id}, its own message (only it sent it)"));
        }
    }

    /// A sync page answered "after `after`": its seqs are exactly `after + 1 ..= upto`.
    pub fn sync_page(&mut self, now: u64, who: &str, conv: &str, after: u64, seqs: &[u64], upto: u64) {
        let expected: Vec<u64> = (after + 1..=upto).collect();
        if seqs != expected {
            self.fail(now, format!("{who}: {conv} sync after {after} gave {seqs:?}, not {after}+1..={upto}"));
        }
    }

    /// The store of a node that restarted serves `served` (seq → client id) for `conv`:
    /// every acknowledged message, under its seq, seqs gap-free from 1.
    pub fn recovered(&mut self, now: u64, node: u16, conv: &str, served: &BTreeMap<u64, String>) {
        if let Some(acked) = self.acked.get(conv).cloned() {
            for (seq, id) in acked {
                match served.get(&seq) {
                    Some(got) if *got == id => {}
                    Some(got) => self.fail(
                        now,
                        format!("node {node} restarted: {conv} seq {seq} is id {got}, acknowledged as {id}"),
                    ),
                    None => {
                        self.fail(now, format!("node {node} restarted: acknowledged {conv} seq {seq} (id {id}) lost"))
                    }
                }
            }
        }
        let seqs: Vec<u64> = served.keys().copied().collect();
        if seqs.iter().enumerate().any(|(i, &s)| s != i as u64 + 1) {
            self.fail(now, format!("node {node} restarted: {conv} seqs not gap-free from 1: {seqs:?}"));
        }
    }

    /// Group `conv` was created with `members`.
    pub fn created(&mut self, conv: &str, members: BTreeSet<String>) {
        self.members.insert(conv.to_string(), Membership { initial: members, changes: Vec::new() });
    }

    /// At the end: `conv`'s member changes, (seq, user, added), as its store holds them.
    pub fn changes(&mut self, conv: &str, changes: Vec<(u64, String, bool)>) {
        self.members.entry(conv.to_string()).or_default().changes = changes;
    }

    /// `user`'s request about `conv` was refused as `forbidden`.
    pub fn forbidden(&mut self, now: u64, user: &str, conv: &str) {
        self.forbidden.push((now, user.to_string(), conv.to_string()));
    }

    /// Whether `user` is a member of `conv` at the end.
    pub fn member_at_end(&self, user: &str, conv: &str) -> bool {
        self.members.get(conv).is_some_and(|m| m.member_at(user, u64::MAX))
    }

    /// At the end, with the member changes known: nobody received a message of a group it was
    /// not a member of at that seq (unless added later, when it may read the history), and
    /// nobody was refused as `forbidden` who had always been a member.
    pub fn authorized(&mut self, now: u64) {
        let mut found = Vec::new();
        for ((user, conv, id), &seq) in &self.received {
            let Some(m) = self.members.get(conv) else { continue };
            if !m.member_at(user, seq) && !m.added_after(user, seq) {
                found.push(format!("{user} received {conv} seq {seq} (id {id}) while not a member"));
            }
        }
        for (t, user, conv) in &self.forbidden {
            if self.members.get(conv).is_some_and(|m| !m.ever_out(user)) {
                found.push(format!("t={t}ms: {user}, always a member of {conv}, was refused as forbidden"));
            }
        }
        for what in found {
            self.fail(now, what);
        }
    }

    /// At the end, healed: `user`, a member of `conv`, holds (by push or sync) every
    /// acknowledged message of `conv` sent while it was a member.
    pub fn holds_all(&mut self, now: u64, user: &str, conv: &str, have: &BTreeSet<u64>) {
        let member = |seq: u64| self.members.get(conv).is_none_or(|m| m.member_at(user, seq));
        let missing: Vec<u64> = self
            .acked
            .get(conv)
            .map(|a| a.keys().filter(|&&s| member(s) && !have.contains(&s)).copied().collect())
            .unwrap_or_default();
        if !missing.is_empty() {
            self.fail(now, format!("healed, {user} never received {conv} seqs {missing:?}"));
        }
    }

    /// `user` sent a read receipt of `conv` up to `seq`.
    pub fn receipt_sent(&mut self, user: &str, conv: &str, seq: u64) {
        let sent = self.receipts_sent.entry((user.to_string(), conv.to_string())).or_default();
        *sent = (*sent).max(seq);
    }

    /// The owner answered it: from now on the read mark is at least `seq`, across any crash.
    pub fn receipt_acked(&mut self, user: &str, conv: &str, seq: u64) {
        self.receipts += 1;
        let acked = self.receipts_acked.entry((user.to_string(), conv.to_string())).or_default();
        *acked = (*acked).max(seq);
    }

    /// The store holds `read` as `user`'s read mark of `conv`: no lower than any receipt it
    /// answered, no higher than any the user sent.
    pub fn read_mark(&mut self, now: u64, when: &str, user: &str, conv: &str, read: u64) {
        let key = (user.to_string(), conv.to_string());
        let acked = self.receipts_acked.get(&key).copied().unwrap_or(0);
        let sent = self.receipts_sent.get(&key).copied().unwrap_or(0);
        if read < acked {
            self.fail(
                now,
                format!("{when}: {user}'s read mark of {conv} is {read}, below the answered receipt {acked}"),
            );
        }
        if read > sent {
            self.fail(now, format!("{when}: {user}'s read mark of {conv} is {read}, beyond any receipt sent ({sent})"));
        }
    }

    /// A queue of the code under test holds `len` against its limit: never beyond it.
    /// (`what` is formatted only for a violation: this runs after every event.)
    pub fn queue(&mut self, now: u64, what: impl std::fmt::Display, len: usize, max: usize) {
        if len > max {
            self.fail(now, format!("{what} holds {len}, beyond its limit of {max}"));
        }
    }

    pub fn note(&mut self, now: u64, what: String) {
        self.fail(now, what);
    }
}
