//! A peer's outbound queues: one per stream (control, each live lane, bulk), bounded in
//! bytes per class.
//!
//! The byte counts live in atomics ([`Depth`]) so that a sender on another thread can
//! reserve room and learn "full" at once, without waiting for the mesh thread; the mesh
//! thread owns the queues themselves. A reservation is released when its frame leaves the
//! queue for a stream (or is dropped with the queue), so the count is always what waits.

use crate::class::{Class, StreamKind};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// What one queued frame costs against its class's budget beyond its bytes (the queue
/// entry), so that a flood of empty frames is bounded too.
pub const ENTRY_BYTES: usize = 32;

/// Bytes waiting for one peer, per class, and whether the peer is declared down.
#[derive(Default, Debug)]
pub struct Depth {
    bytes: [AtomicUsize; 3],
    down: AtomicBool,
    /// `send` refusals because the class was full, per class (a metric).
    pub refused_full: [AtomicU64; 3],
}

/// Why `send` did not take a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the peer's {} queue is full", .0.name())]
    Full(Class),
    #[error("the frame is over the {} limit", .0.name())]
    TooLarge(Class),
    #[error("the peer is declared down")]
    Down,
    #[error("no such peer")]
    UnknownNode,
}

impl Depth {
    /// Reserves room for a frame of `len` bytes, or says why not.
    pub fn reserve(&self, class: Class, len: usize, max: usize) -> Result<(), SendError> {
        if self.down.load(Ordering::Acquire) {
            return Err(SendError::Down);
        }
        let cost = len + ENTRY_BYTES;
        let counter = &self.bytes[class.index()];
        let before = counter.fetch_add(cost, Ordering::AcqRel);
        if before + cost > max {
            counter.fetch_sub(cost, Ordering::AcqRel);
            self.refused_full[class.index()].fetch_add(1, Ordering::Relaxed);
            return Err(SendError::Full(class));
        }
        Ok(())
    }

    /// Admits a frame of `len` bytes of `class` under `config`'s limits: too large for the
    /// class, or no room in the peer's queue, or the peer down, is said at once.
    pub fn admit(&self, class: Class, len: usize, config: &crate::config::MeshConfig) -> Result<(), SendError> {
        if len > config.frame_bytes_max(class) {
            return Err(SendError::TooLarge(class));
        }
        self.reserve(class, len, config.queue_bytes_max(class))
    }

    pub fn release(&self, class: Class, len: usize) {
        let before = self.bytes[class.index()].fetch_sub(len + ENTRY_BYTES, Ordering::AcqRel);
        assert!(before >= len + ENTRY_BYTES, "released more than was reserved");
    }

    pub fn bytes(&self, class: Class) -> usize {
        self.bytes[class.index()].load(Ordering::Acquire)
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Release);
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }
}

/// A frame waiting to be written, with the stamp it goes out with.
#[derive(Clone, Debug)]
pub struct Queued {
    pub frame: Bytes,
    pub stamp: u64,
}

/// The frames waiting for one peer, reserved against its [`Depth`].
pub struct PeerQueues {
    control: VecDeque<Queued>,
    lanes: Vec<VecDeque<Queued>>,
    bulk: VecDeque<Queued>,
}

impl PeerQueues {
    pub fn new(lanes: u16) -> PeerQueues {
        PeerQueues {
            control: VecDeque::new(),
            lanes: (0..lanes).map(|_| VecDeque::new()).collect(),
            bulk: VecDeque::new(),
        }
    }

    fn queue(&mut self, kind: StreamKind) -> &mut VecDeque<Queued> {
        match kind {
            StreamKind::Control => &mut self.control,
            StreamKind::Lane(lane) => &mut self.lanes[lane as usize],
            StreamKind::Bulk => &mut self.bulk,
        }
    }

    /// Queues a frame whose room is already reserved. Returns whether the queue was empty
    /// (its stream may need waking).
    pub fn push_reserved(&mut self, kind: StreamKind, item: Queued) -> bool {
        let queue = self.queue(kind);
        queue.push_back(item);
        queue.len() == 1
    }

    pub fn pop(&mut self, kind: StreamKind, depth: &Depth) -> Option<Queued> {
        let item = self.queue(kind).pop_front()?;
        depth.release(kind.class(), item.frame.len());
        Some(item)
    }

    pub fn is_empty(&self, kind: StreamKind) -> bool {
        match kind {
            StreamKind::Control => self.control.is_empty(),
            StreamKind::Lane(lane) => self.lanes[lane as usize].is_empty(),
            StreamKind::Bulk => self.bulk.is_empty(),
        }
    }

    /// The streams with frames waiting.
    pub fn nonempty(&self) -> impl Iterator<Item = StreamKind> + '_ {
        let control = (!self.control.is_empty()).then_some(StreamKind::Control);
        let bulk = (!self.bulk.is_empty()).then_some(StreamKind::Bulk);
        let lanes =
            self.lanes.iter().enumerate().filter(|(_, q)| !q.is_empty()).map(|(i, _)| StreamKind::Lane(i as u16));
        control.into_iter().chain(lanes).chain(bulk)
    }

    /// Drops everything (the peer is gone), releasing its reservations. Returns the frames
    /// dropped.
    pub fn clear(&mut self, depth: &Depth) -> usize {
        let mut dropped = 0;
        for (class, queue) in std::iter::once((Class::Control, &mut self.control))
            .chain(self.lanes.iter_mut().map(|q| (Class::Live, q)))
            .chain(std::iter::once((Class::Bulk, &mut self.bulk)))
        {
            for item in queue.drain(..) {
                depth.release(class, item.frame.len());
                dropped += 1;
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_bound_each_class_and_come_back_when_frames_leave() {
        let depth = Depth::default();
        let frame = Bytes::from(vec![0u8; 68]);
        assert_eq!(depth.reserve(Class::Live, 68, 150), Ok(()));
        assert_eq!(depth.reserve(Class::Live, 68, 150), Err(SendError::Full(Class::Live)));
        // Other classes have budgets of their own.
        assert_eq!(depth.reserve(Class::Bulk, 68, 150), Ok(()));
        let mut queues = PeerQueues::new(2);
        assert!(queues.push_reserved(StreamKind::Lane(1), Queued { frame: frame.clone(), stamp: 0 }));
        assert!(queues.push_reserved(StreamKind::Bulk, Queued { frame: frame.clone(), stamp: 0 }));
        assert_eq!(queues.nonempty().collect::<Vec<_>>(), vec![StreamKind::Lane(1), StreamKind::Bulk]);
        assert!(queues.pop(StreamKind::Lane(1), &depth).is_some());
        assert_eq!(depth.bytes(Class::Live), 0);
        assert_eq!(depth.reserve(Class::Live, 68, 150), Ok(()));
        queues.push_reserved(StreamKind::Lane(0), Queued { frame, stamp: 0 });
        assert_eq!(queues.clear(&depth), 2);
        assert_eq!((depth.bytes(Class::Live), depth.bytes(Class::Bulk)), (0, 0));
        depth.set_down(true);
        assert_eq!(depth.reserve(Class::Control, 1, 200), Err(SendError::Down));
        assert_eq!(depth.refused_full[Class::Live.index()].load(Ordering::Relaxed), 1);
    }
}
