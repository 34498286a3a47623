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

/// A byte count given on the command line or in the configuration file (`20GiB`, `64m`, or a
/// plain number), read by [`thaw_policy::parse_bytes`] so that every flag and key means the
/// same by the same text (bare `G` is 2^30 everywhere, `GB` 10^9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl std::str::FromStr for Bytes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        thaw_policy::parse_bytes(s).map(Bytes).map_err(|e| e.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Bytes(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

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
