//! A fault-injecting upstream registry, in process, on an ephemeral 127.0.0.1 port.
//!
//! It serves the manifests and blobs a test gives it (the read half of the distribution API:
//! `/v2/`, manifests and blobs by GET and HEAD, single `Range` requests, tag lists) and can be told
//! to misbehave per kind of request ([`Kind`]): wrong bytes of the right length, a body cut after
//! N bytes, a resume answered with the whole blob, 429, 503, never answering, stalling mid-body,
//! or not listening at all ([`FakeUpstream::go_down`]). Every request is logged (method, path,
//! `Range`, whether it carried credentials), so a test can say exactly what reached the upstream.
//!
//! With [`FakeUpstream::enable_auth`] it follows the distribution token flow the way Docker Hub
//! does: every `/v2/` request needs a Bearer token, a request without a good one is answered 401
//! with `WWW-Authenticate: Bearer realm="http://127.0.0.1:P/token",service="fake",scope="repository:R:pull"`,
//! and `/token` issues tokens (opaque or JWT-shaped with `exp`) after checking optional Basic
//! credentials. A token grants only the repositories its holder may read at issue time (an ACL
//! per repository; public repositories are readable anonymously), and is checked against the
//! ACL again on every request, so revoking a user takes effect at once upstream — which is what
//! lets a test tell thaw's remembered grants from the upstream's current answer.
//!
//! Why a fake and not docker-registry: the real registry cannot be made to send wrong bytes, stall
//! at a chosen byte, or change its ACL between two requests, and its token mode needs an external
//! issuer. The real peers are tested elsewhere; this one exists to prove the failure paths.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::Engine;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

/// Which requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `/v2/<name>/manifests/<ref>`
    Manifest,
    /// `/v2/<name>/blobs/<digest>`
    Blob,
    /// `/token`
    Token,
}

/// How the fake answers a request of some [`Kind`].
///
/// Body faults (`WrongBytes`, `Truncate`, `IgnoreRange`, `Chunked`) only change GET bodies: a HEAD
/// is answered normally and does not consume a one-shot fault. `Status` and `Hang` apply to GET
/// and HEAD alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Honest answers; `Range` honoured with 206.
    Normal,
    /// The right status and length, different content (every byte flipped).
    WrongBytes,
    /// Announce the full length, send this many bytes, then break the connection.
    Truncate(u64),
    /// Answer a `Range` request with 200 and the whole blob, as some CDNs do.
    IgnoreRange,
    /// Honest bytes without `Content-Length` (chunked transfer encoding).
    Chunked,
    /// Answer with this status and the distribution error JSON (429 also sets `Retry-After`).
    Status(u16),
    /// Never send response headers.
    Hang,
}

/// A fault plus an optional stall point: with `stall_at = Some(n)` the body pauses after `n`
/// bytes until [`FakeUpstream::release`] is called (after the rule was applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub fault: Fault,
    pub stall_at: Option<u64>,
}

impl From<Fault> for Rule {
    fn from(fault: Fault) -> Rule {
        Rule { fault, stall_at: None }
    }
}

impl Fault {
    /// This fault, with the GET body pausing after `n` bytes until [`FakeUpstream::release`].
    pub fn stalled_at(self, n: u64) -> Rule {
        Rule { fault: self, stall_at: Some(n) }
    }
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    /// The `Authorization` scheme presented (`Bearer`, `Basic`), if any.
    pub auth: Option<String>,
    pub status: u16,
}

/// An image served by the fake (see [`FakeUpstream::put_image`]).
#[derive(Debug, Clone)]
pub struct FakeImage {
    pub repo: String,
    pub tag: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config_digest: String,
    pub config: Vec<u8>,
    /// (digest, bytes) of every layer, in manifest order.
    pub layers: Vec<(String, Vec<u8>)>,
}

struct Token {
    user: Option<String>,
    repos: HashSet<String>,
    expires: SystemTime,
}

#[derive(Default)]
struct Auth {
    enabled: bool,
    jwt: bool,
    token_ttl: Duration,
    users: HashMap<String, String>,
    public: HashSet<String>,
    acl: HashMap<String, HashSet<String>>,
    tokens: HashMap<String, Token>,
}

impl Auth {
    fn may_read(&self, user: Option<&str>, repo: &str) -> bool {
        self.public.contains(repo) || user.is_some_and(|u| self.acl.get(repo).is_some_and(|s| s.contains(u)))
    }
}

#[derive(Default)]
struct Content {
    /// digest -> (bytes, media type for manifests)
    objects: HashMap<String, (Bytes, Option<String>)>,
    /// repo -> digests it holds (manifests and blobs)
    members: HashMap<String, HashSet<String>>,
    /// (repo, tag) -> manifest digest
    tags: HashMap<(String, String), String>,
}

#[derive(Default)]
struct Faults {
    default: HashMap<Kind, Rule>,
    once: HashMap<Kind, VecDeque<Rule>>,
}

struct Shared {
    addr: Mutex<SocketAddr>,
    content: Mutex<Content>,
    faults: Mutex<Faults>,
    auth: Mutex<Auth>,
    log: Mutex<Vec<Logged>>,
    release: watch::Sender<u64>,
    /// Desired state of the listener; the server loop follows it.
    up: watch::Sender<bool>,
    listening: AtomicBool,
    token_seq: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not turn every later assertion into a poison error.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The fake registry. Dropping it stops its server thread and every connection.
pub struct FakeUpstream {
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeUpstream {
    pub fn start() -> FakeUpstream {
        let std_listener = StdListener::bind("127.0.0.1:0").expect("bind the fake upstream");
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (release, _) = watch::channel(0u64);
        let (up, _) = watch::channel(true);
        let shared = Arc::new(Shared {
            addr: Mutex::new(addr),
            content: Mutex::default(),
            faults: Mutex::default(),
            auth: Mutex::default(),
            log: Mutex::default(),
            release,
            up,
            listening: AtomicBool::new(true),
            token_seq: AtomicU64::new(1),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let sh = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(server_loop(sh, std_listener, stop_rx));
            // Connections still hanging (Hang faults) are dropped with the runtime.
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        FakeUpstream { shared, stop: Some(stop_tx), thread: Some(thread) }
    }

    pub fn addr(&self) -> SocketAddr {
        *lock(&self.shared.addr)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    // ------------------------------------------------------------------ content

    /// Adds a blob to `repo`; returns its digest.
    pub fn put_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = sha256_digest(data);
        let mut c = lock(&self.shared.content);
        c.objects.insert(d.clone(), (Bytes::copy_from_slice(data), None));
        c.members.entry(repo.to_string()).or_default().insert(d.clone());
        d
    }

    /// Adds a manifest to `repo` (and points `tag` at it); returns its digest.
    pub fn put_manifest(&self, repo: &str, tag: Option<&str>, media_type: &str, body: &[u8]) -> String {
        let d = sha256_digest(body);
        let mut c = lock(&self.shared.content);
        c.objects.insert(d.clone(), (Bytes::copy_from_slice(body), Some(media_type.to_string())));
        c.members.entry(repo.to_string()).or_default().insert(d.clone());
        if let Some(t) = tag {
            c.tags.insert((repo.to_string(), t.to_string()), d.clone());
        }
        d
    }

    /// Adds an OCI image (config + layers + manifest) to `repo` under `tag`. Layers are opaque
    /// bytes: nothing here unpacks them.
    pub fn put_image(&self, repo: &str, tag: &str, layers: &[Vec<u8>]) -> FakeImage {
        let mut layer_refs = Vec::new();
        let mut out_layers = Vec::new();
        for l in layers {
            let d = self.put_blob(repo, l);
            layer_refs.push(serde_json::json!({"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":d,"size":l.len()}));
            out_layers.push((d, l.clone()));
        }
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture":"amd64","os":"linux","config":{},
            "rootfs":{"type":"layers","diff_ids":out_layers.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>()},
            "history":[{"comment": format!("{repo}:{tag}")}]
        }))
        .unwrap();
        let config_digest = self.put_blob(repo, &config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":config_digest,"size":config.len()},
            "layers":layer_refs
        }))
        .unwrap();
        let manifest_digest = self.put_manifest(repo, Some(tag), "application/vnd.oci.image.manifest.v1+json", &manifest);
        FakeImage { repo: repo.into(), tag: tag.into(), manifest, manifest_digest, config_digest, config, layers: out_layers }
    }

    /// Points `tag` of `repo` at another manifest digest already in the repository.
    pub fn retag(&self, repo: &str, tag: &str, digest: &str) {
        lock(&self.shared.content).tags.insert((repo.to_string(), tag.to_string()), digest.to_string());
    }

    // ------------------------------------------------------------------ faults

    /// The behaviour for `kind` once the one-shot queue is empty.
    pub fn set(&self, kind: Kind, rule: impl Into<Rule>) {
        lock(&self.shared.faults).default.insert(kind, rule.into());
    }

    /// A behaviour for the next request of `kind` it applies to (queued in order).
    pub fn push_once(&self, kind: Kind, rule: impl Into<Rule>) {
        lock(&self.shared.faults).once.entry(kind).or_default().push_back(rule.into());
    }

    /// Back to honest answers for every kind, queues emptied.
    pub fn heal(&self) {
        let mut f = lock(&self.shared.faults);
        f.default.clear();
        f.once.clear();
    }

    /// Lets every body stalled so far continue.
    pub fn release(&self) {
        self.shared.release.send_modify(|g| *g += 1);
    }

    /// Closes the listener and every open connection: the upstream is unreachable (connection
    /// refused) until [`FakeUpstream::come_up`]. Returns once it is so.
    pub fn go_down(&self) {
        self.shared.up.send_replace(false);
        self.wait_listening(false);
    }

    /// Listens again on the same port.
    pub fn come_up(&self) {
        self.shared.up.send_replace(true);
        self.wait_listening(true);
    }

    fn wait_listening(&self, want: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.shared.listening.load(Ordering::SeqCst) != want {
            assert!(Instant::now() < deadline, "the fake upstream did not {}", if want { "come up" } else { "go down" });
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    // ------------------------------------------------------------------ request log

    pub fn log(&self) -> Vec<Logged> {
        lock(&self.shared.log).clone()
    }

    /// Requests with this method and exact path.
    pub fn count(&self, method: &str, path: &str) -> usize {
        lock(&self.shared.log).iter().filter(|l| l.method == method && l.path == path).count()
    }

    /// Requests below `/v2/` (everything but the token service).
    pub fn registry_requests(&self) -> usize {
        lock(&self.shared.log).iter().filter(|l| l.path.starts_with("/v2")).count()
    }

    pub fn clear_log(&self) {
        lock(&self.shared.log).clear();
    }

    // ------------------------------------------------------------------ auth

    /// Turns the token flow on. Tokens live `token_ttl`; `jwt` makes them JWT-shaped with `exp`.
    pub fn enable_auth(&self, jwt: bool, token_ttl: Duration) {
        let mut a = lock(&self.shared.auth);
        a.enabled = true;
        a.jwt = jwt;
        a.token_ttl = token_ttl;
    }

    pub fn add_user(&self, user: &str, password: &str) {
        lock(&self.shared.auth).users.insert(user.into(), password.into());
    }

    /// Readable anonymously.
    pub fn make_public(&self, repo: &str) {
        lock(&self.shared.auth).public.insert(repo.into());
    }

    /// No longer readable anonymously (tokens already issued for it stop working for anonymous
    /// holders at once).
    pub fn make_private(&self, repo: &str) {
        lock(&self.shared.auth).public.remove(repo);
    }

    pub fn allow(&self, repo: &str, user: &str) {
        lock(&self.shared.auth).acl.entry(repo.into()).or_default().insert(user.into());
    }

    /// Takes `user`'s access to `repo` away; tokens already issued stop working for it at once.
    pub fn revoke(&self, repo: &str, user: &str) {
        if let Some(s) = lock(&self.shared.auth).acl.get_mut(repo) {
            s.remove(user);
        }
    }

    /// Whether the ACL lets `user` (None = anonymous) read `repo` right now.
    pub fn may_read(&self, user: Option<&str>, repo: &str) -> bool {
        lock(&self.shared.auth).may_read(user, repo)
    }

    /// The token endpoint's URL.
    pub fn realm(&self) -> String {
        format!("{}/token", self.url())
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        // Unstick stalled bodies so their tasks end with the runtime.
        self.release();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------- server

async fn server_loop(sh: Arc<Shared>, first: StdListener, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let router = Router::new().route("/{*rest}", any(handle)).route("/", any(handle)).with_state(sh.clone());
    let mut up_rx = sh.up.subscribe();
    let mut std_listener = Some(first);
    loop {
        let listener = match std_listener.take() {
            Some(l) => tokio::net::TcpListener::from_std(l).unwrap(),
            None => {
                let addr = *lock(&sh.addr);
                // tokio sets SO_REUSEADDR, so the port comes back although closed connections
                // linger in TIME_WAIT; retry briefly in case the kernel is slow to let go.
                let mut tries = 0;
                loop {
                    match tokio::net::TcpListener::bind(addr).await {
                        Ok(l) => break l,
                        Err(e) if tries < 100 => {
                            tries += 1;
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("the fake upstream cannot listen on {addr} again: {e}"),
                    }
                }
            }
        };
        sh.listening.store(true, Ordering::SeqCst);
        // Every connection of this listening period ends when the upstream goes down.
        let (kill_tx, kill_rx) = watch::channel(false);
        loop {
            tokio::select! {
                _ = &mut stop => {
                    let _ = kill_tx.send(true);
                    return;
                }
                changed = up_rx.changed() => {
                    if changed.is_err() || !*up_rx.borrow_and_update() {
                        break;
                    }
                }
                acc = listener.accept() => {
                    let Ok((tcp, _peer)) = acc else { continue };
                    let router = router.clone();
                    let mut kill = kill_rx.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let router = router.clone();
                            async move {
                                use tower::ServiceExt;
                                router.oneshot(req.map(Body::new)).await
                            }
                        });
                        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                        tokio::select! {
                            _ = conn => {}
                            _ = kill.wait_for(|k| *k) => {}
                        }
                    });
                }
            }
        }
        drop(listener);
        let _ = kill_tx.send(true);
        sh.listening.store(false, Ordering::SeqCst);
        // Wait to be brought back up (or stopped).
        loop {
            tokio::select! {
                _ = &mut stop => return,
                changed = up_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *up_rx.borrow_and_update() {
                        break;
                    }
                }
            }
        }
    }
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors":[{"code":code,"message":message,"detail":null}]});
    (status, axum::Json(body)).into_response()
}

fn status_code_name(status: u16) -> &'static str {
    match status {
        401 => "UNAUTHORIZED",
        403 => "DENIED",
        404 => "NAME_UNKNOWN",
        429 => "TOOMANYREQUESTS",
        _ => "UNAVAILABLE",
    }
}

async fn handle(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers = req.headers().clone();
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let auth_scheme = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_whitespace().next())
        .map(str::to_string);
    let resp = route(&sh, &method, &path, &query, &headers).await;
    lock(&sh.log).push(Logged { method: method.to_string(), path, range, auth: auth_scheme, status: resp.status().as_u16() });
    resp
}

/// The rule for the next request of `kind`: a queued one-shot rule if one applies, else the
/// default. Body faults are not consumed by HEADs.
fn next_rule(sh: &Shared, kind: Kind, method: &Method) -> Rule {
    let mut f = lock(&sh.faults);
    let head = *method == Method::HEAD;
    if let Some(q) = f.once.get_mut(&kind) {
        if let Some(r) = q.front() {
            let applies = !head || matches!(r.fault, Fault::Status(_) | Fault::Hang);
            if applies {
                return q.pop_front().unwrap();
            }
        }
    }
    f.default.get(&kind).cloned().unwrap_or(Rule { fault: Fault::Normal, stall_at: None })
}

async fn route(sh: &Arc<Shared>, method: &Method, path: &str, query: &str, headers: &HeaderMap) -> Response {
    if path == "/token" {
        return token(sh, method, query, headers).await;
    }
    let Some(rest) = path.strip_prefix("/v2/").or_else(|| (path == "/v2").then_some("")) else {
        return error_response(StatusCode::NOT_FOUND, "UNSUPPORTED", "not a registry endpoint");
    };
    if rest.is_empty() {
        if lock(&sh.auth).enabled && bearer_user(sh, headers, None).is_none() {
            return challenge(sh, None);
        }
        return axum::Json(serde_json::json!({})).into_response();
    }
    let (repo, kind, reference) = if let Some(i) = rest.rfind("/manifests/") {
        (&rest[..i], Some(Kind::Manifest), &rest[i + "/manifests/".len()..])
    } else if let Some(i) = rest.rfind("/blobs/") {
        (&rest[..i], Some(Kind::Blob), &rest[i + "/blobs/".len()..])
    } else if let Some(r) = rest.strip_suffix("/tags/list") {
        (r, None, "")
    } else {
        return error_response(StatusCode::NOT_FOUND, "UNSUPPORTED", "not a registry endpoint");
    };
    if lock(&sh.auth).enabled && bearer_user(sh, headers, Some(repo)).is_none() {
        return challenge(sh, Some(repo));
    }
    let Some(kind) = kind else {
        let c = lock(&sh.content);
        let mut tags: Vec<&String> = c.tags.keys().filter(|(r, _)| r == repo).map(|(_, t)| t).collect();
        tags.sort();
        return axum::Json(serde_json::json!({"name": repo, "tags": tags})).into_response();
    };
    if *method != Method::GET && *method != Method::HEAD {
        return error_response(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "the fake upstream is read-only");
    }
    let rule = next_rule(sh, kind, method);
    match rule.fault {
        Fault::Hang => return std::future::pending::<Response>().await,
        Fault::Status(s) => {
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let mut resp = error_response(status, status_code_name(s), "injected by the fake upstream");
            if s == 429 {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            return resp;
        }
        _ => {}
    }
    // Look the object up.
    let found = {
        let c = lock(&sh.content);
        let digest = if kind == Kind::Manifest && !reference.contains(':') {
            c.tags.get(&(repo.to_string(), reference.to_string())).cloned()
        } else {
            Some(reference.to_string())
        };
        digest.and_then(|d| {
            let member = c.members.get(repo).is_some_and(|m| m.contains(&d));
            let obj = c.objects.get(&d)?;
            let right_kind = (kind == Kind::Manifest) == obj.1.is_some();
            (member && right_kind).then(|| (d, obj.0.clone(), obj.1.clone()))
        })
    };
    let Some((digest, data, media_type)) = found else {
        let code = if kind == Kind::Manifest { "MANIFEST_UNKNOWN" } else { "BLOB_UNKNOWN" };
        return error_response(StatusCode::NOT_FOUND, code, "unknown to the fake upstream");
    };
    let total = data.len() as u64;
    // Range, when honoured.
    let mut status = StatusCode::OK;
    let (mut start, mut end) = (0u64, total);
    if let (Some(r), false) = (headers.get(header::RANGE).and_then(|v| v.to_str().ok()), rule.fault == Fault::IgnoreRange) {
        match parse_range(r, total) {
            Some((s, e)) => {
                status = StatusCode::PARTIAL_CONTENT;
                start = s;
                end = e;
            }
            None => {
                let mut resp = error_response(StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID", "bad range");
                resp.headers_mut().insert(header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes */{total}")).unwrap());
                return resp;
            }
        }
    }
    let mut resp_headers = HeaderMap::new();
    resp_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(media_type.as_deref().unwrap_or("application/octet-stream")).unwrap(),
    );
    resp_headers.insert("docker-content-digest", HeaderValue::from_str(&digest).unwrap());
    resp_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        resp_headers.insert(header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes {}-{}/{}", start, end - 1, total)).unwrap());
    }
    if *method == Method::HEAD {
        resp_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
        let mut resp = Response::new(Body::empty());
        *resp.headers_mut() = resp_headers;
        return resp;
    }
    let mut slice = data.slice(start as usize..end as usize);
    if rule.fault == Fault::WrongBytes {
        slice = Bytes::from(slice.iter().map(|b| b ^ 0xa5).collect::<Vec<u8>>());
    }
    let cut = match rule.fault {
        Fault::Truncate(n) => Some(n.min(slice.len() as u64) as usize),
        _ => None,
    };
    if rule.fault != Fault::Chunked {
        resp_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(slice.len() as u64));
    }
    let body = body_stream(slice, cut, rule.stall_at, sh.release.subscribe());
    let mut resp = Response::new(Body::from_stream(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = resp_headers;
    resp
}

/// The body in 64 KiB pieces; pauses at `stall_at` until released; ends with an error (which
/// makes hyper drop the connection) after `cut` bytes.
fn body_stream(
    data: Bytes,
    cut: Option<usize>,
    stall_at: Option<u64>,
    release: watch::Receiver<u64>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    const PIECE: usize = 64 * 1024;
    let armed_at = *release.borrow();
    let limit = cut.unwrap_or(data.len());
    let stall = stall_at.map(|s| (s as usize).min(limit));
    futures::stream::unfold((0usize, false, release), move |(pos, stalled, mut rel)| {
        let data = data.clone();
        async move {
            if !stalled && stall == Some(pos) {
                // Wait for a release issued after this body started.
                let _ = rel.wait_for(|g| *g > armed_at).await;
                return Some((Ok(Bytes::new()), (pos, true, rel)));
            }
            if pos >= limit {
                if cut.is_some() && pos < data.len() {
                    // Let hyper flush what it holds first: on a body error it closes the
                    // connection and drops its unwritten buffer, and "cut after N bytes" must
                    // mean N bytes reached the client.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Some((Err(std::io::Error::other("cut by the fake upstream")), (data.len() + 1, true, rel)));
                }
                return None;
            }
            let mut next = (pos + PIECE).min(limit);
            if let Some(s) = stall {
                if !stalled && pos < s && next > s {
                    next = s;
                }
            }
            Some((Ok(data.slice(pos..next)), (next, stalled, rel)))
        }
    })
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` -> [start, end).
fn parse_range(v: &str, total: u64) -> Option<(u64, u64)> {
    let spec = v.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        return (n > 0 && total > 0).then(|| (total.saturating_sub(n), total));
    }
    let s: u64 = a.parse().ok()?;
    let e = if b.is_empty() { total } else { b.parse::<u64>().ok()?.saturating_add(1).min(total) };
    (s < e).then_some((s, e))
}

fn challenge(sh: &Shared, repo: Option<&str>) -> Response {
    let addr = *lock(&sh.addr);
    let mut v = format!("Bearer realm=\"http://{addr}/token\",service=\"fake\"");
    if let Some(r) = repo {
        v.push_str(&format!(",scope=\"repository:{r}:pull\""));
    }
    let mut resp = error_response(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "authentication required");
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_str(&v).unwrap());
    resp
}

/// The user a request's Bearer token stands for (`Some(None)` = anonymous token), when the token
/// is known, unexpired, covers `repo` and the ACL still lets its holder read it.
fn bearer_user(sh: &Shared, headers: &HeaderMap, repo: Option<&str>) -> Option<Option<String>> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let tok = v.strip_prefix("Bearer ")?.trim();
    let a = lock(&sh.auth);
    let t = a.tokens.get(tok)?;
    if t.expires <= SystemTime::now() {
        return None;
    }
    if let Some(r) = repo {
        if !t.repos.contains(r) || !a.may_read(t.user.as_deref(), r) {
            return None;
        }
    }
    Some(t.user.clone())
}

async fn token(sh: &Arc<Shared>, method: &Method, query: &str, headers: &HeaderMap) -> Response {
    let rule = next_rule(sh, Kind::Token, method);
    match rule.fault {
        Fault::Hang => return std::future::pending::<Response>().await,
        Fault::Status(s) => {
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return error_response(status, status_code_name(s), "injected by the fake upstream");
        }
        _ => {}
    }
    // Basic credentials, when given, must be right.
    let user = match headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(v) => {
            let Some(b64) = v.strip_prefix("Basic ") else {
                return error_response(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "the token service takes Basic credentials");
            };
            let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok().and_then(|r| String::from_utf8(r).ok());
            let Some((u, p)) = raw.as_deref().and_then(|r| r.split_once(':')) else {
                return error_response(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "malformed Basic credentials");
            };
            let a = lock(&sh.auth);
            if a.users.get(u).map(String::as_str) != Some(p) {
                return error_response(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "wrong user name or password");
            }
            Some(u.to_string())
        }
    };
    // Grant the subset of the asked scopes the user may read (possibly none, as Docker's token
    // services do: the registry then refuses the request with that token).
    let mut repos = HashSet::new();
    for kv in query.split('&') {
        let Some(v) = kv.strip_prefix("scope=") else { continue };
        let v = percent_decode(v);
        for scope in v.split(' ') {
            let mut parts = scope.splitn(3, ':');
            if let (Some("repository"), Some(r), Some(actions)) = (parts.next(), parts.next(), parts.next()) {
                if actions.split(',').any(|a| a == "pull") && lock(&sh.auth).may_read(user.as_deref(), r) {
                    repos.insert(r.to_string());
                }
            }
        }
    }
    let (jwt, ttl) = {
        let a = lock(&sh.auth);
        (a.jwt, a.token_ttl)
    };
    let seq = sh.token_seq.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now();
    let exp_unix = now.duration_since(UNIX_EPOCH).unwrap().as_secs() + ttl.as_secs();
    let tok = if jwt {
        let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        let header = b64(&serde_json::json!({"alg":"none","typ":"JWT"}));
        let claims = b64(&serde_json::json!({"sub": user, "exp": exp_unix, "jti": seq, "access": repos.iter().collect::<Vec<_>>()}));
        format!("{header}.{claims}.{}", hex::encode(Sha256::digest(format!("{seq}{exp_unix}"))))
    } else {
        hex::encode(Sha256::digest(format!("fake-token-{seq}-{:?}", Instant::now())))
    };
    lock(&sh.auth).tokens.insert(tok.clone(), Token { user, repos, expires: now + ttl });
    axum::Json(serde_json::json!({"token": tok, "access_token": tok, "expires_in": ttl.as_secs()})).into_response()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("repository%3Aa%2Fb%3Apull"), "repository:a/b:pull");
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
