//! Memory mapped on its own, outside the allocator: zero-filled, page-aligned, and given back to
//! the system whole when dropped (the dedup table, recovery's read buffers).
//!
//! Public for [`Buffer::new`], which the benchmark's disk floor reads into as recovery does.

use std::io;
use std::ptr::NonNull;

/// A private anonymous mapping, owned: read-write, zero-filled (so every byte is initialized),
/// its pages faulted in as they are first touched, unmapped when dropped.
pub struct Buffer {
    ptr: NonNull<u8>,
    len: usize,
}

// Safety: owns its mapping exclusively, like a `Box<[u8]>`.
unsafe impl Send for Buffer {}

impl Buffer {
    /// A buffer for `O_DIRECT` reads of `len` bytes (not 0): page-aligned, as `O_DIRECT`
    /// requires, and advised onto huge pages from the start.
    ///
    /// Why huge pages: `O_DIRECT` pins the buffer's pages and hands the disk one segment per
    /// physically contiguous run of them, and a request holds a bounded number of segments.
    /// Into scattered 4 KiB pages, a 4 MiB read went out on this project's virtual disk as
    /// requests of 500 KiB on average; into 2 MiB pages, of 3.9 MiB. Reading the same files:
    /// 0.9 GiB/s against 2.1–2.4 (see docs/benchmarks.md), with a fiftieth of the pinning.
    pub fn new(len: usize) -> io::Result<Buffer> {
        let buf = Buffer::zeroed(len)?;
        buf.advise_huge_pages();
        Ok(buf)
    }

    /// `len` bytes (not 0) of fresh zeroed memory, on ordinary pages until advised otherwise.
    pub(crate) fn zeroed(len: usize) -> io::Result<Buffer> {
        // Safety: asks for a new mapping; touches no existing memory; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Buffer { ptr: NonNull::new(p.cast()).expect("mmap returned null"), len })
    }

    /// Advises the mapping onto transparent huge pages: one page-table entry, one fault and
    /// one pin (an `O_DIRECT` read pins the pages it reads into) per 2 MiB instead of 512. On
    /// a fault the kernel may compact memory to find a huge page, which can take
    /// milliseconds: for memory touched where no append waits.
    pub(crate) fn advise_huge_pages(&self) {
        // Safety: advice only, on our own mapping.
        unsafe { libc::madvise(self.ptr.as_ptr().cast(), self.len, libc::MADV_HUGEPAGE) };
    }
}

impl std::ops::Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // Safety: `ptr` maps `len` initialized bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        // Safety: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // Safety: the mapping made in `zeroed`; no slice outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
