//! A file read front to back with `O_DIRECT`, for recovery from a cold page cache: the disk
//! writes straight into a few reused buffers, and the page cache is never filled.
//!
//! Why: read through the page cache, a log that is not cached costs the kernel a page of
//! fresh memory for every 4 KiB read. On this project's VM host, reading 718 MB that way
//! (`cat`) took from 0.1 up to 2.0 CPU-s per GiB (the most when the host had taken the guest's
//! free memory back), against ~0.1 with `O_DIRECT` (`switchboard-bench store` measures both,
//! as "the disk alone").
//!
//! [`READERS`] threads each read every [`READERS`]th block of [`BLOCK_BYTES`], so that several
//! reads are in flight while the consumer works. A block is handed on as [`Bytes`], and the
//! windows the consumer takes of it are slices of it, not copies; only a window that runs over
//! the end of a block is copied together from two. A block's buffer goes back to its
//! [`BlockPool`] when the last slice of it is dropped, and the pool outlives one file's reader:
//! fresh memory costs page faults and zeroing (and on a VM host, the host's faults too).

use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, Sender};
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

/// Bytes per read: aligned, as `O_DIRECT` requires of offsets, lengths and buffers. Large, so
/// that few windows run over a block's end (each such costs a copy of the window).
pub const BLOCK_BYTES: usize = 4 << 20;
/// Reads in flight at most (a thread each).
const READERS: usize = 3;
/// Blocks each reader may have read ahead of the consumer, besides the one it reads into.
const QUEUED_PER_READER: usize = 1;
/// `O_DIRECT`'s alignment for buffers, offsets and lengths (the page, a multiple of any block
/// device's logical block).
const ALIGN: usize = 4096;

/// Reads one file front to back with `O_DIRECT`; see the module's documentation.
pub struct DirectReader {
    len: u64,
    /// Blocks received and still needed, in file order, the first at `start`.
    held: VecDeque<Bytes>,
    start: u64,
    /// The index of the next block to receive.
    next: u64,
    readers: Vec<Reader>,
}

/// One reader thread, and the end of its channel held by the consumer.
struct Reader {
    blocks: Receiver<io::Result<Bytes>>,
    thread: std::thread::JoinHandle<()>,
}

/// Read buffers kept from one [`DirectReader`] for the next (recovery reads segment after
/// segment). Dropped with its last clone.
#[derive(Clone, Default)]
pub struct BlockPool(Arc<Mutex<Vec<Block>>>);

impl BlockPool {
    fn take(&self) -> io::Result<Block> {
        match self.0.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            Some(block) => Ok(block),
            None => Block::new(),
        }
    }

    fn put(&self, block: Block) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(block);
    }
}

impl DirectReader {
    /// Starts reading `file` (opened with `O_DIRECT`) of `len` bytes from its start, into
    /// buffers from `pool`.
    pub fn new(file: File, len: u64, pool: &BlockPool) -> io::Result<DirectReader> {
        let file = Arc::new(file);
        let mut readers = Vec::with_capacity(READERS);
        for first in 0..READERS as u64 {
            let (blocks_tx, blocks) = bounded(QUEUED_PER_READER);
            let (file, pool) = (file.clone(), pool.clone());
            let thread = std::thread::Builder::new()
                .name("log-read".into())
                .spawn(move || read_blocks(&file, len, first, &blocks_tx, &pool))
                .map_err(|e| io::Error::other(format!("spawn a recovery reader: {e}")))?;
            readers.push(Reader { blocks, thread });
        }
        Ok(DirectReader { len, held: VecDeque::new(), start: 0, next: 0, readers })
    }

    /// `position..position + len` of the file in place, a slice of the block that holds it
    /// (no copy), or less where that block ends first; `None` where that would be less than
    /// `len.min(min)` bytes: [`DirectReader::copy`] it then. Reads go forward: a `position`
    /// below an earlier call's is an error (the blocks before it are let go).
    pub fn in_place(&mut self, position: u64, len: usize, min: usize) -> io::Result<Option<Bytes>> {
        let (block, start) = self.block_at(position, position)?;
        let at = (position - start) as usize;
        let in_block = (block.len() - at).min(len);
        Ok((in_block >= len.min(min)).then(|| block.slice(at..at + in_block)))
    }

    /// Copies `position..position + len` of the file into `buf`, replacing its bytes.
    pub fn copy(&mut self, position: u64, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
        if position + len as u64 > self.len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("read past the end at {position}")));
        }
        buf.clear();
        let mut at = position;
        while buf.len() < len {
            let (block, start) = self.block_at(at, position)?;
            let from = (at - start) as usize;
            let n = (block.len() - from).min(len - buf.len());
            buf.extend_from_slice(&block[from..from + n]);
            at += n as u64;
        }
        Ok(())
    }

    /// The block that holds `position` and where it starts, received if need be; the blocks
    /// wholly before `keep` are let go.
    fn block_at(&mut self, position: u64, keep: u64) -> io::Result<(Bytes, u64)> {
        if position >= self.len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("read past the end at {position}")));
        }
        if keep < self.start {
            return Err(io::Error::other(format!("direct reads go forward only: {keep} after {}", self.start)));
        }
        // `held` runs from `start` to where the next block to receive starts.
        let block = BLOCK_BYTES as u64;
        while self.next * block <= position {
            let received = self.readers[self.next as usize % READERS]
                .blocks
                .recv()
                .map_err(|_| io::Error::other("a recovery reader stopped"))??;
            self.held.push_back(received);
            self.next += 1;
        }
        // `keep <= position`: the block that holds `keep` stays.
        while self.start + block <= keep {
            self.held.pop_front();
            self.start += block;
        }
        let i = (position - self.start) / block;
        Ok((self.held[i as usize].clone(), self.start + i * block))
    }
}

impl Drop for DirectReader {
    fn drop(&mut self) {
        // Closing the channels wakes a reader that waits to send; a read in flight finishes.
        // Every block dropped goes back to the pool.
        self.held.clear();
        let threads: Vec<_> = std::mem::take(&mut self.readers).into_iter().map(|r| r.thread).collect();
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// A reader thread: blocks `first`, `first + READERS`, … of the file, in order, each into a
/// buffer from the pool. Stops at the end of the file, after an error (sent on), or when the
/// consumer is gone.
fn read_blocks(file: &File, len: u64, first: u64, blocks: &Sender<io::Result<Bytes>>, pool: &BlockPool) {
    let mut index = first;
    while index * (BLOCK_BYTES as u64) < len {
        let read = pool.take().and_then(|mut block| match block.read(file, index * BLOCK_BYTES as u64, len) {
            Ok(()) => Ok(Bytes::from_owner(Pooled { block: Some(block), pool: pool.clone() })),
            Err(e) => {
                pool.put(block);
                Err(e)
            }
        });
        let failed = read.is_err();
        // A block the consumer will not take goes back to the pool as it drops.
        if blocks.send(read).is_err() || failed {
            return;
        }
        index += READERS as u64;
    }
}

/// A block lent out as [`Bytes`]: back to its pool when the last slice of it is dropped.
struct Pooled {
    block: Option<Block>,
    pool: BlockPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        self.block.as_ref().map_or(&[], Block::bytes)
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(block) = self.block.take() {
            self.pool.put(block);
        }
    }
}

/// A buffer of [`BLOCK_BYTES`] (mapped on its own, on huge pages: see
/// [`crate::anonymous::Buffer`]), and how much of it holds the file.
struct Block {
    buf: crate::anonymous::Buffer,
    len: usize,
}

impl Block {
    fn new() -> io::Result<Block> {
        Ok(Block { buf: crate::anonymous::Buffer::new(BLOCK_BYTES)?, len: 0 })
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Reads the block at `offset` (aligned) whole: `BLOCK_BYTES`, or up to `len` for the
    /// file's last block. Fewer bytes than that is an error (the file shrank).
    fn read(&mut self, file: &File, offset: u64, len: u64) -> io::Result<()> {
        let want = (len - offset).min(BLOCK_BYTES as u64) as usize;
        // The length too must be aligned; past the end of the file, the read comes back short.
        let aligned = want.next_multiple_of(ALIGN);
        let mut got = 0;
        while got < want {
            // `got` stays aligned: only the file's end makes a read short of what was asked.
            match file.read_at(&mut self.buf[got..aligned], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if got < want {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("short read at {offset}")));
        }
        self.len = want;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    /// The file `len` bytes long with byte `i` = `i * 7 % 251`, and whether `O_DIRECT` opens
    /// it (`None`: this filesystem refuses it, e.g. tmpfs).
    fn file_of(dir: &std::path::Path, len: usize) -> Option<(File, Vec<u8>)> {
        let path = dir.join(format!("f{len}"));
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        File::create(&path).unwrap().write_all(&data).unwrap();
        match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(&path) {
            Ok(f) => Some((f, data)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => None,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn windows_in_place_or_copied_hold_the_file_and_back_up_within_the_last() {
        let dir = tempfile::tempdir().unwrap();
        // Lengths at, below and above block and page edges, and several blocks per reader;
        // windows within a block, of a whole block, and across three.
        let lens = [1, 4095, 4096, 4097, BLOCK_BYTES, BLOCK_BYTES + 1, 7 * BLOCK_BYTES + 12345];
        let windows = [300 << 10, 1 << 20, BLOCK_BYTES, 5 * BLOCK_BYTES / 2];
        let (mut in_place, mut copied) = (0, 0);
        for (len, window) in lens.into_iter().flat_map(|len| windows.map(|w| (len, w))) {
            let Some((file, data)) = file_of(dir.path(), len) else {
                eprintln!("O_DIRECT refused here: nothing to test");
                return;
            };
            let mut reader = DirectReader::new(file, len as u64, &BlockPool::default()).unwrap();
            // Each window starts 50 KiB before the last one ended (a batch cut by the window
            // is read again), as recovery's scan does; one that would be under 64 KiB in
            // place is copied.
            let (mut position, mut buf) = (0usize, Vec::new());
            while position < len {
                let want = window.min(len - position);
                let got: &[u8] = match reader.in_place(position as u64, want, 64 << 10).unwrap() {
                    Some(bytes) => {
                        in_place += 1;
                        buf = bytes.to_vec();
                        &buf
                    }
                    None => {
                        copied += 1;
                        reader.copy(position as u64, want, &mut buf).unwrap();
                        &buf
                    }
                };
                assert!(got.len() >= want.min(64 << 10) && got.len() <= want, "len {len}, window {window}");
                assert!(got == &data[position..position + got.len()], "len {len}, window {window} at {position}");
                let n = got.len();
                position += if position + n == len { n } else { n.saturating_sub(50 << 10).max(1) };
            }
            let mut past = Vec::new();
            assert_eq!(reader.copy(len as u64, 1, &mut past).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        }
        assert!(in_place > 0 && copied > 0, "{in_place} windows in place, {copied} copied");
    }

    #[test]
    fn a_copy_spans_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let len = 3 * BLOCK_BYTES + 100;
        let Some((file, data)) = file_of(dir.path(), len) else { return };
        let mut reader = DirectReader::new(file, len as u64, &BlockPool::default()).unwrap();
        let mut buf = Vec::new();
        reader.copy(10, len - 10, &mut buf).unwrap();
        assert!(buf == data[10..]);
    }

    #[test]
    fn going_back_past_what_was_given_back_is_an_error_not_wrong_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let Some((file, _)) = file_of(dir.path(), 3 * BLOCK_BYTES) else { return };
        let mut reader = DirectReader::new(file, 3 * BLOCK_BYTES as u64, &BlockPool::default()).unwrap();
        let mut buf = Vec::new();
        reader.copy(2 * BLOCK_BYTES as u64, 100, &mut buf).unwrap();
        assert!(reader.copy(10, 100, &mut buf).is_err());
        assert!(reader.in_place(10, 100, 0).is_err());
    }

    #[test]
    fn dropped_midway_its_readers_stop() {
        let dir = tempfile::tempdir().unwrap();
        let Some((file, data)) = file_of(dir.path(), 6 * BLOCK_BYTES) else { return };
        let mut reader = DirectReader::new(file, data.len() as u64, &BlockPool::default()).unwrap();
        assert_eq!(reader.in_place(0, 10, 10).unwrap().unwrap(), data[..10]);
        drop(reader); // joins every reader thread: the test hangs if one does not stop
    }
}
