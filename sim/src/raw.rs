//! [`RawUdp`]: a minimal machine that binds UDP sockets, sends what it is told and reports what it
//! receives. Tests use it as a peer or a probe where a protocol machine would be in the way.

use core::net::SocketAddr;
use std::collections::VecDeque;

use p2pd_proto::{
    BindOptions, Instant, IoError, Machine, SocketId, SocketOp, SocketOutcome, Transmit, Transport,
    Verdict,
};

/// What a [`RawUdp`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawEvent {
    /// A socket is bound.
    Bound {
        /// The socket.
        socket: SocketId,
        /// Its local address.
        local: SocketAddr,
    },
    /// A socket operation failed.
    Failed {
        /// The socket.
        socket: SocketId,
        /// Why.
        error: IoError,
    },
    /// A datagram arrived.
    Received {
        /// The socket it arrived on.
        socket: SocketId,
        /// Its source.
        from: SocketAddr,
        /// Its payload.
        data: Vec<u8>,
    },
}

/// A machine that is nothing but UDP sockets: [`RawUdp::bind`], [`RawUdp::send`], [`RawUdp::close`];
/// every datagram received is a [`RawEvent::Received`].
#[derive(Debug, Default)]
pub struct RawUdp {
    next_socket: u32,
    ops: VecDeque<SocketOp>,
    transmits: VecDeque<(SocketId, SocketAddr, Vec<u8>)>,
    events: VecDeque<RawEvent>,
}

impl RawUdp {
    /// A machine with no sockets.
    pub fn new() -> Self {
        RawUdp::default()
    }

    /// Asks for a UDP socket bound to `local` (port 0: ephemeral).
    pub fn bind(&mut self, local: SocketAddr) -> SocketId {
        let socket = SocketId(self.next_socket);
        self.next_socket += 1;
        self.ops.push_back(SocketOp::Bind {
            socket,
            transport: Transport::Udp,
            local,
            options: BindOptions::default(),
        });
        socket
    }

    /// Sends `data` from `socket` to `destination`.
    pub fn send(&mut self, socket: SocketId, destination: SocketAddr, data: &[u8]) {
        self.transmits
            .push_back((socket, destination, data.to_vec()));
    }

    /// Closes `socket`.
    pub fn close(&mut self, socket: SocketId) {
        self.ops.push_back(SocketOp::Close { socket });
    }
}

impl Machine for RawUdp {
    type Event = RawEvent;

    fn handle_datagram(
        &mut self,
        _now: Instant,
        socket: SocketId,
        from: SocketAddr,
        data: &[u8],
    ) -> Verdict {
        self.events.push_back(RawEvent::Received {
            socket,
            from,
            data: data.to_vec(),
        });
        Verdict::Consumed
    }

    fn handle_socket_result(&mut self, _now: Instant, socket: SocketId, outcome: SocketOutcome) {
        match outcome {
            SocketOutcome::Bound { local } => {
                self.events.push_back(RawEvent::Bound { socket, local })
            }
            SocketOutcome::Failed { error, .. } => {
                self.events.push_back(RawEvent::Failed { socket, error })
            }
            _ => {}
        }
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let (socket, destination, data) = self.transmits.pop_front()?;
        let len = data.len().min(buf.len());
        buf[..len].copy_from_slice(&data[..len]);
        Some(Transmit {
            socket,
            destination,
            len,
        })
    }

    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        self.ops.pop_front()
    }

    fn poll_event(&mut self) -> Option<RawEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}
