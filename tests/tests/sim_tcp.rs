//! TCP in the simulator: handshakes, streams over lossy links, NAT traversal, simultaneous open,
//! RST versus silent drop, backlog, close and reset, determinism.

use core::net::{Ipv4Addr, SocketAddr};
use core::time::Duration;

use p2pd_nat::{Behaviour, Filtering, Mapping};
use p2pd_proto::{IoError, OpKind, SocketId};
use p2pd_sim::{
    run_seeds, Host, HostId, LinkConfig, NatTcpConfig, RawTcp, Sim, TcpConfig, TcpEvent,
};

const SRV: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);
const CLI: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const PEER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
const NAT_A: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const NAT_B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const PRIV_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PRIV_B: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn any(port: u16) -> SocketAddr {
    addr(Ipv4Addr::UNSPECIFIED, port)
}

/// A connect that gives up quickly: SYN at 0, 200 ms, 600 ms, then TimedOut at 1.4 s.
fn quick() -> TcpConfig {
    TcpConfig {
        initial_rto: Duration::from_millis(200),
        syn_retries: 2,
        ..TcpConfig::default()
    }
}

fn events(sim: &mut Sim, h: HostId) -> Vec<TcpEvent> {
    sim.take_events::<RawTcp>(h)
}

/// Host `h` binds a stream to `port` (0: any) and connects it to `to`; returns its socket.
fn dial(sim: &mut Sim, h: HostId, port: u16, to: SocketAddr) -> SocketId {
    sim.with_machine::<RawTcp, _>(h, |m, _| {
        let s = m.bind(any(port), false);
        m.connect(s, to);
        s
    })
}

fn peer_closed(events: &[TcpEvent], socket: SocketId) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, TcpEvent::PeerClosed { socket: s } if *s == socket))
        .count()
}

fn failure(events: &[TcpEvent], socket: SocketId) -> Option<(OpKind, IoError)> {
    events.iter().find_map(|e| match e {
        TcpEvent::Failed {
            socket: s,
            op,
            error,
        } if *s == socket => Some((*op, *error)),
        _ => None,
    })
}

/// The (local, remote) addresses of `socket`'s stream once it connected (`accepted` false) or
/// was accepted (`accepted` true).
fn opened(
    events: &[TcpEvent],
    socket: SocketId,
    accepted: bool,
) -> Option<(SocketAddr, SocketAddr)> {
    events.iter().find_map(|e| match *e {
        TcpEvent::Connected {
            socket: s,
            local,
            remote,
        } if s == socket && !accepted => Some((local, remote)),
        TcpEvent::Accepted {
            socket: s,
            local,
            remote,
        } if s == socket && accepted => Some((local, remote)),
        _ => None,
    })
}

fn connected(events: &[TcpEvent], socket: SocketId) -> Option<(SocketAddr, SocketAddr)> {
    opened(events, socket, false)
}

fn accepted(events: &[TcpEvent], socket: SocketId) -> Option<(SocketAddr, SocketAddr)> {
    opened(events, socket, true)
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ salt)
        .collect()
}

/// A public server listening on SRV:80 with `accepts` accepts outstanding.
fn server(sim: &mut Sim, link: LinkConfig, accepts: usize) -> (HostId, SocketId, Vec<SocketId>) {
    let h = sim.add_host(Host::public([SRV]).with_link(link), RawTcp::new());
    let (listener, ids) = sim.with_machine::<RawTcp, _>(h, |m, _| {
        let l = m.bind(addr(SRV, 80), false);
        m.listen(l, 16);
        let ids: Vec<SocketId> = (0..accepts).map(|_| m.accept(l)).collect();
        (l, ids)
    });
    (h, listener, ids)
}

#[test]
fn connect_accept_exchange_close_between_public_hosts() {
    let mut sim = Sim::new(1);
    let link = LinkConfig::with_latency(Duration::from_millis(10));
    let (srv, listener, acc) = server(&mut sim, link, 1);
    let cli = sim.add_host(Host::public([CLI]).with_link(link), RawTcp::new());
    let s = dial(&mut sim, cli, 0, addr(SRV, 80));
    sim.run_for(Duration::from_millis(100));
    let ce = events(&mut sim, cli);
    let (local, remote) = connected(&ce, s).expect("connected");
    assert_eq!(remote, addr(SRV, 80));
    assert_eq!(local.ip(), SocketAddr::from((CLI, 0)).ip());
    let se = events(&mut sim, srv);
    assert_eq!(accepted(&se, acc[0]), Some((addr(SRV, 80), local)));
    // The handshake takes one round trip (2 x 2 x 10 ms).
    assert_eq!(sim.host_tcp_stats(cli).connected, 1);

    sim.with_machine::<RawTcp, _>(cli, |m, _| m.send(s, b"hello"));
    sim.run_for(Duration::from_millis(100));
    let se = events(&mut sim, srv);
    assert_eq!(TcpEvent::received(&se, acc[0]), b"hello");
    sim.with_machine::<RawTcp, _>(srv, |m, _| m.send(acc[0], b"world"));
    sim.run_for(Duration::from_millis(100));
    let ce = events(&mut sim, cli);
    assert_eq!(TcpEvent::received(&ce, s), b"world");

    // Client closes: the server reads EOF exactly once, closes too.
    sim.with_machine::<RawTcp, _>(cli, |m, _| m.close(s));
    sim.run_for(Duration::from_millis(100));
    let se = events(&mut sim, srv);
    assert_eq!(peer_closed(&se, acc[0]), 1);
    sim.with_machine::<RawTcp, _>(srv, |m, _| {
        m.close(acc[0]);
        m.close(listener);
    });
    sim.run_for(Duration::from_millis(100));
    assert!(events(&mut sim, cli).is_empty(), "nothing after the close");
    assert_eq!(sim.socket_count(cli), 0);
    assert_eq!(sim.socket_count(srv), 0);
    // The active closer lingers in TIME-WAIT, then every connection is gone.
    assert_eq!(sim.tcp_connections(srv), 0);
    assert_eq!(sim.tcp_connections(cli), 1);
    sim.run_for(Duration::from_secs(61));
    assert_eq!(sim.tcp_connections(cli), 0);
    let st = sim.tcp_stats();
    assert_eq!(
        (st.connected, st.accepted, st.retransmitted, st.rst_sent),
        (1, 1, 0, 0)
    );
}

#[test]
fn stream_misuse_and_bind_rules() {
    let mut sim = Sim::new(2);
    let h = sim.add_host(Host::public([CLI]), RawTcp::new());
    let (a, b, c, d, e) = sim.with_machine::<RawTcp, _>(h, |m, _| {
        let a = m.bind(any(7000), false);
        let b = m.bind(any(7000), false); // in use
        let c = m.bind(any(7001), true);
        let d = m.bind(any(7001), true); // both reuse: shared
        let e = m.bind(any(7002), false);
        (a, b, c, d, e)
    });
    let ev = events(&mut sim, h);
    assert_eq!(failure(&ev, b), Some((OpKind::Bind, IoError::AddrInUse)));
    for s in [a, c, d, e] {
        assert!(failure(&ev, s).is_none(), "{s:?}: {ev:?}");
    }
    // A transmit on a bound, unconnected stream fails; accept on a non-listener fails.
    let acc = sim.with_machine::<RawTcp, _>(h, |m, _| {
        m.send(a, b"x");
        m.accept(e)
    });
    let ev = events(&mut sim, h);
    assert!(matches!(failure(&ev, a), Some((OpKind::Send, _))), "{ev:?}");
    assert!(
        matches!(failure(&ev, acc), Some((OpKind::Accept, _))),
        "{ev:?}"
    );
}

#[test]
fn through_a_nat_the_server_sees_the_mapping() {
    let mut sim = Sim::new(3);
    let (srv, _, acc) = server(
        &mut sim,
        LinkConfig::with_latency(Duration::from_millis(5)),
        1,
    );
    let nat = sim.add_nat(
        NAT_A,
        Behaviour::new(
            Mapping::AddressAndPortDependent,
            Filtering::AddressAndPortDependent,
        ),
    );
    let cli = sim.add_host_behind(nat, PRIV_A, RawTcp::new());
    let s = dial(&mut sim, cli, 40000, addr(SRV, 80));
    sim.run_for(Duration::from_millis(100));
    let ce = events(&mut sim, cli);
    assert_eq!(
        connected(&ce, s),
        Some((addr(PRIV_A, 40000), addr(SRV, 80)))
    );
    let se = events(&mut sim, srv);
    assert_eq!(
        accepted(&se, acc[0]),
        Some((addr(SRV, 80), addr(NAT_A, 40000)))
    );
    let up = pattern(10_000, 1);
    let down = pattern(20_000, 2);
    sim.with_machine::<RawTcp, _>(cli, |m, _| m.send(s, &up));
    sim.with_machine::<RawTcp, _>(srv, |m, _| m.send(acc[0], &down));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(TcpEvent::received(&events(&mut sim, srv), acc[0]), up);
    assert_eq!(TcpEvent::received(&events(&mut sim, cli), s), down);
    assert_eq!(sim.nat_stats(nat).mappings_created, 1);
}

/// Lets the client's and the server's connections retry patiently, then dials the server's port 80
/// from the client. At 30 % loss per link a round trip succeeds one time in four: the backoff is
/// capped so a run stays within a few virtual minutes, and the SYN tries longer.
fn dial_patiently(sim: &mut Sim, cli: HostId, srv: HostId) -> SocketId {
    let config = TcpConfig {
        max_rto: Duration::from_secs(4),
        syn_retries: 20,
        ..TcpConfig::default()
    };
    sim.set_tcp_config(cli, config);
    sim.set_tcp_config(srv, config);
    dial(sim, cli, 0, addr(SRV, 80))
}

/// Runs `sim` in steps of `step_ms` (3000 at most), collecting the client's and the server's
/// events; after each step `act` sees them all so far and answers whether the run is done.
fn run_steps(
    sim: &mut Sim,
    cli: HostId,
    srv: HostId,
    step_ms: u64,
    mut act: impl FnMut(&mut Sim, &[TcpEvent], &[TcpEvent]) -> bool,
) -> (Vec<TcpEvent>, Vec<TcpEvent>) {
    let (mut ce, mut se) = (Vec::new(), Vec::new());
    for _ in 0..3000 {
        sim.run_for(Duration::from_millis(step_ms));
        ce.extend(events(sim, cli));
        se.extend(events(sim, srv));
        if act(sim, &ce, &se) {
            break;
        }
    }
    (ce, se)
}

/// Every byte arrives once, in order, over links that lose, duplicate and reorder.
fn lossy_run(seed: u64, loss: f64) -> u64 {
    let mut sim = Sim::new(seed);
    let link = LinkConfig::with_latency(Duration::from_millis(15))
        .jitter(Duration::from_millis(10))
        .loss(loss)
        .duplicate(0.05)
        .reorder(0.1, Duration::from_millis(30));
    let (srv, _, acc) = server(&mut sim, link, 1);
    let nat = sim.add_nat(
        NAT_A,
        Behaviour::new(Mapping::EndpointIndependent, Filtering::AddressDependent),
    );
    sim.set_nat_link(nat, link);
    let cli = sim.add_host_behind(nat, PRIV_A, RawTcp::new());
    let s = dial_patiently(&mut sim, cli, srv);
    let up = pattern(60_000, 3);
    let down = pattern(30_000, 4);
    let mut sent = (false, false, false);
    let (ce, se) = run_steps(&mut sim, cli, srv, 100, |sim, ce, se| {
        if !sent.0 && connected(ce, s).is_some() {
            sent.0 = true;
            sim.with_machine::<RawTcp, _>(cli, |m, _| m.send(s, &up));
        }
        if !sent.1 && accepted(se, acc[0]).is_some() {
            sent.1 = true;
            sim.with_machine::<RawTcp, _>(srv, |m, _| m.send(acc[0], &down));
        }
        // The client closes once it has read everything (a close discards later data).
        if !sent.2 && TcpEvent::received(ce, s).len() >= down.len() {
            sent.2 = true;
            sim.with_machine::<RawTcp, _>(cli, |m, _| m.close(s));
        }
        peer_closed(se, acc[0]) == 1
    });
    assert!(
        connected(&ce, s).is_some(),
        "seed {seed}: no connect: {ce:?}"
    );
    let got = TcpEvent::received(&se, acc[0]);
    assert!(
        got == up,
        "seed {seed}: upstream {} of {} bytes; {:?}; server events {:?}",
        got.len(),
        up.len(),
        sim.tcp_stats(),
        se.iter()
            .map(|e| match e {
                TcpEvent::Data { data, .. } => format!("data {}", data.len()),
                e => format!("{e:?}"),
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(
        peer_closed(&se, acc[0]),
        1,
        "EOF once, after the data; client got {} of {}; sent {sent:?}; {:?} at {:?}; conns {} {}",
        TcpEvent::received(&ce, s).len(),
        down.len(),
        sim.tcp_stats(),
        sim.now(),
        sim.tcp_connections(cli),
        sim.tcp_connections(srv)
    );
    assert!(
        matches!(se.last(), Some(TcpEvent::PeerClosed { .. })),
        "EOF after every byte"
    );
    assert!(
        TcpEvent::received(&ce, s) == down,
        "seed {seed}: downstream"
    );
    let st = sim.tcp_stats();
    if loss > 0.0 {
        assert!(st.lost > 0 && st.retransmitted > 0, "{st:?}");
    }
    sim.trace_hash()
}

#[test]
fn lossy_reordering_duplicating_links_deliver_every_byte_in_order() {
    run_seeds(1..=12, |seed| {
        let loss = [0.1, 0.2, 0.3][(seed % 3) as usize];
        lossy_run(seed, loss);
    });
}

#[test]
fn same_seed_same_trace() {
    assert_eq!(lossy_run(77, 0.2), lossy_run(77, 0.2));
    assert_ne!(lossy_run(77, 0.2), lossy_run(78, 0.2));
}

#[test]
fn no_listener_rst_refuses_silent_drop_times_out() {
    for rst in [true, false] {
        let mut sim = Sim::new(4);
        let srv = sim.add_host(
            Host::public([SRV]).with_tcp(TcpConfig {
                rst_on_closed_port: rst,
                ..TcpConfig::default()
            }),
            RawTcp::new(),
        );
        let cli = sim.add_host(
            Host::public([CLI])
                .with_link(LinkConfig::with_latency(Duration::from_millis(10)))
                .with_tcp(quick()),
            RawTcp::new(),
        );
        let s = dial(&mut sim, cli, 0, addr(SRV, 81));
        sim.run_for(Duration::from_secs(3));
        let ev = events(&mut sim, cli);
        let expected = if rst {
            IoError::ConnectionRefused
        } else {
            IoError::TimedOut
        };
        assert_eq!(failure(&ev, s), Some((OpKind::Connect, expected)), "{ev:?}");
        assert_eq!(ev.len(), 2, "bound, then exactly one failure: {ev:?}");
        let st = sim.host_tcp_stats(srv);
        assert_eq!(st.no_listener, if rst { 1 } else { 3 });
        assert_eq!(st.rst_sent, u64::from(rst));
        // The failed socket stays the machine's until it closes it; sends fail.
        sim.with_machine::<RawTcp, _>(cli, |m, _| m.send(s, b"late"));
        let ev = events(&mut sim, cli);
        assert_eq!(failure(&ev, s), Some((OpKind::Send, expected)));
        assert_eq!(sim.socket_count(cli), 1);
        sim.with_machine::<RawTcp, _>(cli, |m, _| m.close(s));
        assert_eq!(sim.socket_count(cli), 0);
        assert_eq!(sim.tcp_connections(cli), 0);
    }
}

/// Each host binds a listener and a connecting socket on one port (reuse flags), then both connect
/// to each other at the same time.
fn simultaneous(
    sim: &mut Sim,
    a: HostId,
    b: HostId,
    a_to: SocketAddr,
    b_to: SocketAddr,
    delay_b: Duration,
) {
    let start = |sim: &mut Sim, h: HostId, port: u16, to: SocketAddr| {
        sim.with_machine::<RawTcp, _>(h, |m, _| {
            let l = m.bind(any(port), true);
            m.listen(l, 4);
            m.accept(l);
            let s = m.bind(any(port), true);
            m.connect(s, to);
            s
        })
    };
    let sa = start(sim, a, 5000, a_to);
    sim.run_for(delay_b);
    let sb = start(sim, b, 6000, b_to);
    sim.run_for(Duration::from_secs(3));
    let (ea, eb) = (events(sim, a), events(sim, b));
    assert!(connected(&ea, sa).is_some(), "A: {ea:?}");
    assert!(connected(&eb, sb).is_some(), "B: {eb:?}");
    // One connection each, made by connect (nothing accepted).
    assert!(!ea
        .iter()
        .chain(&eb)
        .any(|e| matches!(e, TcpEvent::Accepted { .. })));
    sim.with_machine::<RawTcp, _>(a, |m, _| m.send(sa, b"ping"));
    sim.with_machine::<RawTcp, _>(b, |m, _| m.send(sb, b"pong"));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(TcpEvent::received(&events(sim, a), sa), b"pong");
    assert_eq!(TcpEvent::received(&events(sim, b), sb), b"ping");
}

#[test]
fn simultaneous_open_between_public_hosts() {
    let mut sim = Sim::new(5);
    let link = LinkConfig::with_latency(Duration::from_millis(20));
    let a = sim.add_host(Host::public([CLI]).with_link(link), RawTcp::new());
    let b = sim.add_host(Host::public([PEER]).with_link(link), RawTcp::new());
    simultaneous(
        &mut sim,
        a,
        b,
        addr(PEER, 6000),
        addr(CLI, 5000),
        Duration::ZERO,
    );
    let st = sim.tcp_stats();
    assert_eq!((st.connected, st.accepted, st.rst_sent), (2, 0, 0));
}

#[test]
fn simultaneous_open_through_endpoint_independent_nats() {
    for (filtering, delay_ms) in [
        (Filtering::AddressAndPortDependent, 0),
        (Filtering::AddressAndPortDependent, 300),
        (Filtering::EndpointIndependent, 0),
    ] {
        let mut sim = Sim::new(6);
        let link = LinkConfig::with_latency(Duration::from_millis(20));
        let behaviour = Behaviour::new(Mapping::EndpointIndependent, filtering);
        let na = sim.add_nat(NAT_A, behaviour);
        let nb = sim.add_nat(NAT_B, behaviour);
        sim.set_nat_link(na, link);
        sim.set_nat_link(nb, link);
        let a = sim.add_host_behind(na, PRIV_A, RawTcp::new());
        let b = sim.add_host_behind(nb, PRIV_B, RawTcp::new());
        // Port-preserving NATs: each side knows the other's mapped port in advance.
        simultaneous(
            &mut sim,
            a,
            b,
            addr(NAT_B, 6000),
            addr(NAT_A, 5000),
            Duration::from_millis(delay_ms),
        );
        let st = sim.tcp_stats();
        assert_eq!(st.connected, 2, "{filtering:?} {delay_ms}: {st:?}");
        assert_eq!(sim.nat_stats(na).mappings_created, 1);
        assert_eq!(sim.nat_stats(nb).mappings_created, 1);
        if delay_ms > 0 {
            // A's first SYN found no mapping at B's NAT and was dropped silently.
            assert!(sim.nat_stats(nb).tcp_syn_dropped >= 1);
        }
    }
}

#[test]
fn nat_filters_unsolicited_syn_silently_or_with_rst() {
    for (filtering, rst) in [
        (Filtering::AddressAndPortDependent, false),
        (Filtering::AddressAndPortDependent, true),
        (Filtering::EndpointIndependent, false),
    ] {
        let mut sim = Sim::new(7);
        let (srv, _, _) = server(&mut sim, LinkConfig::IDEAL, 1);
        let nat = sim.add_nat(
            NAT_A,
            Behaviour::new(Mapping::EndpointIndependent, filtering),
        );
        sim.set_nat_tcp(
            nat,
            NatTcpConfig {
                rst_unsolicited_syn: rst,
                ..NatTcpConfig::default()
            },
        );
        let inside = sim.add_host_behind(nat, PRIV_A, RawTcp::new());
        // The inside host listens on 7000 and opens the mapping with a connection from 7000.
        let (acc, out) = sim.with_machine::<RawTcp, _>(inside, |m, _| {
            let l = m.bind(any(7000), true);
            m.listen(l, 4);
            let acc = m.accept(l);
            let s = m.bind(any(7000), true);
            m.connect(s, addr(SRV, 80));
            (acc, s)
        });
        sim.run_for(Duration::from_millis(100));
        assert!(connected(&events(&mut sim, inside), out).is_some());
        let _ = srv;
        // A stranger connects to the mapping.
        let peer = sim.add_host(Host::public([PEER]).with_tcp(quick()), RawTcp::new());
        let s = dial(&mut sim, peer, 0, addr(NAT_A, 7000));
        sim.run_for(Duration::from_secs(3));
        let pe = events(&mut sim, peer);
        let ie = events(&mut sim, inside);
        let ns = sim.nat_stats(nat);
        match (filtering, rst) {
            (Filtering::EndpointIndependent, _) => {
                assert!(connected(&pe, s).is_some(), "{pe:?}");
                assert!(accepted(&ie, acc).is_some(), "{ie:?}");
            }
            (_, false) => {
                assert_eq!(failure(&pe, s), Some((OpKind::Connect, IoError::TimedOut)));
                assert_eq!(ns.tcp_syn_dropped, 3);
                assert_eq!(ns.dropped_filtered, 3);
            }
            (_, true) => {
                assert_eq!(
                    failure(&pe, s),
                    Some((OpKind::Connect, IoError::ConnectionRefused))
                );
                assert_eq!(ns.tcp_rst_sent, 1);
            }
        }
    }
}

#[test]
fn backlog_bounds_unaccepted_connections() {
    let mut sim = Sim::new(8);
    let srv = sim.add_host(Host::public([SRV]), RawTcp::new());
    let listener = sim.with_machine::<RawTcp, _>(srv, |m, _| {
        let l = m.bind(addr(SRV, 80), false);
        m.listen(l, 2);
        l
    });
    let link = LinkConfig::with_latency(Duration::from_millis(10));
    let clients: Vec<(HostId, SocketId)> = (0..4u8)
        .map(|i| {
            let h = sim.add_host(
                Host::public([Ipv4Addr::new(198, 51, 100, 20 + i)])
                    .with_link(link)
                    .with_tcp(quick()),
                RawTcp::new(),
            );
            let s = dial(&mut sim, h, 0, addr(SRV, 80));
            sim.run_for(Duration::from_millis(50));
            (h, s)
        })
        .collect();
    sim.run_for(Duration::from_secs(3));
    let outcomes: Vec<bool> = clients
        .iter()
        .map(|(h, s)| connected(&events(&mut sim, *h), *s).is_some())
        .collect();
    assert_eq!(outcomes, [true, true, false, false]);
    assert!(sim.host_tcp_stats(srv).syn_dropped_backlog >= 2);
    // Accepting takes the two waiting connections, in order.
    let ids = sim.with_machine::<RawTcp, _>(srv, |m, _| {
        [m.accept(listener), m.accept(listener), m.accept(listener)]
    });
    let ev = events(&mut sim, srv);
    let a0 = accepted(&ev, ids[0]).expect("first");
    let a1 = accepted(&ev, ids[1]).expect("second");
    assert_eq!(a0.1.ip(), SocketAddr::from(([198, 51, 100, 20], 0)).ip());
    assert_eq!(a1.1.ip(), SocketAddr::from(([198, 51, 100, 21], 0)).ip());
    assert!(accepted(&ev, ids[2]).is_none(), "nothing else waits");
}

#[test]
fn bytes_and_eof_before_accept_wait_for_it() {
    let mut sim = Sim::new(9);
    let srv = sim.add_host(Host::public([SRV]), RawTcp::new());
    let listener = sim.with_machine::<RawTcp, _>(srv, |m, _| {
        let l = m.bind(any(80), false);
        m.listen(l, 1);
        l
    });
    let _ = events(&mut sim, srv);
    let cli = sim.add_host(Host::public([CLI]), RawTcp::new());
    let s = dial(&mut sim, cli, 0, addr(SRV, 80));
    sim.run_for(Duration::from_millis(10));
    sim.with_machine::<RawTcp, _>(cli, |m, _| {
        m.send(s, b"early bytes");
        m.close(s);
    });
    sim.run_for(Duration::from_secs(1));
    let early = events(&mut sim, srv);
    assert!(early.is_empty(), "{early:?}");
    let acc = sim.with_machine::<RawTcp, _>(srv, |m, _| m.accept(listener));
    let ev = events(&mut sim, srv);
    assert!(matches!(ev[0], TcpEvent::Accepted { .. }), "{ev:?}");
    assert_eq!(TcpEvent::received(&ev, acc), b"early bytes");
    assert!(matches!(ev.last(), Some(TcpEvent::PeerClosed { .. })));
}

#[test]
fn reset_by_a_killed_peer_and_by_an_orphaned_connection() {
    let mut sim = Sim::new(10);
    let link = LinkConfig::with_latency(Duration::from_millis(5));
    let (srv, _, acc) = server(&mut sim, link, 2);
    let cli = sim.add_host(Host::public([CLI]).with_link(link), RawTcp::new());
    let (s1, s2) = sim.with_machine::<RawTcp, _>(cli, |m, _| {
        let s1 = m.bind(any(0), false);
        m.connect(s1, addr(SRV, 80));
        let s2 = m.bind(any(0), false);
        m.connect(s2, addr(SRV, 80));
        (s1, s2)
    });
    sim.run_for(Duration::from_millis(100));
    let _ = events(&mut sim, cli);
    // The server closes its side of the first connection; the client, after EOF, keeps writing:
    // the orphaned connection answers with an RST.
    sim.with_machine::<RawTcp, _>(srv, |m, _| m.close(acc[0]));
    sim.run_for(Duration::from_millis(100));
    assert_eq!(peer_closed(&events(&mut sim, cli), s1), 1);
    sim.with_machine::<RawTcp, _>(cli, |m, _| m.send(s1, b"anyone?"));
    sim.run_for(Duration::from_millis(100));
    let ev = events(&mut sim, cli);
    assert_eq!(
        failure(&ev, s1),
        Some((OpKind::Receive, IoError::ConnectionReset))
    );
    // Killing the server resets the second connection.
    sim.kill_host(srv);
    sim.run_for(Duration::from_millis(100));
    let ev = events(&mut sim, cli);
    assert_eq!(
        failure(&ev, s2),
        Some((OpKind::Receive, IoError::ConnectionReset))
    );
    sim.with_machine::<RawTcp, _>(cli, |m, _| m.send(s2, b"x"));
    assert_eq!(
        failure(&events(&mut sim, cli), s2),
        Some((OpKind::Send, IoError::ConnectionReset))
    );
    assert_eq!(sim.socket_count(srv), 0);
    assert_eq!(sim.tcp_connections(srv), 0);
    // A restarted server listens again.
    sim.restart_host(srv, RawTcp::new());
    let (_, _, acc) = {
        let l = sim.with_machine::<RawTcp, _>(srv, |m, _| {
            let l = m.bind(addr(SRV, 80), false);
            m.listen(l, 4);
            (l, m.accept(l))
        });
        (srv, l.0, [l.1])
    };
    let s3 = dial(&mut sim, cli, 0, addr(SRV, 80));
    sim.run_for(Duration::from_millis(100));
    assert!(connected(&events(&mut sim, cli), s3).is_some());
    assert!(accepted(&events(&mut sim, srv), acc[0]).is_some());
}

#[test]
fn a_host_cut_off_times_out_its_peer() {
    let mut sim = Sim::new(11);
    let (srv, _, acc) = server(
        &mut sim,
        LinkConfig::with_latency(Duration::from_millis(5)),
        1,
    );
    let cli = sim.add_host(
        Host::public([CLI]).with_tcp(TcpConfig {
            data_retries: 3,
            ..quick()
        }),
        RawTcp::new(),
    );
    let s = dial(&mut sim, cli, 0, addr(SRV, 80));
    sim.run_for(Duration::from_millis(100));
    assert!(accepted(&events(&mut sim, srv), acc[0]).is_some());
    sim.set_host_down(srv, true);
    sim.with_machine::<RawTcp, _>(cli, |m, _| m.send(s, b"lost"));
    sim.run_for(Duration::from_secs(30));
    let ev = events(&mut sim, cli);
    assert_eq!(
        failure(&ev, s),
        Some((OpKind::Receive, IoError::TimedOut)),
        "{ev:?}"
    );
    assert!(sim.stats().dropped_host_down >= 4);
}

#[test]
fn a_closed_connection_shortens_the_nat_mapping_lifetime() {
    let mut sim = Sim::new(12);
    let (srv, _, acc) = server(&mut sim, LinkConfig::IDEAL, 2);
    let nat = sim.add_nat(
        NAT_A,
        Behaviour::new(Mapping::EndpointIndependent, Filtering::AddressDependent),
    );
    let cli = sim.add_host_behind(nat, PRIV_A, RawTcp::new());
    let (open, closed) = sim.with_machine::<RawTcp, _>(cli, |m, _| {
        let a = m.bind(any(41000), false);
        m.connect(a, addr(SRV, 80));
        let b = m.bind(any(41001), false);
        m.connect(b, addr(SRV, 80));
        (a, b)
    });
    sim.run_for(Duration::from_millis(10));
    assert!(connected(&events(&mut sim, cli), closed).is_some());
    // One connection closes (FIN both ways); the other stays idle.
    sim.with_machine::<RawTcp, _>(cli, |m, _| m.close(closed));
    sim.run_for(Duration::from_millis(10));
    // `open` connected first, so the server's second accept is `closed`'s peer.
    sim.with_machine::<RawTcp, _>(srv, |m, _| m.close(acc[1]));
    let _ = open;
    sim.run_for(Duration::from_millis(10));
    assert_eq!(sim.nat_mappings(nat), 2);
    // Past the transitory 240 s, within the idle 2 h: only the closed one's mapping expires
    // (counted at the box's next packet).
    sim.run_for(Duration::from_secs(300));
    let probe = dial(&mut sim, cli, 41002, addr(SRV, 81));
    sim.run_for(Duration::from_millis(10));
    let _ = probe;
    let ns = sim.nat_stats(nat);
    assert_eq!(ns.expired, 1, "{ns:?}");
    assert_eq!(sim.nat_mappings(nat), 2, "the open one and the probe's");
}

/// Half-close: both sides send and shut down their sending half at once, over a slow lossy link.
/// Each still receives all of the other's bytes and then EOF (the first to shut down does not
/// lose what is still on its way to it); a transmit after the shutdown fails; `Close` afterwards
/// releases both sockets and the connections finish alone.
fn half_close_run(seed: u64, loss: f64) {
    let mut sim = Sim::new(seed);
    let link = LinkConfig::with_latency(Duration::from_millis(40))
        .jitter(Duration::from_millis(5))
        .loss(loss);
    let (srv, listener, acc) = server(&mut sim, link, 1);
    let cli = sim.add_host(Host::public([CLI]).with_link(link), RawTcp::new());
    let s = dial_patiently(&mut sim, cli, srv);
    let up = pattern(50_000, 5);
    let down = pattern(120_000, 6);
    let mut sent = (false, false);
    let (ce, se) = run_steps(&mut sim, cli, srv, 50, |sim, ce, se| {
        if !sent.0 && connected(ce, s).is_some() {
            sent.0 = true;
            sim.with_machine::<RawTcp, _>(cli, |m, _| {
                m.send(s, &up);
                m.shutdown(s);
            });
        }
        if !sent.1 && accepted(se, acc[0]).is_some() {
            sent.1 = true;
            sim.with_machine::<RawTcp, _>(srv, |m, _| {
                m.send(acc[0], &down);
                m.shutdown(acc[0]);
                m.shutdown(acc[0]);
            });
        }
        peer_closed(ce, s) == 1 && peer_closed(se, acc[0]) == 1
    });
    assert_eq!(
        TcpEvent::received(&se, acc[0]),
        up,
        "seed {seed}: server got"
    );
    assert_eq!(TcpEvent::received(&ce, s), down, "seed {seed}: client got");
    assert_eq!(peer_closed(&ce, s), 1, "seed {seed}");
    assert_eq!(peer_closed(&se, acc[0]), 1, "seed {seed}");
    assert_eq!(failure(&ce, s), None, "seed {seed}");
    assert_eq!(failure(&se, acc[0]), None, "seed {seed}");
    // The EOF comes after every byte.
    let last = |ev: &[TcpEvent], socket| {
        ev.iter()
            .rposition(|e| matches!(e, TcpEvent::Data { socket: x, .. } if *x == socket))
            < ev.iter()
                .position(|e| matches!(e, TcpEvent::PeerClosed { socket: x } if *x == socket))
    };
    assert!(last(&ce, s) && last(&se, acc[0]), "seed {seed}");

    // Sending after the shutdown fails; the sockets are still the machines'.
    sim.with_machine::<RawTcp, _>(cli, |m, _| m.send(s, b"late"));
    sim.run_for(Duration::from_millis(10));
    let ce = events(&mut sim, cli);
    assert!(
        matches!(failure(&ce, s), Some((OpKind::Send, IoError::BrokenPipe))),
        "seed {seed}: {ce:?}"
    );
    assert_eq!(sim.socket_count(cli), 1);
    assert_eq!(sim.socket_count(srv), 2);
    sim.with_machine::<RawTcp, _>(cli, |m, _| m.close(s));
    sim.with_machine::<RawTcp, _>(srv, |m, _| {
        m.close(acc[0]);
        m.close(listener);
    });
    sim.run_for(Duration::from_secs(2));
    assert!(events(&mut sim, cli).is_empty(), "seed {seed}");
    assert!(events(&mut sim, srv).is_empty(), "seed {seed}");
    assert_eq!(sim.socket_count(cli), 0);
    assert_eq!(sim.socket_count(srv), 0);
    sim.run_for(Duration::from_secs(125));
    assert_eq!(sim.tcp_connections(cli), 0, "seed {seed}");
    assert_eq!(sim.tcp_connections(srv), 0, "seed {seed}");
}

#[test]
fn half_close_delivers_both_directions() {
    half_close_run(1, 0.0);
    for seed in 0..20 {
        half_close_run(100 + seed, 0.1);
    }
}

#[test]
fn shutdown_of_a_socket_that_is_not_a_stream_fails() {
    let mut sim = Sim::new(3);
    let h = sim.add_host(Host::public([CLI]), RawTcp::new());
    let s = sim.with_machine::<RawTcp, _>(h, |m, _| {
        let s = m.bind(any(0), false);
        m.shutdown(s);
        s
    });
    sim.run_for(Duration::from_millis(10));
    let ev = events(&mut sim, h);
    assert_eq!(
        failure(&ev, s),
        Some((OpKind::Shutdown, IoError::NotConnected))
    );
}
