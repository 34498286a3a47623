//! The daemon's local API on a unix socket, and the client side CLI commands use to reach it.
//!
//! Commands that touch the store (`thaw pull`, `thaw preheat`) first try the socket; when no
//! daemon answers they open the store themselves, under its lock. (`thaw run` uses the daemon's
//! separate sandbox socket the same way.)
//!
//! Endpoints (JSON; long operations stream newline-delimited JSON events):
//! - `GET  /v1/status`  — version, listen address, data directory, store statistics, and for a
//!   daemon with sandboxes its pools and functions
//! - `POST /v1/pull`    — `{"reference": "...", "platform": null}` → events, then `done` or `error`
//! - `POST /v1/preheat` — `{"references": ["...", ...]}` → events per image, then `done`
//!
//! Functions (a daemon with a `[sandbox]` section; others answer 409):
//! - `GET    /v1/functions`             — `[{"name", "image", "kind", "depth", "ready", ...}]`
//! - `POST   /v1/functions`             — a function definition (JSON) → its listing entry
//! - `DELETE /v1/functions/{name}`      — 204
//! - `POST   /v1/functions/{name}/invoke` — the raw request body is the payload (at most 6 MiB,
//!   given to the function on stdin) → `{"status": {"Code": 0}, "exit_code": 0, "stdout": BASE64,
//!   "stderr": BASE64, "pooled": true, "stages": [[name, us], ...], "critical_from": N,
//!   "total_us": N}`. Output is base64 because a function's stdout is bytes, not text.
//!
//! The sandbox service (`thaw run` through the daemon) is not on this socket: it passes file
//! descriptors, see `thaw_sandbox::service`.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use thaw_oci::Reference;
use thaw_registry::pull::PullEvent;
use thaw_registry::Registry;
use tokio::net::UnixListener;

use super::serve::Settings;

pub struct ApiState {
    pub registry: Registry,
    pub listen: SocketAddr,
    pub settings: Settings,
    /// `None` for a daemon without a `[sandbox]` section.
    pub sandboxes: Option<Arc<super::sandboxes::Host>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PullRequest {
    pub reference: String,
    #[serde(default)]
    pub platform: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PreheatRequest {
    pub references: Vec<String>,
    #[serde(default)]
    pub platform: Option<String>,
}

/// One line of a streamed answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ApiEvent {
    Resolved { reference: String, digest: String, blobs: usize, total_bytes: u64 },
    Cached { reference: String, digest: String, size: u64 },
    Progress { reference: String, digest: String, done: u64, size: u64 },
    Stored { reference: String, digest: String, size: u64 },
    Pulled { summary: thaw_registry::pull::PullSummary },
    Error { reference: String, message: String },
    Done { ok: usize, failed: usize },
}

pub fn event_of(reference: &str, e: PullEvent) -> ApiEvent {
    let reference = reference.to_string();
    match e {
        PullEvent::Resolved { digest, blobs, total_bytes } => ApiEvent::Resolved { reference, digest, blobs, total_bytes },
        PullEvent::Cached { digest, size } => ApiEvent::Cached { reference, digest, size },
        PullEvent::Progress { digest, done, size } => ApiEvent::Progress { reference, digest, done, size },
        PullEvent::Stored { digest, size } => ApiEvent::Stored { reference, digest, size },
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The directory for API sockets whose `<data>/api.sock` path is too long for a unix socket
/// address: `$XDG_RUNTIME_DIR/thaw` when the session has one (the user's private runtime
/// directory), else `/run/thaw` as root, else `/tmp/thaw-<uid>`.
///
/// The name is predictable on purpose (a client must find the daemon's socket without asking it),
/// which is why [`bind`] creates the directory 0700 and refuses one owned by another user: in a
/// shared /tmp, whoever creates the directory first controls what is in it, and could otherwise
/// swap the socket for one of their own and receive this user's requests.
pub fn runtime_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|p| p.is_absolute()) {
        return x.join("thaw");
    }
    match euid() {
        0 => PathBuf::from("/run/thaw"),
        uid => PathBuf::from(format!("/tmp/thaw-{uid}")),
    }
}

/// Makes `dir` a directory only this user can enter: creates it 0700 if missing, refuses it if
/// it is not a real directory or belongs to someone else, and takes group/other access away if
/// this user left any.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create the socket directory {}", dir.display())),
    }
    // lstat: a symlink planted in its place must not redirect us into a directory we did not check.
    let md = std::fs::symlink_metadata(dir).with_context(|| format!("cannot inspect the socket directory {}", dir.display()))?;
    if !md.file_type().is_dir() {
        anyhow::bail!("{} is not a directory (a symlink or file is in its place); remove it or choose another --socket", dir.display());
    }
    if md.uid() != euid() {
        anyhow::bail!(
            "the socket directory {} belongs to uid {}, not to this user (uid {}); someone else may have created it to intercept the API socket: remove it or choose another --socket",
            dir.display(),
            md.uid(),
            euid()
        );
    }
    if md.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (0700)", dir.display()))?;
    }
    Ok(())
}

/// Binds the socket, replacing a stale socket file of this user's that nobody listens on.
///
/// Only the daemon's own user may drive it (the API can fill the store and start sandboxes), and
/// connecting to a unix socket needs write permission on it. So the socket is never, not even
/// between bind and chmod, connectable by anyone else (see [`bind_with`]).
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    let l = bind_with(
        path,
        |p| std::os::unix::net::UnixStream::connect(p).is_ok(),
        |p| std::os::unix::net::UnixListener::bind(p).with_context(|| format!("cannot create the API socket {}", p.display())),
    )?;
    l.set_nonblocking(true)?;
    Ok(UnixListener::from_std(l)?)
}

/// The rules of [`bind`] for any kind of socket: the directory (private when it is the runtime
/// directory), a stale file replaced only if it is this user's socket and `alive` says nobody
/// answers on it. `create` binds the socket in a fresh 0700 directory beside `path`; the socket
/// is made 0600 there and then renamed into place, so at no moment can another user connect.
/// (Binding under umask 077 would do the same, but the umask is process-wide, and pool threads
/// that create files at that moment, unpacking a layer say, would get the stricter modes.)
pub fn bind_with<T>(
    path: &Path,
    alive: impl Fn(&Path) -> bool,
    create: impl FnOnce(&Path) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if dir == runtime_dir() {
            private_dir(dir)?;
        } else {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(md) => {
            if !md.file_type().is_socket() {
                anyhow::bail!("{} exists and is not a socket; remove it or choose another --socket", path.display());
            }
            if md.uid() != euid() {
                anyhow::bail!(
                    "the socket {} belongs to uid {}, not to this user (uid {}); refusing to replace it: its owner must remove it, or choose another --socket",
                    path.display(),
                    md.uid(),
                    euid()
                );
            }
            if alive(path) {
                anyhow::bail!("another thaw daemon is answering on {}; stop it or choose another --socket", path.display());
            }
            std::fs::remove_file(path).with_context(|| format!("cannot remove stale socket {}", path.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    let parent = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // tempfile makes the directory 0700; the short name keeps the staged path within the 107
    // bytes a socket address holds whenever the final one is.
    let staging = tempfile::Builder::new()
        .prefix(".s")
        .rand_bytes(4)
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a private directory in {} to bind the socket in", parent.display()))?;
    let staged = staging.path().join("s");
    let t = create(&staged)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private (0600)", staged.display()))?;
    std::fs::rename(&staged, path).with_context(|| format!("cannot move the socket into place at {}", path.display()))?;
    Ok(t)
}

pub async fn serve(listener: UnixListener, state: Arc<ApiState>, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/pull", post(pull))
        .route("/v1/preheat", post(preheat))
        .route("/v1/functions", get(fn_list).post(fn_deploy))
        .route("/v1/functions/{name}", axum::routing::delete(fn_remove))
        .route("/v1/functions/{name}/invoke", post(fn_invoke))
        .layer(axum::extract::DefaultBodyLimit::max(super::sandboxes::MAX_PAYLOAD))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "local API stopped");
    }
}

async fn status(State(st): State<Arc<ApiState>>) -> Response {
    let s = st.registry.store().stats();
    let sandboxes = st.sandboxes.as_ref().map(|h| h.status());
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "listen": st.listen.to_string(),
        "data": st.settings.data,
        "store": { "blobs": s.blobs, "bytes": s.bytes, "capacity": s.capacity, "pinned_bytes": s.pinned_bytes, "evictions": s.evictions },
        "sandbox": sandboxes,
    }))
    .into_response()
}

/// What `POST /v1/functions/{name}/invoke` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct InvokeResponse {
    pub status: thaw_sandbox::ExitStatus,
    /// The status as a shell reports it.
    pub exit_code: i32,
    /// Base64.
    pub stdout: String,
    /// Base64.
    pub stderr: String,
    pub pooled: bool,
    /// Stage name and microseconds.
    pub stages: Vec<(String, u64)>,
    /// Index of the first stage done after the request arrived.
    pub critical_from: usize,
    /// Request to exec, microseconds.
    pub to_exec_us: u64,
    /// The whole invocation in the daemon, microseconds.
    pub total_us: u64,
}

fn error(status: axum::http::StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn fn_error(e: super::sandboxes::FnError) -> Response {
    use super::sandboxes::FnError;
    let code = match &e {
        FnError::NotFound(_) => axum::http::StatusCode::NOT_FOUND,
        FnError::Invalid(_) => axum::http::StatusCode::BAD_REQUEST,
        FnError::Failed(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(code, e.to_string())
}

fn no_sandboxes() -> Response {
    error(
        axum::http::StatusCode::CONFLICT,
        "this daemon hosts no sandboxes: add a [sandbox] section to its configuration and restart it".into(),
    )
}

/// Runs blocking sandbox work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, super::sandboxes::FnError> + Send + 'static,
) -> Result<T, Box<Response>> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Box::new(fn_error(e))),
        Err(e) => Err(Box::new(error(axum::http::StatusCode::INTERNAL_SERVER_ERROR, format!("the function task failed: {e}")))),
    }
}

async fn fn_list(State(st): State<Arc<ApiState>>) -> Response {
    match &st.sandboxes {
        Some(h) => Json(h.list()).into_response(),
        None => no_sandboxes(),
    }
}

async fn fn_deploy(State(st): State<Arc<ApiState>>, Json(def): Json<super::sandboxes::FunctionDef>) -> Response {
    let Some(h) = st.sandboxes.clone() else { return no_sandboxes() };
    match blocking(move || h.deploy(def)).await {
        Ok(info) => Json(info).into_response(),
        Err(r) => *r,
    }
}

async fn fn_remove(State(st): State<Arc<ApiState>>, axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let Some(h) = st.sandboxes.clone() else { return no_sandboxes() };
    match blocking(move || h.remove(&name)).await {
        Ok(()) => axum::http::StatusCode::NO_CONTENT.into_response(),
        Err(r) => *r,
    }
}

async fn fn_invoke(State(st): State<Arc<ApiState>>, axum::extract::Path(name): axum::extract::Path<String>, payload: Bytes) -> Response {
    use base64::Engine as _;
    let Some(h) = st.sandboxes.clone() else { return no_sandboxes() };
    match blocking(move || h.invoke(&name, &payload)).await {
        Ok(inv) => {
            let o = inv.output;
            let b64 = base64::engine::general_purpose::STANDARD;
            Json(InvokeResponse {
                status: o.status,
                exit_code: o.status.shell_code(),
                stdout: b64.encode(&o.stdout),
                stderr: b64.encode(&o.stderr),
                pooled: o.timings.pooled,
                stages: o.timings.stages.iter().map(|(n, d)| (n.clone(), d.as_micros() as u64)).collect(),
                critical_from: o.timings.critical_from,
                to_exec_us: o.timings.to_exec.as_micros() as u64,
                total_us: inv.total.as_micros() as u64,
            })
            .into_response()
        }
        Err(r) => *r,
    }
}

fn ndjson(rx: tokio::sync::mpsc::Receiver<ApiEvent>) -> Response {
    let stream = tokio_stream_from(rx).map(|e| {
        let mut line = serde_json::to_vec(&e).unwrap_or_default();
        line.push(b'\n');
        Ok::<Bytes, std::convert::Infallible>(Bytes::from(line))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/x-ndjson"));
    resp
}

fn tokio_stream_from<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Pulls each reference in turn, sending events to `tx`. Returns (ok, failed).
pub async fn pull_all(registry: &Registry, refs: &[String], platform: Option<&str>, tx: &tokio::sync::mpsc::Sender<ApiEvent>) -> (usize, usize) {
    let (mut ok, mut failed) = (0, 0);
    for r in refs {
        let reference: Reference = match r.parse() {
            Ok(x) => x,
            Err(e) => {
                let _ = tx.send(ApiEvent::Error { reference: r.clone(), message: e.to_string() }).await;
                failed += 1;
                continue;
            }
        };
        let tx2 = tx.clone();
        let rr = r.clone();
        let result = registry.pull(&reference, platform, move |e| {
            let _ = tx2.try_send(event_of(&rr, e));
        }).await;
        match result {
            Ok(summary) => {
                ok += 1;
                let _ = tx.send(ApiEvent::Pulled { summary }).await;
            }
            Err(e) => {
                failed += 1;
                let _ = tx.send(ApiEvent::Error { reference: r.clone(), message: e.message }).await;
            }
        }
    }
    (ok, failed)
}

async fn pull(State(st): State<Arc<ApiState>>, Json(req): Json<PullRequest>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        let (ok, failed) = pull_all(&st.registry, std::slice::from_ref(&req.reference), req.platform.as_deref(), &tx).await;
        let _ = tx.send(ApiEvent::Done { ok, failed }).await;
    });
    ndjson(rx)
}

async fn preheat(State(st): State<Arc<ApiState>>, Json(req): Json<PreheatRequest>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        let (ok, failed) = pull_all(&st.registry, &req.references, req.platform.as_deref(), &tx).await;
        let _ = tx.send(ApiEvent::Done { ok, failed }).await;
    });
    ndjson(rx)
}

/// Refuses a socket someone else owns: it is not our daemon's and could answer with anything.
fn check_owner(socket: &Path) -> anyhow::Result<()> {
    if let Ok(md) = std::fs::symlink_metadata(socket) {
        if md.uid() != euid() {
            anyhow::bail!(
                "refusing to use the API socket {}: it belongs to uid {}, not to this user (uid {}); choose another --socket",
                socket.display(),
                md.uid(),
                euid()
            );
        }
    }
    Ok(())
}

/// Sends one request over the daemon's socket; `Ok(None)` when no daemon listens there.
async fn send(socket: &Path, method: &str, path: &str, content_type: &str, body: Vec<u8>) -> anyhow::Result<Option<hyper::Response<hyper::body::Incoming>>> {
    check_owner(socket)?;
    let stream = match tokio::net::UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "thaw")
        .header("content-type", content_type)
        .body(http_body_util::Full::new(Bytes::from(body)))?;
    Ok(Some(sender.send_request(req).await.context("the daemon closed the API connection")?))
}

/// Client side: one request with a whole body, the whole answer back as (status, body).
/// `Ok(None)` when no daemon listens there.
pub async fn call(socket: &Path, method: &str, path: &str, content_type: &str, body: Vec<u8>) -> anyhow::Result<Option<(u16, Vec<u8>)>> {
    let Some(resp) = send(socket, method, path, content_type, body).await? else { return Ok(None) };
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.context("reading the daemon's answer")?.to_bytes();
    Ok(Some((status, bytes.to_vec())))
}

/// Client side: sends `body` to `path` on the daemon's socket and calls `on_event` per line.
/// Returns `Ok(None)` when no daemon listens there.
pub async fn call_streaming(
    socket: &Path,
    path: &str,
    body: serde_json::Value,
    mut on_event: impl FnMut(ApiEvent),
) -> anyhow::Result<Option<()>> {
    let Some(resp) = send(socket, "POST", path, "application/json", serde_json::to_vec(&body)?).await? else { return Ok(None) };
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        anyhow::bail!("the daemon answered {status}: {}", String::from_utf8_lossy(&text));
    }
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(data) = frame.data_ref() {
            buf.extend_from_slice(data);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                let ev: ApiEvent = serde_json::from_slice(&line).context("the daemon sent an event this thaw does not understand")?;
                on_event(ev);
            }
        }
    }
    Ok(Some(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn private_dir_is_created_0700_and_tightened() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/thaw");
        private_dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        private_dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700, "group/other access is taken away");
    }

    #[test]
    fn private_dir_refuses_symlinks_and_files() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = private_dir(&link).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        let file = t.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(private_dir(&file).is_err());
    }

    #[test]
    fn private_dir_refuses_another_users_directory() {
        if euid() != 0 {
            assert!(std::env::var_os("CI").is_none(), "private_dir_refuses_another_users_directory needs root, and CI is set");
            eprintln!("skipping private_dir_refuses_another_users_directory: needs root to chown");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("thaw");
        std::fs::DirBuilder::new().mode(0o700).create(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
        let e = private_dir(&d).unwrap_err().to_string();
        assert!(e.contains("belongs to uid 65534"), "{e}");
        assert_eq!(std::fs::symlink_metadata(&d).unwrap().uid(), 65534, "left alone");
    }
}
