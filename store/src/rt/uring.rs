//! The io_uring driver of a store shard.
//!
//! Each commit is one submission of two linked entries, `write` then `fsync` (`IOSQE_IO_LINK`:
//! the fsync runs only after the whole write succeeded), so a commit costs one syscall. While
//! they are in the kernel the thread keeps taking jobs and staging them into the next batch
//! ([`crate::log::Log::begin_commit`]); when the fsync completes, the batch's writers are
//! answered and the next batch goes out at once. Only one batch is ever in flight: recovery's
//! rule that a valid batch after an invalid one means corruption depends on it.
//!
//! The thread sleeps in `io_uring_enter` only when there is nothing to stage. With a commit in
//! flight and the queue empty it waits for that commit only (jobs arriving meanwhile are not
//! worth a wakeup each: they are staged when it completes). Idle, it waits for a wakeup: an
//! `eventfd` read armed in the ring, which a producer writes only when the thread said it is
//! going to sleep ([`Waker`]), so a busy shard costs its producers no syscall.

use super::{Commit, Finisher, Job, ReadJob, JOBS_PER_TURN_MAX};
use crate::log::Flush;
use crate::shard::Shard;
use crate::storage::FsStorage;
use crossbeam_channel::{Receiver, TryRecvError};
use io_uring::{opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

const WAKE: u64 = 1;
const WRITE: u64 = 2;
const SYNC: u64 = 3;

/// How producers wake a sleeping driver.
pub struct Waker {
    eventfd: OwnedFd,
    sleeping: AtomicBool,
}

impl Waker {
    /// Called after a job was queued: writes the eventfd only if the driver may be asleep.
    pub fn wake_if_sleeping(&self) {
        // Pairs with the fence in `Driver::sleep`: either the driver sees the job, or this sees
        // `sleeping` and wakes it.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            self.wake();
        }
    }

    pub fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // Safety: writes 8 bytes from a live buffer to our eventfd. A full counter (EAGAIN)
        // still leaves it readable, which is all a wakeup needs.
        unsafe { libc::write(self.eventfd.as_raw_fd(), one.as_ptr().cast(), 8) };
    }
}

/// The batch being written and fsynced, and whom to answer.
struct InFlight {
    flush: Flush,
    finishers: Vec<Finisher>,
    write: Option<i32>,
    sync: Option<i32>,
}

impl InFlight {
    fn done(&self) -> bool {
        self.write.is_some() && (self.sync.is_some() || !self.flush.sync)
    }

    fn result(&self) -> io::Result<()> {
        match self.write {
            Some(n) if n < 0 => return Err(io::Error::from_raw_os_error(-n)),
            Some(n) if n as usize != self.flush.bytes.len() => {
                return Err(io::Error::new(io::ErrorKind::WriteZero, format!("short write: {n} bytes")))
            }
            _ => {}
        }
        match self.sync {
            Some(n) if n < 0 => Err(io::Error::from_raw_os_error(-n)),
            _ => Ok(()),
        }
    }
}

pub struct Driver {
    ring: IoUring,
    waker: Arc<Waker>,
    /// Where the armed eventfd read puts its 8 bytes; boxed so the address stays put.
    wake_buf: Box<[u8; 8]>,
    wake_armed: bool,
}

impl Driver {
    pub fn new() -> io::Result<Driver> {
        let ring = IoUring::new(8)?;
        // Safety: eventfd returns a new descriptor or -1, checked before it is owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // Safety: `fd` is a fresh descriptor that nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Driver {
            ring,
            waker: Arc::new(Waker { eventfd, sleeping: AtomicBool::new(false) }),
            wake_buf: Box::new([0; 8]),
            wake_armed: false,
        })
    }

    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    pub fn run(mut self, mut shard: Shard<FsStorage>, rx: Receiver<Job<FsStorage>>) {
        let mut in_flight: Option<InFlight> = None;
        let mut staged: Vec<Finisher> = Vec::new();
        let mut reads: Vec<ReadJob<FsStorage>> = Vec::new();
        let mut disconnected = false;
        loop {
            self.reap(&mut shard, &mut in_flight);
            // Stage what has arrived, while a commit is in flight too: the CPU work of the next
            // batch overlaps the write and fsync of this one. Not while reads wait: they need
            // everything before them durable, so the pipeline drains first.
            let mut drained = true;
            if reads.is_empty() && !disconnected {
                drained = false;
                for _ in 0..JOBS_PER_TURN_MAX {
                    if shard.wants_commit() {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(Job::Write(w)) => staged.push(w(&mut shard)),
                        Ok(Job::Read(r)) => {
                            reads.push(r);
                            break;
                        }
                        Err(TryRecvError::Empty) => {
                            drained = true;
                            break;
                        }
                        Ok(Job::Stop) | Err(TryRecvError::Disconnected) => {
                            disconnected = true;
                            drained = true;
                            break;
                        }
                    }
                    // A commit that completed meanwhile is answered now and the next one begins
                    // with what is staged: staging more first would add to both their latencies.
                    // (Looking at the completion queue is a read of shared memory, no syscall.)
                    if in_flight.is_some() && !self.ring.completion().is_empty() {
                        break;
                    }
                }
                self.reap(&mut shard, &mut in_flight);
            }
            if in_flight.is_none() {
                match shard.begin_commit() {
                    Ok(Some(flush)) => match self.submit(&mut shard, &flush) {
                        Ok(()) => {
                            in_flight = Some(InFlight {
                                flush,
                                finishers: std::mem::take(&mut staged),
                                write: None,
                                sync: None,
                            })
                        }
                        Err(e) => {
                            let outcome = match shard.finish_commit(Err(e)) {
                                Ok(_) => unreachable!("a failed submission never commits"),
                                Err(e) => Commit::Failed(e.to_string()),
                            };
                            staged.drain(..).for_each(|f| f(&outcome));
                        }
                    },
                    // Nothing staged: the jobs in hand (duplicates of durable records, or
                    // refusals) need no commit, and reads may run.
                    Ok(None) => {
                        staged.drain(..).for_each(|f| f(&Commit::Durable));
                        if !reads.is_empty() {
                            reads.drain(..).for_each(|r| r(&mut shard));
                            continue;
                        }
                        if disconnected {
                            return;
                        }
                    }
                    // Poisoned: refuse what is staged; reads still run (they fail on their own).
                    Err(e) => {
                        let outcome = Commit::Failed(e.to_string());
                        staged.drain(..).for_each(|f| f(&outcome));
                        reads.drain(..).for_each(|r| r(&mut shard));
                        if disconnected {
                            return;
                        }
                    }
                }
            }
            // More is queued and there is room to stage it: go on without sleeping.
            if !drained && reads.is_empty() && !shard.wants_commit() {
                continue;
            }
            // Nothing to stage: rather than sleep, do background work if there is some, in
            // steps, until a job or a completion arrives.
            if reads.is_empty() && shard.idle_work() {
                while rx.is_empty() && self.ring.completion().is_empty() && shard.idle_work() {}
                continue;
            }
            let wake_on_jobs = in_flight.is_none() && reads.is_empty() && !disconnected;
            if let Err(e) = self.sleep(&rx, wake_on_jobs) {
                tracing::error!("io_uring wait failed: {e}");
            }
        }
    }

    /// Takes the completions that arrived and, if they end the commit in flight, answers its
    /// writers.
    fn reap(&mut self, shard: &mut Shard<FsStorage>, in_flight: &mut Option<InFlight>) {
        for c in self.ring.completion() {
            match (c.user_data(), in_flight.as_mut()) {
                (WAKE, _) => self.wake_armed = false,
                (WRITE, Some(f)) => f.write = Some(c.result()),
                (SYNC, Some(f)) => f.sync = Some(c.result()),
                _ => {}
            }
        }
        if in_flight.as_ref().is_some_and(InFlight::done) {
            let f = in_flight.take().expect("checked above");
            let outcome = match shard.finish_commit(f.result()) {
                Ok(_) => Commit::Durable,
                Err(e) => Commit::Failed(e.to_string()),
            };
            f.finishers.into_iter().for_each(|fin| fin(&outcome));
        }
    }

    /// Submits the batch's write and (linked) fsync.
    fn submit(&mut self, shard: &mut Shard<FsStorage>, flush: &Flush) -> io::Result<()> {
        let fd = shard.log_mut().storage_mut().raw_fd(&flush.segment)?;
        let len = u32::try_from(flush.bytes.len()).map_err(|_| io::Error::other("batch over 4 GiB"))?;
        let write = opcode::Write::new(types::Fd(fd), flush.bytes.as_ptr(), len)
            .offset(flush.position)
            .build()
            .user_data(WRITE);
        let sync = opcode::Fsync::new(types::Fd(fd)).flags(types::FsyncFlags::DATASYNC).build().user_data(SYNC);
        // Safety: the buffer (`flush.bytes`, held in `InFlight` until both completions arrive)
        // and the descriptor (the storage keeps its files open) outlive the operations.
        unsafe {
            let mut sq = self.ring.submission();
            if flush.sync {
                sq.push(&write.flags(squeue::Flags::IO_LINK)).map_err(|_| io::Error::other("submission queue full"))?;
                sq.push(&sync).map_err(|_| io::Error::other("submission queue full"))?;
            } else {
                sq.push(&write).map_err(|_| io::Error::other("submission queue full"))?;
            }
        }
        self.ring.submit()?;
        Ok(())
    }

    /// Waits for at least one completion: the commit in flight, or a wakeup. Does not sleep
    /// while jobs are queued (and `take_jobs`), so a wakeup is never lost.
    fn sleep(&mut self, rx: &Receiver<Job<FsStorage>>, take_jobs: bool) -> io::Result<()> {
        if take_jobs && !self.wake_armed {
            let read = opcode::Read::new(types::Fd(self.waker.eventfd.as_raw_fd()), self.wake_buf.as_mut_ptr(), 8)
                .build()
                .user_data(WAKE);
            // Safety: `wake_buf` is boxed and lives as long as the ring; the eventfd too.
            unsafe { self.ring.submission().push(&read).map_err(|_| io::Error::other("submission queue full"))? };
            self.wake_armed = true;
        }
        self.waker.sleeping.store(take_jobs, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let result = if take_jobs && !rx.is_empty() {
            self.ring.submit().map(|_| ())
        } else {
            self.ring.submit_and_wait(1).map(|_| ())
        };
        self.waker.sleeping.store(false, Ordering::SeqCst);
        match result {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            r => r,
        }
    }
}
