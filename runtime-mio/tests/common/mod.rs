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
