//! [`RawTcp`]: a minimal machine that opens TCP sockets as it is told and reports everything that
//! happens to them. Tests use it as a TCP peer where a protocol machine would be in the way.

use core::net::SocketAddr;
use std::collections::VecDeque;

use p2pd_proto::{
    BindOptions, Instant, IoError, Machine, OpKind, SocketId, SocketOp, SocketOutcome, Transmit,
    Transport, Verdict,
};

/// What a [`RawTcp`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpEvent {
    /// A socket is bound.
    Bound {
        /// The socket.
        socket: SocketId,
        /// Its local address.
        local: SocketAddr,
    },
    /// A connect completed.
    Connected {
        /// The socket.
        socket: SocketId,
        /// Local address.
        local: SocketAddr,
        /// Remote address.
        remote: SocketAddr,
    },
    /// An accept completed.
    Accepted {
        /// The new stream's socket.
        socket: SocketId,
        /// Local address.
        local: SocketAddr,
        /// Remote address.
        remote: SocketAddr,
    },
    /// Stream bytes arrived.
    Data {
        /// The socket.
        socket: SocketId,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The peer closed the stream.
    PeerClosed {
        /// The socket.
        socket: SocketId,
    },
    /// An operation failed.
    Failed {
        /// The socket.
        socket: SocketId,
        /// What failed.
        op: OpKind,
        /// Why.
        error: IoError,
    },
}

impl TcpEvent {
    /// Every byte the stream `socket` received in `events`, in order.
    pub fn received(events: &[TcpEvent], socket: SocketId) -> Vec<u8> {
        let mut out = Vec::new();
        for e in events {
            if let TcpEvent::Data { socket: s, data } = e {
                if *s == socket {
                    out.extend_from_slice(data);
                }
            }
        }
        out
    }
}

/// A machine that is nothing but TCP sockets: [`RawTcp::bind`], [`RawTcp::connect`],
/// [`RawTcp::listen`], [`RawTcp::accept`], [`RawTcp::send`], [`RawTcp::shutdown`],
/// [`RawTcp::close`]. Every outcome and
/// every stream chunk is a [`TcpEvent`].
#[derive(Debug, Default)]
pub struct RawTcp {
    next_socket: u32,
    ops: VecDeque<SocketOp>,
    transmits: VecDeque<(SocketId, Vec<u8>)>,
    events: VecDeque<TcpEvent>,
}

impl RawTcp {
    /// A machine with no sockets.
    pub fn new() -> Self {
        RawTcp::default()
    }

    fn next_id(&mut self) -> SocketId {
        let socket = SocketId(self.next_socket);
        self.next_socket += 1;
        socket
    }

    /// Asks for a TCP socket bound to `local` (port 0: ephemeral), with both reuse flags if
    /// `reuse`.
    pub fn bind(&mut self, local: SocketAddr, reuse: bool) -> SocketId {
        let socket = self.next_id();
        self.ops.push_back(SocketOp::Bind {
            socket,
            transport: Transport::Tcp,
            local,
            options: BindOptions {
                reuse_address: reuse,
                reuse_port: reuse,
                device: None,
            },
        });
        socket
    }

    /// Connects bound `socket` to `remote`.
    pub fn connect(&mut self, socket: SocketId, remote: SocketAddr) {
        self.ops.push_back(SocketOp::Connect { socket, remote });
    }

    /// Makes bound `socket` listen.
    pub fn listen(&mut self, socket: SocketId, backlog: u32) {
        self.ops.push_back(SocketOp::Listen { socket, backlog });
    }

    /// Asks for the next connection on `listener`; returns the id it will have.
    pub fn accept(&mut self, listener: SocketId) -> SocketId {
        let socket = self.next_id();
        self.ops.push_back(SocketOp::Accept { listener, socket });
        socket
    }

    /// Appends `data` to the stream (chunks of at most 1500 bytes per transmit).
    pub fn send(&mut self, socket: SocketId, data: &[u8]) {
        for chunk in data.chunks(p2pd_proto::TRANSMIT_BUFFER_LEN) {
            self.transmits.push_back((socket, chunk.to_vec()));
        }
    }

    /// Shuts down the sending half of stream `socket` after what was sent on it.
    pub fn shutdown(&mut self, socket: SocketId) {
        self.ops.push_back(SocketOp::Shutdown { socket });
    }

    /// Closes `socket`.
    pub fn close(&mut self, socket: SocketId) {
        self.ops.push_back(SocketOp::Close { socket });
    }
}

impl Machine for RawTcp {
    type Event = TcpEvent;

    fn handle_datagram(&mut self, _: Instant, _: SocketId, _: SocketAddr, _: &[u8]) -> Verdict {
        Verdict::NotMine
    }

    fn handle_stream(&mut self, _now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        self.events.push_back(TcpEvent::Data {
            socket,
            data: data.to_vec(),
        });
        Verdict::Consumed
    }

    fn handle_socket_result(&mut self, _now: Instant, socket: SocketId, outcome: SocketOutcome) {
        let event = match outcome {
            SocketOutcome::Bound { local } => TcpEvent::Bound { socket, local },
            SocketOutcome::Connected { local, remote } => TcpEvent::Connected {
                socket,
                local,
                remote,
            },
            SocketOutcome::Accepted { local, remote } => TcpEvent::Accepted {
                socket,
                local,
                remote,
            },
            SocketOutcome::PeerClosed => TcpEvent::PeerClosed { socket },
            SocketOutcome::Failed { op, error, .. } => TcpEvent::Failed { socket, op, error },
            _ => return,
        };
        self.events.push_back(event);
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let (socket, data) = self.transmits.pop_front()?;
        let len = data.len().min(buf.len());
        buf[..len].copy_from_slice(&data[..len]);
        Some(Transmit {
            socket,
            // Ignored for streams.
            destination: SocketAddr::from(([0, 0, 0, 0], 0)),
            len,
        })
    }

    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        self.ops.pop_front()
    }

    fn poll_event(&mut self) -> Option<TcpEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}
