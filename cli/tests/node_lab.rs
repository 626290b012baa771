//! `p2pd node --name NAME` and `p2pd connect NAME` through real Linux NATs (the lab of
//! `tests/lab/`), with a configuration file naming the lab's servers and no NAT flags: coturn's
//! RFC 5780 STUN (UDP, and TCP for the listener's address and the punch) on 203.0.113.1:3478
//! (alternate 203.0.113.2:3479), our `p2pd pnp-server` on 203.0.113.1:5300, the two mosquitto
//! brokers on 203.0.113.3:1883 and 203.0.113.4:1883, and a TURN relay: a second coturn
//! (`lab.sh turn`) on 203.0.113.1:3480 with TURN REST API credentials (`[[relay]]` with its
//! shared secret, so the file is mode 600), granting allocations at most 4 s. Every process
//! classifies its own NAT; the `ready` lines must show the router's real mode (see [`nat_of`]).
//!
//! Cases (`node` on one host, `connect` on the other; path asserted on both the `connected` and
//! the `accepted` line, and each side's stdin must reach the other's stdout, both exit 0). The
//! relay is configured for every case and must not change the paths that need none:
//! - **direct**: the open host (`ho`, 203.0.113.30, straight on the lab's internet, no NAT) runs
//!   `node`, host A behind `masq` connects;
//! - **reverse**: host A behind `masq` runs `node`, the open host connects (it asks A to dial it);
//! - **direct to a full cone**: host B behind `fullcone` runs `node`, A behind `masq` connects;
//! - **punched**: `masq`/`masq` and `seq`/`restricted` (A connects, B runs `node`);
//! - **unpunchable**: `masq-fully`/`masq-fully`: relayed (the connect allocates on the TURN
//!   server at once, the node dials the relayed address);
//! - **long relayed**: `masq-fully`/`masq-fully` again, the connect's stdin fed for 11 s (a
//!   16 KiB chunk of a known pattern every 250 ms, the node sending nothing): the node's stdout
//!   must hold exactly those bytes, and coturn's log must show the allocation refreshed (at
//!   least twice: it outlived its 4 s) and, once both processes ended, deallocated (a Refresh
//!   with lifetime 0) and deleted;
//! - **bulk relayed**: 16 MiB at once to a node whose stdout is read slowly, so coturn still
//!   holds bytes for the node when the connect is done: every byte must arrive (coturn drops
//!   what it holds when either leg closes; the connect's stream lingers until the relay ends it,
//!   and its allocation stays until then), and the allocation is deleted after.
//!
//! The times (connected `elapsed_ms`, counted from the connect call, and the wall time of the
//! connect process) are printed; `bench/node-lab.sh` measures them over more runs.
//!
//! Without root, `ip netns`, `nft`, `conntrack`, `ss`, `turnserver` or `mosquitto` the test prints
//! `SKIP: ...` and passes (under `CI=true` it fails instead). The namespace prefix is unique per
//! run; the lab (namespaces and every process in them) is torn down on drop, also after a panic.

mod common;
#[path = "common/lab_punch.rs"]
mod lab_punch;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::Lab;
use common::node_proc::Proc;
use common::procs::words;
use common::{event_of, identity, json_line, p2pd_bin, ChildGuard, Scratch};
use lab_punch::{skip_reason, start_brokers, BROKERS, STUN};
use serde_json::Value;

/// The PNP server inside the lab (stun namespace), UDP and TCP.
const PNP: &str = "203.0.113.1:5300";
/// The secret of the PNP server's identity.
const PNP_SECRET: u8 = 0x51;
/// The lab's TURN server (`lab.sh turn`, in the stun namespace), TCP.
const TURN: &str = "203.0.113.1:3480";
/// Its TURN REST API shared secret.
const TURN_SECRET: &str = "p2pd-lab-turn-secret";

/// A host of the lab and the NAT mode of its router (`None`: the open host).
#[derive(Clone, Copy)]
struct Host {
    ns: &'static str,
    router: Option<(&'static str, &'static str)>,
}

const fn natted(router: &'static str, mode: &'static str) -> Host {
    let ns = if router.as_bytes()[0] == b'A' {
        "ha"
    } else {
        "hb"
    };
    Host {
        ns,
        router: Some((router, mode)),
    }
}

const OPEN: Host = Host {
    ns: "ho",
    router: None,
};

impl Host {
    fn label(&self) -> String {
        match self.router {
            Some((r, mode)) => format!("{}({mode})", if r == "A" { "ha" } else { "hb" }),
            None => "ho(open)".into(),
        }
    }

    fn mode(&self) -> &'static str {
        self.router.map_or("open", |(_, m)| m)
    }
}

/// What the classifier must report for a router mode: (mapping, filtering, allocation).
fn nat_of(mode: &str) -> (&'static str, &'static str, &'static str) {
    match mode {
        "open" | "fullcone" => ("EndpointIndependent", "EndpointIndependent", "Preserving"),
        "masq" => (
            "EndpointIndependent",
            "AddressAndPortDependent",
            "Preserving",
        ),
        "restricted" => ("EndpointIndependent", "AddressDependent", "Preserving"),
        "seq" => (
            "AddressAndPortDependent",
            "AddressAndPortDependent",
            "Sequential { stride: 1 }",
        ),
        "masq-fully" => (
            "AddressAndPortDependent",
            "AddressAndPortDependent",
            "Random",
        ),
        other => panic!("no expectation for mode {other}"),
    }
}

struct Case {
    name: &'static str,
    /// Runs `p2pd node`.
    node: Host,
    /// Runs `p2pd connect`.
    connect: Host,
    /// The path both sides must print.
    path: &'static str,
}

/// The lab's servers and the configuration file naming them.
struct Servers {
    _brokers: [ChildGuard; 2],
    _pnp: ChildGuard,
    config: PathBuf,
    keys: [PathBuf; 2],
    /// The TURN server's log.
    turn_log: PathBuf,
}

fn servers(lab: &Lab, dir: &Scratch) -> Servers {
    let brokers = start_brokers(lab);
    let key = dir.identity_file("pnp.key", PNP_SECRET);
    let mut pnp = ChildGuard::spawn(
        "p2pd pnp-server (lab)",
        Command::new("ip")
            .args(["netns", "exec", &lab.ns("stun")])
            .arg(p2pd_bin())
            .arg("pnp-server")
            .arg("--db")
            .arg(dir.path("names.db"))
            .args(["--udp", PNP, "--tcp", PNP, "--identity"])
            .arg(&key)
            .arg("--json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )
    .expect("spawn p2pd pnp-server");
    let mut out = BufReader::new(pnp.child.stdout.take().expect("stdout"));
    let mut listening = 0;
    let mut line = String::new();
    while listening < 2 {
        line.clear();
        let n = out.read_line(&mut line).unwrap_or(0);
        assert!(n > 0, "pnp-server ended before listening");
        if json_line(&line).as_ref().and_then(event_of) == Some("listening") {
            listening += 1;
        }
    }
    // Keep its stdout drained (it never gets EPIPE).
    std::thread::spawn(move || {
        let mut sink = String::new();
        while out.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    let turn_log = lab.start_turn(TURN_SECRET).expect("the lab's TURN server");
    let config = dir.path("config.toml");
    std::fs::write(
        &config,
        format!(
            "stun = [\"{STUN}\"]\nbrokers = [\"{}\", \"{}\"]\n\n[[pnp]]\naddress = \"{PNP}\"\nkey = \"{}\"\n\n\
             [[relay]]\naddress = \"{TURN}\"\nsecret = \"{TURN_SECRET}\"\n",
            BROKERS[0],
            BROKERS[1],
            identity(PNP_SECRET).public_key()
        ),
    )
    .expect("config");
    // It holds a secret: the CLI refuses it unless only its owner may read it.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    Servers {
        _brokers: brokers,
        _pnp: pnp,
        config,
        keys: [
            dir.identity_file("node.key", 0x52),
            dir.identity_file("connect.key", 0x53),
        ],
        turn_log,
    }
}

/// `p2pd node --name NAME` with the lab's node identity.
fn node_args(s: &Servers, name: &str) -> Vec<String> {
    words(&[
        "node",
        "--name",
        name,
        "--identity",
        &s.keys[0].display().to_string(),
    ])
}

/// `p2pd connect NAME --timeout 20` with the lab's connect identity.
fn connect_args(s: &Servers, name: &str) -> Vec<String> {
    words(&[
        "connect",
        name,
        "--timeout",
        "20",
        "--identity",
        &s.keys[1].display().to_string(),
    ])
}

/// The `nat` of a `ready` line as (mapping, filtering, allocation).
fn ready_nat(ready: &Value) -> (String, String, String) {
    let f = |k: &str| ready["nat"][k].as_str().unwrap_or("null").to_string();
    (f("mapping"), f("filtering"), f("allocation"))
}

/// One case; what it printed for the summary, or why it went wrong.
fn run_case(lab: &Lab, s: &Servers, case: &Case, serial: usize) -> Result<Vec<String>, String> {
    for host in [case.node, case.connect] {
        if let Some((router, mode)) = host.router {
            lab.script("nat.sh", &[router, mode, "inputdrop"])?;
        }
    }
    let name = format!("lab-{}-{serial}", case.name);
    let (msg_node, msg_connect) = (
        format!("from the node on {}\n", case.node.label()),
        format!("from the connect on {}\n", case.connect.label()),
    );
    let mut node = Proc::spawn_in(
        Some(&lab.ns(case.node.ns)),
        &s.config,
        &node_args(s, &name),
        msg_node.as_bytes(),
    );
    let ready = node
        .wait_for("ready", Duration::from_secs(15))
        .ok_or_else(|| format!("node never ready: {:?}", node.seen))?;
    let mut connect = Proc::spawn_in(
        Some(&lab.ns(case.connect.ns)),
        &s.config,
        &connect_args(s, &name),
        msg_connect.as_bytes(),
    );
    let (code_c, out_c) = connect.finish(Duration::from_secs(30));
    let wall_ms = connect.started.elapsed().as_millis();
    let mut lines = Vec::new();
    let mut wrong = Vec::new();
    // Both sides' classification against the router's real mode.
    let ready_c = connect.event("ready").cloned().unwrap_or(Value::Null);
    for (who, host, r) in [
        ("node", case.node, &ready),
        ("connect", case.connect, &ready_c),
    ] {
        let got = ready_nat(r);
        let (m, f, a) = nat_of(host.mode());
        lines.push(format!(
            "    {who:<7} on {:<16} ready nat: {} / {} / {}",
            host.label(),
            got.0,
            got.1,
            got.2
        ));
        if (got.0.as_str(), got.1.as_str(), got.2.as_str()) != (m, f, a) {
            wrong.push(format!(
                "{who} on {}: classified {got:?}, the router is {} ({m} / {f} / {a})",
                host.label(),
                host.mode()
            ));
        }
    }
    let path = case.path;
    let (code_n, out_n) = node.finish(Duration::from_secs(15));
    let connected = connect.event("connected").cloned().unwrap_or(Value::Null);
    let accepted = node.event("accepted").cloned().unwrap_or(Value::Null);
    lines.push(format!(
        "    connected.path {} accepted.path {} elapsed_ms {} (resolve {} ms; relay phase {}), connect process {wall_ms} ms",
        connected["path"],
        accepted["path"],
        connected["elapsed_ms"],
        phase(&connected, "resolve")["took_ms"],
        phase(&connected, "relay")["outcome"]
    ));
    if connected["path"] != path || accepted["path"] != path {
        wrong.push(format!(
            "path: connected {} accepted {}, expected {path}",
            connected["path"], accepted["path"]
        ));
    }
    if out_c != msg_node.as_bytes() || out_n != msg_connect.as_bytes() {
        wrong.push(format!(
            "data: connect got {:?}, node got {:?}",
            String::from_utf8_lossy(&out_c),
            String::from_utf8_lossy(&out_n)
        ));
    }
    if code_c != Some(0) || code_n != Some(0) {
        wrong.push(format!("exit: connect {code_c:?}, node {code_n:?}"));
    }
    if wrong.is_empty() {
        Ok(lines)
    } else {
        Err(format!(
            "{}\n{}\n  connect said {:?}\n  node said {:?}",
            lines.join("\n"),
            wrong.join("\n"),
            connect.seen,
            node.seen
        ))
    }
}

/// A relayed transfer through the lab's TURN server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transfer {
    /// [`CHUNKS`] chunks of [`CHUNK_LEN`] bytes, one every [`CHUNK_EVERY`] (11 s, well over the
    /// 4 s the lab's TURN server grants an allocation): the allocation must be refreshed.
    Long,
    /// [`BULK_CHUNKS`] chunks as fast as they go (16 MiB) to a node whose stdout is read slowly
    /// (1 ms per 16 KiB), so the relay holds bytes for it when the connect is done: the stream's
    /// end must not lose them (coturn drops what it holds when either leg closes).
    Bulk,
}

const CHUNKS: u32 = 44;
const BULK_CHUNKS: u32 = 1024;
const CHUNK_LEN: u32 = 16 * 1024;
const CHUNK_EVERY: Duration = Duration::from_millis(250);

/// Chunk `i` of the long transfer: a pattern that differs per chunk and per byte.
fn chunk(i: u32) -> Vec<u8> {
    (0..CHUNK_LEN)
        .map(|j| (i.wrapping_mul(31) ^ j ^ (j >> 8)) as u8)
        .collect()
}

/// The TURN server's log from byte `from` on.
fn turn_log_since(s: &Servers, from: u64) -> String {
    let all = std::fs::read(&s.turn_log).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(all.len());
    String::from_utf8_lossy(&all[from..]).into_owned()
}

/// `masq-fully`/`masq-fully` (B runs `node` with nothing to send, A connects): the connect's
/// stdin is fed by a thread (for 11 s, or 16 MiB at once to a slow reader) and the node's stdout must hold exactly
/// those bytes; both exit 0. A long transfer outlives the allocation's granted lifetime only if
/// it is refreshed: coturn's log (of this run) must show at least two refreshes. Either way, once
/// both processes ended, the log shows the deallocation (a Refresh with lifetime 0) and the
/// deletion.
fn relayed_transfer(
    lab: &Lab,
    s: &Servers,
    serial: usize,
    transfer: Transfer,
) -> Result<Vec<String>, String> {
    let (chunks, every) = match transfer {
        Transfer::Long => (CHUNKS, CHUNK_EVERY),
        Transfer::Bulk => (BULK_CHUNKS, Duration::ZERO),
    };
    lab.script("nat.sh", &["A", "masq-fully", "inputdrop"])?;
    lab.script("nat.sh", &["B", "masq-fully", "inputdrop"])?;
    let log_from = std::fs::metadata(&s.turn_log).map_or(0, |m| m.len());
    let name = format!("lab-relayed-transfer-{serial}");
    let node_args = node_args(s, &name);
    let mut node = match transfer {
        Transfer::Long => Proc::spawn_in(Some(&lab.ns("hb")), &s.config, &node_args, b""),
        Transfer::Bulk => Proc::spawn_in_slow_reader(
            Some(&lab.ns("hb")),
            &s.config,
            &node_args,
            b"",
            Duration::from_millis(1),
        ),
    };
    node.wait_for("ready", Duration::from_secs(15))
        .ok_or_else(|| format!("node never ready: {:?}", node.seen))?;
    let mut connect = Proc::spawn_fed(
        Some(&lab.ns("ha")),
        &s.config,
        &connect_args(s, &name),
        move |mut input| {
            for i in 0..chunks {
                if input.write_all(&chunk(i)).is_err() {
                    return;
                }
                std::thread::sleep(every);
            }
        },
    );
    let (code_c, out_c) = connect.finish(Duration::from_secs(40));
    let wall = connect.started.elapsed();
    let (code_n, out_n) = node.finish(Duration::from_secs(15));
    let sent: Vec<u8> = (0..chunks).flat_map(chunk).collect();
    let connected = connect.event("connected").cloned().unwrap_or(Value::Null);
    let accepted = node.event("accepted").cloned().unwrap_or(Value::Null);
    let mut wrong = Vec::new();
    if connected["path"] != "relayed" || accepted["path"] != "relayed" {
        wrong.push(format!(
            "path: connected {} accepted {}, expected relayed",
            connected["path"], accepted["path"]
        ));
    }
    if out_n != sent {
        let first = out_n.iter().zip(&sent).position(|(a, b)| a != b);
        wrong.push(format!(
            "the node's stdout: {} bytes, {} sent, first difference at {:?}",
            out_n.len(),
            sent.len(),
            first
        ));
    }
    if !out_c.is_empty() {
        wrong.push(format!(
            "the connect's stdout: {} bytes, expected none",
            out_c.len()
        ));
    }
    if code_c != Some(0) || code_n != Some(0) {
        wrong.push(format!("exit: connect {code_c:?}, node {code_n:?}"));
    }
    // The deallocation is logged once the connect closed its stream; wait for it a little.
    let deleted =
        |log: &str| log.contains("lifetime=0") && log.contains("delete: realm=<p2pd-lab>");
    let until = Instant::now() + Duration::from_secs(5);
    let mut log = turn_log_since(s, log_from);
    while !deleted(&log) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
        log = turn_log_since(s, log_from);
    }
    let processed = log.matches("REFRESH processed, success").count();
    let refreshed = log
        .lines()
        .filter(|l| l.contains("refreshed,") && !l.trim_end().ends_with("lifetime=0"))
        .count();
    let lines = vec![format!(
        "    connected.path {} accepted.path {}, {} of {} bytes in {:.1} s (connect process); \
         coturn: {refreshed} refreshes, {processed} REFRESH processed (the last deallocates), deleted: {}",
        connected["path"],
        accepted["path"],
        out_n.len(),
        sent.len(),
        wall.as_secs_f64(),
        deleted(&log)
    )];
    if transfer == Transfer::Long && refreshed < 2 {
        wrong.push(format!(
            "coturn refreshed the allocation {refreshed} times, expected >= 2"
        ));
    }
    if processed < refreshed + 1 || !deleted(&log) {
        wrong.push(
            "coturn never deallocated (Refresh with lifetime 0) and deleted the allocation".into(),
        );
    }
    if wrong.is_empty() {
        Ok(lines)
    } else {
        Err(format!(
            "{}\n{}\n  connect said {:?}\n  node said {:?}\n  coturn's log of this run:\n{log}",
            lines.join("\n"),
            wrong.join("\n"),
            connect.seen,
            node.seen
        ))
    }
}

/// The phase `name` of a `connected` or `failed` line.
fn phase<'a>(line: &'a Value, name: &str) -> &'a Value {
    line["phases"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["phase"] == name))
        .unwrap_or(&Value::Null)
}

#[test]
fn node_and_connect_through_real_nats() {
    if let Some(reason) = skip_reason() {
        common::skip_or_fail(&reason);
        return;
    }
    let started = Instant::now();
    assert!(p2pd_bin().is_file()); // built before the lab exists
    let lab = Lab::start("nd");
    let dir = Scratch::new("node-lab");
    let s = servers(&lab, &dir);
    let case = |name, node, connect, path| Case {
        name,
        node,
        connect,
        path,
    };
    let cases = [
        case("direct", OPEN, natted("A", "masq"), "direct"),
        case("reverse", natted("A", "masq"), OPEN, "reverse"),
        case(
            "fullcone",
            natted("B", "fullcone"),
            natted("A", "masq"),
            "direct",
        ),
        case(
            "masq-masq",
            natted("B", "masq"),
            natted("A", "masq"),
            "punched",
        ),
        case(
            "seq-restricted",
            natted("B", "restricted"),
            natted("A", "seq"),
            "punched",
        ),
        case(
            "unpunchable",
            natted("B", "masq-fully"),
            natted("A", "masq-fully"),
            "relayed",
        ),
    ];
    let mut failures = Vec::new();
    eprintln!("p2pd node / p2pd connect through real NATs (no NAT flags):");
    for (i, c) in cases.iter().enumerate() {
        let head = format!(
            "{:<15} node on {}, connect from {}: expect {}",
            c.name,
            c.node.label(),
            c.connect.label(),
            c.path
        );
        match run_case(&lab, &s, c, i) {
            Ok(lines) => eprintln!("{head}: ok\n{}", lines.join("\n")),
            Err(e) => {
                eprintln!("{head}: WRONG\n{e}");
                failures.push(c.name);
            }
        }
    }
    for (i, (name, transfer, what)) in [
        ("long-relayed", Transfer::Long, "11 s of data"),
        (
            "bulk-relayed",
            Transfer::Bulk,
            "16 MiB at once to a slow reader",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let head = format!(
            "{name:<15} node on hb(masq-fully), connect from ha(masq-fully): expect relayed, {what}"
        );
        match relayed_transfer(&lab, &s, cases.len() + i, transfer) {
            Ok(lines) => eprintln!("{head}: ok\n{}", lines.join("\n")),
            Err(e) => {
                eprintln!("{head}: WRONG\n{e}");
                failures.push(name);
            }
        }
    }
    eprintln!("total {:.1} s", started.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "wrong: {failures:?}");
}
