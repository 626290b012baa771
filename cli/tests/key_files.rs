//! Issue 10 item 5, through the `p2pd` binary: `id new --force` over a world-readable file leaves
//! a 0600 file (it used to keep 0644 and write the new secret into it); a key file others may read
//! is refused with the `chmod 600` fix, by every command that loads a key; `/dev/zero` (which used
//! to be read until memory ran out), a FIFO (which blocked forever), a directory and an oversized
//! file fail at once with a clear error.
#![cfg(unix)]

mod common;

use std::ffi::OsStr;
use std::fmt::Debug;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{command_words, identity, p2pd_bin, Scratch};

/// Every run here ends within this; a blocked read fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(5);

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs `p2pd ARGS`, killed after [`LIMIT`]; returns the exit code and stderr.
fn run_bounded<S: AsRef<OsStr> + Debug>(args: &[S]) -> (Option<i32>, String) {
    let mut child = Command::new(p2pd_bin())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn p2pd");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            let out = child.wait_with_output().expect("output");
            return (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("p2pd {args:?} still running after {LIMIT:?} (blocked on the key file?)");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn id_new_force_over_a_world_readable_file_leaves_a_private_one() {
    let dir = Scratch::new("key-files-force");
    let file = dir.path("id.key");
    std::fs::write(&file, "an old key, world-readable\n").unwrap();
    set_mode(&file, 0o644);
    let path = file.to_str().unwrap();
    let (code, stderr) = run_bounded(&["id", "new", "--file", path, "--force"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(mode_of(&file), 0o600, "the new secret key is private");
    let (code, stderr) = run_bounded(&["id", "show", "--file", path]);
    assert_eq!(code, Some(0), "{stderr}");
    // Without --force an existing file is still refused.
    let (code, stderr) = run_bounded(&["id", "new", "--file", path]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("use --force"), "{stderr}");
}

#[test]
fn every_command_refuses_a_key_file_others_may_read() {
    let dir = Scratch::new("key-files-mode");
    let file = dir.identity_file("id.key", 0x44);
    set_mode(&file, 0o644);
    let key = file.to_str().unwrap();
    let peer = identity(0x44).public_key().to_string();
    let db = dir.path("names.db");
    let db = db.to_str().unwrap();
    let fix = format!("chmod 600 {key}");
    let fill = [("{key}", key), ("{peer}", peer.as_str()), ("{db}", db)];
    for line in [
        "id show --file {key}",
        "signal listen --broker 127.0.0.1:1 --identity {key} --timeout 1",
        "signal send {peer} hi --broker 127.0.0.1:1 --identity {key} --timeout 1",
        "punch --wait --broker 127.0.0.1:1 --stun 127.0.0.1:9 --identity {key} --timeout 1",
        "pnp-server --db {db} --udp 127.0.0.1:0 --tcp 127.0.0.1:0 --identity {key} --duration 1",
        "name register n v --server 127.0.0.1:9 --server-key {peer} --identity {key} --timeout 1",
        "name delete n --server 127.0.0.1:9 --server-key {peer} --identity {key} --timeout 1",
        "name lookup n --server 127.0.0.1:9 --server-key {peer} --identity {key} --timeout 1",
    ] {
        let args = command_words(line, &fill);
        let (code, stderr) = run_bounded(&args);
        assert_eq!(code, Some(1), "p2pd {args:?}: {stderr}");
        assert!(
            stderr.contains("permissions 0644 are too open") && stderr.contains(&fix),
            "p2pd {args:?}: {stderr}"
        );
    }
    set_mode(&file, 0o600);
    let (code, stderr) = run_bounded(&["id", "show", "--file", key]);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn dev_zero_fifos_directories_and_huge_files_fail_at_once() {
    let dir = Scratch::new("key-files-kinds");
    let fifo = dir.path("fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(status.success());
    let huge = dir.path("huge.key");
    std::fs::write(&huge, vec![b'\n'; 1 << 20]).unwrap();
    set_mode(&huge, 0o600);
    let dir_path = dir.dir().to_str().unwrap().to_string();
    for (file, want) in [
        (
            "/dev/zero".to_string(),
            "not a regular file (a character device)",
        ),
        (fifo.display().to_string(), "not a regular file (a FIFO)"),
        (dir_path, "not a regular file (a directory)"),
        (huge.display().to_string(), "larger than 65536 bytes"),
    ] {
        for line in [
            "id show --file {file}",
            "signal listen --broker 127.0.0.1:1 --identity {file} --timeout 1",
        ] {
            let args = command_words(line, &[("{file}", &file)]);
            let started = Instant::now();
            let (code, stderr) = run_bounded(&args);
            assert_eq!(code, Some(1), "p2pd {args:?}: {stderr}");
            assert!(
                stderr.contains(want) && stderr.contains(&file),
                "p2pd {args:?}: {stderr}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "p2pd {args:?} took {:?}",
                started.elapsed()
            );
        }
    }
}
