//! The small pieces between the sans-IO core and monoio: a single-threaded wakeup, and the
//! batch a connection's writer hands to one vectored write.

use crate::outbox::Entry;
use std::cell::Cell;
use std::task::{Poll, Waker};

/// Wakes one waiting task on the same thread; a wakeup with nobody waiting is kept for the next
/// wait.
#[derive(Default)]
pub struct Notify {
    pending: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.pending.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    pub async fn notified(&self) {
        std::future::poll_fn(|cx| {
            if self.pending.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// Frames taken from a connection's outbox for one `writev`: the frames themselves (so the
/// shared payloads stay alive while the kernel reads them) and the iovecs that point into
/// them. Moving the batch moves only the two vectors' handles, never the bytes they point to.
#[derive(Default)]
pub struct Batch {
    pub(crate) entries: Vec<Entry>,
    iovecs: Vec<libc::iovec>,
}

impl Batch {
    /// Points the iovecs at the entries' headers and payloads.
    pub fn prepare(&mut self) {
        self.iovecs.clear();
        for e in &self.entries {
            for part in e.parts() {
                if !part.is_empty() {
                    self.iovecs.push(libc::iovec { iov_base: part.as_ptr() as *mut libc::c_void, iov_len: part.len() });
                }
            }
        }
    }

    pub fn clear(&mut self) {
        self.iovecs.clear();
        self.entries.clear();
    }
}

// Safety: the iovecs point into `entries` (inline headers in the vector's heap buffer, and
// `Bytes` payloads on the heap), which the batch owns and does not change while the runtime
// owns the batch; `prepare` rebuilt them after the last change. The pointer and length describe
// `iovecs` exactly.
#[allow(unsafe_code)]
unsafe impl monoio::buf::IoVecBuf for Batch {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iovecs.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iovecs.len()
    }
}
