//! [`OutQueue`]: the bytes a server machine of the simulator owes its TCP connections, in
//! transmit-sized chunks, handed out in order by `poll_transmit` (shared by the MQTT broker and
//! the TURN server).

use core::net::{Ipv4Addr, SocketAddr};
use std::collections::VecDeque;

use p2pd_proto::{SocketId, Transmit, TRANSMIT_BUFFER_LEN};

/// Outgoing stream bytes, per socket in order, in chunks of at most [`TRANSMIT_BUFFER_LEN`].
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    chunks: VecDeque<(SocketId, Vec<u8>)>,
    queued: usize,
}

impl OutQueue {
    /// Queues `bytes` for `socket`.
    pub(crate) fn push(&mut self, socket: SocketId, bytes: &[u8]) {
        self.queued = self.queued.saturating_add(bytes.len());
        for chunk in bytes.chunks(TRANSMIT_BUFFER_LEN) {
            self.chunks.push_back((socket, chunk.to_vec()));
        }
    }

    /// Bytes queued and not yet handed out.
    pub(crate) fn queued(&self) -> usize {
        self.queued
    }

    /// Drops what is queued for `socket`.
    pub(crate) fn forget(&mut self, socket: SocketId) {
        let mut dropped = 0usize;
        self.chunks.retain(|(s, c)| {
            let keep = *s != socket;
            if !keep {
                dropped = dropped.saturating_add(c.len());
            }
            keep
        });
        self.queued = self.queued.saturating_sub(dropped);
    }

    /// The next chunk into `buf` (a stream transmit: no destination), and how many bytes it is.
    /// A chunk longer than `buf` is split: its rest goes out next.
    pub(crate) fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<(Transmit, usize)> {
        let (socket, mut data) = self.chunks.pop_front()?;
        if data.len() > buf.len() {
            let rest = data.split_off(buf.len());
            self.chunks.push_front((socket, rest));
        }
        let len = data.len();
        buf.get_mut(..len)?.copy_from_slice(&data);
        self.queued = self.queued.saturating_sub(len);
        Some((
            Transmit {
                socket,
                destination: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                len,
            },
            len,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_go_out_in_order_split_to_the_buffer_and_counted() {
        let mut q = OutQueue::default();
        let a = SocketId(1);
        let b = SocketId(2);
        q.push(a, &[7u8; TRANSMIT_BUFFER_LEN + 10]);
        q.push(b, b"bb");
        assert_eq!(q.queued(), TRANSMIT_BUFFER_LEN + 12);
        let mut small = [0u8; 1000];
        let (t, n) = q.poll_transmit(&mut small).unwrap();
        assert_eq!((t.socket, n), (a, 1000));
        let mut buf = vec![0u8; TRANSMIT_BUFFER_LEN];
        let (t, n) = q.poll_transmit(&mut buf).unwrap();
        assert_eq!((t.socket, n), (a, TRANSMIT_BUFFER_LEN - 1000));
        q.forget(a);
        let (t, n) = q.poll_transmit(&mut buf).unwrap();
        assert_eq!((t.socket, n, &buf[..2]), (b, 2, &b"bb"[..]));
        assert!(q.poll_transmit(&mut buf).is_none());
        assert_eq!(q.queued(), 0);
    }
}
