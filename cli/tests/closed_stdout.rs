//! Issue 10 item 4: a closed stdout (`p2pd ... | head -n 2`) ends every printing command
//! quietly with exit code 141 (as for a tool killed by SIGPIPE) instead of a panic ("failed
//! printing to stdout: Broken pipe", exit code 101); servers and `signal listen` stop at once,
//! even when the reader goes while they print nothing; a closed stderr is no panic either; and
//! `p2pd stun-server` stops cleanly on SIGTERM and SIGINT, printing its counters and releasing
//! its port. All on loopback.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    command_words, free_port_pair, json_line, p2pd_bin, ChildGuard, KeyDir, ServerThread, LO1,
};

/// The identity file's secret key: `[SECRET; 32]`.
const SECRET: u8 = 0x43;
/// The exit code after a closed stdout.
const EXIT_STDOUT_CLOSED: i32 = 141;
/// Every run here ends well within this (the long-running ones are asked for 30 s and must stop
/// far sooner).
const LIMIT: Duration = Duration::from_secs(10);

/// Waits (bounded by [`LIMIT`]) for `child` to exit; kills it and returns `None` if it does not.
fn wait_bounded(child: &mut Child) -> Option<(Option<i32>, Duration)> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some((status.code(), started.elapsed()));
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `p2pd ARGS` with stdout a pipe whose reader is already closed; returns the exit code,
/// stderr and the time it took.
fn run_with_closed_stdout(args: &[String]) -> (Option<i32>, String, Duration) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut child = Command::new(p2pd_bin())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn p2pd");
    let mut stderr = child.stderr.take().expect("stderr");
    let collect = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let outcome = wait_bounded(&mut child);
    let stderr = collect.join().unwrap_or_default();
    match outcome {
        Some((code, took)) => (code, stderr, took),
        None => panic!("p2pd {args:?} still running {LIMIT:?} after its stdout closed:\n{stderr}"),
    }
}

/// Asserts the command ended with 141, without a panic or a broken-pipe message.
fn assert_quiet_141(args: &[String], code: Option<i32>, stderr: &str) {
    assert!(
        !stderr.contains("panicked") && code != Some(101),
        "p2pd {args:?} panicked on a closed stdout:\n{stderr}"
    );
    assert!(
        !stderr.contains("Broken pipe") && !stderr.contains("failed printing"),
        "p2pd {args:?} complained about the closed pipe:\n{stderr}"
    );
    assert_eq!(
        code,
        Some(EXIT_STDOUT_CLOSED),
        "p2pd {args:?} exit code on a closed stdout; stderr:\n{stderr}"
    );
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// A STUN server asked to run for 30 s.
const STUN_SERVER_30S: &str = "stun-server --primary 127.0.0.1 --single --port 0 --duration 30";
/// A PNP server (on `{db}`, with the identity `{key}`) asked to run for 30 s.
const PNP_SERVER_30S: &str =
    "pnp-server --db {db} --udp 127.0.0.1:0 --tcp 127.0.0.1:0 --identity {key} --duration 30";

#[test]
fn every_printing_command_exits_141_quietly_on_a_closed_stdout() {
    let f = KeyDir::new("closed-stdout-oneshot", SECRET);
    let stun = ServerThread::single();
    let stun_addr = stun.primary.to_string();
    let key = f.key();
    let new_key = f.path("new.key");
    let fill = [
        ("{key}", key.as_str()),
        ("{new_key}", &new_key),
        ("{stun_addr}", &stun_addr),
        ("{peer}", &f.public_key),
    ];
    for line in [
        "id show --file {key}",
        "id show --file {key} --json",
        "id new --file {new_key} --force",
        "nat --list-servers",
        "nat --list-servers --json",
        "nat --server 127.0.0.1:9 --timeout 0.2",
        "nat --server 127.0.0.1:9 --timeout 0.2 --json",
        "stun {stun_addr}",
        "stun {stun_addr} --json",
        "stun 127.0.0.1:9 --single-shot-ms 100 --json",
        "stun 127.0.0.1:9 --tcp --json",
        "ntp 127.0.0.1:9 --samples 1 --timeout-ms 100 --json",
        "sim nat --seeds 1 --loss 0",
        "sim punch --seeds 1 --loss 0 --json",
        "signal send {peer} hi --broker 127.0.0.1:1 --identity {key} --timeout 0.5 --json",
        "name lookup x --server 127.0.0.1:9 --server-key {peer} --timeout 0.2 --json",
    ] {
        let args = command_words(line, &fill);
        let (code, stderr, _) = run_with_closed_stdout(&args);
        assert_quiet_141(&args, code, &stderr);
    }
    // The key was still written, privately.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&new_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn servers_and_listeners_stop_at_once_on_a_closed_stdout() {
    let f = KeyDir::new("closed-stdout-servers", SECRET);
    let key = f.key();
    let db = f.path("names.db");
    let fill = [("{key}", key.as_str()), ("{db}", &db)];
    for line in [
        STUN_SERVER_30S,
        &format!("{STUN_SERVER_30S} --json"),
        PNP_SERVER_30S,
        "signal listen --broker 127.0.0.1:1 --identity {key} --timeout 30",
        "signal listen --broker 127.0.0.1:1 --identity {key} --timeout 30 --json",
    ] {
        let args = command_words(line, &fill);
        let (code, stderr, took) = run_with_closed_stdout(&args);
        assert_quiet_141(&args, code, &stderr);
        assert!(
            took < Duration::from_secs(5),
            "p2pd {args:?} took {took:?} to stop after its stdout closed"
        );
    }
}

/// Spawns `p2pd ARGS` with stdout piped; returns the child and its stdout.
fn spawn_piped(args: &[String]) -> (ChildGuard, BufReader<ChildStdout>) {
    let mut guard = ChildGuard::spawn(
        "p2pd",
        Command::new(p2pd_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )
    .expect("spawn p2pd");
    let out = BufReader::new(guard.child.stdout.take().expect("stdout"));
    (guard, out)
}

/// Reads lines until one contains `marker`; returns everything read.
fn read_until(out: &mut BufReader<ChildStdout>, marker: &str) -> String {
    let mut seen = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        let n = out.read_line(&mut line).unwrap_or(0);
        assert!(n > 0, "output ended before {marker:?}:\n{seen}");
        seen.push_str(&line);
        if line.contains(marker) {
            return seen;
        }
    }
}

/// `p2pd stun-server | head -n 2`: the server prints nothing more after its first lines, yet
/// stops when the reader goes (it polls its stdout between slices of its loop).
#[test]
fn a_silent_server_notices_its_reader_is_gone() {
    let f = KeyDir::new("closed-stdout-silent", SECRET);
    let key = f.key();
    let db = f.path("names.db");
    let fill = [("{key}", key.as_str()), ("{db}", &db)];
    for (line, marker) in [(STUN_SERVER_30S, "ready"), (PNP_SERVER_30S, "ready")] {
        let args = command_words(line, &fill);
        let (mut guard, mut out) = spawn_piped(&args);
        read_until(&mut out, marker);
        let closed_at = Instant::now();
        drop(out);
        let (code, _) = wait_bounded(&mut guard.child)
            .unwrap_or_else(|| panic!("p2pd {args:?} kept running after its reader went"));
        assert_eq!(code, Some(EXIT_STDOUT_CLOSED), "p2pd {args:?}");
        assert!(
            closed_at.elapsed() < Duration::from_secs(5),
            "p2pd {args:?} took {:?} to notice",
            closed_at.elapsed()
        );
    }
}

/// `p2pd name lookup` printing a found record (the case issue 10 names) to a closed stdout.
#[test]
fn name_lookup_of_a_found_record_exits_141_on_a_closed_stdout() {
    let f = KeyDir::new("closed-stdout-lookup", SECRET);
    let (port, _) = free_port_pair();
    let addr = SocketAddr::new(LO1, port).to_string();
    let key = f.key();
    let db = f.path("names.db");
    let (_server, mut out) = spawn_piped(&command_words(
        "pnp-server --db {db} --udp {addr} --tcp {addr} --identity {key} --duration 30",
        &[("{db}", &db), ("{addr}", &addr), ("{key}", &key)],
    ));
    read_until(&mut out, "ready");
    let server = ["--server", &addr, "--server-key", &f.public_key];
    let register = Command::new(p2pd_bin())
        .args(["name", "register", "closed-stdout", "some value"])
        .args(server)
        .args(["--identity", &key])
        .output()
        .expect("run p2pd name register");
    assert!(
        register.status.success(),
        "{}",
        String::from_utf8_lossy(&register.stderr)
    );
    for json in [false, true] {
        let mut args = strings(&["name", "lookup", "closed-stdout"]);
        args.extend(strings(&server));
        if json {
            args.push("--json".into());
        }
        let (code, stderr, _) = run_with_closed_stdout(&args);
        assert_quiet_141(&args, code, &stderr);
    }
}

/// A closed stderr is no panic either (`eprintln!` panics like `println!`).
#[test]
fn a_closed_stderr_is_no_panic() {
    for (words, want) in [
        (vec!["id", "show", "--file", "/nonexistent/p2pd.key"], 1),
        (vec!["stun", "127.0.0.1:9", "--single-shot-ms", "100"], 1),
        (
            vec!["stun-server", "--primary", "127.0.0.1", "--duration=-1"],
            2,
        ),
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let mut child = Command::new(p2pd_bin())
            .args(&words)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(writer)
            .spawn()
            .expect("spawn p2pd");
        let (code, _) = wait_bounded(&mut child).expect("bounded");
        assert_eq!(code, Some(want), "p2pd {words:?} with a closed stderr");
    }
}

/// `p2pd stun-server` stops cleanly on SIGTERM and SIGINT like `pnp-server`: exit code 0, its
/// counters printed, its port free again.
#[cfg(unix)]
#[test]
fn stun_server_stops_cleanly_on_sigterm_and_sigint() {
    for signal in ["TERM", "INT"] {
        let (mut guard, mut out) = spawn_piped(&command_words(
            "stun-server --primary 127.0.0.1 --single --port 0 --json",
            &[],
        ));
        let first = read_until(&mut out, "listening");
        let local: SocketAddr = json_line(&first)
            .and_then(|j| j["local"].as_str().map(str::to_string))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no local address in {first}"));
        // It answers, so the counters have something to count.
        let client = UdpSocket::bind((LO1, 0)).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let request = [
            0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        client.send_to(&request, local).unwrap();
        let mut buf = [0u8; 512];
        client.recv_from(&mut buf).expect("a STUN answer");

        let sent = Command::new("kill")
            .args([format!("-{signal}"), guard.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
        let (code, took) = wait_bounded(&mut guard.child).expect("stun-server kept running");
        assert_eq!(code, Some(0), "exit code after SIG{signal}");
        assert!(took < Duration::from_secs(5), "took {took:?} to stop");
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        let stopped = rest
            .lines()
            .filter_map(json_line)
            .find(|j| j["event"] == "stopped")
            .unwrap_or_else(|| panic!("no stopped line after SIG{signal}:\n{rest}"));
        assert_eq!(stopped["requests"], 1, "{rest}");
        assert_eq!(stopped["responses"], 1, "{rest}");
        // The socket is closed: its port can be bound again.
        UdpSocket::bind(local).expect("the server's port is free after the stop");
    }
}
