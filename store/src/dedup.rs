//! The dedup index: (conversation, sender, client id) → seq, for every retained message.
//!
//! It is the store's largest in-memory structure (one entry per message) and it is touched on
//! every append and every recovered record, at a random place each time, so it is a table
//! written for that rather than a general map:
//!
//! - An entry is 16 bytes: a keyed 64-bit fingerprint and the seq. Nothing else (no ids, no
//!   bodies) is kept: a hit is only a *candidate*, which the shard confirms by reading the
//!   record, so a fingerprint collision can never make one message answer for another. Equal
//!   fingerprints simply sit side by side.
//! - Open addressing with linear probing in one flat array of any size, at most 80% full: a lookup that
//!   misses (every new message) costs one cache line. The array is advised onto huge pages
//!   (when no append waits on it, see `Slots::advise_huge_pages`), so a random probe into
//!   gigabytes of table costs a memory access, not a TLB walk as well.
//! - It grows incrementally (Redis's dict): the new, doubled array takes all inserts while each
//!   insert moves two entries over from the old one; a shard with nothing else to do moves
//!   more ([`Dedup::migrate_idle`]), since every append pays while a migration runs. A lookup
//!   skips the old table once the slots its fingerprint can occupy have moved. No append ever
//!   waits for a whole table to be rehashed.
//! - The doubled array for the next growth is mapped from 60% full on and its pages are faulted
//!   in a few at a time by the appends that lead up to it, so that a growth does not start with
//!   tens of thousands of page faults at once.
//! - Removal (retention) is backward-shift deletion: no tombstones in the live table.
//!
//! Memory: 16 bytes / load factor, between 20 B (80% full) and 40 B (just doubled) per
//! message, plus the old array while a migration runs, and the next one (twice the live
//! array) from 60% full on.

use crate::ids::Seq;
use ahash::RandomState;

/// A slot: `[fingerprint, seq]`. Fingerprints are never 0 or 1, which mark empty and moved slots.
type Slot = [u64; 2];
const SLOT_BYTES: usize = std::mem::size_of::<Slot>();
const EMPTY: u64 = 0;
/// Migrated out of the old table (only ever seen there).
const MOVED: u64 = 1;
const LOAD_MAX_PERCENT: usize = 80;
const CAPACITY_MIN: usize = 1024;
/// Old slots moved per insert while growing. Few, so that the migration's cost (a random write
/// into the new table per entry moved, prefetched one call ahead) is spread thin over many
/// appends rather than slowing a few thousand of them several times over. 2 is enough to finish
/// in time: the old table (capacity `C`, at most 80% full) is scanned in `C / 2` inserts, after
/// which the new one (capacity `2C`) holds at most `0.8C + 0.5C`, below its own 80% of `1.6C`.
/// (A/B against 8 on `switchboard-bench store`: no difference beyond the host's noise.)
const MIGRATE_PER_INSERT: usize = 2;
/// Slots moved per step of an idle-time migration (each step prefetches the next one's
/// targets): a microsecond or two, so a job or a completion that arrives meanwhile waits for
/// one step at most.
const IDLE_MIGRATE_STEP: usize = 16;

struct Table {
    slots: Slots,
    live: usize,
    /// The farthest any entry was ever placed from its home slot: entries with a given home
    /// lie within this many slots after it (removals only shorten the distances).
    displacement_max: usize,
}

impl Table {
    /// Any capacity, not only powers of two (`home` maps by multiplication), so a table sized
    /// at recovery wastes nothing to rounding.
    fn new(capacity: usize) -> Table {
        Table::over(Slots::zeroed(capacity.max(CAPACITY_MIN)))
    }

    fn over(slots: Slots) -> Table {
        Table { slots, live: 0, displacement_max: 0 }
    }

    fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Lemire's multiply-shift range reduction: uniform over any capacity, no division.
    fn home(&self, fp: u64) -> usize {
        ((fp as u128 * self.capacity() as u128) >> 64) as usize
    }

    fn next(&self, i: usize) -> usize {
        if i + 1 == self.capacity() {
            0
        } else {
            i + 1
        }
    }

    fn is_full_for(&self, more: usize) -> bool {
        (self.live + more) * 100 > self.capacity() * LOAD_MAX_PERCENT
    }

    fn insert(&mut self, fp: u64, seq: u64) {
        debug_assert!(fp > MOVED);
        let home = self.home(fp);
        let mut i = home;
        while self.slots[i][0] > MOVED {
            i = self.next(i);
        }
        self.slots[i] = [fp, seq];
        self.live += 1;
        let displacement = if i >= home { i - home } else { i + self.capacity() - home };
        self.displacement_max = self.displacement_max.max(displacement);
    }

    fn for_each(&self, fp: u64, mut f: impl FnMut(usize)) {
        let mut i = self.home(fp);
        loop {
            match self.slots[i][0] {
                EMPTY => return,
                x if x == fp => f(i),
                _ => {}
            }
            i = self.next(i);
        }
    }

    fn find(&self, fp: u64, seq: u64) -> Option<usize> {
        let mut found = None;
        self.for_each(fp, |i| {
            if self.slots[i][1] == seq {
                found = Some(i);
            }
        });
        found
    }

    /// Backward-shift deletion: pulls later entries of the probe run into the hole, so lookups
    /// never need tombstones. Only for the live table (the old one marks slots `MOVED`).
    fn remove_at(&mut self, mut hole: usize) {
        let mut j = hole;
        loop {
            j = self.next(j);
            let fp = self.slots[j][0];
            if fp == EMPTY {
                break;
            }
            let home = self.home(fp);
            // The entry at j may fill the hole unless its home lies cyclically in (hole, j].
            let stays = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
            if !stays {
                self.slots[hole] = self.slots[j];
                hole = j;
            }
        }
        self.slots[hole] = [EMPTY; 2];
        self.live -= 1;
    }

    fn prefetch(&self, fp: u64) {
        crate::prefetch::read(&self.slots[self.home(fp)]);
    }
}

/// The slot array: anonymous memory straight from the kernel, zero until touched. Not a `Vec`: an allocator may zero a large
/// block eagerly, faulting in every page of a multi-gigabyte table at once (a stall of many
/// milliseconds in the middle of an append); here pages arrive as inserts first reach them.
struct Slots(crate::anonymous::Buffer);

impl Slots {
    fn zeroed(len: usize) -> Slots {
        let buf = crate::anonymous::Buffer::zeroed(len * SLOT_BYTES).unwrap_or_else(|_| {
            std::alloc::handle_alloc_error(std::alloc::Layout::array::<Slot>(len).expect("dedup table size"))
        });
        Slots(buf)
    }

    /// Advises the mapping onto transparent huge pages. On a page fault the kernel may then
    /// compact memory synchronously to find a huge page (tens of milliseconds), so this is done
    /// only where nothing waits (sizing at recovery) or once the pages are already faulted in
    /// (the end of a migration), when khugepaged collapses them in the background.
    fn advise_huge_pages(&self) {
        self.0.advise_huge_pages();
    }
}

impl std::ops::Deref for Slots {
    type Target = [Slot];
    fn deref(&self) -> &[Slot] {
        // Safety: the buffer is page-aligned (more than a slot needs), zero-initialised (a
        // valid slot), and holds exactly this many slots.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), self.0.len() / SLOT_BYTES) }
    }
}

impl std::ops::DerefMut for Slots {
    fn deref_mut(&mut self) -> &mut [Slot] {
        // Safety: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), self.0.len() / SLOT_BYTES) }
    }
}

pub struct Dedup {
    hasher: Fingerprinter,
    tables: Tables,
    /// Inserts queued during recovery, applied by [`Dedup::flush`] (their slots prefetched ahead).
    queued: Vec<(u64, u64)>,
    /// While recovery rebuilds the table on a second thread: the channel to it.
    builder: Option<Builder>,
}

/// The live table, the previous one while its entries move over (with how far that got), and
/// the next one while its pages are faulted in ahead of need.
struct Tables {
    table: Table,
    old: Option<(Table, usize)>,
    next: Option<Prefaulting>,
}

/// The doubled array the next growth will use, mapped early and faulted in a page at a time by
/// the appends that lead up to the growth. Left to the inserts that follow a growth, its first
/// touches would all be page faults at once (a 134 MB table is 32,768 of them, ~75 ms of kernel
/// time here), and a shard taking 700,000 appends a second fell 100 to 200 ms behind at every
/// doubling.
struct Prefaulting {
    slots: Slots,
    /// Pages faulted in so far, from the start.
    pages: usize,
    /// The live table's entries when this was mapped: pacing starts from there.
    from_live: usize,
}

/// The live table's load (percent of capacity) from which the next one is prepared, when no
/// migration runs (a migration ends with the new table at most 65% full: see
/// [`MIGRATE_PER_INSERT`]). Its pages are paced to be all in by nine tenths of the way to the
/// growth: from 60%, one page per ~13 inserts.
const PREFAULT_FROM_PERCENT: usize = 60;
const PAGE_BYTES: usize = 4096;

/// Recovery's helper thread, which owns the tables until `flush` takes them back.
struct Builder {
    tx: crossbeam_channel::Sender<Vec<(u64, u64)>>,
    thread: std::thread::JoinHandle<Tables>,
}

/// Inserts handed to the helper thread at a time.
const BUILDER_CHUNK: usize = 4096;
/// Inserts queued locally before they are applied (see [`Tables::insert_all`]).
const QUEUED_BEFORE_FLUSH: usize = 64;
/// How many inserts ahead of the one being applied `insert_all` asks for a slot. A sliding
/// window keeps this many misses in flight all the time; prefetching a group and then
/// inserting it left the first inserts of every group waiting on a miss just asked for
/// (a probe of a 4 M-entry table: 30 vs 46 ns per insert).
const PREFETCH_AHEAD: usize = 16;

impl Default for Dedup {
    fn default() -> Self {
        Dedup {
            hasher: Fingerprinter(RandomState::new()),
            tables: Tables::new(CAPACITY_MIN),
            queued: Vec::new(),
            builder: None,
        }
    }
}

/// The keyed hash that gives a message's dedup key its fingerprint.
#[derive(Clone)]
pub struct Fingerprinter(RandomState);

impl Fingerprinter {
    /// Never 0 or 1.
    pub fn fingerprint(&self, conv: &str, sender: &str, client_id: &[u8]) -> u64 {
        let fp = self.0.hash_one((conv, sender, client_id));
        if fp <= MOVED {
            fp + 2
        } else {
            fp
        }
    }
}

impl Dedup {
    /// The keyed fingerprint of a message's dedup key; never 0 or 1.
    pub fn fingerprint(&self, conv: &str, sender: &str, client_id: &[u8]) -> u64 {
        self.hasher.fingerprint(conv, sender, client_id)
    }

    /// The hash behind [`Dedup::fingerprint`], for another thread (the recovery scan).
    pub fn fingerprint_hasher(&self) -> Fingerprinter {
        self.hasher.clone()
    }

    /// Asks for the slot this fingerprint's lookup will touch first (nothing while a
    /// background rebuild owns the table).
    pub fn prefetch(&self, fp: u64) {
        if self.builder.is_none() {
            self.tables.table.prefetch(fp);
            // While a migration runs, a lookup may probe the old table too.
            if let Some(old) = self.tables.old_for(fp) {
                old.prefetch(fp);
            }
        }
    }

    /// Sizes the table for `entries` entries at once (recovery knows roughly how many).
    pub fn reserve(&mut self, entries: usize) {
        let t = &mut self.tables;
        let needed = entries * 100 / LOAD_MAX_PERCENT + 1;
        if needed > t.table.capacity() && t.old.is_none() && t.table.live == 0 {
            t.table = Table::new(needed);
            t.table.slots.advise_huge_pages();
        }
    }

    /// From now until `flush`, queued inserts are applied by a second thread, while the
    /// caller goes on parsing the log (recovery of a large log). No lookups meanwhile.
    pub fn build_in_background(&mut self) {
        assert!(self.builder.is_none());
        self.flush();
        let mut tables = std::mem::replace(&mut self.tables, Tables::new(0));
        let (tx, rx) = crossbeam_channel::bounded::<Vec<(u64, u64)>>(16);
        let thread = std::thread::Builder::new()
            .name("dedup-rebuild".into())
            .spawn(move || {
                for chunk in rx {
                    tables.insert_all(&chunk);
                }
                tables
            })
            .expect("spawn the dedup rebuild thread");
        self.builder = Some(Builder { tx, thread });
    }

    /// Whether a background rebuild is running (lookups and prefetches wait for it).
    pub fn is_rebuilding(&self) -> bool {
        self.builder.is_some()
    }

    fn tables(&self) -> &Tables {
        assert!(self.builder.is_none(), "dedup lookups wait for the rebuild to finish");
        &self.tables
    }

    fn tables_mut(&mut self) -> &mut Tables {
        assert!(self.builder.is_none(), "dedup updates wait for the rebuild to finish");
        &mut self.tables
    }

    /// Whether any entry carries this fingerprint (one probe; the common answer is no).
    pub fn has(&self, fp: u64) -> bool {
        let t = self.tables();
        let mut any = false;
        t.table.for_each(fp, |_| any = true);
        if let Some(old) = t.old_for(fp) {
            old.for_each(fp, |_| any = true);
        }
        any
    }

    /// The seqs that may carry this fingerprint; each must be confirmed by reading its record.
    pub fn candidates(&self, fp: u64) -> Vec<Seq> {
        let t = self.tables();
        let mut out = Vec::new();
        t.table.for_each(fp, |i| out.push(Seq(t.table.slots[i][1])));
        if let Some(old) = t.old_for(fp) {
            old.for_each(fp, |i| out.push(Seq(old.slots[i][1])));
        }
        out
    }

    pub fn insert(&mut self, fp: u64, seq: Seq) {
        let tables = self.tables_mut();
        tables.insert(fp, seq.0);
        tables.prefault();
    }

    /// Moves a running migration along by a few slots, for a shard with nothing else to do
    /// (its queue empty, a commit in flight): until a migration ends, every append pays for it
    /// (its moves, and often a lookup in the old table as well). Returns whether one is still
    /// running.
    pub fn migrate_idle(&mut self) -> bool {
        if self.builder.is_some() {
            return false;
        }
        self.tables.migrate(IDLE_MIGRATE_STEP);
        self.tables.old.is_some()
    }

    /// Queues an insert (recovery): applied by `flush` (or the helper thread) many at a time,
    /// each slot prefetched a few inserts ahead, so the memory latency of one random probe
    /// overlaps with the others.
    pub fn queue(&mut self, fp: u64, seq: Seq) {
        self.queued.push((fp, seq.0));
        match &self.builder {
            Some(b) if self.queued.len() == BUILDER_CHUNK => {
                let chunk = std::mem::replace(&mut self.queued, Vec::with_capacity(BUILDER_CHUNK));
                b.tx.send(chunk).expect("the dedup rebuild thread died");
            }
            None if self.queued.len() == QUEUED_BEFORE_FLUSH => self.flush(),
            _ => {}
        }
    }

    /// Applies everything queued; ends a background rebuild, taking the tables back.
    pub fn flush(&mut self) {
        if let Some(b) = self.builder.take() {
            b.tx.send(std::mem::take(&mut self.queued)).expect("the dedup rebuild thread died");
            drop(b.tx);
            self.tables = b.thread.join().expect("the dedup rebuild thread panicked");
            return;
        }
        let queued = std::mem::take(&mut self.queued);
        self.tables.insert_all(&queued);
        self.queued = queued;
        self.queued.clear();
    }

    pub fn remove(&mut self, fp: u64, seq: Seq) {
        let t = self.tables_mut();
        if let Some(i) = t.table.find(fp, seq.0) {
            t.table.remove_at(i);
        } else if let Some((old, _)) = &mut t.old {
            if let Some(i) = old.find(fp, seq.0) {
                old.slots[i][0] = MOVED;
                old.live -= 1;
            }
        }
    }

    pub fn len(&self) -> usize {
        let t = self.tables();
        t.table.live + t.old.as_ref().map_or(0, |(o, _)| o.live)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the table(s).
    pub fn memory_bytes(&self) -> usize {
        let t = self.tables();
        let (old, next) =
            (t.old.as_ref().map_or(0, |(o, _)| o.capacity()), t.next.as_ref().map_or(0, |n| n.slots.len()));
        (t.table.capacity() + old + next) * SLOT_BYTES
    }
}

impl Tables {
    fn new(capacity: usize) -> Tables {
        Tables { table: Table::new(capacity), old: None, next: None }
    }

    /// The old table, if entries with this fingerprint may still be in it: not once every slot
    /// they can occupy (their home, and as far after it as any entry was ever displaced) has
    /// been migrated. Migration goes in slot order and `home` is monotonic in the fingerprint,
    /// so as it advances, fewer and fewer lookups need the second probe.
    fn old_for(&self, fp: u64) -> Option<&Table> {
        let (old, next) = self.old.as_ref()?;
        (old.home(fp) + old.displacement_max >= *next).then_some(old)
    }

    fn insert(&mut self, fp: u64, seq: u64) {
        if self.table.is_full_for(1) {
            self.grow();
        }
        self.table.insert(fp, seq);
        self.migrate(MIGRATE_PER_INSERT);
    }

    /// Faults in the pages of the next table that are due by now, mapping it first if it is
    /// time. For appends only: recovery sizes its table up front.
    fn prefault(&mut self) {
        let (live, capacity) = (self.table.live, self.table.capacity());
        if self.old.is_some() || live * 100 < capacity * PREFAULT_FROM_PERCENT {
            return;
        }
        let next = self.next.get_or_insert_with(|| Prefaulting {
            slots: Slots::zeroed(capacity * 2),
            pages: 0,
            from_live: live,
        });
        let slots_per_page = PAGE_BYTES / SLOT_BYTES;
        let total = next.slots.len().div_ceil(slots_per_page);
        let span = ((capacity * LOAD_MAX_PERCENT / 100).saturating_sub(next.from_live) * 9 / 10).max(1);
        // (Retention may have removed entries since: then nothing is due.)
        let due = (total * (live.saturating_sub(next.from_live) + 1)).div_ceil(span).min(total);
        while next.pages < due {
            // A write (of the zero already there) makes the kernel allocate the page now;
            // volatile, so that it is not optimised away.
            // Safety: the index is below the mapping's length (`pages < total`), and
            // `&mut self` makes the access exclusive.
            unsafe { std::ptr::write_volatile(&mut next.slots[next.pages * slots_per_page][0], EMPTY) };
            next.pages += 1;
        }
    }

    /// Inserts many, each one's home slot asked for [`PREFETCH_AHEAD`] inserts before it is
    /// needed.
    fn insert_all(&mut self, entries: &[(u64, u64)]) {
        for &(fp, _) in entries.iter().take(PREFETCH_AHEAD) {
            self.table.prefetch(fp);
        }
        for (i, &(fp, seq)) in entries.iter().enumerate() {
            if let Some(&(ahead, _)) = entries.get(i + PREFETCH_AHEAD) {
                self.table.prefetch(ahead);
            }
            self.insert(fp, seq);
        }
    }

    fn grow(&mut self) {
        // A migration still running (only if removals kept it from finishing): finish it.
        self.migrate(usize::MAX);
        let capacity = self.table.capacity() * 2;
        let bigger = match self.next.take() {
            Some(n) if n.slots.len() == capacity => Table::over(n.slots),
            _ => Table::new(capacity),
        };
        let old = std::mem::replace(&mut self.table, bigger);
        self.old = Some((old, 0));
    }

    fn migrate(&mut self, mut budget: usize) {
        let Some((old, next)) = &mut self.old else { return };
        // The moves are random writes into the new table: ask for the next call's targets now,
        // so that their misses overlap with this insert's work instead of stalling the next.
        for &[fp, _] in old.slots.get(*next + budget..).unwrap_or_default().iter().take(budget) {
            if fp > MOVED {
                self.table.prefetch(fp);
            }
        }
        while *next < old.capacity() && budget > 0 {
            let [fp, seq] = old.slots[*next];
            if fp > MOVED {
                self.table.insert(fp, seq);
                old.slots[*next][0] = MOVED;
                old.live -= 1;
            }
            *next += 1;
            budget -= 1;
        }
        if *next == old.capacity() {
            debug_assert_eq!(old.live, 0);
            self.old = None;
            self.table.slots.advise_huge_pages();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64),
        Remove(usize),
        Lookup(u64),
        /// Steps of idle-time migration.
        Idle(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few distinct fingerprints (forced collisions) and a tiny home range (long runs).
        prop_oneof![
            6 => (2..40u64, 0..1_000u64).prop_map(|(f, s)| Op::Insert(f, s)),
            3 => any::<usize>().prop_map(Op::Remove),
            2 => (2..40u64).prop_map(Op::Lookup),
            1 => any::<u8>().prop_map(Op::Idle),
        ]
    }

    /// Forty fingerprints spread over the whole range, so that homes spread over the table and
    /// lookups during a migration skip the old table where they may.
    fn spread(k: u64) -> u64 {
        let x = (k + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (x ^ (x >> 31)).max(2)
    }

    /// Mostly inserts, so that the table grows (past 819 entries) and migrates.
    fn spread_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0..40u64, 0..1_000u64).prop_map(|(k, s)| Op::Insert(spread(k), s)),
            1 => any::<usize>().prop_map(Op::Remove),
            3 => (0..40u64).prop_map(|k| Op::Lookup(spread(k))),
            1 => (0..8u8).prop_map(Op::Idle),
        ]
    }

    /// Applies `ops` to a table and to a naive model (a set of (fingerprint, seq) pairs), and
    /// checks every lookup and the count against the model.
    fn check_against_a_set(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut d = Dedup::default();
        let mut model: BTreeSet<(u64, u64)> = BTreeSet::new();
        for op in ops {
            match op {
                Op::Insert(fp, seq) => {
                    if model.insert((fp, seq)) {
                        d.insert(fp, Seq(seq));
                    }
                }
                Op::Remove(k) => {
                    if !model.is_empty() {
                        let &(fp, seq) = model.iter().nth(k % model.len()).unwrap();
                        model.remove(&(fp, seq));
                        d.remove(fp, Seq(seq));
                    }
                }
                Op::Lookup(fp) => {
                    let mut got: Vec<u64> = d.candidates(fp).into_iter().map(|s| s.0).collect();
                    got.sort();
                    let want: Vec<u64> = model.range((fp, 0)..=(fp, u64::MAX)).map(|&(_, s)| s).collect();
                    prop_assert_eq!(&got, &want);
                    prop_assert_eq!(d.has(fp), !want.is_empty());
                }
                Op::Idle(steps) => {
                    for _ in 0..steps {
                        d.migrate_idle();
                    }
                }
            }
            prop_assert_eq!(d.len(), model.len());
        }
        Ok(())
    }

    proptest! {
        /// Against a naive model (a set of (fingerprint, seq) pairs), through growth, migration
        /// and backward-shift deletion.
        #[test]
        fn matches_a_set(ops in proptest::collection::vec(op(), 1..3000)) {
            check_against_a_set(ops)?;
        }

        /// The same with fingerprints spread over the range: lookups during a migration skip
        /// the old table once their slots have moved, and idle-time steps move them.
        #[test]
        fn matches_a_set_with_spread_fingerprints(ops in proptest::collection::vec(spread_op(), 1000..5000)) {
            check_against_a_set(ops)?;
        }
    }

    #[test]
    fn a_background_rebuild_lands_every_insert() {
        let mut d = Dedup::default();
        d.reserve(50_000);
        d.build_in_background();
        for i in 0..100_000u64 {
            let fp = d.fingerprint("c", "s", &i.to_le_bytes());
            d.queue(fp, Seq(i));
        }
        d.flush();
        assert_eq!(d.len(), 100_000);
        for i in 0..100_000u64 {
            let fp = d.fingerprint("c", "s", &i.to_le_bytes());
            assert!(d.candidates(fp).contains(&Seq(i)), "{i}");
        }
    }

    #[test]
    fn grows_incrementally_and_queued_inserts_land() {
        let mut d = Dedup::default();
        for i in 0..100_000u64 {
            let fp = d.fingerprint("c", "s", &i.to_le_bytes());
            d.queue(fp, Seq(i));
        }
        d.flush();
        assert_eq!(d.len(), 100_000);
        for i in (0..100_000u64).step_by(997) {
            let fp = d.fingerprint("c", "s", &i.to_le_bytes());
            assert!(d.candidates(fp).contains(&Seq(i)));
        }
        assert!(d.memory_bytes() <= 100_000 * 16 * 100 / LOAD_MAX_PERCENT * 2 * 2);
    }

    #[test]
    fn every_growth_finds_the_next_table_faulted_in_and_loses_nothing() {
        let mut d = Dedup::default();
        let mut growths = 0;
        for i in 0..300_000u64 {
            let fp = d.fingerprint("c", "s", &i.to_le_bytes());
            let capacity = d.tables.table.capacity();
            let ready = d.tables.next.as_ref().map(|n| n.pages * PAGE_BYTES >= n.slots.len() * SLOT_BYTES);
            d.insert(fp, Seq(i));
            if d.tables.table.capacity() != capacity {
                assert_eq!(ready, Some(true), "growth at entry {i} found the next table not faulted in");
                assert_eq!(d.tables.table.capacity(), capacity * 2);
                growths += 1;
            }
        }
        assert!(growths >= 8, "only {growths} growths");
        assert_eq!(d.len(), 300_000);
        for i in 0..300_000u64 {
            let fp = d.fingerprint("c", "s", &i.to_le_bytes());
            assert!(d.candidates(fp).contains(&Seq(i)), "entry {i} lost");
        }
    }
}
