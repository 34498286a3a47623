//! One module per subcommand. Each exposes its clap argument type and a `run` function.

pub mod api;
#[path = "fn.rs"]
pub mod func;
pub mod pull;
pub mod run;
pub mod sandboxes;
pub mod serve;
pub mod sim;
pub mod trace;

use tracing_subscriber::EnvFilter;

/// Sets up `tracing` to stderr. `THAW_LOG` (or `--log`) picks the filter; `info` by default.
pub fn init_logging(filter: Option<&str>, json: bool) {
    let filter = filter
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_env("THAW_LOG").ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
