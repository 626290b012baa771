//! `p2pd id new` / `p2pd id show`: create and show the node identity (a secp256k1 key pair).

use crate::errln;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::commands::report::Reporter;
use crate::identity_file::{
    default_identity_path, generate_identity, read_identity, write_identity,
};
use p2pd_signaling::Identity;

/// `p2pd id ...`
#[derive(Debug, Args)]
pub struct IdArgs {
    #[command(subcommand)]
    command: IdCommand,
}

#[derive(Debug, Subcommand)]
enum IdCommand {
    /// Create a new identity file (never replaces an existing one without --force).
    New {
        /// Where to write it (default: $P2PD_IDENTITY, else ~/.config/p2pd/identity.key).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the node id and public key of an identity file.
    Show {
        /// The identity file (default as for `new`).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `p2pd id`; returns the exit code.
pub fn run(args: &IdArgs) -> i32 {
    match &args.command {
        IdCommand::New { file, force, json } => {
            let path = file.clone().unwrap_or_else(default_identity_path);
            let identity = match generate_identity() {
                Ok(id) => id,
                Err(e) => {
                    errln!("p2pd id new: {e}");
                    return 1;
                }
            };
            if let Err(e) = write_identity(&path, &identity, *force) {
                let hint = if e.kind() == std::io::ErrorKind::AlreadyExists {
                    " (use --force to replace it)"
                } else {
                    ""
                };
                errln!("p2pd id new: {}: {e}{hint}", path.display());
                return 1;
            }
            print_identity(&identity, &path, *json);
            0
        }
        IdCommand::Show { file, json } => {
            let path = file.clone().unwrap_or_else(default_identity_path);
            match read_identity(&path) {
                Ok(identity) => {
                    print_identity(&identity, &path, *json);
                    0
                }
                Err(e) => {
                    errln!("p2pd id show: {e}");
                    1
                }
            }
        }
    }
}

/// `p2pd id new|show --json`.
#[derive(Debug, Serialize)]
struct IdReport {
    node_id: String,
    public_key: String,
    file: String,
}

fn print_identity(identity: &Identity, path: &std::path::Path, json: bool) {
    let report = IdReport {
        node_id: identity.node_id().to_string(),
        public_key: identity.public_key().to_string(),
        file: path.display().to_string(),
    };
    let human = format!(
        "node id     {}\npublic key  {}\nfile        {}",
        report.node_id, report.public_key, report.file
    );
    Reporter { json }.line(human, &report);
}
