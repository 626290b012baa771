//! The loopback lab of the node tests (`node_connect`, `node_forward`, `node_soak_real`): real
//! servers as child processes and a configuration file naming them, and a running `p2pd` whose
//! JSON status lines are collected.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::procs::{start_server, words};
use super::{event_of, identity, json_line, p2pd_bin, Mosquitto, Scratch};

/// The servers and a configuration file naming them.
pub struct Lab {
    /// Scratch directory (identity files, the name store).
    pub dir: Scratch,
    /// The configuration file naming the servers.
    pub config: std::path::PathBuf,
    _servers: Vec<super::procs::Server>,
    _broker: Mosquitto,
}

/// Starts mosquitto, our STUN server (UDP + TCP, RFC 5780 on 127.0.0.1 + 127.0.0.2) and our PNP
/// server (key `[0x71; 32]`) as child processes and writes the configuration file; `None` when
/// mosquitto is not installed.
pub fn lab(tag: &str) -> Option<Lab> {
    let broker = Mosquitto::start()?;
    let dir = Scratch::new(tag);
    let (stun, p, _) = start_server(5, |p, q| {
        words(&[
            "stun-server",
            "--primary",
            "127.0.0.1",
            "--alternate",
            "127.0.0.2",
            "--port",
            &p.to_string(),
            "--alt-port",
            &q.to_string(),
            "--tcp",
        ])
    });
    let key_file = dir.identity_file("pnp.key", 0x71);
    let db = dir.path("names.db");
    let (pnp, n, _) = start_server(2, |p, _| {
        let addr = format!("127.0.0.1:{p}");
        vec![
            "pnp-server".into(),
            "--db".into(),
            db.display().to_string(),
            "--udp".into(),
            addr.clone(),
            "--tcp".into(),
            addr,
            "--identity".into(),
            key_file.display().to_string(),
        ]
    });
    let config = dir.path("config.toml");
    std::fs::write(
        &config,
        format!(
            "stun = [\"127.0.0.1:{p}\"]\nbrokers = [\"{}\"]\n\n[[pnp]]\naddress = \"127.0.0.1:{n}\"\nkey = \"{}\"\n",
            broker.addr(),
            identity(0x71).public_key()
        ),
    )
    .expect("config");
    Some(Lab {
        dir,
        config,
        _servers: vec![stun, pnp],
        _broker: broker,
    })
}

/// A running `p2pd` whose stderr lines arrive on a channel (parsed JSON).
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<Value>,
    /// The status lines so far.
    pub seen: Vec<Value>,
}

impl Proc {
    /// Starts `p2pd --config CONFIG ARGS --json`, its stdin fed `stdin` then closed.
    pub fn spawn(config: &Path, args: &[String], stdin: &[u8]) -> Proc {
        let mut child = Command::new(p2pd_bin())
            .arg("--config")
            .arg(config)
            .args(args)
            .arg("--json")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn p2pd");
        let mut input = child.stdin.take().expect("stdin");
        let data = stdin.to_vec();
        std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let err = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let value = json_line(&line).unwrap_or(Value::String(line));
                if tx.send(value).is_err() {
                    return;
                }
            }
        });
        Proc {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a status line with `event` (at most `limit`).
    pub fn wait_for(&mut self, event: &str, limit: Duration) -> Option<Value> {
        let end = Instant::now() + limit;
        loop {
            if let Some(v) = self.seen.iter().find(|v| event_of(v) == Some(event)) {
                return Some(v.clone());
            }
            let left = end.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(_) => return None,
            }
        }
    }

    /// Waits for the exit (at most `limit`); its code and stdout.
    pub fn finish(&mut self, limit: Duration) -> (Option<i32>, Vec<u8>) {
        let end = Instant::now() + limit;
        let code = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status.code();
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = Vec::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = o.read_to_end(&mut out);
        }
        while let Ok(v) = self.lines.try_recv() {
            self.seen.push(v);
        }
        (code, out)
    }
}

impl Proc {
    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM {pid}");
    }

    /// Every status line of `event` so far (after draining what arrived).
    pub fn all(&mut self, event: &str) -> Vec<Value> {
        while let Ok(v) = self.lines.try_recv() {
            self.seen.push(v);
        }
        self.seen
            .iter()
            .filter(|v| event_of(v) == Some(event))
            .cloned()
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
