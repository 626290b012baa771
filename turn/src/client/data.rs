//! Relayed data: RFC 6062 data connections (Connect, ConnectionAttempt, ConnectionBind) for a TCP
//! allocation, Send indications for a UDP one.

use core::net::SocketAddr;

use p2pd_proto::stun::{Class, FrameStatus, Header, Message, MessageWriter, StreamFramer};
use p2pd_proto::{
    DropReason, Instant, OpKind, SocketId, SocketOp, SocketOutcome, Transport, Verdict,
};

use super::{
    DataConn, DataPhase, Kind, RelayTransport, State, TurnClient, TurnError, TurnEvent,
    TurnFailure, MAX_CONTROL_MESSAGE_LEN, MAX_DATA_CONNECTIONS, MAX_SEND_LEN, MAX_SEND_QUEUE,
};
use crate::codec::{method, TurnAttribute, TurnWriter};

impl TurnClient {
    /// Asks the relay to open a TCP connection to `peer` (RFC 6062 Connect; a permission for its
    /// IP is needed, [`TurnClient::create_permission`]). When the server answers, the machine
    /// opens a data connection to the server, binds it to the peer's connection
    /// (ConnectionBind) and reports [`TurnEvent::PeerConnected`] with the socket, or
    /// [`TurnEvent::PeerConnectFailed`].
    pub fn connect(&mut self, now: Instant, peer: SocketAddr) -> Result<(), TurnError> {
        if self.state != State::Allocated {
            return Err(TurnError::NotAllocated);
        }
        if self.config.transport != RelayTransport::Tcp {
            return Err(TurnError::NotTcpAllocation);
        }
        let connects = self
            .pending
            .iter()
            .filter(|p| matches!(p.kind, Kind::Connect { .. }))
            .count();
        if connects.saturating_add(self.data.len()) >= MAX_DATA_CONNECTIONS {
            return Err(TurnError::TooManyConnections);
        }
        let _ = self.start(now, Kind::Connect { peer });
        self.update_deadline();
        Ok(())
    }

    /// Sends `data` to `peer` through a UDP allocation (a Send indication on the control
    /// connection; RFC 8656 §11). The peer's IP needs a permission.
    pub fn send_to(
        &mut self,
        _now: Instant,
        peer: SocketAddr,
        data: &[u8],
    ) -> Result<(), TurnError> {
        if self.state != State::Allocated {
            return Err(TurnError::NotAllocated);
        }
        if self.config.transport != RelayTransport::Udp {
            return Err(TurnError::NotUdpAllocation);
        }
        if !self.permissions.iter().any(|p| p.ip() == peer.ip()) {
            return Err(TurnError::NoPermission);
        }
        if data.len() > MAX_SEND_LEN {
            return Err(TurnError::TooLong);
        }
        if self.sends.len() >= MAX_SEND_QUEUE {
            return Err(TurnError::QueueFull);
        }
        self.sends.push_back((peer, data.to_vec()));
        Ok(())
    }

    /// Writes the next Send indication into `buf`.
    pub(super) fn encode_send(&mut self, buf: &mut [u8]) -> Option<usize> {
        let (peer, data) = self.sends.pop_front()?;
        let header = Header::new(Class::Indication, method::SEND, self.new_id());
        let mut w = MessageWriter::new(buf, header).ok()?;
        w.add_turn(&header, &TurnAttribute::XorPeerAddress(peer))
            .ok()?;
        w.add_turn(&header, &TurnAttribute::Data(&data)).ok()?;
        w.add_fingerprint().ok()?;
        Some(w.finish())
    }

    /// Opens a data connection for the server's connection `id` to `peer`.
    pub(super) fn open_data(&mut self, now: Instant, peer: SocketAddr, id: u32) {
        if self.data.len() >= MAX_DATA_CONNECTIONS || self.next_data_socket == u32::MAX {
            self.ignore();
            return;
        }
        let socket = SocketId(self.next_data_socket);
        self.next_data_socket = self.next_data_socket.saturating_add(1);
        self.ops.push_back(SocketOp::Bind {
            socket,
            transport: Transport::Tcp,
            local: SocketAddr::new(self.config.local.ip(), 0),
            options: self.config.options,
        });
        self.data.push(DataConn {
            socket,
            peer,
            id,
            phase: DataPhase::Binding,
            deadline: now.saturating_add(self.config.timeout),
            opened: true,
            framer: StreamFramer::new(MAX_CONTROL_MESSAGE_LEN),
        });
    }

    /// Gives up the data connection at `at`: closes its socket, reports `failure`.
    pub(super) fn drop_data(&mut self, at: usize, failure: TurnFailure) {
        if at >= self.data.len() {
            return;
        }
        let conn = self.data.swap_remove(at);
        self.pending.retain(|p| p.socket != conn.socket);
        if conn.opened {
            self.ops.push_back(SocketOp::Close {
                socket: conn.socket,
            });
        }
        self.events.push_back(TurnEvent::PeerConnectFailed {
            peer: conn.peer,
            failure,
        });
    }

    /// Closes every data connection still being set up (no events: the machine is ending).
    pub(super) fn close_data(&mut self) {
        for conn in core::mem::take(&mut self.data) {
            self.pending.retain(|p| p.socket != conn.socket);
            if conn.opened {
                self.ops.push_back(SocketOp::Close {
                    socket: conn.socket,
                });
            }
        }
    }

    /// Bytes on a data connection: the ConnectionBind answer, then the peer's.
    pub(super) fn data_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        let Some(at) = self.data.iter().position(|c| c.socket == socket) else {
            return Verdict::Dropped(DropReason::UnknownSocket);
        };
        let Some(conn) = self.data.get_mut(at) else {
            return Verdict::Dropped(DropReason::UnknownSocket);
        };
        if conn.phase != DataPhase::Binding2 {
            return Verdict::Dropped(DropReason::Unexpected);
        }
        let rest = conn.framer.fill(data);
        let total = match conn.framer.status() {
            FrameStatus::Partial => return Verdict::Consumed,
            FrameStatus::Complete(total) => total,
            FrameStatus::Bad(e) => {
                self.drop_data(at, TurnFailure::Malformed(e));
                return Verdict::Dropped(DropReason::Malformed(e));
            }
        };
        // The answer leaves the connection (whose buffer is empty again) so the machine can be
        // updated while it is read.
        let framer =
            core::mem::replace(&mut conn.framer, StreamFramer::new(MAX_CONTROL_MESSAGE_LEN));
        let held = framer.held();
        let (frame, after) = held.split_at(total.min(held.len()));
        let msg = match Message::decode(frame) {
            Ok(m) => m,
            Err(e) => {
                self.drop_data(at, TurnFailure::Malformed(e));
                return Verdict::Dropped(DropReason::Malformed(e));
            }
        };
        let pending = self
            .pending
            .iter()
            .position(|p| p.socket == socket && p.id == msg.transaction_id() && !p.unsent);
        let (Some(pi), true) = (pending, msg.class().is_response()) else {
            self.drop_data(at, TurnFailure::BadResponse);
            return Verdict::Dropped(DropReason::UnknownTransaction);
        };
        let Some(p) = self.pending.get(pi).copied() else {
            return Verdict::Consumed;
        };
        if msg.class() == Class::Success {
            if !self.integrity_ok(&msg) {
                self.drop_data(at, TurnFailure::BadResponse);
                return Verdict::Dropped(DropReason::Unexpected);
            }
            self.pending.swap_remove(pi);
            let conn = self.data.swap_remove(at);
            let mut handed = after.to_vec();
            handed.extend_from_slice(rest);
            self.stats.connections = self.stats.connections.saturating_add(1);
            self.events.push_back(TurnEvent::PeerConnected {
                peer: conn.peer,
                socket,
                data: handed,
            });
        } else {
            self.pending.swap_remove(pi);
            // A 438 retries on the same connection (whose buffer is empty again); anything else
            // gives it up.
            self.error(now, p, &msg);
        }
        Verdict::Consumed
    }

    /// The outcome of an intent on a data connection.
    pub(super) fn data_outcome(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        let Some(at) = self.data.iter().position(|c| c.socket == socket) else {
            return;
        };
        let Some(conn) = self.data.get_mut(at) else {
            return;
        };
        match (conn.phase, outcome) {
            (DataPhase::Binding, SocketOutcome::Bound { .. }) => {
                conn.phase = DataPhase::Connecting;
                self.ops.push_back(SocketOp::Connect {
                    socket,
                    remote: self.config.server,
                });
            }
            (
                DataPhase::Binding,
                SocketOutcome::Failed {
                    op: OpKind::Bind,
                    error,
                    ..
                },
            ) => {
                conn.opened = false;
                self.drop_data(at, TurnFailure::BindFailed(error));
            }
            (DataPhase::Connecting, SocketOutcome::Connected { .. }) => {
                conn.phase = DataPhase::Binding2;
                let (id, deadline) = (conn.id, conn.deadline);
                // The data connection's deadline covers its ConnectionBind.
                if self.start(now, Kind::ConnectionBind { socket, id }) {
                    if let Some(p) = self.pending.last_mut() {
                        p.deadline = deadline;
                    }
                }
            }
            (
                DataPhase::Connecting,
                SocketOutcome::Failed {
                    op: OpKind::Connect,
                    error,
                    ..
                },
            ) => self.drop_data(at, TurnFailure::ConnectFailed(error)),
            (_, SocketOutcome::PeerClosed) => self.drop_data(at, TurnFailure::PeerClosed),
            (_, SocketOutcome::Failed { error, .. }) => {
                self.drop_data(at, TurnFailure::SocketError(error))
            }
            _ => {}
        }
    }
}
