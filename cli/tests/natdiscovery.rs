//! Interop: coturn's RFC 5780 NAT behaviour discovery client (`turnutils_natdiscovery`) against
//! our `p2pd stun-server` on 127.0.0.1 + 127.0.0.2. On loopback there is no NAT, so it must find
//! endpoint-independent mapping and filtering.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ChildGuard, CliServer};

#[test]
fn turnutils_natdiscovery_against_p2pd_stun_server() {
    if !common::on_path("turnutils_natdiscovery") {
        common::skip_or_fail("turnutils_natdiscovery (coturn) not installed");
        return;
    }
    let server = CliServer::start(common::p2pd_bin());
    let dir = std::env::temp_dir().join(format!("p2pd-natdiscovery-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out_path = dir.join("natdiscovery.out");
    let out = std::fs::File::create(&out_path).expect("output file");
    let err = out.try_clone().expect("output file");
    let started = Instant::now();
    let mut tool = ChildGuard::spawn(
        "turnutils_natdiscovery",
        Command::new("turnutils_natdiscovery")
            .args(["-m", "-f", "-p", &server.primary.port().to_string()])
            .arg(server.primary.ip().to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err),
    )
    .expect("spawn turnutils_natdiscovery");
    let status = loop {
        if let Some(status) = tool.exited() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(60) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(tool);
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "turnutils_natdiscovery took {:.2} s:\n{output}",
        started.elapsed().as_secs_f64()
    );
    let status = status.unwrap_or_else(|| {
        panic!("turnutils_natdiscovery did not finish within 60 s; output:\n{output}")
    });
    assert!(status.success(), "exit {status}; output:\n{output}");
    assert!(
        output.contains("NAT with Endpoint Independent Mapping"),
        "no endpoint-independent mapping verdict; output:\n{output}"
    );
    assert!(
        output.contains("NAT with Endpoint Independent Filtering"),
        "no endpoint-independent filtering verdict; output:\n{output}"
    );
    // It saw our RFC 5780 attributes: the response origins and the other address.
    let other = format!("Other addr: : {}", server.alternate);
    assert!(output.contains(&other), "no `{other}` in output:\n{output}");
    assert!(
        !output.contains("STUN receive timeout"),
        "a request went unanswered; output:\n{output}"
    );
}
