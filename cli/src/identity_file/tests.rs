use super::*;
use crate::test_dir;

#[cfg(unix)]
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// `read_identity(path)` on another thread: a regression that blocks on the file fails the test
/// after 5 s instead of hanging it.
fn read_within_5s(path: &Path) -> Result<Identity, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(read_identity(&owned));
    });
    rx.recv_timeout(std::time::Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("reading {} blocked for 5 s", path.display()))
}

#[test]
fn round_trip_and_strict_parse() {
    let id = Identity::from_secret_bytes(&[7; 32]).unwrap();
    let text = encode_identity(&id);
    assert_eq!(
        decode_identity(&text).unwrap().public_key(),
        id.public_key()
    );
    assert!(decode_identity("p2pd-identity-v1\n0707\n").is_err());
    assert!(decode_identity(&text.replace("v1", "v2")).is_err());
    assert!(decode_identity(&format!("{text}junk\n")).is_err());
    assert!(decode_identity(&text.replace('7', "g")).is_err());
    let zero = format!("{IDENTITY_HEADER}\n{}\n", "00".repeat(32));
    assert!(decode_identity(&zero).is_err());
}

#[test]
fn new_file_is_private_and_not_overwritten() {
    let dir = test_dir("id-test-new");
    let path = dir.path().join("sub").join("id.key");
    let a = generate_identity().unwrap();
    write_identity(&path, &a, false).unwrap();
    let b = generate_identity().unwrap();
    assert_ne!(a.public_key(), b.public_key());
    let refused = write_identity(&path, &b, false).unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(read_identity(&path).unwrap().public_key(), a.public_key());
    #[cfg(unix)]
    {
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(
            mode_of(&dir.path().join("sub")),
            0o700,
            "a new directory is private"
        );
    }
    write_identity(&path, &b, true).unwrap();
    assert_eq!(read_identity(&path).unwrap().public_key(), b.public_key());
}

/// Issue 10 item 5: `--force` over a world-readable file used to keep its mode 0644 and write the
/// new secret into it.
#[cfg(unix)]
#[test]
fn replacing_a_world_readable_file_leaves_a_private_one_and_no_temp_file() {
    let dir = test_dir("id-test-force");
    let path = dir.path().join("id.key");
    fs::write(&path, "old, world-readable\n").unwrap();
    set_mode(&path, 0o644);
    let id = generate_identity().unwrap();
    write_identity(&path, &id, true).unwrap();
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(read_identity(&path).unwrap().public_key(), id.public_key());
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("id.key")]);
}

#[cfg(unix)]
#[test]
fn key_files_others_may_read_or_write_are_refused_with_the_fix() {
    let dir = test_dir("id-test-mode");
    let path = dir.path().join("id.key");
    let id = generate_identity().unwrap();
    write_identity(&path, &id, false).unwrap();
    for mode in [
        0o644,
        0o640,
        0o604,
        0o620,
        0o602,
        0o660,
        0o666,
        0o700 | 0o070,
    ] {
        set_mode(&path, mode);
        let e = read_identity(&path).unwrap_err();
        assert!(
            e.contains(&format!("permissions {mode:04o} are too open"))
                && e.contains(&format!("chmod 600 {}", path.display())),
            "{mode:o}: {e}"
        );
    }
    for mode in [0o600, 0o400, 0o700] {
        set_mode(&path, mode);
        assert_eq!(
            read_identity(&path).unwrap().public_key(),
            id.public_key(),
            "{mode:o}"
        );
    }
}

/// Issue 10 item 5: `/dev/zero` used to be read until memory ran out, a FIFO to block forever.
#[cfg(unix)]
#[test]
fn non_regular_files_are_refused_without_blocking() {
    let dir = test_dir("id-test-kinds");
    let e = read_within_5s(Path::new("/dev/zero")).unwrap_err();
    assert!(e.contains("not a regular file (a character device)"), "{e}");
    let e = read_within_5s(dir.path()).unwrap_err();
    assert!(e.contains("not a regular file (a directory)"), "{e}");
    let fifo = dir.path().join("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(status.success());
    let e = read_within_5s(&fifo).unwrap_err();
    assert!(e.contains("not a regular file (a FIFO)"), "{e}");
}

#[test]
fn files_beyond_the_size_bound_are_refused() {
    let dir = test_dir("id-test-size");
    let path = dir.path().join("big.key");
    let id = generate_identity().unwrap();
    write_identity(&path, &id, false).unwrap();
    let mut text = encode_identity(&id);
    text.push_str(&"\n".repeat(MAX_IDENTITY_FILE_LEN as usize));
    #[cfg(unix)]
    set_mode(&path, 0o600);
    fs::write(&path, &text).unwrap();
    let e = read_within_5s(&path).unwrap_err();
    assert!(e.contains("larger than 65536 bytes"), "{e}");
    // At the bound the file is read (trailing blank lines are allowed).
    text.truncate(MAX_IDENTITY_FILE_LEN as usize);
    fs::write(&path, &text).unwrap();
    assert_eq!(read_within_5s(&path).unwrap().public_key(), id.public_key());
}
