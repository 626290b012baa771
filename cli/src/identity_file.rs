//! Identity files: a node's secret key on disk, and OS randomness for keys and machine seeds.
//!
//! The file is text: a first line `p2pd-identity-v1`, then the 32-byte secret key as 64 lowercase
//! hex characters, then a newline. It is created with mode 0600 on Unix and never overwritten
//! unless asked (then replaced by rename, still 0600); it is read only if it is a small regular
//! file that nobody but its owner may read ([`read_identity`]).

use std::fs;
use std::io::{self, Read, Write};
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

/// 32 secret bytes from the operating system, for a machine's key material (a secure
/// channel's static and ephemeral keys).
pub fn os_secret() -> io::Result<[u8; 32]> {
    let mut b = [0u8; 32];
    os_random(&mut b)?;
    Ok(b)
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
    match crate::config::config_dir() {
        Some(dir) => dir.join("identity.key"),
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

/// The largest identity file [`read_identity`] reads: 64 KiB (a real one is 82 bytes), so a
/// wrong `--identity` (a log, a disk image) fails at once instead of filling memory.
pub const MAX_IDENTITY_FILE_LEN: u64 = 64 * 1024;

/// Writes a new identity file, readable and writable by its owner only (mode 0600 on Unix,
/// whatever the umask or the mode of a file it replaces).
///
/// Without `overwrite` an existing file is refused (`AlreadyExists`). With it, the key is written
/// to a new private file in the same directory, synced, and renamed over `path`, so `path` is at
/// every moment either the old file or the complete new one, and the new secret is never in a
/// file that others may read. Missing directories are created with mode 0700.
pub fn write_identity(path: &Path, identity: &Identity, overwrite: bool) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        create_private_dir_all(dir)?;
    }
    let text = encode_identity(identity);
    if !overwrite {
        // `create_new` refuses an existing file (or symlink) atomically.
        let result = write_private_file(path, &text);
        if result
            .as_ref()
            .is_err_and(|e| e.kind() != io::ErrorKind::AlreadyExists)
        {
            let _ = fs::remove_file(path);
        }
        return result;
    }
    let temp = temp_path_beside(path)?;
    let result = write_private_file(&temp, &text).and_then(|()| fs::rename(&temp, path));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
        return result;
    }
    // Make the rename itself durable (best effort: not every system can sync a directory).
    if let Ok(d) = fs::File::open(dir.unwrap_or(Path::new("."))) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Creates `path` (which must not exist) with mode 0600, writes `text` and syncs it.
fn write_private_file(path: &Path, text: &str) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// `dir` and its missing parents, new ones with mode 0700 on Unix.
fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// A fresh name beside `path` for the file that replaces it: `.NAME.RANDOM.tmp`.
fn temp_path_beside(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let mut temp = std::ffi::OsString::from(".");
    temp.push(name);
    temp.push(format!(".{:016x}.tmp", os_seed()?));
    Ok(path.with_file_name(temp))
}

/// Reads an identity file. Refused, each with a message naming the file: anything but a regular
/// file (a FIFO, a device such as `/dev/zero`, a directory; checked without blocking on it), a
/// file larger than [`MAX_IDENTITY_FILE_LEN`], and on Unix a file that its group or others may
/// read or write (as ssh refuses such private keys; the message gives the `chmod 600` fix).
pub fn read_identity(path: &Path) -> Result<Identity, String> {
    let text = read_key_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    decode_identity(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The text of the key file at `path`, checked as [`read_identity`] says.
fn read_key_file(path: &Path) -> Result<String, String> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        // Opening a FIFO without a writer would block; O_NONBLOCK returns at once and fstat
        // below refuses it. No effect on a regular file's reads.
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    #[cfg(not(unix))]
    {
        // No non-blocking open here: look before opening.
        let meta = fs::metadata(path).map_err(|e| e.to_string())?;
        check_key_metadata(path, &meta)?;
    }
    let file = options.open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    check_key_metadata(path, &meta)?;
    let mut bytes = Vec::new();
    file.take(MAX_IDENTITY_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_IDENTITY_FILE_LEN {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|_| "not a p2pd identity file (not text)".to_string())
}

fn too_large() -> String {
    format!("not a p2pd identity file (larger than {MAX_IDENTITY_FILE_LEN} bytes)")
}

/// Refuses what is not a private regular file of a sane size.
fn check_key_metadata(path: &Path, meta: &fs::Metadata) -> Result<(), String> {
    if !meta.is_file() {
        return Err(format!(
            "not a regular file ({}); an identity file is a small text file",
            file_kind(meta)
        ));
    }
    if meta.len() > MAX_IDENTITY_FILE_LEN {
        return Err(too_large());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "permissions {mode:04o} are too open: the secret key must be readable and \
                 writable by its owner only; fix with `chmod 600 {}`",
                path.display()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// What kind of file `meta` describes, in words.
pub(crate) fn file_kind(meta: &fs::Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    "not a file"
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
mod tests;
