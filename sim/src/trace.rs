//! The packet trace: a running hash of every delivery, and optional records for debugging.

use core::net::SocketAddrV4;

use p2pd_proto::Instant;

use crate::sim::HostId;
use crate::tcp::TcpHeader;

/// One delivered datagram, as recorded after [`crate::Sim::record_trace`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEntry {
    /// When it was delivered.
    pub at: Instant,
    /// To which host.
    pub host: HostId,
    /// Its source as the host saw it.
    pub src: SocketAddrV4,
    /// Its destination on the host.
    pub dst: SocketAddrV4,
    /// Its payload.
    pub data: Vec<u8>,
    /// The TCP header, for a segment (every segment reaching a host's TCP is recorded).
    pub tcp: Option<TcpHeader>,
}

/// FNV-1a (64-bit) over every delivery.
#[derive(Copy, Clone, Debug)]
pub(crate) struct TraceHash(u64);

impl TraceHash {
    pub(crate) fn new() -> Self {
        TraceHash(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn value(&self) -> u64 {
        self.0
    }

    pub(crate) fn eat(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub(crate) fn add(
        &mut self,
        at: Instant,
        host: HostId,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        data: &[u8],
    ) {
        self.eat(&at.as_nanos().to_le_bytes());
        self.eat(&(host.0 as u64).to_le_bytes());
        for a in [src, dst] {
            self.eat(&a.ip().octets());
            self.eat(&a.port().to_le_bytes());
        }
        self.eat(&(data.len() as u64).to_le_bytes());
        self.eat(data);
    }
}
