//! The daemon's local API on a unix socket, and the client side CLI commands use to reach it.
//!
//! Commands that touch the store (`thaw pull`, `thaw preheat`, later `thaw run`) first try the
//! socket; when no daemon answers they open the store themselves, under its lock.
//!
//! Endpoints (JSON; long operations stream newline-delimited JSON events):
//! - `GET  /v1/status`  — version, listen address, data directory, store statistics
//! - `POST /v1/pull`    — `{"reference": "...", "platform": null}` → events, then `done` or `error`
//! - `POST /v1/preheat` — `{"references": ["...", ...]}` → events per image, then `done`

use std::net::SocketAddr;
use std::path::Path;
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

/// Binds the socket, replacing a stale socket file that nobody listens on.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another thaw daemon is answering on {}; stop it or choose another --socket", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("cannot create the API socket {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    // Only the daemon's own user may drive it: the API can fill the store and start sandboxes.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

pub async fn serve(listener: UnixListener, state: Arc<ApiState>, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/pull", post(pull))
        .route("/v1/preheat", post(preheat))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "local API stopped");
    }
}

async fn status(State(st): State<Arc<ApiState>>) -> Response {
    let s = st.registry.store().stats();
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "listen": st.listen.to_string(),
        "data": st.settings.data,
        "store": { "blobs": s.blobs, "bytes": s.bytes, "capacity": s.capacity, "pinned_bytes": s.pinned_bytes, "evictions": s.evictions },
    }))
    .into_response()
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

/// Client side: sends `body` to `path` on the daemon's socket and calls `on_event` per line.
/// Returns `Ok(None)` when no daemon listens there.
pub async fn call_streaming(
    socket: &Path,
    path: &str,
    body: serde_json::Value,
    mut on_event: impl FnMut(ApiEvent),
) -> anyhow::Result<Option<()>> {
    let stream = match tokio::net::UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::post(path)
        .header("host", "thaw")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
    let resp = sender.send_request(req).await.context("the daemon closed the API connection")?;
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
