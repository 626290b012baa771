use super::*;

const KEY: &str = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";

#[test]
fn endpoints_parse_with_and_without_ports() {
    let cases: &[(&str, Host, u16)] = &[
        ("192.0.2.1", Host::Ip("192.0.2.1".parse().unwrap()), 3478),
        ("192.0.2.1:80", Host::Ip("192.0.2.1".parse().unwrap()), 80),
        (
            "[2001:db8::1]:80",
            Host::Ip("2001:db8::1".parse().unwrap()),
            80,
        ),
        (
            "2001:db8::1",
            Host::Ip("2001:db8::1".parse().unwrap()),
            3478,
        ),
        (
            "[2001:db8::1]",
            Host::Ip("2001:db8::1".parse().unwrap()),
            3478,
        ),
        (
            "stun.example.org",
            Host::Name("stun.example.org".into()),
            3478,
        ),
        (
            "stun.example.org.:19302",
            Host::Name("stun.example.org.".into()),
            19302,
        ),
        ("localhost:1", Host::Name("localhost".into()), 1),
    ];
    for (text, host, port) in cases {
        let e = Endpoint::parse(text, 3478).unwrap();
        assert_eq!((&e.host, e.port, e.text.as_str()), (host, *port, *text));
    }
}

#[test]
fn bad_endpoints_are_refused_with_the_reason() {
    for (text, why) in [
        ("", "no host"),
        (":80", "no host"),
        ("host:0", "port 0"),
        ("192.0.2.1:0", "port 0"),
        ("host:65536", "1 to 65535"),
        ("host:http", "1 to 65535"),
        ("a:b:c", "IPv6"),
        ("[::1", "no closing ]"),
        ("[::1]x", "text after ]"),
        ("[1.2.3.4]:80", "not an IPv6"),
        ("bad host", "label"),
        ("-x.org", "label"),
        ("x..org", "label"),
        ("tcp://x.org", "1 to 65535"),
    ] {
        let e = Endpoint::parse(text, 3478).unwrap_err();
        assert!(e.contains(why), "{text:?}: {e}");
        assert!(e.contains("is not HOST[:PORT]"), "{text:?}: {e}");
    }
}

#[test]
fn an_empty_file_is_the_builtin_defaults() {
    let (config, defaulted) = parse("").unwrap();
    assert_eq!(config, Config::builtin());
    assert_eq!(defaulted, ["stun", "brokers", "pnp", "relay"]);
    assert_eq!(config.stun.len(), default_servers().len());
    // The built-in STUN entries keep the nat crate's ids.
    for (e, s) in config.stun.iter().zip(default_servers()) {
        assert_eq!(stun_id(e), s.id);
    }
    let brokers: Vec<&str> = config.brokers.iter().map(|b| b.text.as_str()).collect();
    assert_eq!(brokers, DEFAULT_BROKERS);
    assert!(config.pnp.is_empty() && config.relay.is_empty());
}

#[test]
fn every_key_parses() {
    let text = format!(
        "stun = [\"192.0.2.1\", \"stun.example.org:19302\"]\n\
         brokers = []\n\
         [[pnp]]\naddress = \"pnp.example.org\"\nkey = \"{KEY}\"\n\
         [[relay]]\naddress = \"turn.example.org:5349\"\nsecret = \"s3cret\"\n\
         [[relay]]\naddress = \"192.0.2.9\"\nusername = \"u\"\npassword = \"p\"\n"
    );
    let (c, defaulted) = parse(&text).unwrap();
    assert!(defaulted.is_empty());
    assert_eq!(c.stun.len(), 2);
    assert!(c.brokers.is_empty());
    assert_eq!(c.pnp.len(), 1);
    assert_eq!(c.pnp[0].address.port, PNP_PORT);
    assert_eq!(c.pnp[0].key.to_string(), KEY);
    assert_eq!(c.relay[0].address.port, 5349);
    assert_eq!(c.relay[0].auth, RelayAuth::Secret("s3cret".into()));
    assert_eq!(c.relay[1].address.port, TURN_PORT);
    assert_eq!(
        c.relay[1].auth,
        RelayAuth::Credentials {
            username: "u".into(),
            password: "p".into()
        }
    );
    assert!(c.has_secrets());
}

#[test]
fn errors_name_the_line_and_the_problem() {
    let cases: &[(&str, &str, usize)] = &[
        ("stun = []\nstunn = []\n", "unknown field `stunn`", 2),
        (
            "stun = [\"x:0\"]\n",
            "stun: \"x:0\" is not HOST[:PORT]: port 0",
            1,
        ),
        (
            "\n\nbrokers = [\"a.org\", \"A.org.:1883\"]\n",
            "the same server",
            3,
        ),
        (
            "[[pnp]]\naddress = \"a.org\"\nkey = \"02ab\"\n",
            "pnp key: not a secp256k1",
            3,
        ),
        ("[[pnp]]\naddress = \"a.org\"\n", "missing field `key`", 1),
        (
            "[[pnp]]\naddress = \"a.org\"\nkey = \"k\"\nport = 1\n",
            "unknown field `port`",
            4,
        ),
        ("[[relay]]\naddress = \"t.org\"\n", "no credentials", 2),
        (
            "[[relay]]\naddress = \"t.org\"\nsecret = \"s\"\nusername = \"u\"\npassword = \"p\"\n",
            "not both",
            2,
        ),
        (
            "[[relay]]\naddress = \"t.org\"\nusername = \"u\"\n",
            "username without password",
            2,
        ),
        (
            "[[relay]]\naddress = \"t.org\"\npassword = \"p\"\n",
            "password without username",
            2,
        ),
        ("stun = \"a.org\"\n", "invalid type", 1),
        ("stun = [\n", "unclosed array", 1),
    ];
    for (text, message, line) in cases {
        let e = parse(text).unwrap_err();
        assert!(e.contains(message), "{text:?}: {e}");
        assert!(e.starts_with(&format!("line {line}: ")), "{text:?}: {e}");
    }
}

#[test]
fn secrets_never_reach_debug_output() {
    let text = "[[relay]]\naddress = \"t.org\"\nsecret = \"hunter2\"\n\
                [[relay]]\naddress = \"u.org\"\nusername = \"alice\"\npassword = \"swordfish\"\n";
    let (c, _) = parse(text).unwrap();
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("hunter2") && !debug.contains("swordfish"),
        "{debug}"
    );
    assert!(
        debug.contains("alice") && debug.contains("<redacted>"),
        "{debug}"
    );
}

#[test]
fn broker_ids_match_the_ids_brokers_are_used_under() {
    for text in ["192.0.2.1", "192.0.2.1:1884", "[2001:db8::1]:1883"] {
        let e = Endpoint::parse(text, MQTT_PORT).unwrap();
        let spec = &crate::commands::signal::parse_brokers(&[text.to_string()]).unwrap()[0];
        assert_eq!(broker_id(&e), spec.id, "{text}");
    }
    // A named broker's id covers its name and port, not its address.
    let named = Endpoint::parse("Broker.Example.org.", MQTT_PORT).unwrap();
    let at = "192.0.2.7:1883".parse().unwrap();
    assert_eq!(
        broker_id(&named),
        BrokerId::of(Some("broker.example.org"), at)
    );
}

#[test]
fn relay_and_stun_ids_follow_the_canonical_scheme() {
    let e = Endpoint::parse("turn.example.org", TURN_PORT).unwrap();
    let any = "0.0.0.0:3478".parse().unwrap();
    assert_eq!(
        relay_id(&e).0,
        canonical_id("turn", Some("turn.example.org"), any)
    );
    assert_ne!(
        relay_id(&e).0,
        ServerId::of(Some("turn.example.org"), any).as_u64()
    );
    let ip = Endpoint::parse("192.0.2.1:3478", STUN_PORT).unwrap();
    assert_eq!(
        stun_id(&ip),
        ServerId::of(None, "192.0.2.1:3478".parse().unwrap())
    );
}

#[test]
fn lines_are_counted_from_one() {
    assert_eq!(line_of("a\nb\nc", 0), 1);
    assert_eq!(line_of("a\nb\nc", 2), 2);
    assert_eq!(line_of("a\nb\nc", 99), 3);
}
