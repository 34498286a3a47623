//! `thaw fn`: deploy, invoke, list and remove functions on the running daemon (over its local
//! API; see `api.rs` for the endpoints). Functions live in the daemon: every subcommand needs a
//! `thaw serve` with a `[sandbox]` section for this data directory.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use super::api::{self, InvokeResponse};
use super::sandboxes::{FunctionDef, FunctionInfo, PythonDef};
use super::serve::{CommonArgs, Settings};

/// Where the daemon is. (`--data` is the payload of `thaw fn invoke`, so the data directory is
/// `--data-dir` here.)
#[derive(Debug, Args, Clone)]
pub struct DaemonArgs {
    /// TOML configuration file (to find the daemon's data directory and socket).
    #[arg(long, env = "THAW_CONFIG")]
    pub config: Option<PathBuf>,
    /// The daemon's data directory.
    #[arg(long = "data-dir", env = "THAW_DATA")]
    pub data_dir: Option<PathBuf>,
    /// The daemon's API socket.
    #[arg(long, env = "THAW_SOCKET")]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum FnCommand {
    /// Deploy (or replace) a function.
    Deploy(Box<DeployArgs>),
    /// Invoke a function with a payload on its stdin; prints its stdout, exits with its status.
    Invoke(InvokeArgs),
    /// List deployed functions.
    List(ListArgs),
    /// Remove a function.
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Function name (letters, digits, '.', '_', '-').
    pub name: String,
    /// A root filesystem directory, an OCI layout image `oci:PATH[:TAG]`, or `docker://REF`
    /// (pulled through the daemon's mirror).
    #[arg(long)]
    pub image: String,
    /// Language runtime; `python` runs --handler.
    #[arg(long, value_parser = ["python"])]
    pub runtime: Option<String>,
    /// Python handler as `module:function` or `/path/in/image.py:function`; called with the
    /// payload (bytes), its result is the output (bytes or str as is, anything else as JSON).
    /// A template interpreter imports it and --preload once; invocations are forked from it.
    #[arg(long, requires = "runtime")]
    pub handler: Option<String>,
    /// Modules imported before the handler, comma-separated.
    #[arg(long, value_delimiter = ',', requires = "runtime")]
    pub preload: Vec<String>,
    /// Interpreter: its absolute path inside the image.
    #[arg(long, requires = "runtime", default_value = "/usr/bin/python3")]
    pub interpreter: String,
    #[command(flatten)]
    pub limits: super::run::LimitArgs,
    /// Ready sandboxes kept for this function.
    #[arg(long)]
    pub depth: Option<usize>,
    /// Longest run of one invocation, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Environment variables `KEY=VALUE`.
    #[arg(long, short = 'e')]
    pub env: Vec<String>,
    /// `none` (loopback only, the default) or `bridge` (eth0 on the daemon's bridge).
    #[arg(long, value_name = "none|bridge")]
    pub network: Option<thaw_sandbox::net::NetworkMode>,
    /// User the function runs as, `UID[:GID]` (the image's `User` when unset). In a Python
    /// function's template these are ids of the template's own user namespace.
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// The command of a command function (after `--`): run per invocation, payload on stdin.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InvokeArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    pub name: String,
    /// The payload; stdin is read when not given.
    #[arg(long)]
    pub data: Option<String>,
    /// Print where the time went to stderr.
    #[arg(long)]
    pub timings: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    pub name: String,
}

pub fn run(cmd: FnCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cmd {
        FnCommand::Deploy(a) => {
            let def = definition(&a)?;
            let (_, body) = rt.block_on(request(&a.daemon, "POST", "/v1/functions", serde_json::to_vec(&def)?))?;
            let info: FunctionInfo = serde_json::from_slice(&body).context("the daemon's answer is not a function listing")?;
            println!("deployed {} ({}, depth {})", info.name, info.kind, info.depth);
            Ok(ExitCode::SUCCESS)
        }
        FnCommand::Invoke(a) => {
            let payload = match &a.data {
                Some(d) => d.clone().into_bytes(),
                None => {
                    let mut v = Vec::new();
                    std::io::stdin().read_to_end(&mut v).context("reading the payload from stdin")?;
                    v
                }
            };
            let t = std::time::Instant::now();
            let path = format!("/v1/functions/{}/invoke", a.name);
            let (_, body) = rt.block_on(request(&a.daemon, "POST", &path, payload))?;
            let elapsed = t.elapsed();
            let r: InvokeResponse = serde_json::from_slice(&body).context("the daemon's answer is not an invocation result")?;
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD;
            std::io::stdout().write_all(&b64.decode(&r.stdout).context("stdout is not base64")?)?;
            std::io::stderr().write_all(&b64.decode(&r.stderr).context("stderr is not base64")?)?;
            if a.timings {
                let ms = |us: u64| us as f64 / 1e3;
                eprintln!("thaw fn invoke timings ({}):", if r.pooled { "pooled sandbox" } else { "built on demand: the pool was empty" });
                for (i, (n, us)) in r.stages.iter().enumerate() {
                    let when = if i < r.critical_from { " (ahead of time)" } else { "" };
                    eprintln!("  {n:<28} {:>9.3} ms{when}", ms(*us));
                }
                eprintln!("  {:<28} {:>9.3} ms", "request_to_exec", ms(r.to_exec_us));
                eprintln!("  {:<28} {:>9.3} ms", "daemon_total", ms(r.total_us));
                eprintln!("  {:<28} {:>9.3} ms", "client_daemon_trip", ms((elapsed.as_micros() as u64).saturating_sub(r.total_us)));
                eprintln!("  {:<28} {:>9.3} ms", "client_total", elapsed.as_secs_f64() * 1e3);
            }
            Ok(ExitCode::from(r.exit_code.clamp(0, 255) as u8))
        }
        FnCommand::List(a) => {
            let (_, body) = rt.block_on(request(&a.daemon, "GET", "/v1/functions", Vec::new()))?;
            let list: Vec<FunctionInfo> = serde_json::from_slice(&body).context("the daemon's answer is not a function list")?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<24} {:<8} {:>5} {:>5} {:>11} {:>8}  IMAGE", "NAME", "KIND", "DEPTH", "READY", "INVOCATIONS", "FAILURES");
                for f in list {
                    println!("{:<24} {:<8} {:>5} {:>5} {:>11} {:>8}  {}", f.name, f.kind, f.depth, f.ready, f.invocations, f.failures, f.image);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        FnCommand::Rm(a) => {
            rt.block_on(request(&a.daemon, "DELETE", &format!("/v1/functions/{}", a.name), Vec::new()))?;
            println!("removed {}", a.name);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The image as the daemon must see it: an absolute path.
fn absolute_image(image: &str) -> anyhow::Result<String> {
    if image.starts_with("docker://") {
        return Ok(image.to_string());
    }
    if image.starts_with("oci:") {
        let r = thaw_oci::layout::LayoutRef::parse(image)?;
        let path = std::fs::canonicalize(&r.path).with_context(|| format!("{image}: no OCI layout at {}", r.path.display()))?;
        return Ok(match r.tag {
            Some(t) => format!("oci:{}:{t}", path.display()),
            None => format!("oci:{}", path.display()),
        });
    }
    let p = std::fs::canonicalize(image).with_context(|| format!("{image} is neither a directory nor an image name (oci:PATH[:TAG])"))?;
    Ok(p.display().to_string())
}

fn definition(a: &DeployArgs) -> anyhow::Result<FunctionDef> {
    let python = match a.runtime.as_deref() {
        Some("python") => {
            let handler = a.handler.clone().context("--runtime python needs --handler module:function")?;
            Some(PythonDef { handler, preload: a.preload.iter().filter(|m| !m.is_empty()).cloned().collect(), interpreter: a.interpreter.clone() })
        }
        Some(other) => bail!("unknown runtime {other}; thaw knows python"),
        None => None,
    };
    let (memory_bytes, pids_max, cpu_millis) = a.limits.resolve()?;
    Ok(FunctionDef {
        name: a.name.clone(),
        image: absolute_image(&a.image)?,
        command: a.command.clone(),
        python,
        env: a.env.clone(),
        memory_bytes,
        pids_max,
        cpu_millis,
        depth: a.depth,
        timeout_ms: a.timeout.map(|t| t.as_millis() as u64),
        network: a.network,
        user: a.user.as_deref().map(thaw_trace::files::parse_user).transpose().map_err(anyhow::Error::msg)?,
    })
}

/// One API call; an error answer becomes an error with the daemon's message.
async fn request(d: &DaemonArgs, method: &str, path: &str, body: Vec<u8>) -> anyhow::Result<(u16, Vec<u8>)> {
    let common = CommonArgs { config: d.config.clone(), data: d.data_dir.clone(), socket: d.socket.clone(), ..Default::default() };
    let settings = Settings::resolve(&common, None)?;
    let ctype = if path.ends_with("/invoke") { "application/octet-stream" } else { "application/json" };
    let Some((status, body)) = api::call(&settings.socket, method, path, ctype, body).await? else {
        bail!(
            "no thaw daemon answers on {}: functions live in the daemon; start `thaw serve` with a [sandbox] section (or point --data-dir/--socket at it)",
            settings.socket.display()
        );
    };
    if !(200..300).contains(&status) {
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        bail!("the daemon answered {status}: {msg}");
    }
    Ok((status, body))
}
