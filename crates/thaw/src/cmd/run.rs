//! `thaw run` (owned by the sandbox work; see issue 4).

use clap::Args;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct RunArgs {}

pub fn run(_args: RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`thaw run` is not available in this build yet")
}
