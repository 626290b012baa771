//! [`SocketTable`]: what a runtime holds for one machine, kept from its intents and the outcomes
//! handed back, so a fuzz target can answer the intents that are pending.

use core::net::SocketAddr;
use std::collections::BTreeMap;
use std::vec::Vec;

use crate::machine::{OpKind, SocketId, SocketOp, SocketOutcome, Transport};

/// One socket, as the runtime holds it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SocketState {
    /// A `Bind` not answered yet.
    Binding {
        /// UDP or TCP.
        transport: Transport,
        /// The address asked for.
        local: SocketAddr,
    },
    /// Bound (and, for TCP, neither listening nor connected).
    Bound {
        /// UDP or TCP.
        transport: Transport,
        /// The bound address.
        local: SocketAddr,
    },
    /// A listening TCP socket.
    Listening {
        /// The bound address.
        local: SocketAddr,
    },
    /// An `Accept` not answered yet.
    Accepting {
        /// Its listener.
        listener: SocketId,
    },
    /// A `Connect` not answered yet.
    Connecting {
        /// The bound address.
        local: SocketAddr,
        /// The address connected to.
        remote: SocketAddr,
    },
    /// A connected TCP stream.
    Stream {
        /// Our end.
        local: SocketAddr,
        /// The peer's end.
        remote: SocketAddr,
        /// Our sending half was shut down.
        shut: bool,
    },
}

/// The sockets a runtime holds for one machine: updated with every intent
/// ([`SocketTable::apply`]) and every outcome handed to the machine ([`SocketTable::outcome`]).
/// It answers nothing itself: a fuzz target picks the pending intents to answer
/// ([`SocketTable::pick`]) and checks what the machine may do on each socket.
#[derive(Clone, Debug, Default)]
pub struct SocketTable {
    map: BTreeMap<SocketId, SocketState>,
}

impl SocketTable {
    /// Applies an intent; returns the socket's state before it.
    pub fn apply(&mut self, op: &SocketOp) -> Option<SocketState> {
        let socket = op.socket();
        let before = self.map.get(&socket).copied();
        match *op {
            SocketOp::Bind {
                transport, local, ..
            } => {
                self.map
                    .insert(socket, SocketState::Binding { transport, local });
            }
            SocketOp::Listen { .. } => {
                if let Some(SocketState::Bound {
                    transport: Transport::Tcp,
                    local,
                }) = before
                {
                    self.map.insert(socket, SocketState::Listening { local });
                }
            }
            SocketOp::Accept { listener, .. } => {
                self.map.insert(socket, SocketState::Accepting { listener });
            }
            SocketOp::Connect { remote, .. } => {
                if let Some(SocketState::Bound {
                    transport: Transport::Tcp,
                    local,
                }) = before
                {
                    self.map
                        .insert(socket, SocketState::Connecting { local, remote });
                }
            }
            SocketOp::Shutdown { .. } => {
                if let Some(SocketState::Stream { shut, .. }) = self.map.get_mut(&socket) {
                    *shut = true;
                }
            }
            SocketOp::Close { .. } => {
                self.map.remove(&socket);
                if matches!(before, Some(SocketState::Listening { .. })) {
                    // The runtime drops the listener's outstanding accepts with it.
                    self.map.retain(|_, s| {
                        !matches!(s, SocketState::Accepting { listener } if *listener == socket)
                    });
                }
            }
            SocketOp::SetTtl { .. } => {}
        }
        before
    }

    /// Applies an outcome about to be handed to the machine for `socket`.
    pub fn outcome(&mut self, socket: SocketId, outcome: &SocketOutcome) {
        let state = self.map.get(&socket).copied();
        match (*outcome, state) {
            (SocketOutcome::Bound { local }, Some(SocketState::Binding { transport, .. })) => {
                self.map
                    .insert(socket, SocketState::Bound { transport, local });
            }
            (
                SocketOutcome::Connected { local, remote }
                | SocketOutcome::Accepted { local, remote },
                _,
            ) => {
                self.map.insert(
                    socket,
                    SocketState::Stream {
                        local,
                        remote,
                        shut: false,
                    },
                );
            }
            (
                SocketOutcome::Failed {
                    op: OpKind::Bind, ..
                },
                Some(SocketState::Binding { .. }),
            )
            | (
                SocketOutcome::Failed {
                    op: OpKind::Accept, ..
                },
                Some(SocketState::Accepting { .. }),
            ) => {
                self.map.remove(&socket);
            }
            (
                SocketOutcome::Failed {
                    op: OpKind::Connect,
                    ..
                },
                Some(SocketState::Connecting { local, .. }),
            ) => {
                self.map.insert(
                    socket,
                    SocketState::Bound {
                        transport: Transport::Tcp,
                        local,
                    },
                );
            }
            _ => {}
        }
    }

    /// The state of `socket`, if the runtime holds it.
    pub fn get(&self, socket: SocketId) -> Option<SocketState> {
        self.map.get(&socket).copied()
    }

    /// The sockets whose state passes `filter`, in id order.
    pub fn ids(&self, filter: impl Fn(&SocketState) -> bool) -> Vec<SocketId> {
        self.map
            .iter()
            .filter(|(_, s)| filter(s))
            .map(|(id, _)| *id)
            .collect()
    }

    /// The `which`-th (wrapping) of the sockets whose state passes `filter`.
    pub fn pick(&self, filter: impl Fn(&SocketState) -> bool, which: u8) -> Option<SocketId> {
        super::pick(&self.ids(filter), which)
    }

    /// How many sockets the runtime holds (pending accepts included).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the runtime holds no socket.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
