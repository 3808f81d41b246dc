//! Memory mapped on its own, outside the allocator: zero-filled, page-aligned, and given back to
//! the system whole when unmapped (the dedup table, recovery's read buffers).
//!
//! Public only for [`Buffer`], which the benchmark's disk floor reads into as recovery does.

use std::io;
use std::ptr::NonNull;

/// A fresh private anonymous mapping of `bytes` (not 0), read-write and zero-filled, so every
/// byte is initialized. The caller owns it and unmaps it with [`unmap`].
pub(crate) fn map(bytes: usize) -> io::Result<NonNull<u8>> {
    // Safety: asks for a new mapping; touches no existing memory; checked below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(NonNull::new(p.cast()).expect("mmap returned null"))
}

/// Advises `bytes` of a mapping made by [`map`], from `ptr`, onto transparent huge pages: one
/// page-table entry, one fault and one pin (an `O_DIRECT` read pins the pages it reads into)
/// per 2 MiB instead of 512. On a fault the kernel may compact memory to find a huge page,
/// which can take milliseconds: for memory touched where no append waits.
pub(crate) fn advise_huge_pages(ptr: NonNull<u8>, bytes: usize) {
    // Safety: advice only, on the caller's own mapping.
    unsafe { libc::madvise(ptr.as_ptr().cast(), bytes, libc::MADV_HUGEPAGE) };
}

/// Unmaps a mapping made by [`map`].
///
/// # Safety
/// `ptr` and `bytes` are exactly those of a live mapping from [`map`], and nothing refers to
/// it any more.
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, bytes: usize) {
    // Safety: the caller's promise.
    unsafe { libc::munmap(ptr.as_ptr().cast(), bytes) };
}

/// A buffer for `O_DIRECT` reads: its own mapping (page-aligned, as `O_DIRECT` requires),
/// advised onto huge pages, unmapped when dropped.
///
/// Why huge pages: `O_DIRECT` pins the buffer's pages and hands the disk one segment per
/// physically contiguous run of them, and a request holds a bounded number of segments. Into
/// scattered 4 KiB pages, a 4 MiB read went out on this project's virtual disk as requests of
/// 500 KiB on average; into 2 MiB pages, of 3.9 MiB. Reading the same files: 0.9 GiB/s against
/// 2.1–2.4 (see docs/benchmarks.md), with a fiftieth of the pinning.
pub struct Buffer {
    ptr: NonNull<u8>,
    len: usize,
}

// Safety: owns its mapping exclusively, like a `Box<[u8]>`.
unsafe impl Send for Buffer {}

impl Buffer {
    /// A zero-filled buffer of `len` bytes (not 0).
    pub fn new(len: usize) -> io::Result<Buffer> {
        let ptr = map(len)?;
        advise_huge_pages(ptr, len);
        Ok(Buffer { ptr, len })
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
        // Safety: the mapping made in `new`; no slice outlives `self`.
        unsafe { unmap(self.ptr, self.len) };
    }
}
