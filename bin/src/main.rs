//! `holdfast`: the one binary of holdfast.
//!
//! Today it carries the store's operator tools, each working on one shard's
//! data directory:
//!
//! - `holdfast store check DIR` verifies every record and index file without
//!   changing anything, prints what it found one fact per line, and says by
//!   its exit code whether the directory is clean.
//! - `holdfast store bench --dir DIR` measures the disk's physical floor
//!   (raw `O_DIRECT` bandwidth, 4 KiB write + `fdatasync` latency) and then
//!   the store on the same disk in the same run (puts from many concurrent
//!   tasks, so that group commit is exercised, random gets, a restart), so
//!   that every store number comes with the floor it should be read against.
//! - `holdfast store torture` (hidden) is the child process of the crash
//!   test in `tests/crash_sigkill.rs`; see `commands/torture.rs`.
//!
//! - `holdfast serve` runs a node (see `commands/serve.rs`), and
//!   `holdfast put | get | delete` send it one request each.
//! - `holdfast up` runs a local cluster: one `holdfast serve` child process
//!   per node, on consecutive ports (see `commands/up.rs`).
//! - `holdfast status` prints the ring as one node sees it, with every
//!   member's share and whether it answers now, each node's membership
//!   status and transfer progress; `holdfast inspect KEY` prints one node's
//!   own replica of a key (see `commands/cluster.rs`).
//! - `holdfast admin leave | remove` changes the membership of a running
//!   cluster (see `commands/admin.rs`); a node joins by starting with
//!   `holdfast serve --join --seeds ADDR`.
//!
//! Every command that touches a store runs it on one glommio executor (the
//! store is per shard and `!Send`); nothing here spins, since the machines
//! this runs on may have two cores and other work on them.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | done; for `check`, the directory is clean |
//! | 1 | `check` found corruption; `status`: the node has not formed its ring yet |
//! | 2 | an error stopped the command (bad arguments, a missing directory, an I/O error) |
//! | 3 | `torture` found a value that contradicts what was acknowledged |

// A command-line tool's output is its interface: printing to standard
// output is what it is for. Logs still go to standard error.
#![allow(clippy::print_stdout)]

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::commands::{Outcome, admin, bench, check, client, cluster, serve, torture, up};

// The store allocates a buffer per write and per read; mimalloc keeps those
// allocations cheap and local to the shard's thread.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The exit codes, as the table in the crate documentation describes them.
mod exit_code {
    pub const CLEAN: u8 = 0;
    pub const CORRUPTION_FOUND: u8 = 1;
    pub const NO_RING: u8 = 1;
    pub const ERROR: u8 = 2;
    pub const MISMATCH: u8 = 3;
}

#[derive(Debug, Parser)]
#[command(name = "holdfast", version, about = "holdfast: a Dynamo-style key-value store")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs one node until SIGTERM or SIGINT.
    Serve(serve::ServeArgs),
    /// Runs a local cluster: N nodes on 127.0.0.1:(BASE_PORT + i), until
    /// SIGTERM or SIGINT.
    Up(up::UpArgs),
    /// Writes a value (replacing what the given context covers).
    Put(client::PutArgs),
    /// Reads a key: its siblings and their context.
    Get(client::GetArgs),
    /// Deletes a key (replacing what the given context covers).
    Delete(client::DeleteArgs),
    /// Prints the ring as one node sees it: members, their shares, whether
    /// each answers now; with --key, the key's replicas. Exits 1 if the node
    /// has not formed its ring yet.
    Status(cluster::StatusArgs),
    /// Prints the versions one node's own replica holds for a key, without
    /// coordination.
    Inspect(cluster::InspectArgs),
    /// Membership changes of a running cluster: a node leaves, or a dead
    /// node is removed. (A node joins with `holdfast serve --join --seeds
    /// ADDR`.)
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Operator tools for one shard's store directory.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Verifies every record and index file in a store directory, changing
    /// nothing. Exits 0 when clean, 1 on corruption, 2 when it could not check.
    Check(check::CheckArgs),
    /// Measures the disk's floor, then the store on it: puts, gets, restart.
    Bench(bench::BenchArgs),
    /// The child process of the SIGKILL crash test: verifies what earlier
    /// children were acknowledged, then writes until it is killed.
    #[command(hide = true)]
    Torture(torture::TortureArgs),
}

fn main() -> ExitCode {
    // Clap exits with 2 on a usage error, which agrees with the table above.
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let outcome = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Up(args) => up::run(args),
        Command::Put(args) => client::put(args),
        Command::Get(args) => client::get(args),
        Command::Delete(args) => client::delete(args),
        Command::Status(args) => cluster::status(args),
        Command::Inspect(args) => cluster::inspect(args),
        Command::Admin(command) => admin::run(command),
        Command::Store(StoreCommand::Check(args)) => check::run(args),
        Command::Store(StoreCommand::Bench(args)) => bench::run(args),
        Command::Store(StoreCommand::Torture(args)) => torture::run(args),
    };
    match outcome {
        Ok(Outcome::Done) => ExitCode::from(exit_code::CLEAN),
        Ok(Outcome::CorruptionFound) => ExitCode::from(exit_code::CORRUPTION_FOUND),
        Ok(Outcome::NoRing) => ExitCode::from(exit_code::NO_RING),
        Err(error) if error.is::<torture::Mismatch>() => {
            eprintln!("holdfast: {error:#}");
            ExitCode::from(exit_code::MISMATCH)
        }
        Err(error) => {
            eprintln!("holdfast: error: {error:#}");
            ExitCode::from(exit_code::ERROR)
        }
    }
}
