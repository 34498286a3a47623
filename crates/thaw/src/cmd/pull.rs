//! `thaw pull` and `thaw preheat`: fill the store with images, through the running daemon when
//! there is one (so its single-flight fetches are shared), else by opening the store directly.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::api::{self, ApiEvent};
use super::serve::{CommonArgs, Settings};

#[derive(Debug, Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Image reference, e.g. docker.io/library/alpine:3.19 or alpine.
    pub image: String,
    /// Platform to pick from a multi-platform index (default: this host's, e.g. linux/amd64).
    #[arg(long)]
    pub platform: Option<String>,
    /// Print events as JSON lines instead of a progress bar.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PreheatArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Image references to warm the cache with.
    pub images: Vec<String>,
    /// A file with one image reference per line (# comments allowed).
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    #[arg(long)]
    pub platform: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: PullArgs) -> anyhow::Result<ExitCode> {
    pull_many(&args.common, vec![args.image], args.platform, args.json)
}

pub fn run_preheat(args: PreheatArgs) -> anyhow::Result<ExitCode> {
    let mut images = args.images;
    if let Some(f) = &args.file {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read image list {}", f.display()))?;
        images.extend(text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()).map(str::to_string));
    }
    if images.is_empty() {
        anyhow::bail!("no images to preheat: name them as arguments or in a file with --file");
    }
    pull_many(&args.common, images, args.platform, args.json)
}

/// Renders events as a progress bar (or JSON lines).
struct Display {
    json: bool,
    bar: Option<ProgressBar>,
    done: HashMap<String, u64>,
    base: u64,
    failed: Vec<String>,
}

impl Display {
    fn new(json: bool) -> Display {
        Display { json, bar: None, done: HashMap::new(), base: 0, failed: Vec::new() }
    }

    fn on(&mut self, e: ApiEvent) {
        if self.json {
            println!("{}", serde_json::to_string(&e).unwrap_or_default());
        }
        match e {
            ApiEvent::Resolved { reference, total_bytes, blobs, .. } => {
                if !self.json {
                    let bar = ProgressBar::new(total_bytes);
                    bar.set_style(
                        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                            .expect("static template")
                            .progress_chars("=> "),
                    );
                    bar.set_message(format!("{reference} ({blobs} blobs)"));
                    self.bar = Some(bar);
                }
                self.done.clear();
                self.base = 0;
            }
            ApiEvent::Cached { size, .. } => {
                self.base += size;
                self.redraw();
            }
            ApiEvent::Progress { digest, done, .. } => {
                self.done.insert(digest, done);
                self.redraw();
            }
            ApiEvent::Stored { digest, size, .. } => {
                self.done.insert(digest, size);
                self.redraw();
            }
            ApiEvent::Pulled { summary } => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
                if !self.json {
                    println!(
                        "{} {} ({} blobs, {} fetched, {} already cached)",
                        summary.reference,
                        summary.digest,
                        summary.blobs,
                        bytesize::ByteSize(summary.fetched_bytes),
                        summary.cached_blobs
                    );
                }
            }
            ApiEvent::Error { reference, message } => {
                if let Some(b) = self.bar.take() {
                    b.abandon();
                }
                if !self.json {
                    eprintln!("thaw: {reference}: {message}");
                }
                self.failed.push(reference);
            }
            ApiEvent::Done { .. } => {}
        }
    }

    fn redraw(&self) {
        if let Some(b) = &self.bar {
            b.set_position(self.base + self.done.values().sum::<u64>());
        }
    }
}

fn pull_many(common: &CommonArgs, images: Vec<String>, platform: Option<String>, json: bool) -> anyhow::Result<ExitCode> {
    let settings = Settings::resolve(common, None)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut display = Display::new(json);
    rt.block_on(async {
        let body = serde_json::json!({ "references": images, "platform": platform });
        let via_daemon = api::call_streaming(&settings.socket, "/v1/preheat", body, |e| display.on(e)).await?;
        if via_daemon.is_none() {
            tracing::debug!(socket = %settings.socket.display(), "no daemon answers; opening the store directly");
            let registry = settings.open_registry()?;
            let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
            let task = tokio::spawn(async move {
                let (ok, failed) = api::pull_all(&registry, &images, platform.as_deref(), &tx).await;
                let _ = tx.send(ApiEvent::Done { ok, failed }).await;
                registry.store().flush_access_times().ok();
            });
            while let Some(e) = rx.recv().await {
                display.on(e);
            }
            task.await?;
        }
        anyhow::Ok(())
    })?;
    Ok(if display.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
