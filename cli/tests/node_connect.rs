//! `p2pd node --name` and `p2pd connect NAME` end to end on loopback, with a configuration file
//! naming real servers (our RFC 5780 STUN server with TCP on 127.0.0.1 + 127.0.0.2, our PNP
//! server, mosquitto) and no NAT flags: the node classifies itself (no NAT on loopback: open),
//! registers its name, the connect resolves it and dials directly; the stream carries stdin both
//! ways (authenticated and encrypted), and both exit 0 once both sides finished.
//!
//! Skips (with a message) when mosquitto is not installed; under `CI=true` that fails.

mod common;

use std::time::Duration;

use common::node_lab::lab;
use common::node_proc::Proc;
use common::procs::words;
use common::{event_of, identity};

#[test]
fn connect_by_name_on_loopback_goes_direct_and_pipes_both_ways() {
    let Some(lab) = lab("node-connect") else {
        common::skip_or_fail("connect_by_name_on_loopback: mosquitto is not installed");
        return;
    };
    let key_b = lab.dir.identity_file("b.key", 0x72);
    let key_a = lab.dir.identity_file("a.key", 0x73);
    let mut b = Proc::spawn(
        &lab.config,
        &words(&[
            "node",
            "--name",
            "bob-loopback",
            "--identity",
            &key_b.display().to_string(),
        ]),
        b"from bob\n",
    );
    let ready = b
        .wait_for("ready", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("B never ready: {:?}", b.seen));
    assert_eq!(ready["name"], "bob-loopback", "{ready}");
    assert_eq!(
        ready["nat"]["filtering"], "EndpointIndependent",
        "loopback is open: {ready}"
    );
    let mut a = Proc::spawn(
        &lab.config,
        &words(&[
            "connect",
            "bob-loopback",
            "--identity",
            &key_a.display().to_string(),
        ]),
        b"from alice\n",
    );
    let connected = a
        .wait_for("connected", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("A never connected: {:?}", a.seen));
    eprintln!("B: {ready}\nA: {connected}");
    assert_eq!(connected["path"], "direct", "{connected}");
    assert_eq!(connected["peer"], identity(0x72).public_key().to_string());
    let phases = connected["phases"].as_array().expect("phases");
    assert!(
        phases
            .iter()
            .any(|p| p["phase"] == "direct" && p["outcome"] == "won"),
        "{connected}"
    );
    let (code_a, out_a) = a.finish(Duration::from_secs(20));
    let (code_b, out_b) = b.finish(Duration::from_secs(20));
    assert_eq!(out_a, b"from bob\n", "A's stdout; A said {:?}", a.seen);
    assert_eq!(out_b, b"from alice\n", "B's stdout; B said {:?}", b.seen);
    assert_eq!(code_a, Some(0), "A: {:?}", a.seen);
    assert_eq!(code_b, Some(0), "B: {:?}", b.seen);
    let accepted = b
        .seen
        .iter()
        .find(|v| event_of(v) == Some("accepted"))
        .expect("accepted");
    assert_eq!(accepted["path"], "direct");
    assert_eq!(accepted["peer"], identity(0x73).public_key().to_string());
}

#[test]
fn an_unknown_name_fails_with_the_reason_of_each_phase() {
    let Some(lab) = lab("node-unknown") else {
        common::skip_or_fail("an_unknown_name_fails: mosquitto is not installed");
        return;
    };
    let key_a = lab.dir.identity_file("a.key", 0x74);
    let mut a = Proc::spawn(
        &lab.config,
        &words(&[
            "connect",
            "nobody-here",
            "--identity",
            &key_a.display().to_string(),
        ]),
        b"",
    );
    let failed = a
        .wait_for("failed", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no failure: {:?}", a.seen));
    let phases = failed["phases"].as_array().expect("phases");
    let resolve = phases
        .iter()
        .find(|p| p["phase"] == "resolve")
        .expect("resolve phase");
    assert_eq!(resolve["outcome"], "failed", "{failed}");
    assert!(
        resolve["reason"]
            .as_str()
            .unwrap_or("")
            .contains("no PNP server has the name"),
        "{failed}"
    );
    let (code, _) = a.finish(Duration::from_secs(10));
    assert_eq!(code, Some(1));
}
