//! A `StunClient` behind a simulated NAT box learns its external address from an RFC 5780 STUN
//! server, in virtual time (no sockets, no threads; the same seed gives the same run).
//!
//! The client sends two Binding requests from one socket: to the server's primary address and to
//! its alternate IP and port. Behind a NAT with endpoint-independent mapping both replies carry the
//! same external address; behind a symmetric NAT (address-and-port-dependent mapping, random
//! ports) they differ, which is what makes such a NAT hard to punch through. Each answer is
//! checked against the NAT box's own mapping table (the simulator's ground truth).
//!
//! ```text
//! cargo run -p p2pd-sim --example stun_behind_nat
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use p2pd_nat::{Behaviour, Filtering, Mapping, PortAllocation};
use p2pd_proto::client::{ClientConfig, ClientEvent, Request, StunClient};
use p2pd_sim::{LinkConfig, Sim};

fn main() {
    let cone = Behaviour::new(Mapping::EndpointIndependent, Filtering::AddressDependent);
    let symmetric = Behaviour::new(
        Mapping::AddressAndPortDependent,
        Filtering::AddressAndPortDependent,
    )
    .with_allocation(PortAllocation::Random);

    for (name, behaviour) in [("endpoint-independent", cone), ("symmetric", symmetric)] {
        println!("== behind a NAT with {name} mapping ({})", behaviour.p2pd());
        let mut sim = Sim::new(2024);
        // The STUN server: 192.0.2.1 and 192.0.2.2, ports 3478 and 3479.
        sim.add_stun_server([192, 0, 2, 1].into(), [192, 0, 2, 2].into(), 3478, 3479);
        // A NAT box with public IP 203.0.113.5, 15 ms from the internet, and our host behind it.
        let nat = sim.add_nat([203, 0, 113, 5].into(), behaviour);
        sim.set_nat_link(nat, LinkConfig::with_latency(Duration::from_millis(15)));
        let seed = sim.machine_seed();
        let host = sim.add_host_behind(
            nat,
            [10, 0, 0, 2].into(),
            StunClient::new(ClientConfig::default(), seed),
        );

        // Commands go through `with_machine`, which drains the machine afterwards.
        let targets: [SocketAddr; 2] = [
            "192.0.2.1:3478".parse().unwrap(),
            "192.0.2.2:3479".parse().unwrap(),
        ];
        sim.with_machine::<StunClient, _>(host, |client, now| {
            let socket = client
                .open_socket(now, "0.0.0.0:5000".parse().unwrap(), Default::default())
                .unwrap();
            for server in targets {
                client.start(now, Request::binding(socket, server)).unwrap();
            }
        });
        sim.run_for(Duration::from_secs(2));

        let mut mapped = Vec::new();
        for event in sim.take_events::<StunClient>(host) {
            if let ClientEvent::Transaction(done) = event {
                let reply = done.outcome.expect("the server answered");
                println!(
                    "  {} -> {}: mapped {} (rtt {:?})",
                    reply.local.unwrap(),
                    done.server,
                    reply.mapped,
                    reply.rtt
                );
                // 15 ms each way across the NAT's link (the other links are ideal).
                assert_eq!(reply.rtt, Duration::from_millis(30));
                mapped.push(reply.mapped);
            }
        }
        assert_eq!(mapped.len(), 2, "both requests were answered");
        // The external IP is the NAT box's, never our private 10.0.0.2.
        let public: IpAddr = [203, 0, 113, 5].into();
        assert!(mapped.iter().all(|a| a.ip() == public));

        // The ground truth: every mapped address is an external endpoint in the box's table.
        let table = sim.nat_mapping_table(nat);
        for m in &table {
            println!("  NAT table: {} -> {}", m.internal, m.external);
        }
        for a in &mapped {
            assert!(table.iter().any(|m| SocketAddr::V4(m.external) == *a));
        }
        match behaviour.mapping {
            Mapping::EndpointIndependent => {
                assert_eq!(mapped[0], mapped[1], "one mapping for every destination");
                assert_eq!(table.len(), 1);
            }
            _ => {
                assert_ne!(mapped[0], mapped[1], "a new mapping per destination");
                assert_eq!(table.len(), 2);
            }
        }
    }
    println!("ok");
}
