//! Domain identifiers shared by every crate, validated once at the edge of the store.
//!
//! Identifiers arrive from clients, so constructing one never panics: a bad id is an
//! [`IdError`] that the edge turns into a `bad_request`. The byte ranges are PROTOCOL.md §2.

use std::fmt;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} must be 1 to {max} bytes, got {len}")]
    Length { what: &'static str, max: usize, len: usize },
    #[error("{what} may only contain {allowed}")]
    Charset { what: &'static str, allowed: &'static str },
}

/// Longest user id (PROTOCOL.md §2).
pub const USER_ID_BYTES_MAX: usize = 64;
/// Longest conversation id (PROTOCOL.md §2).
pub const CONV_ID_BYTES_MAX: usize = 160;
/// Longest client message id (PROTOCOL.md §2).
pub const CLIENT_ID_BYTES_MAX: usize = 64;

fn check(
    s: &str,
    what: &'static str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(u8) -> bool,
) -> Result<(), IdError> {
    if s.is_empty() || s.len() > max {
        return Err(IdError::Length { what, max, len: s.len() });
    }
    if !s.bytes().all(ok) {
        return Err(IdError::Charset { what, allowed });
    }
    Ok(())
}

fn user_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-')
}

/// A user id: `[A-Za-z0-9._@-]{1,64}`, the JWT `sub`. Read from another node, it is checked
/// as a client's would be.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(Box<str>);

impl UserId {
    pub fn new(s: &str) -> Result<UserId, IdError> {
        check(s, "user id", USER_ID_BYTES_MAX, "A-Z a-z 0-9 . _ @ -", user_byte)?;
        Ok(UserId(s.into()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A conversation id: `[A-Za-z0-9._:@-]{1,160}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConvId(Box<str>);

impl ConvId {
    pub fn new(s: &str) -> Result<ConvId, IdError> {
        check(s, "conversation id", CONV_ID_BYTES_MAX, "A-Z a-z 0-9 . _ : @ -", |b| user_byte(b) || b == b':')?;
        Ok(ConvId(s.into()))
    }

    /// The implicit one-to-one conversation of `a` and `b`: `dm:<min>:<max>` in byte order.
    pub fn dm(a: &UserId, b: &UserId) -> ConvId {
        let (lo, hi) = if a.as_str() <= b.as_str() { (a, b) } else { (b, a) };
        ConvId(format!("dm:{}:{}", lo.as_str(), hi.as_str()).into())
    }

    /// The two members if this is a well-formed dm id (`dm:a:b` with `a <= b`), else `None`.
    pub fn dm_members(&self) -> Option<(UserId, UserId)> {
        let rest = self.0.strip_prefix("dm:")?;
        let (a, b) = rest.split_once(':')?;
        let (a, b) = (UserId::new(a).ok()?, UserId::new(b).ok()?);
        (a.as_str() <= b.as_str()).then_some((a, b))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The sender's message id, the deduplication key: 1 to 64 bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClientId(Box<[u8]>);

impl ClientId {
    pub fn new(bytes: &[u8]) -> Result<ClientId, IdError> {
        ClientId::check(bytes)?;
        Ok(ClientId(bytes.into()))
    }

    /// Checks bytes as a message id without keeping them (the append path borrows them).
    pub fn check(bytes: &[u8]) -> Result<(), IdError> {
        if bytes.is_empty() || bytes.len() > CLIENT_ID_BYTES_MAX {
            return Err(IdError::Length { what: "message id", max: CLIENT_ID_BYTES_MAX, len: bytes.len() });
        }
        Ok(())
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

macro_rules! display_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(&self.0) }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { write!(f, "{:?}", &*self.0) }
        }
    )*};
}
display_str!(UserId, ConvId);

macro_rules! string_conversions {
    ($($t:ty),*) => {$(
        impl TryFrom<String> for $t {
            type Error = IdError;
            fn try_from(s: String) -> Result<$t, IdError> { <$t>::new(&s) }
        }
        impl From<$t> for String {
            fn from(id: $t) -> String { id.0.into() }
        }
    )*};
}
string_conversions!(UserId, ConvId);

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// A per-conversation sequence number: starts at 1, gap-free, assigned by the one sequencer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Seq(pub u64);

/// A record number in one shard's log (commitlog's "offset"): the n-th record ever appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub u64);

/// A byte position within one segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position(pub u64);

/// Where a record lives: its offset (which names the segment) and its byte position there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    pub offset: Offset,
    pub position: Position,
}

/// The kind of a conversation (PROTOCOL.md §2, §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ConvKind {
    Dm,
    Group,
    Channel,
}

impl ConvKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConvKind::Dm => "dm",
            ConvKind::Group => "group",
            ConvKind::Channel => "channel",
        }
    }
}

/// Which of a member's two cursors moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum CursorKind {
    Delivered,
    Read,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(UserId::new("alice.b@x-y_z").is_ok());
        assert!(UserId::new("").is_err());
        assert!(UserId::new("a:b").is_err());
        assert!(UserId::new(&"a".repeat(65)).is_err());
        assert!(ConvId::new("dm:a:b").is_ok());
        assert!(ConvId::new("bad conv").is_err());
        assert!(ClientId::new(b"").is_err());
        assert!(ClientId::new(&[0xff; 64]).is_ok());
    }

    #[test]
    fn dm_id_orders_members() {
        let (a, b) = (UserId::new("bob").unwrap(), UserId::new("alice").unwrap());
        let dm = ConvId::dm(&a, &b);
        assert_eq!(dm.as_str(), "dm:alice:bob");
        assert_eq!(dm.dm_members(), Some((b, a)));
        assert_eq!(ConvId::new("dm:bob:alice").unwrap().dm_members(), None);
        assert_eq!(ConvId::new("dm:bob").unwrap().dm_members(), None);
    }
}
