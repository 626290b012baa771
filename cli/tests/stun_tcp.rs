//! STUN over TCP on real sockets: our `TcpBinding` against our server (mio runtime, loopback),
//! against coturn over TCP, our server against a raw `std::net::TcpStream` client with a hand-built
//! request (split writes, pipelining, garbage), and the CLI end to end (`p2pd stun --tcp` against
//! `p2pd stun-server --tcp`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::ControlFlow;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::servers::{Coturn, TcpStunServer};
use common::{
    event_of, free_port_pair, json_line, json_object, on_path, p2pd_bin, ChildGuard, LO1, LO2,
};
use p2pd_mio::Runtime;
use p2pd_proto::client_tcp::{
    CloseCause, TcpBinding, TcpBindingConfig, TcpBindingError, TcpBindingEvent, TcpMapping,
};
use p2pd_proto::stun::{Class, Message, MAGIC_COOKIE};

/// Our server (UDP + TCP on 127.0.0.1:P) in a thread, idle TCP connections closed after 2 s.
fn start_server() -> TcpStunServer {
    TcpStunServer::start_with(|config| config.tcp_limits.idle_timeout = Duration::from_secs(2))
}

/// Runs a binding until it reports its outcome; returns the outcome with the runtime and machine
/// (a kept-open binding still holds its connection).
fn bind(config: TcpBindingConfig) -> (Result<TcpMapping, TcpBindingError>, Runtime, TcpBinding) {
    let mut rt = Runtime::new().expect("runtime");
    let mut b = TcpBinding::new(config, 0x7c9, rt.now());
    let mut outcome = None;
    rt.run(&mut b, Some(Duration::from_secs(10)), |_, _, ev| match ev {
        TcpBindingEvent::Mapped(m) => {
            outcome = Some(Ok(m));
            ControlFlow::Break(())
        }
        TcpBindingEvent::Failed { reason } => {
            outcome = Some(Err(reason));
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    })
    .expect("run");
    (outcome.expect("an outcome within 10 s"), rt, b)
}

/// Closes a binding and checks that its runtime holds no socket afterwards.
fn close(mut rt: Runtime, mut b: TcpBinding) {
    b.close(rt.now());
    let mut closed = false;
    rt.run(&mut b, Some(Duration::from_secs(5)), |_, _, ev| {
        if matches!(ev, TcpBindingEvent::Closed { .. }) {
            closed = true;
        }
        ControlFlow::Continue(())
    })
    .expect("run");
    assert!(closed && b.is_done());
    assert_eq!(rt.open_sockets(), 0, "sockets left after close");
}

fn free_local(ip: std::net::IpAddr) -> SocketAddr {
    let (p, _) = free_port_pair();
    SocketAddr::new(ip, p)
}

#[test]
fn tcp_binding_against_our_server_on_loopback() {
    let server = start_server();
    let local = free_local(LO1);
    // Closed after the answer.
    let (m, rt, b) = bind(TcpBindingConfig::new(server.addr, local));
    let m = m.expect("mapping");
    assert_eq!(m.local, local);
    assert_eq!(m.mapped, local, "no NAT on loopback");
    assert_eq!(m.response_origin, Some(server.addr));
    assert_eq!(m.server_software.as_deref(), Some("p2pd-rs"));
    assert!(b.is_done());
    assert_eq!(rt.open_sockets(), 0, "closed right after the answer");

    // Kept open: the same fixed local port (reuse flags) is then shared by a binding to a second
    // server while the first connection still holds it.
    let server2 = start_server();
    let local = free_local(LO1);
    let (m1, rt1, b1) = bind(TcpBindingConfig::new(server.addr, local).keep_open(true));
    assert_eq!(m1.expect("first").mapped, local);
    assert!(b1.is_open());
    assert_eq!(rt1.open_sockets(), 1);
    let (m2, rt2, b2) = bind(TcpBindingConfig::new(server2.addr, local).keep_open(true));
    assert_eq!(m2.expect("second, same port").mapped, local);
    // The same 4-tuple is refused while the first is open.
    let (m3, _, _) = bind(TcpBindingConfig::new(server.addr, local));
    assert!(
        matches!(m3, Err(TcpBindingError::ConnectFailed(_))),
        "{m3:?}"
    );
    close(rt1, b1);
    close(rt2, b2);

    let (stats, open) = server.stop();
    assert_eq!(open, 0, "server sockets left after close");
    assert_eq!(stats.tcp_accepted, 2, "{stats:?}");
    assert_eq!(stats.responses, 2, "{stats:?}");
    assert_eq!(stats.tcp_bad_frames, 0);
    let (stats2, _) = server2.stop();
    assert_eq!(stats2.responses, 1);
}

#[test]
fn a_kept_open_binding_sees_the_server_idle_timeout() {
    let server = start_server();
    let (m, mut rt, mut b) =
        bind(TcpBindingConfig::new(server.addr, SocketAddr::new(LO1, 0)).keep_open(true));
    m.expect("mapping");
    let mut cause = None;
    rt.run(&mut b, Some(Duration::from_secs(10)), |_, _, ev| {
        if let TcpBindingEvent::Closed { cause: c } = ev {
            cause = Some(c);
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .expect("run");
    assert_eq!(
        cause,
        Some(CloseCause::PeerClosed),
        "server idle timeout is 2 s"
    );
    assert_eq!(rt.open_sockets(), 0);
    let (stats, _) = server.stop();
    assert_eq!(stats.tcp_idle_closed, 1);
}

/// A Binding request built by hand: header only, no attributes.
fn hand_built_request(id: u8) -> Vec<u8> {
    let mut r = vec![0x00, 0x01, 0x00, 0x00];
    r.extend(MAGIC_COOKIE.to_be_bytes());
    r.extend([id; 12]);
    r
}

/// Reads one STUN message (framed by its length field) from a blocking stream.
fn read_message(s: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; 20];
    s.read_exact(&mut head).expect("response header");
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("response body");
    let mut all = head.to_vec();
    all.extend(body);
    all
}

#[test]
fn our_server_against_a_raw_tcp_client() {
    let server = start_server();
    let mut s = TcpStream::connect(server.addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = s.local_addr().unwrap();

    // One request written a byte at a time.
    for byte in hand_built_request(1) {
        s.write_all(&[byte]).unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let r = read_message(&mut s);
    let m = Message::decode(&r).expect("a valid response");
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.transaction_id().as_bytes(), &[1; 12]);
    assert_eq!(m.xor_mapped_address(), Some(me));
    assert_eq!(m.response_origin(), Some(server.addr));
    assert!(m.has_fingerprint());

    // Three requests in one write, the third split across two writes.
    let mut burst = hand_built_request(2);
    burst.extend(hand_built_request(3));
    let third = hand_built_request(4);
    burst.extend(&third[..7]);
    s.write_all(&burst).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    s.write_all(&third[7..]).unwrap();
    for id in 2..=4 {
        let m = read_message(&mut s);
        let m = Message::decode(&m).unwrap();
        assert_eq!(m.transaction_id().as_bytes(), &[id; 12]);
    }

    // A second client gets its own answers; garbage closes only its own connection.
    let mut bad = TcpStream::connect(server.addr).expect("connect");
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    bad.write_all(&[0xFF; 24]).unwrap();
    let mut buf = [0u8; 64];
    let n = bad.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the server closes a connection that is not STUN");

    s.write_all(&hand_built_request(5)).unwrap();
    let m = read_message(&mut s);
    assert_eq!(
        Message::decode(&m).unwrap().transaction_id().as_bytes(),
        &[5; 12]
    );
    drop(s);
    std::thread::sleep(Duration::from_millis(100));
    let (stats, open) = server.stop();
    assert_eq!(open, 0);
    assert_eq!(stats.tcp_accepted, 2);
    assert_eq!(stats.tcp_bad_frames, 1);
    assert_eq!(stats.responses, 5);
    assert_eq!(
        stats.tcp_closed, 2,
        "each connection closed once: {stats:?}"
    );
}

#[test]
fn tcp_binding_against_coturn() {
    if !on_path("turnserver") {
        common::skip_or_fail("coturn (turnserver) not installed");
        return;
    }
    let coturn = Coturn::start("p2pd-coturn-tcp", "listen on TCP", |coturn| {
        // Wait for coturn's TCP listener.
        let until = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < until {
            if TcpStream::connect_timeout(&coturn.primary, Duration::from_millis(200)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    });
    let server = coturn.primary;
    let local = free_local(LO1);
    let (m, rt, b) = bind(TcpBindingConfig::new(server, local).keep_open(true));
    let m = m.unwrap_or_else(|e| panic!("coturn over TCP: {e:?}\n{}", coturn.log()));
    assert_eq!(m.local, local);
    assert_eq!(m.mapped, local, "XOR-MAPPED-ADDRESS over TCP");
    assert!(
        m.server_software
            .as_deref()
            .is_some_and(|s| s.to_ascii_lowercase().contains("coturn")),
        "{:?}",
        m.server_software
    );
    assert!(b.is_open(), "coturn keeps the connection open");
    close(rt, b);
    // And to coturn's second address, from an ephemeral port, closed after the answer.
    let (m, rt, _) = bind(TcpBindingConfig::new(
        SocketAddr::new(LO2, server.port()),
        SocketAddr::new(LO2, 0),
    ));
    let m = m.unwrap_or_else(|e| panic!("coturn over TCP (127.0.0.2): {e:?}\n{}", coturn.log()));
    assert_eq!(m.mapped, m.local);
    assert_eq!(rt.open_sockets(), 0);
}

#[test]
fn cli_stun_tcp_against_cli_stun_server_tcp() {
    for _ in 0..10 {
        let (p, _) = free_port_pair();
        let mut guard = ChildGuard::spawn(
            "p2pd stun-server --tcp",
            Command::new(p2pd_bin())
                .args(["stun-server", "--primary", "127.0.0.1", "--single", "--tcp"])
                .args(["--port", &p.to_string(), "--json"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )
        .expect("spawn");
        let mut out = BufReader::new(guard.child.stdout.take().expect("stdout"));
        let mut listening = 0;
        let mut tcp = false;
        let mut line = String::new();
        while listening < 2 {
            line.clear();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let Some(event) = json_line(&line) else {
                continue;
            };
            if event_of(&event) == Some("socket-failed") {
                break;
            }
            if event_of(&event) == Some("listening") {
                listening += 1;
                tcp |= event["transport"] == "tcp";
            }
        }
        if listening < 2 {
            continue;
        }
        assert!(tcp, "a TCP listening line");
        let local = free_local(LO1);
        let output = Command::new(p2pd_bin())
            .args(["stun", &format!("127.0.0.1:{p}"), "--tcp", "--json"])
            .args(["--local", &local.to_string()])
            .output()
            .expect("run p2pd stun --tcp");
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(output.status.success(), "{text}");
        let json = json_object(&text);
        assert_eq!(json["transport"], "tcp", "{text}");
        assert_eq!(json["local"], local.to_string(), "{text}");
        assert_eq!(json["mapped"], local.to_string(), "{text}");
        assert_eq!(json["response_origin"], format!("127.0.0.1:{p}"), "{text}");
        assert_eq!(json["server"], format!("127.0.0.1:{p}"), "{text}");
        assert!(json["rtt_ms"].is_number(), "{text}");
        // Change requests make no sense over TCP: a usage error.
        let output = Command::new(p2pd_bin())
            .args(["stun", &format!("127.0.0.1:{p}"), "--tcp", "--change", "ip"])
            .output()
            .expect("run");
        assert!(!output.status.success());
        return;
    }
    panic!("p2pd stun-server --tcp did not start");
}

#[test]
fn tcp_binding_to_a_closed_port_fails_with_connect_failed() {
    let (p, _) = free_port_pair();
    let (m, rt, b) = bind(TcpBindingConfig::new(
        SocketAddr::new(LO1, p),
        SocketAddr::new(LO1, 0),
    ));
    assert!(matches!(m, Err(TcpBindingError::ConnectFailed(_))), "{m:?}");
    assert!(b.is_done());
    assert_eq!(rt.open_sockets(), 0);
}
