//! `thaw sim` (owned by the trace work; see issue 3).

use clap::Args;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct SimArgs {}

pub fn run(_args: SimArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`thaw sim` is not available in this build yet")
}
