//! Servers run in the background by the real-socket tests: our STUN server over TCP driven by a
//! runtime in a thread, and coturn (`turnserver --stun-only`, or as a TURN server) on fresh
//! loopback ports.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use p2pd_proto::server::{ServerConfig, ServerStats};

use super::{free_port_pair, ChildGuard, ServerRun, LO1, LO2};

/// Our STUN server (UDP + TCP on 127.0.0.1:P) driven by a runtime in a thread.
pub struct TcpStunServer {
    pub addr: SocketAddr,
    run: ServerRun,
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
            // The UDP socket and the TCP listener.
            if let Some(run) = ServerRun::start(config, 2) {
                return TcpStunServer { addr, run };
            }
        }
        panic!("could not start the TCP STUN server on loopback");
    }

    /// Stops it; returns its counters and the sockets its runtime still held after close.
    pub fn stop(mut self) -> (ServerStats, usize) {
        let report = self.run.stop().expect("running");
        (report.stats, report.open_after_close)
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
    pub fn start(name: &str, what: &str, ready: impl FnMut(&mut Coturn) -> bool) -> Coturn {
        Coturn::start_with(name, what, &["--stun-only"], ready)
    }

    /// coturn as a TURN server in realm `realm` with the authentication flags `auth` (and any
    /// other flags), relaying on 127.0.0.1 (loopback peers allowed, verbose log), once it accepts
    /// TCP on its primary address.
    pub fn start_turn(name: &str, realm: &str, auth: &[&str]) -> Coturn {
        let mut mode = vec![
            "--realm",
            realm,
            "--relay-ip",
            "127.0.0.1",
            "--allow-loopback-peers",
            "--verbose",
        ];
        mode.extend_from_slice(auth);
        Coturn::start_with(name, "accept TCP", &mode, |c| {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(15);
            while std::time::Instant::now() < until {
                if c.exited() {
                    return false;
                }
                let up = std::net::TcpStream::connect_timeout(
                    &c.primary,
                    std::time::Duration::from_millis(200),
                )
                .is_ok();
                if up {
                    return true;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            false
        })
    }

    /// [`Coturn::start`] with `mode` instead of `--stun-only`: the TURN tests pass their
    /// authentication flags (`--lt-cred-mech --user u:p`, `--use-auth-secret
    /// --static-auth-secret=...`) and `--realm`, `--relay-ip`, `--allow-loopback-peers`.
    pub fn start_with(
        name: &str,
        what: &str,
        mode: &[&str],
        mut ready: impl FnMut(&mut Coturn) -> bool,
    ) -> Coturn {
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
                    .arg("-n")
                    .args(mode)
                    .args(["-L", "127.0.0.1", "-L", "127.0.0.2"])
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
