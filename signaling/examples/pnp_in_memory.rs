//! A PNP name server and client talking over an in-memory "UDP" network: register a name, look it
//! up, and verify the owner's signature on the answer. No sockets, no clock: the loop below plays
//! the network and the time, as a runtime or the simulator would.
//!
//! ```text
//! cargo run -p p2pd-signaling --example pnp_in_memory
//! ```
// Example code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use p2pd_proto::Machine;
use std::net::SocketAddr;
use std::time::Duration;

use p2pd_proto::{Instant, SocketId, SocketOp, SocketOutcome, TRANSMIT_BUFFER_LEN};
use p2pd_signaling::pnp::{
    Name, PnpClientConfig, PnpClientEvent, PnpServerConfig, PnpTransport, UDP_SOCKET,
};
use p2pd_signaling::{Identity, MemoryStore, PnpClient, PnpServer};

const UNIX_EPOCH_MS: u64 = 1_700_000_000_000;

fn main() {
    let server_addr: SocketAddr = "192.0.2.1:5300".parse().unwrap();
    let client_addr: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let server_identity = Identity::from_secret_bytes(&[1; 32]).unwrap();
    let server_key = server_identity.public_key();
    let mut config = PnpServerConfig::new(server_addr, server_addr, UNIX_EPOCH_MS);
    config.tcp = None;
    let mut server = PnpServer::new(config, server_identity, MemoryStore::new(1000), 1).unwrap();

    let alice = Identity::from_secret_bytes(&[2; 32]).unwrap();
    let client_config =
        PnpClientConfig::new(server_addr, server_key, PnpTransport::Udp, UNIX_EPOCH_MS);
    let mut client = PnpClient::new(client_config, alice, 2);

    let mut now = Instant::ZERO;
    let name = Name::new("alice").unwrap();
    client
        .register(
            now,
            name.clone(),
            b"p2pd1:example".to_vec(),
            1,
            Duration::from_secs(3600),
        )
        .unwrap();
    let mut looked_up = false;
    let mut buf = [0u8; TRANSMIT_BUFFER_LEN];
    let mut client_socket = SocketId(0);
    loop {
        // The client's socket intents and datagrams.
        while let Some(op) = client.poll_socket_op() {
            if let SocketOp::Bind { socket, .. } = op {
                client_socket = socket;
                client.handle_socket_result(
                    now,
                    socket,
                    SocketOutcome::Bound { local: client_addr },
                );
            }
        }
        while let Some(t) = client.poll_transmit(&mut buf) {
            let _ = server.handle_datagram(now, UDP_SOCKET, client_addr, &buf[..t.len]);
        }
        // The server's intents (its own binds) and replies.
        while let Some(op) = server.poll_socket_op() {
            if let SocketOp::Bind { socket, local, .. } = op {
                server.handle_socket_result(now, socket, SocketOutcome::Bound { local });
            }
        }
        let mut replies = Vec::new();
        while let Some(t) = server.poll_transmit(&mut buf) {
            replies.push(buf[..t.len].to_vec());
        }
        for reply in replies {
            let _ = client.handle_datagram(now, client_socket, server_addr, &reply);
        }
        while let Some(event) = client.poll_event() {
            match event {
                PnpClientEvent::Registered { name, version, .. } => {
                    println!("registered {name} at version {version}");
                    client.lookup(now, name).unwrap();
                }
                PnpClientEvent::Found { record, .. } => {
                    assert_eq!(record.name(), &name);
                    assert_eq!(record.value(), b"p2pd1:example");
                    println!(
                        "found {}: {:?}, owner {}, signature verified",
                        record.name(),
                        String::from_utf8_lossy(record.value()),
                        record.owner()
                    );
                    looked_up = true;
                }
                other => println!("{other:?}"),
            }
        }
        while server.poll_event().is_some() {}
        if looked_up {
            break;
        }
        assert!(
            now < Instant::from_millis(60_000),
            "no answer within a minute"
        );
        // Nothing in flight: let time pass to the next deadline.
        now = client
            .poll_timeout()
            .unwrap_or(now.saturating_add(Duration::from_millis(10)));
        client.handle_timeout(now);
    }
}
