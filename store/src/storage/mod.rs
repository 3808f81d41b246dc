//! The storage the log is written to, behind one small trait so that the same log code runs on
//! real files ([`FsStorage`]) and on a simulated disk that loses unsynced writes, tears writes,
//! flips bits and fails fsync ([`SimStorage`]).
//!
//! Files are named, flat, in one directory. Durability rules are POSIX's: data is durable after
//! `sync` of the file; a created or removed name is durable after `sync_dir`.

mod direct;
mod fs;
mod mapped;
mod sim;

pub use direct::{BlockPool, DirectReader};
pub use fs::FsStorage;
pub use mapped::Mapped;
pub use sim::{SimDisk, SimStorage};

use std::io;

pub trait Storage {
    /// Names of the files in the directory, in no particular order.
    fn list(&mut self) -> io::Result<Vec<String>>;
    /// Creates an empty file; fails if it exists.
    fn create(&mut self, name: &str) -> io::Result<()>;
    fn len(&mut self, name: &str) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `position`; fewer only at the end of the file.
    fn read_at(&mut self, name: &str, position: u64, buf: &mut [u8]) -> io::Result<usize>;
    fn write_at(&mut self, name: &str, position: u64, data: &[u8]) -> io::Result<()>;
    /// Makes the file's data durable (`fdatasync`). An error means the data may be lost.
    fn sync(&mut self, name: &str) -> io::Result<()>;
    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()>;
    fn remove(&mut self, name: &str) -> io::Result<()>;
    /// Makes creations and removals in the directory durable.
    fn sync_dir(&mut self) -> io::Result<()>;

    /// Says the whole file is about to be read from start to end (recovery), so the kernel can
    /// read ahead while the caller parses. A hint; the default does nothing.
    fn will_read_sequentially(&mut self, _name: &str) {}

    /// The file mapped read-only, which another thread can read: recovery verifies ahead on
    /// one while it replays on its own, both in place. `None` where the storage has no
    /// mappings (the simulated disk) or the file is empty: recovery then reads on its own
    /// thread, with the same code.
    fn map(&mut self, _name: &str) -> io::Result<Option<Mapped>> {
        Ok(None)
    }

    /// The file opened for reading front to back with `O_DIRECT`, around the page cache:
    /// recovery reads a segment that the cache does not hold this way. `None` where the
    /// storage cannot (the simulated disk, a filesystem that refuses `O_DIRECT`) or the file is
    /// empty. Its buffers come from `pool`, and go back there when it is dropped.
    fn read_direct(&mut self, _name: &str, _pool: &BlockPool) -> io::Result<Option<DirectReader>> {
        Ok(None)
    }

    /// Reads exactly `buf.len()` bytes or fails with `UnexpectedEof`.
    fn read_exact_at(&mut self, name: &str, position: u64, buf: &mut [u8]) -> io::Result<()> {
        let n = self.read_at(name, position, buf)?;
        if n < buf.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{name}: short read at {position}")));
        }
        Ok(())
    }
}
