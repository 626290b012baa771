//! A spoofed-source flood against a PNP server on loopback, with first-try probes from fresh
//! clients. On Linux every 127.0.0.0/8 address is local, so the flood binds a new 127.x.y.z
//! source for every datagram: to the server it is indistinguishable from spoofing, without
//! forging anything. Shared by `cli/tests/pnp_flood.rs` (short, asserted) and
//! `cli/benches/pnp_flood.rs` (the figures).
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use p2pd_signaling::pnp::{Name, Request, UDP_LOOKUP_PAYLOAD_LEN};
use p2pd_signaling::{seal, Identity, Opener, PublicKey};

/// What to send.
#[derive(Clone, Debug)]
pub struct Flood {
    /// The server's UDP address.
    pub server: SocketAddr,
    /// The server's key (probes seal their lookups to it).
    pub server_key: PublicKey,
    /// New flood sources per second (one datagram each).
    pub sources_per_second: u32,
    /// How long the flood lasts.
    pub duration: Duration,
    /// Probes start this long after the flood (so the rate table is full by then).
    pub warmup: Duration,
    /// A fresh client every this often.
    pub probe_every: Duration,
    /// How long a probe waits for the answer to its one datagram.
    pub probe_timeout: Duration,
}

/// What happened.
#[derive(Clone, Debug, Default)]
pub struct FloodReport {
    /// Flood datagrams sent (each from a new source).
    pub flood_sent: u64,
    /// Flood datagrams that could not be sent (bind or send failed).
    pub flood_failed: u64,
    /// Fresh clients that sent one lookup.
    pub probes: u32,
    /// Of them, answered (a reply that opens, for that request) without any retransmission.
    pub answered_first_try: u32,
    /// The slowest answer.
    pub slowest_answer: Duration,
}

/// The `i`-th flood source: 127.16.0.0 upwards (never 127.0.0.1, never a probe address).
fn flood_source(i: u64) -> IpAddr {
    let [.., a, b, c] = i.to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(127, 16 + (a % 64), b, c))
}

/// The `n`-th probe source: 127.100.0.0 upwards.
fn probe_source(n: u32) -> IpAddr {
    let [_, _, b, c] = n.to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(127, 100, b, c))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One flood datagram: looks like an envelope of our version (so it reaches the rate limiter)
/// and opens to nothing.
fn flood_datagram(i: u64) -> [u8; 300] {
    let mut bytes = [0u8; 300];
    bytes[0] = p2pd_signaling::envelope::VERSION;
    bytes[1..9].copy_from_slice(&i.to_be_bytes());
    bytes
}

fn send_flood(f: &Flood, stop: &AtomicBool, report: &mut FloodReport) {
    let start = Instant::now();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) && start.elapsed() < f.duration {
        let due = (start.elapsed().as_secs_f64() * f64::from(f.sources_per_second)) as u64;
        while i < due {
            let sent = UdpSocket::bind((flood_source(i), 0))
                .and_then(|s| s.send_to(&flood_datagram(i), f.server));
            match sent {
                Ok(_) => report.flood_sent += 1,
                Err(_) => report.flood_failed += 1,
            }
            i += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A fresh identity for probe `n` (seeded from `n` and the process id: distinct, not secret).
fn probe_identity(n: u32) -> Identity {
    let mut state = u64::from(n) ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    Identity::generate(&mut |buf: &mut [u8]| {
        for chunk in buf.chunks_mut(8) {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_be_bytes()[..chunk.len()]);
        }
    })
    .expect("probe identity")
}

/// One fresh client: one lookup datagram from a new address, no retransmission. The time it
/// took to be answered, if it was.
fn probe(f: &Flood, n: u32) -> Option<Duration> {
    let identity = probe_identity(n);
    let request = Request::Lookup(Name::new("flood-probe").unwrap());
    let mut nonce = [0u8; 16];
    nonce[..4].copy_from_slice(&n.to_be_bytes());
    let bytes = seal(
        &identity,
        &f.server_key,
        unix_ms(),
        nonce,
        &request.encode(UDP_LOOKUP_PAYLOAD_LEN),
    )
    .unwrap();
    let socket = UdpSocket::bind((probe_source(n), 0)).ok()?;
    let sent = Instant::now();
    socket.send_to(&bytes, f.server).ok()?;
    let mut buf = [0u8; 2048];
    loop {
        let left = f.probe_timeout.checked_sub(sent.elapsed())?;
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let (len, from) = socket.recv_from(&mut buf).ok()?;
        if from != f.server {
            continue;
        }
        let mut opener = Opener::new(4);
        if opener.open(&identity, unix_ms(), &buf[..len]).is_ok() {
            return Some(sent.elapsed());
        }
    }
}

/// Runs the flood and the probes; returns when both are done.
pub fn run(f: &Flood) -> FloodReport {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let flooder = scope.spawn(|| {
            let mut report = FloodReport::default();
            send_flood(f, &stop, &mut report);
            report
        });
        let start = Instant::now();
        let mut probes = Vec::new();
        let mut next = f.warmup;
        let mut n = 0u32;
        // Each probe in its own thread, on schedule: a probe waiting for its answer must not
        // delay the next one past the flood.
        while next + f.probe_timeout <= f.duration {
            if let Some(wait) = next.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            probes.push(scope.spawn(move || probe(f, n)));
            n += 1;
            next += f.probe_every;
        }
        let probes: Vec<Option<Duration>> = probes
            .into_iter()
            .map(|p| p.join().expect("probe thread"))
            .collect();
        stop.store(true, Ordering::Relaxed);
        let mut report = flooder.join().expect("flood thread");
        report.probes = n;
        report.answered_first_try = probes.iter().flatten().count() as u32;
        report.slowest_answer = probes.iter().flatten().max().copied().unwrap_or_default();
        report
    })
}
