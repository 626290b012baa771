//! The socket failures the node fuzz targets hand their machine (shared by `punch_node_session`
//! and `node_session`).

use arbitrary::Arbitrary;
use p2pd_proto::IoError;

/// A socket operation's failure.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Fail {
    Refused,
    Reset,
    TimedOut,
    InUse,
}

impl Fail {
    /// The runtime's error for it.
    pub fn io(self) -> IoError {
        match self {
            Fail::Refused => IoError::ConnectionRefused,
            Fail::Reset => IoError::ConnectionReset,
            Fail::TimedOut => IoError::TimedOut,
            Fail::InUse => IoError::AddrInUse,
        }
    }
}
