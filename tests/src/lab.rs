//! The NAT lab of `tests/lab/` for the lab tests (`nat_lab`, `punch_lab`): why it cannot run here,
//! if it cannot, and one lab (namespaces `PREFIX-*`, state in its own directory) brought up with
//! its services and torn down on drop, also after a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
        let out = Command::new("bash")
            .arg(lab_dir().join(name))
            .args(args)
            .env("LAB_PREFIX", &self.prefix)
            .env("LAB_STATE", &self.state)
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
