//! Traffic classes, and the QUIC streams that carry them.
//!
//! Each class has streams of its own so that bulk never delays live: QUIC has head-of-line
//! blocking only within a stream. Live traffic is spread over `lanes` streams by a key the
//! caller chooses (a conversation hash): frames with one key keep their order, and a lost
//! packet on one lane holds back no other.

/// What a frame is for; each class has its own queue budget and frame size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// Membership, registry, subscriptions: small, rare, first.
    Control,
    /// Deliveries, forwarded requests and answers.
    Live,
    /// Resync and history pages.
    Bulk,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::Control, Class::Live, Class::Bulk];

    pub fn index(self) -> usize {
        match self {
            Class::Control => 0,
            Class::Live => 1,
            Class::Bulk => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Class::Control => "control",
            Class::Live => "live",
            Class::Bulk => "bulk",
        }
    }
}

/// One outbound stream of a connection. Each side opens its own unidirectional streams; the
/// first bytes of each say which it is ([`crate::frame::StreamHeader`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamKind {
    Control,
    Lane(u16),
    Bulk,
}

impl StreamKind {
    pub fn class(self) -> Class {
        match self {
            StreamKind::Control => Class::Control,
            StreamKind::Lane(_) => Class::Live,
            StreamKind::Bulk => Class::Bulk,
        }
    }

    /// The code written in the stream header.
    pub fn code(self) -> u16 {
        match self {
            StreamKind::Control => 0,
            StreamKind::Bulk => 1,
            StreamKind::Lane(lane) => 2 + lane,
        }
    }

    /// The stream for `code`, if it names one of `lanes` lanes.
    pub fn from_code(code: u16, lanes: u16) -> Option<StreamKind> {
        match code {
            0 => Some(StreamKind::Control),
            1 => Some(StreamKind::Bulk),
            c if c - 2 < lanes => Some(StreamKind::Lane(c - 2)),
            _ => None,
        }
    }

    /// QUIC send priority: control before live before bulk when the congestion window is
    /// the limit (quinn schedules higher values first).
    pub fn priority(self) -> i32 {
        match self {
            StreamKind::Control => 2,
            StreamKind::Lane(_) => 1,
            StreamKind::Bulk => 0,
        }
    }

    /// The stream for `class`, with `lane_key` choosing among `lanes` live lanes.
    pub fn for_class(class: Class, lane_key: u64, lanes: u16) -> StreamKind {
        match class {
            Class::Control => StreamKind::Control,
            Class::Live => StreamKind::Lane((lane_key % u64::from(lanes)) as u16),
            Class::Bulk => StreamKind::Bulk,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_codes_round_trip_and_unknown_lanes_are_refused() {
        for kind in [StreamKind::Control, StreamKind::Bulk, StreamKind::Lane(0), StreamKind::Lane(7)] {
            assert_eq!(StreamKind::from_code(kind.code(), 8), Some(kind));
        }
        assert_eq!(StreamKind::from_code(10, 8), None);
        assert_eq!(StreamKind::from_code(u16::MAX, 8), None);
        assert_eq!(StreamKind::for_class(Class::Live, 13, 8), StreamKind::Lane(5));
    }
}
