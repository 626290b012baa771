//! The punch protocol's signaling messages (carried, sealed, inside signaling envelopes) and the
//! first bytes exchanged on every punched TCP connection.
//!
//! # Signaling messages, version 2
//!
//! All integers are big-endian; times are Unix nanoseconds of the sender's (or the stated party's)
//! wall clock.
//!
//! ```text
//! message   = tag:u8 (= 0x50, 'P') version:u8 (= 2) kind:u8 session:[16] round:u8 body
//!   1 OFFER   body = t1:u64 candidates              ; t1 = sender's send time
//!   2 ANSWER  body = t1:u64 t2:u64 t3:u64 meet:u64 candidates
//!                                                   ; t1 echoed from the offer; t2 = receive time,
//!                                                   ; t3 = send time, meet = meet time, all in the
//!                                                   ; answerer's clock
//!   3 ACK     body = meet:u64 uncertainty_ns:u64    ; the meet time the initiator chose
//!                                                   ; (answerer's clock), no later than the
//!                                                   ; answer's
//!   4 ABORT   body = reason:u8
//! candidates = count:u8 (1..=MAX_CANDIDATES) candidate*
//! candidate  = local_port:u16 family:u8 (4 | 6) ip:[4 | 16] port:u16
//!                                                   ; the sender's local port and its predicted
//!                                                   ; external endpoint for connections to the peer
//! ```
//!
//! Version 2 changed only the meaning of the ACK's `meet` (version 1 echoed the answer's meet
//! time; version 2 may name an earlier one, from the measured round trip).
//!
//! The parser is strict: unknown tags, versions, kinds and families, zero counts, port 0, and
//! trailing bytes are rejected with a typed [`MessageError`]; every value has one encoding.
//!
//! # Stream handshake
//!
//! Every TCP connection that comes up carries a secure channel handshake ([`p2pd_channel`]),
//! bound to the session id and round; the election rides on it (see [`crate::machine`]).

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The first byte of every punch signaling message.
pub const TAG: u8 = 0x50;
/// The protocol version.
pub const VERSION: u8 = 2;
/// Most candidates one message carries.
pub const MAX_CANDIDATES: usize = 16;
/// Length of a session id.
pub const SESSION_LEN: usize = 16;
/// Length of a node id (signaling's [`p2pd_signaling::NodeId`]).
pub use p2pd_signaling::NODE_ID_LEN;

/// A punch session id, chosen by the initiator.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub [u8; SESSION_LEN]);

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId(")?;
        for b in self.0.iter().take(4) {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

/// One local port and the external endpoint the sender predicts for it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct PunchCandidate {
    /// The local port the sender binds.
    pub local_port: u16,
    /// The external endpoint the peer should connect to.
    pub external: SocketAddr,
}

/// Why a punch was aborted by the peer.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum AbortReason {
    /// The clocks could not be synchronised closely enough.
    TooUncertain,
    /// The meet time arrived too late to be honoured.
    TooLate,
    /// The sender gave up (closed, or out of rounds).
    Cancelled,
    /// The sender could not prepare its sockets.
    NoSockets,
}

impl AbortReason {
    fn code(self) -> u8 {
        match self {
            AbortReason::TooUncertain => 1,
            AbortReason::TooLate => 2,
            AbortReason::Cancelled => 3,
            AbortReason::NoSockets => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => AbortReason::TooUncertain,
            2 => AbortReason::TooLate,
            3 => AbortReason::Cancelled,
            4 => AbortReason::NoSockets,
            _ => return None,
        })
    }
}

/// The reason in words (`the clocks could not be synchronised closely enough`, ...).
impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AbortReason::TooUncertain => "the clocks could not be synchronised closely enough",
            AbortReason::TooLate => "the meet time arrived too late",
            AbortReason::Cancelled => "it gave up",
            AbortReason::NoSockets => "it could not prepare its sockets",
        })
    }
}

/// A punch signaling message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The initiator's candidates and send time.
    Offer {
        /// The session.
        session: SessionId,
        /// The attempt number within the session.
        round: u8,
        /// Send time, initiator's clock (Unix ns).
        t1: u64,
        /// The initiator's candidates.
        candidates: Vec<PunchCandidate>,
    },
    /// The responder's candidates, clock samples and meet time.
    Answer {
        /// The session.
        session: SessionId,
        /// The round.
        round: u8,
        /// The offer's `t1`, echoed.
        t1: u64,
        /// When the offer arrived, responder's clock.
        t2: u64,
        /// When this answer was sent, responder's clock.
        t3: u64,
        /// The meet time, responder's clock.
        meet: u64,
        /// The responder's candidates.
        candidates: Vec<PunchCandidate>,
    },
    /// The initiator accepts the meet time.
    Ack {
        /// The session.
        session: SessionId,
        /// The round.
        round: u8,
        /// The meet time the initiator chose (responder's clock), no later than the answer's.
        meet: u64,
        /// The initiator's uncertainty about the responder's clock.
        uncertainty_ns: u64,
    },
    /// The sender gives up on this round.
    Abort {
        /// The session.
        session: SessionId,
        /// The round.
        round: u8,
        /// Why.
        reason: AbortReason,
    },
}

/// Why bytes are not a valid punch message.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum MessageError {
    /// Not a punch message at all (wrong tag): hand it to someone else.
    NotPunch,
    /// A version this code does not speak.
    UnsupportedVersion(u8),
    /// Unknown message kind.
    UnknownKind(u8),
    /// The message ends early.
    Truncated,
    /// Bytes after the end of the message.
    TrailingBytes,
    /// A field has an impossible value.
    Invalid(&'static str),
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::NotPunch => f.write_str("not a punch message"),
            MessageError::UnsupportedVersion(v) => write!(f, "unsupported punch version {v}"),
            MessageError::UnknownKind(k) => write!(f, "unknown punch message kind {k}"),
            MessageError::Truncated => f.write_str("punch message truncated"),
            MessageError::TrailingBytes => f.write_str("bytes after the punch message"),
            MessageError::Invalid(what) => write!(f, "invalid punch message: {what}"),
        }
    }
}

impl std::error::Error for MessageError {}

impl Message {
    /// The session the message belongs to.
    pub fn session(&self) -> SessionId {
        match self {
            Message::Offer { session, .. }
            | Message::Answer { session, .. }
            | Message::Ack { session, .. }
            | Message::Abort { session, .. } => *session,
        }
    }

    /// The round the message belongs to.
    pub fn round(&self) -> u8 {
        match self {
            Message::Offer { round, .. }
            | Message::Answer { round, .. }
            | Message::Ack { round, .. }
            | Message::Abort { round, .. } => *round,
        }
    }

    /// Encodes the message. Fails only for an empty or over-long candidate list.
    pub fn encode(&self) -> Result<Vec<u8>, MessageError> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&[TAG, VERSION]);
        let (kind, session, round) = match self {
            Message::Offer { session, round, .. } => (1, session, round),
            Message::Answer { session, round, .. } => (2, session, round),
            Message::Ack { session, round, .. } => (3, session, round),
            Message::Abort { session, round, .. } => (4, session, round),
        };
        out.push(kind);
        out.extend_from_slice(&session.0);
        out.push(*round);
        match self {
            Message::Offer { t1, candidates, .. } => {
                out.extend_from_slice(&t1.to_be_bytes());
                encode_candidates(&mut out, candidates)?;
            }
            Message::Answer {
                t1,
                t2,
                t3,
                meet,
                candidates,
                ..
            } => {
                for v in [t1, t2, t3, meet] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                encode_candidates(&mut out, candidates)?;
            }
            Message::Ack {
                meet,
                uncertainty_ns,
                ..
            } => {
                out.extend_from_slice(&meet.to_be_bytes());
                out.extend_from_slice(&uncertainty_ns.to_be_bytes());
            }
            Message::Abort { reason, .. } => out.push(reason.code()),
        }
        Ok(out)
    }

    /// Decodes a message (strictly; see the module docs).
    pub fn decode(bytes: &[u8]) -> Result<Message, MessageError> {
        let mut r = Reader { rest: bytes };
        if r.u8()? != TAG {
            return Err(MessageError::NotPunch);
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(MessageError::UnsupportedVersion(version));
        }
        let kind = r.u8()?;
        let session = SessionId(r.array()?);
        let round = r.u8()?;
        let message = match kind {
            1 => Message::Offer {
                session,
                round,
                t1: r.u64()?,
                candidates: r.candidates()?,
            },
            2 => Message::Answer {
                session,
                round,
                t1: r.u64()?,
                t2: r.u64()?,
                t3: r.u64()?,
                meet: r.u64()?,
                candidates: r.candidates()?,
            },
            3 => Message::Ack {
                session,
                round,
                meet: r.u64()?,
                uncertainty_ns: r.u64()?,
            },
            4 => Message::Abort {
                session,
                round,
                reason: AbortReason::from_code(r.u8()?)
                    .ok_or(MessageError::Invalid("abort reason"))?,
            },
            other => return Err(MessageError::UnknownKind(other)),
        };
        if !r.rest.is_empty() {
            return Err(MessageError::TrailingBytes);
        }
        Ok(message)
    }
}

fn encode_candidates(out: &mut Vec<u8>, candidates: &[PunchCandidate]) -> Result<(), MessageError> {
    if candidates.is_empty() || candidates.len() > MAX_CANDIDATES {
        return Err(MessageError::Invalid("candidate count"));
    }
    out.push(u8::try_from(candidates.len()).map_err(|_| MessageError::Invalid("candidate count"))?);
    for c in candidates {
        if c.local_port == 0 || c.external.port() == 0 {
            return Err(MessageError::Invalid("port 0"));
        }
        out.extend_from_slice(&c.local_port.to_be_bytes());
        p2pd_signaling::address::write_socket_addr(out, c.external);
    }
    Ok(())
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], MessageError> {
        if self.rest.len() < n {
            return Err(MessageError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MessageError> {
        self.take(N)?
            .try_into()
            .map_err(|_| MessageError::Truncated)
    }

    fn u8(&mut self) -> Result<u8, MessageError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16, MessageError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, MessageError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn candidates(&mut self) -> Result<Vec<PunchCandidate>, MessageError> {
        let n = usize::from(self.u8()?);
        if n == 0 || n > MAX_CANDIDATES {
            return Err(MessageError::Invalid("candidate count"));
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let local_port = self.u16()?;
            let ip = match self.u8()? {
                4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
                6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
                _ => return Err(MessageError::Invalid("address family")),
            };
            let port = self.u16()?;
            if local_port == 0 || port == 0 {
                return Err(MessageError::Invalid("port 0"));
            }
            out.push(PunchCandidate {
                local_port,
                external: SocketAddr::new(ip, port),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands() -> Vec<PunchCandidate> {
        vec![
            PunchCandidate {
                local_port: 20_001,
                external: "203.0.113.5:41000".parse().unwrap(),
            },
            PunchCandidate {
                local_port: 20_001,
                external: "[2001:db8::1]:41001".parse().unwrap(),
            },
        ]
    }

    fn all() -> Vec<Message> {
        let session = SessionId([9; 16]);
        vec![
            Message::Offer {
                session,
                round: 0,
                t1: 1,
                candidates: cands(),
            },
            Message::Answer {
                session,
                round: 2,
                t1: 1,
                t2: 2,
                t3: 3,
                meet: u64::MAX,
                candidates: cands(),
            },
            Message::Ack {
                session,
                round: 1,
                meet: 5,
                uncertainty_ns: 6,
            },
            Message::Abort {
                session,
                round: 1,
                reason: AbortReason::TooLate,
            },
        ]
    }

    #[test]
    fn round_trip_and_every_truncation() {
        for m in all() {
            let bytes = m.encode().unwrap();
            assert_eq!(Message::decode(&bytes).unwrap(), m);
            for n in 0..bytes.len() {
                let e = Message::decode(&bytes[..n]).unwrap_err();
                assert!(
                    matches!(e, MessageError::Truncated | MessageError::Invalid(_)),
                    "{m:?} cut at {n}: {e:?}"
                );
            }
            let mut long = bytes.clone();
            long.push(0);
            assert_eq!(Message::decode(&long), Err(MessageError::TrailingBytes));
        }
    }

    #[test]
    fn strict_fields() {
        let bytes = all()[0].encode().unwrap();
        let with = |i: usize, v: u8| {
            let mut b = bytes.clone();
            b[i] = v;
            Message::decode(&b)
        };
        assert_eq!(with(0, b'{'), Err(MessageError::NotPunch));
        // Version 1 (whose ACK echoed the answer's meet time) is not spoken any more.
        assert_eq!(with(1, 1), Err(MessageError::UnsupportedVersion(1)));
        assert_eq!(with(1, 3), Err(MessageError::UnsupportedVersion(3)));
        assert_eq!(with(2, 9), Err(MessageError::UnknownKind(9)));
        // Candidate count (after tag, version, kind, session, round, t1).
        let count = 3 + 16 + 1 + 8;
        assert!(matches!(with(count, 0), Err(MessageError::Invalid(_))));
        assert!(matches!(with(count, 17), Err(MessageError::Invalid(_))));
        // Family byte of the first candidate.
        assert!(matches!(with(count + 3, 5), Err(MessageError::Invalid(_))));
        // Local port 0.
        let mut b = bytes.clone();
        b[count + 1] = 0;
        b[count + 2] = 0;
        assert!(matches!(Message::decode(&b), Err(MessageError::Invalid(_))));
        assert!(Message::Offer {
            session: SessionId([0; 16]),
            round: 0,
            t1: 0,
            candidates: vec![],
        }
        .encode()
        .is_err());
        let abort = all()[3].encode().unwrap();
        let mut b = abort.clone();
        *b.last_mut().unwrap() = 0;
        assert!(matches!(Message::decode(&b), Err(MessageError::Invalid(_))));
    }
}
