//! The thread that drives a shard in production: it owns the [`Shard`], takes jobs from a
//! bounded queue and commits in groups.
//!
//! Each turn of the loop runs every queued write job (staging), commits once (one write, one
//! fsync), completes the write jobs with the commit's outcome, then runs the read jobs, which
//! therefore see only durable data. Jobs that arrive during the fsync wait in the queue and make
//! the next group: under load a commit carries thousands of appends, idle it carries one.

use crate::error::Error;
use crate::shard::{Shard, ShardConfig};
use crate::storage::{FsStorage, Storage};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use std::path::Path;
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
}

/// Jobs taken from the queue in one turn at most, so reads are never starved by writes.
const JOBS_PER_TURN_MAX: usize = 65_536;

/// A handle to a shard thread. Dropping every handle stops the thread after its queue drains.
pub struct ShardHandle<S: Storage> {
    tx: Sender<Job<S>>,
}

impl<S: Storage> Clone for ShardHandle<S> {
    fn clone(&self) -> Self {
        ShardHandle { tx: self.tx.clone() }
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
    fn submit(&self, job: Job<S>) -> Result<(), Busy> {
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
    /// Blocks while the queue is full (for load generators and tools, not the edge).
    pub fn write_blocking(&self, job: WriteJob<S>) -> Result<(), Busy> {
        self.tx.send(Job::Write(job)).map_err(|_| Busy)
    }
}

/// Opens the shard in `dir` and starts its thread, optionally pinned to `core`.
pub fn spawn(
    dir: &Path,
    config: ShardConfig,
    queue_max: usize,
    core: Option<usize>,
) -> Result<(ShardHandle<FsStorage>, JoinHandle<()>), Error> {
    let storage = FsStorage::open(dir)?;
    let (shard, _) = Shard::open(storage, config)?;
    Ok(spawn_shard(shard, queue_max, core))
}

pub fn spawn_shard<S: Storage + Send + 'static>(
    shard: Shard<S>,
    queue_max: usize,
    core: Option<usize>,
) -> (ShardHandle<S>, JoinHandle<()>) {
    let (tx, rx) = bounded(queue_max);
    let thread = std::thread::Builder::new()
        .name("store-shard".into())
        .spawn(move || {
            if let Some(core) = core {
                pin_to_core(core);
            }
            run(shard, rx)
        })
        .expect("spawn store shard thread");
    (ShardHandle { tx }, thread)
}

fn run<S: Storage>(mut shard: Shard<S>, rx: Receiver<Job<S>>) {
    let mut finishers: Vec<Finisher> = Vec::new();
    let mut reads: Vec<ReadJob<S>> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(job) = next.take() {
            match job {
                Job::Write(w) => finishers.push(w(&mut shard)),
                Job::Read(r) => reads.push(r),
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
    }
}

fn pin_to_core(core: usize) {
    // Safety: a zeroed cpu_set_t is valid; CPU_SET writes inside it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core % libc::CPU_SETSIZE as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
