//! Our `StunServer` and `StunClient` on real sockets, each driven by its own `p2pd_mio::Runtime`:
//! the server in a thread on 127.0.0.1 (an ephemeral port), the client on the main thread. The
//! runtime carries out the bind intents, sends the transmits, feeds received datagrams and
//! timeouts to the machine, and hands its events to a callback that may stop the loop or issue
//! new commands.
//!
//! ```text
//! cargo run -p p2pd-mio --example stun_on_runtime
//! ```
// Example code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use p2pd_mio::{RunEnd, Runtime};
use p2pd_proto::client::{ClientConfig, ClientEvent, Request, StunClient};
use p2pd_proto::server::{ServerConfig, ServerEvent, StunServer};

fn main() -> std::io::Result<()> {
    // The server thread: bind, report the address, serve until told to stop, close.
    let stop = Arc::new(AtomicBool::new(false));
    let (addr_tx, addr_rx) = mpsc::channel::<SocketAddr>();
    let server_stop = Arc::clone(&stop);
    let server = std::thread::spawn(move || -> std::io::Result<_> {
        let mut runtime = Runtime::new()?;
        let mut server = StunServer::new(ServerConfig::single("127.0.0.1:0".parse().unwrap()))
            .expect("a valid configuration");
        runtime.run(&mut server, Some(Duration::from_secs(5)), |_, _, event| {
            if let ServerEvent::Listening { local, .. } = event {
                addr_tx.send(local).unwrap();
                return ControlFlow::Break(());
            }
            panic!("server: {event:?}");
        })?;
        // `run` in short slices, so the stop flag is checked between them.
        while !server_stop.load(Ordering::SeqCst) {
            runtime.run(&mut server, Some(Duration::from_millis(20)), |_, _, _| {
                ControlFlow::Continue(())
            })?;
        }
        server.close(runtime.now());
        // After the close intents the server has no socket and no deadline: the run ends Idle.
        let end = runtime.run(&mut server, Some(Duration::from_secs(1)), |_, _, _| {
            ControlFlow::Continue(())
        })?;
        assert_eq!(end, RunEnd::Idle);
        assert_eq!(runtime.open_sockets(), 0);
        Ok(server.stats())
    });
    let server_addr = addr_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the server is listening");
    println!("server listening on {server_addr}");

    // The client: open a socket, start a Binding transaction (it waits for the bind), run.
    let mut runtime = Runtime::new()?;
    let mut client = StunClient::new(ClientConfig::default(), 1);
    let now = runtime.now();
    let socket = client
        .open_socket(now, "127.0.0.1:0".parse().unwrap(), Default::default())
        .unwrap();
    client
        .start(now, Request::binding(socket, server_addr))
        .unwrap();
    let mut result = None;
    let end = runtime.run(
        &mut client,
        Some(Duration::from_secs(5)),
        |client, now, event| {
            match event {
                ClientEvent::SocketReady { local, .. } => println!("client socket on {local}"),
                ClientEvent::Transaction(done) => {
                    result = Some(done);
                    // A command from the callback takes effect at once: close the client.
                    client.close(now);
                }
                // The last event. Breaking here would leave the close intent queued in the
                // machine (`Break` stops at once); continuing lets the run end by itself.
                ClientEvent::Closed => println!("client closed"),
                other => println!("client: {other:?}"),
            }
            ControlFlow::Continue(())
        },
    )?;
    // No socket left and no deadline: the runtime stops on its own.
    assert_eq!(end, RunEnd::Idle);
    assert_eq!(
        runtime.open_sockets(),
        0,
        "the close intent was carried out"
    );

    let reply = result
        .expect("a transaction result")
        .outcome
        .expect("an answer");
    println!(
        "mapped address {} (rtt {:?}, {} transmission(s))",
        reply.mapped, reply.rtt, reply.transmissions
    );
    // On loopback there is no NAT: the mapped address is the client socket's own.
    assert_eq!(Some(reply.mapped), reply.local);
    assert_eq!(reply.source, server_addr);

    stop.store(true, Ordering::SeqCst);
    let stats = server.join().expect("the server thread")?;
    println!(
        "server: {} request(s), {} response(s)",
        stats.requests, stats.responses
    );
    assert!(stats.responses >= 1 && stats.responses == stats.requests);
    println!("ok");
    Ok(())
}
