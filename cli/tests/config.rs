//! Issue 12 item 7: the configuration file. The real `p2pd` binary, run with an empty
//! environment and a scratch `$HOME`: built-in defaults without a file; the lookup order
//! (`--config` over `$P2PD_CONFIG` over `$XDG_CONFIG_HOME` / `$HOME`); every key through
//! `config show --json`; errors as usage errors (exit 2) naming the file and the line; secrets
//! redacted and refused in a file others may read; and the flags of `signal send` and `name
//! lookup` overriding the file.

mod common;

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{event_of, identity, json_line, json_object, p2pd_bin, KeyDir, Scratch, LO1};
use p2pd_mio::Runtime;
use p2pd_proto::Transport;
use p2pd_signaling::pnp::{MemoryStore, PnpServer, PnpServerConfig, PnpServerEvent};
use serde_json::Value;

/// A scratch `$HOME` and the runs of `p2pd` in it, with nothing else in the environment.
struct Home {
    scratch: Scratch,
    env: Vec<(String, String)>,
}

impl Home {
    fn new(tag: &str) -> Home {
        let scratch = Scratch::new(tag);
        let home = scratch.path("home");
        std::fs::create_dir(&home).unwrap();
        Home {
            env: vec![("HOME".into(), home.display().to_string())],
            scratch,
        }
    }

    fn with(mut self, name: &str, value: &Path) -> Home {
        self.env.push((name.into(), value.display().to_string()));
        self
    }

    /// `$HOME/.config/p2pd/config.toml`.
    fn default_path(&self) -> PathBuf {
        self.scratch.path("home/.config/p2pd/config.toml")
    }

    /// Writes `text` to `path` (creating its directory) with `mode`.
    fn write(&self, path: &Path, text: &str, mode: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        set_mode(path, mode);
    }

    /// A file named `name` in the scratch directory, mode 0600.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.scratch.path(name);
        self.write(&path, text, 0o600);
        path
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut command = Command::new(p2pd_bin());
        command.env_clear().stdin(Stdio::null()).args(args);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        command.output().expect("run p2pd")
    }

    /// `config show --json` (and `extra`), which must succeed.
    fn show(&self, extra: &[&str]) -> Value {
        let mut args = vec!["config", "show", "--json"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        json_object(&text(&out.stdout))
    }

    /// A run that must fail as a usage error (exit 2); returns its stderr.
    fn usage_error(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "p2pd {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) {}

fn strings(value: &Value, key: &str, field: &str) -> Vec<String> {
    value[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not an array: {value}"))
        .iter()
        .map(|v| v[field].as_str().unwrap().to_string())
        .collect()
}

fn is_id(v: &str) -> bool {
    v.len() == 16 && v.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A PNP server's public key (hex).
const SERVER_SECRET: u8 = 0x51;

#[test]
fn without_a_file_the_builtin_defaults_apply() {
    let home = Home::new("cfg-defaults");
    let show = home.show(&[]);
    assert_eq!(show["source"], "built-in defaults");
    assert_eq!(show["found_by"], "default");
    assert_eq!(
        show["defaults"],
        serde_json::json!(["stun", "brokers", "pnp", "relay"])
    );
    assert_eq!(
        strings(&show, "brokers", "address"),
        [
            "test.mosquitto.org:1883",
            "broker.hivemq.com:1883",
            "broker.emqx.io:1883"
        ]
    );
    assert!(strings(&show, "brokers", "id").iter().all(|i| is_id(i)));
    // The STUN servers are the nat crate's built-in list, under the same ids.
    let list = home.run(&["nat", "--list-servers", "--json"]);
    let list = json_object(&text(&list.stdout));
    let builtin_ids = strings(&list, "servers", "id");
    assert!(!builtin_ids.is_empty());
    assert_eq!(strings(&show, "stun", "id"), builtin_ids);
    assert_eq!(show["pnp"], serde_json::json!([]));
    assert_eq!(show["relay"], serde_json::json!([]));
    assert!(
        show["notes"].to_string().contains("no public servers"),
        "{show}"
    );

    // The human form says where it came from and that there is no PNP server.
    let human = text(&home.run(&["config", "show"]).stdout);
    assert!(human.contains("built-in defaults"), "{human}");
    assert!(
        human.contains(&home.default_path().display().to_string()),
        "{human}"
    );
    assert!(human.contains("no PNP servers"), "{human}");
    assert!(human.contains("\"test.mosquitto.org:1883\""), "{human}");

    let path = json_object(&text(&home.run(&["config", "path", "--json"]).stdout));
    assert_eq!(path["path"], home.default_path().display().to_string());
    assert_eq!(path["exists"], false);
}

#[test]
fn the_flag_wins_over_the_variable_which_wins_over_the_default_path() {
    let base = Home::new("cfg-order");
    let one_broker = |ip: &str| format!("brokers = [\"{ip}\"]\n");
    base.write(&base.default_path(), &one_broker("192.0.2.1"), 0o600);
    let env_file = base.file("env.toml", &one_broker("192.0.2.2"));
    let flag_file = base.file("flag.toml", &one_broker("192.0.2.3"));
    let broker = |show: &Value| strings(show, "brokers", "address");

    let show = base.show(&[]);
    assert_eq!(broker(&show), ["192.0.2.1"]);
    assert_eq!(show["found_by"], "default");
    assert_eq!(show["source"], base.default_path().display().to_string());
    assert_eq!(
        show["defaults"],
        serde_json::json!(["stun", "pnp", "relay"])
    );

    let flag = flag_file.display().to_string();
    // The flag goes before or after the sub-command.
    for args in [
        vec!["--config", flag.as_str(), "config", "show", "--json"],
        vec!["config", "show", "--json", "--config", flag.as_str()],
    ] {
        let out = base.run(&args);
        let show = json_object(&text(&out.stdout));
        assert_eq!(broker(&show), ["192.0.2.3"]);
        assert_eq!(show["found_by"], "--config");
    }

    let home = Home::new("cfg-order-env").with("P2PD_CONFIG", &env_file);
    home.write(&home.default_path(), &one_broker("192.0.2.1"), 0o600);
    let show = home.show(&[]);
    assert_eq!(broker(&show), ["192.0.2.2"]);
    assert_eq!(show["found_by"], "P2PD_CONFIG");
    assert_eq!(broker(&home.show(&["--config", &flag])), ["192.0.2.3"]);

    // $XDG_CONFIG_HOME is honoured as for identity files.
    let xdg = Home::new("cfg-order-xdg");
    let dir = xdg.scratch.path("xdg");
    xdg.write(
        &dir.join("p2pd/config.toml"),
        &one_broker("192.0.2.4"),
        0o600,
    );
    let xdg = xdg.with("XDG_CONFIG_HOME", &dir);
    assert_eq!(broker(&xdg.show(&[])), ["192.0.2.4"]);
}

#[test]
fn a_missing_explicit_file_is_an_error_and_a_missing_default_is_not() {
    let home = Home::new("cfg-missing");
    let missing = home.scratch.path("nope.toml");
    let flag = missing.display().to_string();
    let err = home.usage_error(&["config", "show", "--config", &flag]);
    assert!(err.contains(&flag) && err.contains("no such file"), "{err}");
    assert!(err.contains("--config"), "{err}");
    let env = Home::new("cfg-missing-env").with("P2PD_CONFIG", &missing);
    let err = env.usage_error(&["config", "show"]);
    assert!(err.contains(&flag) && err.contains("P2PD_CONFIG"), "{err}");
    let path = json_object(&text(&env.run(&["config", "path", "--json"]).stdout));
    assert_eq!(path["found_by"], "P2PD_CONFIG");
    assert_eq!(path["exists"], false);
}

fn full_file(key: &str) -> String {
    format!(
        "# every documented key\n\
         stun = [\"192.0.2.10:3478\", \"stun.example.org\", \"[2001:db8::1]:3479\"]\n\
         brokers = [\"broker.example.org:1884\", \"192.0.2.11\"]\n\
         \n\
         [[pnp]]\n\
         address = \"127.0.0.1:5300\"\n\
         key = \"{key}\"\n\
         \n\
         [[relay]]\n\
         address = \"turn.example.org:3478\"\n\
         secret = \"rest-api-secret\"\n\
         \n\
         [[relay]]\n\
         address = \"192.0.2.12\"\n\
         username = \"alice\"\n\
         password = \"s3cr3t \\\"word\\\"\"\n"
    )
}

#[test]
fn every_key_round_trips_through_config_show() {
    let home = Home::new("cfg-keys");
    let key = identity(SERVER_SECRET).public_key().to_string();
    let file = home.file("full.toml", &full_file(&key));
    let flag = file.display().to_string();
    let show = home.show(&["--show-secrets", "--config", &flag]);
    assert_eq!(show["source"], flag);
    assert_eq!(show["defaults"], serde_json::json!([]));
    assert_eq!(
        strings(&show, "stun", "address"),
        ["192.0.2.10:3478", "stun.example.org", "[2001:db8::1]:3479"]
    );
    assert_eq!(
        strings(&show, "brokers", "address"),
        ["broker.example.org:1884", "192.0.2.11"]
    );
    assert_eq!(strings(&show, "pnp", "address"), ["127.0.0.1:5300"]);
    assert_eq!(strings(&show, "pnp", "key"), [key]);
    let relay = &show["relay"];
    assert_eq!(relay[0]["address"], "turn.example.org:3478");
    assert_eq!(relay[0]["secret"], "rest-api-secret");
    assert_eq!(relay[1]["address"], "192.0.2.12");
    assert_eq!(relay[1]["username"], "alice");
    assert_eq!(relay[1]["password"], "s3cr3t \"word\"");
    for list in ["stun", "brokers", "pnp", "relay"] {
        for id in strings(&show, list, "id") {
            assert!(is_id(&id), "{list}: {id}");
        }
    }
    // Ids are distinct per server.
    let stun_ids = strings(&show, "stun", "id");
    assert_ne!(stun_ids[0], stun_ids[1]);

    // The TOML that `config show --show-secrets` prints is itself a configuration file giving the
    // same values and ids.
    let human = home.run(&["config", "show", "--show-secrets", "--config", &flag]);
    let again = home.file("again.toml", &text(&human.stdout));
    let shown_again = home.show(&["--show-secrets", "--config", &again.display().to_string()]);
    for list in ["stun", "brokers", "pnp", "relay"] {
        assert_eq!(show[list], shown_again[list], "{list}");
    }
}

#[test]
fn bad_files_are_usage_errors_naming_the_file_and_the_line() {
    let home = Home::new("cfg-errors");
    let key = identity(SERVER_SECRET).public_key().to_string();
    let cases = [
        (
            "stun = []\nbroker = [\"a.org\"]\n",
            "line 2",
            "unknown field `broker`",
        ),
        ("stun = [\"a.org:0\"]\n", "line 1", "port 0"),
        ("brokers = [\"a.org:x\"]\n", "line 1", "1 to 65535"),
        (
            "\n[[pnp]]\naddress = \"a.org\"\nkey = \"abcd\"\n",
            "line 4",
            "secp256k1",
        ),
        (
            "[[pnp]]\naddress = \"a.org\"\n",
            "line 1",
            "missing field `key`",
        ),
        (
            "[[relay]]\naddress = \"t.org\"\nsecret = \"s\"\nusername = \"u\"\n",
            "line 2",
            "not both",
        ),
        (
            "[[relay]]\naddress = \"t.org\"\n",
            "line 2",
            "no credentials",
        ),
        (
            "[[relay]]\naddress = \"t.org\"\nusername = \"u\"\n",
            "line 2",
            "username without password",
        ),
        (
            "brokers = [\"a.org\", \"A.ORG:1883\"]\n",
            "line 1",
            "same server",
        ),
        ("stun = [\n", "line", "TOML"),
    ];
    for (i, (body, line, message)) in cases.iter().enumerate() {
        let body = body.replace("KEY", &key);
        let file = home.file(&format!("bad{i}.toml"), &body);
        let flag = file.display().to_string();
        let err = home.usage_error(&["config", "show", "--config", &flag]);
        assert!(err.contains(&flag), "{body:?}: {err}");
        assert!(err.contains(line), "{body:?}: {err}");
        assert!(
            err.contains(message) || *message == "TOML",
            "{body:?}: {err}"
        );
    }
    // Not a file at all.
    let dir = home.scratch.dir().display().to_string();
    let err = home.usage_error(&["config", "show", "--config", &dir]);
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn secrets_are_redacted_unless_asked_for() {
    let home = Home::new("cfg-redact");
    let key = identity(SERVER_SECRET).public_key().to_string();
    let flag = home.file("c.toml", &full_file(&key)).display().to_string();
    let json = home.run(&["config", "show", "--json", "--config", &flag]);
    let human = home.run(&["config", "show", "--config", &flag]);
    for out in [&json, &human] {
        assert_eq!(out.status.code(), Some(0));
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!all.contains("rest-api-secret"), "{all}");
        assert!(!all.contains("s3cr3t"), "{all}");
        assert!(all.contains("<redacted>"), "{all}");
        assert!(all.contains("alice"), "{all}");
    }
    let show = json_object(&text(&json.stdout));
    assert_eq!(show["relay"][0]["secret"], "<redacted>");
    assert_eq!(show["relay"][1]["password"], "<redacted>");
    // Diagnostics at trace level do not print them either.
    let traced = home.run(&["-vv", "config", "show", "--config", &flag]);
    assert!(!text(&traced.stderr).contains("rest-api-secret"));
}

#[cfg(unix)]
#[test]
fn a_file_with_secrets_that_others_may_read_is_refused() {
    let home = Home::new("cfg-mode");
    let with_secret = "[[relay]]\naddress = \"t.org\"\nsecret = \"s\"\n";
    let path = home.file("secret.toml", with_secret);
    let flag = path.display().to_string();
    for mode in [0o640, 0o604, 0o620] {
        set_mode(&path, mode);
        let err = home.usage_error(&["config", "show", "--config", &flag]);
        assert!(err.contains("too open"), "{mode:o}: {err}");
        assert!(err.contains(&format!("chmod 600 {flag}")), "{err}");
    }
    set_mode(&path, 0o600);
    home.show(&["--config", &flag]);
    // Without a secret, a readable file is fine.
    let public = home.file("public.toml", "brokers = [\"192.0.2.1\"]\n");
    set_mode(&public, 0o644);
    home.show(&["--config", &public.display().to_string()]);
}

/// The brokers `signal send --json` reported (broker_up / broker_down lines), by id.
fn brokers_tried(out: &Output) -> Vec<String> {
    let mut ids: Vec<String> = text(&out.stdout)
        .lines()
        .filter_map(json_line)
        .filter(|v| matches!(event_of(v), Some("broker_down" | "broker_up")))
        .map(|v| v["broker"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

#[test]
fn signal_send_uses_the_configured_brokers_unless_broker_is_given() {
    let dir = KeyDir::new("cfg-signal", 7);
    let home = Home::new("cfg-signal-home");
    // Nothing listens on ports 1 and 2 of loopback: each broker is reported down, by its id.
    let file = home.file("c.toml", "brokers = [\"127.0.0.1:1\"]\n");
    let flag = file.display().to_string();
    let configured = strings(&home.show(&["--config", &flag]), "brokers", "id");
    let peer = identity(8).public_key().to_string();
    let key = dir.key();
    let send = |extra: &[&str]| {
        let mut args = vec![
            "signal",
            "send",
            &peer,
            "hi",
            "--identity",
            &key,
            "--json",
            "--no-receipt",
            "--timeout",
            "1",
        ];
        args.extend_from_slice(extra);
        home.run(&args)
    };
    let from_file = send(&["--config", &flag]);
    assert_eq!(
        brokers_tried(&from_file),
        configured,
        "{}",
        text(&from_file.stderr)
    );

    let other = home.file("other.toml", "brokers = [\"127.0.0.1:2\"]\n");
    let other_id = strings(
        &home.show(&["--config", &other.display().to_string()]),
        "brokers",
        "id",
    );
    assert_ne!(other_id, configured);
    let from_flag = send(&["--config", &flag, "--broker", "127.0.0.1:2"]);
    assert_eq!(
        brokers_tried(&from_flag),
        other_id,
        "{}",
        text(&from_flag.stderr)
    );

    // With --broker given, the file is not even read: a broken one changes nothing.
    let broken = home.file("broken.toml", "brokerz = 1\n");
    let flagged = send(&[
        "--config",
        &broken.display().to_string(),
        "--broker",
        "127.0.0.1:2",
    ]);
    assert_eq!(
        brokers_tried(&flagged),
        other_id,
        "{}",
        text(&flagged.stderr)
    );
    // Without it, the broken file is a usage error, as is a file with no brokers.
    let err = home.usage_error(&[
        "signal",
        "send",
        &peer,
        "hi",
        "--identity",
        &key,
        "--config",
        &broken.display().to_string(),
    ]);
    assert!(err.contains("unknown field `brokerz`"), "{err}");
    let none = home.file("none.toml", "brokers = []\n");
    let err = home.usage_error(&[
        "signal",
        "send",
        &peer,
        "hi",
        "--identity",
        &key,
        "--config",
        &none.display().to_string(),
    ]);
    assert!(err.contains("no broker"), "{err}");
}

/// A PNP server (in-memory store) on 127.0.0.1 in a thread; its UDP address.
fn pnp_server() -> (common::Stoppable<()>, SocketAddr) {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = common::Stoppable::spawn(move |stop| {
        let mut rt = Runtime::new().unwrap();
        let any = SocketAddr::new(LO1, 0);
        let config = PnpServerConfig::new(any, any, rt.unix_epoch_ms());
        let mut server =
            PnpServer::new(config, identity(SERVER_SECRET), MemoryStore::new(16), 9).unwrap();
        let mut sent = false;
        rt.run(&mut server, Some(Duration::from_secs(5)), |_, _, ev| {
            if let PnpServerEvent::Listening {
                transport: Transport::Udp,
                local,
            } = ev
            {
                tx.send(local).unwrap();
                sent = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })
        .unwrap();
        assert!(sent, "the server listens");
        common::serve_pnp_until_stopped(&mut rt, &mut server, stop, Duration::from_secs(5));
    });
    let udp = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    (thread, udp)
}

#[test]
fn name_lookup_takes_the_server_and_its_key_from_the_configuration() {
    let (server, udp) = pnp_server();
    let home = Home::new("cfg-pnp");
    let key = identity(SERVER_SECRET).public_key().to_string();
    let file = home.file(
        "c.toml",
        &format!("[[pnp]]\naddress = \"{udp}\"\nkey = \"{key}\"\n"),
    );
    let flag = file.display().to_string();
    let id = strings(&home.show(&["--config", &flag]), "pnp", "id");
    let lookup = |extra: &[&str]| {
        let mut args = vec!["name", "lookup", "nobody", "--json", "--config", &flag];
        args.extend_from_slice(extra);
        let out = home.run(&args);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let line = json_object(&text(&out.stdout));
        assert_eq!(line["event"], "not_found", "{line}");
        line["server_id"].as_str().unwrap().to_string()
    };
    // No flags: the only configured server; --server alone (by address or by id): its key.
    assert_eq!([lookup(&[])], id.as_slice());
    assert_eq!([lookup(&["--server", &udp.to_string()])], id.as_slice());
    assert_eq!([lookup(&["--server", &id[0]])], id.as_slice());
    // Both flags: as given, whatever the file says.
    assert_eq!(
        [lookup(&[
            "--server",
            &udp.to_string(),
            "--server-key",
            &key
        ])],
        id.as_slice()
    );
    server.stop();

    let err = home.usage_error(&[
        "name",
        "lookup",
        "x",
        "--server-key",
        &key,
        "--config",
        &flag,
    ]);
    assert!(err.contains("--server-key needs --server"), "{err}");
    let err = home.usage_error(&[
        "name",
        "lookup",
        "x",
        "--server",
        "192.0.2.1",
        "--config",
        &flag,
    ]);
    assert!(err.contains("give --server-key"), "{err}");
    // The built-in defaults have no PNP server, and say why.
    let err = home.usage_error(&["name", "lookup", "x"]);
    assert!(err.contains("no public servers"), "{err}");
}
