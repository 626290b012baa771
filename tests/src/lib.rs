//! # p2pd-tests
//!
//! The workspace's cross-crate tests (`tests/`: simulation matrices and soaks over `p2pd-sim`,
//! real sockets through `p2pd-mio`, interop with coturn and mosquitto) and the scaffolding they
//! share with the CLI's end-to-end tests (`cli/tests/`): free loopback ports, our STUN server in a
//! thread, a blocking STUN client on a [`p2pd_mio::Runtime`], `p2pd stun-server` as a child
//! process ([`CliServer`]), child processes that are killed on drop, mosquitto and coturn on
//! loopback, the real-NAT lab of `tests/lab/` (with tcpdump on its interfaces), a reader of the
//! pcap files tcpdump writes, and the process's resident memory.
//!
//! The `stun-load` binary (`src/bin/stun-load.rs`) is the closed-loop STUN load generator of
//! `bench/server-throughput.sh`.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use p2pd_mio::{Runtime, RuntimeStats};
use p2pd_proto::client::{
    ClientConfig, ClientEvent, Request, Retransmit, StunClient, TransactionResult,
};
use p2pd_proto::server::{ServerConfig, ServerEvent, ServerStats, StunServer};
use p2pd_proto::{BindOptions, Machine, SocketId};

pub const LO1: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
pub const LO2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Ports are taken below the kernel's ephemeral range (32768..) so that no socket bound to port 0
/// takes them between our check and the server's bind.
const PORT_LOW: u32 = 10_000;
const PORT_SPAN: u32 = 22_000;

static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

fn port_free(port: u16) -> bool {
    [LO1, LO2].iter().all(|ip| {
        let a = SocketAddr::new(*ip, port);
        UdpSocket::bind(a).is_ok() && TcpListener::bind(a).is_ok()
    })
}

/// Two different ports that are free for UDP and TCP on both 127.0.0.1 and 127.0.0.2.
pub fn free_port_pair() -> (u16, u16) {
    let start = {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        (std::process::id().wrapping_mul(7919) ^ t) % PORT_SPAN
    };
    let _ = NEXT_PORT.compare_exchange(0, start.max(1), Ordering::SeqCst, Ordering::SeqCst);
    let take = || loop {
        let n = NEXT_PORT.fetch_add(1, Ordering::SeqCst);
        let port = u16::try_from(PORT_LOW + n % PORT_SPAN).expect("port in range");
        if port_free(port) {
            return port;
        }
    };
    let p = take();
    let q = take();
    (p, q)
}

/// A retransmission policy for loopback: quick, but patient enough for a loaded 2-core machine.
pub fn loopback_retransmit() -> Retransmit {
    Retransmit::Rfc5389 {
        rto: Duration::from_millis(200),
        transmissions: 6,
        last_wait: 4,
        max_rto: Duration::from_secs(1),
    }
}

// ---------------------------------------------------------------------------------------------
// Our RFC 5780 server, driven by its own Runtime in a thread.

/// What the server thread hands back when it stops.
#[derive(Debug)]
pub struct ServerReport {
    pub stats: ServerStats,
    pub runtime: RuntimeStats,
    /// Sockets still open in the server's runtime after close (must be 0).
    pub open_after_close: usize,
    pub closed_event: bool,
}

pub struct ServerThread {
    pub primary: SocketAddr,
    pub alternate: Option<SocketAddr>,
    run: ServerRun,
}

impl ServerThread {
    /// An RFC 5780 server on 127.0.0.1:P / 127.0.0.2:P2 (all four roles), on fresh ports.
    pub fn rfc5780() -> ServerThread {
        for _ in 0..10 {
            let (p, q) = free_port_pair();
            let config = ServerConfig::rfc5780(SocketAddr::new(LO1, p), LO2, q);
            if let Some(s) = Self::try_start(config, 4) {
                return s;
            }
        }
        panic!("could not start the RFC 5780 server on loopback after 10 attempts");
    }

    /// A server on 127.0.0.1:P only (no alternates).
    pub fn single() -> ServerThread {
        for _ in 0..10 {
            let (p, _) = free_port_pair();
            if let Some(s) = Self::try_start(ServerConfig::single(SocketAddr::new(LO1, p)), 1) {
                return s;
            }
        }
        panic!("could not start the single-address server on loopback after 10 attempts");
    }

    fn try_start(config: ServerConfig, roles: usize) -> Option<ServerThread> {
        let primary = config.primary;
        let alternate = match (config.alternate_ip, config.alternate_port) {
            (Some(ip), Some(port)) => Some(SocketAddr::new(ip, port)),
            _ => None,
        };
        let run = ServerRun::start(config, roles)?;
        Some(ServerThread {
            primary,
            alternate,
            run,
        })
    }

    /// Stops the server and returns its counters.
    pub fn stop(mut self) -> ServerReport {
        self.run.stop().expect("server thread already stopped")
    }
}

/// Our STUN server driven by its own runtime in a thread until it is stopped (or dropped): then
/// it closes, and the thread reports how it ended.
pub(crate) struct ServerRun {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<ServerReport>>,
}

impl ServerRun {
    /// Starts the server of `config` and waits (15 s at most) until each of its `sockets` (UDP
    /// roles and TCP listeners) listens or fails; `None`, with the thread stopped, unless all
    /// listen.
    pub(crate) fn start(config: ServerConfig, sockets: usize) -> Option<ServerRun> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<bool>();
        let stop2 = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut rt = Runtime::new().expect("runtime");
            let mut server = StunServer::new(config).expect("valid server config");
            let (mut listening, mut failed) = (0usize, 0usize);
            rt.run(&mut server, Some(Duration::from_secs(10)), |_, _, ev| {
                match ev {
                    ServerEvent::Listening { .. } | ServerEvent::TcpListening { .. } => {
                        listening += 1
                    }
                    ServerEvent::SocketFailed { .. } | ServerEvent::TcpFailed { .. } => failed += 1,
                    _ => {}
                }
                if listening + failed >= sockets {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .expect("server run");
            let ok = listening == sockets && failed == 0;
            let _ = ready_tx.send(ok);
            while ok && !stop2.load(Ordering::SeqCst) {
                rt.run(&mut server, Some(Duration::from_millis(20)), |_, _, _| {
                    ControlFlow::Continue(())
                })
                .expect("server run");
            }
            let now = rt.now();
            server.close(now);
            let closed_event = run_until(&mut rt, &mut server, Duration::from_secs(5), |ev| {
                matches!(ev, ServerEvent::Closed).then_some(())
            })
            .is_some();
            ServerReport {
                stats: server.stats(),
                runtime: rt.stats(),
                open_after_close: rt.open_sockets(),
                closed_event,
            }
        });
        let ok = ready_rx
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or(false);
        let mut run = ServerRun {
            stop,
            handle: Some(handle),
        };
        if ok {
            Some(run)
        } else {
            let _ = run.stop();
            None
        }
    }

    /// Stops the server and waits for its report (`None` if it was stopped already).
    pub(crate) fn stop(&mut self) -> Option<ServerReport> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().map(|h| h.join().expect("server thread"))
    }
}

impl Drop for ServerRun {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            if !std::thread::panicking() {
                let _ = h.join();
            }
        }
    }
}

/// Runs `machine` on `rt` until `pick` takes one of its events (its answer), or `limit` passes
/// (`None`).
pub fn run_until<M: Machine, T>(
    rt: &mut Runtime,
    machine: &mut M,
    limit: Duration,
    mut pick: impl FnMut(M::Event) -> Option<T>,
) -> Option<T> {
    let mut picked = None;
    rt.run(machine, Some(limit), |_, _, ev| {
        picked = pick(ev);
        if picked.is_some() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .expect("runtime run");
    picked
}

// ---------------------------------------------------------------------------------------------
// A blocking STUN client.

pub struct Client {
    pub rt: Runtime,
    pub client: StunClient,
}

impl Client {
    pub fn new(retransmit: Retransmit, max_transactions: usize, seed: u64) -> Client {
        Client {
            rt: Runtime::new().expect("runtime"),
            client: StunClient::new(
                ClientConfig {
                    retransmit,
                    max_transactions,
                    ..ClientConfig::default()
                },
                seed,
            ),
        }
    }

    /// Opens a socket on `local` and waits until it is bound; returns its id and real address.
    pub fn open(&mut self, local: SocketAddr) -> (SocketId, SocketAddr) {
        let now = self.rt.now();
        let id = self
            .client
            .open_socket(now, local, BindOptions::default())
            .expect("open_socket");
        let bound = run_until(
            &mut self.rt,
            &mut self.client,
            Duration::from_secs(5),
            |ev| match ev {
                ClientEvent::SocketReady { socket, local } if socket == id => Some(local),
                ClientEvent::SocketFailed { socket, error } if socket == id => {
                    panic!("cannot bind {local}: {error:?}")
                }
                _ => None,
            },
        )
        .expect("no SocketReady within 5 s");
        assert_eq!(
            self.rt.local_addr(id),
            Some(bound),
            "runtime agrees on the address"
        );
        (id, bound)
    }

    /// Runs one transaction to its end.
    pub fn query(&mut self, request: Request) -> TransactionResult {
        let now = self.rt.now();
        let handle = self.client.start(now, request).expect("start");
        run_until(
            &mut self.rt,
            &mut self.client,
            Duration::from_secs(20),
            |ev| match ev {
                ClientEvent::Transaction(t) if t.id == handle => Some(t),
                _ => None,
            },
        )
        .expect("the transaction did not end within 20 s")
    }

    /// Closes the client and waits for `Closed`; asserts that every socket is gone.
    pub fn close(&mut self) {
        let now = self.rt.now();
        self.client.close(now);
        let closed = run_until(
            &mut self.rt,
            &mut self.client,
            Duration::from_secs(5),
            |ev| matches!(ev, ClientEvent::Closed).then_some(()),
        );
        assert!(closed.is_some(), "no Closed event after close");
        assert_eq!(
            self.rt.open_sockets(),
            0,
            "runtime sockets left after close"
        );
        assert_eq!(self.client.open_sockets(), 0);
        assert_eq!(self.client.in_flight(), 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes and the p2pd binary.

/// A child process that is killed (and reaped) on drop.
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
}

impl ChildGuard {
    pub fn spawn(name: &str, cmd: &mut Command) -> std::io::Result<ChildGuard> {
        Ok(ChildGuard {
            child: cmd.spawn()?,
            name: name.to_string(),
        })
    }

    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Whether this run is CI's (the environment variable `CI` is `true`, as `.ci/run` and most CI
/// services set it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A test (or part of one) cannot run here for `reason` (a missing program, no root, ...): prints
/// `SKIP: reason` and returns, so the caller returns and libtest counts the test as passed. Under
/// `CI=true` it panics instead: CI installs every prerequisite, so there a missing one is a failure,
/// never a silent pass. Every SKIP path of the workspace's tests goes through here.
pub fn skip_or_fail(reason: &str) {
    if in_ci() {
        panic!("CI=true, but a test would be skipped: {reason}");
    }
    eprintln!("SKIP: {reason}");
}

/// Whether `program` is found on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(program);
            p.is_file()
        })
    })
}

/// `p2pd stun-server` on fresh loopback ports, ready to answer (it printed its four
/// `listening` lines).
pub struct CliServer {
    pub primary: SocketAddr,
    pub alternate: SocketAddr,
    pub guard: ChildGuard,
    /// Kept open so the server never gets EPIPE on stdout.
    _stdout: BufReader<ChildStdout>,
}

impl CliServer {
    /// Starts the `p2pd` binary at `bin` (a CLI test passes `env!("CARGO_BIN_EXE_p2pd")`).
    pub fn start(bin: &Path) -> CliServer {
        let mut last = String::new();
        for _ in 0..10 {
            let (p, q) = free_port_pair();
            let mut guard = ChildGuard::spawn(
                "p2pd stun-server",
                Command::new(bin)
                    .args(["stun-server", "--primary", "127.0.0.1", "--alternate"])
                    .arg("127.0.0.2")
                    .args(["--port", &p.to_string(), "--alt-port", &q.to_string()])
                    .arg("--json")
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit()),
            )
            .expect("spawn p2pd stun-server");
            let mut out = BufReader::new(guard.child.stdout.take().expect("stdout"));
            last.clear();
            if await_listening(&mut out, &mut last) {
                return CliServer {
                    primary: SocketAddr::new(LO1, p),
                    alternate: SocketAddr::new(LO2, q),
                    guard,
                    _stdout: out,
                };
            }
        }
        panic!("p2pd stun-server did not start after 10 attempts; last output:\n{last}");
    }
}

/// Reads the `--json` output of `p2pd stun-server` from `out` until the server has printed its
/// four `listening` lines (`true`), or until the output ends or reports `socket-failed`
/// (`false`). Every line read is appended to `seen`.
pub fn await_listening(out: &mut impl BufRead, seen: &mut String) -> bool {
    let mut listening = 0;
    let mut line = String::new();
    while listening < 4 {
        line.clear();
        match out.read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        seen.push_str(&line);
        let event = json_line(&line);
        match event.as_ref().and_then(event_of) {
            Some("socket-failed") => return false,
            Some("listening") => listening += 1,
            _ => {}
        }
    }
    true
}

/// A line of the CLI's `--json` output, parsed (every such line is one JSON object); `None` for
/// a line that is not a JSON object (human text, an empty line).
pub fn json_line(line: &str) -> Option<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    value.is_object().then_some(value)
}

/// The one JSON object a command printed (its whole stdout); panics, showing the text, if the text
/// is anything else.
pub fn json_object(text: &str) -> serde_json::Value {
    json_line(text).unwrap_or_else(|| panic!("not one JSON object: {text:?}"))
}

/// The `"event"` of a parsed JSON line, if it has one.
pub fn event_of(value: &serde_json::Value) -> Option<&str> {
    value.get("event")?.as_str()
}

/// The resident set size of this process in KiB (Linux `/proc/self/status`, VmRSS).
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

// ---------------------------------------------------------------------------------------------
// mosquitto.

/// The mosquitto binary, if installed.
pub fn mosquitto_binary() -> Option<PathBuf> {
    ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| on_path("mosquitto").then(|| PathBuf::from("mosquitto")))
}

/// A mosquitto broker on 127.0.0.1, started by the test, killed on drop; it can be killed and
/// restarted on the same port.
pub struct Mosquitto {
    pub port: u16,
    binary: PathBuf,
    dir: PathBuf,
    child: Option<ChildGuard>,
}

impl Mosquitto {
    /// Starts a broker on a free port; `None` when mosquitto is not installed (the caller skips
    /// through [`skip_or_fail`], which fails under `CI=true`).
    pub fn start() -> Option<Mosquitto> {
        let binary = mosquitto_binary()?;
        let (port, _) = free_port_pair();
        let dir =
            std::env::temp_dir().join(format!("p2pd-mosquitto-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut m = Mosquitto {
            port,
            binary,
            dir,
            child: None,
        };
        m.restart();
        Some(m)
    }

    /// The broker's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(LO1, self.port)
    }

    /// Kills the broker (SIGKILL: connections end without a DISCONNECT).
    pub fn kill(&mut self) {
        self.child = None;
    }

    /// (Re)starts the broker on its port and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let conf = self.dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_keepalive 600\n",
                self.port
            ),
        )
        .expect("write mosquitto.conf");
        let log = std::fs::File::create(self.dir.join("mosquitto.log")).expect("log file");
        let child = ChildGuard::spawn(
            "mosquitto",
            Command::new(&self.binary)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(log),
        )
        .expect("spawn mosquitto");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200))
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Punch tests on real sockets (our STUN server over TCP, PunchNode sides).

pub mod punch;

// ---------------------------------------------------------------------------------------------
// The NAT lab of `tests/lab/` (network namespaces, nftables, coturn), torn down on drop.

pub mod lab;

// ---------------------------------------------------------------------------------------------
// What an on-path observer saw: classic pcap files (tcpdump -w), TCP streams, plaintext search.

pub mod pcap;

// ---------------------------------------------------------------------------------------------
// Servers in the background: our STUN server over TCP in a thread, coturn on loopback.

pub mod servers;

// ---------------------------------------------------------------------------------------------
// An SNTP responder with a known clock offset.

pub mod sntp_responder;

// ---------------------------------------------------------------------------------------------
// A counting global allocator for the soak tests.

pub mod heap;

// ---------------------------------------------------------------------------------------------
// Slow and idle TCP clients from one source, probes from another (TCP fairness).

pub mod tcp_attack;

// ---------------------------------------------------------------------------------------------
// A scripted MQTT client (the simulated broker's tests, attacks on nodes).

pub mod scripted_mqtt;

/// For test machines that write a stream from a queue of byte strings: moves the front of
/// `queue` into `buf` (splitting a string longer than `buf`, whose rest stays in front) and
/// returns how many bytes, or `None` when the queue is empty.
pub fn pop_chunk(queue: &mut std::collections::VecDeque<Vec<u8>>, buf: &mut [u8]) -> Option<usize> {
    let mut wire = queue.pop_front()?;
    if wire.len() > buf.len() {
        let rest = wire.split_off(buf.len());
        queue.push_front(rest);
    }
    buf.get_mut(..wire.len())?.copy_from_slice(&wire);
    Some(wire.len())
}
