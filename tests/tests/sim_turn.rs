//! The TURN server model (`p2pd_sim::TurnServer`) in the simulator, with our `TurnClient` behind
//! NAT boxes: RFC 6062 TCP allocations with TURN REST and static credentials, refused passwords,
//! permissions, a peer's connection to the relayed address spliced with the client's data
//! connection (200 KB each way, byte-exact), a peer without permission refused, Connect to a
//! peer, refreshes past the first lifetime, expiry, deallocation and every socket closed.

use core::net::{Ipv4Addr, SocketAddr};
use core::time::Duration;
use std::collections::{BTreeSet, VecDeque};

use p2pd_nat::{Behaviour, Filtering, Mapping};
use p2pd_proto::{
    Instant, Machine, SocketId, SocketOp, SocketOutcome, Transmit, Verdict, TRANSMIT_BUFFER_LEN,
};
use p2pd_sim::{
    run_seeds, Host, HostId, LinkConfig, RawTcp, Sim, TcpEvent, TurnServer, TurnServerConfig,
    TurnServerStats,
};
use p2pd_turn::{Credentials, RelayTransport, TurnClient, TurnConfig, TurnEvent, TurnFailure};

const SRV: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const NAT_A: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const NAT_B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const NAT_C: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 3);
const PUBLIC_PEER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
const PRIV: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const SECRET: &[u8] = b"north-wind";
/// Unix time at the simulation's start.
const UNIX_NOW: u64 = 1_800_000_000;

fn server_addr() -> SocketAddr {
    SocketAddr::new(SRV.into(), 3478)
}

fn any() -> SocketAddr {
    "0.0.0.0:0".parse().unwrap()
}

/// What a [`Relayed`] host reports.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Turn(TurnEvent),
    Data { socket: SocketId, data: Vec<u8> },
    PeerClosed { socket: SocketId },
    Failed { socket: SocketId },
}

/// A host running a [`TurnClient`] that takes over the data connections it hands out
/// (`PeerConnected`): their bytes become [`Ev::Data`], [`Relayed::send`] writes to them, and a
/// data connection the far side ended is closed.
struct Relayed {
    client: TurnClient,
    owned: BTreeSet<SocketId>,
    out: VecDeque<(SocketId, Vec<u8>)>,
    ops: VecDeque<SocketOp>,
    events: VecDeque<Ev>,
}

impl Relayed {
    fn new(client: TurnClient) -> Self {
        Relayed {
            client,
            owned: BTreeSet::new(),
            out: VecDeque::new(),
            ops: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    fn send(&mut self, socket: SocketId, data: &[u8]) {
        for chunk in data.chunks(TRANSMIT_BUFFER_LEN) {
            self.out.push_back((socket, chunk.to_vec()));
        }
    }

    fn close_data(&mut self, socket: SocketId) {
        if self.owned.remove(&socket) {
            self.ops.push_back(SocketOp::Close { socket });
        }
    }

    /// Takes the client's events now, so a handed-over socket is ours before its next bytes.
    fn pull(&mut self) {
        while let Some(e) = self.client.poll_event() {
            if let TurnEvent::PeerConnected { socket, data, .. } = &e {
                self.owned.insert(*socket);
                let (socket, data) = (*socket, data.clone());
                self.events.push_back(Ev::Turn(e));
                if !data.is_empty() {
                    self.events.push_back(Ev::Data { socket, data });
                }
                continue;
            }
            self.events.push_back(Ev::Turn(e));
        }
    }
}

impl Machine for Relayed {
    type Event = Ev;

    fn handle_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        if self.owned.contains(&socket) {
            self.events.push_back(Ev::Data {
                socket,
                data: data.to_vec(),
            });
            return Verdict::Consumed;
        }
        let v = self.client.handle_stream(now, socket, data);
        self.pull();
        v
    }

    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        if self.owned.contains(&socket) {
            match outcome {
                SocketOutcome::PeerClosed => {
                    self.events.push_back(Ev::PeerClosed { socket });
                    self.close_data(socket);
                }
                SocketOutcome::Failed { .. } => {
                    self.events.push_back(Ev::Failed { socket });
                    self.close_data(socket);
                }
                _ => {}
            }
            return;
        }
        self.client.handle_socket_result(now, socket, outcome);
        self.pull();
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.client.handle_timeout(now);
        self.pull();
    }

    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(t) = self.client.poll_transmit(buf) {
            return Some(t);
        }
        let (socket, data) = self.out.pop_front()?;
        buf[..data.len()].copy_from_slice(&data);
        Some(Transmit {
            socket,
            destination: any(),
            len: data.len(),
        })
    }

    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        self.client
            .poll_socket_op()
            .or_else(|| self.ops.pop_front())
    }

    fn poll_event(&mut self) -> Option<Ev> {
        self.pull();
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.client.poll_timeout()
    }
}

fn server_config() -> TurnServerConfig {
    let mut c = TurnServerConfig::new(server_addr(), "sim.p2pd")
        .with_rest_secret(SECRET)
        .with_user("alice", "wonderland");
    c.unix_now = UNIX_NOW;
    c
}

fn link() -> LinkConfig {
    LinkConfig::with_latency(Duration::from_millis(15))
}

struct World {
    sim: Sim,
    server: HostId,
}

impl World {
    fn new(seed: u64, config: TurnServerConfig) -> World {
        let mut sim = Sim::new(seed);
        let server = sim.add_turn_server(Host::public([SRV]).with_link(link()), config);
        sim.run_for(Duration::from_millis(10));
        World { sim, server }
    }

    fn stats(&self) -> TurnServerStats {
        self.sim.machine::<TurnServer>(self.server).stats()
    }

    /// A TurnClient host behind a new NAT box with `behaviour` at `nat_ip`.
    fn client(
        &mut self,
        nat_ip: Ipv4Addr,
        behaviour: Behaviour,
        credentials: Credentials,
        tweak: impl FnOnce(&mut TurnConfig),
    ) -> HostId {
        let nat = self.sim.add_nat(nat_ip, behaviour);
        self.sim.set_nat_link(nat, link());
        let mut config = TurnConfig::new(server_addr(), any(), credentials);
        tweak(&mut config);
        let seed = self.sim.machine_seed();
        let now = self.sim.now();
        self.sim
            .add_host_behind(nat, PRIV, Relayed::new(TurnClient::new(config, seed, now)))
    }

    /// A bare TCP host behind a new NAT box with `behaviour` at `nat_ip`.
    fn peer(&mut self, nat_ip: Ipv4Addr, behaviour: Behaviour) -> HostId {
        let nat = self.sim.add_nat(nat_ip, behaviour);
        self.sim.set_nat_link(nat, link());
        self.sim.add_host_behind(nat, PRIV, RawTcp::new())
    }

    fn events(&mut self, h: HostId) -> Vec<Ev> {
        self.sim.take_events::<Relayed>(h)
    }

    fn turn(&mut self, h: HostId) -> Vec<TurnEvent> {
        self.events(h)
            .into_iter()
            .filter_map(|e| match e {
                Ev::Turn(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    /// Runs until the client reports its allocation; its relayed and mapped addresses.
    fn allocated(&mut self, h: HostId) -> (SocketAddr, Option<SocketAddr>) {
        self.sim.run_for(Duration::from_secs(2));
        let events = self.turn(h);
        events
            .iter()
            .find_map(|e| match e {
                TurnEvent::Allocated {
                    relayed, mapped, ..
                } => Some((*relayed, *mapped)),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no allocation: {events:?}"))
    }

    fn permit(&mut self, h: HostId, ip: Ipv4Addr) {
        let peer = SocketAddr::new(ip.into(), 0);
        self.sim
            .with_machine::<Relayed, _>(h, |m, now| m.client.create_permission(now, peer))
            .unwrap();
        self.sim.run_for(Duration::from_secs(1));
        let events = self.turn(h);
        assert!(
            events.contains(&TurnEvent::PermissionCreated { peer }),
            "{events:?}"
        );
    }

    /// The peer connects to `to`; returns its socket.
    fn dial(&mut self, peer: HostId, to: SocketAddr) -> SocketId {
        self.sim.with_machine::<RawTcp, _>(peer, |m, _| {
            let s = m.bind(any(), false);
            m.connect(s, to);
            s
        })
    }

    fn close_client(&mut self, h: HostId) {
        self.sim
            .with_machine::<Relayed, _>(h, |m, now| m.client.close(now));
    }
}

fn symmetric() -> Behaviour {
    Behaviour::new(
        Mapping::AddressAndPortDependent,
        Filtering::AddressAndPortDependent,
    )
}

fn port_restricted() -> Behaviour {
    Behaviour::new(
        Mapping::EndpointIndependent,
        Filtering::AddressAndPortDependent,
    )
}

fn rest() -> Credentials {
    Credentials::rest(SECRET, "client-a", UNIX_NOW, Duration::from_secs(3600))
}

/// `len` bytes from a simple generator seeded with `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn received_by_client(events: &[Ev], socket: SocketId) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        if let Ev::Data { socket: s, data } = e {
            if *s == socket {
                out.extend_from_slice(data);
            }
        }
    }
    out
}

const BULK: usize = 200 * 1024;

/// The whole RFC 6062 path with REST credentials: allocate behind a symmetric NAT, permit the
/// peer's NAT IP, the peer connects to the relayed address, 200 KB each way arrive byte-exact,
/// the peer closes, the client deallocates, and no socket is left anywhere. Returns the trace
/// hash.
fn relay_run(seed: u64) -> u64 {
    let mut w = World::new(seed, server_config());
    let c = w.client(NAT_A, symmetric(), rest(), |_| {});
    let (relayed, mapped) = w.allocated(c);
    assert_eq!(relayed.ip(), core::net::IpAddr::from(SRV));
    assert_eq!(mapped.map(|m| m.ip()), Some(NAT_A.into()));
    assert_eq!(w.stats().allocations_live, 1);
    w.permit(c, NAT_B);

    let p = w.peer(NAT_B, port_restricted());
    let ps = w.dial(p, relayed);
    w.sim.run_for(Duration::from_secs(2));
    let events = w.events(c);
    let (data_socket, peer_addr) = events
        .iter()
        .find_map(|e| match e {
            Ev::Turn(TurnEvent::PeerConnected { socket, peer, .. }) => Some((*socket, *peer)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no PeerConnected: {events:?}"));
    assert_eq!(peer_addr.ip(), core::net::IpAddr::from(NAT_B));
    assert!(w
        .sim
        .take_events::<RawTcp>(p)
        .iter()
        .any(|e| matches!(e, TcpEvent::Connected { socket, .. } if *socket == ps)));
    assert_eq!(w.stats().connections_spliced, 1);

    let to_client = pattern(seed ^ 0xA, BULK);
    let to_peer = pattern(seed ^ 0xB, BULK);
    w.sim
        .with_machine::<RawTcp, _>(p, |m, _| m.send(ps, &to_client));
    w.sim
        .with_machine::<Relayed, _>(c, |m, _| m.send(data_socket, &to_peer));
    w.sim.run_for(Duration::from_secs(30));
    let client_events = w.events(c);
    let peer_events = w.sim.take_events::<RawTcp>(p);
    let got_client = received_by_client(&client_events, data_socket);
    let got_peer = TcpEvent::received(&peer_events, ps);
    assert_eq!(got_client.len(), BULK);
    assert!(got_client == to_client, "client bytes differ");
    assert_eq!(got_peer.len(), BULK);
    assert!(got_peer == to_peer, "peer bytes differ");
    assert_eq!(w.stats().bytes_relayed, 2 * BULK as u64);

    // The peer ends: the server passes the EOF on, the client's host closes its data side, and
    // the server closes both.
    w.sim.with_machine::<RawTcp, _>(p, |m, _| m.close(ps));
    w.sim.run_for(Duration::from_secs(2));
    let client_events = w.events(c);
    assert!(
        client_events.contains(&Ev::PeerClosed {
            socket: data_socket
        }),
        "{client_events:?}"
    );
    assert_eq!(w.sim.machine::<TurnServer>(w.server).table_sizes().2, 0);

    w.close_client(c);
    w.sim.run_for(Duration::from_secs(2));
    let events = w.turn(c);
    assert!(
        events.contains(&TurnEvent::Closed { deallocated: true }),
        "{events:?}"
    );
    let s = w.stats();
    assert_eq!(s.allocations_live, 0);
    assert_eq!(s.deallocated, 1);
    assert_eq!(s.allocations_total, 1);
    w.sim.run_for(Duration::from_secs(5));
    let (clients, allocations, peers, _) = w.sim.machine::<TurnServer>(w.server).table_sizes();
    assert_eq!((clients, allocations, peers), (0, 0, 0));
    // Only the server's listener is left.
    assert_eq!(
        w.sim.socket_count(w.server),
        1,
        "{:?}",
        w.sim.socket_list(w.server)
    );
    assert_eq!(w.sim.socket_count(c), 0, "{:?}", w.sim.socket_list(c));
    assert_eq!(w.sim.socket_count(p), 0, "{:?}", w.sim.socket_list(p));
    w.sim.trace_hash()
}

#[test]
fn rest_credentials_relay_200kb_each_way_through_nats_and_deallocate() {
    run_seeds(1..=3, |seed| {
        relay_run(seed);
    });
}

#[test]
fn the_same_seed_gives_the_same_run() {
    assert_eq!(relay_run(11), relay_run(11));
}

#[test]
fn static_credentials_allocate_and_wrong_or_expired_ones_are_refused() {
    run_seeds(1..=2, |seed| {
        let mut w = World::new(seed, server_config());
        let good = w.client(
            NAT_A,
            port_restricted(),
            Credentials::long_term("alice", "wonderland"),
            |_| {},
        );
        let (relayed, _) = w.allocated(good);
        assert_eq!(relayed.ip(), core::net::IpAddr::from(SRV));

        let wrong = w.client(
            NAT_B,
            symmetric(),
            Credentials::long_term("alice", "looking-glass"),
            |_| {},
        );
        w.sim.run_for(Duration::from_secs(2));
        let events = w.turn(wrong);
        assert!(
            events.contains(&TurnEvent::Failed(TurnFailure::Unauthenticated)),
            "{events:?}"
        );
        assert_eq!(w.stats().auth_refused, 1);

        // REST credentials that expired a minute before the simulation started.
        let expired = Credentials::rest(SECRET, "late", UNIX_NOW - 120, Duration::from_secs(60));
        let late = w.client(NAT_C, symmetric(), expired, |_| {});
        w.sim.run_for(Duration::from_secs(2));
        let events = w.turn(late);
        assert!(
            events.contains(&TurnEvent::Failed(TurnFailure::Unauthenticated)),
            "{events:?}"
        );
        let s = w.stats();
        assert_eq!(s.auth_refused, 2);
        assert_eq!(s.allocations_live, 1);
        assert_eq!(s.allocations_total, 1);
    });
}

#[test]
fn udp_allocations_are_refused_with_442() {
    let mut w = World::new(5, server_config());
    let c = w.client(NAT_A, symmetric(), rest(), |c| {
        c.transport = RelayTransport::Udp;
    });
    w.sim.run_for(Duration::from_secs(2));
    let events = w.turn(c);
    assert!(
        events.contains(&TurnEvent::Failed(
            TurnFailure::UnsupportedTransportProtocol
        )),
        "{events:?}"
    );
    assert_eq!(w.stats().allocations_total, 0);
}

#[test]
fn a_peer_without_permission_is_refused() {
    run_seeds(1..=2, |seed| {
        let mut w = World::new(seed, server_config());
        let c = w.client(NAT_A, symmetric(), rest(), |_| {});
        let (relayed, _) = w.allocated(c);
        w.permit(c, NAT_B);
        let stranger = w.peer(NAT_C, port_restricted());
        let s = w.dial(stranger, relayed);
        w.sim.run_for(Duration::from_secs(3));
        let events = w.events(c);
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, Ev::Turn(TurnEvent::PeerConnected { .. }))),
            "{events:?}"
        );
        let peer_events = w.sim.take_events::<RawTcp>(stranger);
        assert!(
            peer_events
                .iter()
                .any(|e| matches!(e, TcpEvent::PeerClosed { socket } if *socket == s)),
            "{peer_events:?}"
        );
        let st = w.stats();
        assert_eq!(st.peer_refused_no_permission, 1);
        assert_eq!(st.connections_spliced, 0);
        assert_eq!(w.sim.machine::<TurnServer>(w.server).table_sizes().2, 0);
    });
}

#[test]
fn connect_reaches_a_listening_peer_and_a_dead_port_is_447() {
    run_seeds(1..=2, |seed| {
        let mut w = World::new(seed, server_config());
        let c = w.client(NAT_A, symmetric(), rest(), |_| {});
        w.allocated(c);
        let p = w
            .sim
            .add_host(Host::public([PUBLIC_PEER]).with_link(link()), RawTcp::new());
        let listener = w.sim.with_machine::<RawTcp, _>(p, |m, _| {
            let l = m.bind(SocketAddr::new(PUBLIC_PEER.into(), 7000), false);
            m.listen(l, 8);
            l
        });
        let accepted = w
            .sim
            .with_machine::<RawTcp, _>(p, |m, _| m.accept(listener));
        w.permit(c, PUBLIC_PEER);
        let target = SocketAddr::new(PUBLIC_PEER.into(), 7000);
        w.sim
            .with_machine::<Relayed, _>(c, |m, now| m.client.connect(now, target))
            .unwrap();
        w.sim.run_for(Duration::from_secs(2));
        let events = w.events(c);
        let data_socket = events
            .iter()
            .find_map(|e| match e {
                Ev::Turn(TurnEvent::PeerConnected { socket, peer, .. }) if *peer == target => {
                    Some(*socket)
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no PeerConnected: {events:?}"));
        w.sim
            .with_machine::<Relayed, _>(c, |m, _| m.send(data_socket, b"ping through the relay"));
        w.sim
            .with_machine::<RawTcp, _>(p, |m, _| m.send(accepted, b"pong"));
        w.sim.run_for(Duration::from_secs(1));
        let got = TcpEvent::received(&w.sim.take_events::<RawTcp>(p), accepted);
        assert_eq!(got, b"ping through the relay");
        assert_eq!(received_by_client(&w.events(c), data_socket), b"pong");

        // Nobody listens on 7001: the public peer's host answers the SYN with an RST.
        let dead = SocketAddr::new(PUBLIC_PEER.into(), 7001);
        w.sim
            .with_machine::<Relayed, _>(c, |m, now| m.client.connect(now, dead))
            .unwrap();
        w.sim.run_for(Duration::from_secs(3));
        let events = w.turn(c);
        assert!(
            events.contains(&TurnEvent::PeerConnectFailed {
                peer: dead,
                failure: TurnFailure::ConnectionTimeoutOrFailure
            }),
            "{events:?}"
        );
        assert_eq!(w.stats().connections_spliced, 1);
    });
}

#[test]
fn timed_refreshes_keep_the_allocation_and_a_silent_client_expires() {
    run_seeds(1..=2, |seed| {
        let mut config = server_config();
        config.default_lifetime = Duration::from_secs(20);
        config.max_lifetime = Duration::from_secs(20);
        // Shorter than the refresh interval: refreshes meet 438 and retry with the new nonce.
        config.nonce_lifetime = Duration::from_secs(8);
        let mut w = World::new(seed, config);
        let c = w.client(NAT_A, symmetric(), rest(), |c| {
            c.lifetime = Some(Duration::from_secs(3600));
        });
        w.sim.run_for(Duration::from_secs(2));
        let events = w.turn(c);
        assert!(
            events.iter().any(|e| matches!(
                e,
                TurnEvent::Allocated { lifetime, .. } if *lifetime == Duration::from_secs(20)
            )),
            "{events:?}"
        );
        // Three lifetimes later the allocation is still there.
        w.sim.run_for(Duration::from_secs(60));
        let events = w.turn(c);
        let refreshes = events
            .iter()
            .filter(|e| matches!(e, TurnEvent::Refreshed { .. }))
            .count();
        assert!(refreshes >= 5, "{events:?}");
        assert!(
            !events.iter().any(|e| matches!(e, TurnEvent::Failed(_))),
            "{events:?}"
        );
        let s = w.stats();
        assert_eq!((s.allocations_live, s.expired), (1, 0));
        assert!(s.stale_nonces >= 1, "{s:?}");

        // The client falls silent (its cable is pulled): the allocation expires on the server.
        w.sim.set_host_down(c, true);
        w.sim.run_for(Duration::from_secs(25));
        let s = w.stats();
        assert_eq!((s.allocations_live, s.expired), (0, 1), "{s:?}");
    });
}
