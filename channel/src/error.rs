//! Typed failures of a channel (protocol outcomes, reported as events) and API misuse (`Err`).

use core::fmt;

use p2pd_signaling::NodeId;

/// Why a channel failed. Reported once, as [`crate::ChannelEvent::Failed`]; nothing is delivered
/// after it, and the caller closes the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelFailure {
    /// The peer proved an identity other than the one expected (or our own, unasked).
    WrongPeer {
        /// The identity we expected, if we named one.
        expected: Option<NodeId>,
        /// The identity the peer proved.
        proved: NodeId,
    },
    /// The handshake did not complete: see the reason.
    BadHandshake(HandshakeError),
    /// A transport frame failed authentication: altered, dropped, reordered or replayed bytes.
    Tampered,
    /// A frame's length field is beyond the bound (`max` for this phase) or below a tag's length.
    TooLarge {
        /// The length the frame announced.
        len: usize,
        /// The most this phase accepts.
        max: usize,
    },
    /// The handshake was not complete by the deadline ([`crate::ChannelConfig::handshake_timeout`]).
    HandshakeTimeout,
    /// The stream ended before the peer's authenticated FINISH, or in the middle of a frame.
    Truncated,
    /// The peer sent data (or a second FINISH) after its own FINISH.
    DataAfterFinish,
    /// A transport plaintext of the wrong shape for its kind: empty (no kind byte), DATA
    /// without bytes, or a FINISH or FINISH-ACK with a payload.
    BadPlaintext,
    /// A transport plaintext of a kind this version does not know.
    UnknownKind(u8),
    /// A FINISH-ACK when our FINISH was not sealed, or a second one.
    UnexpectedAck,
}

/// Why a handshake failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// A handshake message failed to decrypt or authenticate (another prologue or context, a
    /// replayed or reflected message, altered bytes).
    Decrypt,
    /// A message of the wrong shape for its place in the handshake (size, an unexpected payload).
    Malformed,
    /// The peer's identity proof is not a valid key and signature over its Noise static key.
    BadProof,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandshakeError::Decrypt => "a handshake message failed to authenticate",
            HandshakeError::Malformed => "a malformed handshake message",
            HandshakeError::BadProof => "an invalid identity proof",
        })
    }
}

impl fmt::Display for ChannelFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelFailure::WrongPeer {
                expected: Some(expected),
                proved,
            } => write!(f, "wrong peer: expected {expected}, it proved {proved}"),
            ChannelFailure::WrongPeer {
                expected: None,
                proved,
            } => write!(f, "wrong peer: it proved our own identity {proved}"),
            ChannelFailure::BadHandshake(reason) => write!(f, "bad handshake: {reason}"),
            ChannelFailure::Tampered => f.write_str("a frame failed authentication (tampered)"),
            ChannelFailure::TooLarge { len, max } => {
                write!(f, "a frame of {len} bytes is beyond the bound of {max}")
            }
            ChannelFailure::HandshakeTimeout => f.write_str("the handshake timed out"),
            ChannelFailure::Truncated => {
                f.write_str("the stream ended before the peer finished (truncated)")
            }
            ChannelFailure::DataAfterFinish => f.write_str("the peer sent data after finishing"),
            ChannelFailure::BadPlaintext => {
                f.write_str("a transport plaintext of the wrong shape for its kind")
            }
            ChannelFailure::UnknownKind(kind) => {
                write!(f, "a transport plaintext of unknown kind {kind}")
            }
            ChannelFailure::UnexpectedAck => {
                f.write_str("a FINISH acknowledgement without a FINISH of ours to acknowledge")
            }
        }
    }
}

impl std::error::Error for ChannelFailure {}

/// API misuse: a command the channel cannot take in its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelApiError {
    /// `send` or `finish` before the handshake completed.
    NotEstablished,
    /// `send` after [`crate::Channel::finish`].
    Finished,
    /// The channel failed or was closed.
    Closed,
    /// The send buffer holds no room for even one byte; wait for it to drain.
    SendBufferFull,
    /// The context is longer than [`crate::MAX_CONTEXT_LEN`].
    ContextTooLong,
    /// The configuration is out of range (a `max_frame` of 0 or beyond what Noise allows, a
    /// send buffer smaller than one frame).
    BadConfig,
    /// The Noise library refused to build the handshake (never with this crate's parameters).
    Noise,
}

impl fmt::Display for ChannelApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelApiError::NotEstablished => "the channel is not established yet",
            ChannelApiError::Finished => "the channel's sending side is finished",
            ChannelApiError::Closed => "the channel failed or was closed",
            ChannelApiError::SendBufferFull => "the channel's send buffer is full",
            ChannelApiError::ContextTooLong => "the channel context is longer than 255 bytes",
            ChannelApiError::BadConfig => "the channel configuration is out of range",
            ChannelApiError::Noise => "the Noise handshake could not be built",
        })
    }
}

impl std::error::Error for ChannelApiError {}
