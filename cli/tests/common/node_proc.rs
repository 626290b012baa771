//! A running `p2pd node` or `p2pd connect` (with `--config FILE ... --json`), optionally inside a
//! network namespace: its stdin fed once and closed (or by a feeder of the caller's, on a thread),
//! its stdout collected on a thread (so a long output never blocks it), its JSON status lines
//! (stderr) arriving on a channel; killed on drop. Shared by `node_connect` (loopback) and `node_lab` (the real-NAT lab).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{event_of, json_line, p2pd_bin};

/// A running `p2pd` whose stderr lines arrive on a channel (parsed JSON).
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<Value>,
    /// Every status line read so far (a line that is not JSON is kept as a string).
    pub seen: Vec<Value>,
    /// When it was spawned.
    pub started: Instant,
    /// The thread reading its stdout to the end.
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Proc {
    /// `p2pd --config CONFIG ARGS --json`, `stdin` written to it and then closed.
    pub fn spawn(config: &Path, args: &[String], stdin: &[u8]) -> Proc {
        Proc::spawn_in(None, config, args, stdin)
    }

    /// Like [`Proc::spawn`], inside the network namespace `netns` (`ip netns exec`) if given.
    pub fn spawn_in(netns: Option<&str>, config: &Path, args: &[String], stdin: &[u8]) -> Proc {
        let data = stdin.to_vec();
        Proc::spawn_fed(netns, config, args, move |mut input| {
            let _ = input.write_all(&data);
        })
    }

    /// Like [`Proc::spawn_in`], its stdout read slowly: `pause` after every 16 KiB (a slow
    /// consumer, so what is sent to it queues up on the way).
    pub fn spawn_in_slow_reader(
        netns: Option<&str>,
        config: &Path,
        args: &[String],
        stdin: &[u8],
        pause: Duration,
    ) -> Proc {
        let data = stdin.to_vec();
        Proc::spawn_with(
            netns,
            config,
            args,
            move |mut input| {
                let _ = input.write_all(&data);
            },
            Some(pause),
        )
    }

    /// Like [`Proc::spawn_in`], its stdin handed to `feed` on a thread (closed when `feed`
    /// returns and drops it).
    pub fn spawn_fed(
        netns: Option<&str>,
        config: &Path,
        args: &[String],
        feed: impl FnOnce(ChildStdin) + Send + 'static,
    ) -> Proc {
        Proc::spawn_with(netns, config, args, feed, None)
    }

    /// The spawn: stdin fed by `feed`, stdout read to the end (pausing after every 16 KiB if
    /// `pause` is given).
    fn spawn_with(
        netns: Option<&str>,
        config: &Path,
        args: &[String],
        feed: impl FnOnce(ChildStdin) + Send + 'static,
        pause: Option<Duration>,
    ) -> Proc {
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(p2pd_bin());
                c
            }
            None => Command::new(p2pd_bin()),
        };
        let started = Instant::now();
        let mut child = command
            .arg("--config")
            .arg(config)
            .args(args)
            .arg("--json")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn p2pd");
        let input = child.stdin.take().expect("stdin");
        std::thread::spawn(move || feed(input));
        let mut out = child.stdout.take().expect("stdout");
        let stdout = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            match pause {
                None => {
                    let _ = out.read_to_end(&mut bytes);
                }
                Some(pause) => {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = out.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        bytes.extend_from_slice(&buf[..n]);
                        std::thread::sleep(pause);
                    }
                }
            }
            bytes
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
            started,
            stdout: Some(stdout),
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

    /// The first status line with `event` read so far.
    pub fn event(&self, event: &str) -> Option<&Value> {
        self.seen.iter().find(|v| event_of(v) == Some(event))
    }

    /// Waits for the exit (at most `limit`, then killed); its code and stdout.
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
        let out = self
            .stdout
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        // The reader thread sends the last lines as the pipe closes.
        while let Ok(v) = self.lines.recv_timeout(Duration::from_millis(200)) {
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
