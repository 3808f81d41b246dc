//! Memory mapped on its own, outside the allocator: zero-filled, page-aligned, and given back to
//! the system whole when unmapped (the dedup table, recovery's read buffers).

use std::io;
use std::ptr::NonNull;

/// A fresh private anonymous mapping of `bytes` (not 0), read-write and zero-filled, so every
/// byte is initialized. The caller owns it and unmaps it with [`unmap`].
pub fn map(bytes: usize) -> io::Result<NonNull<u8>> {
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

/// Unmaps a mapping made by [`map`].
///
/// # Safety
/// `ptr` and `bytes` are exactly those of a live mapping from [`map`], and nothing refers to
/// it any more.
pub unsafe fn unmap(ptr: NonNull<u8>, bytes: usize) {
    // Safety: the caller's promise.
    unsafe { libc::munmap(ptr.as_ptr().cast(), bytes) };
}
