//! `p2pd` server processes for the CLI's end-to-end tests: started on fresh ports, up once they
//! printed their `listening` lines, killed on drop.

use std::io::{BufRead, BufReader};
use std::process::{ChildStdout, Command, Stdio};

use super::{event_of, free_port_pair, json_line, p2pd_bin, ChildGuard};

/// A `p2pd` server child, its stdout kept open (so it never gets EPIPE), killed on drop.
pub struct Server {
    _guard: ChildGuard,
    _stdout: BufReader<ChildStdout>,
}

/// Starts `p2pd ARGS --json` (`args` made from fresh ports `(p, q)`) until it has printed
/// `listening` lines `listening` times; retries with other ports (at most 10 attempts).
pub fn start_server(
    listening: usize,
    args: impl Fn(u16, u16) -> Vec<String>,
) -> (Server, u16, u16) {
    let mut seen = String::new();
    for _ in 0..10 {
        let (p, q) = free_port_pair();
        let mut guard = ChildGuard::spawn(
            "p2pd server",
            Command::new(p2pd_bin())
                .args(args(p, q))
                .arg("--json")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )
        .expect("spawn p2pd");
        let mut out = BufReader::new(guard.child.stdout.take().expect("stdout"));
        let mut up = 0;
        let mut line = String::new();
        seen.clear();
        while up < listening {
            line.clear();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            seen.push_str(&line);
            match json_line(&line).as_ref().and_then(event_of) {
                Some("listening") => up += 1,
                Some("socket-failed") => break,
                _ => {}
            }
        }
        if up == listening {
            let server = Server {
                _guard: guard,
                _stdout: out,
            };
            return (server, p, q);
        }
    }
    panic!("the server did not start after 10 attempts; last output:\n{seen}");
}

pub fn words(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// `p2pd stun-server` doing RFC 5780 on 127.0.0.1 + 127.0.0.2 and STUN over TCP on the primary
/// address; its primary port.
pub fn start_stun_rfc5780() -> (Server, u16) {
    let (server, p, _) = start_server(5, |p, q| {
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
    (server, p)
}

/// `p2pd pnp-server` on 127.0.0.1 (UDP and TCP on one port) with the names in `db` and the key in
/// `key_file`; its port.
pub fn start_pnp(db: &std::path::Path, key_file: &std::path::Path) -> (Server, u16) {
    let (server, p, _) = start_server(2, |p, _| {
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
    (server, p)
}
