//! `thaw trace ...`: generate, analyse and report on traces (issue 3).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use thaw_trace::analyze::{analyze, AnalysisReport, AnalyzeConfig, AssocConfig};
use thaw_trace::category::CategoryMap;
use thaw_trace::gen::{generate, generate_zipf, GenParams, ZipfParams};
use thaw_trace::read::{self, ReadOptions, ReadStats, TraceFormat};
use thaw_trace::report;
use thaw_trace::files::{self, FilesSummary, LayerDir, ProcessSpec, Ready, RecordSpec, Runtime};
use thaw_trace::sim::SimReport;

#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Generate a synthetic registry trace (seeded, reproducible).
    Gen(GenArgs),
    /// Analyse a trace: image pulls, per-category distributions, associated images.
    Analyze(AnalyzeArgs),
    /// Write a self-contained HTML report (and a JSON summary) of a trace and/or a file-access recording.
    Report(ReportArgs),
    /// Record which files of an image a container opens, executes and reads until it is ready.
    ///
    /// Runs the image under runc (or crun) with fanotify marks placed between `create` and
    /// `start`, maps every file to the layer that provides it, and prints the hot-file list,
    /// the shares of files and bytes accessed, and the spread over layers. Needs root.
    #[command(after_help = FILES_AFTER_HELP)]
    Files(FilesArgs),
}

/// Where a trace comes from; shared by `analyze`, `report` and `sim`.
#[derive(Debug, Args)]
pub struct TraceInput {
    /// Trace file(s); several files of one format are merged in time order.
    #[arg(long = "trace", short = 't', num_args = 1..)]
    pub trace: Vec<PathBuf>,
    /// The trace's format: thaw, distribution, ibm or oracle-general.
    #[arg(long, default_value = "thaw", value_parser = parse_format)]
    pub format: TraceFormat,
    /// Stop at the first malformed record instead of counting and skipping it.
    #[arg(long)]
    pub strict: bool,
    /// TOML file mapping namespaces to service categories (default: each namespace is one).
    #[arg(long)]
    pub categories: Option<PathBuf>,
    /// Do not show progress on stderr.
    #[arg(long)]
    pub no_progress: bool,
}

impl TraceInput {
    pub fn options(&self) -> ReadOptions {
        ReadOptions { strict: self.strict }
    }

    pub fn category_map(&self) -> anyhow::Result<CategoryMap> {
        match &self.categories {
            Some(p) => Ok(CategoryMap::load(p)?),
            None => Ok(CategoryMap::by_namespace()),
        }
    }
}

pub fn parse_format(s: &str) -> Result<TraceFormat, String> {
    s.parse()
}

fn parse_duration_us(s: &str) -> Result<u64, String> {
    humantime::parse_duration(s).map(|d| d.as_micros() as u64).map_err(|e| format!("bad duration {s:?}: {e} (use e.g. 60s, 5m)"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GenShape {
    /// Registry traffic: images, layers, pushes and pulls per service category.
    Registry,
    /// Plain Zipf object requests (oracle-general only): the usual cache benchmark.
    Zipf,
}

#[derive(Debug, Args)]
pub struct GenArgs {
    /// Output file (`-` for stdout).
    #[arg(long, short = 'o', default_value = "-")]
    out: PathBuf,
    /// Output format: thaw or oracle-general.
    #[arg(long, default_value = "thaw", value_parser = parse_format)]
    format: TraceFormat,
    #[arg(long, value_enum, default_value = "registry")]
    shape: GenShape,
    /// Number of requests.
    #[arg(long, default_value_t = 1_000_000)]
    requests: u64,
    /// Time span in days (registry shape).
    #[arg(long)]
    days: Option<f64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// TOML file overriding generator parameters (see --print-params for all of them).
    #[arg(long)]
    params: Option<PathBuf>,
    /// Print the parameters that would be used, as TOML, and exit.
    #[arg(long)]
    print_params: bool,
    /// Zipf shape: number of distinct objects.
    #[arg(long, default_value_t = 1_000_000)]
    objects: usize,
    /// Zipf shape: exponent.
    #[arg(long, default_value_t = 1.0)]
    alpha: f64,
    /// Zipf shape: median object size.
    #[arg(long, default_value = "64KiB")]
    object_size: String,
}

#[derive(Debug, Args)]
pub struct AnalysisFlags {
    /// Requests of one client and repository this close together form one image pull.
    #[arg(long, default_value = "5m", value_parser = parse_duration_us)]
    pull_window: u64,
    /// Association: B must be pulled within this window after A.
    #[arg(long, default_value = "60s", value_parser = parse_duration_us)]
    assoc_window: u64,
    /// Association: ...after more than this share of A's pulls.
    #[arg(long, default_value_t = 0.5)]
    assoc_share: f64,
    /// Association: ...for A pulled more than this many times.
    #[arg(long, default_value_t = 100)]
    assoc_min_pulls: u64,
    /// Association: count only pulls of B by the client that pulled A (default: registry-wide).
    #[arg(long)]
    same_client: bool,
    /// Associated pairs to report.
    #[arg(long, default_value_t = 100)]
    top: usize,
}

impl AnalysisFlags {
    fn config(&self) -> anyhow::Result<AnalyzeConfig> {
        anyhow::ensure!((0.0..1.0).contains(&self.assoc_share), "--assoc-share must be in [0, 1), got {}", self.assoc_share);
        Ok(AnalyzeConfig {
            pull_window_us: self.pull_window,
            assoc: AssocConfig {
                window_us: self.assoc_window,
                share: self.assoc_share,
                min_pulls: self.assoc_min_pulls,
                same_client: self.same_client,
                top: self.top,
            },
            ..AnalyzeConfig::default()
        })
    }
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    #[command(flatten)]
    input: TraceInput,
    #[command(flatten)]
    flags: AnalysisFlags,
    /// Print the full result as one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON result to this file.
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    input: TraceInput,
    #[command(flatten)]
    flags: AnalysisFlags,
    /// The HTML report to write.
    #[arg(long, default_value = "report.html")]
    html: PathBuf,
    /// The JSON summary to write (the analysis, and the simulation when given).
    #[arg(long)]
    json: Option<PathBuf>,
    /// A `thaw sim --json` result to include (miss-ratio curves and the results table).
    #[arg(long)]
    sim: Option<PathBuf>,
    /// A `thaw trace files` result to include (file-access charts): its `--json` document, or
    /// its `--output` records (then without the image's totals). Without --trace, the report
    /// shows only this.
    #[arg(long)]
    files: Option<PathBuf>,
    #[arg(long, default_value = "thaw trace report")]
    title: String,
}

pub fn run(cmd: TraceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TraceCommand::Gen(a) => run_gen(a),
        TraceCommand::Analyze(a) => run_analyze(a),
        TraceCommand::Report(a) => run_report(a),
        TraceCommand::Files(a) => run_files(a),
    }
}

fn open_out(path: &Path) -> anyhow::Result<Box<dyn Write>> {
    if path.as_os_str() == "-" {
        Ok(Box::new(std::io::stdout().lock()))
    } else {
        let f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Box::new(f))
    }
}

fn run_gen(a: GenArgs) -> anyhow::Result<ExitCode> {
    match a.shape {
        GenShape::Registry => {
            let mut p = match &a.params {
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                    toml::from_str::<GenParams>(&text).with_context(|| format!("bad generator parameters in {}", path.display()))?
                }
                None => GenParams::default(),
            };
            p.seed = a.seed;
            p.requests = a.requests;
            if let Some(d) = a.days {
                anyhow::ensure!(d > 0.0, "--days must be positive");
                p.duration_s = d * 86_400.0;
            }
            if a.print_params {
                print!("{}", toml::to_string_pretty(&p)?);
                return Ok(ExitCode::SUCCESS);
            }
            let mut out = open_out(&a.out)?;
            let s = generate(&p, a.format, &mut out)?;
            out.flush()?;
            eprintln!(
                "generated {} requests: {} pulls, {} pushes, {} images, {} associated pairs, over {}",
                s.requests,
                s.pulls,
                s.pushes,
                s.images,
                s.associated_pairs,
                report::human_seconds(s.span_s)
            );
        }
        GenShape::Zipf => {
            anyhow::ensure!(a.format == TraceFormat::OracleGeneral, "--shape zipf writes oracle-general traces only; add --format oracle-general");
            let size = thaw_policy::parse_bytes(&a.object_size).context("--object-size")?;
            let p = ZipfParams {
                seed: a.seed,
                requests: a.requests,
                objects: a.objects,
                alpha: a.alpha,
                size_median: size as f64,
                size_sigma: 1.0,
                rate: 1000.0,
            };
            if a.print_params {
                println!("{p:?}");
                return Ok(ExitCode::SUCCESS);
            }
            let mut out = open_out(&a.out)?;
            let n = generate_zipf(&p, &mut out)?;
            out.flush()?;
            eprintln!("generated {n} zipf requests over {} objects (alpha {})", a.objects, a.alpha);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A spinner counting events, on stderr when it is a terminal.
pub fn spinner(enabled: bool, what: &'static str) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {elapsed} {human_pos} {msg} ({per_sec})") {
        pb.set_style(style);
    }
    pb.set_message(what);
    pb
}

/// Tells the user about malformed records (never fatal unless --strict, which errors earlier).
pub fn warn_malformed(stats: &ReadStats) {
    if stats.malformed == 0 {
        return;
    }
    eprintln!("thaw: warning: {} malformed records skipped; the first ones:", stats.malformed);
    for m in stats.samples.iter().take(5) {
        eprintln!("  {m}");
    }
    if stats.out_of_order > 0 {
        eprintln!("thaw: warning: {} events were out of time order", stats.out_of_order);
    }
}

fn run_analysis(input: &TraceInput, flags: &AnalysisFlags) -> anyhow::Result<AnalysisReport> {
    let cfg = flags.config()?;
    let cats = input.category_map()?;
    // Parsing runs on its own thread, overlapping with the analysis.
    let mut src = read::Background::new(read::open(&input.trace, input.format, input.options())?);
    let pb = spinner(!input.no_progress, "events analysed");
    let report = analyze(&mut src, cfg, cats, &mut |n| pb.set_position(n))?;
    pb.finish_and_clear();
    warn_malformed(&report.read);
    Ok(report)
}

fn run_analyze(a: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let report = run_analysis(&a.input, &a.flags)?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(p) = &a.out {
        std::fs::write(p, &json).with_context(|| format!("cannot write {}", p.display()))?;
    }
    if a.json {
        println!("{json}");
    } else {
        print!("{}", report::analysis_table(&report));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(serde::Serialize)]
struct Summary<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    analysis: Option<&'a AnalysisReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    simulation: Option<&'a SimReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<&'a FilesSummary>,
}

fn run_report(a: ReportArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        !a.input.trace.is_empty() || a.files.is_some(),
        "nothing to report: give a registry trace (--trace FILE) and/or a file-access recording (--files FILE)"
    );
    let sim: Option<SimReport> = match &a.sim {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
            Some(serde_json::from_str(&text).with_context(|| format!("{} is not a `thaw sim --json` result", p.display()))?)
        }
        None => None,
    };
    let files = match &a.files {
        Some(p) => {
            let (s, stats) = files::load(p)?;
            warn_malformed(&stats);
            Some(s)
        }
        None => None,
    };
    let analysis = if a.input.trace.is_empty() { None } else { Some(run_analysis(&a.input, &a.flags)?) };
    let page = report::page(analysis.as_ref(), sim.as_ref(), files.as_ref(), &a.title)?;
    std::fs::write(&a.html, page).with_context(|| format!("cannot write {}", a.html.display()))?;
    if let Some(p) = &a.json {
        let s = Summary { analysis: analysis.as_ref(), simulation: sim.as_ref(), files: files.as_ref() };
        std::fs::write(p, serde_json::to_string_pretty(&s)?).with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(an) = &analysis {
        print!("{}", report::analysis_table(an));
    }
    if let Some(s) = &sim {
        println!();
        print!("{}", report::sim_table(s));
    }
    if let Some(f) = &files {
        println!();
        print!("{}", report::files_table(f, 20));
    }
    eprintln!("wrote {}", a.html.display());
    Ok(ExitCode::SUCCESS)
}

const FILES_AFTER_HELP: &str = "Bytes accessed: fanotify reports that a file was opened, executed or read, but not which \
offsets, and nothing when a memory-mapped file is paged in. \"Bytes accessed\" is the whole size of every file read or \
executed: an upper bound of the bytes actually touched. Readiness: by default the command's exit; --ready-port connects \
to 127.0.0.1:PORT inside the container's own network namespace (loopback only); --ready-log matches each output line. \
The container's output goes to stderr; the summary (or --json) to stdout.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeArg {
    Runc,
    /// crun, run in a private mount namespace without /sys/fs/cgroup/unified (hybrid hosts).
    Crun,
}

#[derive(Debug, Args)]
pub struct FilesArgs {
    /// A root filesystem directory, or an image in an OCI layout as `oci:PATH[:TAG]`.
    #[arg(value_name = "ROOTFS|IMAGE")]
    image: String,
    /// The OCI runtime.
    #[arg(long, value_enum, default_value = "runc")]
    runtime: RuntimeArg,
    /// Ready when 127.0.0.1:PORT accepts a TCP connection inside the container's network namespace.
    #[arg(long, conflicts_with = "ready_log")]
    ready_port: Option<u16>,
    /// Ready when a line of the container's stdout or stderr matches this regex.
    #[arg(long, value_name = "REGEX")]
    ready_log: Option<String>,
    /// Give up (and fail) when the container is not ready within this time.
    #[arg(long, default_value = "60s")]
    timeout: humantime::Duration,
    /// Write every file access as a JSON line (thaw trace records of type "file").
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Print the summary as one JSON document instead of tables.
    #[arg(long)]
    json: bool,
    /// Hot files shown in the table.
    #[arg(long, default_value_t = 20)]
    top: usize,
    /// Print the time of each step (mount, create, mark, start to ready, teardown) to stderr.
    #[arg(long)]
    timings: bool,
    /// Data directory holding the layer store (for oci: images); the daemon's default when unset.
    #[arg(long, env = "THAW_DATA")]
    data: Option<PathBuf>,
    /// Where the container's upper directory and bundle are made (default: /dev/shm).
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Extra environment variables `KEY=VALUE`.
    #[arg(long, short = 'e')]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(long, short = 'w')]
    workdir: Option<String>,
    /// Command and arguments (after `--`); the image's own when omitted.
    #[arg(last = true)]
    command: Vec<String>,
}

/// The image's layer directories (base first) and its process, plus the pins keeping the
/// layers in the store while they are in use.
fn resolve_files_image(a: &FilesArgs) -> anyhow::Result<(Vec<LayerDir>, ProcessSpec, Vec<thaw_store::layers::LayerPin>)> {
    let image = a.image.as_str();
    if image.starts_with("oci:") {
        let data = a.data.clone().unwrap_or_else(super::serve::default_data_dir);
        let store = thaw_store::layers::LayerStore::open(&data)
            .context("opening the layer store (if a thaw daemon holds it, stop it or use another --data)")?;
        let pins = store.ensure_layout_image(image).with_context(|| format!("unpacking {image}"))?;
        let r = thaw_oci::layout::LayoutRef::parse(image)?;
        let img = thaw_oci::layout::Layout::open(&r.path)?.image(r.tag.as_deref())?;
        let process = files::process_from_image_config(&img.config).map_err(anyhow::Error::msg)?;
        let layers = pins.iter().map(|p| LayerDir { id: p.diff_id().to_string(), dir: p.path().to_path_buf() }).collect();
        return Ok((layers, process, pins));
    }
    anyhow::ensure!(
        !image.starts_with("docker://"),
        "docker:// images need the daemon's mirror; pull into an OCI layout first (skopeo copy docker://... oci:DIR:TAG) and trace oci:DIR:TAG"
    );
    let dir = std::fs::canonicalize(image).ok().filter(|d| d.is_dir()).with_context(|| format!("{image} is neither a directory nor an image name (oci:PATH[:TAG])"))?;
    Ok((vec![LayerDir { id: dir.display().to_string(), dir }], ProcessSpec::default(), Vec::new()))
}

fn run_files(a: FilesArgs) -> anyhow::Result<ExitCode> {
    let ready = match (a.ready_port, &a.ready_log) {
        (Some(p), _) => Ready::Port(p),
        (None, Some(r)) => Ready::log(r)?,
        (None, None) => Ready::Exit,
    };
    let (layers, mut process, _pins) = resolve_files_image(&a)?;
    if !a.command.is_empty() {
        process.args = a.command.clone();
    }
    for kv in &a.env {
        // Replace the image's value: with two entries, programs would see the first.
        let key = kv.split('=').next().unwrap_or_default();
        process.env.retain(|e| e.split('=').next() != Some(key));
        process.env.push(kv.clone());
    }
    if let Some(w) = &a.workdir {
        process.cwd = w.clone();
    }
    let scratch = a.scratch.clone().unwrap_or_else(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() { shm } else { std::env::temp_dir() }
    });
    // Absolute: the overlay options and the bundle's root path must not depend on a cwd.
    let scratch = std::fs::canonicalize(&scratch).with_context(|| format!("scratch directory {}", scratch.display()))?;
    let spec = RecordSpec {
        image: a.image.clone(),
        layers,
        process,
        runtime: match a.runtime {
            RuntimeArg::Runc => Runtime::Runc,
            RuntimeArg::Crun => Runtime::Crun,
        },
        ready,
        timeout: a.timeout.into(),
        scratch,
    };
    let mut out = match &a.output {
        Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?)),
        None => None,
    };
    let mut sink = |r: &thaw_record::FileAccessRecord| -> std::io::Result<()> {
        match out.as_mut() {
            Some(w) => w.write_all(thaw_record::Record::File(r.clone()).to_line().as_bytes()),
            None => Ok(()),
        }
    };
    let summary = files::record(&spec, &mut sink, &mut std::io::stderr())?;
    if let Some(w) = out.as_mut() {
        w.flush().context("writing the records")?;
    }
    if let files::ReadyBy::Exit { code, signal } = &summary.ready {
        if *code != Some(0) {
            let how = code.map_or_else(|| format!("was killed by signal {}", signal.unwrap_or(0)), |c| format!("exited with status {c}"));
            eprintln!("thaw: warning: the command {how}; the recording covers what it did until then");
        }
    }
    if a.timings {
        eprintln!("thaw trace files timings:");
        for (name, us) in &summary.stages_us {
            eprintln!("  {name:<22} {:>9.3} ms", *us as f64 / 1e3);
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", report::files_table(&summary, a.top));
    }
    Ok(ExitCode::SUCCESS)
}
