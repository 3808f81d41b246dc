//! Real files: `pread`/`pwrite`/`fdatasync` on a directory that this process holds a lock on.

use super::{BlockPool, DirectReader, Mapped, Storage};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Name of the lock file that keeps a second process out of a data directory.
pub const LOCK_FILE: &str = "LOCK";

pub struct FsStorage {
    dir: PathBuf,
    /// Kept open: reads and appends hit the same segments over and over.
    files: HashMap<String, File>,
    /// Held for the life of the storage; the kernel drops the `flock` when the process dies.
    /// `None` for a read-only look at a folder that a running store may own.
    _lock: Option<File>,
}

impl FsStorage {
    /// Opens (creating if needed) `dir` and takes its exclusive lock.
    pub fn open(dir: &Path) -> io::Result<FsStorage> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK_FILE))?;
        // Safety: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is in use by another process", dir.display()),
            ));
        }
        Ok(FsStorage { dir: dir.to_path_buf(), files: HashMap::new(), _lock: Some(lock) })
    }

    /// Opens `dir` for reading only, without its lock (for offline tools): every write fails.
    pub fn open_read_only(dir: &Path) -> io::Result<FsStorage> {
        if !dir.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} is not a folder", dir.display())));
        }
        Ok(FsStorage { dir: dir.to_path_buf(), files: HashMap::new(), _lock: None })
    }

    fn read_only(&self) -> io::Result<()> {
        match self._lock {
            Some(_) => Ok(()),
            None => Err(io::Error::new(io::ErrorKind::PermissionDenied, "storage opened read-only")),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The open file's descriptor, for a driver that submits its own I/O (io_uring). Valid
    /// while the file is neither removed nor the storage dropped.
    pub fn raw_fd(&mut self, name: &str) -> io::Result<std::os::unix::io::RawFd> {
        Ok(self.file(name)?.as_raw_fd())
    }

    fn file(&mut self, name: &str) -> io::Result<&File> {
        if !self.files.contains_key(name) {
            let f = OpenOptions::new().read(true).write(self._lock.is_some()).open(self.dir.join(name))?;
            self.files.insert(name.to_string(), f);
        }
        Ok(&self.files[name])
    }
}

impl Storage for FsStorage {
    fn list(&mut self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Ok(name) = entry.file_name().into_string() {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }

    fn create(&mut self, name: &str) -> io::Result<()> {
        self.read_only()?;
        let f = OpenOptions::new().read(true).write(true).create_new(true).open(self.dir.join(name))?;
        self.files.insert(name.to_string(), f);
        Ok(())
    }

    fn len(&mut self, name: &str) -> io::Result<u64> {
        Ok(self.file(name)?.metadata()?.len())
    }

    fn read_at(&mut self, name: &str, position: u64, buf: &mut [u8]) -> io::Result<usize> {
        let f = self.file(name)?;
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], position + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn write_at(&mut self, name: &str, position: u64, data: &[u8]) -> io::Result<()> {
        self.read_only()?;
        self.file(name)?.write_all_at(data, position)
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        self.file(name)?.sync_data()
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        self.read_only()?;
        self.file(name)?.set_len(len)
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.read_only()?;
        self.files.remove(name);
        std::fs::remove_file(self.dir.join(name))
    }

    fn will_read_sequentially(&mut self, name: &str) {
        if let Ok(f) = self.file(name) {
            // Safety: advisory calls on a descriptor we own.
            unsafe {
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED);
            }
        }
    }

    fn map(&mut self, name: &str) -> io::Result<Option<Mapped>> {
        let len = self.len(name)?;
        if len == 0 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| io::Error::other(format!("{name} is too large to map")))?;
        Mapped::new(self.file(name)?, len).map(Some)
    }

    fn read_direct(&mut self, name: &str, pool: &BlockPool) -> io::Result<Option<DirectReader>> {
        let len = self.len(name)?;
        if len == 0 {
            return Ok(None);
        }
        match OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(self.dir.join(name)) {
            Ok(file) => DirectReader::new(file, len, pool).map(Some),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}
