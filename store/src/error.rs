//! The store's errors. Each one knows whose fault it is (STYLE.md): the client's request,
//! the storage (poison: stop acknowledging until restart), or damage found on disk.

use crate::record::DecodeError;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The conversation does not exist.
    #[error("conversation not found")]
    NotFound,
    /// The user is not a member (or not allowed to change members).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The same client `id` was already used in this conversation with a different message.
    #[error("message id already used with a different body")]
    Conflict,
    /// A body, title or member list is over its limit.
    #[error("{0} is over its limit")]
    TooLarge(&'static str),
    /// A malformed request (bad id, conversation already exists, ...).
    #[error("{0}")]
    BadRequest(String),
    /// An earlier write or fsync failed: nothing more is acknowledged until the store is reopened,
    /// because the kernel may have dropped data that it reported as written. Fsync is never retried.
    #[error("store is poisoned after a failed write or fsync: {0}; restart required")]
    Poisoned(String),
    /// A storage call failed without putting acknowledged data at risk (open, read, create).
    #[error("storage error: {0}")]
    Io(#[from] io::Error),
    /// Damaged data that recovery cannot explain as a torn tail: never served, never cut silently.
    #[error("corrupt data in {file} at byte {position}: {reason}")]
    Corrupt { file: String, position: u64, reason: String },
}

/// Whose fault an error is, which decides what the edge does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer the client with an error code; the connection stays.
    Client,
    /// Answer `unavailable`; the operator must act (restart, repair).
    Storage,
}

impl Error {
    pub fn fault(&self) -> Fault {
        match self {
            Error::NotFound | Error::Forbidden(_) | Error::Conflict | Error::TooLarge(_) | Error::BadRequest(_) => {
                Fault::Client
            }
            Error::Poisoned(_) | Error::Io(_) | Error::Corrupt { .. } => Fault::Storage,
        }
    }

    pub(crate) fn corrupt(file: &str, position: u64, reason: impl ToString) -> Error {
        Error::Corrupt { file: file.to_string(), position, reason: reason.to_string() }
    }
}

impl From<(String, u64, DecodeError)> for Error {
    fn from((file, position, e): (String, u64, DecodeError)) -> Error {
        Error::Corrupt { file, position, reason: e.to_string() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
