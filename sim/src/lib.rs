//! # p2pd-sim
//!
//! The deterministic network simulator, and the workspace's cross-crate tests.
//!
//! ## The simulator
//!
//! [`Sim`] is a seeded discrete-event simulation in virtual time ([`p2pd_proto::Instant`]): no wall
//! clock, no threads, no real sockets. Events sit in a queue ordered by (time, sequence number), so
//! equal times stay first-in first-out, and every random choice (link effects, ephemeral ports, NAT
//! port allocation, machine seeds from [`Sim::machine_seed`]) derives from the one seed given to
//! [`Sim::new`]: the same seed gives the same run, packet for packet ([`Sim::trace_hash`]).
//!
//! - **Hosts** run any [`p2pd_proto::Machine`] through the machine contract: the simulator carries
//!   out socket intents (bind on the host's IPs, ephemeral ports, `AddrInUse`, close), sends
//!   transmits as packets, delivers packets to the socket bound to their destination, fires
//!   `handle_timeout` at the machine's deadline and keeps its events for [`Sim::take_events`].
//!   A host is public ([`Sim::add_host`], one or more IPv4 addresses) or behind a NAT box
//!   ([`Sim::add_host_behind`], a private IP). Commands go through [`Sim::with_machine`].
//! - **Links** ([`LinkConfig`]): latency, jitter, loss, duplication, reordering; one per host (its
//!   access link, or its LAN link behind a NAT) and one per NAT box toward the internet. A packet
//!   crosses the sender's link and the receiver's.
//! - **NAT boxes** ([`Sim::add_nat`]) implement `p2pd-nat`'s [`p2pd_nat::Behaviour`] for UDP and
//!   TCP: mapping (endpoint-independent, address-dependent, address-and-port-dependent), filtering
//!   (the same three), port allocation within a port range, hairpinning and mapping lifetime, with
//!   counters ([`NatStats`]). Hosts behind the same box also reach each other directly by private IP.
//!   TCP ([`NatTcpConfig`], [`Sim::set_nat_tcp`]): only an outbound SYN creates a mapping; inbound
//!   SYNs pass the filtering like datagrams (endpoint-independent filtering lets an unsolicited SYN
//!   in; crossing SYNs make a simultaneous open); a dropped SYN is dropped silently or answered with
//!   an RST; a TCP mapping idles out after 2 h, or 4 min once a FIN or RST crossed it.
//! - **TCP** on every host, at segment level (SYN, SYN-ACK, ACK, data, FIN, RST cross links and NAT
//!   boxes like datagrams): `Connect` (`Connected`, or `Failed` with `ConnectionRefused` on an RST
//!   and `TimedOut` when the SYN retries run out), `Listen` with a bounded backlog (SYNs beyond it
//!   are dropped), `Accept` (the machine names the next connection), simultaneous open (both sides
//!   `Connected`, as on Linux), `SO_REUSEADDR`/`SO_REUSEPORT` (TCP sockets that all set one of them
//!   may share a port, e.g. a listener and connectors, as hole punching needs; otherwise
//!   `AddrInUse`), a reliable ordered stream over lossy, reordering, duplicating links (sequence
//!   numbers, cumulative ACKs, RFC 6298 RTO with backoff, go-back-N and fast retransmit), transmits
//!   appended to the stream and delivered through `handle_stream`, `Close` with FIN (`PeerClosed`
//!   after the data) and TIME-WAIT, RST to a port nobody listens on (or a silent drop:
//!   [`TcpConfig::rst_on_closed_port`]), `ConnectionReset` after an RST. Settings per host
//!   ([`Host::with_tcp`], [`Sim::set_tcp_config`]); counters per host and network-wide
//!   ([`Sim::host_tcp_stats`], [`Sim::tcp_stats`]); segments feed the trace hash. The rules in
//!   detail are in the `tcp` module's source docs. [`RawTcp`] is a bare TCP machine for tests.
//! - **Failures**: [`Sim::set_host_down`] cuts a host off (packets dropped both ways);
//!   [`Sim::kill_host`] kills its process (its connections are reset, its sockets forgotten) and
//!   [`Sim::restart_host`] runs a new machine there.
//! - **STUN servers** ([`Sim::add_stun_server`]): a public host with two IPs running our RFC 5780
//!   [`p2pd_proto::server::StunServer`], which also serves STUN over TCP on its primary address (so
//!   [`p2pd_proto::client_tcp::TcpBinding`] behind a NAT box learns its TCP mapping;
//!   [`Sim::nat_mapping_table`] is the ground truth).
//! - **MQTT brokers** ([`Sim::add_mqtt_broker`]): a public host running [`MqttBroker`], a minimal
//!   MQTT 3.1.1 + 5 broker machine over the signaling crate's codec (CONNECT, SUBSCRIBE with
//!   wildcards, PUBLISH QoS 0/1 fan-out, sessions, PING, keep-alive, bounded everything); see
//!   [`broker`]. [`Sim::kill_host`] / [`Sim::restart_mqtt_broker`] take it down and back.
//! - **TURN servers** ([`Sim::add_turn_server`]): a host running [`TurnServer`], a TURN server
//!   model (RFC 8656 over TCP with RFC 6062 TCP allocations) on `p2pd-turn`'s codec: long-term
//!   authentication with static users and TURN REST credentials, Allocate, Refresh,
//!   CreatePermission, Connect, ConnectionBind, peers spliced with data connections, bounded
//!   everything; see [`turn_server`]. `p2pd_turn::TurnClient` behind NAT boxes talks to it.
//! - **Replay**: [`run_seeds`] runs a test per seed and, on failure, prints
//!   `simulation failed with seed N; replay with P2PD_SIM_SEED=N`; setting that variable runs only
//!   that seed.
//!
//! ```
//! use core::time::Duration;
//! use p2pd_proto::client::{ClientConfig, ClientEvent, Request, StunClient};
//! use p2pd_sim::{Host, LinkConfig, Sim};
//!
//! let mut sim = Sim::new(7);
//! sim.add_stun_server([192, 0, 2, 1].into(), [192, 0, 2, 2].into(), 3478, 3479);
//! let seed = sim.machine_seed();
//! let link = LinkConfig::with_latency(Duration::from_millis(20));
//! let client = sim.add_host(
//!     Host::public([[198, 51, 100, 7].into()]).with_link(link),
//!     StunClient::new(ClientConfig::default(), seed),
//! );
//! sim.with_machine::<StunClient, _>(client, |c, now| {
//!     let socket = c.open_socket(now, "0.0.0.0:4000".parse().unwrap(), Default::default()).unwrap();
//!     c.start(now, Request::binding(socket, "192.0.2.1:3478".parse().unwrap())).unwrap();
//! });
//! sim.run_for(Duration::from_secs(1));
//! let done = sim.take_events::<StunClient>(client).into_iter().find_map(|e| match e {
//!     ClientEvent::Transaction(t) => Some(t),
//!     _ => None,
//! });
//! let reply = done.unwrap().outcome.unwrap();
//! assert_eq!(reply.mapped, "198.51.100.7:4000".parse().unwrap());
//! assert_eq!(reply.rtt, Duration::from_millis(40));
//! ```
//!
//! Runnable example: `cargo run -p p2pd-sim --example stun_behind_nat` (a STUN client behind an
//! endpoint-independent and then a symmetric NAT box learning its external address, checked
//! against the box's mapping table).
//!
//! ## The classifier matrix
//!
//! [`matrix`] runs the NAT classifier against every simulated truth (open, firewalls, NATs of every
//! mapping x filtering x port allocation) at several loss levels and grades each answer right,
//! inconclusive or wrong; `tests/sim_classify.rs` and `p2pd sim nat` both use it.
//!
//! ## The punch matrix
//!
//! [`punch_matrix`] punches between whole punching nodes (signaling over simulated MQTT brokers,
//! STUN-over-TCP probes, planner, punch machine) behind every pair of NAT kinds at several loss
//! levels, and grades each pair against a ground-truth oracle of what is punchable in principle;
//! `tests/sim_punch_matrix.rs` and `p2pd sim punch` both use it.
//!
//! ## The cross-crate tests
//!
//! - integration tests on real sockets (`tests/`): our STUN client against our RFC 5780 server on
//!   127.0.0.1 + 127.0.0.2, against coturn, coturn's `turnutils_natdiscovery` against our server, the
//!   `p2pd` CLI end to end, and a 10,000-transaction soak through the mio runtime;
//! - the `stun-load` binary, a closed-loop STUN load generator used by `bench/server-throughput.sh`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod broker;
mod link;
pub mod matrix;
mod natbox;
mod node;
pub mod node_matrix;
mod out_queue;
mod parallel;
pub mod punch_matrix;
mod raw;
mod raw_tcp;
mod replay;
mod sim;
mod tcp;
mod trace;
pub mod turn_server;

#[cfg(test)]
mod tests;

pub use broker::{BrokerConfig, BrokerEvent, BrokerStats, CloseReason, MqttBroker};
pub use link::LinkConfig;
pub use matrix::{run_matrix, run_one, Correctness, MatrixSummary, Outcome, Truth};
pub use natbox::{NatMapping, NatStats, NatTcpConfig, Protocol};
pub use raw::{RawEvent, RawUdp};
pub use raw_tcp::{RawTcp, TcpEvent};
pub use replay::{run_seeds, SEED_VAR};
pub use sim::{Dead, Host, HostId, NatId, Sim, SimStats};
pub use tcp::{TcpConfig, TcpHeader, TcpStats, MAX_SEND_BUFFER, MSS, WINDOW};
pub use trace::TraceEntry;
pub use turn_server::{EndReason, TurnServer, TurnServerConfig, TurnServerEvent, TurnServerStats};
