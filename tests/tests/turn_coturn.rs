//! Interop: our TURN client machine (`p2pd_turn::TurnClient`) against coturn on loopback, driven
//! by the mio runtime: Allocate (RFC 6062 TCP allocation) with static long-term credentials
//! (`--lt-cred-mech --user`) and with TURN REST API credentials (`--use-auth-secret`),
//! CreatePermission, Refresh, and the deallocation on close; RFC 6062 Connect and ConnectionAttempt
//! (a peer that dials the relayed address) bound on data connections.
//!
//! Skipped (with a message) when `turnserver` is not installed (a failure under `CI=true`).

use p2pd_tests as common;

use std::net::{SocketAddr, TcpStream};
use std::ops::ControlFlow;
use std::time::{Duration, Instant as StdInstant};

use common::servers::Coturn;
use common::LO1;
use p2pd_mio::Runtime;
use p2pd_proto::Machine;
use p2pd_turn::{Credentials, TurnClient, TurnConfig, TurnEvent, CONTROL_SOCKET};

const REALM: &str = "p2pd.test";
const SECRET: &str = "p2pd-test-secret";

/// Starts coturn as a TURN server in `auth` mode, relaying on 127.0.0.1, once it accepts TCP,
/// with short allocations, so the timed refresh (at half the lifetime) happens within the test.
fn start_turn(name: &str, auth: &[&str]) -> Coturn {
    let mut flags = vec!["--max-allocate-lifetime=4"];
    flags.extend_from_slice(auth);
    Coturn::start_turn(name, REALM, &flags)
}

/// Runs `client` until `stop` holds for an event (or 15 s pass); returns the events seen.
fn run_until(
    rt: &mut Runtime,
    client: &mut TurnClient,
    coturn: &Coturn,
    mut stop: impl FnMut(&mut TurnClient, p2pd_proto::Instant, &TurnEvent) -> bool,
) -> Vec<TurnEvent> {
    let mut seen = Vec::new();
    let mut done = false;
    let _ = rt
        .run(client, Some(Duration::from_secs(15)), |m, now, e| {
            let s = stop(m, now, &e);
            seen.push(e);
            if s {
                done = true;
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .expect("runtime");
    assert!(
        done,
        "stopped without the expected event; events {seen:?}\ncoturn log:\n{}",
        coturn.log()
    );
    seen
}

/// Closes `client` and runs it until `Closed`, which must confirm the deallocation.
fn close_deallocated(rt: &mut Runtime, client: &mut TurnClient, coturn: &Coturn) {
    client.close(rt.now());
    let events = run_until(rt, client, coturn, |_, _, e| {
        matches!(e, TurnEvent::Closed { .. })
    });
    assert_eq!(
        events.last(),
        Some(&TurnEvent::Closed { deallocated: true }),
        "coturn log:\n{}",
        coturn.log()
    );
}

/// Whether coturn is here (else the test prints SKIP, or fails under CI).
fn turnserver_installed() -> bool {
    let here = common::on_path("turnserver");
    if !here {
        common::skip_or_fail("coturn (turnserver) not installed");
    }
    here
}

/// A TURN client's settings for `coturn` from loopback.
fn client_config(coturn: &Coturn, credentials: Credentials) -> TurnConfig {
    TurnConfig::new(coturn.primary, SocketAddr::new(LO1, 0), credentials)
}

/// Allocate, permit, refresh, close against `coturn` with `credentials`.
fn allocate_refresh_close(coturn: &Coturn, credentials: Credentials) {
    let mut rt = Runtime::new().expect("runtime");
    let mut config = client_config(coturn, credentials);
    // Ask for a short lifetime: coturn grants what it allows, and the refresh comes at half of it.
    config.lifetime = Some(Duration::from_secs(4));
    let mut client = TurnClient::new(config, 0x7e_57, rt.now());

    let events = run_until(&mut rt, &mut client, coturn, |_, _, e| {
        matches!(e, TurnEvent::Allocated { .. } | TurnEvent::Closed { .. })
    });
    let Some(&TurnEvent::Allocated {
        relayed,
        mapped,
        lifetime,
    }) = events.last()
    else {
        panic!("no allocation: {events:?}\ncoturn log:\n{}", coturn.log());
    };
    eprintln!("relayed {relayed}, mapped {mapped:?}, lifetime {lifetime:?}");
    assert_eq!(
        relayed.ip(),
        coturn.primary.ip(),
        "coturn relays on --relay-ip"
    );
    assert_ne!(relayed.port(), coturn.primary.port());
    assert_eq!(mapped, rt.local_addr(CONTROL_SOCKET), "XOR-MAPPED-ADDRESS");
    assert_eq!(client.relayed(), Some(relayed));

    // CreatePermission for a loopback peer.
    let peer = SocketAddr::new(LO1, 9);
    client.create_permission(rt.now(), peer).expect("allocated");
    let events = run_until(&mut rt, &mut client, coturn, |_, _, e| {
        !matches!(e, TurnEvent::Refreshed { .. })
    });
    assert_eq!(
        events.last(),
        Some(&TurnEvent::PermissionCreated { peer }),
        "coturn log:\n{}",
        coturn.log()
    );

    // Refresh at half the granted lifetime (coturn grants at most --max-allocate-lifetime).
    assert_eq!(lifetime, Duration::from_secs(4));
    {
        let events = run_until(&mut rt, &mut client, coturn, |_, _, e| {
            !matches!(e, TurnEvent::PermissionCreated { .. })
        });
        assert!(
            matches!(events.last(), Some(TurnEvent::Refreshed { .. })),
            "{events:?}\ncoturn log:\n{}",
            coturn.log()
        );
        assert_eq!(client.stats().refreshes, 1);
    }

    // Close: deallocation confirmed, the control socket closed once.
    close_deallocated(&mut rt, &mut client, coturn);
    assert!(client.is_done());
    assert_eq!(client.poll_timeout(), None);
    let _ = rt.run(&mut client, Some(Duration::from_secs(2)), |_, _, _| {
        ControlFlow::Continue(())
    });
    assert_eq!(rt.open_sockets(), 0, "the control socket is closed");
    // coturn's log shows the deallocation (the Refresh with LIFETIME 0) and the session deleted.
    let until = StdInstant::now() + Duration::from_secs(5);
    let deleted =
        |log: &str| log.contains("lifetime=0") && log.contains("delete: realm=<p2pd.test>");
    while !deleted(&coturn.log()) && StdInstant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(deleted(&coturn.log()), "coturn log:\n{}", coturn.log());
}

#[test]
fn turn_allocation_against_coturn_with_static_long_term_credentials() {
    if !turnserver_installed() {
        return;
    }
    let coturn = start_turn("p2pd-turn-lt", &["--lt-cred-mech", "--user", "u:p"]);
    allocate_refresh_close(&coturn, Credentials::long_term("u", "p"));
}

#[test]
fn turn_allocation_against_coturn_with_rest_api_credentials() {
    if !turnserver_installed() {
        return;
    }
    let secret_flag = format!("--static-auth-secret={SECRET}");
    let coturn = start_turn("p2pd-turn-rest", &["--use-auth-secret", &secret_flag]);
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let credentials = Credentials::rest(
        SECRET.as_bytes(),
        "alice",
        unix_now,
        Duration::from_secs(3600),
    );
    allocate_refresh_close(&coturn, credentials);
}

#[test]
fn turn_allocation_against_coturn_with_a_wrong_password_is_refused() {
    if !turnserver_installed() {
        return;
    }
    let coturn = start_turn("p2pd-turn-wrong", &["--lt-cred-mech", "--user", "u:p"]);
    let mut rt = Runtime::new().expect("runtime");
    let config = client_config(&coturn, Credentials::long_term("u", "not-p"));
    let mut client = TurnClient::new(config, 0x7e_58, rt.now());
    let events = run_until(&mut rt, &mut client, &coturn, |_, _, e| {
        matches!(e, TurnEvent::Closed { .. })
    });
    assert_eq!(
        events,
        vec![
            TurnEvent::Failed(p2pd_turn::TurnFailure::Unauthenticated),
            TurnEvent::Closed { deallocated: false }
        ],
        "coturn log:\n{}",
        coturn.log()
    );
}

#[test]
fn rfc6062_connect_and_connection_attempt_through_coturn() {
    if !turnserver_installed() {
        return;
    }
    let coturn = start_turn("p2pd-turn-6062", &["--lt-cred-mech", "--user", "u:p"]);
    let mut rt = Runtime::new().expect("runtime");
    let config = client_config(&coturn, Credentials::long_term("u", "p"));
    let mut client = TurnClient::new(config, 0x6062, rt.now());
    let events = run_until(&mut rt, &mut client, &coturn, |_, _, e| {
        matches!(e, TurnEvent::Allocated { .. } | TurnEvent::Closed { .. })
    });
    let Some(&TurnEvent::Allocated { relayed, .. }) = events.last() else {
        panic!("no allocation: {events:?}\ncoturn log:\n{}", coturn.log());
    };

    // Outgoing: the relay connects to our listener, from the relayed address.
    let listener = std::net::TcpListener::bind(SocketAddr::new(LO1, 0)).expect("listener");
    let peer = listener.local_addr().expect("addr");
    let accepted = std::thread::spawn(move || {
        let (stream, from) = listener.accept().expect("accept");
        (stream, from)
    });
    client.create_permission(rt.now(), peer).expect("allocated");
    client.connect(rt.now(), peer).expect("tcp allocation");
    let events = run_until(&mut rt, &mut client, &coturn, |_, _, e| {
        matches!(
            e,
            TurnEvent::PeerConnected { .. } | TurnEvent::PeerConnectFailed { .. }
        )
    });
    let Some(TurnEvent::PeerConnected {
        peer: connected,
        socket,
        ..
    }) = events.last().cloned()
    else {
        panic!("{events:?}\ncoturn log:\n{}", coturn.log());
    };
    assert_eq!(connected, peer);
    assert_ne!(socket, CONTROL_SOCKET);
    let (_peer_stream, from) = accepted.join().expect("accept thread");
    assert_eq!(from, relayed, "the peer sees the relayed address");

    // Incoming: a peer connects to the relayed address; ConnectionAttempt, then ConnectionBind.
    let dialer = std::thread::spawn(move || {
        let s = TcpStream::connect_timeout(&relayed, Duration::from_secs(5)).expect("connect");
        let local = s.local_addr().expect("addr");
        std::thread::sleep(Duration::from_secs(2));
        local
    });
    let events = run_until(&mut rt, &mut client, &coturn, |_, _, e| {
        matches!(
            e,
            TurnEvent::PeerConnected { .. } | TurnEvent::PeerConnectFailed { .. }
        )
    });
    let dialer_addr = dialer.join().expect("dialer");
    assert!(
        matches!(events.last(), Some(TurnEvent::PeerConnected { peer, .. }) if *peer == dialer_addr),
        "{events:?} (dialer {dialer_addr})\ncoturn log:\n{}",
        coturn.log()
    );
    assert_eq!(client.stats().connections, 2);

    close_deallocated(&mut rt, &mut client, &coturn);
}

#[test]
fn turn_refresh_against_coturn_survives_a_stale_nonce() {
    if !turnserver_installed() {
        return;
    }
    // Nonces expire after 1 s; the refresh comes at 2 s (half of 4), so coturn answers it 438.
    let coturn = start_turn(
        "p2pd-turn-stale",
        &["--lt-cred-mech", "--user", "u:p", "--stale-nonce=1"],
    );
    let mut rt = Runtime::new().expect("runtime");
    let mut config = client_config(&coturn, Credentials::long_term("u", "p"));
    config.lifetime = Some(Duration::from_secs(4));
    let mut client = TurnClient::new(config, 0x438, rt.now());
    let events = run_until(&mut rt, &mut client, &coturn, |_, _, e| {
        !matches!(e, TurnEvent::Allocated { .. })
    });
    assert!(
        matches!(events.last(), Some(TurnEvent::Refreshed { .. })),
        "{events:?}\ncoturn log:\n{}",
        coturn.log()
    );
    assert!(
        coturn.log().contains("error 438"),
        "coturn never answered 438:\n{}",
        coturn.log()
    );
    close_deallocated(&mut rt, &mut client, &coturn);
}

#[test]
fn udp_relay_through_coturn_carries_datagrams_both_ways() {
    if !turnserver_installed() {
        return;
    }
    let coturn = start_turn("p2pd-turn-udp", &["--lt-cred-mech", "--user", "u:p"]);
    let mut rt = Runtime::new().expect("runtime");
    let mut config = client_config(&coturn, Credentials::long_term("u", "p"));
    config.transport = p2pd_turn::RelayTransport::Udp;
    let mut client = TurnClient::new(config, 0x0d9, rt.now());
    let events = run_until(&mut rt, &mut client, &coturn, |_, _, e| {
        matches!(e, TurnEvent::Allocated { .. } | TurnEvent::Closed { .. })
    });
    let Some(&TurnEvent::Allocated { relayed, .. }) = events.last() else {
        panic!("no allocation: {events:?}\ncoturn log:\n{}", coturn.log());
    };

    let peer_socket = std::net::UdpSocket::bind(SocketAddr::new(LO1, 0)).expect("peer socket");
    peer_socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let peer = peer_socket.local_addr().expect("addr");
    client.create_permission(rt.now(), peer).expect("allocated");
    let events = run_until(&mut rt, &mut client, &coturn, |_, _, _| true);
    assert_eq!(events, vec![TurnEvent::PermissionCreated { peer }]);

    // Client -> peer: a Send indication arrives as a datagram from the relayed address.
    client.send_to(rt.now(), peer, b"ping").expect("send");
    let _ = rt.drive(&mut client, |_, _, _| ControlFlow::Continue(()));
    let mut buf = [0u8; 64];
    let (n, from) = peer_socket.recv_from(&mut buf).expect("the peer receives");
    assert_eq!((&buf[..n], from), (&b"ping"[..], relayed));

    // Peer -> client: a datagram to the relayed address arrives as a Data indication.
    peer_socket.send_to(b"pong", relayed).expect("peer send");
    let events = run_until(&mut rt, &mut client, &coturn, |_, _, _| true);
    assert_eq!(
        events,
        vec![TurnEvent::PeerData {
            peer,
            data: b"pong".to_vec()
        }]
    );

    close_deallocated(&mut rt, &mut client, &coturn);
}
