//! A `StunClient` asks an RFC 5780 `StunServer` for its mapped address over an in-memory "network"
//! in virtual time: no sockets, no clock, no runtime. Each machine is drained with
//! [`p2pd_proto::drain`] into a [`Host`] (an [`Outputs`] implementation) that plays the operating
//! system: it answers bind intents, and queues transmits as packets that the network delivers to
//! whichever host owns the destination address, 10 ms later. The network drops the client's first
//! request, so the client's retransmission timer (RTO 500 ms) is seen at work.
//!
//! ```text
//! cargo run -p p2pd-proto --example stun_in_memory
//! ```
// Example code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::Duration;

use p2pd_proto::client::{ClientConfig, ClientEvent, Request, StunClient};
use p2pd_proto::server::{ServerConfig, ServerEvent, StunServer};
use p2pd_proto::{
    drain, Instant, Machine, Outputs, SocketId, SocketOp, SocketOutcome, Transmit,
    TRANSMIT_BUFFER_LEN,
};

/// One-way latency of the in-memory network.
const LATENCY: Duration = Duration::from_millis(10);

/// A datagram in flight.
struct Packet {
    deliver_at: Instant,
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// What one machine's "operating system" holds: its bound sockets, the socket outcomes it owes
/// the machine, the packets it sent and the events the machine reported.
struct Host<E> {
    now: Instant,
    sockets: HashMap<SocketId, SocketAddr>,
    outcomes: Vec<(SocketId, SocketOutcome)>,
    sent: Vec<Packet>,
    events: Vec<E>,
    next_port: u16,
}

impl<E> Host<E> {
    fn new() -> Self {
        Host {
            now: Instant::ZERO,
            sockets: HashMap::new(),
            outcomes: Vec::new(),
            sent: Vec::new(),
            events: Vec::new(),
            next_port: 40_000,
        }
    }
}

impl<M: Machine> Outputs<M> for Host<M::Event> {
    fn transmit(&mut self, transmit: Transmit, bytes: &[u8]) {
        let from = self.sockets[&transmit.socket];
        self.sent.push(Packet {
            deliver_at: self.now + LATENCY,
            from,
            to: transmit.destination,
            bytes: bytes.to_vec(),
        });
    }

    fn socket_op(&mut self, op: SocketOp) {
        match op {
            SocketOp::Bind { socket, local, .. } => {
                // Port 0 means "any": pick one, as the kernel would.
                let mut local = local;
                if local.port() == 0 {
                    local.set_port(self.next_port);
                    self.next_port += 1;
                }
                self.sockets.insert(socket, local);
                // The outcome is owed: `drain` hands it over through `outcome` below.
                self.outcomes.push((socket, SocketOutcome::Bound { local }));
            }
            SocketOp::Close { socket } => {
                self.sockets.remove(&socket);
            }
            other => panic!("not needed in this example: {other:?}"),
        }
    }

    fn event(&mut self, _: &mut M, event: M::Event) -> ControlFlow<()> {
        self.events.push(event);
        ControlFlow::Continue(())
    }

    fn outcome(&mut self) -> Option<(Instant, SocketId, SocketOutcome)> {
        let (socket, outcome) = self.outcomes.pop()?;
        Some((self.now, socket, outcome))
    }
}

/// Drains `machine` at `now` (the socket outcomes its intents produced are handed back within
/// the drain) until it is quiet; returns its next deadline.
fn pump<M: Machine>(machine: &mut M, host: &mut Host<M::Event>, now: Instant) -> Option<Instant> {
    let mut buf = [0u8; TRANSMIT_BUFFER_LEN];
    host.now = now;
    // This host never stops a drain early.
    drain(machine, &mut buf, host).continue_value().flatten()
}

/// The socket of `host` bound to `addr`, if any.
fn socket_at<E>(host: &Host<E>, addr: SocketAddr) -> Option<SocketId> {
    host.sockets
        .iter()
        .find(|(_, a)| **a == addr)
        .map(|(s, _)| *s)
}

fn main() {
    let primary: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    let client_ip: SocketAddr = "198.51.100.7:0".parse().unwrap();

    // An RFC 5780 server (two IPs, two ports: four sockets) and a client. Both ask for their
    // sockets with bind intents, which `pump` carries out.
    let mut server = StunServer::new(ServerConfig::rfc5780(
        primary,
        "192.0.2.2".parse().unwrap(),
        3479,
    ))
    .unwrap();
    let mut client = StunClient::new(ClientConfig::default(), 42);
    let (mut server_host, mut client_host) = (Host::new(), Host::new());

    let mut now = Instant::ZERO;
    let socket = client
        .open_socket(now, client_ip, Default::default())
        .unwrap();
    let tx = client
        .start(now, Request::binding(socket, primary))
        .unwrap();

    let mut in_flight: Vec<Packet> = Vec::new();
    let mut dropped_first = false;
    let mut result = None;
    while result.is_none() {
        // Drain both machines; collect what they sent.
        let server_deadline = pump(&mut server, &mut server_host, now);
        let client_deadline = pump(&mut client, &mut client_host, now);
        for event in client_host.events.drain(..) {
            match event {
                ClientEvent::SocketReady { local, .. } => println!("client: socket on {local}"),
                ClientEvent::Transaction(done) => result = Some(done),
                other => println!("client: {other:?}"),
            }
        }
        for event in server_host.events.drain(..) {
            if let ServerEvent::Listening { role, local } = event {
                println!("server: {role:?} listening on {local}");
            }
        }
        for packet in client_host.sent.drain(..) {
            if !dropped_first {
                dropped_first = true;
                println!("network: dropping the first request");
                continue;
            }
            in_flight.push(packet);
        }
        in_flight.append(&mut server_host.sent);
        if result.is_some() {
            break;
        }

        // Advance virtual time to the next thing that happens: a delivery or a deadline.
        let next_delivery = in_flight.iter().map(|p| p.deliver_at).min();
        now = [next_delivery, client_deadline, server_deadline]
            .into_iter()
            .flatten()
            .min()
            .expect("something is pending");
        if client_deadline.is_some_and(|d| d <= now) {
            client.handle_timeout(now);
        }
        if server_deadline.is_some_and(|d| d <= now) {
            server.handle_timeout(now);
        }
        // Deliver every packet due, by destination address.
        let (due, later): (Vec<Packet>, Vec<Packet>) =
            in_flight.into_iter().partition(|p| p.deliver_at <= now);
        in_flight = later;
        for p in due {
            let verdict = if let Some(s) = socket_at(&server_host, p.to) {
                server.handle_datagram(now, s, p.from, &p.bytes)
            } else if let Some(s) = socket_at(&client_host, p.to) {
                client.handle_datagram(now, s, p.from, &p.bytes)
            } else {
                continue; // nobody there
            };
            println!(
                "{:>8.3?}: {} -> {}: {verdict:?}",
                now - Instant::ZERO,
                p.from,
                p.to
            );
        }
    }

    let done = result.unwrap();
    assert_eq!(done.id, tx);
    let reply = done.outcome.expect("the server answered");
    let local = client.local_addr(socket).unwrap();
    println!("mapped address: {}", reply.mapped);
    println!("other address:  {:?}", reply.other_address);
    println!(
        "rtt {:?} after {} transmissions, {:?} after the start",
        reply.rtt,
        reply.transmissions,
        now - Instant::ZERO
    );
    // No NAT in this network: the server sees the client's own socket address.
    assert_eq!(reply.mapped, local);
    // The server's other role (alternate IP and port), from OTHER-ADDRESS.
    assert_eq!(reply.other_address, Some("192.0.2.2:3479".parse().unwrap()));
    // The first request was dropped: the reply came to the retransmission 500 ms later.
    assert_eq!(reply.transmissions, 2);
    assert_eq!(reply.rtt, 2 * LATENCY);
    assert_eq!(
        now,
        Instant::ZERO + Duration::from_millis(500) + 2 * LATENCY
    );

    // Closing emits one close intent per socket, then the final event.
    client.close(now);
    server.close(now);
    pump(&mut client, &mut client_host, now);
    pump(&mut server, &mut server_host, now);
    assert!(client_host.sockets.is_empty() && server_host.sockets.is_empty());
    assert!(matches!(
        client_host.events.last(),
        Some(ClientEvent::Closed)
    ));
    assert!(matches!(
        server_host.events.last(),
        Some(ServerEvent::Closed)
    ));
    println!("ok: both machines closed every socket");
}
