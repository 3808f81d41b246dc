//! The log: segments of batches of records, group commit, recovery. It knows nothing of
//! conversations; [`crate::shard`] gives records their meaning.
//!
//! # Writing
//!
//! [`Log::stage`] encodes a record into the pending batch and says where it will live;
//! [`Log::commit`] writes the pending batch with one `write` and one `fsync`. Nothing staged is
//! durable, or may be acknowledged, before `commit` returns `Ok`. A failed write or fsync
//! poisons the log: the kernel may have dropped the dirty pages while reporting success later,
//! so the only safe continuation is a restart that re-reads the disk (fsyncgate). A new segment
//! is created, and old ones deleted, with a directory fsync.
//!
//! # Recovery
//!
//! [`Log::open`] reads every segment, verifies every batch's CRC and hands each record to the
//! caller, which rebuilds its state. A bad batch with nothing valid after it is a torn tail from
//! the crash and is cut (and the cut is fsynced before anything is appended). A bad batch with
//! valid data after it, a sealed segment shorter than its index says, or a hole between
//! segments is corruption: [`Error::Corrupt`], never a silent cut.

use crate::batch::{self, BatchError, BatchHeader};
use crate::error::{Error, Result};
use crate::ids::{Location, Offset, Position};
use crate::record::{self, crc, Record, RECORD_HEADER_BYTES};
use crate::segment::{self, Segment};
use crate::storage::{BlockPool, DirectReader, Mapped, Storage};
use bytes::Bytes;
use std::collections::VecDeque;
use tracing::{info, warn};

/// Whether commits wait for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// Every commit is fsynced before it completes. The default, and the only durable setting.
    Always,
    /// Never fsync. Acknowledged data is lost on power failure. For benchmarks only.
    Never,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    /// A segment is sealed and a new one started once it holds this many bytes.
    pub segment_bytes_max: u64,
    /// The largest batch (one commit) accepted, on write and on read.
    pub batch_bytes_max: usize,
    /// Distance between entries of a segment's sparse index.
    pub index_interval_bytes: u64,
    pub fsync: Fsync,
    /// Look, never touch: a torn tail is reported, not cut; no index is rewritten; nothing is
    /// created. For offline tools.
    pub read_only: bool,
    /// Recovery verifies a segment on a second thread, a few windows ahead of the replay (and
    /// the shard rebuilds its dedup index on a third). That is faster only where the cores
    /// those threads run on would otherwise be idle: the threads hand every record's bytes
    /// from core to core, which costs more CPU than it saves once every core is busy anyway
    /// (see [`recovery_helpers_pay`]).
    pub recovery_helpers: bool,
    pub recovery_reads: RecoveryReads,
}

/// How recovery reads a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryReads {
    /// In place where the page cache holds all of the segment, with `O_DIRECT` where it does
    /// not (the default). Filling the cache from cold cost this project's VM host from 0.1 up
    /// to 2.0 CPU-s per GiB read, at worst more than the whole replay; `O_DIRECT` reads cost
    /// ~0.1 (see [`DirectReader`]).
    Auto,
    /// Always in place, through the page cache (which reads ahead), to compare.
    Mapped,
    /// With `O_DIRECT` wherever the storage can, to compare and to test.
    Direct,
}

/// Whether recovery's helper threads ([`LogConfig::recovery_helpers`]) pay off when `shards`
/// logs are opened at once on this machine: only with two cores or more for each. On this
/// project's 2-core host, one shard recovered 1.7× faster with them (median 149 vs 255 ns per
/// record), and two shards at once a little slower (median 1.15 vs 1.22 GiB/s over 12 opens
/// each; 1.30 vs 1.43 over 8 in an earlier pair).
pub fn recovery_helpers_pay(shards: usize) -> bool {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores >= 2 * shards.max(1)
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: 128 << 20,
            batch_bytes_max: crate::limits::BATCH_BYTES_MAX,
            index_interval_bytes: 4096,
            fsync: Fsync::Always,
            read_only: false,
            recovery_helpers: true,
            recovery_reads: RecoveryReads::Auto,
        }
    }
}

/// Name of the file that holds the store's CRC salt.
pub const META_FILE: &str = "meta";
const META_MAGIC: &[u8; 4] = b"SBM1";

/// What [`Log::open`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
    /// Bytes of torn tail cut from the last segment (in read-only mode: that would be cut).
    pub torn_bytes_cut: u64,
    /// Index files that were missing or damaged and were rebuilt.
    pub indexes_rebuilt: usize,
    /// Segments read with `O_DIRECT` ([`RecoveryReads`]).
    pub segments_read_direct: usize,
}

pub struct Log<S: Storage> {
    storage: S,
    salt: u32,
    config: LogConfig,
    /// Oldest first; the last is the active one. Never empty after `open`.
    segments: Vec<Segment>,
    /// The batch being staged.
    pending: Pending,
    /// The batch being written and fsynced, if any: at most one, always before `pending`.
    in_flight: Option<Pending>,
    /// A buffer kept from an earlier batch, so staging does not allocate per commit.
    spare: Vec<u8>,
    poisoned: Option<String>,
    read_buf: Vec<u8>,
    /// The file name of the segment read last: reads come in runs within one segment
    /// (a page, a resync), and formatting the name for each was a fifth of a read's time.
    read_name: (Option<Offset>, String),
}

impl<S: Storage> Log<S> {
    /// Opens the log in `storage`, creating it if empty, and hands every record to `visit` in
    /// log order. `visit` may reject a record (a state that cannot be rebuilt), which aborts.
    pub fn open(mut storage: S, config: LogConfig, visit: &mut impl Replay) -> Result<(Log<S>, Recovery)> {
        assert!(config.segment_bytes_max + config.batch_bytes_max as u64 <= u32::MAX as u64);
        if config.fsync == Fsync::Never {
            warn!("fsync = never: acknowledged messages WILL be lost on power failure; benchmarks only");
        }
        let salt = open_meta(&mut storage, config.read_only)?;
        let names = storage.list()?;
        let mut bases: Vec<Offset> = names.iter().filter_map(|n| segment::parse_log_name(n)).collect();
        bases.sort();
        let mut log = Log {
            storage,
            salt,
            config,
            segments: Vec::new(),
            pending: Pending::default(),
            in_flight: None,
            spare: Vec::new(),
            poisoned: None,
            read_buf: Vec::new(),
            read_name: (None, String::new()),
        };
        let mut recovery = Recovery { segments: bases.len(), ..Recovery::default() };
        // The buffers of segments read with `O_DIRECT`, from one to the next.
        let blocks = BlockPool::default();
        // The next segment's reads, started while this one is replayed (see `recover_segment`).
        let mut next_reads: Option<SegmentReads> = None;
        for (i, &base) in bases.iter().enumerate() {
            if let Some(prev) = log.segments.last() {
                if prev.end != base {
                    return Err(Error::corrupt(
                        &segment::log_name(base),
                        0,
                        format!("segment starts at offset {} but the one before ends at {}", base.0, prev.end.0),
                    ));
                }
            }
            let last = i + 1 == bases.len();
            let reads = match next_reads.take() {
                Some(reads) => reads,
                None => log.segment_reads(&segment::log_name(base), &blocks)?,
            };
            if matches!(reads, SegmentReads::Direct(_)) {
                // Read on into the next segment: the disk stays busy while this one's last blocks
                // are replayed, and the next one's first blocks wait ready. (Its readers stop a
                // few blocks ahead, so they take little from this segment's reads.) Where that
                // fails, the next segment tries again, and reports the error, in its turn.
                next_reads =
                    bases.get(i + 1).and_then(|&next| log.segment_reads(&segment::log_name(next), &blocks).ok());
            }
            let seg = log.recover_segment(base, reads, last, &bases[i + 1..], visit, &mut recovery)?;
            log.segments.push(seg);
            if recovery.torn_bytes_cut > 0 && !log.config.read_only {
                drop(next_reads.take());
                // Nothing valid follows a torn tail: later segments (created empty, or garbage
                // only) go, so that appends continue right after the last valid batch. The cut
                // segment is the active one from now on, and an active segment has no index:
                // one left from before would say that it ends where the appends that follow no
                // longer let it.
                let mut removed = log.storage.remove(&segment::index_name(base)).is_ok();
                for &later in &bases[i + 1..] {
                    log.storage.remove(&segment::log_name(later))?;
                    let _ = log.storage.remove(&segment::index_name(later));
                    removed = true;
                }
                if removed {
                    log.storage.sync_dir().map_err(|e| log.poison("directory fsync", e))?;
                }
                break;
            }
        }
        if log.segments.is_empty() {
            // `open_meta` leaves at least one segment; a read-only folder is not created.
            return Err(Error::corrupt(META_FILE, 0, "the folder holds no log segments"));
        }
        info!(
            segments = recovery.segments,
            records = recovery.records,
            bytes = recovery.bytes,
            torn_bytes_cut = recovery.torn_bytes_cut,
            "log recovered"
        );
        Ok((log, recovery))
    }

    /// Reads (with `reads`), verifies and replays one segment; cuts a torn tail if this is the
    /// end of the log. `later`: the segments after it.
    fn recover_segment<V: Replay>(
        &mut self,
        base: Offset,
        mut reads: SegmentReads,
        last: bool,
        later: &[Offset],
        visit: &mut V,
        recovery: &mut Recovery,
    ) -> Result<Segment> {
        let name = segment::log_name(base);
        let len = self.storage.len(&name)?;
        match reads {
            SegmentReads::Direct(_) => recovery.segments_read_direct += 1,
            SegmentReads::Mapped(_) | SegmentReads::Storage => self.storage.will_read_sequentially(&name),
        }
        // The next segment's start too, so that its first windows come from the cache (the
        // scan reads ahead within a segment, see `READ_AHEAD_BYTES`); unless the next one may
        // be read around the cache.
        if let Some(&next) = later.first().filter(|_| self.config.recovery_reads == RecoveryReads::Mapped) {
            self.storage.will_read_sequentially(&segment::log_name(next));
        }
        let sealed = self.read_index(base);
        let mut seg = Segment { base, end: base, ..Segment::default() };
        let mut scan = Scan {
            len,
            position: 0,
            expected: base,
            salt: self.salt,
            batch_bytes_max: self.config.batch_bytes_max,
            done: false,
            last_records: 0,
        };
        let (salt, interval) = (self.salt, self.config.index_interval_bytes);
        let digester = visit.digester();
        // Returns the chunk's buffer, if it had one, for the next.
        let mut replay = |chunk: Chunk<'_, DigestOf<V>>| -> Result<Vec<u8>> {
            let mut digests = chunk.digests.into_iter();
            for &(at, header) in &chunk.batches {
                let position = chunk.start + at as u64;
                seg.note_batch(position, interval);
                replay_batch(&name, &chunk.bytes[at..], (position, header), salt, &mut digests, &mut seg, visit)?;
                recovery.records += header.count as u64;
            }
            Ok(match chunk.bytes {
                Window::Read(buf) => buf,
                Window::Mapped(_) | Window::Shared(_) => Vec::new(),
            })
        };
        if self.config.recovery_helpers && !matches!(reads, SegmentReads::Storage) {
            // Verify on a second thread, a few windows ahead of the replay, which is the part
            // that cannot be split. Buffers read into go back to it for the next windows.
            std::thread::scope(|threads| -> Result<()> {
                let (chunks_tx, chunks) = crossbeam_channel::bounded::<Chunk<'_, DigestOf<V>>>(CHUNKS_AHEAD);
                let (spares_tx, spares) = crossbeam_channel::bounded::<Vec<u8>>(CHUNKS_AHEAD + 1);
                let (scan, digester, reads) = (&mut scan, &digester, &mut reads);
                let reading = std::thread::Builder::new()
                    .name("log-scan".into())
                    .spawn_scoped(threads, move || -> std::io::Result<()> {
                        let mut source = match reads {
                            SegmentReads::Mapped(map) => Source::Mapped(map),
                            SegmentReads::Direct(direct) => Source::Direct(direct, Vec::new()),
                            SegmentReads::Storage => unreachable!("the storage's own reads stay on its thread"),
                        };
                        loop {
                            if let Ok(spare) = spares.try_recv() {
                                source.recycle(spare);
                            }
                            let Some(chunk) = scan.next(&mut source, digester)? else { return Ok(()) };
                            if chunks_tx.send(chunk).is_err() {
                                return Ok(()); // the replay failed and stopped listening
                            }
                        }
                    })
                    .map_err(|e| std::io::Error::other(format!("spawn the recovery reader: {e}")))?;
                let replayed: Result<()> = chunks.iter().try_for_each(|chunk| {
                    let _ = spares_tx.try_send(replay(chunk)?);
                    Ok(())
                });
                drop(chunks);
                let read = reading.join().expect("the recovery reader panicked");
                replayed?;
                Ok(read?)
            })?;
        } else {
            // Everything on this thread.
            let storage = &mut self.storage;
            let mut read = |position: u64, buf: &mut [u8]| storage.read_exact_at(&name, position, buf);
            let mut source = match &mut reads {
                SegmentReads::Mapped(map) => Source::Mapped(map),
                SegmentReads::Direct(direct) => Source::Direct(direct, Vec::new()),
                SegmentReads::Storage => Source::Read(&mut read, Vec::new()),
            };
            while let Some(chunk) = scan.next(&mut source, &digester)? {
                source.recycle(replay(chunk)?);
            }
        }
        let position = scan.position;
        seg.len = position;
        recovery.bytes += seg.len;
        if position < len {
            // Everything from `position` on is invalid. Torn tail, or damage? (Rare: read the
            // rest of the segment whole.)
            let mut rest = vec![0; (len - position) as usize];
            self.storage.read_exact_at(&name, position, &mut rest)?;
            let reason = if let Some(s) = sealed.as_ref().filter(|s| s.len > position) {
                Some(format!("sealed segment is valid only up to byte {position} of {}", s.len))
            } else if self.find_valid_batch(&rest[1..], seg.end) {
                Some("invalid batch followed by valid data".to_string())
            } else if !last && self.any_valid_later(later)? {
                Some("invalid batch followed by valid segments".to_string())
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(Error::corrupt(&name, position, reason));
            }
            let cut = len - position;
            recovery.torn_bytes_cut += cut;
            if !self.config.read_only {
                warn!(segment = %name, position, cut, "cutting torn tail");
                self.storage.truncate(&name, position)?;
                self.storage.sync(&name).map_err(|e| self.poison("fsync after cutting the torn tail", e))?;
            }
        } else if let Some(s) = &sealed {
            // An index exists only for a sealed segment, all of whose batches were fsynced.
            if s.len != seg.len || s.end != seg.end {
                return Err(Error::corrupt(&name, seg.len, format!("index says the segment ends at byte {}", s.len)));
            }
            if last {
                return Err(Error::corrupt(
                    &name,
                    seg.len,
                    "the last segment is sealed, so the segments after it are gone (removed from the folder?)",
                ));
            }
        }
        // (A segment cut short becomes the active one, and `open` removes its index then.)
        if !last && !self.config.read_only && sealed.as_ref().is_none_or(|s| s.entries != seg.index) {
            recovery.indexes_rebuilt += 1;
            self.write_index(&seg)?;
        }
        Ok(seg)
    }

    /// How recovery reads segment `name` ([`LogConfig::recovery_reads`]).
    fn segment_reads(&mut self, name: &str, blocks: &BlockPool) -> Result<SegmentReads> {
        let map = self.storage.map(name)?;
        let direct = match (self.config.recovery_reads, &map) {
            (RecoveryReads::Mapped, _) | (RecoveryReads::Auto, None) => false,
            (RecoveryReads::Direct, _) => true,
            (RecoveryReads::Auto, Some(map)) => !map.cached(),
        };
        if direct {
            if let Some(reader) = self.storage.read_direct(name, blocks)? {
                return Ok(SegmentReads::Direct(reader));
            }
        }
        Ok(map.map_or(SegmentReads::Storage, SegmentReads::Mapped))
    }

    fn read_index(&mut self, base: Offset) -> Option<segment::SealedIndex> {
        let name = segment::index_name(base);
        let len = self.storage.len(&name).ok()?;
        let mut bytes = vec![0; len.min(64 << 20) as usize];
        self.storage.read_exact_at(&name, 0, &mut bytes).ok()?;
        segment::decode_index(&bytes, self.salt)
    }

    /// Writes a sealed segment's index. Not fsynced: a torn index fails its CRC and is rebuilt.
    fn write_index(&mut self, seg: &Segment) -> Result<()> {
        let name = segment::index_name(seg.base);
        let _ = self.storage.remove(&name);
        self.storage.create(&name)?;
        self.storage.write_at(&name, 0, &seg.encode_index(self.salt))?;
        Ok(())
    }

    /// Whether a valid batch numbered after `expected` starts anywhere in `bytes`.
    fn find_valid_batch(&self, bytes: &[u8], expected: Offset) -> bool {
        let magic = batch::MAGIC;
        let mut from = 0;
        while let Some(i) = bytes[from..].windows(4).position(|w| w == magic) {
            let at = from + i;
            if let Ok(h) = batch::check(&bytes[at..], self.salt, self.config.batch_bytes_max) {
                if h.base_offset >= expected {
                    return true;
                }
            }
            from = at + 1;
        }
        false
    }

    fn any_valid_later(&mut self, later: &[Offset]) -> Result<bool> {
        for &base in later {
            let name = segment::log_name(base);
            let mut bytes = vec![0; self.storage.len(&name)? as usize];
            self.storage.read_exact_at(&name, 0, &mut bytes)?;
            if self.find_valid_batch(&bytes, base) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn poison(&mut self, what: &str, e: std::io::Error) -> Error {
        let why = format!("{what} failed: {e}");
        tracing::error!("{why}; the store stops acknowledging until restart");
        self.poisoned = Some(why.clone());
        Error::Poisoned(why)
    }

    fn check_poison(&self) -> Result<()> {
        match &self.poisoned {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    fn active(&self) -> &Segment {
        self.segments.last().expect("the log always has an active segment")
    }

    /// Where the next batch goes: after the active segment's committed bytes and the batch in
    /// flight.
    fn batch_start(&self) -> (Offset, u64) {
        let active = self.active();
        let (count, bytes) = self.in_flight.as_ref().map_or((0, 0), |f| (f.count as u64, f.frozen.len() as u64));
        (Offset(active.end.0 + count), active.len + bytes)
    }

    /// The offset the next staged record gets.
    pub fn next_offset(&self) -> Offset {
        Offset(self.batch_start().0 .0 + self.pending.count as u64)
    }

    /// The oldest offset still in the log.
    pub fn start_offset(&self) -> Offset {
        self.segments[0].base
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending.bytes.len()
    }

    /// Records staged and not yet handed to a commit.
    pub fn pending_count(&self) -> u32 {
        self.pending.count
    }

    /// Whether a batch is being written and fsynced.
    pub fn is_flushing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Adds a record to the pending batch; it becomes durable with the next `commit`.
    pub fn stage(&mut self, rec: &Record<'_>, ts_ms: u64) -> Result<Location> {
        self.check_poison()?;
        if self.pending.count == 0 {
            let active = self.active();
            // Roll only between batches with none in flight: a batch never spans segments.
            if self.in_flight.is_none() && active.len >= self.config.segment_bytes_max && active.end > active.base {
                self.roll()?;
            }
            self.pending.bytes = std::mem::take(&mut self.spare);
            self.pending.bytes.clear();
            let base = self.batch_start().0;
            batch::begin(&mut self.pending.bytes, base);
        }
        let (base, start) = self.batch_start();
        let location = Location {
            offset: Offset(base.0 + self.pending.count as u64),
            position: Position(start + self.pending.bytes.len() as u64),
        };
        record::encode(rec, self.salt, &mut self.pending.bytes);
        assert!(self.pending.bytes.len() <= self.config.batch_bytes_max, "batch over batch_bytes_max");
        self.pending.count += 1;
        self.pending.max_ts_ms = self.pending.max_ts_ms.max(ts_ms);
        Ok(location)
    }

    /// Seals the active segment and starts a new one, durably.
    ///
    /// The new segment is durable before the index that seals the old one is written, so an
    /// index on the last segment always means that the segments after it were removed
    /// (`recover_segment` refuses that folder rather than serve it without them).
    fn roll(&mut self) -> Result<()> {
        let sealed = self.active().clone();
        let next = Segment { base: sealed.end, end: sealed.end, ..Segment::default() };
        self.storage.create(&segment::log_name(next.base))?;
        self.storage.sync_dir().map_err(|e| self.poison("directory fsync", e))?;
        self.write_index(&sealed)?;
        self.segments.push(next);
        Ok(())
    }

    /// Writes and fsyncs the pending batch. Returns how many records it made durable.
    pub fn commit(&mut self) -> Result<u32> {
        let Some(flush) = self.begin_commit()? else { return Ok(0) };
        let mut result = self.storage.write_at(&flush.segment, flush.position, &flush.bytes);
        if result.is_ok() && flush.sync {
            result = self.storage.sync(&flush.segment);
        }
        self.finish_commit(result)
    }

    /// Hands the pending batch over to be written at `position` of `segment` and, if `sync`,
    /// fsynced; `None` if nothing is staged. Staging may go on meanwhile (into the next batch);
    /// the driver reports the outcome with [`Log::finish_commit`] before the next `begin_commit`.
    /// This is how an io_uring driver overlaps the next batch's work with this one's fsync.
    pub fn begin_commit(&mut self) -> Result<Option<Flush>> {
        self.check_poison()?;
        assert!(self.in_flight.is_none(), "one batch in flight at a time (recovery relies on it)");
        if self.pending.count == 0 {
            return Ok(None);
        }
        let mut batch = std::mem::take(&mut self.pending);
        batch::finish(&mut batch.bytes, batch.count, self.salt);
        let (_, position) = self.batch_start();
        let flush = Flush {
            segment: segment::log_name(self.active().base),
            position,
            bytes: Bytes::from(std::mem::take(&mut batch.bytes)),
            sync: self.config.fsync == Fsync::Always,
        };
        batch.frozen = flush.bytes.clone();
        self.in_flight = Some(batch);
        Ok(Some(flush))
    }

    /// Records how the batch handed out by `begin_commit` ended. An error poisons the log.
    pub fn finish_commit(&mut self, result: std::io::Result<()>) -> Result<u32> {
        let batch = self.in_flight.take().expect("finish_commit without begin_commit");
        if let Err(e) = result {
            return Err(self.poison("write or fsync", e));
        }
        let interval = self.config.index_interval_bytes;
        let active = self.segments.last_mut().unwrap();
        active.note_batch(active.len, interval);
        active.len += batch.frozen.len() as u64;
        active.end.0 += batch.count as u64;
        active.max_ts_ms = active.max_ts_ms.max(batch.max_ts_ms);
        // Take the buffer back for the next batch when no one else holds it.
        if let Ok(buf) = batch.frozen.try_into_mut() {
            if buf.capacity() > self.spare.capacity() {
                self.spare = buf.into();
            }
        }
        Ok(batch.count)
    }

    /// Reads and verifies the record at `location`: committed, in flight, or still pending.
    pub fn read(&mut self, location: Location) -> Result<Record<'_>> {
        let active = self.active();
        if location.offset >= active.end {
            let mut start = active.len;
            let mut batch_end = active.end.0;
            let mut frame = None;
            for batch in self.in_flight.iter().chain([&self.pending]) {
                let bytes: &[u8] = if batch.frozen.is_empty() { &batch.bytes } else { &batch.frozen };
                batch_end += batch.count as u64;
                if location.offset.0 < batch_end {
                    let at = location.position.0.checked_sub(start).map(|p| p as usize);
                    frame = at.and_then(|at| {
                        let len = record::frame_len(bytes.get(at..)?)?;
                        bytes.get(at..at.checked_add(len)?)
                    });
                    break;
                }
                start += bytes.len() as u64;
            }
            let frame =
                frame.ok_or_else(|| Error::corrupt("unwritten batch", location.position.0, "no record there"))?;
            return record::decode(frame, self.salt, true)
                .map_err(|e| Error::corrupt("unwritten batch", location.position.0, e));
        }
        let i = self.segments.partition_point(|s| s.base <= location.offset);
        if i == 0 || location.offset < self.start_offset() {
            return Err(Error::corrupt(
                "log",
                location.position.0,
                format!("offset {} is not in the log", location.offset.0),
            ));
        }
        let seg = &self.segments[i - 1];
        if self.read_name.0 != Some(seg.base) {
            self.read_name = (Some(seg.base), segment::log_name(seg.base));
        }
        let name = &self.read_name.1;
        if location.position.0 + RECORD_HEADER_BYTES as u64 > seg.len {
            return Err(Error::corrupt(name, location.position.0, "position beyond the segment"));
        }
        let first = 512.min((seg.len - location.position.0) as usize);
        self.read_buf.resize(first, 0);
        self.storage.read_exact_at(name, location.position.0, &mut self.read_buf)?;
        let len = record::frame_len(&self.read_buf).unwrap_or(0);
        if len < RECORD_HEADER_BYTES || location.position.0 + len as u64 > seg.len {
            return Err(Error::corrupt(name, location.position.0, "bad record length"));
        }
        if len > first {
            self.read_buf.resize(len, 0);
            self.storage.read_exact_at(name, location.position.0 + first as u64, &mut self.read_buf[first..])?;
        }
        record::decode(&self.read_buf[..len], self.salt, true).map_err(|e| Error::corrupt(name, location.position.0, e))
    }

    /// The sealed segments, oldest first (retention candidates; the active one is never deleted).
    pub fn sealed_segments(&self) -> &[Segment] {
        &self.segments[..self.segments.len() - 1]
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Replays every committed record of the sealed segment `i` (for retention and inspection).
    pub fn scan_segment(&mut self, i: usize, mut visit: impl FnMut(Location, &Record<'_>)) -> Result<()> {
        let seg = self.segments[i].clone();
        let name = segment::log_name(seg.base);
        let mut buf = vec![0; seg.len as usize];
        self.storage.read_exact_at(&name, 0, &mut buf)?;
        let mut position = 0;
        let mut offset = seg.base;
        while position < buf.len() {
            let h = batch::check(&buf[position..], self.salt, self.config.batch_bytes_max)
                .map_err(|e| Error::corrupt(&name, position as u64, format!("{e:?} batch")))?;
            for frame in batch::frames(&buf[position..], h) {
                let (at, bytes) = frame.map_err(|e| (name.clone(), position as u64, e))?;
                let at = position + at;
                let rec = record::decode(bytes, self.salt, true).map_err(|e| (name.clone(), at as u64, e))?;
                visit(Location { offset, position: Position(at as u64) }, &rec);
                offset.0 += 1;
            }
            position += h.length;
        }
        Ok(())
    }

    /// Deletes the oldest `count` sealed segments, durably.
    pub fn drop_front(&mut self, count: usize) -> Result<()> {
        self.check_poison()?;
        assert!(count < self.segments.len(), "the active segment is never deleted");
        for seg in self.segments.drain(..count) {
            self.storage.remove(&segment::log_name(seg.base))?;
            let _ = self.storage.remove(&segment::index_name(seg.base));
        }
        self.storage.sync_dir().map_err(|e| self.poison("directory fsync", e))?;
        Ok(())
    }

    pub fn salt(&self) -> u32 {
        self.salt
    }

    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }
}

/// Reads the store's salt, or creates a new store.
///
/// A new store is made in an order that a crash cannot confuse with damage: first its first
/// segment (empty), then the meta file, each durable. So a meta file without any segment
/// always means that segments were removed, and opening that folder is refused: opened, it
/// would serve every conversation as if nothing had ever been written to it. Log files without
/// a valid meta file are damage too, unless they are only that first segment, still empty (a
/// creation that a crash interrupted, which held nothing and is made again).
fn open_meta<S: Storage>(storage: &mut S, read_only: bool) -> Result<u32> {
    let names = storage.list()?;
    let first = segment::log_name(Offset(0));
    let has_meta = names.iter().any(|n| n == META_FILE);
    let has_segments = names.iter().any(|n| segment::parse_log_name(n).is_some());
    let log_files: Vec<&String> =
        names.iter().filter(|n| segment::parse_log_name(n).or(segment::parse_index_name(n)).is_some()).collect();
    let unwritten = match log_files[..] {
        [] => true,
        [only] => *only == first && storage.len(&first)? == 0,
        _ => false,
    };
    if has_meta {
        match read_meta(storage) {
            Ok(salt) if has_segments => return Ok(salt),
            Ok(_) => {
                return Err(Error::corrupt(
                    META_FILE,
                    0,
                    "the meta file is here but every log segment is gone (removed from the folder?)",
                ))
            }
            Err(e) if !unwritten => return Err(e),
            Err(_) => {} // a creation interrupted while the meta file was written
        }
    } else if !unwritten {
        return Err(Error::corrupt(META_FILE, 0, "log files exist but the meta file is missing"));
    }
    if read_only {
        return Err(Error::corrupt(META_FILE, 0, "the folder holds no log segments"));
    }
    if has_meta {
        storage.remove(META_FILE)?;
    }
    if !has_segments {
        storage.create(&first).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                Error::corrupt(META_FILE, 0, "not a Switchboard data folder (no meta file)")
            }
            _ => Error::Io(e),
        })?;
    }
    storage.sync_dir()?;
    storage.create(META_FILE)?;
    let salt: u32 = rand::random();
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(META_MAGIC);
    b.extend_from_slice(&salt.to_le_bytes());
    let c = crc(0, &[&b]);
    b.extend_from_slice(&c.to_le_bytes());
    storage.write_at(META_FILE, 0, &b)?;
    storage.sync(META_FILE)?;
    storage.sync_dir()?;
    Ok(salt)
}

/// The salt in a meta file, checked.
fn read_meta<S: Storage>(storage: &mut S) -> Result<u32> {
    let mut b = [0u8; 12];
    storage.read_exact_at(META_FILE, 0, &mut b).map_err(|_| Error::corrupt(META_FILE, 0, "meta file is short"))?;
    if &b[..4] != META_MAGIC || crc(0, &[&b[..8]]) != u32::from_le_bytes(b[8..12].try_into().unwrap()) {
        return Err(Error::corrupt(META_FILE, 0, "meta file is damaged"));
    }
    Ok(u32::from_le_bytes(b[4..8].try_into().unwrap()))
}

/// A batch being staged, or written.
#[derive(Default)]
struct Pending {
    /// The batch while it is staged.
    bytes: Vec<u8>,
    /// The batch once handed to a driver (shared with its write).
    frozen: Bytes,
    count: u32,
    max_ts_ms: u64,
}

/// A batch to write at `position` of `segment` (and fsync, if `sync`), from
/// [`Log::begin_commit`].
pub struct Flush {
    pub segment: String,
    pub position: u64,
    pub bytes: Bytes,
    pub sync: bool,
}

/// What recovery hands every record to, in log order.
pub trait Replay {
    /// Works out what needs only the record itself (hashes of its ids, where its fields lie),
    /// in the recovery scan, ahead of the replay: the replay is the one part of recovery that
    /// cannot be split, so with helper threads ([`LogConfig::recovery_helpers`]) it should do
    /// no work that the scan's thread can.
    type Digester: Digest;
    fn digester(&self) -> Self::Digester;
    /// Applies a record from its digest and its raw frame alone, without decoding it, where
    /// that is enough (most messages). Returns whether it did; if not, the record is decoded
    /// and handed to [`Replay::record`].
    fn record_digested(&mut self, _at: Location, _frame: &[u8], _digest: &DigestOf<Self>) -> Result<bool> {
        Ok(false)
    }
    /// Applies one record; an error (a state that cannot be rebuilt) aborts the open.
    fn record(&mut self, at: Location, rec: &Record<'_>, digest: DigestOf<Self>) -> Result<()>;
    /// A record that will come a few calls later (`frame`, with its digest): fetch what it
    /// will touch. A hint.
    fn prefetch(&mut self, _frame: &[u8], _digest: &DigestOf<Self>) {}
}

/// The work on a record that [`Replay::digester`] moves out of the replay and into the scan.
pub trait Digest: Send + Sync {
    type Out: Default + Send;
    /// Whether there is anything to work out at all (the records are not even read if not).
    const USED: bool = true;
    /// The digest of one record's frame (its CRC checked). One that cannot be worked out is
    /// the default: the replay then decodes the record, and reports what is wrong with it.
    fn digest(&self, frame: &[u8]) -> Self::Out;
}

pub type DigestOf<R> = <<R as Replay>::Digester as Digest>::Out;

/// Nothing to work out ahead.
pub struct NoDigest;

impl Digest for NoDigest {
    type Out = ();
    const USED: bool = false;
    fn digest(&self, _frame: &[u8]) {}
}

impl<F: FnMut(Location, &Record<'_>) -> Result<()>> Replay for F {
    type Digester = NoDigest;
    fn digester(&self) -> NoDigest {
        NoDigest
    }
    fn record(&mut self, at: Location, rec: &Record<'_>, _digest: ()) -> Result<()> {
        self(at, rec)
    }
}

/// How many records ahead recovery prefetches.
const REPLAY_AHEAD: usize = 4;

/// Recovery reads segments in windows of this size (or one batch, if larger).
const RECOVERY_WINDOW_BYTES: usize = 1 << 20;

/// How far ahead of the scan recovery asks for a segment to be read from disk.
const READ_AHEAD_BYTES: usize = 16 << 20;
/// The least of a block read with `O_DIRECT` that the scan takes in place as a window; less
/// than this at the block's end is copied together with the next block's start instead.
const DIRECT_WINDOW_MIN_BYTES: usize = 64 << 10;

/// Windows read and verified ahead of the replay, at most.
const CHUNKS_AHEAD: usize = 4;

/// Replays a verified batch's records, each one's digest handed to `prefetch` [`REPLAY_AHEAD`]
/// records ahead of its replay, so that the replay can ask memory for what they will touch
/// while it applies the ones before. A record is decoded only if its digest is not enough.
/// `batch` is the batch's position in the segment, and its header.
fn replay_batch<V: Replay + ?Sized>(
    name: &str,
    bytes: &[u8],
    (position, header): (u64, BatchHeader),
    salt: u32,
    digests: &mut impl Iterator<Item = DigestOf<V>>,
    seg: &mut Segment,
    visit: &mut V,
) -> Result<()> {
    let mut ahead: VecDeque<(Position, &[u8], DigestOf<V>)> = VecDeque::with_capacity(REPLAY_AHEAD + 1);
    let mut frames = batch::frames(bytes, header);
    loop {
        while ahead.len() <= REPLAY_AHEAD {
            let Some(frame) = frames.next() else { break };
            let (at, frame) = frame.map_err(|e| (name.to_string(), position, e))?;
            let digest = digests.next().unwrap_or_default();
            visit.prefetch(frame, &digest);
            ahead.push_back((Position(position + at as u64), frame, digest));
        }
        let Some((at, frame, digest)) = ahead.pop_front() else { return Ok(()) };
        let location = Location { offset: seg.end, position: at };
        if !visit.record_digested(location, frame, &digest)? {
            let rec = record::decode(frame, salt, false).map_err(|e| (name.to_string(), at.0, e))?;
            visit.record(location, &rec, digest)?;
        }
        seg.max_ts_ms = seg.max_ts_ms.max(record::ts_of(frame));
        seg.end.0 += 1;
    }
}

/// Whole, verified batches read from one segment: what the recovery scan hands to the replay.
struct Chunk<'m, D> {
    bytes: Window<'m>,
    /// The file position of `bytes[0]`.
    start: u64,
    /// Where each batch starts in `bytes`, with its header; contiguous, in log order.
    batches: Vec<(usize, BatchHeader)>,
    /// Every record's digest, in log order: exactly `count` per batch.
    digests: Vec<D>,
}

/// Bytes of a segment: read into a buffer, in place in its mapping, or in place in a block
/// read with `O_DIRECT`.
enum Window<'m> {
    Read(Vec<u8>),
    Mapped(&'m [u8]),
    Shared(Bytes),
}

impl std::ops::Deref for Window<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Window::Read(buf) => buf,
            Window::Mapped(bytes) => bytes,
            Window::Shared(bytes) => bytes,
        }
    }
}

/// How recovery reads one segment ([`LogConfig::recovery_reads`]).
enum SegmentReads {
    /// In place in its mapping.
    Mapped(Mapped),
    /// With `O_DIRECT`, around the page cache.
    Direct(DirectReader),
    /// With the storage's positioned reads, where it has no mappings (the simulated disk).
    Storage,
}

/// Where the recovery scan takes a segment's bytes from: its mapping, its blocks read with
/// `O_DIRECT`, or positioned reads of the file. The last two copy into a spare buffer where
/// they must; a window's buffer comes back with [`Source::recycle`] once replayed.
enum Source<'m, 'r> {
    Mapped(&'m Mapped),
    Direct(&'r mut DirectReader, Vec<u8>),
    Read(&'r mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>, Vec<u8>),
}

impl<'m> Source<'m, '_> {
    /// Takes back a replayed window's buffer (empty for a window read in place), for the next.
    fn recycle(&mut self, buf: Vec<u8>) {
        if let Source::Direct(_, spare) | Source::Read(_, spare) = self {
            if buf.capacity() > spare.capacity() {
                *spare = buf;
            }
        }
    }

    /// `position..position + len`; from `O_DIRECT` blocks, only up to the end of the block
    /// that holds `position` where that is at least [`DIRECT_WINDOW_MIN_BYTES`].
    fn window(&mut self, position: u64, len: usize) -> std::io::Result<Window<'m>> {
        match self {
            Source::Direct(direct, spare) => match direct.in_place(position, len, DIRECT_WINDOW_MIN_BYTES)? {
                Some(bytes) => Ok(Window::Shared(bytes)),
                None => {
                    let mut buf = std::mem::take(spare);
                    direct.copy(position, len, &mut buf)?;
                    Ok(Window::Read(buf))
                }
            },
            Source::Mapped(map) => {
                let start = position as usize;
                map.will_need(start + READ_AHEAD_BYTES, len);
                map.populate(start, len)?;
                Ok(Window::Mapped(&map[start..start + len]))
            }
            Source::Read(reader, spare) => {
                let mut buf = std::mem::take(spare);
                buf.resize(len, 0);
                reader(position, &mut buf)?;
                Ok(Window::Read(buf))
            }
        }
    }

    /// `window`, whole, where `first` already holds the first bytes of it.
    fn extend(&mut self, position: u64, first: Window<'m>, len: usize) -> std::io::Result<Window<'m>> {
        match (self, first) {
            (Source::Direct(direct, spare), first) => {
                let mut buf = match first {
                    Window::Read(buf) => buf,
                    _ => std::mem::take(spare),
                };
                direct.copy(position, len, &mut buf)?;
                Ok(Window::Read(buf))
            }
            (Source::Read(reader, _), Window::Read(mut buf)) => {
                let read = buf.len();
                buf.resize(len, 0);
                reader(position + read as u64, &mut buf[read..])?;
                Ok(Window::Read(buf))
            }
            (source, _) => source.window(position, len),
        }
    }
}

/// The recovery scan of one segment: reads it in windows and verifies its batches (magic,
/// length, checksum, offsets following on from the one before), up to the first that is not
/// valid. What lies from `position` on is decided by the caller: the end, a torn tail, or
/// damage.
struct Scan {
    len: u64,
    /// Where the next window starts: the end of the valid batches so far.
    position: u64,
    /// The offset the next batch must start at.
    expected: Offset,
    salt: u32,
    batch_bytes_max: usize,
    done: bool,
    /// Records in the last chunk: the next one's digests are allocated for about as many at
    /// once (grown from nothing, they were copied over and over: 2.5% of recovery's CPU).
    last_records: usize,
}

impl Scan {
    /// The next run of valid batches, with their records' digests; `None` where the valid data
    /// ends.
    fn next<'m, D: Digest>(
        &mut self,
        source: &mut Source<'m, '_>,
        digester: &D,
    ) -> std::io::Result<Option<Chunk<'m, D::Out>>> {
        if self.done || self.position >= self.len {
            return Ok(None);
        }
        let left = self.len - self.position;
        let want = left.min(RECOVERY_WINDOW_BYTES as u64) as usize;
        let mut bytes = source.window(self.position, want)?;
        // A batch larger than the window (which may be shorter than asked): read the rest of it.
        if let Some(declared) = bytes.get(4..8).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize) {
            if declared > bytes.len() && declared <= self.batch_bytes_max && (bytes.len() as u64) < left {
                bytes = source.extend(self.position, bytes, left.min(declared as u64) as usize)?;
            }
        }
        let (mut batches, mut digests) = (Vec::new(), Vec::with_capacity(self.last_records + self.last_records / 4));
        let mut at = 0;
        while at < bytes.len() {
            match batch::check(&bytes[at..], self.salt, self.batch_bytes_max) {
                Ok(h) if h.base_offset == self.expected => {
                    batches.push((at, h));
                    // While the checksum has left the batch in cache.
                    if D::USED {
                        digest_batch(&bytes[at..], h, digester, &mut digests);
                    }
                    at += h.length;
                    self.expected.0 += h.count as u64;
                }
                // Cut by the window: the next one starts with it (and reads it whole).
                Err(BatchError::Short) if at > 0 => break,
                Ok(_) | Err(BatchError::Invalid) | Err(BatchError::Short) => {
                    self.done = true;
                    break;
                }
            }
        }
        if batches.is_empty() {
            self.done = true;
            return Ok(None);
        }
        let bytes = match bytes {
            Window::Read(mut buf) => {
                buf.truncate(at);
                Window::Read(buf)
            }
            Window::Mapped(b) => Window::Mapped(&b[..at]),
            Window::Shared(b) => Window::Shared(b.slice(..at)),
        };
        let start = self.position;
        self.position += at as u64;
        self.last_records = digests.len();
        Ok(Some(Chunk { bytes, start, batches, digests }))
    }
}

/// Appends the digests of a verified batch's records, exactly `header.count` of them: where the
/// frames cannot be told apart, the rest get the default, and the replay reports it.
fn digest_batch<D: Digest>(bytes: &[u8], header: BatchHeader, digester: &D, out: &mut Vec<D::Out>) {
    let end = out.len() + header.count as usize;
    for frame in batch::frames(bytes, header) {
        let Ok((_, frame)) = frame else { break };
        out.push(digester.digest(frame));
    }
    out.resize_with(end, Default::default);
}
