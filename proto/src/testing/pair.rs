//! [`Pair`]: two machines on an in-memory network (the idea of quinn-proto's test `Pair`).
//!
//! Each side has one IP address. The network answers intents as a runtime would: `Bind` is
//! `Bound` at once (an ephemeral port for port 0, the side's IP for the unspecified address);
//! datagrams go to the other side's UDP socket bound on the destination port (and are dropped,
//! counted, when there is none); a TCP `Connect` reaches the other side's listener on the
//! destination port (`Connected` after a round trip; the connection waits in the listener's
//! backlog for an `Accept`, which is answered `Accepted`) or is refused when nobody listens
//! there; stream bytes arrive in order with `handle_stream`; `Shutdown` and `Close` reach the
//! other end as `PeerClosed`. Every delivery takes the direction's latency (zero by default).
//! Virtual time jumps to the next delivery or deadline. Every input and drain of both machines
//! goes through its [`ContractChecker`].

// Test support reports a machine that never settles the way the checker reports violations.
#![allow(clippy::panic)]

use core::fmt::Debug;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::ops::ControlFlow;
use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};
use std::vec::Vec;

use super::ContractChecker;
use crate::machine::{
    IoError, Machine, OpKind, Outputs, SocketId, SocketOp, SocketOutcome, Transmit, Transport,
    Verdict, TRANSMIT_BUFFER_LEN,
};
use crate::time::Instant;

/// The first port handed out for port 0.
const EPHEMERAL: u16 = 49_152;

/// Steps [`Pair::drive`] and [`Pair::drive_until`] take before they decide the pair never
/// settles.
const MAX_STEPS: u32 = 200_000;

/// `EPIPE`: a transmit after `Shutdown`.
const EPIPE: i32 = 32;
/// `ENOTCONN`: a transmit on a TCP socket that is not connected.
const ENOTCONN: i32 = 107;

/// One socket as the in-memory runtime of one side holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Sock {
    Udp {
        local: SocketAddr,
    },
    /// A bound TCP socket, not listening nor connected.
    TcpBound {
        local: SocketAddr,
    },
    Listening {
        local: SocketAddr,
        /// Connections that arrived and wait for an `Accept`.
        backlog: VecDeque<usize>,
        /// Accept ids waiting for a connection.
        accepts: VecDeque<SocketId>,
    },
    Connecting {
        local: SocketAddr,
        remote: SocketAddr,
    },
    Stream {
        conn: usize,
        local: SocketAddr,
        remote: SocketAddr,
        /// Our sending half was shut down.
        shut: bool,
    },
}

impl Sock {
    /// A new stream on connection `conn`, open both ways.
    fn stream(conn: usize, local: SocketAddr, remote: SocketAddr) -> Sock {
        Sock::Stream {
            conn,
            local,
            remote,
            shut: false,
        }
    }

    fn local(&self) -> SocketAddr {
        match *self {
            Sock::Udp { local }
            | Sock::TcpBound { local }
            | Sock::Listening { local, .. }
            | Sock::Connecting { local, .. }
            | Sock::Stream { local, .. } => local,
        }
    }

    fn transport(&self) -> Transport {
        if matches!(self, Sock::Udp { .. }) {
            Transport::Udp
        } else {
            Transport::Tcp
        }
    }
}

/// One TCP connection between the two sides, indexed by side.
#[derive(Debug)]
struct Conn {
    /// Each side's socket for it (`None` on the listening side before the accept).
    socket: [Option<SocketId>; 2],
    /// Each end's address.
    addr: [SocketAddr; 2],
    /// The side closed its end: what arrives for it is dropped.
    closed: [bool; 2],
    /// What arrived for a side that has not accepted the connection yet.
    early: [Vec<Arrival>; 2],
}

/// What a delivery carries to one side.
#[derive(Clone, Debug)]
enum Arrival {
    Datagram {
        to: SocketAddr,
        from: SocketAddr,
        data: Vec<u8>,
    },
    /// A connection attempt from `from_socket` (at `from`) on the other side.
    Syn {
        from_socket: SocketId,
        from: SocketAddr,
        to: SocketAddr,
    },
    /// The answer to our `Connect` on `socket`: the connection, or `None` if refused.
    SynAck {
        socket: SocketId,
        conn: Option<usize>,
    },
    Bytes {
        conn: usize,
        data: Vec<u8>,
    },
    /// The other end's sending half ended.
    Fin {
        conn: usize,
    },
}

#[derive(Debug)]
struct Delivery {
    at: Instant,
    seq: u64,
    to: usize,
    what: Arrival,
}

/// The network between the two sides: the clock, what is in flight and the TCP connections.
#[derive(Debug)]
struct Net {
    now: Instant,
    /// Latency from side 0 to side 1, and from side 1 to side 0.
    latency: [Duration; 2],
    ips: [IpAddr; 2],
    flight: Vec<Delivery>,
    seq: u64,
    conns: Vec<Conn>,
    dropped: u64,
}

impl Net {
    /// Sends `what` from side `from` to the other side, after the direction's latency.
    fn send(&mut self, from: usize, what: Arrival) {
        let delay = self.latency.get(from).copied().unwrap_or_default();
        self.push(self.now.saturating_add(delay), other(from), what);
    }

    fn push(&mut self, at: Instant, to: usize, what: Arrival) {
        self.seq = self.seq.saturating_add(1);
        self.flight.push(Delivery {
            at,
            seq: self.seq,
            to,
            what,
        });
    }

    /// The index and time of the next delivery (earliest, then first sent).
    fn next(&self) -> Option<(usize, Instant)> {
        self.flight
            .iter()
            .enumerate()
            .min_by_key(|(_, d)| (d.at, d.seq))
            .map(|(i, d)| (i, d.at))
    }

    fn ip(&self, side: usize) -> IpAddr {
        self.ips
            .get(side)
            .copied()
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// Where connection `conn` stands for side `me`: its open socket, or why there is none.
    fn end(&self, conn: usize, me: usize) -> End {
        match self.conns.get(conn) {
            Some(c) if c.closed.get(me).copied().unwrap_or(true) => End::Gone,
            Some(c) => match c.socket.get(me).copied().flatten() {
                Some(s) => End::Open(s),
                None => End::NotAccepted,
            },
            None => End::Gone,
        }
    }

    fn set_end(&mut self, conn: usize, me: usize, socket: Option<SocketId>, closed: bool) {
        if let Some(c) = self.conns.get_mut(conn) {
            if let Some(s) = c.socket.get_mut(me) {
                *s = socket;
            }
            if let Some(cl) = c.closed.get_mut(me) {
                *cl = closed;
            }
        }
    }
}

enum End {
    Open(SocketId),
    NotAccepted,
    Gone,
}

fn other(side: usize) -> usize {
    usize::from(side == 0)
}

/// The in-memory runtime's sockets of one side.
#[derive(Debug)]
struct Sockets {
    map: BTreeMap<SocketId, Sock>,
    next_port: u16,
}

impl Sockets {
    fn port_in_use(&self, transport: Transport, port: u16) -> bool {
        self.map
            .values()
            .any(|s| s.transport() == transport && s.local().port() == port)
    }

    fn ephemeral(&mut self, transport: Transport) -> u16 {
        loop {
            let port = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(EPHEMERAL);
            if !self.port_in_use(transport, port) {
                return port;
            }
        }
    }

    /// Carries out `op` for side `me`; outcomes known at once are pushed to `answered`.
    fn apply(
        &mut self,
        me: usize,
        net: &mut Net,
        op: SocketOp,
        answered: &mut VecDeque<(SocketId, SocketOutcome)>,
    ) {
        let fail = |op: OpKind, error: IoError| SocketOutcome::Failed {
            op,
            destination: None,
            error,
        };
        let ip = net.ip(me);
        match op {
            SocketOp::Bind {
                socket,
                transport,
                local,
                options,
            } => {
                let result = if self.map.contains_key(&socket) {
                    Err(IoError::AddrInUse)
                } else if !local.ip().is_unspecified() && local.ip() != ip {
                    Err(IoError::AddrNotAvailable)
                } else if local.port() == 0 {
                    Ok(SocketAddr::new(ip, self.ephemeral(transport)))
                } else if self.port_in_use(transport, local.port())
                    && !(options.reuse_address || options.reuse_port)
                {
                    Err(IoError::AddrInUse)
                } else {
                    Ok(SocketAddr::new(ip, local.port()))
                };
                let outcome = match result {
                    Ok(local) => {
                        let sock = match transport {
                            Transport::Udp => Sock::Udp { local },
                            Transport::Tcp => Sock::TcpBound { local },
                        };
                        self.map.insert(socket, sock);
                        SocketOutcome::Bound { local }
                    }
                    Err(e) => fail(OpKind::Bind, e),
                };
                answered.push_back((socket, outcome));
            }
            SocketOp::Listen { socket, .. } => match self.map.get(&socket) {
                Some(Sock::TcpBound { local }) => {
                    let local = *local;
                    self.map.insert(
                        socket,
                        Sock::Listening {
                            local,
                            backlog: VecDeque::new(),
                            accepts: VecDeque::new(),
                        },
                    );
                }
                Some(_) => answered.push_back((socket, fail(OpKind::Listen, IoError::Other(None)))),
                None => answered.push_back((socket, fail(OpKind::Listen, IoError::UnknownSocket))),
            },
            SocketOp::Accept { listener, socket } => match self.map.get_mut(&listener) {
                Some(Sock::Listening { accepts, .. }) => {
                    accepts.push_back(socket);
                    self.pair_accepts(me, net, listener, answered);
                }
                _ => answered.push_back((socket, fail(OpKind::Accept, IoError::UnknownSocket))),
            },
            SocketOp::Connect { socket, remote } => match self.map.get(&socket) {
                Some(Sock::TcpBound { local }) => {
                    let local = *local;
                    if remote.ip() == net.ip(other(me)) {
                        self.map.insert(socket, Sock::Connecting { local, remote });
                        net.send(
                            me,
                            Arrival::Syn {
                                from_socket: socket,
                                from: local,
                                to: remote,
                            },
                        );
                    } else {
                        let outcome = SocketOutcome::Failed {
                            op: OpKind::Connect,
                            destination: Some(remote),
                            error: IoError::HostUnreachable,
                        };
                        answered.push_back((socket, outcome));
                    }
                }
                Some(_) => {
                    answered.push_back((socket, fail(OpKind::Connect, IoError::Other(None))))
                }
                None => answered.push_back((socket, fail(OpKind::Connect, IoError::UnknownSocket))),
            },
            SocketOp::SetTtl { socket, .. } => {
                if !self.map.contains_key(&socket) {
                    answered.push_back((socket, fail(OpKind::SetTtl, IoError::UnknownSocket)));
                }
            }
            SocketOp::Shutdown { socket } => match self.map.get_mut(&socket) {
                Some(Sock::Stream { conn, shut, .. }) => {
                    if !*shut {
                        *shut = true;
                        net.send(me, Arrival::Fin { conn: *conn });
                    }
                }
                Some(_) => answered.push_back((
                    socket,
                    fail(OpKind::Shutdown, IoError::Other(Some(ENOTCONN))),
                )),
                None => {
                    answered.push_back((socket, fail(OpKind::Shutdown, IoError::UnknownSocket)))
                }
            },
            SocketOp::Close { socket } => match self.map.remove(&socket) {
                Some(Sock::Stream { conn, shut, .. }) => {
                    if !shut {
                        net.send(me, Arrival::Fin { conn });
                    }
                    net.set_end(conn, me, Some(socket), true);
                }
                Some(Sock::Listening { backlog, .. }) => {
                    // Connections never accepted are reset with the listener.
                    for conn in backlog {
                        net.send(me, Arrival::Fin { conn });
                        net.set_end(conn, me, None, true);
                    }
                }
                _ => {}
            },
        }
    }

    /// Pairs the listener's waiting connections with its waiting accepts. What arrived early on
    /// a connection is delivered again right after its `Accepted`.
    fn pair_accepts(
        &mut self,
        me: usize,
        net: &mut Net,
        listener: SocketId,
        answered: &mut VecDeque<(SocketId, SocketOutcome)>,
    ) {
        loop {
            let Some(Sock::Listening {
                local,
                backlog,
                accepts,
            }) = self.map.get_mut(&listener)
            else {
                return;
            };
            if backlog.is_empty() || accepts.is_empty() {
                return;
            }
            let local = *local;
            let (Some(conn), Some(socket)) = (backlog.pop_front(), accepts.pop_front()) else {
                return;
            };
            let Some(c) = net.conns.get_mut(conn) else {
                continue;
            };
            let remote = c.addr.get(other(me)).copied().unwrap_or(local);
            if let Some(s) = c.socket.get_mut(me) {
                *s = Some(socket);
            }
            let early = c.early.get_mut(me).map(core::mem::take).unwrap_or_default();
            self.map.insert(socket, Sock::stream(conn, local, remote));
            answered.push_back((socket, SocketOutcome::Accepted { local, remote }));
            let now = net.now;
            for what in early {
                net.push(now, me, what);
            }
        }
    }

    /// Sends a transmit from side `me`; a failure known at once is pushed to `answered`.
    fn transmit(
        &mut self,
        me: usize,
        net: &mut Net,
        t: Transmit,
        bytes: &[u8],
        answered: &mut VecDeque<(SocketId, SocketOutcome)>,
    ) {
        let failed = |error| SocketOutcome::Failed {
            op: OpKind::Send,
            destination: Some(t.destination),
            error,
        };
        match self.map.get(&t.socket) {
            Some(Sock::Udp { local }) => {
                if t.destination.ip() == net.ip(other(me)) {
                    let from = *local;
                    net.send(
                        me,
                        Arrival::Datagram {
                            to: t.destination,
                            from,
                            data: bytes.to_vec(),
                        },
                    );
                } else {
                    net.dropped = net.dropped.saturating_add(1);
                }
            }
            Some(Sock::Stream { conn, shut, .. }) => {
                if *shut {
                    answered.push_back((t.socket, failed(IoError::Other(Some(EPIPE)))));
                } else {
                    let conn = *conn;
                    net.send(
                        me,
                        Arrival::Bytes {
                            conn,
                            data: bytes.to_vec(),
                        },
                    );
                }
            }
            Some(_) => answered.push_back((t.socket, failed(IoError::Other(Some(ENOTCONN))))),
            None => answered.push_back((t.socket, failed(IoError::UnknownSocket))),
        }
    }
}

/// [`Outputs`] of one side: transmits go on the network, intents to the in-memory runtime,
/// events to the side's list; outcomes known at once are handed back.
struct Wire<'a, E> {
    me: usize,
    net: &'a mut Net,
    sockets: &'a mut Sockets,
    events: &'a mut Vec<E>,
    transmits: &'a mut Vec<(Transmit, Vec<u8>)>,
    ops: &'a mut Vec<SocketOp>,
    answered: &'a mut VecDeque<(SocketId, SocketOutcome)>,
}

impl<M: Machine + ?Sized> Outputs<M> for Wire<'_, M::Event> {
    fn transmit(&mut self, transmit: Transmit, bytes: &[u8]) {
        self.transmits.push((transmit, bytes.to_vec()));
        self.sockets
            .transmit(self.me, self.net, transmit, bytes, self.answered);
    }

    fn socket_op(&mut self, op: SocketOp) {
        self.ops.push(op);
        self.sockets.apply(self.me, self.net, op, self.answered);
    }

    fn event(&mut self, _: &mut M, event: M::Event) -> ControlFlow<()> {
        self.events.push(event);
        ControlFlow::Continue(())
    }

    fn outcome(&mut self) -> Option<(Instant, SocketId, SocketOutcome)> {
        let (socket, outcome) = self.answered.pop_front()?;
        Some((self.net.now, socket, outcome))
    }
}

/// One side of a [`Pair`]: its machine, its checker, and what the machine produced.
pub struct Side<M: Machine> {
    /// The machine.
    pub machine: M,
    /// Its contract checker (every input and drain goes through it).
    pub checker: ContractChecker<M::Event>,
    /// Events not taken yet.
    pub events: Vec<M::Event>,
    /// Every transmit the machine made, with its payload.
    pub transmits: Vec<(Transmit, Vec<u8>)>,
    /// Every intent the machine emitted.
    pub ops: Vec<SocketOp>,
    /// The machine's verdicts on the datagrams and stream bytes delivered to it.
    pub verdicts: Vec<Verdict>,
    sockets: Sockets,
    deadline: Option<Instant>,
    answered: VecDeque<(SocketId, SocketOutcome)>,
}

impl<M: Machine> Debug for Side<M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Side")
            .field("sockets", &self.sockets)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<M: Machine> Side<M>
where
    M::Event: Debug,
{
    fn new(name: &'static str, machine: M) -> Self {
        Side {
            machine,
            checker: ContractChecker::new(name, |_| false),
            events: Vec::new(),
            transmits: Vec::new(),
            ops: Vec::new(),
            verdicts: Vec::new(),
            sockets: Sockets {
                map: BTreeMap::new(),
                next_port: EPHEMERAL,
            },
            deadline: None,
            answered: VecDeque::new(),
        }
    }

    /// Takes the events reported so far.
    pub fn take_events(&mut self) -> Vec<M::Event> {
        core::mem::take(&mut self.events)
    }

    /// The machine's deadline after its last drain.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The local address of socket `id` in the in-memory runtime, while it is open there.
    pub fn local_addr(&self, id: SocketId) -> Option<SocketAddr> {
        self.sockets.map.get(&id).map(Sock::local)
    }

    /// How many sockets the in-memory runtime holds for this side.
    pub fn open_sockets(&self) -> usize {
        self.sockets.map.len()
    }

    fn drain(&mut self, me: usize, net: &mut Net, timeout: bool) {
        let now = net.now;
        let mut buf = [0u8; TRANSMIT_BUFFER_LEN];
        let mut out = Wire {
            me,
            net,
            sockets: &mut self.sockets,
            events: &mut self.events,
            transmits: &mut self.transmits,
            ops: &mut self.ops,
            answered: &mut self.answered,
        };
        let flow = if timeout {
            self.checker
                .timeout(&mut self.machine, now, &mut buf, &mut out)
        } else {
            self.checker.drain(&mut self.machine, &mut buf, &mut out)
        };
        self.deadline = flow.continue_value().flatten();
    }

    fn input<R>(&mut self, me: usize, net: &mut Net, f: impl FnOnce(&mut M, Instant) -> R) -> R {
        self.checker.input(net.now);
        let r = f(&mut self.machine, net.now);
        self.drain(me, net, false);
        r
    }

    fn outcome(&mut self, me: usize, net: &mut Net, socket: SocketId, outcome: SocketOutcome) {
        self.checker.input(net.now);
        self.checker.outcome(socket, &outcome);
        self.machine.handle_socket_result(net.now, socket, outcome);
        self.drain(me, net, false);
    }

    /// Something arrived for this side (`me`).
    fn arrive(&mut self, me: usize, net: &mut Net, what: Arrival) {
        match what {
            Arrival::Datagram { to, from, data } => {
                let target = self.sockets.map.iter().find_map(|(id, s)| match s {
                    Sock::Udp { local } if local.port() == to.port() => Some(*id),
                    _ => None,
                });
                match target {
                    Some(socket) => {
                        let v = self.input(me, net, |m, now| {
                            m.handle_datagram(now, socket, from, &data)
                        });
                        self.verdicts.push(v);
                    }
                    None => net.dropped = net.dropped.saturating_add(1),
                }
            }
            Arrival::Syn {
                from_socket,
                from,
                to,
            } => {
                let listener = self.sockets.map.iter().find_map(|(id, s)| match s {
                    Sock::Listening { local, .. } if local.port() == to.port() => {
                        Some((*id, *local))
                    }
                    _ => None,
                });
                let Some((listener, local)) = listener else {
                    net.send(
                        me,
                        Arrival::SynAck {
                            socket: from_socket,
                            conn: None,
                        },
                    );
                    return;
                };
                let conn = net.conns.len();
                let (socket, addr) = if me == 0 {
                    ([None, Some(from_socket)], [local, from])
                } else {
                    ([Some(from_socket), None], [from, local])
                };
                net.conns.push(Conn {
                    socket,
                    addr,
                    closed: [false, false],
                    early: [Vec::new(), Vec::new()],
                });
                net.send(
                    me,
                    Arrival::SynAck {
                        socket: from_socket,
                        conn: Some(conn),
                    },
                );
                if let Some(Sock::Listening { backlog, .. }) = self.sockets.map.get_mut(&listener) {
                    backlog.push_back(conn);
                }
                let mut answered = VecDeque::new();
                self.sockets.pair_accepts(me, net, listener, &mut answered);
                for (socket, outcome) in answered {
                    self.outcome(me, net, socket, outcome);
                }
            }
            Arrival::SynAck { socket, conn } => {
                let Some(Sock::Connecting { local, remote }) =
                    self.sockets.map.get(&socket).cloned()
                else {
                    // The socket is gone: the other end reads EOF.
                    if let Some(conn) = conn {
                        net.set_end(conn, me, None, true);
                        net.send(me, Arrival::Fin { conn });
                    }
                    return;
                };
                match conn {
                    Some(conn) => {
                        self.sockets
                            .map
                            .insert(socket, Sock::stream(conn, local, remote));
                        self.outcome(me, net, socket, SocketOutcome::Connected { local, remote });
                    }
                    None => {
                        self.sockets.map.insert(socket, Sock::TcpBound { local });
                        let refused = SocketOutcome::Failed {
                            op: OpKind::Connect,
                            destination: Some(remote),
                            error: IoError::ConnectionRefused,
                        };
                        self.outcome(me, net, socket, refused);
                    }
                }
            }
            Arrival::Bytes { conn, data } => match net.end(conn, me) {
                End::Open(socket) => {
                    let v = self.input(me, net, |m, now| m.handle_stream(now, socket, &data));
                    self.verdicts.push(v);
                }
                End::NotAccepted => early(net, conn, me, Arrival::Bytes { conn, data }),
                End::Gone => net.dropped = net.dropped.saturating_add(1),
            },
            Arrival::Fin { conn } => match net.end(conn, me) {
                End::Open(socket) => self.outcome(me, net, socket, SocketOutcome::PeerClosed),
                End::NotAccepted => early(net, conn, me, Arrival::Fin { conn }),
                End::Gone => {}
            },
        }
    }
}

fn early(net: &mut Net, conn: usize, me: usize, what: Arrival) {
    if let Some(e) = net.conns.get_mut(conn).and_then(|c| c.early.get_mut(me)) {
        e.push(what);
    }
}

/// Two machines, `a` and `b`, on an in-memory network (see the `testing` module docs).
///
/// ```
/// use p2pd_proto::client::{ClientConfig, ClientEvent, Request, StunClient};
/// use p2pd_proto::server::{ServerConfig, StunServer};
/// use p2pd_proto::testing::Pair;
///
/// let server = StunServer::new(ServerConfig::single("10.0.0.2:3478".parse().unwrap())).unwrap();
/// let client = StunClient::new(ClientConfig::default(), 7);
/// let mut pair = Pair::new(client, server);
/// let socket = pair
///     .input_a(|c, now| c.open_socket(now, "0.0.0.0:0".parse().unwrap(), Default::default()))
///     .unwrap();
/// pair.input_a(|c, now| c.start(now, Request::binding(socket, "10.0.0.2:3478".parse().unwrap())))
///     .unwrap();
/// pair.drive();
/// let mapped = pair.a.events.iter().find_map(|e| match e {
///     ClientEvent::Transaction(t) => t.outcome.as_ref().ok().map(|o| o.mapped),
///     _ => None,
/// });
/// assert_eq!(mapped, pair.a.local_addr(socket));
/// ```
pub struct Pair<A: Machine, B: Machine> {
    /// Side `a` (IP 10.0.0.1 unless set with [`Pair::ips`]).
    pub a: Side<A>,
    /// Side `b` (IP 10.0.0.2 unless set).
    pub b: Side<B>,
    net: Net,
    started: bool,
}

impl<A: Machine, B: Machine> Debug for Pair<A, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pair")
            .field("now", &self.net.now)
            .field("in_flight", &self.net.flight.len())
            .field("a", &self.a)
            .field("b", &self.b)
            .finish_non_exhaustive()
    }
}

/// What [`Pair::step`] does next.
enum Next {
    Deliver(usize),
    TimeoutA,
    TimeoutB,
}

impl<A: Machine, B: Machine> Pair<A, B>
where
    A::Event: Debug,
    B::Event: Debug,
{
    /// `a` and `b` at [`Instant::ZERO`], on 10.0.0.1 and 10.0.0.2, without latency. Their
    /// checkers know no final event (see [`Pair::final_events`]).
    pub fn new(a: A, b: B) -> Self {
        Pair {
            a: Side::new(core::any::type_name::<A>(), a),
            b: Side::new(core::any::type_name::<B>(), b),
            net: Net {
                now: Instant::ZERO,
                latency: [Duration::ZERO; 2],
                ips: [
                    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                ],
                flight: Vec::new(),
                seq: 0,
                conns: Vec::new(),
                dropped: 0,
            },
            started: false,
        }
    }

    /// The sides' IP addresses.
    pub fn ips(mut self, a: IpAddr, b: IpAddr) -> Self {
        self.net.ips = [a, b];
        self
    }

    /// The latency from `a` to `b` and from `b` to `a`.
    pub fn latency(mut self, a_to_b: Duration, b_to_a: Duration) -> Self {
        self.net.latency = [a_to_b, b_to_a];
        self
    }

    /// Starts the clock at `now`.
    pub fn at(mut self, now: Instant) -> Self {
        self.net.now = now;
        self
    }

    /// Tells each side's checker its machine's final event (see [`ContractChecker::new`]).
    pub fn final_events(mut self, a: fn(&A::Event) -> bool, b: fn(&B::Event) -> bool) -> Self {
        self.a.checker = ContractChecker::new(core::any::type_name::<A>(), a);
        self.b.checker = ContractChecker::new(core::any::type_name::<B>(), b);
        self
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.net.now
    }

    /// The IP address of `a` and of `b`.
    pub fn ip_a(&self) -> IpAddr {
        self.net.ip(0)
    }

    /// The IP address of `b`.
    pub fn ip_b(&self) -> IpAddr {
        self.net.ip(1)
    }

    /// Deliveries in flight.
    pub fn in_flight(&self) -> usize {
        self.net.flight.len()
    }

    /// Datagrams dropped (no socket on the destination port, or not addressed to the other
    /// side) and stream bytes that arrived after their socket was closed.
    pub fn dropped(&self) -> u64 {
        self.net.dropped
    }

    /// Drains both machines once (what their constructors queued), if not done yet.
    fn start(&mut self) {
        if !self.started {
            self.started = true;
            self.a.checker.input(self.net.now);
            self.a.drain(0, &mut self.net, false);
            self.b.checker.input(self.net.now);
            self.b.drain(1, &mut self.net, false);
        }
    }

    /// Gives `a` an input or a command at the current time, then drains it.
    pub fn input_a<R>(&mut self, f: impl FnOnce(&mut A, Instant) -> R) -> R {
        self.start();
        self.a.input(0, &mut self.net, f)
    }

    /// Gives `b` an input or a command at the current time, then drains it.
    pub fn input_b<R>(&mut self, f: impl FnOnce(&mut B, Instant) -> R) -> R {
        self.start();
        self.b.input(1, &mut self.net, f)
    }

    /// The time of the next thing to happen (a delivery or a deadline), if any.
    pub fn next_time(&self) -> Option<Instant> {
        self.next().map(|(t, _)| t)
    }

    fn next(&self) -> Option<(Instant, Next)> {
        let mut best: Option<(Instant, Next)> =
            self.net.next().map(|(i, at)| (at, Next::Deliver(i)));
        for (deadline, next) in [
            (self.a.deadline, Next::TimeoutA),
            (self.b.deadline, Next::TimeoutB),
        ] {
            if let Some(d) = deadline {
                if best.as_ref().is_none_or(|(t, _)| d < *t) {
                    best = Some((d, next));
                }
            }
        }
        best
    }

    /// Does the next thing: delivers what arrives first, or fires the earliest deadline (a
    /// delivery first at the same instant), moving the clock to it if it is later. Returns
    /// `false` if nothing is in flight and neither machine has a deadline.
    pub fn step(&mut self) -> bool {
        self.start();
        let Some((at, next)) = self.next() else {
            return false;
        };
        self.net.now = self.net.now.max(at);
        match next {
            Next::Deliver(i) => {
                let d = self.net.flight.swap_remove(i);
                if d.to == 0 {
                    self.a.arrive(0, &mut self.net, d.what);
                } else {
                    self.b.arrive(1, &mut self.net, d.what);
                }
            }
            Next::TimeoutA => self.a.drain(0, &mut self.net, true),
            Next::TimeoutB => self.b.drain(1, &mut self.net, true),
        }
        true
    }

    /// Steps until nothing is in flight and neither machine has a deadline. Panics if that does
    /// not happen within a bounded number of steps (a machine with a periodic timer never goes
    /// idle: use [`Pair::drive_for`] or [`Pair::drive_until`]).
    pub fn drive(&mut self) {
        for _ in 0..MAX_STEPS {
            if !self.step() {
                return;
            }
        }
        panic!("the pair is still busy after {MAX_STEPS} steps: {self:?}");
    }

    /// Steps until `done` is true (checked before every step); `false` if the pair went idle
    /// first. Panics after a bounded number of steps.
    pub fn drive_until(&mut self, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        self.start();
        for _ in 0..MAX_STEPS {
            if done(self) {
                return true;
            }
            if !self.step() {
                return done(self);
            }
        }
        panic!("the condition still does not hold after {MAX_STEPS} steps: {self:?}");
    }

    /// Steps through everything that happens in the next `d`, then leaves the clock at the end.
    pub fn drive_for(&mut self, d: Duration) {
        self.start();
        let end = self.net.now.saturating_add(d);
        while self.next_time().is_some_and(|t| t <= end) {
            self.step();
        }
        self.net.now = self.net.now.max(end);
    }
}

#[cfg(test)]
mod tests;
