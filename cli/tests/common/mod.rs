//! What the CLI's end-to-end tests share: the `p2pd` binary cargo built for them, and the
//! workspace's test scaffolding (`p2pd-tests`).
#![allow(dead_code)]

use std::path::Path;

pub use p2pd_tests::*;

/// The `p2pd` binary of this package, built by cargo for the integration tests.
pub fn p2pd_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_p2pd"))
}
