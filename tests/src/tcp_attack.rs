//! Slow and idle TCP clients from one source against a server, and probes from another source
//! that count how often the server still serves them: the loopback tests of TCP fairness
//! (`cli/tests/tcp_fairness.rs`) and the `tcp-fairness` bench binary share this.
//!
//! The attacker binds every connection to its own source address (127.0.0.2 on loopback) and
//! either **drips** (each connection writes one byte of a never-ending message per second) or
//! **idles** (it holds connections open and sends nothing). Either way it reconnects whatever the
//! server closes, so it keeps up the pressure it aims for. Probes come from the default source
//! (127.0.0.1), one thread each, started at a fixed pace.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use p2pd_mio::Runtime;
use p2pd_proto::stun::{Class, Header, Message, MessageWriter, Method, TransactionId};
use p2pd_signaling::pnp::{Name, PnpClient, PnpClientConfig, PnpClientEvent, PnpTransport};
use p2pd_signaling::{Identity, PublicKey};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// What the attacker does with its connections.
#[derive(Clone, Debug)]
pub enum Attack {
    /// `connections` connections each write one byte per second: `prefix` first (the start of a
    /// message announcing a long body), then zeros, so no message ever completes.
    Drip {
        /// How many connections drip at once.
        connections: usize,
        /// The message start each connection drips first.
        prefix: Vec<u8>,
    },
    /// `connections` connections are held open and silent.
    Idle {
        /// How many connections the attacker tries to hold.
        connections: usize,
    },
}

impl Attack {
    /// A drip of a STUN Binding request header announcing 1,024 bytes of attributes.
    pub fn stun_drip(connections: usize) -> Attack {
        let mut prefix = vec![0x00, 0x01, 0x04, 0x00];
        prefix.extend(p2pd_proto::stun::MAGIC_COOKIE.to_be_bytes());
        prefix.extend([0x5a; 12]);
        Attack::Drip {
            connections,
            prefix,
        }
    }

    /// A drip of a PNP frame announcing a 1,024-byte envelope.
    pub fn pnp_drip(connections: usize) -> Attack {
        Attack::Drip {
            connections,
            prefix: vec![0x04, 0x00],
        }
    }

    fn connections(&self) -> usize {
        match self {
            Attack::Drip { connections, .. } | Attack::Idle { connections } => *connections,
        }
    }
}

/// What the attacker did.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct AttackStats {
    /// Connections that completed their handshake.
    pub connects: u64,
    /// Connects that failed or timed out (a full backlog drops SYNs).
    pub failed_connects: u64,
    /// Connections the attacker found closed by the server (and replaced).
    pub closed_by_server: u64,
    /// Bytes dripped.
    pub bytes: u64,
}

/// A running attacker; [`Attacker::stop`] ends it and closes its connections.
pub struct Attacker {
    stop: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    connects: Arc<AtomicU64>,
    thread: Option<JoinHandle<AttackStats>>,
}

impl Attacker {
    /// Starts `attack` against `server` from source address `from`.
    pub fn start(attack: Attack, server: SocketAddr, from: IpAddr) -> Attacker {
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicUsize::new(0));
        let connects = Arc::new(AtomicU64::new(0));
        let (s, h, c) = (stop.clone(), held.clone(), connects.clone());
        let thread = std::thread::Builder::new()
            .name("tcp-attacker".into())
            .spawn(move || attack_loop(&attack, server, from, &s, &h, &c))
            .expect("spawn the attacker");
        Attacker {
            stop,
            held,
            connects,
            thread: Some(thread),
        }
    }

    /// How many connections the attacker holds now (connected, not seen closed).
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// How many handshakes have completed so far.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Waits (at most `limit`) until the attacker has completed `n` handshakes.
    pub fn wait_connects(&self, n: u64, limit: Duration) {
        let end = Instant::now() + limit;
        while self.connects() < n && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the attack, closes its connections and returns what it did.
    pub fn stop(mut self) -> AttackStats {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("attacker thread"))
            .unwrap_or_default()
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A connection from `from` to `server`, within `timeout`.
fn connect_from(from: IpAddr, server: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(server),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.bind(&SockAddr::from(SocketAddr::new(from, 0)))?;
    socket.connect_timeout(&SockAddr::from(server), timeout)?;
    Ok(socket.into())
}

/// Whether the server has closed (or reset) `stream`: a non-blocking peek sees the end.
fn closed_by_peer(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    }
}

struct Conn {
    stream: TcpStream,
    sent: usize,
}

fn attack_loop(
    attack: &Attack,
    server: SocketAddr,
    from: IpAddr,
    stop: &AtomicBool,
    held: &AtomicUsize,
    connects: &AtomicU64,
) -> AttackStats {
    let mut stats = AttackStats::default();
    let mut conns: Vec<Option<Conn>> = (0..attack.connections()).map(|_| None).collect();
    let connect_timeout = Duration::from_millis(250);
    let tick = match attack {
        Attack::Drip { .. } => Duration::from_secs(1),
        Attack::Idle { .. } => Duration::from_millis(200),
    };
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let mut holding = conns_held(&conns);
        for slot in conns.iter_mut() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if let Some(conn) = slot {
                let alive = match attack {
                    Attack::Drip { prefix, .. } => {
                        let byte = prefix.get(conn.sent).copied().unwrap_or(0);
                        let ok =
                            !closed_by_peer(&conn.stream) && conn.stream.write_all(&[byte]).is_ok();
                        if ok {
                            conn.sent += 1;
                            stats.bytes += 1;
                        }
                        ok
                    }
                    Attack::Idle { .. } => !closed_by_peer(&conn.stream),
                };
                if !alive {
                    stats.closed_by_server += 1;
                    holding -= 1;
                    *slot = None;
                }
            }
            if slot.is_none() {
                match connect_from(from, server, connect_timeout) {
                    Ok(stream) => {
                        let _ = stream.set_nonblocking(true);
                        stats.connects += 1;
                        connects.fetch_add(1, Ordering::Relaxed);
                        holding += 1;
                        *slot = Some(Conn { stream, sent: 0 });
                    }
                    Err(_) => stats.failed_connects += 1,
                }
            }
            held.store(holding, Ordering::Relaxed);
        }
        // Sleep out the tick, watching for the stop flag.
        while started.elapsed() < tick && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    held.store(0, Ordering::Relaxed);
    stats
}

fn conns_held(conns: &[Option<Conn>]) -> usize {
    conns.iter().filter(|c| c.is_some()).count()
}

/// What a window of probes found.
#[derive(Clone, Debug, Default)]
pub struct ProbeReport {
    /// Probes started.
    pub tried: usize,
    /// Probes answered within their timeout.
    pub served: usize,
    /// The slowest answer.
    pub slowest: Duration,
}

impl ProbeReport {
    /// Whether at least `percent` % of the probes were served.
    pub fn served_at_least(&self, percent: usize) -> bool {
        self.served * 100 >= percent * self.tried && self.tried > 0
    }
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} probes served (slowest {} ms)",
            self.served,
            self.tried,
            self.slowest.as_millis()
        )
    }
}

/// Starts `count` probes, one every `spacing`, each in its own thread; `probe(i)` returns whether
/// probe `i` was served. Returns when every probe has finished (each must bound its own time).
pub fn probe_window(
    count: usize,
    spacing: Duration,
    probe: impl Fn(usize) -> bool + Send + Sync + 'static,
) -> ProbeReport {
    let probe = Arc::new(probe);
    let mut threads = Vec::with_capacity(count);
    let start = Instant::now();
    for i in 0..count {
        let at = start + spacing * u32::try_from(i).unwrap_or(u32::MAX);
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let probe = probe.clone();
        threads.push(std::thread::spawn(move || {
            let t = Instant::now();
            let served = probe(i);
            (served, t.elapsed())
        }));
    }
    let mut report = ProbeReport {
        tried: count,
        ..ProbeReport::default()
    };
    for t in threads {
        let (served, took) = t.join().expect("probe thread");
        if served {
            report.served += 1;
            report.slowest = report.slowest.max(took);
        }
    }
    report
}

/// One STUN Binding request over a new TCP connection to `server`, answered within `timeout`.
pub fn stun_probe(server: SocketAddr, id: usize, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    let left = || {
        end.checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };
    let Ok(mut s) = TcpStream::connect_timeout(&server, timeout) else {
        return false;
    };
    let mut txid = [0u8; 12];
    txid[..8].copy_from_slice(&(id as u64).to_be_bytes());
    let mut buf = [0u8; 64];
    let Ok(w) = MessageWriter::new(
        &mut buf,
        Header::new(Class::Request, Method::BINDING, TransactionId::new(txid)),
    ) else {
        return false;
    };
    let n = w.finish();
    if s.write_all(&buf[..n]).is_err() {
        return false;
    }
    let mut response = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let Some(wait) = left() else {
            return false;
        };
        let _ = s.set_read_timeout(Some(wait));
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(k) => response.extend_from_slice(&chunk[..k]),
        }
        if let Ok(total) = Message::needed(&response) {
            if response.len() >= total {
                return Message::decode(&response[..total]).is_ok_and(|m| {
                    m.class() == Class::Success && m.transaction_id() == TransactionId::new(txid)
                });
            }
        }
    }
}

/// One PNP lookup over a new TCP connection to `server` (whose key is `key`) by a fresh
/// `PnpClient` on its own runtime, answered (found or not found) within `timeout`.
pub fn pnp_probe(server: SocketAddr, key: PublicKey, id: usize, timeout: Duration) -> bool {
    let Ok(mut rt) = Runtime::new() else {
        return false;
    };
    let mut config = PnpClientConfig::new(server, key, PnpTransport::Tcp, rt.unix_epoch_ms());
    config.timeout = timeout;
    let mut secret = [0x3c; 32];
    secret[..8].copy_from_slice(&(id as u64 + 1).to_be_bytes());
    let Ok(me) = Identity::from_secret_bytes(&secret) else {
        return false;
    };
    let seed = (id as u64) ^ (std::process::id() as u64) << 32;
    let mut client = PnpClient::new(config, me, seed);
    let Ok(name) = Name::new("probe") else {
        return false;
    };
    let Ok(request) = client.lookup(rt.now(), name) else {
        return false;
    };
    let mut served = false;
    let _ = rt.run(
        &mut client,
        Some(timeout + Duration::from_secs(1)),
        |_, _, ev| match ev {
            PnpClientEvent::Found { id, .. } | PnpClientEvent::NotFound { id, .. }
                if id == request =>
            {
                served = true;
                ControlFlow::Break(())
            }
            PnpClientEvent::Failed { id, .. } if id == request => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        },
    );
    served
}

/// Raises this process's soft limit on open files towards `want` (up to the hard limit); returns
/// the soft limit in force afterwards.
#[cfg(unix)]
pub fn raise_fd_limit(want: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; setrlimit reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        let target = libc::rlim_t::try_from(want)
            .unwrap_or(libc::rlim_t::MAX)
            .min(limit.rlim_max);
        if limit.rlim_cur < target {
            let raised = libc::rlimit {
                rlim_cur: target,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = target;
            }
        }
    }
    // `rlim_t` is `u64` on Linux but not on every Unix.
    #[allow(clippy::useless_conversion)]
    u64::try_from(limit.rlim_cur).unwrap_or(u64::MAX)
}

/// Without `setrlimit`: assume `want` is allowed.
#[cfg(not(unix))]
pub fn raise_fd_limit(want: u64) -> u64 {
    want
}

/// The resident set size of process `pid` in KiB (Linux).
pub fn process_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// How many file descriptors process `pid` has open (Linux).
pub fn process_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// The most RSS (KiB) and open descriptors seen in process `pid`, sampled every 50 ms until
/// `stop` is set, in a background thread.
pub struct ResourceSampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(u64, usize)>>,
}

impl ResourceSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> ResourceSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut rss, mut fds) = (0u64, 0usize);
            while !s.load(Ordering::Relaxed) {
                rss = rss.max(process_rss_kib(pid).unwrap_or(0));
                fds = fds.max(process_fds(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(50));
            }
            (rss, fds)
        });
        ResourceSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns (peak RSS KiB, peak open descriptors).
    pub fn stop(mut self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}
