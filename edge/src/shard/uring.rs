//! The raw io_uring under the connection path: one [`Ring`] holds a table of direct descriptors
//! (sockets that are not in the process's descriptor table) and a provided-buffer pool that
//! every multishot receive of the ring draws from.
//!
//! monoio does not reach direct descriptors or buffer rings, so this module speaks to the
//! kernel through the `io-uring` crate. It is the one place in the edge with `unsafe` code
//! besides the vectored-write batch, and it keeps it to three things, each argued where it
//! is: pushing an entry whose pointers must outlive the operation, the buffer ring's shared
//! memory, and reading a buffer the kernel filled.
//!
//! Why direct descriptors: this host caps `RLIMIT_NOFILE` at 20,000 and cannot raise it. The
//! kernel checks a ring's registered table against that limit per ring, not per process, so a
//! shard holds `connections_max` sockets in as many rings as it takes
//! (docs/architecture.md).
//!
//! Why provided buffers: an idle connection must hold no read buffer. A multishot receive
//! takes a buffer from the ring's pool only when bytes arrive, the connection hands it back as
//! soon as it has decoded them, and a partial frame is copied into the connection's own
//! (usually empty) buffer. Readiness plus a read was the other choice, but a direct descriptor
//! cannot be read with a syscall, so it would cost a second submission per read.
#![allow(unsafe_code)]

use crate::outbox::Entry;
use ahash::HashMap;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

/// Room kept in a ring's backlog of entries that found the submission queue full.
const BACKLOG_KEPT: usize = 1024;

/// What a completion is for: the top byte of its `user_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Close = 4,
    Cancel = 5,
}

/// The `user_data` of an operation: the op, a connection's slot and the low bits of its
/// generation (so that a completion for a slot's previous connection is recognised).
pub fn tag(op: Op, slot: u32, generation: u32) -> u64 {
    (op as u64) << 56 | (slot as u64 & 0xff_ffff) << 32 | generation as u64
}

pub fn untag(user_data: u64) -> (Option<Op>, u32, u32) {
    let op = match (user_data >> 56) as u8 {
        1 => Some(Op::Accept),
        2 => Some(Op::Recv),
        3 => Some(Op::Send),
        4 => Some(Op::Close),
        5 => Some(Op::Cancel),
        _ => None,
    };
    (op, (user_data >> 32) as u32 & 0xff_ffff, user_data as u32)
}

/// One completion, copied out of the queue.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// The multishot operation is still armed.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer the kernel filled, if any.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

/// The ring's provided buffers: `count` buffers of `size` bytes and the ring the kernel takes
/// them from. Both are leaked on purpose: a ring is torn down by the kernel asynchronously
/// after its descriptor closes, so memory it may still write must outlive every `Ring`.
struct Pool {
    entries: &'static mut [types::BufRingEntry],
    /// The buffers: a raw pointer, since the kernel writes them behind our back.
    memory: *mut u8,
    size: usize,
    count: usize,
    /// Buffers handed back since the tail was last published.
    tail: u16,
}

impl Pool {
    const GROUP: u16 = 0;

    fn new(count: u16, size: usize) -> Pool {
        assert!(count.is_power_of_two(), "a buffer ring's size is a power of two");
        let layout = std::alloc::Layout::from_size_align(count as usize * 16, 4096).expect("layout");
        // Safety: the layout is not zero-sized; `BufRingEntry` is plain data (zeroes are a
        // valid value), 16 bytes, and the allocation is page-aligned as the kernel requires.
        let entries = unsafe {
            let p = std::alloc::alloc_zeroed(layout) as *mut types::BufRingEntry;
            assert!(!p.is_null(), "out of memory for a buffer ring");
            std::slice::from_raw_parts_mut(p, count as usize)
        };
        let memory = Box::leak(vec![0u8; count as usize * size].into_boxed_slice()).as_mut_ptr();
        let mut pool = Pool { entries, memory, size, count: count as usize, tail: 0 };
        for bid in 0..count {
            pool.put(bid);
        }
        pool.publish();
        pool
    }

    /// Hands buffer `bid` back (visible to the kernel at the next [`Pool::publish`]).
    fn put(&mut self, bid: u16) {
        let mask = self.entries.len() - 1;
        let addr = self.memory as u64 + (bid as usize * self.size) as u64;
        let e = &mut self.entries[self.tail as usize & mask];
        e.set_addr(addr);
        e.set_len(self.size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&mut self) {
        // Safety: `entries` is the ring's first entry, initialised; the tail field is the
        // kernel-shared u16 that it reads with acquire semantics.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries.as_ptr()) as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

pub struct Ring {
    ring: IoUring,
    pool: Pool,
    /// Entries that found the submission queue full; they go first at the next submit.
    backlog: VecDeque<squeue::Entry>,
    /// Slots of the direct-descriptor table.
    pub files: u32,
    /// Descriptors of the table in use.
    pub files_used: u32,
    /// The multishot accept is armed.
    pub accepting: bool,
    /// Tags the current multishot accept, so that the end of a cancelled one is not taken
    /// for the end of its successor.
    accept_generation: u32,
    /// Sends the kernel has not completed, by tag: the ring owns them until then.
    sending: HashMap<u64, Box<Gather>>,
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The kernel tears a ring down after its descriptor closes, and may still read what
        // an unfinished send points to: leak those.
        std::mem::forget(std::mem::take(&mut self.sending));
    }
}

/// One vectored send: whole frames from a connection's outbox (the payloads shared with
/// every other recipient), or bytes of its own (ciphertext, a close frame), and the message
/// header and iovecs that point into them. Short sends resume where the kernel stopped.
pub struct Gather {
    pub(crate) entries: Vec<Entry>,
    pub raw: Vec<u8>,
    iovecs: Vec<libc::iovec>,
    msg: libc::msghdr,
    /// Bytes already sent.
    done: usize,
}

impl Default for Gather {
    fn default() -> Gather {
        // Safety: `msghdr` is plain data; all zeroes is an empty message.
        let msg = unsafe { std::mem::zeroed() };
        Gather { entries: Vec::new(), raw: Vec::new(), iovecs: Vec::new(), msg, done: 0 }
    }
}

impl Gather {
    fn parts(&self) -> impl Iterator<Item = &[u8]> {
        self.entries.iter().flat_map(|e| e.parts()).chain(std::iter::once(&self.raw[..]))
    }

    pub fn total(&self) -> usize {
        self.parts().map(<[u8]>::len).sum()
    }

    /// Points the message at what is left to send.
    fn prepare(&mut self) {
        let mut iovecs = std::mem::take(&mut self.iovecs);
        iovecs.clear();
        let mut skip = self.done;
        for part in self.parts() {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            let rest = &part[skip..];
            skip = 0;
            iovecs.push(libc::iovec { iov_base: rest.as_ptr() as *mut libc::c_void, iov_len: rest.len() });
        }
        self.iovecs = iovecs;
        self.msg.msg_iov = self.iovecs.as_mut_ptr();
        self.msg.msg_iovlen = self.iovecs.len() as _;
    }

    /// The kernel sent `n` more bytes; whether everything is sent.
    pub fn advance(&mut self, n: usize) -> bool {
        self.done += n;
        self.done >= self.total()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.raw.clear();
        self.iovecs.clear();
        self.done = 0;
    }
}

impl Ring {
    /// A ring of `entries` submissions with a sparse table of `files` direct descriptors and
    /// `buffers` provided buffers of `buffer_bytes`, signalling `eventfd` on every completion.
    pub fn new(entries: u32, files: u32, buffers: u16, buffer_bytes: usize, eventfd: RawFd) -> io::Result<Ring> {
        let ring = IoUring::builder().setup_cqsize(entries * 4).setup_clamp().build(entries)?;
        ring.submitter().register_files_sparse(files)?;
        ring.submitter().register_eventfd(eventfd)?;
        let pool = Pool::new(buffers, buffer_bytes);
        // Safety: the ring memory is leaked, so it stays valid for as long as the kernel may
        // read it.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(pool.entries.as_ptr() as u64, buffers, Pool::GROUP, 0)?;
        }
        Ok(Ring {
            ring,
            pool,
            backlog: VecDeque::new(),
            files,
            files_used: 0,
            accepting: false,
            accept_generation: 0,
            sending: HashMap::default(),
        })
    }

    /// Queues an entry whose pointers (if any) stay valid until its completion: the only
    /// pointers are a send's, into a [`Gather`] that `sending` holds (boxed, so it does not
    /// move) until the completion comes back.
    fn push(&mut self, entry: squeue::Entry) {
        if !self.backlog.is_empty() {
            return self.backlog.push_back(entry);
        }
        // Safety: see above.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.backlog.push_back(entry);
        }
    }

    /// Accepts connections on `listener` into free slots of the table, until cancelled or
    /// the table is full (`ENFILE`).
    pub fn accept(&mut self, listener: RawFd) {
        self.accepting = true;
        self.accept_generation = self.accept_generation.wrapping_add(1);
        let e = opcode::AcceptMulti::new(types::Fd(listener))
            .allocate_file_index(true)
            // No SOCK_CLOEXEC: a direct descriptor has no exec to survive (the kernel refuses it).
            .build()
            .user_data(tag(Op::Accept, 0, self.accept_generation));
        self.push(e);
    }

    pub fn cancel_accept(&mut self) {
        self.accepting = false;
        self.cancel(tag(Op::Accept, 0, self.accept_generation));
    }

    /// The multishot accept tagged `user_data` ended.
    pub fn accept_ended(&mut self, user_data: u64) {
        if user_data == tag(Op::Accept, 0, self.accept_generation) {
            self.accepting = false;
        }
    }

    /// Receives on `file` into provided buffers, one completion per arrival, until the peer
    /// closes, an error, a cancel, or the pool running dry (`ENOBUFS`).
    pub fn recv(&mut self, file: u32, user_data: u64) {
        self.push(opcode::RecvMulti::new(types::Fixed(file), Pool::GROUP).build().user_data(user_data));
    }

    /// Cancels the operation tagged `target`.
    pub fn cancel(&mut self, target: u64) {
        self.push(opcode::AsyncCancel::new(target).build().user_data(tag(Op::Cancel, 0, 0)));
    }

    /// Sends what `gather` holds (from where an earlier short send stopped) on `file`. The
    /// ring keeps the gather until the completion tagged `user_data`, which [`Ring::sent`]
    /// hands it back for.
    pub fn send(&mut self, file: u32, mut gather: Box<Gather>, user_data: u64) {
        gather.prepare();
        let e = opcode::SendMsg::new(types::Fixed(file), &gather.msg).flags(libc::MSG_NOSIGNAL as u32).build();
        let previous = self.sending.insert(user_data, gather);
        assert!(previous.is_none(), "one send at a time per connection");
        self.push(e.user_data(user_data));
    }

    /// The gather of the send tagged `user_data`, which has completed.
    pub fn sent(&mut self, user_data: u64) -> Option<Box<Gather>> {
        self.sending.remove(&user_data)
    }

    /// Closes the direct descriptor, freeing its slot of the table.
    pub fn close(&mut self, file: u32, user_data: u64) {
        self.push(opcode::Close::new(types::Fixed(file)).build().user_data(user_data));
    }

    /// Submits everything queued, without waiting.
    pub fn submit(&mut self) -> io::Result<()> {
        self.pool.publish();
        if self.backlog.is_empty() && self.ring.submission().is_empty() && !self.overflowed() {
            return Ok(());
        }
        loop {
            {
                let mut sq = self.ring.submission();
                while let Some(e) = self.backlog.front() {
                    // Safety: as in `push`: the backlog holds entries built by this module.
                    if unsafe { sq.push(e) }.is_err() {
                        break;
                    }
                    self.backlog.pop_front();
                }
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) || e.raw_os_error() == Some(libc::EAGAIN) => {
                    // The completion queue is full: the caller reaps, then submits again.
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            if self.backlog.is_empty() {
                if self.backlog.capacity() > BACKLOG_KEPT {
                    // A burst (a flood of connects) is over: give its room back.
                    self.backlog.shrink_to(BACKLOG_KEPT);
                }
                return Ok(());
            }
        }
    }

    /// Completions that did not fit the completion queue wait in the kernel: the next submit
    /// moves them in (and they signal nothing more on their own).
    pub fn overflowed(&mut self) -> bool {
        self.ring.submission().cq_overflow()
    }

    /// Moves up to `max` completions into `out`.
    pub fn reap(&mut self, out: &mut Vec<Completion>, max: usize) {
        let cq = self.ring.completion();
        for c in cq.take(max) {
            out.push(Completion { user_data: c.user_data(), result: c.result(), flags: c.flags() });
        }
    }

    /// The bytes the kernel put in buffer `bid`: `len` of them.
    pub fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        assert!((bid as usize) < self.pool.count, "a buffer id from the kernel");
        // Safety: `bid` is in the pool (checked); the kernel filled `len` bytes of it, handed it
        // to us with this completion, and takes it again only after `recycle`, which needs
        // `&mut self` and so cannot happen while the slice lives.
        unsafe {
            std::slice::from_raw_parts(self.pool.memory.add(bid as usize * self.pool.size), len.min(self.pool.size))
        }
    }

    /// Hands buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        self.pool.put(bid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;
    use crate::ws::Opcode;
    use bytes::Bytes;

    /// The bytes the gather's iovecs point at now.
    fn pointed(g: &Gather) -> Vec<u8> {
        let mut out = Vec::new();
        for v in &g.iovecs {
            // Safety: prepare() points every iovec into bytes the gather owns.
            out.extend_from_slice(unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) });
        }
        assert_eq!(g.msg.msg_iovlen, g.iovecs.len());
        out
    }

    #[test]
    fn a_short_send_resumes_at_the_first_unsent_byte() {
        let mut outbox = Outbox::new(1 << 20);
        outbox.push(Opcode::Text, Bytes::from_static(b"hello")).unwrap();
        outbox.push(Opcode::Binary, Bytes::from(vec![7u8; 300])).unwrap();
        outbox.push(Opcode::Text, Bytes::new()).unwrap();
        let mut g = Gather::default();
        outbox.take_into(&mut g.entries, 1 << 20, 16);
        g.raw.extend_from_slice(b"tail");
        g.prepare();
        let whole = pointed(&g);
        assert_eq!(whole.len(), g.total());
        assert!(whole.ends_with(b"tail") && whole[2..7] == *b"hello");
        for cut in [1, 2, 6, 7, 8, 200, whole.len() - 4, whole.len() - 1] {
            g.done = 0;
            assert!(!g.advance(cut), "cut at {cut}");
            g.prepare();
            assert_eq!(pointed(&g), whole[cut..], "cut at {cut}");
        }
        // Two short sends in a row, then the rest.
        g.done = 0;
        assert!(!g.advance(3));
        assert!(!g.advance(100));
        g.prepare();
        assert_eq!(pointed(&g), whole[103..]);
        assert!(g.advance(whole.len() - 103));
    }
}
