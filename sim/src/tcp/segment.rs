//! The wire: the simulated TCP header, a segment on the network, and sequence-number arithmetic.

use core::net::SocketAddrV4;

/// The flags and numbers of a simulated TCP segment (no options, no window field: the simulated
/// receiver always has room).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct TcpHeader {
    /// Flag bits, as in the real header ([`TcpHeader::FIN`], [`TcpHeader::SYN`], ...).
    pub flags: u8,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number (meaningful with [`TcpHeader::ACK`]).
    pub ack: u32,
}

impl TcpHeader {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronise sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// The acknowledgement number is valid.
    pub const ACK: u8 = 0x10;

    /// Whether every bit of `flag` is set.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag == flag
    }

    /// A SYN without ACK: a connection attempt.
    pub fn is_syn_only(&self) -> bool {
        self.has(Self::SYN) && !self.has(Self::ACK) && !self.has(Self::RST)
    }

    /// The bytes the trace hash eats for this header.
    pub(crate) fn bytes(&self) -> [u8; 9] {
        let mut b = [0u8; 9];
        b[0] = self.flags;
        b[1..5].copy_from_slice(&self.seq.to_be_bytes());
        b[5..9].copy_from_slice(&self.ack.to_be_bytes());
        b
    }
}

/// A segment to put on the network.
#[derive(Clone, Debug)]
pub(crate) struct Segment {
    pub(crate) src: SocketAddrV4,
    pub(crate) dst: SocketAddrV4,
    pub(crate) header: TcpHeader,
    pub(crate) payload: Vec<u8>,
}

impl Segment {
    /// The RST answering `self` (RFC 793: seq from its ACK, or RST+ACK covering it); `None` for an
    /// RST.
    pub(crate) fn reset_reply(&self) -> Option<Segment> {
        let h = self.header;
        if h.has(TcpHeader::RST) {
            return None;
        }
        let header = if h.has(TcpHeader::ACK) {
            TcpHeader {
                flags: TcpHeader::RST,
                seq: h.ack,
                ack: 0,
            }
        } else {
            let len = seg_len(&h, self.payload.len());
            TcpHeader {
                flags: TcpHeader::RST | TcpHeader::ACK,
                seq: 0,
                ack: h.seq.wrapping_add(len),
            }
        };
        Some(Segment {
            src: self.dst,
            dst: self.src,
            header,
            payload: Vec::new(),
        })
    }
}

/// Sequence space a segment occupies.
fn seg_len(h: &TcpHeader, payload: usize) -> u32 {
    let flags = u32::from(h.has(TcpHeader::SYN)) + u32::from(h.has(TcpHeader::FIN));
    u32::try_from(payload)
        .unwrap_or(u32::MAX)
        .wrapping_add(flags)
}

pub(super) fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

pub(super) fn seq_le(a: u32, b: u32) -> bool {
    a == b || seq_lt(a, b)
}

pub(super) fn distance(from: u32, to: u32) -> usize {
    to.wrapping_sub(from) as usize
}
