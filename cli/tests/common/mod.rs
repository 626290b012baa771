//! What the CLI's end-to-end tests share: the `p2pd` binary cargo built for them, scratch
//! directories with identity files, and the workspace's test scaffolding (`p2pd-tests`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use p2pd_cli::identity_file::write_identity;
use p2pd_signaling::Identity;
// Not every test binary uses the scaffolding.
#[allow(unused_imports)]
pub use p2pd_tests::*;

/// The `p2pd` binary of this package, built by cargo for the integration tests.
pub fn p2pd_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_p2pd"))
}

/// The identity whose secret key is `[secret; 32]`.
pub fn identity(secret: u8) -> Identity {
    Identity::from_secret_bytes(&[secret; 32]).expect("a 32-byte secret")
}

/// A fresh empty directory for one test, its name starting `p2pd-{tag}-`, removed on drop.
pub struct Scratch(tempfile::TempDir);

impl Scratch {
    /// Creates the directory under the system's temporary directory.
    pub fn new(tag: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix(&format!("p2pd-{tag}-"))
            .tempdir()
            .expect("create a temporary directory");
        Scratch(dir)
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        self.0.path()
    }

    /// `name` inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// Writes the identity with secret `[secret; 32]` to `name` (mode 0600); returns its path.
    pub fn identity_file(&self, name: &str, secret: u8) -> PathBuf {
        let path = self.path(name);
        write_identity(&path, &identity(secret), false).expect("write the identity file");
        path
    }
}

/// A [`Scratch`] directory holding the identity file `id.key` (secret `[secret; 32]`).
pub struct KeyDir {
    /// The directory, removed on drop.
    pub scratch: Scratch,
    /// The identity file's path.
    pub key_file: PathBuf,
    /// The identity's public key, as the command line takes it.
    pub public_key: String,
}

impl KeyDir {
    /// Creates the directory and writes the identity file into it.
    pub fn new(tag: &str, secret: u8) -> KeyDir {
        let scratch = Scratch::new(tag);
        let key_file = scratch.identity_file("id.key", secret);
        KeyDir {
            scratch,
            key_file,
            public_key: identity(secret).public_key().to_string(),
        }
    }

    /// The identity file's path, as a command-line word.
    pub fn key(&self) -> String {
        self.key_file.display().to_string()
    }

    /// `name` inside the directory, as a command-line word.
    pub fn path(&self, name: &str) -> String {
        self.scratch.path(name).display().to_string()
    }
}

/// The command-line words of `line`, split at spaces; a word that is a name in `fill` (such as
/// `{key}`) is replaced by its value whole, so paths and keys may hold spaces.
pub fn command_words(line: &str, fill: &[(&str, &str)]) -> Vec<String> {
    line.split_whitespace()
        .map(|word| {
            fill.iter()
                .find(|(name, _)| *name == word)
                .map_or(word, |(_, value)| value)
                .to_string()
        })
        .collect()
}
