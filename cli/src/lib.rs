//! # p2pd (the command line)
//!
//! The `p2pd` binary's parts: one module per sub-command in [`commands`] (clap arguments, the run,
//! human or `--json` output), the configuration file ([`config`]), the node identity file ([`identity_file`]), a configured TURN relay as the TURN client's settings ([`relay`]), the server health file
//! ([`health_store`]) and the SQLite name store
//! behind `p2pd pnp-server --db` ([`store_sqlite`]). The protocol machines live in the protocol
//! crates and run here on [`p2pd_mio::Runtime`]; nothing in this crate is a dependency of them.
//!
//! This crate is not published; it is a library only so its end-to-end tests (`cli/tests/`) can
//! write identity files and open the name store the way the binary does.
//!
//! Output goes through [`output`] (never `println!`, which panics on a closed pipe).
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod commands;
pub mod config;
pub mod health_store;
pub mod identity_file;
pub mod output;
pub mod relay;
pub mod store_sqlite;

/// A fresh empty directory for one unit test, its name starting `p2pd-{tag}-`, removed on drop.
#[cfg(test)]
pub(crate) fn test_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("p2pd-{tag}-"))
        .tempdir()
        .expect("create a temporary directory")
}
