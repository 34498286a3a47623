//! File-level recording (`thaw trace files`, issue 3 item 3): which files of an image a
//! container opens, executes and reads until it is ready, mapped to the layer that provides each.
//!
//! - [`layers`]: overlayfs' lookup rules over unpacked layer directories (path -> layer) and the
//!   image inventory (files and bytes per layer in the merged view);
//! - [`summary`]: records -> the hot-file list, shares of files and bytes, per-layer spread; also
//!   reads `thaw trace files` output back for `thaw trace report --files`;
//! - [`record`]: the recorder itself — an overlay root, an OCI runtime (runc or crun) started in
//!   two steps (`create`, fanotify mark, `start`), events read until the container is ready.
//!
//! What is measured, honestly: see [`summary::BYTES_DEFINITION`].
//!
//! Unlike the rest of this crate, [`record`] runs things: it mounts, calls an OCI runtime and
//! reads fanotify. It needs root and must be called from a single-threaded process (it moves the
//! process into a private mount namespace).

pub mod layers;
pub mod record;
pub mod summary;

use std::path::PathBuf;

pub use layers::{LayerDir, LayerSet, Provider};
pub use record::{record, ProcessSpec, Ready, RecordSpec, Runtime};
pub use summary::{load, Aggregator, FileStat, FilesSummary, LayerStat, ReadyBy, BYTES_DEFINITION};

/// Errors of file-level recording and of reading its output back.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{what}: {source}")]
    Sys { what: String, source: nix::errno::Errno },
    /// The private mount namespace needs a single-threaded caller.
    #[error("the recorder must start in a single-threaded process (it enters a private mount namespace); call it before any thread is spawned")]
    Threaded,
    #[error("{runtime} {step} failed ({status}): {stderr}")]
    Runtime { runtime: String, step: &'static str, status: String, stderr: String },
    #[error("the container was not ready within {timeout:?} (waiting for {waiting_for}); raise --timeout or check the readiness condition")]
    Timeout { timeout: std::time::Duration, waiting_for: String },
    #[error("the container's command ended ({status}) before it was ready (waiting for {waiting_for})")]
    ExitedEarly { status: String, waiting_for: String },
    #[error("interrupted by a signal; the container was deleted and its root unmounted")]
    Interrupted,
    #[error("{path}: {why}")]
    BadInput { path: PathBuf, why: String },
    #[error("bad recording request: {0}")]
    BadSpec(String),
}

impl FilesError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FilesError {
        let what = what.into();
        move |source| FilesError::Io { what, source }
    }

    pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> FilesError {
        let what = what.into();
        move |source| FilesError::Sys { what, source }
    }
}

/// The process an image's config describes: `Entrypoint` + `Cmd`, `Env`, `WorkingDir`, `User`
/// (numeric `UID[:GID]` or `root`; names would need the image's /etc/passwd).
pub fn process_from_image_config(config: &[u8]) -> Result<ProcessSpec, String> {
    let v: serde_json::Value = serde_json::from_slice(config).map_err(|e| format!("the image config is not JSON: {e}"))?;
    let c = &v["config"];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
    };
    let mut p = ProcessSpec::default();
    let env = strings(&c["Env"]);
    if !env.is_empty() {
        p.env = env;
    }
    p.args = strings(&c["Entrypoint"]);
    p.args.extend(strings(&c["Cmd"]));
    if let Some(w) = c["WorkingDir"].as_str().filter(|w| !w.is_empty()) {
        p.cwd = w.to_string();
    }
    if let Some(u) = c["User"].as_str().filter(|u| !u.is_empty()) {
        (p.uid, p.gid) = parse_user(u)?;
    }
    Ok(p)
}

/// `UID[:GID]` or `root`.
pub fn parse_user(u: &str) -> Result<(u32, u32), String> {
    if u == "root" {
        return Ok((0, 0));
    }
    let (a, b) = u.split_once(':').unwrap_or((u, u));
    let bad = || format!("user {u:?}: expected numeric UID[:GID] or root");
    Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_config_gives_the_process() {
        let p = process_from_image_config(
            br#"{"config":{"Env":["PATH=/usr/bin","A=1"],"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],"WorkingDir":"/srv","User":"1000:100"}}"#,
        )
        .unwrap();
        assert_eq!(p.args, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(p.env, ["PATH=/usr/bin", "A=1"]);
        assert_eq!((p.cwd.as_str(), p.uid, p.gid), ("/srv", 1000, 100));
        let d = process_from_image_config(br#"{"config":{}}"#).unwrap();
        assert!(d.args.is_empty() && d.cwd == "/" && d.env.iter().any(|e| e.starts_with("PATH=")));
        assert!(process_from_image_config(br#"{"config":{"User":"alice"}}"#).is_err());
        assert!(process_from_image_config(b"nope").is_err());
    }
}
