//! A shard's inbox: a bounded crossbeam queue that any thread posts to, and a waker that
//! brings the shard's event loop back when something arrives.
//!
//! Only store threads post (answers and fan-out, in the order their commits completed), and
//! each shard drains its box on every turn of its loop, so a full box means a shard that is
//! stuck: the poster waits rather than drop a delivery (dropping one would be a silent loss).
//! The one poster that must not wait is the shard itself (a store queue refused its job, and
//! the refusal answers at once, on the shard's thread): waiting for room would wait for
//! itself, so what it posts to its own full box is kept beside the box and taken with the
//! next turn's items.

use atomic_waker::AtomicWaker;
use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::thread::ThreadId;

/// The sending side; cheap to clone, `Send`.
pub struct Postbox<T> {
    tx: Sender<T>,
    waker: Arc<Wakeup<T>>,
}

/// The shard's waker, whether it was woken with nothing posted (a nudge: look again at
/// state that lives outside the box), and what the receiving thread posted to its own full
/// box.
struct Wakeup<T> {
    waker: AtomicWaker,
    nudged: AtomicBool,
    /// The thread that receives (set at its first receive).
    owner: OnceLock<ThreadId>,
    kept: Mutex<Vec<T>>,
}

impl<T> Wakeup<T> {
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
    /// Posts `item`, waiting while the box is full, unless this is the receiving thread (see
    /// the module's documentation). A shard that has stopped drops its items.
    pub fn post(&self, item: T) {
        let item = match self.try_post(item) {
            Ok(()) => return,
            Err(item) => item,
        };
        if self.waker.owner.get() == Some(&std::thread::current().id()) {
            self.waker.kept.lock().unwrap_or_else(|e| e.into_inner()).push(item);
            return self.wake();
        }
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
    waker: Arc<Wakeup<T>>,
}

impl<T> Mailbox<T> {
    /// Waits until at least one item is there (or a [`Postbox::wake`]), then moves up to
    /// `max` into `out`. Returns `false` once every postbox is gone and the box is empty.
    /// What the receiving thread posted to its own full box comes after, beyond `max`.
    pub async fn recv_many(&self, out: &mut Vec<T>, max: usize) -> bool {
        self.waker.owner.get_or_init(|| std::thread::current().id());
        let alive = self.recv_from_box(out, max).await;
        out.append(&mut self.waker.kept.lock().unwrap_or_else(|e| e.into_inner()));
        alive
    }

    async fn recv_from_box(&self, out: &mut Vec<T>, max: usize) -> bool {
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
    let waker = Arc::new(Wakeup {
        waker: AtomicWaker::new(),
        nudged: AtomicBool::new(false),
        owner: OnceLock::new(),
        kept: Mutex::new(Vec::new()),
    });
    (Postbox { tx, waker: waker.clone() }, Mailbox { rx, waker })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build().expect("a runtime");
        rt.block_on(f)
    }

    /// The receiving thread posting to its own full box keeps the item beside it (waiting
    /// would never end), and the next receive takes it after what was in the box; another
    /// thread waits for room instead.
    #[test]
    fn the_receiver_posting_to_its_own_full_box_does_not_wait_for_itself() {
        let (tx, rx) = mailbox::<u32>(1);
        let mut out = Vec::new();
        tx.post(1);
        assert!(block_on(rx.recv_many(&mut out, 8)));
        assert_eq!(out, [1]);
        tx.post(2);
        tx.post(3); // full: kept, as this is the receiving thread
        tx.post(4);
        out.clear();
        assert!(block_on(rx.recv_many(&mut out, 8)));
        assert_eq!(out, [2, 3, 4]);
        tx.post(5);
        let other = {
            let tx = tx.clone();
            std::thread::spawn(move || tx.post(6))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!other.is_finished(), "another thread waits for room");
        out.clear();
        assert!(block_on(rx.recv_many(&mut out, 1)));
        other.join().unwrap();
        let mut rest = Vec::new();
        assert!(block_on(rx.recv_many(&mut rest, 8)));
        assert_eq!((out, rest), (vec![5], vec![6]));
    }
}
