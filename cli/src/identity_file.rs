//! Identity files: a node's secret key on disk, and OS randomness for keys and machine seeds.
//!
//! The file is text: a first line `p2pd-identity-v1`, then the 32-byte secret key as 64 lowercase
//! hex characters, then a newline. It is created with mode 0600 on Unix and never overwritten
//! unless asked.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use p2pd_signaling::{Identity, SECRET_KEY_LEN};

/// The first line of an identity file.
pub const IDENTITY_HEADER: &str = "p2pd-identity-v1";

/// Fills `buf` from the operating system's random source.
pub fn os_random(buf: &mut [u8]) -> io::Result<()> {
    getrandom::fill(buf).map_err(|e| io::Error::other(e.to_string()))
}

/// A fresh 64-bit seed for a machine's RNG, from the operating system.
pub fn os_seed() -> io::Result<u64> {
    let mut b = [0u8; 8];
    os_random(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Makes a new identity from OS randomness.
pub fn generate_identity() -> io::Result<Identity> {
    let mut failure = None;
    let identity = Identity::generate(&mut |buf: &mut [u8]| {
        if let Err(e) = os_random(buf) {
            failure = Some(e);
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    identity.map_err(|_| io::Error::other("the OS random source gave no valid key"))
}

/// Where identities live by default: `$P2PD_IDENTITY`, else `$XDG_CONFIG_HOME/p2pd/identity.key`,
/// else `$HOME/.config/p2pd/identity.key`, else `./p2pd-identity.key`.
pub fn default_identity_path() -> PathBuf {
    if let Some(p) = std::env::var_os("P2PD_IDENTITY") {
        return PathBuf::from(p);
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    match config {
        Some(dir) => dir.join("p2pd").join("identity.key"),
        None => PathBuf::from("p2pd-identity.key"),
    }
}

/// The text of an identity file for `identity`.
pub fn encode_identity(identity: &Identity) -> String {
    let mut s = String::with_capacity(IDENTITY_HEADER.len() + 2 + 2 * SECRET_KEY_LEN);
    s.push_str(IDENTITY_HEADER);
    s.push('\n');
    for b in identity.secret_bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('\n');
    s
}

/// Parses the text of an identity file.
pub fn decode_identity(text: &str) -> Result<Identity, String> {
    let mut lines = text.lines();
    if lines.next() != Some(IDENTITY_HEADER) {
        return Err(format!(
            "not a p2pd identity file (first line is not {IDENTITY_HEADER})"
        ));
    }
    let hex = lines.next().unwrap_or("").trim();
    if lines.any(|l| !l.trim().is_empty()) {
        return Err("unexpected text after the key".into());
    }
    let bytes = parse_hex(hex).ok_or("the key is not hex")?;
    let secret: [u8; SECRET_KEY_LEN] = bytes
        .try_into()
        .map_err(|_| format!("the key is not {SECRET_KEY_LEN} bytes"))?;
    Identity::from_secret_bytes(&secret).map_err(|e| e.to_string())
}

/// Writes a new identity file; refuses to replace an existing file unless `overwrite`.
pub fn write_identity(path: &Path, identity: &Identity, overwrite: bool) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(encode_identity(identity).as_bytes())?;
    file.sync_all()
}

/// Reads an identity file.
pub fn read_identity(path: &Path) -> Result<Identity, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    decode_identity(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses lowercase or uppercase hex (even length, no separators).
pub fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let dir = std::env::temp_dir().join(format!("p2pd-id-test-{}", std::process::id()));
        let path = dir.join("sub").join("id.key");
        let _ = fs::remove_dir_all(&dir);
        let a = generate_identity().unwrap();
        write_identity(&path, &a, false).unwrap();
        let b = generate_identity().unwrap();
        assert_ne!(a.public_key(), b.public_key());
        assert!(write_identity(&path, &b, false).is_err());
        assert_eq!(read_identity(&path).unwrap().public_key(), a.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        write_identity(&path, &b, true).unwrap();
        assert_eq!(read_identity(&path).unwrap().public_key(), b.public_key());
        let _ = fs::remove_dir_all(&dir);
    }
}
