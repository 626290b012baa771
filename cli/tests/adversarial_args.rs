//! Issue 10 item 4: no argument makes `p2pd` panic or hang. Every numeric option of every
//! sub-command is run with adversarial values (negative, NaN, infinities, huge, u64::MAX, zero,
//! empty, fractions) on top of arguments that make the command end quickly on loopback; the test
//! fails on a panic (exit code 101 or "panicked" on stderr), on a run still going after
//! [`HANG_LIMIT`], on a value that can never be right (NaN, -1, ...) not being refused as a usage
//! error (exit code 2, naming the option), and on a numeric option whose `--help` does not state
//! its range. A completeness check makes sure every option that takes a value, of every
//! sub-command, is either in the numeric table or named as not numeric.
//!
//! Before the fix: `stun-server --duration=-1`, `signal listen|send --timeout=nan`,
//! `punch --timeout=1e300` and `stun --tcp --hold=1e300` panicked ("cannot convert float seconds
//! to Duration"); `stun --rto-ms=18446744073709551615` and `ntp --spacing-ms=...` hung.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{p2pd_bin, KeyDir};

/// A run still going after this long counts as a hang. Every run is set up to end within about a
/// second when its value is accepted (`sim punch`, the slowest, takes about 2.5 s in a debug
/// build); the margin is for a loaded machine.
const HANG_LIMIT: Duration = Duration::from_secs(20);

/// Values tried on every numeric option.
const VALUES: &[&str] = &[
    "-1",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "1e300",
    "1e-300",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999",
    "-9223372036854775808",
    "0",
    "-0",
    "0.5",
    "1",
    "",
    " ",
    "ten",
    "0x10",
];

/// Values that are never a valid number for any option: each must be refused as a usage error.
const NEVER_VALID: &[&str] = &[
    "-1",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "1e300",
    "99999999999999999999999",
    "",
    "ten",
];

/// One numeric option: the command words, arguments that make the command end quickly (the
/// tested option's own pair is left out), the option, and the range its `--help` states.
struct NumericOption {
    command: &'static [&'static str],
    quick: &'static [&'static str],
    option: &'static str,
    range: &'static str,
}

/// Placeholders in `quick`, filled in per run.
const KEY: &str = "{key}";
const PEER: &str = "{peer}";
const DB: &str = "{db}";

const QUICK_STUN: &[&str] = &["127.0.0.1:9", "--rto-ms", "10", "--transmissions", "2"];
const QUICK_STUN_TCP: &[&str] = &["127.0.0.1:9", "--tcp", "--single-shot-ms", "200"];
const QUICK_STUN_SERVER: &[&str] = &[
    "--primary",
    "127.0.0.1",
    "--single",
    "--port",
    "0",
    "--duration",
    "0.2",
];
const QUICK_STUN_SERVER_ALT: &[&str] =
    &["--primary", "127.0.0.1", "--port", "0", "--duration", "0.2"];
const QUICK_STUN_SERVER_TCP: &[&str] = &[
    "--primary",
    "127.0.0.1",
    "--single",
    "--port",
    "0",
    "--tcp",
    "--duration",
    "0.2",
];
const QUICK_NAT: &[&str] = &["--server", "127.0.0.1:9", "--timeout", "0.2"];
const QUICK_NTP: &[&str] = &[
    "127.0.0.1:9",
    "--samples",
    "1",
    "--spacing-ms",
    "0",
    "--timeout-ms",
    "100",
];
/// A configuration file that does not exist: `servers` parses its options, then stops (exit 2).
const QUICK_SERVERS: &[&str] = &["--config", DB, "--timeout", "0.2"];
const QUICK_SIM: &[&str] = &["--seeds", "1", "--loss", "0"];
const QUICK_LISTEN: &[&str] = &[
    "--broker",
    "127.0.0.1:1",
    "--identity",
    KEY,
    "--timeout",
    "0.2",
];
const QUICK_SEND: &[&str] = &[
    PEER,
    "hi",
    "--broker",
    "127.0.0.1:1",
    "--identity",
    KEY,
    "--timeout",
    "0.2",
];
const QUICK_PNP_SERVER: &[&str] = &[
    "--db",
    DB,
    "--udp",
    "127.0.0.1:0",
    "--tcp",
    "127.0.0.1:0",
    "--identity",
    KEY,
    "--duration",
    "0.2",
];
const QUICK_REGISTER: &[&str] = &[
    "somename",
    "value",
    "--server",
    "127.0.0.1:9",
    "--server-key",
    PEER,
    "--identity",
    KEY,
    "--timeout",
    "0.2",
];
const QUICK_LOOKUP: &[&str] = &[
    "somename",
    "--server",
    "127.0.0.1:9",
    "--server-key",
    PEER,
    "--timeout",
    "0.2",
];
const QUICK_DELETE: &[&str] = &[
    "somename",
    "--server",
    "127.0.0.1:9",
    "--server-key",
    PEER,
    "--identity",
    KEY,
    "--timeout",
    "0.2",
];
const QUICK_PUNCH: &[&str] = &[
    "--wait",
    "--broker",
    "127.0.0.1:1",
    "--stun",
    "127.0.0.1:9",
    "--identity",
    KEY,
    "--timeout",
    "0.2",
];

const QUICK_NODE: &[&str] = &["--name", "quick", "--identity", "/nonexistent/p2pd.key"];
const QUICK_CONNECT: &[&str] = &[
    "somename",
    "--broker",
    "127.0.0.1:1",
    "--stun",
    "127.0.0.1:9",
    "--identity",
    KEY,
    "--timeout",
    "0.2",
];

const SECONDS: &str = "0 to 31536000";

/// The [`NumericOption`] `option` of `command`, run with `quick`, whose `--help` states `range`.
const fn opt(
    command: &'static [&'static str],
    quick: &'static [&'static str],
    option: &'static str,
    range: &'static str,
) -> NumericOption {
    NumericOption {
        command,
        quick,
        option,
        range,
    }
}

/// Every numeric option of every sub-command.
const NUMERIC: &[NumericOption] = &[
    opt(&["stun"], QUICK_STUN, "--rto-ms", "1 to 3600000"),
    opt(&["stun"], QUICK_STUN, "--transmissions", "1 to 20"),
    opt(&["stun"], QUICK_STUN, "--single-shot-ms", "0 to 3600000"),
    opt(&["stun"], QUICK_STUN_TCP, "--hold", SECONDS),
    opt(&["stun-server"], QUICK_STUN_SERVER, "--port", "0 to 65535"),
    opt(
        &["stun-server"],
        QUICK_STUN_SERVER_ALT,
        "--alt-port",
        "1 to 65535",
    ),
    opt(
        &["stun-server"],
        QUICK_STUN_SERVER_TCP,
        "--tcp-max-connections",
        "1 to 4096",
    ),
    opt(
        &["stun-server"],
        QUICK_STUN_SERVER_TCP,
        "--tcp-max-per-source",
        "1 to 4096",
    ),
    opt(
        &["stun-server"],
        QUICK_STUN_SERVER_TCP,
        "--tcp-message-timeout",
        "above 0 to 86400",
    ),
    opt(
        &["stun-server"],
        QUICK_STUN_SERVER_TCP,
        "--tcp-idle-timeout",
        "above 0 to 86400",
    ),
    opt(&["stun-server"], QUICK_STUN_SERVER, "--duration", SECONDS),
    opt(&["nat"], QUICK_NAT, "--timeout", "0 to 3600"),
    opt(&["servers"], QUICK_SERVERS, "--timeout", "0 to 3600"),
    opt(&["ntp"], QUICK_NTP, "--samples", "1 to 16"),
    opt(&["ntp"], QUICK_NTP, "--spacing-ms", "0 to 3600000"),
    opt(&["ntp"], QUICK_NTP, "--timeout-ms", "1 to 3600000"),
    opt(&["sim", "nat"], QUICK_SIM, "--seeds", "1 to 10000"),
    opt(&["sim", "nat"], QUICK_SIM, "--loss", "0 to 100"),
    opt(&["sim", "punch"], QUICK_SIM, "--seeds", "1 to 10000"),
    opt(&["sim", "punch"], QUICK_SIM, "--loss", "0 to 100"),
    opt(&["sim", "node"], QUICK_SIM, "--seeds", "1 to 1000"),
    opt(&["sim", "node"], QUICK_SIM, "--loss", "0 to 100"),
    opt(
        &["signal", "listen"],
        QUICK_LISTEN,
        "--count",
        "1 to 18446744073709551615",
    ),
    opt(&["signal", "listen"], QUICK_LISTEN, "--timeout", SECONDS),
    opt(&["signal", "send"], QUICK_SEND, "--timeout", SECONDS),
    opt(
        &["pnp-server"],
        QUICK_PNP_SERVER,
        "--capacity",
        "1 to 1000000000",
    ),
    opt(
        &["pnp-server"],
        QUICK_PNP_SERVER,
        "--tcp-max-connections",
        "1 to 4096",
    ),
    opt(
        &["pnp-server"],
        QUICK_PNP_SERVER,
        "--tcp-max-per-source",
        "1 to 4096",
    ),
    opt(
        &["pnp-server"],
        QUICK_PNP_SERVER,
        "--tcp-message-timeout",
        "above 0 to 86400",
    ),
    opt(
        &["pnp-server"],
        QUICK_PNP_SERVER,
        "--tcp-idle-timeout",
        "above 0 to 86400",
    ),
    opt(&["pnp-server"], QUICK_PNP_SERVER, "--duration", SECONDS),
    opt(&["name", "register"], QUICK_REGISTER, "--timeout", SECONDS),
    opt(
        &["name", "register"],
        QUICK_REGISTER,
        "--version",
        "0 to 18446744073709551615",
    ),
    opt(
        &["name", "register"],
        QUICK_REGISTER,
        "--ttl",
        "1 to 31536000",
    ),
    opt(&["name", "lookup"], QUICK_LOOKUP, "--timeout", SECONDS),
    opt(&["name", "delete"], QUICK_DELETE, "--timeout", SECONDS),
    opt(
        &["name", "delete"],
        QUICK_DELETE,
        "--version",
        "0 to 18446744073709551615",
    ),
    opt(&["punch"], QUICK_PUNCH, "--timeout", SECONDS),
    opt(&["node"], QUICK_NODE, "--listen-port", "0 to 65535"),
    opt(&["connect"], QUICK_CONNECT, "--listen-port", "0 to 65535"),
    opt(&["connect"], QUICK_CONNECT, "--timeout", SECONDS),
];

/// Options that take a value that is not a number (addresses, paths, names, keys, enums).
const NOT_NUMERIC: &[&str] = &[
    "--local",
    "--interface",
    "--change",
    "--primary",
    "--alternate",
    "--server",
    "--local-ip",
    "--file",
    "--broker",
    "--identity",
    "--db",
    "--udp",
    "--tcp",
    "--server-key",
    "--stun",
    "--nat-mapping",
    "--nat-allocation",
    "--log-level",
    "--config",
    "--health",
    "--name",
    "--forward",
];

/// Every sub-command, as the command words.
const SUBCOMMANDS: &[&[&str]] = &[
    &["stun"],
    &["stun-server"],
    &["nat"],
    &["ntp"],
    &["sim", "nat"],
    &["sim", "punch"],
    &["sim", "node"],
    &["id", "new"],
    &["id", "show"],
    &["signal", "listen"],
    &["signal", "send"],
    &["pnp-server"],
    &["name", "register"],
    &["name", "lookup"],
    &["name", "delete"],
    &["punch"],
    &["servers"],
    &["node"],
    &["connect"],
    &["config", "show"],
    &["config", "path"],
];

/// What one run did.
struct Outcome {
    code: Option<i32>,
    stderr: String,
    hung: bool,
}

/// Runs `p2pd ARGS` (stdin and stdout null), killing it after [`HANG_LIMIT`].
fn run_bounded(args: &[String]) -> Outcome {
    let mut child = Command::new(p2pd_bin())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn p2pd");
    let mut stderr_pipe = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let (code, hung) = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break (status.code(), false);
        }
        if started.elapsed() > HANG_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break (None, true);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Outcome {
        code,
        stderr: reader.join().unwrap_or_default(),
        hung,
    }
}

/// `words`, with the placeholders filled in from `dir` (a database file of its own per run).
fn fill(dir: &KeyDir, words: &[&str], run: usize) -> Vec<String> {
    words
        .iter()
        .map(|w| match *w {
            KEY => dir.key(),
            PEER => dir.public_key.clone(),
            DB => dir.path(&format!("db-{run}")),
            other => other.to_string(),
        })
        .collect()
}

/// `quick` without `option` and its value.
fn without<'a>(quick: &[&'a str], option: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut skip = false;
    for w in quick {
        if skip {
            skip = false;
        } else if *w == option {
            skip = true;
        } else {
            out.push(*w);
        }
    }
    out
}

/// Runs `jobs` on a few threads; returns every failure message.
fn run_all(jobs: Vec<(String, Vec<String>, bool)>) -> Vec<String> {
    let queue = Mutex::new(jobs);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| loop {
                let Some((label, args, must_refuse)) = queue.lock().unwrap().pop() else {
                    return;
                };
                let out = run_bounded(&args);
                let mut problems = Vec::new();
                if out.hung {
                    problems.push(format!("still running after {HANG_LIMIT:?} (hang)"));
                }
                if out.code == Some(101) || out.stderr.contains("panicked") {
                    problems.push("panicked".to_string());
                }
                if must_refuse && !out.hung && out.code != Some(2) {
                    problems.push(format!(
                        "not refused as a usage error (exit {:?})",
                        out.code
                    ));
                }
                if must_refuse && !out.stderr.contains("invalid value") {
                    problems.push("no clear \"invalid value\" message".to_string());
                }
                if !problems.is_empty() {
                    failures.lock().unwrap().push(format!(
                        "{label}: {}\n  stderr: {}",
                        problems.join(", "),
                        out.stderr.trim().replace('\n', "\n          ")
                    ));
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

#[test]
fn no_numeric_value_panics_or_hangs_and_nonsense_is_a_usage_error() {
    let fixture = KeyDir::new("adversarial", 0x42);
    let mut jobs = Vec::new();
    for (i, case) in NUMERIC.iter().enumerate() {
        for (j, value) in VALUES.iter().enumerate() {
            let mut words: Vec<&str> = case.command.to_vec();
            words.extend(without(case.quick, case.option));
            let mut args = fill(&fixture, &words, i * VALUES.len() + j);
            args.push(format!("{}={value}", case.option));
            let label = format!("p2pd {} {}={value:?}", case.command.join(" "), case.option);
            jobs.push((label, args, NEVER_VALID.contains(value)));
        }
    }
    // The port-allocation option carries numbers inside its text.
    for value in [
        "offset:-1",
        "offset:nan",
        "offset:99999999999",
        "offset:-2147483648",
        "sequential:0",
        "sequential:-1",
        "sequential:65536",
        "sequential:",
        "offset:",
    ] {
        let mut args = fill(&fixture, QUICK_PUNCH, 0);
        args.insert(0, "punch".into());
        args.extend(["--nat-mapping".into(), "eim".into()]);
        args.push(format!("--nat-allocation={value}"));
        jobs.push((format!("p2pd punch --nat-allocation={value}"), args, false));
    }
    let runs = jobs.len();
    let started = Instant::now();
    let failures = run_all(jobs);
    eprintln!(
        "{runs} runs of p2pd with adversarial numbers in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {runs} runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The paragraph of `--help` text about `option` (its line and the lines up to the next option).
fn help_of(help: &str, option: &str) -> Option<String> {
    let head = format!("{option} <");
    let mut lines = help
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(&head));
    let first = lines.next()?;
    let mut text = first.to_string();
    for l in lines {
        if l.trim_start().starts_with('-') {
            break;
        }
        text.push(' ');
        text.push_str(l.trim());
    }
    Some(text)
}

/// The options of `help` that take a value (`--name <VALUE>`).
fn options_with_values(help: &str) -> Vec<String> {
    help.lines()
        .filter_map(|l| {
            // "      --name <VALUE>  text" or "  -x, --name <VALUE>  text".
            let t = l.trim_start();
            let t = match t.split_once(", ") {
                Some((short, long)) if short.len() == 2 && short.starts_with('-') => long,
                _ => t,
            };
            let rest = t.strip_prefix("--")?;
            let (name, after) = rest.split_once(' ')?;
            after.starts_with('<').then(|| format!("--{name}"))
        })
        .collect()
}

fn help(command: &[&str]) -> String {
    // One line per option and sub-command: when a workspace build unifies clap's `wrap_help`
    // feature in, help wraps to the terminal's width (100 columns without one) or to COLUMNS.
    let out = Command::new(p2pd_bin())
        .env("COLUMNS", "1000")
        .stdin(Stdio::null())
        .args(command)
        .arg("--help")
        .output()
        .expect("run p2pd --help");
    assert!(out.status.success(), "p2pd {command:?} --help failed");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

#[test]
fn every_numeric_option_states_its_range_and_every_option_is_classified() {
    let mut problems = Vec::new();
    for command in SUBCOMMANDS {
        let text = help(command);
        for option in options_with_values(&text) {
            let numeric = NUMERIC
                .iter()
                .find(|c| c.command == *command && c.option == option);
            match numeric {
                Some(case) => {
                    let paragraph = help_of(&text, &option).unwrap_or_default();
                    if !paragraph.contains(case.range) {
                        problems.push(format!(
                            "p2pd {} {option}: --help does not state the range \"{}\": {paragraph}",
                            command.join(" "),
                            case.range
                        ));
                    }
                }
                None if NOT_NUMERIC.contains(&option.as_str()) => {}
                None => problems.push(format!(
                    "p2pd {} {option}: takes a value but is in neither table of this test",
                    command.join(" ")
                )),
            }
        }
    }
    // And every entry of the table is a real option.
    for case in NUMERIC {
        let text = help(case.command);
        if !options_with_values(&text).contains(&case.option.to_string()) {
            problems.push(format!(
                "p2pd {} has no option {}",
                case.command.join(" "),
                case.option
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_sub_command_list_is_complete() {
    // Every sub-command `p2pd --help` (and each group's --help) lists is in SUBCOMMANDS.
    fn commands(help: &str) -> Vec<String> {
        help.lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            // A command's line is indented by two spaces; a description wrapped to a narrow
            // terminal continues on lines indented further.
            .filter(|l| !l.starts_with("   "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .filter(|c| c != "help")
            .collect()
    }
    let mut all: Vec<Vec<String>> = Vec::new();
    for top in commands(&help(&[])) {
        let nested = commands(&help(&[top.as_str()]));
        if nested.is_empty() {
            all.push(vec![top]);
        } else {
            all.extend(nested.into_iter().map(|n| vec![top.clone(), n]));
        }
    }
    let known: Vec<Vec<String>> = SUBCOMMANDS
        .iter()
        .map(|c| c.iter().map(|w| w.to_string()).collect())
        .collect();
    for c in &all {
        assert!(
            known.contains(c),
            "sub-command {c:?} is missing from this test"
        );
    }
    assert_eq!(all.len(), known.len(), "{all:?}");
}
