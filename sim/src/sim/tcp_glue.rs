//! The simulator's TCP side: socket intents and transmits on TCP sockets go to the host's
//! [`TcpStack`]; its segments travel as packets; host up/down and kill/restart.

use core::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use p2pd_proto::{
    Instant, IoError, Machine, OpKind, SocketId, SocketOp, SocketOutcome, Transmit, Verdict,
};

use super::{fail, Event, HostId, NatId, Packet, Protocol, Sim, SimSocket};
use crate::natbox::NatTcpConfig;
use crate::node::Typed;
use crate::tcp::{Segment, TcpConfig, TcpHeader, TcpOut, TcpStats};

/// The machine of a killed host ([`Sim::kill_host`]): it does nothing.
#[derive(Debug, Default)]
pub struct Dead;

impl Machine for Dead {
    type Event = ();

    fn handle_datagram(&mut self, _: Instant, _: SocketId, _: SocketAddr, _: &[u8]) -> Verdict {
        Verdict::NotMine
    }

    fn handle_socket_result(&mut self, _: Instant, _: SocketId, _: SocketOutcome) {}

    fn handle_timeout(&mut self, _: Instant) {}

    fn poll_transmit(&mut self, _: &mut [u8]) -> Option<Transmit> {
        None
    }

    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        None
    }

    fn poll_event(&mut self) -> Option<()> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

impl Sim {
    /// Sets a host's TCP settings, from now on (a connection's current RTO stays until its next
    /// RTT sample or backoff).
    pub fn set_tcp_config(&mut self, host: HostId, config: TcpConfig) {
        self.host_mut(host).tcp.config = config;
    }

    /// Sets how a NAT box treats TCP.
    pub fn set_nat_tcp(&mut self, nat: NatId, config: NatTcpConfig) {
        self.nat_mut(nat).tcp = config;
    }

    /// TCP counters summed over every host, plus the links' losses and duplicates of segments.
    pub fn tcp_stats(&self) -> TcpStats {
        let mut total = self.tcp_net;
        for h in &self.hosts {
            total.add(&h.tcp.stats);
        }
        total
    }

    /// One host's TCP counters.
    pub fn host_tcp_stats(&self, host: HostId) -> TcpStats {
        self.host_ref(host).tcp.stats
    }

    /// How many sockets the host's machine holds (UDP and TCP: bound, listening, connected, or
    /// ended but not yet closed).
    pub fn socket_count(&self, host: HostId) -> usize {
        self.host_ref(host).sockets.len()
    }

    /// The ids and local ports of the sockets the host's machine holds (to say which leaked).
    pub fn socket_list(&self, host: HostId) -> Vec<(SocketId, u16)> {
        self.host_ref(host)
            .sockets
            .iter()
            .map(|(id, s)| (*id, s.port))
            .collect()
    }

    /// How many TCP connections the host's stack keeps, in every state (unaccepted, closing and
    /// TIME-WAIT included).
    pub fn tcp_connections(&self, host: HostId) -> usize {
        self.host_ref(host).tcp.connections()
    }

    /// Cuts a host off the network (`true`) or reconnects it (`false`). While it is down every
    /// packet to or from it is dropped ([`crate::SimStats::dropped_host_down`]); its machine and
    /// TCP keep running (timers fire, retransmissions are lost), as with a pulled cable.
    pub fn set_host_down(&mut self, host: HostId, down: bool) {
        self.host_mut(host).down = down;
    }

    /// Kills the host's process: every TCP connection with a peer is reset (an RST goes out), every
    /// socket is forgotten, and the machine is replaced by [`Dead`] (its events are lost). The
    /// host keeps its IPs; [`Sim::restart_host`] runs a new machine on it.
    pub fn kill_host(&mut self, host: HostId) {
        self.restart_host(host, Dead);
    }

    /// Kills the host's process as [`Sim::kill_host`] does, then runs `machine` there (drained at
    /// once, like a new host's).
    pub fn restart_host<M>(&mut self, host: HostId, machine: M)
    where
        M: Machine + 'static,
        M::Event: core::fmt::Debug + 'static,
    {
        let mut out = Vec::new();
        let h = self.host_mut(host);
        h.tcp.abort_all(&mut out);
        h.sockets.clear();
        h.timer = None;
        h.fired = (Instant::MAX, 0);
        h.node = Box::new(Typed::new(machine));
        self.apply_tcp(host, out);
        self.service(host);
    }

    // --- intents ---

    fn tcp_socket_check(&self, id: HostId, socket: SocketId) -> Result<(), IoError> {
        match self.host_ref(id).sockets.get(&socket) {
            None => Err(IoError::UnknownSocket),
            Some(s) if s.protocol != Protocol::Tcp => Err(IoError::Other(None)),
            Some(_) => Ok(()),
        }
    }

    pub(super) fn tcp_connect(&mut self, id: HostId, socket: SocketId, remote: SocketAddr) {
        let now = self.now;
        let mut out = Vec::new();
        let result = self.tcp_socket_check(id, socket).and_then(|()| {
            let SocketAddr::V4(remote) = remote else {
                return Err(IoError::NetworkUnreachable);
            };
            let host = self.host_mut(id);
            let default_ip = host.ips.first().copied().unwrap_or(Ipv4Addr::UNSPECIFIED);
            host.tcp.connect(now, socket, remote, default_ip, &mut out)
        });
        if let Err(error) = result {
            let outcome = SocketOutcome::Failed {
                op: OpKind::Connect,
                destination: Some(remote),
                error,
            };
            self.answer(id, socket, outcome);
        }
        self.apply_tcp(id, out);
    }

    pub(super) fn tcp_listen(&mut self, id: HostId, socket: SocketId, backlog: u32) {
        let result = self
            .tcp_socket_check(id, socket)
            .and_then(|()| self.host_mut(id).tcp.listen(socket, backlog));
        if let Err(error) = result {
            self.answer(id, socket, fail(OpKind::Listen, error));
        }
    }

    pub(super) fn tcp_accept(&mut self, id: HostId, listener: SocketId, socket: SocketId) {
        let mut out = Vec::new();
        let result = if self.host_ref(id).sockets.contains_key(&socket) {
            Err(IoError::Other(None))
        } else {
            self.tcp_socket_check(id, listener)
                .and_then(|()| self.host_mut(id).tcp.accept(listener, socket, &mut out))
        };
        if let Err(error) = result {
            self.answer(id, socket, fail(OpKind::Accept, error));
        }
        self.apply_tcp(id, out);
    }

    pub(super) fn tcp_shutdown(&mut self, id: HostId, socket: SocketId) {
        let now = self.now;
        let mut out = Vec::new();
        let result = self
            .tcp_socket_check(id, socket)
            .and_then(|()| self.host_mut(id).tcp.shutdown(now, socket, &mut out));
        if let Err(error) = result {
            self.answer(id, socket, fail(OpKind::Shutdown, error));
        }
        self.apply_tcp(id, out);
    }

    pub(super) fn tcp_close(&mut self, id: HostId, socket: SocketId) {
        let now = self.now;
        let mut out = Vec::new();
        self.host_mut(id).tcp.close(now, socket, &mut out);
        self.apply_tcp(id, out);
    }

    pub(super) fn tcp_write(
        &mut self,
        id: HostId,
        socket: SocketId,
        destination: SocketAddr,
        data: &[u8],
    ) {
        let now = self.now;
        let mut out = Vec::new();
        if let Err(error) = self.host_mut(id).tcp.write(now, socket, data, &mut out) {
            let outcome = SocketOutcome::Failed {
                op: OpKind::Send,
                destination: Some(destination),
                error,
            };
            self.answer(id, socket, outcome);
        }
        self.apply_tcp(id, out);
    }

    // --- the stack's outputs ---

    /// Carries out what the host's TCP asked for, then re-arms its timer. The machine is not
    /// drained here: the caller services the host.
    pub(super) fn apply_tcp(&mut self, id: HostId, out: Vec<TcpOut>) {
        let now = self.now;
        for o in out {
            match o {
                TcpOut::Segment(seg) => {
                    let packet = Packet {
                        protocol: Protocol::Tcp,
                        src: seg.src,
                        dst: seg.dst,
                        data: seg.payload,
                        tcp: Some(seg.header),
                    };
                    self.emit(id, packet);
                }
                TcpOut::Accepted {
                    listener,
                    socket,
                    local,
                    remote,
                } => {
                    let host = self.host_mut(id);
                    let reuse = host.sockets.get(&listener).is_some_and(|s| s.reuse);
                    host.sockets.insert(
                        socket,
                        SimSocket {
                            protocol: Protocol::Tcp,
                            ip: Some(*local.ip()),
                            port: local.port(),
                            reuse,
                        },
                    );
                    let outcome = SocketOutcome::Accepted {
                        local: local.into(),
                        remote: remote.into(),
                    };
                    self.answer(id, socket, outcome);
                }
                TcpOut::Outcome(socket, outcome) => self.answer(id, socket, outcome),
                TcpOut::Stream(socket, data) => {
                    let _ = self.host_mut(id).node.handle_stream(now, socket, &data);
                }
            }
        }
        self.arm_tcp(id);
    }

    fn arm_tcp(&mut self, id: HostId) {
        let now = self.now;
        let host = self.host_mut(id);
        let deadline = host.tcp.deadline().map(|d| d.max(now));
        if deadline == host.tcp_timer {
            return;
        }
        host.tcp_timer = deadline;
        if let Some(at) = deadline {
            self.schedule(at, Event::TcpTimer(id));
        }
    }

    pub(super) fn fire_tcp_timer(&mut self, id: HostId, at: Instant) {
        let now = self.now;
        let host = self.host_mut(id);
        if host.tcp_timer != Some(at) {
            return; // superseded
        }
        host.tcp_timer = None;
        let mut out = Vec::new();
        host.tcp.on_timeout(now, &mut out);
        self.apply_tcp(id, out);
        self.service(id);
    }

    /// A segment reached host `id` (which is up).
    pub(super) fn tcp_deliver(&mut self, id: HostId, packet: Packet, header: TcpHeader) {
        let now = self.now;
        self.record_delivery(id, &packet);
        let seg = Segment {
            src: packet.src,
            dst: packet.dst,
            header,
            payload: packet.data,
        };
        let mut out = Vec::new();
        self.host_mut(id).tcp.on_segment(now, seg, &mut out);
        self.apply_tcp(id, out);
        self.service(id);
    }

    /// An inbound packet NAT box `nat` dropped: for a SYN, an RST back if the box is configured so.
    pub(super) fn nat_refuse(&mut self, nat: NatId, packet: Packet) {
        let Some(header) = packet.tcp.filter(TcpHeader::is_syn_only) else {
            return;
        };
        let nb = self.nat_mut(nat);
        if !nb.tcp.rst_unsolicited_syn {
            nb.stats.tcp_syn_dropped += 1;
            return;
        }
        let seg = Segment {
            src: packet.src,
            dst: SocketAddrV4::new(nb.public_ip, packet.dst.port()),
            header,
            payload: packet.data,
        };
        let Some(rst) = seg.reset_reply() else {
            return;
        };
        nb.stats.tcp_rst_sent += 1;
        let link = nb.link;
        let packet = Packet {
            protocol: Protocol::Tcp,
            src: rst.src,
            dst: rst.dst,
            data: rst.payload,
            tcp: Some(rst.header),
        };
        self.cross(link, packet, Event::Internet);
    }
}
