//! Pieces shared by the runtime's test machines.

use std::collections::VecDeque;
use std::net::SocketAddr;

use p2pd_proto::{SocketId, Transmit};

/// A queued datagram: the socket to send from, the destination and the bytes.
pub type Queued = (SocketId, SocketAddr, Vec<u8>);

/// Pops the next queued datagram into `buf`, as `poll_transmit` does.
pub fn pop_transmit(queue: &mut VecDeque<Queued>, buf: &mut [u8]) -> Option<Transmit> {
    let (socket, destination, bytes) = queue.pop_front()?;
    buf[..bytes.len()].copy_from_slice(&bytes);
    Some(Transmit {
        socket,
        destination,
        len: bytes.len(),
    })
}

/// A test that cannot run here for `reason` (no IPv6 loopback, no `SO_BINDTODEVICE`): prints
/// `SKIP: reason` and returns, so the caller returns; panics under `CI=true`, where every
/// prerequisite is present. The same rule as `p2pd_tests::skip_or_fail` (this crate cannot depend
/// on `p2pd-tests`, which depends on it).
pub fn skip_or_fail(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true, but a test would be skipped: {reason}");
    }
    eprintln!("SKIP: {reason}");
}
