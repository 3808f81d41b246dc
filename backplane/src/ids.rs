//! Who is who on the mesh.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A node's number in the cluster (1..); it comes from the node's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u16);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One run of a node's process: chosen at start, larger than any earlier run's (microseconds
/// since the epoch, or one more than the last if the clock stepped back), so that a frame or
/// a connection of a restarted node is never taken for one of the run before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Boot(pub u64);

impl fmt::Display for Boot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
