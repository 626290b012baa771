//! Servers run in the background by the real-socket tests: our STUN server over TCP driven by a
//! runtime in a thread, and coturn (`turnserver --stun-only`) on fresh loopback ports.

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use p2pd_mio::Runtime;
use p2pd_proto::server::{ServerConfig, ServerEvent, ServerStats, StunServer};

use super::{free_port_pair, ChildGuard, LO1, LO2};

/// Our STUN server (UDP + TCP on 127.0.0.1:P) driven by a runtime in a thread.
pub struct TcpStunServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(ServerStats, usize)>>,
}

impl TcpStunServer {
    /// Starts it with the default server configuration.
    pub fn start() -> TcpStunServer {
        TcpStunServer::start_with(|_| {})
    }

    /// Starts it with the configuration `configure` adjusts (on a fresh port, up to 10 attempts).
    pub fn start_with(configure: impl Fn(&mut ServerConfig)) -> TcpStunServer {
        for _ in 0..10 {
            let (p, _) = free_port_pair();
            let addr = SocketAddr::new(LO1, p);
            let mut config = ServerConfig::single(addr).with_tcp(true);
            configure(&mut config);
            let stop = Arc::new(AtomicBool::new(false));
            let stop2 = Arc::clone(&stop);
            let (tx, rx) = mpsc::channel();
            let handle = std::thread::spawn(move || {
                let mut rt = Runtime::new().expect("runtime");
                let mut server = StunServer::new(config).expect("config");
                let mut up = (0, 0);
                rt.run(&mut server, Some(Duration::from_secs(10)), |_, _, ev| {
                    match ev {
                        ServerEvent::Listening { .. } | ServerEvent::TcpListening { .. } => {
                            up.0 += 1
                        }
                        ServerEvent::SocketFailed { .. } | ServerEvent::TcpFailed { .. } => {
                            up.1 += 1
                        }
                        _ => {}
                    }
                    if up.0 + up.1 == 2 {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .expect("run");
                let ok = up == (2, 0);
                let _ = tx.send(ok);
                while ok && !stop2.load(Ordering::SeqCst) {
                    rt.run(&mut server, Some(Duration::from_millis(20)), |_, _, _| {
                        ControlFlow::Continue(())
                    })
                    .expect("run");
                }
                server.close(rt.now());
                rt.run(&mut server, Some(Duration::from_secs(5)), |_, _, ev| {
                    if matches!(ev, ServerEvent::Closed) {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .expect("run");
                (server.stats(), rt.open_sockets())
            });
            if rx.recv_timeout(Duration::from_secs(15)).unwrap_or(false) {
                return TcpStunServer {
                    addr,
                    stop,
                    handle: Some(handle),
                };
            }
            stop.store(true, Ordering::SeqCst);
            let _ = handle.join();
        }
        panic!("could not start the TCP STUN server on loopback");
    }

    /// Stops it; returns its counters and the sockets its runtime still held after close.
    pub fn stop(mut self) -> (ServerStats, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().expect("running").join().expect("thread")
    }
}

impl Drop for TcpStunServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            if !std::thread::panicking() {
                let _ = h.join();
            }
        }
    }
}

/// A coturn process (`turnserver --stun-only` on 127.0.0.1:P + 127.0.0.2:Q, log in its own
/// directory), killed (and its directory removed) on drop.
pub struct Coturn {
    /// 127.0.0.1:P.
    pub primary: SocketAddr,
    /// 127.0.0.2:Q.
    pub alternate: SocketAddr,
    pub dir: PathBuf,
    guard: Option<ChildGuard>,
}

impl Coturn {
    /// Starts coturn on fresh loopback ports until `ready` holds for it (up to 5 attempts, each in
    /// the directory `{name}-PID-ATTEMPT-P` of the temporary directory); panics with the last log
    /// after that, saying that coturn did not `what`.
    pub fn start(name: &str, what: &str, mut ready: impl FnMut(&mut Coturn) -> bool) -> Coturn {
        let mut last_log = String::new();
        for attempt in 0..5 {
            let (p, q) = free_port_pair();
            let dir =
                std::env::temp_dir().join(format!("{name}-{}-{attempt}-{p}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let log = std::fs::File::create(dir.join("turnserver.log")).expect("log file");
            let log2 = log.try_clone().expect("log file");
            let guard = ChildGuard::spawn(
                "turnserver",
                Command::new("turnserver")
                    .args(["-n", "--stun-only", "-L", "127.0.0.1", "-L", "127.0.0.2"])
                    .args(["--listening-port", &p.to_string()])
                    .args(["--alt-listening-port", &q.to_string()])
                    .args(["--no-tls", "--no-dtls", "--no-cli"])
                    .args(["--log-file", "stdout", "--simple-log"])
                    .arg("--userdb")
                    .arg(dir.join("turndb"))
                    .arg("--pidfile")
                    .arg(dir.join("turnserver.pid"))
                    .stdin(Stdio::null())
                    .stdout(log)
                    .stderr(log2),
            )
            .expect("spawn turnserver");
            let mut coturn = Coturn {
                primary: SocketAddr::new(LO1, p),
                alternate: SocketAddr::new(LO2, q),
                dir,
                guard: Some(guard),
            };
            if ready(&mut coturn) {
                return coturn;
            }
            last_log = coturn.log();
        }
        panic!("coturn did not {what} after 5 attempts; last log:\n{last_log}");
    }

    /// What coturn has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("turnserver.log")).unwrap_or_default()
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        self.guard.as_mut().is_some_and(|g| g.exited().is_some())
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        drop(self.guard.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
