//! The PNP name registry on real sockets with its SQLite store: `p2pd pnp-server --db` on
//! loopback (UDP and TCP), names registered, looked up and deleted through the `p2pd name` CLI and
//! through a `PnpClient` on a `Runtime`; the server killed with SIGKILL and restarted on the same
//! database keeps its names and its rules (ownership, versions); SIGTERM / SIGINT stop it cleanly
//! with its counters; and an in-process server thread over `SqliteStore`.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant as StdInstant};

use common::{
    event_of, free_port_pair, identity, json_line, json_object, p2pd_bin, ChildGuard, Scratch, LO1,
};
use p2pd_cli::store_sqlite::SqliteStore;
use p2pd_mio::Runtime;
use p2pd_proto::{Instant, Transport};
use p2pd_signaling::pnp::{
    ErrorCode, Name, NameStore, PnpClient, PnpClientConfig, PnpClientEvent, PnpFailure, PnpServer,
    PnpServerConfig, PnpServerEvent, PnpTransport, RequestId,
};
use p2pd_signaling::PublicKey;

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

// ---------------------------------------------------------------------------------------------
// `p2pd pnp-server` as a child process.

const SERVER_SECRET: u8 = 0x51;

/// `p2pd pnp-server --db` on 127.0.0.1:PORT (UDP and TCP), restartable on the same port and db.
struct ServerProcess {
    addr: SocketAddr,
    db: PathBuf,
    identity: PathBuf,
    key: PublicKey,
    child: Option<(ChildGuard, BufReader<ChildStdout>)>,
    /// The names count the last start reported.
    names_at_start: u64,
}

impl ServerProcess {
    fn start(dir: &Scratch) -> ServerProcess {
        let (port, _) = free_port_pair();
        let mut s = ServerProcess {
            addr: SocketAddr::new(LO1, port),
            db: dir.path("names.db"),
            identity: dir.identity_file("server.key", SERVER_SECRET),
            key: identity(SERVER_SECRET).public_key(),
            child: None,
            names_at_start: 0,
        };
        s.restart();
        s
    }

    fn spawn(&self, args: &[&str]) -> ChildGuard {
        let addr = self.addr.to_string();
        ChildGuard::spawn(
            "p2pd pnp-server",
            Command::new(p2pd_bin())
                .arg("pnp-server")
                .arg("--db")
                .arg(&self.db)
                .args(["--udp", &addr, "--tcp", &addr, "--identity"])
                .arg(&self.identity)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )
        .expect("spawn p2pd pnp-server")
    }

    /// (Re)starts the server and waits until both listeners are up.
    fn restart(&mut self) {
        self.kill();
        let mut guard = self.spawn(&["--json"]);
        let mut out = BufReader::new(guard.child.stdout.take().unwrap());
        let mut seen = String::new();
        let mut listening = 0;
        let mut line = String::new();
        while listening < 2 {
            line.clear();
            let n = out.read_line(&mut line).unwrap_or(0);
            assert!(n > 0, "p2pd pnp-server exited before listening:\n{seen}");
            seen.push_str(&line);
            let Some(json) = json_line(&line) else {
                continue;
            };
            if event_of(&json) == Some("starting") {
                assert_eq!(json["public_key"], self.key.to_string(), "{line}");
                self.names_at_start = json["names"].as_u64().expect("names");
            }
            if event_of(&json) == Some("listening") {
                assert_eq!(json["local"], self.addr.to_string(), "{line}");
                listening += 1;
            }
        }
        self.child = Some((guard, out));
    }

    /// SIGKILL: no chance to close anything or flush.
    fn kill(&mut self) {
        self.child = None; // ChildGuard kills and reaps
    }

    /// Sends `signal` (TERM or INT) and waits for the exit; returns the exit code and the rest of
    /// stdout.
    fn stop_with(&mut self, signal: &str) -> (Option<i32>, String) {
        let (mut guard, mut out) = self.child.take().expect("server running");
        let pid = guard.child.id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = StdInstant::now() + Duration::from_secs(5);
        let exit = loop {
            if let Some(status) = guard.exited() {
                break status;
            }
            assert!(
                StdInstant::now() < deadline,
                "no exit 5 s after SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        (exit.code(), rest)
    }

    fn cli_server_args(&self) -> Vec<String> {
        vec![
            "--server".into(),
            self.addr.to_string(),
            "--server-key".into(),
            self.key.to_string(),
        ]
    }
}

/// Runs `p2pd name ARGS... --server ... --server-key ... --json`; returns (exit code, stdout line,
/// stderr).
fn name_cli(server: &ServerProcess, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(p2pd_bin())
        .arg("name")
        .args(args)
        .args(server.cli_server_args())
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .expect("run p2pd name");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_found(line: &str, value: &str, owner: &PublicKey, version: u64) {
    let json = json_object(line);
    assert_eq!(event_of(&json), Some("found"), "not found: {line}");
    assert_eq!(json["value"], value, "{line}");
    assert_eq!(json["owner"], owner.to_string(), "{line}");
    assert_eq!(json["version"], version, "{line}");
}

fn assert_refused(result: &(i32, String, String), code: &str, detail: u64) {
    let (rc, line, _) = result;
    assert_eq!(*rc, 1, "{line}");
    let json = json_object(line);
    assert_eq!(event_of(&json), Some("failed"), "{line}");
    assert_eq!(json["reason"], "refused", "{line}");
    assert_eq!(json["code"], code, "{line}");
    assert_eq!(json["detail"], detail, "{line}");
    assert!(json["message"].is_string(), "{line}");
}

// ---------------------------------------------------------------------------------------------
// A `PnpClient` on its own `Runtime`.

struct NameClient {
    rt: Runtime,
    client: PnpClient,
    key: PublicKey,
}

fn request_of(event: &PnpClientEvent) -> Option<RequestId> {
    match event {
        PnpClientEvent::Registered { id, .. }
        | PnpClientEvent::Found { id, .. }
        | PnpClientEvent::NotFound { id, .. }
        | PnpClientEvent::Deleted { id, .. }
        | PnpClientEvent::Failed { id, .. } => Some(*id),
        _ => None,
    }
}

impl NameClient {
    fn new(
        server: SocketAddr,
        server_key: PublicKey,
        transport: PnpTransport,
        secret: u8,
    ) -> NameClient {
        let rt = Runtime::new().unwrap();
        let mut config = PnpClientConfig::new(server, server_key, transport, rt.unix_epoch_ms());
        config.retransmit = Duration::from_millis(200);
        let me = identity(secret);
        let key = me.public_key();
        NameClient {
            client: PnpClient::new(config, me, u64::from(secret)),
            rt,
            key,
        }
    }

    /// Issues one command and runs until its outcome.
    fn request(
        &mut self,
        command: impl FnOnce(&mut PnpClient, Instant) -> RequestId,
    ) -> PnpClientEvent {
        let id = command(&mut self.client, self.rt.now());
        let mut outcome = None;
        self.rt
            .run(
                &mut self.client,
                Some(Duration::from_secs(8)),
                |_, _, ev| {
                    if request_of(&ev) == Some(id) {
                        outcome = Some(ev);
                        return ControlFlow::Break(());
                    }
                    ControlFlow::Continue(())
                },
            )
            .unwrap();
        outcome.expect("no outcome within 8 s")
    }

    fn register(&mut self, n: &str, value: &str, version: u64) -> PnpClientEvent {
        let (n, value) = (name(n), value.as_bytes().to_vec());
        self.request(|c, now| {
            c.register(now, n, value, version, Duration::from_secs(600))
                .unwrap()
        })
    }

    fn lookup(&mut self, n: &str) -> PnpClientEvent {
        let n = name(n);
        self.request(|c, now| c.lookup(now, n).unwrap())
    }

    fn delete(&mut self, n: &str, version: u64) -> PnpClientEvent {
        let n = name(n);
        self.request(|c, now| c.delete(now, n, version).unwrap())
    }

    fn close(mut self) {
        let now = self.rt.now();
        self.client.close(now);
        let mut closed = false;
        self.rt
            .run(
                &mut self.client,
                Some(Duration::from_secs(5)),
                |_, _, ev| {
                    closed |= ev == PnpClientEvent::Closed;
                    if closed {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                },
            )
            .unwrap();
        assert!(closed);
        assert_eq!(self.rt.open_sockets(), 0, "client sockets left after close");
    }
}

fn assert_registered(event: &PnpClientEvent, version: u64) {
    assert!(
        matches!(event, PnpClientEvent::Registered { version: v, .. } if *v == version),
        "{event:?}"
    );
}

fn assert_found_record(event: &PnpClientEvent, value: &str, owner: &PublicKey, version: u64) {
    match event {
        PnpClientEvent::Found { record, .. } => {
            assert!(record.verify());
            assert_eq!(record.value(), value.as_bytes());
            assert_eq!(record.owner(), owner);
            assert_eq!(record.version(), version);
        }
        other => panic!("expected Found, got {other:?}"),
    }
}

fn assert_refused_event(event: &PnpClientEvent, want: ErrorCode, want_detail: u64) {
    match event {
        PnpClientEvent::Failed {
            reason: PnpFailure::Refused { code, detail },
            ..
        } => assert_eq!((*code, *detail), (want, want_detail)),
        other => panic!("expected Refused({want:?}), got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------

/// Names registered through the CLI over UDP and TCP survive a SIGKILL of the server; after the
/// restart the stored versions and owners still rule (stale version and foreign key refused), a
/// delete works and persists across another SIGKILL, and SIGTERM stops the server cleanly with
/// its counters.
#[test]
fn cli_names_survive_sigkill_and_keep_their_rules() {
    let dir = Scratch::new("pnp-real-cli");
    let alice_id = dir.identity_file("alice.key", 0xa1);
    let bob_id = dir.identity_file("bob.key", 0xb2);
    let (alice_id, bob_id) = (alice_id.to_str().unwrap(), bob_id.to_str().unwrap());
    let (alice, bob) = (identity(0xa1).public_key(), identity(0xb2).public_key());
    let mut server = ServerProcess::start(&dir);
    assert_eq!(server.names_at_start, 0);

    let r = name_cli(
        &server,
        &[
            "register",
            "alice",
            "udp value",
            "--version",
            "10",
            "--identity",
            alice_id,
        ],
    );
    assert_eq!(r.0, 0, "{r:?}");
    let json = json_object(&r.1);
    assert_eq!(event_of(&json), Some("registered"), "{r:?}");
    assert_eq!(json["version"], 10, "{r:?}");
    let r = name_cli(
        &server,
        &[
            "register",
            "bob",
            "tcp value",
            "--tcp",
            "--version",
            "20",
            "--identity",
            bob_id,
        ],
    );
    assert_eq!(r.0, 0, "{r:?}");
    let (rc, line, _) = name_cli(&server, &["lookup", "alice"]);
    assert_eq!(rc, 0);
    assert_found(&line, "udp value", &alice, 10);
    let (rc, line, _) = name_cli(&server, &["lookup", "bob", "--tcp"]);
    assert_eq!(rc, 0);
    assert_found(&line, "tcp value", &bob, 20);

    server.kill();
    server.restart();
    assert_eq!(server.names_at_start, 2, "both names are in the database");

    let (rc, line, _) = name_cli(&server, &["lookup", "alice", "--tcp"]);
    assert_eq!(rc, 0);
    assert_found(&line, "udp value", &alice, 10);
    let (rc, line, _) = name_cli(&server, &["lookup", "bob"]);
    assert_eq!(rc, 0);
    assert_found(&line, "tcp value", &bob, 20);
    // The stored version and owner still rule after the restart.
    let stale = name_cli(
        &server,
        &[
            "register",
            "alice",
            "older",
            "--version",
            "5",
            "--identity",
            alice_id,
        ],
    );
    assert_refused(&stale, "StaleVersion", 10);
    let foreign = name_cli(
        &server,
        &[
            "register",
            "alice",
            "mine now",
            "--version",
            "99",
            "--identity",
            bob_id,
        ],
    );
    assert_refused(&foreign, "NotOwner", 0);
    let foreign_delete = name_cli(
        &server,
        &["delete", "alice", "--version", "99", "--identity", bob_id],
    );
    assert_refused(&foreign_delete, "NotOwner", 0);
    let stale_delete = name_cli(
        &server,
        &[
            "delete",
            "alice",
            "--version",
            "9",
            "--tcp",
            "--identity",
            alice_id,
        ],
    );
    assert_refused(&stale_delete, "StaleVersion", 10);
    // An endless --ttl is refused with a typed reason (the latest expiry accepted), not stored
    // forever and not a crash.
    let (rc, line, err) = name_cli(
        &server,
        &[
            "register",
            "forever",
            "v",
            "--ttl",
            &u64::MAX.to_string(),
            "--identity",
            alice_id,
        ],
    );
    assert!(!err.contains("panicked"), "{err}");
    if rc == 1 {
        let json = json_object(&line);
        assert_eq!(json["code"], "InvalidExpiry", "{line}");
        let latest = json["detail"].as_u64().expect("detail");
        let week_ms = 7 * 24 * 3600 * 1000;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(latest <= now_ms + week_ms + 5_000, "{line}");
    } else {
        // Or refused by the argument parser, before any request.
        assert_eq!(rc, 2, "{line} {err}");
    }
    let (rc, _, _) = name_cli(&server, &["lookup", "forever"]);
    assert_eq!(rc, 1, "never stored");
    let r = name_cli(
        &server,
        &["delete", "alice", "--version", "11", "--identity", alice_id],
    );
    assert_eq!(r.0, 0, "{r:?}");
    assert_eq!(event_of(&json_object(&r.1)), Some("deleted"), "{r:?}");
    let (rc, line, _) = name_cli(&server, &["lookup", "alice"]);
    assert_eq!(rc, 1, "{line}");
    assert_eq!(event_of(&json_object(&line)), Some("not_found"), "{line}");

    // The delete is on disk too.
    server.kill();
    server.restart();
    assert_eq!(server.names_at_start, 1);
    let (rc, _, _) = name_cli(&server, &["lookup", "alice", "--tcp"]);
    assert_eq!(rc, 1);
    let (rc, line, _) = name_cli(&server, &["lookup", "bob", "--tcp"]);
    assert_eq!(rc, 0);
    assert_found(&line, "tcp value", &bob, 20);

    // The wrong server key: the server cannot open the request and stays silent; the CLI gives
    // up after --timeout with a hint.
    let started = StdInstant::now();
    let wrong = Command::new(p2pd_bin())
        .args([
            "name",
            "lookup",
            "bob",
            "--timeout",
            "0.5",
            "--json",
            "--server",
        ])
        .arg(server.addr.to_string())
        .args(["--server-key", &alice.to_string()])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&wrong.stdout);
    assert_eq!(wrong.status.code(), Some(1), "{line}");
    let json = json_object(&line);
    assert_eq!(event_of(&json), Some("failed"), "{line}");
    assert_eq!(json["reason"], "timeout", "{line}");
    assert!(json.get("code").is_none(), "{line}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // SIGTERM: a clean stop, every socket released, counters printed.
    let (code, rest) = server.stop_with("TERM");
    assert_eq!(code, Some(0), "{rest}");
    let stopped = rest
        .lines()
        .filter_map(json_line)
        .find(|l| event_of(l) == Some("stopped"))
        .unwrap_or_else(|| panic!("no stopped line in {rest:?}"));
    assert_eq!(stopped["requests"], 2, "{stopped}");
    assert_eq!(stopped["names"], 1, "{stopped}");
    assert_eq!(stopped["open_sockets"], 0, "{stopped}");
    assert_eq!(stopped["store_errors"], 0, "{stopped}");
    let bad = stopped["bad_envelopes"].as_u64().expect("bad_envelopes");
    assert!(
        bad >= 1,
        "the wrong-key lookup was dropped unopened: {stopped}"
    );
    // Every counter is printed, every refusal and drop included (issue 10: the rate table's
    // refusals used to be missing from this line).
    for counter in [
        "requests",
        "error_replies",
        "duplicates",
        "stale",
        "replays",
        "bad_envelopes",
        "not_envelopes",
        "oversize",
        "rate_limited",
        "rate_evictions",
        "amplification_dropped",
        "queue_full",
        "send_failures",
        "store_errors",
        "pruned",
        "prune_steps",
        "connections_accepted",
        "connections_closed",
        "bad_frames",
        "idle_closed",
        "open_sockets",
    ] {
        assert!(stopped[counter].is_u64(), "no {counter} in {stopped}");
    }
}

/// A `PnpClient` on a `Runtime` over UDP and over TCP: registers, looks up (its own names and one
/// the CLI registered), keeps working across a SIGKILL + restart of the server (same sockets for
/// UDP), is refused a stale version afterwards, updates and deletes.
#[test]
fn runtime_clients_over_udp_and_tcp_across_a_server_restart() {
    let dir = Scratch::new("pnp-real-runtime");
    let carol_file = dir.identity_file("carol.key", 0xc3);
    let carol = identity(0xc3).public_key();
    let mut server = ServerProcess::start(&dir);
    let mut udp = NameClient::new(server.addr, server.key, PnpTransport::Udp, 0x11);
    let mut tcp = NameClient::new(server.addr, server.key, PnpTransport::Tcp, 0x22);
    let (udp_key, tcp_key) = (udp.key, tcp.key);

    assert_registered(&udp.register("via-udp", "u1", 1), 1);
    assert_registered(&tcp.register("via-tcp", "t1", 7), 7);
    let r = Command::new(p2pd_bin())
        .args([
            "name",
            "register",
            "via-cli",
            "c1",
            "--version",
            "3",
            "--identity",
        ])
        .arg(&carol_file)
        .args(server.cli_server_args())
        .output()
        .unwrap();
    assert!(r.status.success(), "{r:?}");
    for client in [&mut udp, &mut tcp] {
        assert_found_record(&client.lookup("via-udp"), "u1", &udp_key, 1);
        assert_found_record(&client.lookup("via-tcp"), "t1", &tcp_key, 7);
        assert_found_record(&client.lookup("via-cli"), "c1", &carol, 3);
        assert!(matches!(
            client.lookup("nobody"),
            PnpClientEvent::NotFound { .. }
        ));
    }

    server.kill();
    server.restart();
    assert_eq!(server.names_at_start, 3);

    // The same clients (the UDP one on its old socket) reach the restarted server.
    assert_found_record(&udp.lookup("via-tcp"), "t1", &tcp_key, 7);
    assert_found_record(&tcp.lookup("via-udp"), "u1", &udp_key, 1);
    assert_refused_event(
        &tcp.register("via-tcp", "t0", 6),
        ErrorCode::StaleVersion,
        7,
    );
    assert_refused_event(&udp.register("via-tcp", "mine", 8), ErrorCode::NotOwner, 0);
    assert_registered(&udp.register("via-udp", "u2", 2), 2);
    assert_found_record(&tcp.lookup("via-udp"), "u2", &udp_key, 2);
    assert!(matches!(
        tcp.delete("via-tcp", 8),
        PnpClientEvent::Deleted { version: 8, .. }
    ));
    assert!(matches!(
        udp.lookup("via-tcp"),
        PnpClientEvent::NotFound { .. }
    ));
    // Free again after the delete: anyone may take it.
    assert_registered(&udp.register("via-tcp", "taken", 1), 1);
    assert_found_record(&tcp.lookup("via-tcp"), "taken", &udp_key, 1);
    udp.close();
    tcp.close();
    let (code, rest) = server.stop_with("INT");
    assert_eq!(code, Some(0), "SIGINT: {rest}");
    let stopped = rest
        .lines()
        .filter_map(json_line)
        .find(|l| event_of(l) == Some("stopped"))
        .unwrap_or_else(|| panic!("no stopped line in {rest:?}"));
    assert_eq!(stopped["open_sockets"], 0, "{rest}");
}

/// A database the server cannot use stops it at once with a message and exit code 1.
#[test]
fn server_refuses_a_file_that_is_not_a_database() {
    let dir = Scratch::new("pnp-real-junk");
    std::fs::write(dir.path("names.db"), vec![0x5a; 4096]).unwrap();
    let server_key = dir.identity_file("server.key", SERVER_SECRET);
    let out = Command::new(p2pd_bin())
        .args(["pnp-server", "--db"])
        .arg(dir.path("names.db"))
        .args(["--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--identity"])
        .arg(&server_key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("p2pd pnp-server:") && err.contains("not a database"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// An in-process server thread over `SqliteStore`.

struct ServerThread {
    udp: SocketAddr,
    tcp: SocketAddr,
    thread: common::Stoppable<(u64, usize)>,
}

impl ServerThread {
    /// A server on 127.0.0.1 (any ports) writing to the SQLite file `db`.
    fn start(db: &Path) -> ServerThread {
        let (ready_tx, ready_rx) = mpsc::channel();
        let db = db.to_path_buf();
        let thread = common::Stoppable::spawn(move |stop| {
            let mut rt = Runtime::new().unwrap();
            let any = SocketAddr::new(LO1, 0);
            let config = PnpServerConfig::new(any, any, rt.unix_epoch_ms());
            let store = SqliteStore::open(&db).unwrap();
            let mut server = PnpServer::new(config, identity(SERVER_SECRET), store, 9).unwrap();
            let (mut udp, mut tcp) = (None, None);
            rt.run(&mut server, Some(Duration::from_secs(5)), |_, _, ev| {
                match ev {
                    PnpServerEvent::Listening {
                        transport: Transport::Udp,
                        local,
                    } => udp = Some(local),
                    PnpServerEvent::Listening {
                        transport: Transport::Tcp,
                        local,
                    } => tcp = Some(local),
                    other => panic!("server: {other:?}"),
                }
                if udp.is_some() && tcp.is_some() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
            ready_tx.send((udp.unwrap(), tcp.unwrap())).unwrap();
            let closed =
                common::serve_pnp_until_stopped(&mut rt, &mut server, stop, Duration::from_secs(5));
            assert!(closed, "the server closed");
            assert_eq!(server.stats().store_errors, 0);
            (server.store().len().unwrap(), rt.open_sockets())
        });
        let (udp, tcp) = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server thread ready");
        ServerThread { udp, tcp, thread }
    }

    /// Stops the thread; returns (names stored, sockets left open).
    fn stop(self) -> (u64, usize) {
        self.thread.stop()
    }
}

/// `PnpServer<SqliteStore>` in a thread: names registered over UDP and TCP are in the file after
/// a clean stop (read back and verified by a fresh `SqliteStore`), and a second server on the
/// same file serves them.
#[test]
fn in_process_server_thread_with_sqlite_store() {
    let dir = Scratch::new("pnp-real-thread");
    let db = dir.path("names.db");
    let key = identity(SERVER_SECRET).public_key();
    let server = ServerThread::start(&db);
    let mut udp = NameClient::new(server.udp, key, PnpTransport::Udp, 0x33);
    let mut tcp = NameClient::new(server.tcp, key, PnpTransport::Tcp, 0x44);
    assert_registered(&udp.register("thread-udp", "a", 5), 5);
    assert_registered(&tcp.register("thread-tcp", "b", 6), 6);
    assert_found_record(&tcp.lookup("thread-udp"), "a", &udp.key, 5);
    assert_found_record(&udp.lookup("thread-tcp"), "b", &tcp.key, 6);
    let (udp_key, tcp_key) = (udp.key, tcp.key);
    udp.close();
    tcp.close();
    assert_eq!(server.stop(), (2, 0), "two names stored, no socket left");

    let store = SqliteStore::open(&db).unwrap();
    assert_eq!(store.len().unwrap(), 2);
    let stored = store.get(&name("thread-udp")).unwrap().unwrap();
    assert!(stored.record.verify());
    assert_eq!(stored.record.owner(), &udp_key);
    assert_eq!(stored.record.value(), b"a");
    drop(store);

    let server = ServerThread::start(&db);
    let mut udp = NameClient::new(server.udp, key, PnpTransport::Udp, 0x55);
    assert_found_record(&udp.lookup("thread-tcp"), "b", &tcp_key, 6);
    assert_refused_event(&udp.register("thread-udp", "x", 9), ErrorCode::NotOwner, 0);
    udp.close();
    assert_eq!(server.stop(), (2, 0));
}
