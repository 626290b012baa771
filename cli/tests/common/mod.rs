//! What the CLI's end-to-end tests share: the `p2pd` binary cargo built for them, scratch
//! directories with identity files, and the workspace's test scaffolding (`p2pd-tests`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use p2pd_cli::identity_file::write_identity;
use p2pd_signaling::Identity;
// Not every test binary uses the scaffolding.
#[allow(unused_imports)]
pub use p2pd_tests::*;

pub mod node_lab;
pub mod node_proc;
pub mod procs;

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

/// A thread that runs until told to stop: [`Stoppable::stop`] (or dropping it) raises the flag
/// the thread's body watches, then joins it.
pub struct Stoppable<T> {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<T>>,
}

impl<T: Send + 'static> Stoppable<T> {
    /// Runs `body` on a new thread; it returns once the flag it is given is raised.
    pub fn spawn(
        body: impl FnOnce(&std::sync::atomic::AtomicBool) -> T + Send + 'static,
    ) -> Stoppable<T> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let handle = std::thread::spawn(move || body(&flag));
        Stoppable {
            stop,
            handle: Some(handle),
        }
    }

    /// Raises the flag and returns what the thread returned.
    pub fn stop(mut self) -> T {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl<T> Drop for Stoppable<T> {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            if !std::thread::panicking() {
                let _ = h.join();
            }
        }
    }
}

/// A PNP server's life after it listens, on its own thread: serves until `stop` is raised, then
/// closes and waits (at most `limit`) for `Closed`. Returns whether `Closed` came.
pub fn serve_pnp_until_stopped<S: p2pd_signaling::pnp::NameStore>(
    rt: &mut p2pd_mio::Runtime,
    server: &mut p2pd_signaling::pnp::PnpServer<S>,
    stop: &std::sync::atomic::AtomicBool,
    limit: std::time::Duration,
) -> bool {
    use p2pd_signaling::pnp::PnpServerEvent;
    use std::ops::ControlFlow;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        rt.run(
            server,
            Some(std::time::Duration::from_millis(20)),
            |_, _, _| ControlFlow::Continue(()),
        )
        .unwrap();
    }
    let now = rt.now();
    server.close(now);
    let mut closed = false;
    let _ = rt.run(server, Some(limit), |_, _, ev| {
        if ev == PnpServerEvent::Closed {
            closed = true;
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    closed
}
