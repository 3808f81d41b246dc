//! A file mapped read-only, for recovery: the scan verifies and the replay decodes records
//! where they lie in the page cache, instead of copying every byte of the log out of it first
//! (the copy was a third of the reading thread's time).
//!
//! A mapping turns a read error into `SIGBUS` on first touch. Every window is therefore
//! populated with `MADV_POPULATE_READ` before it is touched, which reports an error instead.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;

pub struct Mapped {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// Safety: a read-only mapping, owned exclusively like a `Box<[u8]>`; shared only as `&[u8]`.
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

impl Mapped {
    /// Maps the first `len` bytes of `file` (not 0: an empty file has nothing to map).
    pub fn new(file: &File, len: usize) -> io::Result<Mapped> {
        assert!(len > 0, "nothing to map");
        // Safety: a fresh shared read-only mapping of a file we hold open; checked below.
        let p =
            unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Safety: advice only, on the mapping just made. Sequential: read ahead far, and drop
        // pages behind.
        unsafe { libc::madvise(p, len, libc::MADV_SEQUENTIAL) };
        Ok(Mapped { ptr: std::ptr::NonNull::new(p.cast()).expect("mmap returned null"), len })
    }

    /// Faults in `start..start + len` (clamped to the mapping), reading it from disk if need
    /// be, so that touching it cannot raise `SIGBUS` for a read error: the error comes back
    /// here. A kernel without `MADV_POPULATE_READ` (Linux 5.14; `EINVAL`) leaves the range to
    /// ordinary faults.
    pub fn populate(&self, start: usize, len: usize) -> io::Result<()> {
        match self.advise(start, len, libc::MADV_POPULATE_READ) {
            Err(e) if e.raw_os_error() != Some(libc::EINVAL) => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether every page of the file is in the page cache (`mincore`). Recovery reads a
    /// segment in place only then; one that is not is read with `O_DIRECT` instead (see
    /// [`super::DirectReader`]). An error answers no.
    pub fn cached(&self) -> bool {
        let mut pages = vec![0u8; self.len.div_ceil(4096)];
        // Safety: `pages` has a byte for every page of our own mapping.
        if unsafe { libc::mincore(self.ptr.as_ptr().cast(), self.len, pages.as_mut_ptr()) } != 0 {
            return false;
        }
        pages.iter().all(|p| p & 1 == 1)
    }

    /// Asks for `start..start + len` (clamped) to be read from disk in the background, so that
    /// populating it later finds it in the page cache. A hint: a failure is ignored.
    pub fn will_need(&self, start: usize, len: usize) {
        let _ = self.advise(start, len, libc::MADV_WILLNEED);
    }

    /// `madvise` on the pages that hold `start..start + len`, clamped to the mapping.
    fn advise(&self, start: usize, len: usize, advice: libc::c_int) -> io::Result<()> {
        const PAGE: usize = 4096;
        let (from, end) = (start / PAGE * PAGE, (start + len).min(self.len));
        if from >= end {
            return Ok(());
        }
        // Safety: advice on a page-aligned subrange of our own mapping.
        if unsafe { libc::madvise(self.ptr.as_ptr().add(from).cast(), end - from, advice) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // Safety: `ptr` maps `len` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // Safety: unmaps exactly the mapping made in `new`; no slice outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
