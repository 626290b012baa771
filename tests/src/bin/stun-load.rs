//! `stun-load`: a closed-loop UDP load generator for STUN Binding servers.
//!
//! Keeps `--window` requests outstanding from one socket, replaces each answered (or timed-out) request
//! with a new one, and reports how many responses per second the server sustained. The same generator is
//! used against p2pd-rs and coturn, so the two numbers are comparable.
//!
//! ```text
//! stun-load --server 127.0.0.1:3478 --seconds 5 --window 128 [--legacy] [--json]
//! ```

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use p2pd_proto::stun::{Class, Header, Message, MessageWriter, Method, TransactionId};

struct Args {
    server: SocketAddr,
    seconds: f64,
    window: usize,
    legacy: bool,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        server: "127.0.0.1:3478".parse().map_err(|e| format!("{e}"))?,
        seconds: 5.0,
        window: 128,
        legacy: false,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--server" => {
                args.server = value("--server")?
                    .parse()
                    .map_err(|e| format!("--server: {e}"))?
            }
            "--seconds" => {
                args.seconds = value("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            "--window" => {
                args.window = value("--window")?
                    .parse()
                    .map_err(|e| format!("--window: {e}"))?
            }
            "--legacy" => args.legacy = true,
            "--json" => args.json = true,
            "-h" | "--help" => {
                println!("stun-load --server ADDR [--seconds S] [--window N] [--legacy] [--json]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.window == 0 {
        return Err("--window must be at least 1".into());
    }
    Ok(args)
}

/// Encodes a Binding request whose transaction id carries `seq`.
fn request(seq: u64, legacy: bool, buf: &mut [u8]) -> usize {
    let mut id = [0u8; 12];
    id[..8].copy_from_slice(&seq.to_be_bytes());
    id[8..].copy_from_slice(b"load");
    let id = TransactionId::new(id);
    let header = if legacy {
        Header::legacy(Class::Request, Method::BINDING, *b"1234", id)
    } else {
        Header::new(Class::Request, Method::BINDING, id)
    };
    MessageWriter::new(buf, header)
        .expect("buffer fits a header")
        .finish()
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("stun-load: {e}");
            std::process::exit(2);
        }
    };
    let bind: SocketAddr = if args.server.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(bind).unwrap_or_else(|e| {
        eprintln!("stun-load: bind: {e}");
        std::process::exit(1)
    });
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("set timeout");

    let lost_after = Duration::from_millis(250);
    // Slot i holds the sequence number and send time of the request in flight there.
    let mut slots: Vec<Option<(u64, Instant)>> = vec![None; args.window];
    let (mut sent, mut answered, mut lost, mut bad) = (0u64, 0u64, 0u64, 0u64);
    let mut out = [0u8; 64];
    let mut inbuf = [0u8; 2048];
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.seconds);

    // Each slot's generation counts its requests; seq = generation * window + slot.
    let mut generations = vec![0u64; args.window];
    let mut send = |slot: usize, slots: &mut Vec<Option<(u64, Instant)>>, sent: &mut u64| {
        generations[slot] += 1;
        let seq = generations[slot] * args.window as u64 + slot as u64;
        let n = request(seq, args.legacy, &mut out);
        if socket.send_to(&out[..n], args.server).is_ok() {
            *sent += 1;
        }
        slots[slot] = Some((seq, Instant::now()));
    };
    for slot in 0..args.window {
        send(slot, &mut slots, &mut sent);
    }
    let mut last_sweep = Instant::now();
    while Instant::now() < end {
        match socket.recv_from(&mut inbuf) {
            Ok((n, _)) => {
                let Ok(msg) = Message::decode(&inbuf[..n]) else {
                    bad += 1;
                    continue;
                };
                if msg.class() != Class::Success || msg.mapped_address().is_none() {
                    bad += 1;
                    continue;
                }
                let id = msg.transaction_id();
                let seq = u64::from_be_bytes(id.as_bytes()[..8].try_into().expect("8 bytes"));
                let slot = (seq % args.window as u64) as usize;
                if slots[slot].map(|(s, _)| s) == Some(seq) {
                    answered += 1;
                    send(slot, &mut slots, &mut sent);
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => bad += 1,
        }
        if last_sweep.elapsed() >= Duration::from_millis(50) {
            last_sweep = Instant::now();
            for slot in 0..args.window {
                if let Some((_, at)) = slots[slot] {
                    if at.elapsed() > lost_after {
                        lost += 1;
                        send(slot, &mut slots, &mut sent);
                    }
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let rps = answered as f64 / secs;
    if args.json {
        println!(
            "{{\"server\":\"{}\",\"seconds\":{:.3},\"window\":{},\"sent\":{},\"answered\":{},\"lost\":{},\"bad\":{},\"responses_per_second\":{:.0}}}",
            args.server, secs, args.window, sent, answered, lost, bad, rps
        );
    } else {
        println!(
            "{}: {answered} responses in {secs:.2} s = {rps:.0}/s (sent {sent}, lost {lost}, bad {bad}, window {})",
            args.server, args.window
        );
    }
}
