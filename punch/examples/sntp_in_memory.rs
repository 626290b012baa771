//! The `SntpClient` measuring how far our wall clock is from an NTP server's, against an in-memory
//! responder whose clock runs 250 ms ahead of ours, over a network with asymmetric, varying delays.
//! Virtual time: the loop plays the network and the server.
//!
//! Each of the four samples gives an offset θ and a round trip δ; the machine keeps the sample
//! with the smallest δ (the clock filter), whose error is at most δ/2 whatever the asymmetry, and
//! reports that bound as the estimate's uncertainty.
//!
//! ```text
//! cargo run -p p2pd-punch --example sntp_in_memory
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
use std::time::Duration;

use p2pd_proto::{Instant, Machine, SocketOp, SocketOutcome, TRANSMIT_BUFFER_LEN};
use p2pd_punch::sntp::packet::{unix_nanos_to_ntp, NtpPacket, PACKET_LEN};
use p2pd_punch::{SntpClient, SntpConfig, SntpEvent};

/// Our wall clock at `Instant::ZERO` (Unix nanoseconds): 2023-11-14T22:13:20Z.
const UNIX_EPOCH_NS: u64 = 1_700_000_000_000_000_000;
/// The server's clock minus ours.
const SERVER_AHEAD: Duration = Duration::from_millis(250);
/// How long the server holds a request before answering.
const HOLD: Duration = Duration::from_millis(1);
/// One-way delays of the four samples: (request, reply). Sample 2 has the smallest round trip.
const DELAYS_MS: [(u64, u64); 4] = [(30, 5), (8, 12), (50, 20), (12, 9)];

/// The server's clock at real time `t`, in Unix nanoseconds.
fn server_clock(t: Instant) -> i128 {
    i128::from(UNIX_EPOCH_NS) + i128::from(t.as_nanos()) + SERVER_AHEAD.as_nanos() as i128
}

/// The server's answer to `request` received at `t2`, sent at `t3` (real times).
fn answer(request: &[u8], t2: Instant, t3: Instant) -> Vec<u8> {
    let request = NtpPacket::decode(request).unwrap();
    let reply = NtpPacket {
        leap: 0,
        version: request.version,
        mode: 4, // server
        stratum: 1,
        poll: request.poll,
        precision: -20,
        root_delay: 0,
        root_dispersion: 0,
        reference_id: *b"LOCL",
        reference_ts: unix_nanos_to_ntp(server_clock(t2) - 1_000_000_000),
        originate_ts: request.transmit_ts, // the client's nonce, copied back
        receive_ts: unix_nanos_to_ntp(server_clock(t2)),
        transmit_ts: unix_nanos_to_ntp(server_clock(t3)),
    };
    let mut out = vec![0; PACKET_LEN];
    reply.encode(&mut out).unwrap();
    out
}

fn main() {
    let server: SocketAddr = "192.0.2.123:123".parse().unwrap();
    let local: SocketAddr = "198.51.100.7:40123".parse().unwrap();
    let mut client = SntpClient::new(SntpConfig::new(vec![server], UNIX_EPOCH_NS), 9).unwrap();
    let mut now = Instant::ZERO;
    let socket = client.open_socket(now, local, Default::default()).unwrap();

    // In flight: (arrival time, bytes, the sample's index if it goes to the server).
    let mut network: Vec<(Instant, Vec<u8>, Option<usize>)> = Vec::new();
    let mut sent = 0;
    let mut buf = [0u8; TRANSMIT_BUFFER_LEN];
    let estimate = 'run: loop {
        // Drain the client.
        while let Some(t) = client.poll_transmit(&mut buf) {
            assert_eq!(t.destination, server);
            let (request_delay, _) = DELAYS_MS[sent % DELAYS_MS.len()];
            let arrival = now + Duration::from_millis(request_delay);
            network.push((arrival, buf[..t.len].to_vec(), Some(sent)));
            sent += 1;
        }
        while let Some(op) = client.poll_socket_op() {
            match op {
                SocketOp::Bind { socket, .. } => {
                    client.handle_socket_result(now, socket, SocketOutcome::Bound { local })
                }
                SocketOp::Close { .. } => {}
                other => panic!("not needed here: {other:?}"),
            }
        }
        while let Some(event) = client.poll_event() {
            match event {
                SntpEvent::Sample(s) => println!(
                    "sample: offset {:+.3} ms, round trip {:.3} ms",
                    s.offset_ns as f64 / 1e6,
                    s.delay_ns as f64 / 1e6
                ),
                SntpEvent::Finished(result) => break 'run result.expect("an estimate"),
                other => println!("{other:?}"),
            }
        }

        // Advance to the next arrival or deadline.
        let next_arrival = network.iter().map(|(at, ..)| *at).min();
        now = [next_arrival, client.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .expect("pending");
        if client.poll_timeout().is_some_and(|d| d <= now) {
            client.handle_timeout(now);
        }
        let (due, later): (Vec<_>, Vec<_>) = network.into_iter().partition(|(at, ..)| *at <= now);
        network = later;
        for (_, bytes, to_server) in due {
            if let Some(sample) = to_server {
                // The server answers after HOLD; the reply takes this sample's reply delay.
                let (_, reply_delay) = DELAYS_MS[sample % DELAYS_MS.len()];
                let reply = answer(&bytes, now, now + HOLD);
                network.push((now + HOLD + Duration::from_millis(reply_delay), reply, None));
            } else {
                let _ = client.handle_datagram(now, socket, server, &bytes);
            }
        }
    };

    let offset_ms = estimate.offset_ns as f64 / 1e6;
    let uncertainty_ms = estimate.uncertainty_ns as f64 / 1e6;
    println!(
        "estimate: server clock - ours = {offset_ms:+.3} ms ± {uncertainty_ms:.3} ms \
         (best of {} samples, round trip {:.3} ms)",
        estimate.samples,
        estimate.delay_ns as f64 / 1e6
    );
    // The best sample is the one with the smallest round trip (8 + 12 ms): its asymmetry makes θ
    // 2 ms off, well within the bound of δ/2 plus the local allowance.
    assert_eq!(estimate.delay_ns, 20_000_000);
    let error = (estimate.offset_ns - SERVER_AHEAD.as_nanos() as i64).unsigned_abs();
    assert!(error <= estimate.uncertainty_ns, "error {error} ns");
    assert!(
        (error as i64 - 2_000_000).abs() < 1_000,
        "the asymmetry's 2 ms"
    );

    client.close(now);
    assert!(matches!(
        client.poll_socket_op(),
        Some(SocketOp::Close { .. })
    ));
    assert!(matches!(client.poll_event(), Some(SntpEvent::Closed)));
    println!("ok");
}
