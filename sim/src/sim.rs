//! The simulator: virtual clock, event queue, hosts, routing through links and NAT boxes.

use core::cmp::Ordering;
use core::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use core::time::Duration;
use std::collections::{BTreeMap, BinaryHeap};

use p2pd_nat::Behaviour;
use p2pd_proto::server::{ServerConfig, StunServer};
use p2pd_proto::{
    Instant, IoError, Machine, OpKind, Rng, SocketId, SocketOp, SocketOutcome, Transport,
    TRANSMIT_BUFFER_LEN,
};

use crate::link::LinkConfig;
use crate::natbox::{NatBox, NatMapping, NatStats, Protocol};
use crate::node::{Node, Output, Typed};
use crate::tcp::{TcpConfig, TcpHeader, TcpStack, TcpStats};
use crate::trace::{TraceEntry, TraceHash};

mod tcp_glue;

pub use tcp_glue::Dead;

/// Names a host of a [`Sim`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(pub usize);

/// Names a NAT box of a [`Sim`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NatId(pub usize);

/// A public host to add with [`Sim::add_host`]: its IPs and access link.
#[derive(Clone, Debug)]
pub struct Host {
    ips: Vec<Ipv4Addr>,
    link: LinkConfig,
    tcp: TcpConfig,
}

impl Host {
    /// A host on the internet with these public IPs (the first is used by wildcard sockets).
    pub fn public(ips: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        Host {
            ips: ips.into_iter().collect(),
            link: LinkConfig::IDEAL,
            tcp: TcpConfig::default(),
        }
    }

    /// The same host with these TCP settings.
    pub fn with_tcp(mut self, tcp: TcpConfig) -> Self {
        self.tcp = tcp;
        self
    }

    /// The same host with this access link.
    pub fn with_link(mut self, link: LinkConfig) -> Self {
        self.link = link;
        self
    }
}

/// Network-wide counters.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Datagrams the machines sent.
    pub sent: u64,
    /// Datagrams handed to a machine.
    pub delivered: u64,
    /// Copies lost on links.
    pub lost: u64,
    /// Extra copies made by duplicating links.
    pub duplicated: u64,
    /// Datagrams addressed to an IP nobody has.
    pub unroutable: u64,
    /// Datagrams that reached a host with no socket on their port.
    pub no_socket: u64,
    /// Timer firings.
    pub timeouts: u64,
    /// Packets (datagrams and segments) dropped because their host was down
    /// ([`Sim::set_host_down`]).
    pub dropped_host_down: u64,
}

/// Where a host sits.
#[derive(Copy, Clone, Debug)]
enum Location {
    Public,
    Behind(NatId),
}

/// A socket a machine has bound on a host.
#[derive(Copy, Clone, Debug)]
struct SimSocket {
    protocol: Protocol,
    /// `None`: bound to the wildcard address.
    ip: Option<Ipv4Addr>,
    port: u16,
    /// `SO_REUSEADDR` or `SO_REUSEPORT` (TCP: sockets that all have it may share a port).
    reuse: bool,
}

struct HostState {
    node: Box<dyn Node>,
    location: Location,
    ips: Vec<Ipv4Addr>,
    link: LinkConfig,
    sockets: BTreeMap<SocketId, SimSocket>,
    /// The deadline a timer event is queued for.
    timer: Option<Instant>,
    /// When the timer last fired, and how many times in a row at that instant.
    fired: (Instant, u32),
    /// The host's TCP.
    tcp: TcpStack,
    /// The deadline a TCP timer event is queued for.
    tcp_timer: Option<Instant>,
    /// Cut off from the network ([`Sim::set_host_down`]).
    down: bool,
}

/// Who owns a public IP.
#[derive(Copy, Clone, Debug)]
enum Owner {
    Host(HostId),
    Nat(NatId),
}

#[derive(Clone, Debug)]
struct Packet {
    protocol: Protocol,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    data: Vec<u8>,
    /// The TCP header of a segment.
    tcp: Option<TcpHeader>,
}

#[derive(Debug)]
enum Event {
    /// A host's deadline.
    Timer(HostId),
    /// A host's TCP deadline.
    TcpTimer(HostId),
    /// A packet reached the internet core; route it by destination IP.
    Internet(Packet),
    /// A packet from the LAN reached a NAT box.
    NatFromLan(NatId, Packet),
    /// A packet from the internet reached a NAT box.
    NatFromWan(NatId, Packet),
    /// A packet reached a host.
    Deliver(HostId, Packet),
}

struct Queued {
    at: Instant,
    seq: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    /// Reversed, so the `BinaryHeap` pops the earliest event, and among equal times the first queued.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// The first ephemeral port ([RFC 6335](https://www.rfc-editor.org/rfc/rfc6335) dynamic range).
const EPHEMERAL_LOW: u16 = 49152;

/// How often one host's timer may fire at the same instant before the simulator declares the
/// machine stuck (a deadline that never advances would otherwise spin forever).
const MAX_TIMEOUTS_PER_INSTANT: u32 = 10_000;

/// A seeded, virtual-time network simulation. See the crate docs.
pub struct Sim {
    seed: u64,
    now: Instant,
    queue: BinaryHeap<Queued>,
    seq: u64,
    /// Link effects.
    net_rng: Rng,
    /// Ephemeral ports.
    port_rng: Rng,
    /// Seeds for NAT boxes and machines.
    seed_rng: Rng,
    /// Seeds for hosts' TCP stacks (initial sequence numbers).
    tcp_rng: Rng,
    /// Network-side TCP counters (link losses and duplicates).
    tcp_net: TcpStats,
    hosts: Vec<HostState>,
    nats: Vec<NatBox>,
    /// Hosts behind each NAT box, by private IP.
    lans: Vec<BTreeMap<Ipv4Addr, HostId>>,
    public: BTreeMap<Ipv4Addr, Owner>,
    stats: SimStats,
    trace_hash: TraceHash,
    trace: Option<Vec<TraceEntry>>,
    buf: Vec<u8>,
}

impl Sim {
    /// An empty network at time zero whose every random choice derives from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut master = Rng::from_seed(seed);
        Sim {
            seed,
            now: Instant::ZERO,
            queue: BinaryHeap::new(),
            seq: 0,
            net_rng: Rng::from_seed(master.next_u64()),
            port_rng: Rng::from_seed(master.next_u64()),
            seed_rng: Rng::from_seed(master.next_u64()),
            tcp_rng: Rng::from_seed(master.next_u64()),
            tcp_net: TcpStats::default(),
            hosts: Vec::new(),
            nats: Vec::new(),
            lans: Vec::new(),
            public: BTreeMap::new(),
            stats: SimStats::default(),
            trace_hash: TraceHash::new(),
            trace: None,
            buf: vec![0; TRANSMIT_BUFFER_LEN],
        }
    }

    /// The seed this simulation was built from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A fresh seed for a machine, derived from the simulation's seed (the same sequence every run).
    pub fn machine_seed(&mut self) -> u64 {
        self.seed_rng.next_u64()
    }

    /// 32 bytes for a machine that needs secret key material (a secure channel's seeds), drawn
    /// like [`Sim::machine_seed`]: secret from nobody in a simulation, but replayed byte for byte.
    pub fn machine_secret(&mut self) -> [u8; 32] {
        let mut secret = [0u8; 32];
        self.seed_rng.fill_bytes(&mut secret);
        secret
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Network-wide counters.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// A hash of every delivery so far (time, host, source, destination, bytes): equal for runs that
    /// behaved identically.
    pub fn trace_hash(&self) -> u64 {
        self.trace_hash.value()
    }

    /// Starts recording every delivery (see [`Sim::trace`]).
    pub fn record_trace(&mut self) {
        self.trace.get_or_insert_with(Vec::new);
    }

    /// The deliveries recorded since [`Sim::record_trace`].
    pub fn trace(&self) -> &[TraceEntry] {
        self.trace.as_deref().unwrap_or(&[])
    }

    /// Adds a NAT box with public IP `public_ip` behaving as `behaviour`, with an ideal link toward
    /// the internet.
    ///
    /// # Panics
    /// If `public_ip` is already in use.
    pub fn add_nat(&mut self, public_ip: Ipv4Addr, behaviour: Behaviour) -> NatId {
        let id = NatId(self.nats.len());
        self.claim(public_ip, Owner::Nat(id));
        let rng = Rng::from_seed(self.seed_rng.next_u64());
        self.nats.push(NatBox::new(public_ip, behaviour, rng));
        self.lans.push(BTreeMap::new());
        id
    }

    /// Gives NAT box `nat` a new public IP, as a renumbered uplink does (a new DHCP lease, a
    /// carrier-grade NAT moving us): every mapping is dropped, so connections through it die and
    /// new ones leave from `public_ip`.
    ///
    /// # Panics
    /// If `public_ip` is already in use.
    pub fn renumber_nat(&mut self, nat: NatId, public_ip: Ipv4Addr) {
        let old = self.nat_mut(nat).public_ip;
        self.public.remove(&old);
        self.claim(public_ip, Owner::Nat(nat));
        self.nat_mut(nat).renumber(public_ip);
    }

    /// Sets the link between a NAT box and the internet.
    pub fn set_nat_link(&mut self, nat: NatId, link: LinkConfig) {
        self.nat_mut(nat).link = link;
    }

    /// A NAT box's counters.
    pub fn nat_stats(&self, nat: NatId) -> NatStats {
        self.nat_ref(nat).stats
    }

    /// How many mappings a NAT box holds (expired ones may linger until its next packet).
    pub fn nat_mappings(&self, nat: NatId) -> usize {
        self.nat_ref(nat).mapping_count()
    }

    /// A NAT box's mapping table (ground truth: which external endpoint each inside endpoint got).
    pub fn nat_mapping_table(&self, nat: NatId) -> Vec<NatMapping> {
        self.nat_ref(nat).mapping_table()
    }

    /// Adds a public host running `machine`, and drains the machine (its first intents are carried
    /// out at once).
    ///
    /// # Panics
    /// If the host has no IP or one of its IPs is already in use.
    pub fn add_host<M>(&mut self, host: Host, machine: M) -> HostId
    where
        M: Machine + 'static,
        M::Event: core::fmt::Debug + 'static,
    {
        assert!(!host.ips.is_empty(), "a host needs at least one IP");
        let id = HostId(self.hosts.len());
        for ip in &host.ips {
            self.claim(*ip, Owner::Host(id));
        }
        self.push_host(machine, Location::Public, host.ips, host.link, host.tcp)
    }

    /// Adds a host with `private_ip` behind `nat`, running `machine`, on an ideal LAN link.
    ///
    /// # Panics
    /// If another host behind `nat` has `private_ip`.
    pub fn add_host_behind<M>(&mut self, nat: NatId, private_ip: Ipv4Addr, machine: M) -> HostId
    where
        M: Machine + 'static,
        M::Event: core::fmt::Debug + 'static,
    {
        let id = HostId(self.hosts.len());
        let lan = self.lans.get_mut(nat.0).expect("unknown NAT");
        assert!(
            lan.insert(private_ip, id).is_none(),
            "{private_ip} is already used behind {nat:?}"
        );
        self.push_host(
            machine,
            Location::Behind(nat),
            vec![private_ip],
            LinkConfig::IDEAL,
            TcpConfig::default(),
        )
    }

    /// Adds an RFC 5780 STUN server (our [`StunServer`]) on a public host with IPs `ip1` and `ip2`,
    /// answering on ports `port1` and `port2` of both, and serving STUN over TCP on `ip1:port1`.
    ///
    /// # Panics
    /// If the IPs are in use or the configuration is invalid (equal IPs or ports, port 0).
    pub fn add_stun_server(
        &mut self,
        ip1: Ipv4Addr,
        ip2: Ipv4Addr,
        port1: u16,
        port2: u16,
    ) -> HostId {
        let config = ServerConfig::rfc5780(
            SocketAddr::new(IpAddr::V4(ip1), port1),
            IpAddr::V4(ip2),
            port2,
        )
        .with_tcp(true);
        let server = StunServer::new(config).expect("valid STUN server configuration");
        self.add_host(Host::public([ip1, ip2]), server)
    }

    /// Sets a host's access link (its LAN link if it is behind a NAT).
    pub fn set_link(&mut self, host: HostId, link: LinkConfig) {
        self.host_mut(host).link = link;
    }

    /// A host's IPs (its private IP if it is behind a NAT).
    pub fn host_ips(&self, host: HostId) -> &[Ipv4Addr] {
        &self.host_ref(host).ips
    }

    /// Runs `f` on host `id`'s machine at the current time (to issue commands), then carries out
    /// whatever the machine wants done.
    ///
    /// # Panics
    /// If the host does not run an `M`.
    pub fn with_machine<M, R>(&mut self, id: HostId, f: impl FnOnce(&mut M, Instant) -> R) -> R
    where
        M: Machine + 'static,
        M::Event: core::fmt::Debug + 'static,
    {
        let now = self.now;
        let typed = self.typed_mut::<M>(id);
        typed.command(now);
        let r = f(&mut typed.machine, now);
        self.service(id);
        r
    }

    /// Host `id`'s machine, to inspect.
    ///
    /// # Panics
    /// If the host does not run an `M`.
    pub fn machine<M>(&self, id: HostId) -> &M
    where
        M: Machine + 'static,
        M::Event: core::fmt::Debug + 'static,
    {
        let node = &self.host_ref(id).node;
        let typed = node
            .as_any()
            .downcast_ref::<Typed<M>>()
            .unwrap_or_else(|| panic!("{id:?} does not run a {}", core::any::type_name::<M>()));
        &typed.machine
    }

    /// Takes the events host `id`'s machine has reported so far.
    ///
    /// # Panics
    /// If the host does not run an `M`.
    pub fn take_events<M>(&mut self, id: HostId) -> Vec<M::Event>
    where
        M: Machine + 'static,
        M::Event: core::fmt::Debug + 'static,
    {
        core::mem::take(&mut self.typed_mut::<M>(id).events)
    }

    /// Processes the earliest queued event (advancing the clock to it). Returns `false` if nothing
    /// was queued.
    pub fn step(&mut self) -> bool {
        let Some(q) = self.queue.pop() else {
            return false;
        };
        self.now = self.now.max(q.at);
        match q.event {
            Event::Timer(host) => self.fire_timer(host, q.at),
            Event::TcpTimer(host) => self.fire_tcp_timer(host, q.at),
            Event::Internet(p) => self.route_internet(p),
            Event::NatFromLan(nat, p) => self.nat_from_lan(nat, p),
            Event::NatFromWan(nat, p) => self.nat_from_wan(nat, p),
            Event::Deliver(host, p) => self.deliver(host, p),
        }
        true
    }

    /// Processes every event up to and including time `t`, then sets the clock to `t` (if later).
    pub fn run_until(&mut self, t: Instant) {
        while self.queue.peek().is_some_and(|q| q.at <= t) {
            self.step();
        }
        self.now = self.now.max(t);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    // --- internals ---

    fn claim(&mut self, ip: Ipv4Addr, owner: Owner) {
        let old = self.public.insert(ip, owner);
        assert!(old.is_none(), "{ip} is already in use");
    }

    fn push_host<M>(
        &mut self,
        machine: M,
        location: Location,
        ips: Vec<Ipv4Addr>,
        link: LinkConfig,
        tcp: TcpConfig,
    ) -> HostId
    where
        M: Machine + 'static,
        M::Event: core::fmt::Debug + 'static,
    {
        let id = HostId(self.hosts.len());
        self.hosts.push(HostState {
            node: Box::new(Typed::new(machine)),
            location,
            ips,
            link,
            sockets: BTreeMap::new(),
            timer: None,
            fired: (Instant::MAX, 0),
            tcp: TcpStack::new(tcp, Rng::from_seed(self.tcp_rng.next_u64())),
            tcp_timer: None,
            down: false,
        });
        self.service(id);
        id
    }

    fn host_ref(&self, id: HostId) -> &HostState {
        self.hosts.get(id.0).expect("unknown host")
    }

    fn host_mut(&mut self, id: HostId) -> &mut HostState {
        self.hosts.get_mut(id.0).expect("unknown host")
    }

    fn nat_ref(&self, id: NatId) -> &NatBox {
        self.nats.get(id.0).expect("unknown NAT")
    }

    fn nat_mut(&mut self, id: NatId) -> &mut NatBox {
        self.nats.get_mut(id.0).expect("unknown NAT")
    }

    fn typed_mut<M>(&mut self, id: HostId) -> &mut Typed<M>
    where
        M: Machine + 'static,
        M::Event: core::fmt::Debug + 'static,
    {
        self.host_mut(id)
            .node
            .as_any_mut()
            .downcast_mut::<Typed<M>>()
            .unwrap_or_else(|| panic!("{id:?} does not run a {}", core::any::type_name::<M>()))
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            event,
        });
    }

    /// Drains host `id`'s machine and carries out its outputs until it has none, then arms its timer.
    fn service(&mut self, id: HostId) {
        let mut out = Vec::new();
        loop {
            let host = self.hosts.get_mut(id.0).expect("unknown host");
            let deadline = host.node.drain(&mut self.buf, &mut out);
            if out.is_empty() {
                self.arm(id, deadline);
                return;
            }
            for output in out.drain(..) {
                match output {
                    Output::Transmit {
                        socket,
                        destination,
                        data,
                    } => self.send(id, socket, destination, data),
                    Output::Op(op) => self.socket_op(id, op),
                }
            }
        }
    }

    fn arm(&mut self, id: HostId, deadline: Option<Instant>) {
        let now = self.now;
        let host = self.host_mut(id);
        let deadline = deadline.map(|d| d.max(now));
        if deadline == host.timer {
            return;
        }
        host.timer = deadline;
        if let Some(at) = deadline {
            self.schedule(at, Event::Timer(id));
        }
    }

    fn fire_timer(&mut self, id: HostId, at: Instant) {
        let now = self.now;
        let host = self.host_mut(id);
        if host.timer != Some(at) {
            return; // superseded
        }
        host.timer = None;
        host.fired = match host.fired {
            (t, n) if t == now => (t, n + 1),
            _ => (now, 1),
        };
        assert!(
            host.fired.1 <= MAX_TIMEOUTS_PER_INSTANT,
            "{id:?}'s machine keeps asking for a timeout at {now:?} (its deadline never advances)"
        );
        host.node.handle_timeout(now);
        self.stats.timeouts += 1;
        self.service(id);
    }

    fn answer(&mut self, id: HostId, socket: SocketId, outcome: SocketOutcome) {
        let now = self.now;
        self.host_mut(id)
            .node
            .handle_socket_result(now, socket, outcome);
    }

    /// Carries out a socket intent: binds (UDP and TCP), TCP connect, listen, accept and shutdown
    /// (see `tcp.rs`), close; TTL changes are accepted and ignored.
    fn socket_op(&mut self, id: HostId, op: SocketOp) {
        match op {
            SocketOp::Bind {
                socket,
                transport,
                local,
                options,
            } => {
                let reuse = options.reuse_address || options.reuse_port;
                let outcome = self.bind(id, socket, transport, local, reuse);
                if let (Transport::Tcp, SocketOutcome::Bound { local }) = (transport, outcome) {
                    let host = self.host_mut(id);
                    if let (Some(s), SocketAddr::V4(mut bound)) = (host.sockets.get(&socket), local)
                    {
                        if s.ip.is_none() {
                            bound.set_ip(Ipv4Addr::UNSPECIFIED);
                        }
                        host.tcp.bind(socket, bound);
                    }
                }
                self.answer(id, socket, outcome);
            }
            SocketOp::Connect { socket, remote } => self.tcp_connect(id, socket, remote),
            SocketOp::Listen { socket, backlog } => self.tcp_listen(id, socket, backlog),
            SocketOp::Accept { listener, socket } => self.tcp_accept(id, listener, socket),
            SocketOp::Shutdown { socket } => self.tcp_shutdown(id, socket),
            SocketOp::Close { socket } => {
                let removed = self.host_mut(id).sockets.remove(&socket);
                if removed.is_none_or(|s| s.protocol == Protocol::Tcp) {
                    self.tcp_close(id, socket);
                }
            }
            _ => {}
        }
    }

    fn bind(
        &mut self,
        id: HostId,
        socket: SocketId,
        transport: Transport,
        local: SocketAddr,
        reuse: bool,
    ) -> SocketOutcome {
        let protocol = match transport {
            Transport::Udp => Protocol::Udp,
            Transport::Tcp => Protocol::Tcp,
        };
        let host = self.hosts.get(id.0).expect("unknown host");
        let IpAddr::V4(ip) = local.ip() else {
            return fail(OpKind::Bind, IoError::AddrNotAvailable);
        };
        let ip = if ip.is_unspecified() {
            None
        } else if host.ips.contains(&ip) {
            Some(ip)
        } else {
            return fail(OpKind::Bind, IoError::AddrNotAvailable);
        };
        if host.sockets.contains_key(&socket) {
            return fail(OpKind::Bind, IoError::Other(None));
        }
        let taken = |port: u16| {
            host.sockets.values().any(|s| {
                s.protocol == protocol
                    && s.port == port
                    && (s.ip.is_none() || ip.is_none() || s.ip == ip)
                    && !(protocol == Protocol::Tcp && s.reuse && reuse)
            })
        };
        let port = if local.port() == 0 {
            let span = u64::from(u16::MAX - EPHEMERAL_LOW) + 1;
            let start = self.port_rng.below(span);
            let found = (0..span)
                .map(|i| EPHEMERAL_LOW + u16::try_from((start + i) % span).unwrap_or(0))
                .find(|p| !taken(*p));
            match found {
                Some(p) => p,
                None => return fail(OpKind::Bind, IoError::AddrInUse),
            }
        } else if taken(local.port()) {
            return fail(OpKind::Bind, IoError::AddrInUse);
        } else {
            local.port()
        };
        let reported = ip.unwrap_or(host.ips[0]);
        self.host_mut(id).sockets.insert(
            socket,
            SimSocket {
                protocol,
                ip,
                port,
                reuse,
            },
        );
        SocketOutcome::Bound {
            local: SocketAddr::V4(SocketAddrV4::new(reported, port)),
        }
    }

    /// Puts a machine's datagram on the network.
    fn send(&mut self, id: HostId, socket: SocketId, destination: SocketAddr, data: Vec<u8>) {
        let host = self.hosts.get(id.0).expect("unknown host");
        let Some(s) = host.sockets.get(&socket).copied() else {
            let outcome = SocketOutcome::Failed {
                op: OpKind::Send,
                destination: Some(destination),
                error: IoError::UnknownSocket,
            };
            return self.answer(id, socket, outcome);
        };
        let SocketAddr::V4(dst) = destination else {
            let outcome = SocketOutcome::Failed {
                op: OpKind::Send,
                destination: Some(destination),
                error: IoError::NetworkUnreachable,
            };
            return self.answer(id, socket, outcome);
        };
        if s.protocol == Protocol::Tcp {
            return self.tcp_write(id, socket, destination, &data);
        }
        self.stats.sent += 1;
        let src = SocketAddrV4::new(s.ip.unwrap_or(host.ips[0]), s.port);
        let packet = Packet {
            protocol: s.protocol,
            src,
            dst,
            data,
            tcp: None,
        };
        self.emit(id, packet);
    }

    /// Puts a packet from host `id` on the network (or back on the host for its own IPs).
    fn emit(&mut self, id: HostId, packet: Packet) {
        let host = self.hosts.get(id.0).expect("unknown host");
        if host.down {
            self.stats.dropped_host_down += 1;
            return;
        }
        let dst = packet.dst;
        if host.ips.contains(dst.ip()) {
            // Loopback: no link.
            let now = self.now;
            return self.schedule(now, Event::Deliver(id, packet));
        }
        let link = host.link;
        match host.location {
            Location::Public => self.cross(link, packet, Event::Internet),
            Location::Behind(nat) => self.cross(link, packet, |p| Event::NatFromLan(nat, p)),
        }
    }

    /// Sends `packet` over `link`, queueing `then(copy)` for each copy that comes out.
    fn cross(&mut self, link: LinkConfig, packet: Packet, then: impl Fn(Packet) -> Event) {
        let now = self.now;
        match link.traverse(&mut self.net_rng, now) {
            [None, _] => {
                self.stats.lost += 1;
                if packet.tcp.is_some() {
                    self.tcp_net.lost += 1;
                }
            }
            [Some(at), None] => self.schedule(at, then(packet)),
            [Some(at), Some(again)] => {
                self.stats.duplicated += 1;
                if packet.tcp.is_some() {
                    self.tcp_net.duplicated += 1;
                }
                self.schedule(at, then(packet.clone()));
                self.schedule(again, then(packet));
            }
        }
    }

    fn route_internet(&mut self, packet: Packet) {
        match self.public.get(packet.dst.ip()).copied() {
            Some(Owner::Host(h)) => {
                let link = self.host_ref(h).link;
                self.cross(link, packet, |p| Event::Deliver(h, p));
            }
            Some(Owner::Nat(n)) => {
                let link = self.nat_ref(n).link;
                self.cross(link, packet, |p| Event::NatFromWan(n, p));
            }
            None => self.stats.unroutable += 1,
        }
    }

    fn nat_from_lan(&mut self, nat: NatId, mut packet: Packet) {
        let now = self.now;
        // Another host on the same LAN: switched directly.
        if let Some(h) = self
            .lans
            .get(nat.0)
            .and_then(|lan| lan.get(packet.dst.ip()))
            .copied()
        {
            let link = self.host_ref(h).link;
            return self.cross(link, packet, |p| Event::Deliver(h, p));
        }
        let nb = self.nat_mut(nat);
        let Some(external) = nb.outbound(now, packet.protocol, packet.src, packet.dst, packet.tcp)
        else {
            return;
        };
        packet.src = external;
        if packet.dst.ip() == &nb.public_ip {
            // Hairpin: back in through the inbound path (filtering included), or dropped.
            if !nb.behaviour.hairpinning {
                nb.stats.dropped_hairpin += 1;
                return;
            }
            return self.nat_from_wan(nat, packet);
        }
        let link = nb.link;
        self.cross(link, packet, Event::Internet);
    }

    fn nat_from_wan(&mut self, nat: NatId, mut packet: Packet) {
        let now = self.now;
        let nb = self.nat_mut(nat);
        let inbound = nb.inbound(
            now,
            packet.protocol,
            packet.src,
            packet.dst.port(),
            packet.tcp,
        );
        let Ok(internal) = inbound else {
            return self.nat_refuse(nat, packet);
        };
        packet.dst = internal;
        let host = self
            .lans
            .get(nat.0)
            .and_then(|lan| lan.get(internal.ip()))
            .copied();
        let Some(h) = host else {
            self.stats.unroutable += 1;
            return;
        };
        let link = self.host_ref(h).link;
        self.cross(link, packet, |p| Event::Deliver(h, p));
    }

    fn deliver(&mut self, id: HostId, packet: Packet) {
        let now = self.now;
        let host = self.hosts.get_mut(id.0).expect("unknown host");
        if host.down {
            self.stats.dropped_host_down += 1;
            return;
        }
        if let Some(header) = packet.tcp {
            return self.tcp_deliver(id, packet, header);
        }
        let dst_ip = *packet.dst.ip();
        let matches = |s: &SimSocket, exact: bool| {
            s.protocol == packet.protocol
                && s.port == packet.dst.port()
                && if exact {
                    s.ip == Some(dst_ip)
                } else {
                    s.ip.is_none()
                }
        };
        let socket = host
            .sockets
            .iter()
            .find(|(_, s)| matches(s, true))
            .or_else(|| host.sockets.iter().find(|(_, s)| matches(s, false)))
            .map(|(id, _)| *id);
        let Some(socket) = socket else {
            self.stats.no_socket += 1;
            return;
        };
        self.stats.delivered += 1;
        self.record_delivery(id, &packet);
        let _ = self.host_mut(id).node.handle_datagram(
            now,
            socket,
            SocketAddr::V4(packet.src),
            &packet.data,
        );
        self.service(id);
    }

    /// Adds `packet`, delivered to host `id` now, to the trace hash and (when one is kept) the
    /// trace.
    fn record_delivery(&mut self, id: HostId, packet: &Packet) {
        let now = self.now;
        self.trace_hash
            .add(now, id, packet.src, packet.dst, &packet.data);
        if let Some(header) = packet.tcp {
            self.trace_hash.eat(&header.bytes());
        }
        if let Some(trace) = &mut self.trace {
            trace.push(TraceEntry {
                at: now,
                host: id,
                src: packet.src,
                dst: packet.dst,
                data: packet.data.clone(),
                tcp: packet.tcp,
            });
        }
    }
}

fn fail(op: OpKind, error: IoError) -> SocketOutcome {
    SocketOutcome::Failed {
        op,
        destination: None,
        error,
    }
}
