//! The SNTP client machine on real sockets: a tiny SNTP responder thread on 127.0.0.1 whose clock
//! runs a known offset from the system clock; the machine, driven by the runtime, must recover that
//! offset within its reported uncertainty.

use std::net::{SocketAddr, UdpSocket};
use std::ops::ControlFlow;
use std::time::Duration;

use p2pd_mio::Runtime;
use p2pd_punch::sntp::packet::KissCode;
use p2pd_punch::sntp::{ClockEstimate, SntpClient, SntpConfig, SntpEvent, SntpFailure};
use p2pd_tests::sntp_responder::{unix_now_ns, Behaviour, Responder};

/// Unix nanoseconds at the runtime's `Instant::ZERO`, read more finely than
/// `Runtime::unix_epoch_ms`.
fn epoch_ns(runtime: &Runtime) -> u64 {
    let since_zero = runtime.now().as_nanos();
    (unix_now_ns() as u64) - since_zero
}

/// Runs a fresh machine against `servers` to its end; checks that it closes cleanly.
fn measure(servers: Vec<SocketAddr>) -> Result<ClockEstimate, SntpFailure> {
    let mut runtime = Runtime::new().unwrap();
    let config = SntpConfig {
        samples_per_server: 4,
        sample_spacing: Duration::from_millis(20),
        reply_timeout: Duration::from_millis(300),
        attempts_per_sample: 3,
        local_error: Duration::from_micros(200),
        ..SntpConfig::new(servers, epoch_ns(&runtime))
    };
    let mut client = SntpClient::new(config, 0x5eed).unwrap();
    client
        .open_socket(
            runtime.now(),
            "127.0.0.1:0".parse().unwrap(),
            Default::default(),
        )
        .unwrap();
    let mut result = None;
    let mut samples = 0;
    runtime
        .run(&mut client, Some(Duration::from_secs(10)), |_, _, ev| {
            match ev {
                SntpEvent::Sample(_) => samples += 1,
                SntpEvent::Finished(r) => {
                    result = Some(r);
                    return ControlFlow::Break(());
                }
                _ => {}
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    let result = result.expect("the machine finished");
    if let Ok(est) = &result {
        assert_eq!(est.samples, samples);
    }
    let mut closed = false;
    client.close(runtime.now());
    let _ = runtime.drive(&mut client, |_, _, ev| {
        closed |= ev == SntpEvent::Closed;
        ControlFlow::Continue(())
    });
    assert!(closed);
    assert_eq!(runtime.open_sockets(), 0, "the machine's socket is closed");
    result
}

#[test]
fn recovers_a_known_offset_within_its_uncertainty() {
    for offset in [2_500_000_000i128, -1_250_000_000, 0] {
        let responder = Responder::start(Behaviour::Offset(offset));
        let est = measure(vec![responder.addr]).unwrap();
        let answered = responder.stop();
        let error = (i128::from(est.offset_ns) - offset).unsigned_abs();
        assert!(
            error <= u128::from(est.uncertainty_ns),
            "offset {offset}: estimate {} ± {} (error {error} ns)",
            est.offset_ns,
            est.uncertainty_ns
        );
        // Loopback: far below the default 500 ms meet-time budget.
        assert!(est.uncertainty_ns < 50_000_000, "{est:?}");
        assert_eq!(est.samples, 4);
        assert!(answered >= 4);
        assert_eq!(est.stratum, 1);
    }
}

#[test]
fn two_servers_both_answer_and_the_estimate_holds() {
    let a = Responder::start(Behaviour::Offset(700_000_000));
    let b = Responder::start(Behaviour::Offset(700_000_000));
    let est = measure(vec![a.addr, b.addr]).unwrap();
    a.stop();
    b.stop();
    assert_eq!(est.samples, 8);
    let error = (i128::from(est.offset_ns) - 700_000_000).unsigned_abs();
    assert!(error <= u128::from(est.uncertainty_ns), "{est:?}");
}

#[test]
fn a_refusing_server_is_a_typed_failure() {
    let responder = Responder::start(Behaviour::Kiss(KissCode::DENY));
    let result = measure(vec![responder.addr]);
    let answered = responder.stop();
    assert_eq!(
        result,
        Err(SntpFailure::AllServersRefused {
            kiss_codes: vec![KissCode::DENY]
        })
    );
    assert_eq!(answered, 1, "no query after the kiss");
}

#[test]
fn a_silent_server_times_out() {
    // A bound socket that never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let result = measure(vec![silent.local_addr().unwrap()]);
    assert_eq!(result, Err(SntpFailure::Timeout { queries: 12 }));
}
