//! What a shard has to do next, kept where its connections can reach it: the connections
//! with news for the driver, the queue of connection timers, and the time of the current
//! turn. It replaces the thread-locals and clock reads the shard used to make: the shell
//! (the driver's loop, the inbox loop, the timer task) reads the clock once per turn and
//! sets it here ([`Agenda::advance`]), and everything below it takes the time from here, so
//! a test can run a shard's core on a clock of its own.

use super::io::Notify;
use super::timer::{Deadlines, TimerQueue};
use crate::node::ConnRef;
use std::cell::{Cell, RefCell};
use std::time::Instant;

/// The time of a turn: the shard's monotonic clock for deadlines (a step of the wall clock
/// moves no deadline) and the wall clock for what is defined in wall time (token `exp` and
/// `nbf`, message timestamps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Milliseconds since the shard's clock started (at least 1: 0 means "not set" in the
    /// timer tables).
    pub mono_ms: u64,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The same moment as `mono_ms` at full precision, for the latencies the shard measures
    /// (a request's ack): a time, like quinn-proto's `now`, never a clock to read.
    pub at: Instant,
}

/// The real clocks, read by the shell (copies share the start, so agree on `mono_ms`).
#[derive(Clone, Copy)]
pub struct Clock {
    started: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock { started: Instant::now() }
    }

    pub fn now(&self) -> Now {
        let at = Instant::now();
        Now { mono_ms: (at - self.started).as_millis() as u64 + 1, unix_ms: crate::node::now_ms(), at }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

pub struct Agenda {
    /// Connections with something for the driver to do.
    todo: RefCell<Vec<ConnRef>>,
    /// Wakes the driver.
    wake: Notify,
    pub timers: RefCell<TimerQueue>,
    now: Cell<Now>,
    pub deadlines: Deadlines,
}

impl Agenda {
    pub fn new(now: Now, deadlines: Deadlines) -> Agenda {
        let (todo, wake, timers) = (RefCell::default(), Notify::default(), RefCell::default());
        Agenda { todo, wake, timers, now: Cell::new(now), deadlines }
    }

    pub fn now(&self) -> Now {
        self.now.get()
    }

    /// A new turn at `now` (never earlier than the last one).
    pub fn advance(&self, now: Now) {
        let last = self.now.get();
        self.now.set(Now { mono_ms: now.mono_ms.max(last.mono_ms), unix_ms: now.unix_ms, at: now.at.max(last.at) });
    }

    /// Puts a connection on the driver's to-do list, and wakes the driver.
    pub fn schedule(&self, id: ConnRef) {
        self.todo.borrow_mut().push(id);
        self.wake.notify();
    }

    /// Wakes the driver for a look at the shard (it is draining).
    pub fn wake(&self) {
        self.wake.notify();
    }

    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// Takes the to-do list.
    pub fn take_todo(&self) -> Vec<ConnRef> {
        std::mem::take(&mut *self.todo.borrow_mut())
    }

    /// Gives a taken list back, emptied, when nothing came in the meantime, so that its room
    /// serves the next turn.
    pub fn give_back_todo(&self, mut spare: Vec<ConnRef>) {
        let mut todo = self.todo.borrow_mut();
        if todo.is_empty() {
            spare.clear();
            *todo = spare;
        }
    }
}
