//! `thaw`: the command line and the node daemon.
//!
//! This crate only parses flags, reads configuration and wires the library crates together; the
//! logic lives in `thaw-*` crates. Each subcommand is one file under `cmd/`.

use clap::{Parser, Subcommand};

mod cmd;

/// thaw makes containers and serverless functions start fast.
#[derive(Debug, Parser)]
#[command(name = "thaw", version, about, long_about = None)]
struct Cli {
    /// Log filter (e.g. `info`, `thaw_registry=debug`); overrides THAW_LOG.
    #[arg(long, global = true)]
    log: Option<String>,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node daemon: the caching registry mirror, the local API and, with a [sandbox]
    /// configuration section, pools of sandboxes and functions.
    Serve(cmd::serve::ServeArgs),
    /// Pull an image into the store (through the running daemon when there is one).
    Pull(cmd::pull::PullArgs),
    /// Warm the cache with a list of images.
    Preheat(cmd::pull::PreheatArgs),
    /// Traces: generate, analyse, report, record file accesses.
    #[command(subcommand)]
    Trace(cmd::trace::TraceCommand),
    /// Replay a trace through cache policies.
    Sim(cmd::sim::SimArgs),
    /// Run a container from an image or an OCI bundle (from a daemon's pools when one serves
    /// the data directory).
    Run(cmd::run::RunArgs),
    /// Functions on the daemon: deploy, invoke, list, rm.
    #[command(subcommand)]
    Fn(cmd::func::FnCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cmd::init_logging(cli.log.as_deref(), cli.log_json);
    let result = match cli.command {
        Command::Serve(a) => cmd::serve::run(a),
        Command::Pull(a) => cmd::pull::run(a),
        Command::Preheat(a) => cmd::pull::run_preheat(a),
        Command::Trace(c) => cmd::trace::run(c),
        Command::Sim(a) => cmd::sim::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Fn(c) => cmd::func::run(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("thaw: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
