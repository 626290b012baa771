//! `--forward` end to end on loopback (issue 12 item 8): `p2pd node --name X --forward
//! 127.0.0.1:ECHO` hands every accepted stream to a TCP echo server this test runs, and `p2pd
//! connect X --forward 127.0.0.1:LOCAL` carries each local client over its own stream. Five local
//! clients at once each send their own 200 KB, half-close, and must read back exactly their bytes;
//! the status lines show five `connected` and five `accepted`, all by one path. A sixth client
//! that resets at once must not leave its stream (and B's echo connection) open. SIGTERM then
//! stops both processes with exit code 0. A burst of thirty clients (over the node's connect
//! limit and the PNP server's rate limit) must all get through too.
//!
//! Skips (with a message) when mosquitto is not installed; under `CI=true` that fails.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::node_lab::lab;
use common::node_proc::Proc;
use common::procs::words;

/// A TCP echo server on 127.0.0.1 (a thread per connection: echoes until EOF, then closes);
/// counts the connections it served and those still open.
fn echo_server() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("echo listener");
    let addr = listener.local_addr().expect("echo address");
    let served = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (count, open2) = (Arc::clone(&served), Arc::clone(&open));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            open2.fetch_add(1, Ordering::SeqCst);
            let count = Arc::clone(&count);
            let open = Arc::clone(&open2);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = conn.shutdown(Shutdown::Write);
                count.fetch_add(1, Ordering::SeqCst);
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, served, open)
}

fn payload(client: usize, len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_u32 ^ (client as u32).wrapping_mul(0x85eb_ca6b);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

/// One local client: connects (retrying while the listener comes up), writes its payload and
/// half-closes while reading everything back; returns what it read.
fn client(local: SocketAddr, i: usize, len: usize) -> Result<Vec<u8>, String> {
    let end = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match TcpStream::connect(local) {
            Ok(c) => break c,
            Err(e) if Instant::now() > end => return Err(format!("client {i}: connect: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut writer = conn.try_clone().expect("clone");
    let data = payload(i, len);
    let write = std::thread::spawn(move || {
        writer.write_all(&data).map_err(|e| e.to_string())?;
        writer.shutdown(Shutdown::Write).map_err(|e| e.to_string())
    });
    let mut got = Vec::with_capacity(len);
    let read = conn.read_to_end(&mut got);
    let wrote = write.join().expect("writer thread");
    wrote.map_err(|e| format!("client {i}: write: {e}"))?;
    read.map_err(|e| format!("client {i}: read after {} bytes: {e}", got.len()))?;
    Ok(got)
}

#[test]
fn five_concurrent_clients_through_forward_get_their_bytes_back() {
    forward("node-forward", 5, 200 * 1024, true);
}

/// Thirty clients at once: more than the node's concurrent connects (16) and, since every
/// client is its own name lookup, more than the PNP server's rate limit (20 requests/s per
/// source): the clients wait for a connect slot, or for the rate window, and none is cut.
#[test]
fn thirty_clients_at_once_all_get_through() {
    forward("node-forward-burst", 30, 20 * 1024, false);
}

/// `clients` concurrent clients of `len` bytes each through the tunnel (see the module docs);
/// with `reset_client`, a client resetting at once comes last.
fn forward(tag: &str, clients: usize, len: usize, reset_client: bool) {
    let started = Instant::now();
    let Some(lab) = lab(tag) else {
        common::skip_or_fail("node_forward: mosquitto is not installed");
        return;
    };
    let (echo, served, open) = echo_server();
    let local = {
        let (p, _) = common::free_port_pair();
        SocketAddr::from(([127, 0, 0, 1], p))
    };
    let key_b = lab.dir.identity_file("b.key", 0x92);
    let key_a = lab.dir.identity_file("a.key", 0x93);
    let mut b = Proc::spawn(
        &lab.config,
        &words(&[
            "node",
            "--name",
            "bob-forward",
            "--forward",
            &echo.to_string(),
            "--identity",
            &key_b.display().to_string(),
        ]),
        b"",
    );
    b.wait_for("ready", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("B never ready: {:?}", b.seen));
    let mut a = Proc::spawn(
        &lab.config,
        &words(&[
            "connect",
            "bob-forward",
            "--forward",
            &local.to_string(),
            "--identity",
            &key_a.display().to_string(),
        ]),
        b"",
    );
    a.wait_for("listening", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("A never listening: {:?}", a.seen));

    let t0 = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|i| std::thread::spawn(move || client(local, i, len)))
        .collect();
    let results: Vec<Result<Vec<u8>, String>> = threads
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .collect();
    let took = t0.elapsed();
    let summary: Vec<String> = results
        .iter()
        .map(|r| match r {
            Ok(got) => format!(
                "{} bytes, {}",
                got.len(),
                if got.len() == len { "full" } else { "short" }
            ),
            Err(e) => e.clone(),
        })
        .collect();
    eprintln!("clients after {took:.2?}: {summary:?}");
    let failures = |p: &mut Proc| {
        let mut v = p.all("failed");
        v.extend(p.all("stream_failed"));
        v
    };
    let (fa, fb) = (failures(&mut a), failures(&mut b));
    for (i, r) in results.iter().enumerate() {
        let got = r
            .as_ref()
            .unwrap_or_else(|e| panic!("{e}\nA's failures: {fa:?}\nB's failures: {fb:?}"));
        assert_eq!(
            got.len(),
            len,
            "client {i}: length\nA's failures: {fa:?}\nB's failures: {fb:?}"
        );
        assert!(
            *got == payload(i, len),
            "client {i}: not its own bytes back"
        );
    }
    eprintln!(
        "{clients} clients x {} KiB echoed through the tunnel in {took:.2?}",
        len / 1024
    );

    // Status lines: one connect and one accept per client, all by one path.
    let end = Instant::now() + Duration::from_secs(5);
    let (mut connected, mut accepted) = (Vec::new(), Vec::new());
    while Instant::now() < end {
        connected = a.all("connected");
        accepted = b.all("accepted");
        if connected.len() >= clients && accepted.len() >= clients {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(connected.len(), clients, "A: {:?}", a.seen);
    assert_eq!(accepted.len(), clients, "B: {:?}", b.seen);
    let path = connected[0]["path"].clone();
    assert_eq!(path, "direct", "{:?}", connected[0]);
    assert!(
        connected.iter().chain(&accepted).all(|v| v["path"] == path),
        "one path: {connected:?} {accepted:?}"
    );
    assert_eq!(served.load(Ordering::SeqCst), clients, "echo connections");
    for (who, p) in [("A", &a), ("B", &b)] {
        let failures: Vec<_> = p
            .seen
            .iter()
            .filter(|v| matches!(common::event_of(v), Some("failed" | "stream_failed")))
            .collect();
        assert!(failures.is_empty(), "{who}: {failures:?}");
    }

    if reset_client {
        // A client that resets at once, before its stream can be up: its stream is released on
        // both sides when it comes up, so B closes its echo connection too.
        {
            let conn = TcpStream::connect(local).expect("connect");
            socket2::SockRef::from(&conn)
                .set_linger(Some(Duration::ZERO))
                .expect("linger 0");
            drop(conn);
        }
        // B accepts it or not (A may close it before B's side of the handshake is done); either
        // way no echo connection stays open.
        std::thread::sleep(Duration::from_millis(500));
        let end = Instant::now() + Duration::from_secs(5);
        while open.load(Ordering::SeqCst) > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            open.load(Ordering::SeqCst),
            0,
            "an echo connection is still open after the reset client (A connected {}, B accepted {})",
            a.all("connected").len(),
            b.all("accepted").len()
        );
    }

    // SIGTERM: both stop cleanly, quickly.
    a.terminate();
    b.terminate();
    let t1 = Instant::now();
    let (code_a, _) = a.finish(Duration::from_secs(5));
    let (code_b, _) = b.finish(Duration::from_secs(5));
    let stop = t1.elapsed();
    eprintln!("after SIGTERM: A {code_a:?}, B {code_b:?} in {stop:.2?}");
    for (who, p) in [("A", &a), ("B", &b)] {
        for v in p.seen.iter().filter(|v| v.is_string()).take(20) {
            eprintln!("{who}: {v}");
        }
    }
    assert_eq!(code_a, Some(0), "A after SIGTERM: {:?}", a.seen);
    assert_eq!(code_b, Some(0), "B after SIGTERM: {:?}", b.seen);
    eprintln!("both stopped in {stop:.2?}; test {:.2?}", started.elapsed());
}
