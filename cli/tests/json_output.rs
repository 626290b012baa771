//! The `--json` output is read by scripts: every kind of line keeps its keys, their order and the
//! type of each value. This pins them for the commands that run on loopback in a moment.

mod common;

use std::ffi::OsStr;
use std::process::Command;

use common::{command_words, json_line, json_object, p2pd_bin, CliServer};
use serde_json::Value;

/// The type of a JSON value, as this test spells it.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks that `v` is an object with exactly these keys, in this order, of these types
/// (`"string|null"` allows either).
fn assert_shape(v: &Value, shape: &[(&str, &str)], context: &str) {
    let object = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {context}"));
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    let want: Vec<&str> = shape.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, want, "keys of {context}");
    for (key, types) in shape {
        let got = kind(&object[*key]);
        assert!(
            types.split('|').any(|t| t == got),
            "{key} is {got}, want {types}: {context}"
        );
    }
}

fn run<S: AsRef<OsStr>>(args: &[S]) -> (Option<i32>, String) {
    let out = Command::new(p2pd_bin())
        .args(args)
        .output()
        .expect("run p2pd");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn stun_and_nat_json_keep_their_shape() {
    let server = CliServer::start(p2pd_bin());
    let primary = server.primary.to_string();

    let (code, text) = run(&["stun", &primary, "--json"]);
    assert_eq!(code, Some(0), "{text}");
    assert_shape(
        &json_object(&text),
        &[
            ("server", "string"),
            ("local", "string|null"),
            ("mapped", "string"),
            ("other_address", "string|null"),
            ("response_origin", "string|null"),
            ("source", "string"),
            ("rtt_ms", "number"),
            ("transmissions", "number"),
            ("legacy", "bool"),
        ],
        &text,
    );

    let alternate = format!("{primary},{}", server.alternate);
    let (code, text) = run(&["nat", "--server", &alternate, "--timeout", "3", "--json"]);
    assert!(matches!(code, Some(0) | Some(3)), "{text}");
    let report = json_object(&text);
    assert_shape(
        &report,
        &[
            ("classification", "string"),
            ("mapping", "string|null"),
            ("filtering", "string|null"),
            ("reason", "string|null"),
            ("reason_text", "string|null"),
            ("p2pd_label", "string|null"),
            ("allocation", "string|null"),
            ("p2pd_full_label", "string|null"),
            ("p2pd_nat_type", "number|null"),
            ("local_ip", "string"),
            ("servers_agreeing", "number"),
            ("confidence", "number"),
            ("servers_tested", "number"),
            ("elapsed_ms", "number"),
            ("public_addresses", "array"),
            ("servers", "array"),
            ("probes", "array"),
        ],
        &text,
    );
    // Loopback is open internet: no NAT, no reason.
    assert_eq!(report["classification"], "open", "{text}");
    assert_eq!(report["reason"], Value::Null, "{text}");
    assert_eq!(report["p2pd_nat_type"], 1, "{text}");
    assert_shape(
        &report["servers"][0],
        &[
            ("id", "string"),
            ("primary", "string"),
            ("alternate", "string|null"),
        ],
        &text,
    );
    let probes = report["probes"].as_array().expect("probes");
    assert!(!probes.is_empty(), "{text}");
    for p in probes {
        let base = [
            ("server", "string"),
            ("kind", "string"),
            ("socket", "number"),
            ("destination", "string"),
            ("change", "string"),
            ("outcome", "string"),
        ];
        let extra: &[(&str, &str)] = match p["outcome"].as_str() {
            Some("reply") => &[
                ("mapped", "string"),
                ("other_address", "string|null"),
                ("source", "string"),
                ("rtt_ms", "number"),
                ("transmissions", "number"),
            ],
            Some("no-reply") => &[("transmissions", "number")],
            Some("error-response") => &[("code", "number")],
            _ => &[],
        };
        let shape: Vec<(&str, &str)> = base.iter().chain(extra).copied().collect();
        assert_shape(p, &shape, &p.to_string());
    }

    // Failures: one object with the error and its kind.
    drop(server);
    let (code, text) = run(&["stun", "no.such.host.invalid", "--json"]);
    assert_eq!(code, Some(1), "{text}");
    assert_shape(
        &json_object(&text),
        &[
            ("server", "string"),
            ("error", "string"),
            ("kind", "string"),
        ],
        &text,
    );
    let (code, text) = run(&["nat", "--server", "no.such.host.invalid", "--json"]);
    assert_eq!(code, Some(1), "{text}");
    assert_shape(&json_object(&text), &[("error", "string")], &text);
}

#[test]
fn stun_server_lines_keep_their_shape() {
    let words = command_words(
        "stun-server --primary 127.0.0.1 --single --port 0 --duration 0.2 --json",
        &[],
    );
    let (code, text) = run(&words);
    assert_eq!(code, Some(0), "{text}");
    let lines: Vec<Value> = text.lines().map(json_object).collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_shape(
        &lines[0],
        &[("event", "string"), ("role", "string"), ("local", "string")],
        &text,
    );
    assert_eq!(lines[0]["event"], "listening");
    assert_eq!(lines[0]["role"], "primary");
    let counters = [
        "requests",
        "responses",
        "error_responses",
        "malformed",
        "queue_full",
        "tcp_accepted",
        "tcp_closed",
        "tcp_bad_frames",
        "tcp_idle_closed",
        "tcp_message_timeouts",
        "tcp_evicted",
    ];
    let shape: Vec<(&str, &str)> = [("event", "string")]
        .into_iter()
        .chain(counters.iter().map(|c| (*c, "number")))
        .collect();
    assert_shape(&lines[1], &shape, &text);
    assert_eq!(lines[1]["event"], "stopped");
}

#[test]
fn id_list_servers_and_sim_json_keep_their_shape() {
    let dir = std::env::temp_dir().join(format!("p2pd-json-output-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("id.key");
    let (code, text) = run(&["id", "new", "--json", "--file", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{text}");
    assert_shape(
        &json_object(&text),
        &[
            ("node_id", "string"),
            ("public_key", "string"),
            ("file", "string"),
        ],
        &text,
    );
    let _ = std::fs::remove_dir_all(&dir);

    let (code, text) = run(&["nat", "--list-servers", "--json"]);
    assert_eq!(code, Some(0), "{text}");
    let list = json_object(&text);
    assert_shape(&list, &[("servers", "array")], &text);
    for s in list["servers"].as_array().unwrap() {
        assert_shape(
            s,
            &[
                ("id", "string"),
                ("host", "string|null"),
                ("primary", "string"),
                ("alternate", "string|null"),
            ],
            &text,
        );
    }

    let (code, text) = run(&["sim", "nat", "--seeds", "1", "--loss", "0", "--json"]);
    assert_eq!(code, Some(0), "{text}");
    let sim = json_object(&text);
    assert_shape(
        &sim,
        &[
            ("runs", "number"),
            ("wrong", "number"),
            ("wall_s", "number"),
            ("per_loss", "array"),
        ],
        &text,
    );
    let mut level: Vec<(&str, &str)> = [
        "loss_percent",
        "runs",
        "right",
        "inconclusive",
        "inconclusive_percent",
        "wrong",
        "nat_runs",
        "allocation_inconclusive",
        "allocation_inconclusive_percent",
        "allocation_wrong",
        "median_virtual_s",
        "p99_virtual_s",
        "max_classify_virtual_s",
        "slowest_virtual_s",
    ]
    .iter()
    .map(|k| (*k, "number"))
    .collect();
    level.push(("inconclusive_reasons", "object"));
    assert_shape(&sim["per_loss"][0], &level, &text);
    // Integral numbers print without a fraction, as they always have.
    assert!(sim["per_loss"][0]["loss_percent"].is_u64(), "{text}");

    // (Bad numbers are refused by the argument parser, exit code 2; 17 loss levels get here.)
    let (code, text) = run(&["sim", "punch", "--loss", &["0"; 17].join(","), "--json"]);
    assert_eq!(code, Some(1), "{text}");
    assert_shape(&json_object(&text), &[("error", "string")], &text);
    assert!(text.lines().all(|l| json_line(l).is_some()), "{text}");
}
