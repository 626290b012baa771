//! STUN over TCP in the simulator: `TcpBinding` behind NAT boxes of every mapping behaviour and
//! several port allocations learns the box's real external TCP endpoint (checked against the box's
//! mapping table), and a second binding from the same local port while the first is kept open
//! shares the mapping exactly when mapping is endpoint-independent.

use core::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use core::time::Duration;

use p2pd_nat::{Behaviour, Filtering, Mapping, PortAllocation};
use p2pd_proto::client_tcp::{
    CloseCause, TcpBinding, TcpBindingConfig, TcpBindingError, TcpBindingEvent, TcpMapping,
};
use p2pd_proto::server::StunServer;
use p2pd_proto::{Instant, IoError, Machine, SocketId, SocketOp, SocketOutcome, Transmit, Verdict};
use p2pd_sim::{run_seeds, LinkConfig, NatMapping, Protocol, Sim};

const S1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const S1_ALT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const S2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const S2_ALT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
const NAT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const PRIV: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const LOCAL_PORT: u16 = 40000;

/// Several bindings on one host: binding `i` uses socket ids `i * STRIDE + id`.
#[derive(Default)]
struct Bindings {
    all: Vec<TcpBinding>,
}

const STRIDE: u32 = 16;

impl Bindings {
    fn start(&mut self, now: Instant, config: TcpBindingConfig, seed: u64) -> usize {
        self.all.push(TcpBinding::new(config, seed, now));
        self.all.len() - 1
    }

    fn inner(&mut self, socket: SocketId) -> Option<(&mut TcpBinding, SocketId)> {
        let i = (socket.0 / STRIDE) as usize;
        Some((self.all.get_mut(i)?, SocketId(socket.0 % STRIDE)))
    }
}

fn outer(i: usize, socket: SocketId) -> SocketId {
    SocketId(i as u32 * STRIDE + socket.0)
}

impl Machine for Bindings {
    type Event = (usize, TcpBindingEvent);

    fn handle_datagram(&mut self, _: Instant, _: SocketId, _: SocketAddr, _: &[u8]) -> Verdict {
        Verdict::NotMine
    }

    fn handle_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        match self.inner(socket) {
            Some((b, s)) => b.handle_stream(now, s, data),
            None => Verdict::NotMine,
        }
    }

    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        if let Some((b, s)) = self.inner(socket) {
            b.handle_socket_result(now, s, outcome);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        for b in &mut self.all {
            if b.poll_timeout().is_some_and(|t| t <= now) {
                b.handle_timeout(now);
            }
        }
    }

    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        self.all.iter_mut().enumerate().find_map(|(i, b)| {
            let t = b.poll_transmit(buf)?;
            Some(Transmit {
                socket: outer(i, t.socket),
                ..t
            })
        })
    }

    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        self.all.iter_mut().enumerate().find_map(|(i, b)| {
            Some(match b.poll_socket_op()? {
                SocketOp::Bind {
                    socket,
                    transport,
                    local,
                    options,
                } => SocketOp::Bind {
                    socket: outer(i, socket),
                    transport,
                    local,
                    options,
                },
                SocketOp::Connect { socket, remote } => SocketOp::Connect {
                    socket: outer(i, socket),
                    remote,
                },
                SocketOp::Close { socket } => SocketOp::Close {
                    socket: outer(i, socket),
                },
                other => panic!("a binding does not ask for {other:?}"),
            })
        })
    }

    fn poll_event(&mut self) -> Option<(usize, TcpBindingEvent)> {
        self.all
            .iter_mut()
            .enumerate()
            .find_map(|(i, b)| Some((i, b.poll_event()?)))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.all.iter().filter_map(TcpBinding::poll_timeout).min()
    }
}

struct World {
    sim: Sim,
    host: p2pd_sim::HostId,
    nat: p2pd_sim::NatId,
    s1: p2pd_sim::HostId,
}

fn world(seed: u64, behaviour: Behaviour) -> World {
    let mut sim = Sim::new(seed);
    let s1 = sim.add_stun_server(S1, S1_ALT, 3478, 3479);
    sim.add_stun_server(S2, S2_ALT, 3478, 3479);
    let nat = sim.add_nat(NAT, behaviour);
    sim.set_nat_link(nat, LinkConfig::with_latency(Duration::from_millis(15)));
    let host = sim.add_host_behind(nat, PRIV, Bindings::default());
    World { sim, host, nat, s1 }
}

fn binding(server: Ipv4Addr, keep_open: bool) -> TcpBindingConfig {
    TcpBindingConfig::new(
        SocketAddr::new(server.into(), 3478),
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), LOCAL_PORT),
    )
    .keep_open(keep_open)
}

impl World {
    fn start(&mut self, config: TcpBindingConfig) -> usize {
        let seed = self.sim.machine_seed();
        self.sim
            .with_machine::<Bindings, _>(self.host, |m, now| m.start(now, config, seed))
    }

    /// Runs until binding `i` reported `Mapped` or `Failed`; returns its events so far.
    fn outcome(&mut self, i: usize) -> Result<TcpMapping, TcpBindingError> {
        self.sim.run_for(Duration::from_secs(6));
        let events = self.sim.take_events::<Bindings>(self.host);
        events
            .into_iter()
            .filter(|(j, _)| *j == i)
            .find_map(|(_, e)| match e {
                TcpBindingEvent::Mapped(m) => Some(Ok(m)),
                TcpBindingEvent::Failed { reason } => Some(Err(reason)),
                _ => None,
            })
            .expect("an outcome within the timeout")
    }

    /// The NAT's TCP mapping for the host's local port toward `server` (per the mapping
    /// behaviour's key).
    fn truth(&self, server: Ipv4Addr) -> SocketAddrV4 {
        let internal = SocketAddrV4::new(PRIV, LOCAL_PORT);
        let table = self.sim.nat_mapping_table(self.nat);
        let found: Vec<&NatMapping> = table
            .iter()
            .filter(|m| m.protocol == Protocol::Tcp && m.internal == internal)
            .filter(|m| m.remote_ip.is_none_or(|ip| ip == server))
            .collect();
        assert_eq!(found.len(), 1, "one mapping toward {server}: {table:?}");
        found[0].external
    }
}

fn behaviours() -> Vec<Behaviour> {
    let mut out = Vec::new();
    for mapping in [
        Mapping::EndpointIndependent,
        Mapping::AddressDependent,
        Mapping::AddressAndPortDependent,
    ] {
        for allocation in [
            PortAllocation::Preserving,
            PortAllocation::FixedOffset { offset: 1000 },
            PortAllocation::Sequential { stride: 7 },
            PortAllocation::Random,
        ] {
            out.push(
                Behaviour::new(mapping, Filtering::AddressAndPortDependent)
                    .with_allocation(allocation),
            );
        }
    }
    out
}

#[test]
fn tcp_binding_reports_the_nats_real_external_tcp_endpoint() {
    for behaviour in behaviours() {
        run_seeds([1, 2, 3], |seed| {
            let mut w = world(seed, behaviour);
            let i = w.start(binding(S1, true));
            let m = w
                .outcome(i)
                .unwrap_or_else(|e| panic!("{behaviour:?}: {e:?}"));
            let truth = w.truth(S1);
            assert_eq!(m.mapped, SocketAddr::V4(truth), "{behaviour:?}");
            assert_eq!(m.local.port(), LOCAL_PORT);
            assert_eq!(m.response_origin, Some(SocketAddr::new(S1.into(), 3478)));
            if behaviour.allocation == PortAllocation::Preserving {
                assert_eq!(m.mapped.port(), LOCAL_PORT);
            }
            // The server holds the kept-open connection.
            assert_eq!(w.sim.machine::<StunServer>(w.s1).tcp_connections(), 1);
            assert_eq!(w.sim.machine::<StunServer>(w.s1).stats().responses, 1);
        });
    }
}

#[test]
fn a_second_binding_from_the_same_port_shares_the_mapping_only_under_eim() {
    for behaviour in behaviours() {
        run_seeds([4, 5], |seed| {
            let mut w = world(seed, behaviour);
            let first = w.start(binding(S1, true));
            let a = w.outcome(first).expect("first mapping");
            // The first connection stays open (holding the mapping) while the same local port,
            // shared through SO_REUSEADDR/SO_REUSEPORT, asks another server.
            let second = w.start(binding(S2, true));
            let b = w.outcome(second).expect("second mapping");
            assert_eq!(a.local.port(), b.local.port());
            assert_eq!(b.mapped, SocketAddr::V4(w.truth(S2)), "{behaviour:?}");
            assert_eq!(a.mapped, SocketAddr::V4(w.truth(S1)), "{behaviour:?}");
            if behaviour.mapping == Mapping::EndpointIndependent {
                assert_eq!(a.mapped, b.mapped, "{behaviour:?}");
            } else {
                // A second mapping needs a second port (even a preserving box has given the local
                // port away already).
                assert_ne!(a.mapped, b.mapped, "{behaviour:?}");
            }
            // Toward the same server while the first is open the 4-tuple is taken: the connect
            // fails as on Linux (EADDRNOTAVAIL).
            let third = w.start(binding(S1, false));
            assert_eq!(
                w.outcome(third),
                Err(TcpBindingError::ConnectFailed(IoError::AddrNotAvailable))
            );
        });
    }
}

#[test]
fn closing_releases_the_connection_on_both_sides() {
    let mut w = world(
        9,
        Behaviour::new(Mapping::EndpointIndependent, Filtering::EndpointIndependent),
    );
    let i = w.start(binding(S1, true));
    let _ = w.outcome(i).expect("mapping");
    assert_eq!(w.sim.socket_count(w.host), 1);
    w.sim
        .with_machine::<Bindings, _>(w.host, |m, now| m.all[i].close(now));
    w.sim.run_for(Duration::from_secs(2));
    let events = w.sim.take_events::<Bindings>(w.host);
    assert!(events.contains(&(
        i,
        TcpBindingEvent::Closed {
            cause: CloseCause::Local
        }
    )));
    assert_eq!(w.sim.socket_count(w.host), 0);
    let server = w.sim.machine::<StunServer>(w.s1);
    assert_eq!(server.tcp_connections(), 0);
    assert_eq!(server.stats().tcp_closed, 1);
    // Without keep_open the socket goes right after the answer.
    let j = w.start(binding(S2, false));
    let _ = w.outcome(j).expect("mapping");
    assert_eq!(w.sim.socket_count(w.host), 0);
}

#[test]
fn the_server_idles_out_a_silent_connection_and_the_binding_sees_it() {
    let mut w = world(
        10,
        Behaviour::new(Mapping::EndpointIndependent, Filtering::EndpointIndependent),
    );
    let i = w.start(binding(S1, true));
    let _ = w.outcome(i).expect("mapping");
    // The server's idle timeout (120 s) closes the connection; the binding ends with PeerClosed.
    w.sim.run_for(Duration::from_secs(130));
    let events = w.sim.take_events::<Bindings>(w.host);
    assert!(
        events.contains(&(
            i,
            TcpBindingEvent::Closed {
                cause: CloseCause::PeerClosed
            }
        )),
        "{events:?}"
    );
    assert_eq!(w.sim.machine::<StunServer>(w.s1).stats().tcp_idle_closed, 1);
    assert_eq!(w.sim.socket_count(w.host), 0);
}

#[test]
fn keepalives_hold_the_connection_past_the_servers_idle_timeout() {
    let mut w = world(
        11,
        Behaviour::new(Mapping::EndpointIndependent, Filtering::EndpointIndependent),
    );
    let mut config = binding(S1, true);
    config.keepalive = Some(Duration::from_secs(60));
    let i = w.start(config);
    let _ = w.outcome(i).expect("mapping");
    w.sim.run_for(Duration::from_secs(600));
    let events = w.sim.take_events::<Bindings>(w.host);
    assert!(events.is_empty(), "{events:?}");
    let server = w.sim.machine::<StunServer>(w.s1);
    assert_eq!(server.tcp_connections(), 1);
    assert_eq!(server.stats().tcp_idle_closed, 0);
}
