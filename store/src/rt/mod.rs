//! The threads that drive shards in production: each owns one [`Shard`], takes jobs from a
//! bounded queue, and commits in groups.
//!
//! Two drivers share the job model:
//!
//! - [`uring`], the production one: the batch's write and fsync go to the kernel as one linked
//!   io_uring submission, and while they are in flight the thread stages the next batch from
//!   the queue. Group commit with no idle CPU during the fsync, one syscall per commit.
//! - [`run_blocking`]: the same loop with `pwrite` + `fdatasync`, for any [`Storage`] (the
//!   simulated disk in tests) and where io_uring is not available.
//!
//! Either way a write job's answer is released only with the outcome of the commit that made
//! its records durable, and read jobs run only when nothing is staged or in flight, so they see
//! only durable data.

pub mod uring;

use crate::error::Error;
use crate::shard::{Shard, ShardConfig};
use crate::storage::{FsStorage, Storage};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

/// How a commit ended, for the write jobs in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Durable: acknowledge and deliver.
    Durable,
    /// Not stored (the shard is poisoned); answer `unavailable`.
    Failed(String),
}

/// Stages records and returns what to do once the commit is known.
pub type WriteJob<S> = Box<dyn FnOnce(&mut Shard<S>) -> Finisher + Send>;
/// Answers a write job's requester once its commit is known.
pub type Finisher = Box<dyn FnOnce(&Commit) + Send>;
/// Runs against committed state.
pub type ReadJob<S> = Box<dyn FnOnce(&mut Shard<S>) + Send>;

pub enum Job<S: Storage> {
    Write(WriteJob<S>),
    Read(ReadJob<S>),
    /// Finish everything queued before it, commit, and exit, whatever handles remain.
    Stop,
}

/// Jobs taken from the queue in one turn at most, so a flood cannot delay a commit forever.
const JOBS_PER_TURN_MAX: usize = 65_536;

/// A handle to a shard thread. Dropping every handle stops the thread after its queue drains.
pub struct ShardHandle<S: Storage> {
    /// `None` only inside `drop`, which must let go of the sender before waking the driver.
    tx: Option<Sender<Job<S>>>,
    /// Wakes an io_uring driver that sleeps in the kernel (absent for the blocking driver,
    /// which sleeps on the queue itself).
    waker: Option<Arc<uring::Waker>>,
}

impl<S: Storage> Clone for ShardHandle<S> {
    fn clone(&self) -> Self {
        ShardHandle { tx: self.tx.clone(), waker: self.waker.clone() }
    }
}

impl<S: Storage> Drop for ShardHandle<S> {
    fn drop(&mut self) {
        // The last handle going away must wake the driver so that it notices and exits: drop
        // the sender first, or the driver may look, still see it, and sleep for good.
        drop(self.tx.take());
        if let Some(w) = &self.waker {
            w.wake();
        }
    }
}

/// The queue is full: the shard is overloaded; answer `unavailable` rather than wait forever.
#[derive(Debug)]
pub struct Busy;

impl<S: Storage> ShardHandle<S> {
    pub fn write(&self, job: WriteJob<S>) -> Result<(), Busy> {
        self.submit(Job::Write(job))
    }
    pub fn read(&self, job: ReadJob<S>) -> Result<(), Busy> {
        self.submit(Job::Read(job))
    }
    fn sender(&self) -> &Sender<Job<S>> {
        self.tx.as_ref().expect("the sender lives until drop")
    }
    fn submit(&self, job: Job<S>) -> Result<(), Busy> {
        match self.sender().try_send(job) {
            Ok(()) => {
                self.wake();
                Ok(())
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
    /// Asks the thread to finish what is queued before this call, commit it, and exit, even
    /// while other handles live (a daemon shutting down cannot always find them all). Jobs
    /// submitted after it are dropped unanswered.
    pub fn stop(&self) {
        if self.sender().send(Job::Stop).is_ok() {
            self.wake();
        }
    }

    /// Blocks while the queue is full (for load generators and tools, not the edge).
    pub fn write_blocking(&self, job: WriteJob<S>) -> Result<(), Busy> {
        self.sender().send(Job::Write(job)).map_err(|_| Busy)?;
        self.wake();
        Ok(())
    }
    fn wake(&self) {
        if let Some(w) = &self.waker {
            w.wake_if_sleeping();
        }
    }
}

/// Which driver runs a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverKind {
    /// io_uring, falling back to blocking (with a warning) where the kernel refuses it.
    Uring,
    Blocking,
}

/// Opens the shard in `dir` and starts its thread, optionally pinned to `core`. Returns which
/// driver runs it.
pub fn spawn(
    dir: &Path,
    config: ShardConfig,
    queue_max: usize,
    core: Option<usize>,
    kind: DriverKind,
) -> Result<(ShardHandle<FsStorage>, JoinHandle<()>, DriverKind), Error> {
    let storage = FsStorage::open(dir)?;
    let (shard, _) = Shard::open(storage, config)?;
    let (tx, rx) = bounded(queue_max);
    let driver = match kind {
        DriverKind::Uring => uring::Driver::new()
            .map_err(|e| {
                tracing::warn!("io_uring is not available ({e}); store shard uses blocking pwrite + fdatasync")
            })
            .ok(),
        DriverKind::Blocking => None,
    };
    Ok(match driver {
        Some(driver) => {
            let waker = driver.waker();
            let thread = spawn_thread(core, move || driver.run(shard, rx));
            (ShardHandle { tx: Some(tx), waker: Some(waker) }, thread, DriverKind::Uring)
        }
        None => {
            let thread = spawn_thread(core, move || run_blocking(shard, rx));
            (ShardHandle { tx: Some(tx), waker: None }, thread, DriverKind::Blocking)
        }
    })
}

/// Starts the blocking driver on any storage (tests use the simulated disk).
pub fn spawn_blocking<S: Storage + Send + 'static>(
    shard: Shard<S>,
    queue_max: usize,
    core: Option<usize>,
) -> (ShardHandle<S>, JoinHandle<()>) {
    let (tx, rx) = bounded(queue_max);
    let thread = spawn_thread(core, move || run_blocking(shard, rx));
    (ShardHandle { tx: Some(tx), waker: None }, thread)
}

fn spawn_thread(core: Option<usize>, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("store-shard".into())
        .spawn(move || {
            if let Some(core) = core {
                pin_to_core(core);
            }
            f()
        })
        .expect("spawn store shard thread")
}

/// The blocking driver: stage everything queued, commit (write + fsync, blocking), answer the
/// writers, run the reads; jobs that arrive meanwhile make the next group.
pub fn run_blocking<S: Storage>(mut shard: Shard<S>, rx: Receiver<Job<S>>) {
    let mut finishers: Vec<Finisher> = Vec::new();
    let mut reads: Vec<ReadJob<S>> = Vec::new();
    let mut stopping = false;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(job) = next.take() {
            match job {
                Job::Write(w) => finishers.push(w(&mut shard)),
                Job::Read(r) => reads.push(r),
                Job::Stop => {
                    stopping = true;
                    break;
                }
            }
            taken += 1;
            if taken < JOBS_PER_TURN_MAX && !shard.wants_commit() {
                next = rx.try_recv().ok();
            }
        }
        let outcome = match shard.commit() {
            Ok(_) => Commit::Durable,
            Err(e) => Commit::Failed(e.to_string()),
        };
        for f in finishers.drain(..) {
            f(&outcome);
        }
        for r in reads.drain(..) {
            r(&mut shard);
        }
        if stopping {
            return;
        }
    }
}

/// Pins the calling thread to one core (modulo the set size); a failure leaves it unpinned.
pub fn pin_to_core(core: usize) {
    // Safety: a zeroed cpu_set_t is valid; CPU_SET writes inside it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core % libc::CPU_SETSIZE as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
