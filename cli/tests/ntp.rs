//! `p2pd ntp` end to end against an SNTP responder on loopback with a known clock offset.

use std::net::UdpSocket;

use p2pd_tests::sntp_responder::{Behaviour, Responder};

#[test]
fn the_cli_prints_the_offset() {
    let responder = Responder::start(Behaviour::Offset(3_000_000_000));
    let server = responder.addr.to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_p2pd"))
        .args(["ntp", &server, "--json"])
        .args([
            "--samples",
            "2",
            "--spacing-ms",
            "10",
            "--timeout-ms",
            "500",
        ])
        .output()
        .unwrap();
    responder.stop();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let json = p2pd_tests::json_object(&text);
    let field = |name: &str| -> f64 {
        json[name]
            .as_f64()
            .unwrap_or_else(|| panic!("no number {name} in {text}"))
    };
    let (offset, uncertainty) = (field("offset_ms"), field("uncertainty_ms"));
    assert!((offset - 3000.0).abs() <= uncertainty + 0.001, "{text}");
    assert!(field("delay_ms") >= 0.0, "{text}");
    assert_eq!(json["samples"], 2, "{text}");
    assert!(json["stratum"].is_u64(), "{text}");
    assert_eq!(json["server"], server, "{text}");

    // A silent server: a typed failure and exit code 1.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_p2pd"))
        .args(["ntp", &silent.local_addr().unwrap().to_string(), "--json"])
        .args(["--samples", "1", "--timeout-ms", "100"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let json = p2pd_tests::json_object(&text);
    assert_eq!(json["kind"], "timeout", "{text}");
    assert!(
        json["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{text}"
    );
}
