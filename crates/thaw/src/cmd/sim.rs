//! `thaw sim`: replay a trace through cache policies (issue 3).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use thaw_policy::{parse_bytes, Capacity, PolicySpec, POLICY_NAMES};
use thaw_trace::report;
use thaw_trace::sim::{parse_capacity, simulate, LatencyModel, SimConfig};

use super::trace::{spinner, warn_malformed, TraceInput};

#[derive(Debug, Args)]
pub struct SimArgs {
    #[command(flatten)]
    input: TraceInput,
    /// Cache policies, comma-separated (e.g. lru,sieve,s3fifo).
    #[arg(long, value_delimiter = ',', required = true, value_parser = parse_policy)]
    policy: Vec<PolicySpec>,
    /// Cache sizes, comma-separated; `FAST+SLOW` gives a two-tier size (e.g. 1GiB,4GiB,1GiB+8GiB).
    /// `1G` is 1 GiB; write `1GB` for 10^9 bytes.
    #[arg(long, value_delimiter = ',', value_parser = parse_capacity)]
    cache_size: Vec<Capacity>,
    /// One two-tier size as FAST,SLOW (same as --cache-size FAST+SLOW).
    #[arg(long, value_delimiter = ',', num_args = 1, value_parser = parse_bytes)]
    tiers: Vec<u64>,
    /// Latency model as TOML (fast_bps, slow_bps, backend_rtt_us, backend_bps).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Report latency with the default model (or with the flags below).
    #[arg(long)]
    latency: bool,
    /// Fast tier read bandwidth, bytes per second (e.g. 4GB).
    #[arg(long, value_parser = parse_bytes)]
    fast_bw: Option<u64>,
    /// Slow tier read bandwidth, bytes per second.
    #[arg(long, value_parser = parse_bytes)]
    slow_bw: Option<u64>,
    /// Backend round trip (e.g. 50ms).
    #[arg(long)]
    backend_rtt: Option<humantime::Duration>,
    /// Backend bandwidth, bytes per second.
    #[arg(long, value_parser = parse_bytes)]
    backend_bw: Option<u64>,
    /// Image associations for prefetching policies (lacache): the JSON of `thaw trace analyze
    /// --json` (raise its --top to pass more pairs).
    #[arg(long)]
    associations: Option<PathBuf>,
    /// Use only associations whose lift (share over what chance alone gives, as `analyze`
    /// reports it) is at least this; e.g. 2 drops pairs whose follower is merely popular.
    #[arg(long, default_value_t = 0.0, requires = "associations")]
    min_lift: f64,
    /// Ignore policies' prefetch hints.
    #[arg(long)]
    no_prefetch: bool,
    /// Requests of one client and repository this close together form one image pull.
    #[arg(long, default_value = "5m")]
    pull_window: humantime::Duration,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Print the results as one JSON document.
    #[arg(long)]
    json: bool,
    /// Write miss-ratio curves over the cache sizes as an SVG plot.
    #[arg(long)]
    mrc_plot: Option<PathBuf>,
}

fn parse_policy(s: &str) -> Result<PolicySpec, String> {
    s.parse::<PolicySpec>().map_err(|e| format!("{e} (known: {})", POLICY_NAMES.join(", ")))
}

impl SimArgs {
    fn model(&self) -> anyhow::Result<Option<LatencyModel>> {
        let mut m = match &self.model {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
                Some(toml::from_str::<LatencyModel>(&text).with_context(|| format!("bad latency model in {}", p.display()))?)
            }
            None => None,
        };
        let any_flag = self.latency || self.fast_bw.is_some() || self.slow_bw.is_some() || self.backend_rtt.is_some() || self.backend_bw.is_some();
        if any_flag && m.is_none() {
            m = Some(LatencyModel::default());
        }
        if let Some(m) = &mut m {
            if let Some(v) = self.fast_bw {
                m.fast_bps = v as f64;
            }
            if let Some(v) = self.slow_bw {
                m.slow_bps = v as f64;
            }
            if let Some(v) = self.backend_rtt {
                m.backend_rtt_us = v.as_micros() as f64;
            }
            if let Some(v) = self.backend_bw {
                m.backend_bps = v as f64;
            }
        }
        Ok(m)
    }
}

pub fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    let mut caps = args.cache_size.clone();
    match args.tiers.as_slice() {
        [] => {}
        [fast, slow] => caps.push(Capacity { fast: *fast, slow: *slow }),
        other => anyhow::bail!("--tiers takes two sizes, FAST,SLOW; got {}", other.len()),
    }
    anyhow::ensure!(!caps.is_empty(), "give at least one cache size with --cache-size (or --tiers FAST,SLOW)");
    let associations = match &args.associations {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
            anyhow::ensure!(args.min_lift >= 0.0 && args.min_lift.is_finite(), "--min-lift must be a number of 0 or more");
            thaw_trace::analyze::associations_from_json(&text, args.min_lift)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => Vec::new(),
    };
    let config = SimConfig {
        associations,
        model: args.model()?,
        pull_window_us: args.pull_window.as_micros() as u64,
        prefetch: !args.no_prefetch,
        threads: args.threads,
        ..SimConfig::new(args.policy.clone(), caps)
    };
    let cats = args.input.category_map()?;
    let pb = spinner(!args.input.no_progress, "accesses replayed");
    let result = simulate(&args.input.trace, args.input.format, args.input.options(), cats, &config, &mut |n| pb.set_position(n));
    pb.finish_and_clear();
    let rep = result?;
    warn_malformed(&rep.read);
    if let Some(p) = &args.mrc_plot {
        let svg = report::mrc_svg(&rep, false)?;
        std::fs::write(p, svg).with_context(|| format!("cannot write {}", p.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        print!("{}", report::sim_table(&rep));
        eprintln!(
            "{} accesses of {} requests replayed through {} runs in {:.2} s ({:.1} M accesses/s over all runs)",
            rep.accesses,
            rep.events,
            rep.runs.len(),
            rep.wall_seconds,
            rep.requests_per_second / 1e6,
        );
    }
    Ok(ExitCode::SUCCESS)
}
