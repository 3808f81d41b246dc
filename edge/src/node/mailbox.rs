//! A shard's inbox: a bounded crossbeam queue that any thread posts to, and a waker that
//! brings the shard's event loop back when something arrives.
//!
//! Only store threads post (answers and fan-out, in the order their commits completed), and
//! each shard drains its box on every turn of its loop, so a full box means a shard that is
//! stuck: the poster waits rather than drop a delivery (dropping one would be a silent loss).

use atomic_waker::AtomicWaker;
use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

/// The sending side; cheap to clone, `Send`.
pub struct Postbox<T> {
    tx: Sender<T>,
    waker: Arc<Wakeup>,
}

/// The shard's waker, and whether it was woken with nothing posted (a nudge: look again at
/// state that lives outside the box).
#[derive(Default)]
struct Wakeup {
    waker: AtomicWaker,
    nudged: AtomicBool,
}

impl Wakeup {
    fn wake(&self) {
        self.waker.wake();
    }
}

impl<T> Clone for Postbox<T> {
    fn clone(&self) -> Self {
        Postbox { tx: self.tx.clone(), waker: self.waker.clone() }
    }
}

impl<T> Postbox<T> {
    /// Posts `item`, waiting while the box is full. A shard that has stopped drops its items.
    pub fn post(&self, item: T) {
        if self.tx.send(item).is_ok() {
            self.waker.wake();
        }
    }

    /// Posts `item` unless the box is full, in which case it comes back.
    pub fn try_post(&self, item: T) -> Result<(), T> {
        match self.tx.try_send(item) {
            Ok(()) => {
                self.waker.wake();
                Ok(())
            }
            Err(crossbeam_channel::TrySendError::Full(item)) => Err(item),
            // The shard is gone: nobody will read it.
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Ok(()),
        }
    }

    /// Makes the shard's loop take a turn without posting anything.
    pub fn wake(&self) {
        self.waker.nudged.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Items waiting (for the queue-depth gauge).
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }
}

/// The receiving side, owned by the shard.
pub struct Mailbox<T> {
    rx: Receiver<T>,
    waker: Arc<Wakeup>,
}

impl<T> Mailbox<T> {
    /// Waits until at least one item is there (or a [`Postbox::wake`]), then moves up to
    /// `max` into `out`. Returns `false` once every postbox is gone and the box is empty.
    pub async fn recv_many(&self, out: &mut Vec<T>, max: usize) -> bool {
        std::future::poll_fn(|cx| {
            for pass in 0..2 {
                loop {
                    if out.len() >= max {
                        return Poll::Ready(true);
                    }
                    match self.rx.try_recv() {
                        Ok(item) => out.push(item),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => return Poll::Ready(!out.is_empty()),
                    }
                }
                if !out.is_empty() || self.waker.nudged.swap(false, Ordering::AcqRel) {
                    return Poll::Ready(true);
                }
                // Register, then look once more: a post between the first look and the
                // registration would otherwise sleep until the next one.
                if pass == 0 {
                    self.waker.waker.register(cx.waker());
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// A box holding at most `capacity` items.
pub fn mailbox<T>(capacity: usize) -> (Postbox<T>, Mailbox<T>) {
    let (tx, rx) = bounded(capacity);
    let waker = Arc::new(Wakeup::default());
    (Postbox { tx, waker: waker.clone() }, Mailbox { rx, waker })
}
