//! The simulator's own tests: STUN through NAT boxes of every behaviour, links, determinism.

use core::net::{Ipv4Addr, SocketAddr};
use core::time::Duration;

use p2pd_nat::{Behaviour, ChangeRequest, Filtering, Mapping};
use p2pd_proto::client::{
    ClientConfig, ClientEvent, Failure, Request, Retransmit, StunClient, TransactionHandle,
    TransactionResult,
};
use p2pd_proto::SocketId;

use crate::{HostId, NatId, Sim};

mod nat;
mod network;
mod stun;

const S1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const S2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const P1: u16 = 3478;
const P2: u16 = 3479;
const NAT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const PRIV: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// A fast-failing retransmission policy: 100, 200, 400 ms, then 400 ms more (1.1 s in all).
fn quick() -> ClientConfig {
    ClientConfig {
        retransmit: Retransmit::Rfc5389 {
            rto: Duration::from_millis(100),
            transmissions: 3,
            last_wait: 4,
            max_rto: Duration::from_secs(1),
        },
        ..ClientConfig::default()
    }
}

/// A STUN server on S1/S2 and a NAT box at NAT_IP with a STUN client behind it at PRIV.
struct Setup {
    sim: Sim,
    nat: NatId,
    client: HostId,
}

fn behind(seed: u64, behaviour: Behaviour) -> Setup {
    let mut sim = Sim::new(seed);
    sim.add_stun_server(S1, S2, P1, P2);
    let nat = sim.add_nat(NAT_IP, behaviour);
    let client_seed = sim.machine_seed();
    let client = sim.add_host_behind(nat, PRIV, StunClient::new(quick(), client_seed));
    Setup { sim, nat, client }
}

fn open(sim: &mut Sim, client: HostId, port: u16) -> SocketId {
    sim.with_machine::<StunClient, _>(client, |c, now| {
        c.open_socket(now, addr(Ipv4Addr::UNSPECIFIED, port), Default::default())
            .expect("socket")
    })
}

fn start(
    sim: &mut Sim,
    client: HostId,
    socket: SocketId,
    server: SocketAddr,
    change: ChangeRequest,
) -> TransactionHandle {
    sim.with_machine::<StunClient, _>(client, |c, now| {
        c.start(now, Request::binding(socket, server).with_change(change))
            .expect("start")
    })
}

fn results(sim: &mut Sim, client: HostId) -> Vec<TransactionResult> {
    sim.take_events::<StunClient>(client)
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::Transaction(t) => Some(t),
            _ => None,
        })
        .collect()
}

/// Runs one transaction to its end and returns its outcome.
fn transact(
    sim: &mut Sim,
    client: HostId,
    socket: SocketId,
    server: SocketAddr,
    change: ChangeRequest,
) -> Result<SocketAddr, Failure> {
    let tx = start(sim, client, socket, server, change);
    sim.run_for(Duration::from_secs(2));
    let done = results(sim, client);
    let r = done.iter().find(|t| t.id == tx).expect("transaction ended");
    r.outcome.clone().map(|b| b.mapped)
}

/// The mapped address one socket gets from `server`.
fn mapped(sim: &mut Sim, client: HostId, socket: SocketId, server: SocketAddr) -> SocketAddr {
    transact(sim, client, socket, server, ChangeRequest::NONE).expect("binding succeeds")
}

fn eim_eif() -> Behaviour {
    Behaviour::new(Mapping::EndpointIndependent, Filtering::EndpointIndependent)
}
