//! Composition: one machine hosting child machines, each in its own socket-id namespace.
//!
//! Every machine names its sockets itself, from its own id space, so two children of one parent
//! may both call a socket `SocketId(0)`. A [`SocketMap`] gives each child (named by a key of the
//! parent's choosing, `K`) its own namespace: the ids the parent shows the runtime ("outer" ids)
//! are handed out by the map, one per child socket, and every intent, transmit, outcome and input
//! is translated on the way out and routed on the way in. No id arithmetic, no ranges to keep
//! apart, and every [`SocketOp`] variant is translated (an `Accept` names two sockets).
//!
//! The parent drains a child with [`SocketMap::poll_transmit`] and [`SocketMap::poll_socket_op`]
//! (which translate), and routes each input it receives with [`SocketMap::route`] to the child
//! and the child's own id. A socket can change hands with [`SocketMap::adopt`] (a child's
//! connection that the parent keeps, say).
//!
//! ```
//! use p2pd_proto::compose::SocketMap;
//! use p2pd_proto::{SocketId, SocketOp, Transport};
//!
//! #[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
//! enum Child { Signaling, Probe(u32) }
//!
//! let mut map = SocketMap::new();
//! let bind = |socket| SocketOp::Bind {
//!     socket,
//!     transport: Transport::Tcp,
//!     local: "0.0.0.0:0".parse().unwrap(),
//!     options: Default::default(),
//! };
//! // Both children call their socket 0; the runtime sees two different ids.
//! let a = map.outbound(Child::Signaling, bind(SocketId(0))).unwrap();
//! let b = map.outbound(Child::Probe(7), bind(SocketId(0))).unwrap();
//! assert_ne!(a.socket(), b.socket());
//! assert_eq!(map.route(b.socket()), Some((Child::Probe(7), SocketId(0))));
//! // A Close releases the outer id.
//! let close = map.outbound(Child::Probe(7), SocketOp::Close { socket: SocketId(0) }).unwrap();
//! assert_eq!(close.socket(), b.socket());
//! assert_eq!(map.route(b.socket()), None);
//! ```

use std::collections::BTreeMap;

use crate::machine::{Machine, SocketId, SocketOp, Transmit};

/// The socket-id namespaces of a parent's children (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct SocketMap<K> {
    /// (child, child's id) -> outer id.
    outer: BTreeMap<(K, SocketId), SocketId>,
    /// Outer id -> (child, child's id).
    inner: BTreeMap<SocketId, (K, SocketId)>,
    /// The next outer id to try.
    next: u32,
    /// Intents and transmits dropped because they named a socket the child never opened.
    unknown: u64,
}

impl<K: Copy + Ord> Default for SocketMap<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + Ord> SocketMap<K> {
    /// An empty map; outer ids are handed out from 0.
    pub fn new() -> Self {
        SocketMap {
            outer: BTreeMap::new(),
            inner: BTreeMap::new(),
            next: 0,
            unknown: 0,
        }
    }

    /// Translates a child's intent into the parent's namespace. A `Bind` (and an `Accept`'s new
    /// socket) opens a fresh outer id; a `Close` releases it after this call. `None` (and counted)
    /// if the intent names a socket the child does not hold.
    pub fn outbound(&mut self, child: K, op: SocketOp) -> Option<SocketOp> {
        let translated = match op {
            SocketOp::Bind {
                socket,
                transport,
                local,
                options,
            } => SocketOp::Bind {
                socket: self.open(child, socket),
                transport,
                local,
                options,
            },
            SocketOp::Accept { listener, socket } => {
                let listener = self.outer_of(child, listener)?;
                SocketOp::Accept {
                    listener,
                    socket: self.open(child, socket),
                }
            }
            SocketOp::Connect { socket, remote } => SocketOp::Connect {
                socket: self.outer_of(child, socket)?,
                remote,
            },
            SocketOp::Listen { socket, backlog } => SocketOp::Listen {
                socket: self.outer_of(child, socket)?,
                backlog,
            },
            SocketOp::SetTtl { socket, ttl } => SocketOp::SetTtl {
                socket: self.outer_of(child, socket)?,
                ttl,
            },
            SocketOp::Shutdown { socket } => SocketOp::Shutdown {
                socket: self.outer_of(child, socket)?,
            },
            SocketOp::Close { socket } => {
                let outer = self.outer_of(child, socket)?;
                self.release(outer);
                SocketOp::Close { socket: outer }
            }
        };
        Some(translated)
    }

    /// Translates a child's transmit; `None` (and counted) if its socket is not the child's.
    pub fn transmit(&mut self, child: K, transmit: Transmit) -> Option<Transmit> {
        let socket = self.outer_of(child, transmit.socket)?;
        Some(Transmit { socket, ..transmit })
    }

    /// The next transmit of `machine`, a child named `child`, translated. Transmits on sockets
    /// the child does not hold are dropped (and counted).
    pub fn poll_transmit<M: Machine + ?Sized>(
        &mut self,
        child: K,
        machine: &mut M,
        buf: &mut [u8],
    ) -> Option<Transmit> {
        loop {
            let t = machine.poll_transmit(buf)?;
            if let Some(t) = self.transmit(child, t) {
                return Some(t);
            }
        }
    }

    /// The next intent of `machine`, a child named `child`, translated (see
    /// [`SocketMap::outbound`]).
    pub fn poll_socket_op<M: Machine + ?Sized>(
        &mut self,
        child: K,
        machine: &mut M,
    ) -> Option<SocketOp> {
        loop {
            let op = machine.poll_socket_op()?;
            if let Some(op) = self.outbound(child, op) {
                return Some(op);
            }
        }
    }

    /// Which child holds the outer socket `outer`, and its own id for it.
    pub fn route(&self, outer: SocketId) -> Option<(K, SocketId)> {
        self.inner.get(&outer).copied()
    }

    /// The outer id of `child`'s socket `socket`, if it holds one.
    pub fn outer(&self, child: K, socket: SocketId) -> Option<SocketId> {
        self.outer.get(&(child, socket)).copied()
    }

    /// Moves `child`'s socket `socket` to `new_owner` under the id `as_id`: from now on inputs for
    /// it route there, and `new_owner` closes it. Returns its outer id. The old child's id stays
    /// an alias until the socket is closed, so output it queued before the hand-over (a last
    /// write, say) still goes out on the socket.
    pub fn adopt(
        &mut self,
        child: K,
        socket: SocketId,
        new_owner: K,
        as_id: SocketId,
    ) -> Option<SocketId> {
        let outer = self.outer.get(&(child, socket)).copied()?;
        self.outer.insert((new_owner, as_id), outer);
        self.inner.insert(outer, (new_owner, as_id));
        Some(outer)
    }

    /// Sockets held, over all children.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether no child holds a socket.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Whether `child` holds any socket.
    pub fn holds_any(&self, child: K) -> bool {
        self.inner.values().any(|(k, _)| *k == child)
    }

    /// Forgets every id `child` still holds, for a child that is retired (it names no socket
    /// again): an outstanding `Accept`'s id, which the child never closes because its
    /// listener's close ends it, and the aliases of sockets it handed over (those stay with
    /// their new owner). Returns how many sockets were forgotten.
    pub fn forget(&mut self, child: K) -> usize {
        let before = self.inner.len();
        self.inner.retain(|_, (k, _)| *k != child);
        self.outer.retain(|(k, _), _| *k != child);
        before.saturating_sub(self.inner.len())
    }

    /// Intents and transmits dropped because they named a socket their child did not hold.
    pub fn unknown(&self) -> u64 {
        self.unknown
    }

    fn outer_of(&mut self, child: K, socket: SocketId) -> Option<SocketId> {
        let found = self.outer.get(&(child, socket)).copied();
        if found.is_none() {
            self.unknown = self.unknown.saturating_add(1);
        }
        found
    }

    /// A fresh outer id for `child`'s `socket` (a second open of an id the child still holds
    /// replaces the first mapping).
    fn open(&mut self, child: K, socket: SocketId) -> SocketId {
        if let Some(old) = self.outer.get(&(child, socket)).copied() {
            self.release(old);
        }
        // Ids are handed out in order and skip those in use, so a released id is reused only
        // after every other one: a late input for a closed socket finds nothing.
        let mut id = SocketId(self.next);
        while self.inner.contains_key(&id) {
            id = SocketId(id.0.wrapping_add(1));
        }
        self.next = id.0.wrapping_add(1);
        self.outer.insert((child, socket), id);
        self.inner.insert(id, (child, socket));
        id
    }

    /// Forgets `outer` and every child id that names it (an adopted socket's alias too).
    fn release(&mut self, outer: SocketId) {
        if self.inner.remove(&outer).is_some() {
            self.outer.retain(|_, o| *o != outer);
        }
    }
}

#[cfg(test)]
mod tests;
