//! Misuse of the punch API: why [`crate::Puncher`] or [`crate::node::PunchNode`] refused a call.
//!
//! Protocol failures (no answer, no connection, ...) are not here: they are events carrying a
//! [`crate::PunchFailure`].

use core::fmt;

use crate::message::MAX_CANDIDATES;
use crate::node::SEND_BUFFER;

/// Why a call on [`crate::Puncher`] or [`crate::node::PunchNode`] was refused. Nothing changed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PunchApiError {
    /// The machine (or node) is closed.
    Closed,
    /// A punch session is already running (or being prepared).
    InProgress,
    /// The peer is ourselves.
    PunchToSelf,
    /// Not 1 to [`MAX_CANDIDATES`] candidates.
    CandidateCount {
        /// How many were given.
        count: usize,
    },
    /// A candidate with local or external port 0.
    CandidatePortZero,
    /// Candidates for a round other than the current one.
    WrongRound {
        /// The round given.
        given: u8,
        /// The current round.
        current: u8,
    },
    /// No [`crate::PunchEvent::NeedCandidates`] is waiting for an answer.
    CandidatesNotAsked,
    /// The punched stream is not up yet.
    NotConnected,
    /// The punched stream failed, or the node is closing.
    StreamClosed,
    /// [`crate::node::PunchNode::finish`] was called: no more bytes may be sent.
    Finished,
    /// The punch configuration's channel settings are out of range
    /// ([`p2pd_channel::ChannelConfig`]).
    BadChannelConfig,
    /// The send buffer ([`SEND_BUFFER`]) is full: nothing was taken.
    SendBufferFull {
        /// Bytes waiting in it to be taken by the runtime.
        buffered: usize,
    },
}

impl fmt::Display for PunchApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PunchApiError::Closed => f.write_str("closed"),
            PunchApiError::InProgress => f.write_str("a punch is already in progress"),
            PunchApiError::PunchToSelf => f.write_str("cannot punch to ourselves"),
            PunchApiError::CandidateCount { count } => {
                write!(f, "{count} candidates given, 1 to {MAX_CANDIDATES} allowed")
            }
            PunchApiError::CandidatePortZero => f.write_str("candidate with port 0"),
            PunchApiError::WrongRound { given, current } => {
                write!(
                    f,
                    "candidates for round {given}, current round is {current}"
                )
            }
            PunchApiError::CandidatesNotAsked => f.write_str("no candidates were asked for"),
            PunchApiError::NotConnected => f.write_str("the punched stream is not up"),
            PunchApiError::StreamClosed => f.write_str("the punched stream is closed"),
            PunchApiError::Finished => f.write_str("the sending side is finished"),
            PunchApiError::BadChannelConfig => {
                f.write_str("the secure channel settings are out of range")
            }
            PunchApiError::SendBufferFull { buffered } => write!(
                f,
                "send buffer full: {buffered} of {SEND_BUFFER} bytes wait for the runtime"
            ),
        }
    }
}

impl std::error::Error for PunchApiError {}
