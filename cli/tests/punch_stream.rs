//! The punched stream on real sockets, with more data than fits in any buffer: two
//! [`PunchNode`](p2pd_punch::node::PunchNode)s in-process on `p2pd_mio` runtimes, and `p2pd punch`
//! end to end, each with two real mosquitto brokers and our STUN server over TCP on loopback.
//!
//! Skips (with a message) when mosquitto is not installed; CI installs it, and under `CI=true` a
//! missing mosquitto fails the test ([`common::skip_or_fail`]).

mod common;

use p2pd_proto::Machine;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::punch::{config, describe, run_until, subscribed, Side};
use common::servers::TcpStunServer;
use common::Mosquitto;
use p2pd_mio::Runtime;
use p2pd_punch::node::{NodeEvent, PunchNode};
use p2pd_signaling::Identity;

/// A big transfer while the reader stalls: the sender's runtime fills its buffer for the stream
/// and refuses transmits (`Failed { op: Send, error: WouldBlock }`). Regression: the node took
/// that for a broken stream (`StreamClosed`, queue dropped), so `p2pd punch < file` to a slow
/// reader ended "cleanly" with a truncated file. Now the refused bytes are sent again after a
/// pause: every byte arrives, in order, and the stream stays up.
#[test]
fn bulk_transfer_to_a_stalled_reader_arrives_whole() {
    let (Some(m1), Some(m2)) = (Mosquitto::start(), Mosquitto::start()) else {
        common::skip_or_fail(
            "bulk_transfer_to_a_stalled_reader_arrives_whole: mosquitto is not installed",
        );
        return;
    };
    let server = TcpStunServer::start();
    let brokers = [m1.addr(), m2.addr()];
    let id_a = Identity::from_secret_bytes(&[0x6a; 32]).expect("identity");
    let id_b = Identity::from_secret_bytes(&[0x6b; 32]).expect("identity");
    let key_b = id_b.public_key();
    let mut sides = [(id_a, 3u64), (id_b, 4)].map(|(id, seed)| {
        let rt = Runtime::new().expect("runtime");
        let c = config(&brokers, server.addr, &rt);
        let now = rt.now();
        Side {
            node: Some(PunchNode::new(c, id, [seed as u8; 32], seed, now).expect("node")),
            rt,
            events: Vec::new(),
            data: Vec::new(),
        }
    });
    let [a, b] = &mut sides;
    assert!(run_until(a, b, Duration::from_secs(10), |a, b| subscribed(
        a
    )
        && subscribed(b)));
    let now = a.rt.now();
    a.node().punch(now, key_b).expect("punch");
    assert!(
        run_until(a, b, Duration::from_secs(30), |a, b| a.connected()
            && b.connected()),
        "not connected\nA:\n  {}\nB:\n  {}",
        describe(a),
        describe(b)
    );

    // 16 MiB of a counting pattern, offered in 100,000-byte writes regardless of room: `send`
    // takes what fits in the node's send buffer (a partial write, like `io::Write::write`) and
    // fails with `SendBufferFull` when nothing fits. B is not run until A's runtime has refused a
    // transmit (its spill for the stream full, after the kernel's socket buffers), at most 10 s.
    const TOTAL: usize = 16 << 20;
    const WRITE: usize = 100_000;
    let pattern = |i: usize| (i % 251) as u8;
    let mut fed = 0usize;
    let mut partial_writes = 0usize;
    let mut full_refusals = 0usize;
    let mut feed = |a: &mut Side, fed: &mut usize| {
        while *fed < TOTAL {
            let room = a.node().send_room();
            let n = WRITE.min(TOTAL - *fed);
            let chunk: Vec<u8> = (*fed..*fed + n).map(pattern).collect();
            let now = a.rt.now();
            match a.node().send(now, &chunk) {
                Ok(taken) => {
                    assert_eq!(taken, room.min(n), "send takes what fits");
                    *fed += taken;
                    if taken < n {
                        partial_writes += 1;
                        break;
                    }
                }
                Err(p2pd_punch::PunchApiError::SendBufferFull { buffered }) => {
                    assert_eq!(room, 0);
                    assert_eq!(buffered, p2pd_punch::node::SEND_BUFFER);
                    full_refusals += 1;
                    break;
                }
                Err(e) => panic!("send: {e}"),
            }
        }
    };
    let stall_end = Instant::now() + Duration::from_secs(10);
    // The most bytes the runtime itself held unwritten at any turn of the stall.
    let mut held = 0;
    while Instant::now() < stall_end && a.rt.stats().send_errors == 0 {
        feed(a, &mut fed);
        a.turn(Duration::from_millis(2));
        if let Some(stream) = a.node().stream_socket() {
            held = held.max(a.rt.unsent(stream));
        }
    }
    assert!(
        fed < TOTAL,
        "the reader's stall did not block the sender ({fed} bytes fed)"
    );
    assert!(
        a.rt.stats().send_errors > 0,
        "the runtime never refused a transmit in 10 s of stall ({fed} bytes fed)"
    );
    // The runtime itself holds bytes it could not write yet, up to its cap.
    let stream = a.node().stream_socket().expect("stream socket");
    held = held.max(a.rt.unsent(stream));
    assert!(
        held > 0,
        "the runtime holds no unwritten bytes after the stall"
    );
    assert!(held <= p2pd_mio::MAX_STREAM_BUFFER, "{held}");
    let end = Instant::now() + Duration::from_secs(60);
    while b.data.len() < TOTAL && Instant::now() < end {
        feed(a, &mut fed);
        a.turn(Duration::from_millis(2));
        b.turn(Duration::from_millis(2));
        let closed = a
            .events
            .iter()
            .chain(b.events.iter())
            .any(|e| matches!(e, NodeEvent::StreamClosed));
        assert!(
            !closed,
            "the stream closed after {} of {TOTAL} bytes",
            b.data.len()
        );
    }
    assert_eq!(b.data.len(), TOTAL, "bytes received");
    let bad = b
        .data
        .iter()
        .enumerate()
        .position(|(i, &x)| x != pattern(i));
    assert_eq!(bad, None, "first wrong byte");
    assert_eq!(a.node().queued(), 0);
    assert_eq!(
        a.rt.unsent(stream),
        0,
        "everything written once B has it all"
    );
    assert!(
        a.rt.stats().send_errors > 0,
        "the runtime never refused a transmit: the test did not exercise flow control"
    );
    assert!(
        partial_writes > 0 && full_refusals > 0,
        "partial {partial_writes}, full {full_refusals}"
    );
    let writable = a
        .events
        .iter()
        .filter(|e| matches!(e, NodeEvent::Writable))
        .count();
    assert!(
        writable > 0,
        "the node never said its send buffer had room again"
    );
    eprintln!(
        "bulk: {TOTAL} bytes through a stalled reader; runtime refusals {}, runtime held {held} \
         unwritten bytes after the stall; node: {partial_writes} partial writes, {full_refusals} \
         full refusals, {writable} Writable events",
        a.rt.stats().send_errors
    );
    for side in [&mut *a, &mut *b] {
        let now = side.rt.now();
        side.node().close(now);
    }
    assert!(run_until(a, b, Duration::from_secs(10), |a, b| a.closed()
        == 1
        && b.closed() == 1));
    assert_eq!(a.rt.open_sockets(), 0);
    assert_eq!(b.rt.open_sockets(), 0);
    assert_eq!(a.node().poll_timeout(), None);
    assert_eq!(b.node().poll_timeout(), None);
}

/// `p2pd punch < FILE` to a peer whose stdout is read slowly: the whole file arrives, and both
/// sides exit 0. Regressions: (1) the runtime's refusal of a transmit when its buffer for the
/// stream was full ended the stream ("peer closed", exit 0, file truncated after a few MB);
/// (2) after stdin's EOF the CLI closed as soon as the node's queue was empty, dropping what the
/// runtime still held unwritten (up to 256 KiB of the file's end); (3) stdin was read without
/// bound while the peer was slow, so the sender's memory grew by the whole input (VmHWM 42 MB for a
/// 24 MB file; now about 10 MB).
#[test]
fn cli_file_to_a_slow_reader_arrives_whole() {
    use std::io::Read;

    let Some(cli) = PunchCli::start("cli_file_to_a_slow_reader_arrives_whole", "cli") else {
        return;
    };
    let (dir, keys) = (&cli.dir, &cli.keys);
    const TOTAL: usize = 24 << 20;
    let file: Vec<u8> = (0..TOTAL).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.join("file"), &file).expect("write file");
    let args = |name: &str| cli.args(name);
    // B: nothing to send (stdin at EOF at once: B finishes its sending side as soon as it is
    // connected, and keeps receiving); stdout read only after 3 s, then slowly.
    let mut b = spawn_punch(
        "p2pd punch --wait",
        args("b"),
        "--wait",
        Stdio::null(),
        Stdio::piped(),
    );
    let mut b_out = b.child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match b_out.read(&mut buf) {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let file_in = std::fs::File::open(dir.join("file")).expect("open file");
    let mut a = spawn_punch(
        "p2pd punch",
        args("a"),
        &keys[1],
        file_in.into(),
        Stdio::null(),
    );
    // A's peak resident memory, sampled while it runs (stdin must not pile up in memory).
    let pid = a.child.id();
    let mut hwm_kib = 0u64;
    let end = Instant::now() + Duration::from_secs(60);
    while a.exited().is_none() && Instant::now() < end {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(v) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                hwm_kib = hwm_kib.max(v);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let sa = wait_exit(&mut a, "A");
    let sb = wait_exit(&mut b, "B");
    let got = reader.join().expect("reader");
    let _ = std::fs::remove_dir_all(dir);
    assert!(sa.success() && sb.success(), "A {sa}, B {sb}");
    assert_eq!(got.len(), TOTAL, "bytes B wrote to stdout");
    assert!(got == file, "the file arrived changed");
    eprintln!("p2pd punch < {TOTAL} bytes: sender VmHWM {hwm_kib} KiB");
    assert!(
        hwm_kib < (TOTAL as u64 / 1024) * 3 / 4,
        "the sender's memory grew with its input: VmHWM {hwm_kib} KiB for a {TOTAL}-byte file"
    );
}

/// `p2pd punch` on both sides with finite input, both stdins at EOF from the start (`p2pd punch <
/// a` against `p2pd punch --wait < b`): each side finishes its sending side after its file and
/// keeps reading until the other's EOF, so both outputs are complete and both exit 0.
/// Regression: stdin's EOF closed the whole connection, so the side that finished first dropped
/// whatever the other had not delivered yet (and the other side's output was cut short).
#[test]
fn cli_both_sides_pipe_finite_input_and_both_outputs_are_complete() {
    use std::io::Read;

    let Some(cli) = PunchCli::start("cli_both_sides_pipe_finite_input", "both") else {
        return;
    };
    let (dir, keys) = (&cli.dir, &cli.keys);
    // Different sizes, so one side finishes well before the other; B's input is the bigger one.
    let file_a: Vec<u8> = (0..(1usize << 20)).map(|i| (i % 241) as u8).collect();
    let file_b: Vec<u8> = (0..(6usize << 20))
        .map(|i| (i % 239) as u8 ^ 0x5a)
        .collect();
    std::fs::write(dir.join("in-a"), &file_a).expect("write");
    std::fs::write(dir.join("in-b"), &file_b).expect("write");
    let args = |name: &str| cli.args(name);
    // Each side's stdin is its file; its stdout is read to the end by a thread.
    let spawn = |what: &str, name: &str, last_arg: &str| {
        let input = std::fs::File::open(dir.join(format!("in-{name}"))).expect("open");
        let mut g = spawn_punch(what, args(name), last_arg, input.into(), Stdio::piped());
        let mut out = g.child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let _ = out.read_to_end(&mut got);
            got
        });
        (g, reader)
    };
    let (mut b, b_reader) = spawn("p2pd punch --wait", "b", "--wait");
    std::thread::sleep(Duration::from_millis(300));
    let (mut a, a_reader) = spawn("p2pd punch", "a", &keys[1]);
    let sa = wait_exit(&mut a, "A");
    let sb = wait_exit(&mut b, "B");
    let got_a = a_reader.join().expect("reader A");
    let got_b = b_reader.join().expect("reader B");
    let _ = std::fs::remove_dir_all(dir);
    assert!(sa.success() && sb.success(), "A {sa}, B {sb}");
    assert_eq!(got_b.len(), file_a.len(), "bytes B wrote to stdout");
    assert_eq!(got_a.len(), file_b.len(), "bytes A wrote to stdout");
    assert!(got_b == file_a, "A's file arrived changed");
    assert!(got_a == file_b, "B's file arrived changed");
}

/// What the `p2pd punch` runs of a CLI test share: two mosquitto brokers, our STUN server over TCP,
/// and a fresh temp dir `p2pd-punch-{tag}-{pid}` holding identity files `a.key` and `b.key` made
/// by `p2pd id new`, with their public keys.
struct PunchCli {
    brokers: [Mosquitto; 2],
    server: TcpStunServer,
    dir: PathBuf,
    keys: Vec<String>,
}

impl PunchCli {
    /// Starts it for the test `test`; `None` (after [`common::skip_or_fail`]) when mosquitto is
    /// not installed.
    fn start(test: &str, tag: &str) -> Option<PunchCli> {
        let (Some(m1), Some(m2)) = (Mosquitto::start(), Mosquitto::start()) else {
            common::skip_or_fail(&format!("{test}: mosquitto is not installed"));
            return None;
        };
        let server = TcpStunServer::start();
        let dir = std::env::temp_dir().join(format!("p2pd-punch-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut keys = Vec::new();
        for name in ["a", "b"] {
            let out = Command::new(common::p2pd_bin())
                .args(["id", "new", "--json", "--file"])
                .arg(dir.join(format!("{name}.key")))
                .output()
                .expect("p2pd id new");
            assert!(out.status.success());
            let id = common::json_object(&String::from_utf8_lossy(&out.stdout));
            keys.push(id["public_key"].as_str().expect("public_key").to_string());
        }
        Some(PunchCli {
            brokers: [m1, m2],
            server,
            dir,
            keys,
        })
    }

    /// The arguments of `p2pd punch` as `name` (its identity file), with our STUN server, both
    /// brokers and a 20 s timeout.
    fn args(&self, name: &str) -> Vec<String> {
        let mut v = vec![
            "punch".to_string(),
            "--identity".into(),
            self.dir.join(format!("{name}.key")).display().to_string(),
            "--stun".into(),
            self.server.addr.to_string(),
            "--timeout".into(),
            "20".into(),
        ];
        for broker in &self.brokers {
            v.extend(["--broker".to_string(), broker.addr().to_string()]);
        }
        v
    }
}

/// Spawns `p2pd` with `args` and then `last_arg` (`--wait`, or the peer's key), with `stdin` and
/// `stdout` as given and stderr discarded.
fn spawn_punch(
    what: &str,
    args: Vec<String>,
    last_arg: &str,
    stdin: Stdio,
    stdout: Stdio,
) -> common::ChildGuard {
    common::ChildGuard::spawn(
        what,
        Command::new(common::p2pd_bin())
            .args(args)
            .arg(last_arg)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::null()),
    )
    .unwrap_or_else(|e| panic!("spawn {what}: {e}"))
}

/// Waits (60 s at most) for the child `what` to exit, and returns its status.
fn wait_exit(g: &mut common::ChildGuard, what: &str) -> ExitStatus {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = g.exited() {
            return s;
        }
        assert!(Instant::now() < end, "{what} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}
