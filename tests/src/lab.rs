//! The NAT lab of `tests/lab/` for the lab tests (`nat_lab`, `punch_lab`, `punch_lab_capture`):
//! why it cannot run here, if it cannot, and one lab (namespaces `PREFIX-*`, state in its own
//! directory) brought up with its services and torn down on drop, also after a panic; tcpdump on
//! one of its interfaces.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::ChildGuard;

pub fn lab_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("lab")
}

/// Why the lab (with coturn in it) cannot run here, if it cannot.
pub fn skip_reason() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("the NAT lab needs Linux network namespaces".into());
    }
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false);
    if !root {
        return Some("not root (the NAT lab creates network namespaces)".into());
    }
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !works("ip", &["netns", "list"]) {
        return Some("`ip netns` is unavailable (iproute2)".into());
    }
    if !works("nft", &["--version"]) {
        return Some("`nft` is unavailable (nftables)".into());
    }
    if !super::on_path("conntrack") {
        return Some("`conntrack` is unavailable".into());
    }
    if !works("ss", &["-V"]) {
        return Some("`ss` is unavailable (iproute2)".into());
    }
    if !super::on_path("turnserver") {
        return Some("`turnserver` is unavailable (coturn)".into());
    }
    None
}

/// One lab (namespaces `PREFIX-*`, state in its own directory), torn down on drop.
pub struct Lab {
    pub prefix: String,
    pub state: PathBuf,
    up: bool,
}

impl Lab {
    /// Whether a TCP socket listens on `ip:port` in the stun namespace.
    pub fn tcp_listening(&self, ip: &str, port: u16) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.ns("stun"), "ss", "-Hltn"])
            .arg(format!("src {ip}:{port}"))
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
    }

    /// A mosquitto broker on `ip:1883` in the stun namespace, once it listens.
    pub fn broker(&self, ip: &str) -> ChildGuard {
        let conf = self.state.join(format!("mosquitto-{ip}.conf"));
        std::fs::write(
            &conf,
            format!("listener 1883 {ip}\nallow_anonymous true\npersistence false\n"),
        )
        .expect("write mosquitto.conf");
        let log = std::fs::File::create(self.state.join(format!("mosquitto-{ip}.log")))
            .expect("mosquitto log");
        let binary = crate::mosquitto_binary().expect("mosquitto");
        let mut guard = ChildGuard::spawn(
            "mosquitto (lab)",
            Command::new("ip")
                .args(["netns", "exec", &self.ns("stun")])
                .arg(binary)
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        )
        .expect("spawn mosquitto");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.tcp_listening(ip, 1883) {
            if let Some(status) = guard.exited() {
                let log = std::fs::read_to_string(self.state.join(format!("mosquitto-{ip}.log")))
                    .unwrap_or_default();
                panic!("mosquitto on {ip} exited ({status}):\n{log}");
            }
            assert!(Instant::now() < deadline, "mosquitto on {ip} not listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        guard
    }

    /// Runs a script of `tests/lab/` on this lab.
    pub fn script(&self, name: &str, args: &[&str]) -> Result<(), String> {
        self.script_env(name, args, &[])
    }

    /// [`Lab::script`] with these environment variables set too.
    pub fn script_env(
        &self,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<(), String> {
        let out = Command::new("bash")
            .arg(lab_dir().join(name))
            .args(args)
            .env("LAB_PREFIX", &self.prefix)
            .env("LAB_STATE", &self.state)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{name}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{name} {args:?} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Starts the lab's TURN server (`lab.sh turn`: a second coturn on 203.0.113.1:3480 taking
    /// TURN REST API credentials made with `secret`, realm `p2pd-lab`, allocations granted at
    /// most 4 s), once it listens; returns the path of its log (`--verbose`: every request). It
    /// is torn down with the lab.
    pub fn start_turn(&self, secret: &str) -> Result<PathBuf, String> {
        self.script_env("lab.sh", &["turn"], &[("LAB_TURN_SECRET", secret)])?;
        Ok(self.state.join("turn.log"))
    }

    /// Brings a lab up with its services (coturn in the stun namespace); `tag` starts the
    /// namespace prefix, which is unique per run.
    pub fn start(tag: &str) -> Lab {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let prefix = format!("{tag}{}x{}", std::process::id(), nanos % 10_000);
        let state = std::env::temp_dir().join(format!("p2pd-lab-{prefix}"));
        let mut lab = Lab {
            prefix,
            state,
            up: false,
        };
        std::fs::create_dir_all(&lab.state).expect("lab state directory");
        lab.up = true; // from here on, Drop tears down whatever part was created
        lab.script("lab.sh", &["up"]).expect("lab up");
        lab.script("lab.sh", &["services"])
            .expect("coturn in the stun namespace");
        lab
    }

    /// The full name of the lab's namespace `name`.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// tcpdump on `iface` of the lab's namespace `ns`, every packet whole (`-s 0`) written to
    /// `file` as it comes (`--immediate-mode -U`), once it listens. Killed on drop;
    /// [`Tcpdump::stop`] ends it cleanly.
    pub fn tcpdump(&self, ns: &str, iface: &str, file: &Path) -> Tcpdump {
        let mut guard = ChildGuard::spawn(
            "tcpdump (lab)",
            Command::new("ip")
                .args(["netns", "exec", &self.ns(ns)])
                // --immediate-mode: each packet handed over as it comes (by default libpcap's
                // TPACKET_V3 ring holds them in blocks, and those still held at SIGINT are lost).
                // -B 65536: a 64 MiB ring. In immediate mode libpcap gives each packet a slot sized
                // for the biggest one (64 KiB with segmentation offload on the veths), so the
                // default 2 MiB holds few, and a burst while tcpdump writes is dropped (3 and 13
                // packets in 2 of 3 punches here; none in 6 with this ring).
                // -Z root: no switch to the tcpdump user, whatever the owner of `file`'s directory.
                .arg("tcpdump")
                .args(["-n", "-s", "0", "-U", "--immediate-mode", "-B", "65536"])
                .args(["-Z", "root", "-i", iface, "-w"])
                .arg(file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )
        .expect("spawn tcpdump");
        let stderr = guard.child.stderr.take().expect("tcpdump stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // "tcpdump: listening on wan0, link-type EN10MB (Ethernet), snapshot length 262144 bytes"
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains("listening on") => break,
                Ok(line) => seen.push(line),
                Err(_) => panic!(
                    "tcpdump on {ns}/{iface} not listening (exit {:?}):\n{}",
                    guard.exited(),
                    seen.join("\n")
                ),
            }
        }
        Tcpdump { guard, lines }
    }
}

/// A running tcpdump of [`Lab::tcpdump`].
pub struct Tcpdump {
    guard: ChildGuard,
    /// Its stderr, line by line.
    lines: mpsc::Receiver<String>,
}

/// What tcpdump said at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpdumpCounts {
    /// "N packets captured"
    pub captured: u64,
    /// "N packets dropped by kernel"
    pub dropped: u64,
}

impl Tcpdump {
    /// Ends the capture cleanly (SIGINT: tcpdump writes what it holds, closes the file and prints
    /// its counts) and waits for it (killed after 10 s, which is an error).
    pub fn stop(mut self) -> Result<TcpdumpCounts, String> {
        interrupt(&self.guard.child).map_err(|e| format!("SIGINT to tcpdump: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.guard.exited() {
                break status;
            }
            if Instant::now() >= deadline {
                return Err("tcpdump still running 10 s after SIGINT".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let said: Vec<String> = self.lines.iter().collect();
        let count = |what: &str| {
            said.iter()
                .find_map(|l| l.strip_suffix(what))
                .and_then(|n| n.trim().parse().ok())
        };
        match (
            count(" packets captured"),
            count(" packets dropped by kernel"),
        ) {
            (Some(captured), Some(dropped)) if status.success() => {
                Ok(TcpdumpCounts { captured, dropped })
            }
            _ => Err(format!("tcpdump ended with {status}:\n{}", said.join("\n"))),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.up {
            if let Err(e) = self.script("lab.sh", &["down"]) {
                eprintln!("lab down: {e}");
            }
            let _ = std::fs::remove_dir_all(&self.state);
        }
    }
}

/// Sends SIGINT to `child` (`ip netns exec` execs its command, so that is the command itself).
#[cfg(unix)]
fn interrupt(child: &std::process::Child) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(child.id()).map_err(std::io::Error::other)?;
    // SAFETY: kill(2) has no memory effects; the pid is our child's, not reaped yet, so still ours.
    if unsafe { libc::kill(pid, libc::SIGINT) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn interrupt(_: &std::process::Child) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}
