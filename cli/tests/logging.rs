//! Diagnostics go to stderr through `tracing` (`-v`, `-vv`, `--log-level`, `RUST_LOG`) and never
//! change the command's output; `p2pd nat -v` stays `nat`'s own "print every probe" flag.

mod common;

use std::process::{Command, Output};

use common::{json_object, p2pd_bin, CliServer};

fn p2pd(args: &[&str], rust_log: Option<&str>) -> Output {
    let mut cmd = Command::new(p2pd_bin());
    cmd.args(args).env_remove("RUST_LOG");
    if let Some(v) = rust_log {
        cmd.env("RUST_LOG", v);
    }
    cmd.output().expect("run p2pd")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn verbosity_flags_log_to_stderr_only() {
    let server = CliServer::start(p2pd_bin());
    let primary = server.primary.to_string();

    // Default: no diagnostics, and the JSON line alone on stdout.
    let quiet = p2pd(&["stun", &primary, "--json"], None);
    assert!(quiet.status.success());
    assert_eq!(text(&quiet.stderr), "", "no diagnostics by default");
    let plain = json_object(&text(&quiet.stdout));

    // -v: debug events (the runtime's sockets) on stderr; stdout is still one JSON object with
    // the same keys.
    let debug = p2pd(&["-v", "stun", &primary, "--json"], None);
    assert!(debug.status.success());
    let err = text(&debug.stderr);
    assert!(
        err.contains("DEBUG") && err.contains("socket opened"),
        "{err}"
    );
    assert!(!err.contains("TRACE"), "{err}");
    let json = json_object(&text(&debug.stdout));
    let keys =
        |v: &serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&json), keys(&plain));

    // -vv: trace events too (wakeups).
    let trace = p2pd(&["-vv", "stun", &primary], None);
    assert!(trace.status.success());
    let err = text(&trace.stderr);
    assert!(err.contains("TRACE") && err.contains("wakeup"), "{err}");
    assert!(
        text(&trace.stdout).starts_with("server "),
        "human output unchanged"
    );

    // --log-level after the sub-command, and RUST_LOG.
    let level = p2pd(&["stun", &primary, "--log-level", "debug"], None);
    assert!(text(&level.stderr).contains("socket opened"));
    let env = p2pd(&["stun", &primary], Some("p2pd_mio=debug"));
    assert!(text(&env.stderr).contains("socket opened"));
    let off = p2pd(&["-vv", "--log-level", "off", "stun", &primary], None);
    assert_eq!(text(&off.stderr), "", "--log-level wins over -v");

    // `nat -v` is nat's --verbose: the probes, and no diagnostics.
    let alternate = format!("{primary},{}", server.alternate);
    let nat = p2pd(
        &["nat", "-v", "--server", &alternate, "--timeout", "2"],
        None,
    );
    let out = text(&nat.stdout);
    assert!(out.contains("\nprobes:\n"), "{out}");
    assert!(!text(&nat.stderr).contains("DEBUG"));
}
