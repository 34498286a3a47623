//! `thaw trace ...` (owned by the trace work; see issue 3).

use clap::Subcommand;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Generate a synthetic registry trace.
    Gen,
}

pub fn run(cmd: TraceCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`thaw trace {cmd:?}` is not available in this build yet")
}
