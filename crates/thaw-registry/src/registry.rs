//! The registry: shared state and the request handlers of the distribution API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use thaw_oci::range::RangeSpec;
use thaw_oci::{Digest, Manifest, MediaType, RepoName, Tag, MAX_MANIFEST_BYTES};
use thaw_record::{CacheOutcome, LayerRef, ObjectKind, RequestRecord, SCHEMA_VERSION};
use thaw_store::{BlobStore, Committed, TagEntry, UploadId};

use crate::auth::{self, Grants, Identity};
use crate::coalesce::Coalesce;
use crate::config::RegistryConfig;
use crate::error::{ApiError, Code};
use crate::flight::{self, FetchJob, Flight, Outcome};
use crate::metrics::Metrics;
use crate::route::{self, Endpoint};
use crate::trace::{PrincipalHasher, TraceWriter};
use crate::upstream::{Credential, Upstream};

/// The store's upstream key for repositories thaw holds itself (pushed to it).
pub const LOCAL: &str = "";

/// Header set on answers served from the cache while the upstream could not be asked.
pub const STALE_HEADER: &str = "x-thaw-stale";
/// Header telling how the cache answered (hit, miss, coalesced, stale, pass-through).
pub const CACHE_HEADER: &str = "x-thaw-cache";

/// The registry. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: RegistryConfig,
    store: BlobStore,
    upstreams: Vec<Arc<Upstream>>,
    default_upstream: Option<Arc<Upstream>>,
    flights: Mutex<HashMap<Digest, Arc<Flight>>>,
    metrics: Arc<Metrics>,
    trace: Option<TraceWriter>,
    principals: PrincipalHasher,
    grants: Grants,
    /// Access probes in flight, keyed by (upstream, repository, object, credential).
    probes: Coalesce<(String, String, String, Credential), Result<Probe, String>>,
    /// Manifest fetches in flight, keyed by (upstream, repository, reference, credential).
    manifest_fetches: Coalesce<(String, String, String, Credential), Result<FetchedManifest, ApiError>>,
}

/// What an access probe (a HEAD with the client's credential) learned.
#[derive(Clone)]
struct Probe {
    status: StatusCode,
    challenge: Option<String>,
    retry_after: Option<HeaderValue>,
}

/// Where a repository name leads.
#[derive(Clone)]
pub struct Target {
    /// `None` for a local repository.
    pub upstream: Option<Arc<Upstream>>,
    /// The repository as the upstream (or the local store) names it.
    pub repo: String,
}

impl Target {
    fn key(&self) -> &str {
        self.upstream.as_ref().map_or(LOCAL, |u| u.name())
    }
}

/// What the trace record of a request is filled with as the request is answered.
struct Ctx {
    started: Instant,
    rec: RequestRecord,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn now_secs() -> u64 {
    now_us() / 1_000_000
}

/// Builds the upstream HTTP client: rustls with ring, the webpki and system roots plus any extra CA.
pub fn http_client(cfg: &RegistryConfig) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(cfg.upstream_timeout)
        .read_timeout(cfg.upstream_timeout)
        .user_agent(concat!("thaw/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::limited(5));
    if let Some(ca) = &cfg.upstream_ca {
        let pem = std::fs::read(ca).map_err(|e| format!("cannot read upstream CA {}: {e}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("bad upstream CA {}: {e}", ca.display()))? {
            b = b.add_root_certificate(cert);
        }
    }
    b.build().map_err(|e| format!("cannot build the upstream HTTP client: {e}"))
}

impl Registry {
    /// Builds a registry over `store`. `principals` keys the trace's principal hashes.
    pub fn new(cfg: RegistryConfig, store: BlobStore, principals: PrincipalHasher) -> Result<Registry, String> {
        cfg.validate()?;
        let http = http_client(&cfg)?;
        let upstreams: Vec<Arc<Upstream>> =
            cfg.upstreams.iter().map(|u| Arc::new(Upstream::new(u.clone(), http.clone()))).collect();
        let default_upstream = upstreams.iter().find(|u| u.config.default).cloned();
        let trace = match &cfg.trace {
            Some(t) => Some(TraceWriter::start(t).map_err(|e| format!("cannot write the request trace in {}: {e}", t.dir.display()))?),
            None => None,
        };
        Ok(Registry {
            inner: Arc::new(Inner {
                cfg,
                store,
                upstreams,
                default_upstream,
                flights: Mutex::new(HashMap::new()),
                metrics: Arc::new(Metrics::new()),
                trace,
                principals,
                grants: Grants::default(),
                probes: Coalesce::default(),
                manifest_fetches: Coalesce::default(),
            }),
        })
    }

    pub fn store(&self) -> &BlobStore {
        &self.inner.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.inner.cfg
    }

    /// The Prometheus text for `/metrics`, with store gauges refreshed.
    pub fn render_metrics(&self) -> String {
        let m = &self.inner.metrics;
        let s = self.inner.store.stats();
        m.store_bytes.set(s.bytes as i64);
        m.store_blobs.set(s.blobs as i64);
        m.store_pinned_bytes.set(s.pinned_bytes as i64);
        m.evictions.set(s.evictions as i64);
        if let Some(t) = &self.inner.trace {
            m.trace_dropped.set(t.dropped.load(std::sync::atomic::Ordering::Relaxed) as i64);
        }
        m.encode()
    }

    /// Chooses the upstream for a repository name: containerd's `ns` parameter, then a path prefix
    /// naming a configured upstream, then the default upstream; otherwise the repository is local.
    pub fn resolve(&self, name: &str, ns: Option<&str>) -> Result<Target, ApiError> {
        let invalid = |e: thaw_oci::NameError| ApiError::bad_request(Code::NameInvalid, e.to_string());
        if let Some(ns) = ns {
            let up = self.upstream_named(ns).ok_or_else(|| {
                ApiError::new(StatusCode::NOT_FOUND, Code::NameUnknown, format!("upstream {ns:?} (from the ns parameter) is not configured; add it under [[registry.upstreams]]"))
            })?;
            let repo: RepoName = name.parse().map_err(invalid)?;
            return Ok(Target { repo: up.upstream_repo(repo.as_str()), upstream: Some(up) });
        }
        if let Some((first, rest)) = name.split_once('/') {
            if let Some(up) = self.upstream_named(first) {
                let repo: RepoName = rest.parse().map_err(invalid)?;
                return Ok(Target { repo: up.upstream_repo(repo.as_str()), upstream: Some(up) });
            }
        }
        let repo: RepoName = name.parse().map_err(invalid)?;
        match &self.inner.default_upstream {
            Some(up) => Ok(Target { repo: up.upstream_repo(repo.as_str()), upstream: Some(up.clone()) }),
            None => Ok(Target { repo: repo.to_string(), upstream: None }),
        }
    }

    fn upstream_named(&self, name: &str) -> Option<Arc<Upstream>> {
        let alias = match name {
            "index.docker.io" | "registry-1.docker.io" => "docker.io",
            n => n,
        };
        self.inner.upstreams.iter().find(|u| u.name() == alias).cloned()
    }

    /// Answers one HTTP request below `/v2/`.
    pub async fn handle(&self, req: Request<Body>) -> Response {
        let started = Instant::now();
        let (parts, body) = req.into_parts();
        let client = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
        let path = parts.uri.path().to_string();
        let query = parts.uri.query().unwrap_or("").to_string();
        let rest = path.strip_prefix("/v2/").or_else(|| (path == "/v2").then_some("")).unwrap_or("");
        let endpoint = route::parse(rest);
        let api = match &endpoint {
            Some(Endpoint::Version) => "version",
            Some(Endpoint::Manifest { .. }) => "manifest",
            Some(Endpoint::Blob { .. }) => "blob",
            Some(Endpoint::UploadStart { .. } | Endpoint::Upload { .. }) => "upload",
            Some(Endpoint::Tags { .. }) => "tags",
            None => "other",
        };
        let kind = match api {
            "version" => ObjectKind::Version,
            "manifest" => ObjectKind::Manifest,
            "blob" => ObjectKind::Blob,
            "upload" => ObjectKind::Upload,
            "tags" => ObjectKind::Tags,
            _ => ObjectKind::Other,
        };
        let accounts = &self.inner.cfg.accounts;
        let ident = auth::identify(&parts.headers, accounts);
        let mut ctx = Ctx {
            started,
            rec: RequestRecord {
                v: SCHEMA_VERSION,
                ts_us: now_us(),
                client,
                principal: ident.as_ref().ok().and_then(|i| auth::identity_key(i, accounts)).map(|k| self.inner.principals.hash(&k)),
                user_agent: parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(|s| s.chars().take(256).collect()),
                upstream: None,
                repo: None,
                tag: None,
                digest: None,
                kind,
                size: None,
                bytes_sent: 0,
                method: method_label(&parts.method).to_string(),
                status: 0,
                duration_us: 0,
                outcome: CacheOutcome::None,
                range: None,
                layers: Vec::new(),
            },
        };
        let result = match ident {
            Err(f) => Err(self.unauthorized(None, match f {
                auth::AuthFailure::BadAccount => "user name or password is wrong",
                auth::AuthFailure::Malformed => "the Authorization header is malformed; use Basic or Bearer",
            })),
            Ok(ident) => {
                let ns = query_param(&query, "ns");
                if let Err(e) = self.local_access(endpoint.as_ref(), ns.as_deref(), &ident) {
                    return self.finish(ctx, api, e.into_response());
                }
                match endpoint {
                    None => Err(ApiError::new(StatusCode::NOT_FOUND, Code::Unsupported, format!("{path} is not a registry API endpoint"))),
                    // With accounts, the version check is where clients learn that thaw wants
                    // Basic credentials: containers/image (skopeo, podman) and docker decide from
                    // this ping's challenge whether to send credentials at all, and never send
                    // them on a later 401. Clients without credentials answer the challenge with
                    // an empty user, which `auth::identify` treats as anonymous.
                    Some(Endpoint::Version) if ident == Identity::Anonymous && !accounts.is_empty() && parts.headers.get(header::AUTHORIZATION).is_none() => {
                        Err(self.unauthorized(None, "this mirror has accounts; send Basic credentials, or an empty user name for public content"))
                    }
                    Some(Endpoint::Version) => Ok(version_response()),
                    Some(Endpoint::Manifest { name, reference }) => {
                        self.manifest(&mut ctx, &parts.method, &parts.headers, &name, &reference, ns.as_deref(), &ident, body).await
                    }
                    Some(Endpoint::Blob { name, digest }) => {
                        self.blob(&mut ctx, &parts.method, &parts.headers, &name, &digest, ns.as_deref(), &ident).await
                    }
                    Some(Endpoint::Tags { name }) => self.tags(&mut ctx, &parts.method, &name, &query, ns.as_deref(), &ident).await,
                    Some(Endpoint::UploadStart { name }) => self.upload_start(&mut ctx, &parts.method, &parts.headers, &name, &query, ns.as_deref(), body).await,
                    Some(Endpoint::Upload { name, id }) => self.upload(&mut ctx, &parts.method, &parts.headers, &name, &id, &query, ns.as_deref(), body).await,
                }
            }
        };
        let resp = result.unwrap_or_else(|e| e.into_response());
        self.finish(ctx, api, resp)
    }

    /// Counts the request and arranges for its trace record to be written when the body ends.
    fn finish(&self, mut ctx: Ctx, api: &str, resp: Response) -> Response {
        let status = resp.status().as_u16();
        ctx.rec.status = status;
        self.inner.metrics.requests.get_or_create(&crate::metrics::RequestLabels {
            api: api.to_string(),
            method: ctx.rec.method.clone(),
            status,
        }).inc();
        if ctx.rec.outcome != CacheOutcome::None {
            if let Ok(v) = HeaderValue::from_str(outcome_name(ctx.rec.outcome)) {
                let mut resp = resp;
                resp.headers_mut().insert(CACHE_HEADER, v);
                return self.wrap_body(ctx, resp);
            }
        }
        self.wrap_body(ctx, resp)
    }

    fn wrap_body(&self, ctx: Ctx, resp: Response) -> Response {
        let (parts, body) = resp.into_parts();
        let reg = self.clone();
        let counted = Counted { ctx: Some(ctx), sent: 0, reg };
        let stream = futures::stream::unfold((body.into_data_stream(), counted), |(mut s, mut c)| async move {
            match s.next().await {
                Some(Ok(b)) => {
                    c.sent += b.len() as u64;
                    Some((Ok::<Bytes, axum::Error>(b), (s, c)))
                }
                Some(Err(e)) => {
                    c.failed();
                    Some((Err(e), (s, c)))
                }
                None => None,
            }
        });
        Response::from_parts(parts, Body::from_stream(stream))
    }

    fn write_trace(&self, mut ctx: Ctx, sent: u64) {
        self.inner.metrics.bytes_served.inc_by(sent);
        if matches!(ctx.rec.outcome, CacheOutcome::Hit) {
            self.inner.metrics.bytes_saved.inc_by(sent);
        }
        if let Some(t) = &self.inner.trace {
            ctx.rec.bytes_sent = sent;
            ctx.rec.duration_us = ctx.started.elapsed().as_micros() as u64;
            t.record(ctx.rec);
        }
    }

    /// A 401 with a challenge: Basic when thaw has accounts, else the upstream's own challenge
    /// relayed (so the client fetches a token from the upstream's token service).
    fn unauthorized(&self, upstream_challenge: Option<&str>, why: &str) -> ApiError {
        let e = ApiError::new(StatusCode::UNAUTHORIZED, Code::Unauthorized, format!("authentication required: {why}"));
        if !self.inner.cfg.accounts.is_empty() {
            e.with_header(header::WWW_AUTHENTICATE, "Basic realm=\"thaw\"")
        } else if let Some(c) = upstream_challenge {
            e.with_header(header::WWW_AUTHENTICATE, c)
        } else {
            // RFC 9110 §11.6.1: a 401 carries a challenge. With no upstream challenge to relay,
            // Basic is the one a client can answer (with credentials, or an empty user).
            e.with_header(header::WWW_AUTHENTICATE, "Basic realm=\"thaw\"")
        }
    }

    /// Applies the tenant rule (see [`crate::auth`]) for `object` (`manifests/<ref>` or
    /// `blobs/<digest>`) of `t`. Returns the credential to use upstream, and whether the upstream
    /// confirmed the object itself (a HEAD with the client's credential answered 200).
    async fn authorize(&self, t: &Target, ident: &Identity, object: &str) -> Result<(Credential, bool), ApiError> {
        let Some(up) = &t.upstream else { return Ok((Credential::Anonymous, false)) };
        let accounts = &self.inner.cfg.accounts;
        let cred = auth::credential_for(ident, up, accounts);
        let default = up.default_credential();
        let verdict = self.blocking_store(|s, (u, r)| s.visibility(&u, &r), (up.name().to_string(), t.repo.clone())).await?;
        let stored = verdict.map(|(private, _)| private);
        // A verdict older than visibility_ttl is asked again: a repository that was private before
        // it was published, or public before it was made private, must not stay so forever. Its
        // time is kept with it in the store, so a restart does not ask about every repository.
        let fresh = verdict.is_some_and(|(_, at)| self.recorded_recently(at));
        let private = if fresh { stored } else { None };
        if private == Some(false) {
            return Ok((cred, false));
        }
        let who = if cred == default {
            None
        } else {
            Some(auth::identity_key(ident, accounts).unwrap_or_default())
        };
        if let Some(who) = &who {
            if self.inner.grants.allowed(up.name(), &t.repo, who) {
                return Ok((cred, false));
            }
        }
        if cred == default && private == Some(true) {
            return Err(self.unauthorized(self.challenge_hint(up, &t.repo).await.as_deref(), &format!("{} is private on {}; present credentials the upstream accepts", t.repo, up.name())));
        }
        // Ask the upstream about this very object with the client's credential.
        // Concurrent requests for one object with one credential share one probe.
        let probe_key = (up.name().to_string(), t.repo.clone(), object.to_string(), cred.clone());
        let probed = self
            .inner
            .probes
            .run(probe_key, || async {
                // A probe of the mirror's own credential that finished just before this one was
                // keyed has recorded its verdict: use it rather than asking again.
                if cred == default {
                    if let Ok(Some((private, at))) = self.blocking_store(|s, (u, r)| s.visibility(&u, &r), (up.name().to_string(), t.repo.clone())).await {
                        if self.recorded_recently(at) {
                            let status = if private { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
                            return Ok(Probe { status, challenge: None, retry_after: None });
                        }
                    }
                }
                let probe = up.send(Method::HEAD, &t.repo, object, &cred, accept_headers()).await.map(|r| Probe {
                    status: r.status(),
                    challenge: r.headers().get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_string),
                    retry_after: r.headers().get(header::RETRY_AFTER).cloned(),
                }).map_err(|e| e.to_string())?;
                // The verdict on the mirror's default credential is recorded inside the shared
                // call, so it is in place before any waiter (or a request arriving next) looks.
                if cred == default {
                    let verdict = match probe.status.as_u16() {
                        200 => Some(false),
                        401 | 403 => Some(true),
                        _ => None,
                    };
                    if let Some(private) = verdict {
                        if let Err(e) = self.record_visibility(up.name(), &t.repo, private).await {
                            tracing::warn!(error = %e.message, "could not record a repository's visibility");
                        }
                    }
                }
                Ok(probe)
            })
            .await;
        let resp = match probed {
            Ok(r) => r,
            Err(e) if stored == Some(false) => {
                tracing::warn!(upstream = up.name(), repo = %t.repo, error = %e, "serving content last seen public while the upstream cannot be asked");
                return Ok((cred, false));
            }
            Err(e) => {
                return Err(ApiError::unavailable(format!("cannot check access to {} with {}: {e}; private content is not served while the upstream cannot be asked", t.repo, up.name())))
            }
        };
        let status = resp.status;
        if stored == Some(false) && (status.as_u16() == 429 || status.is_server_error()) {
            tracing::warn!(upstream = up.name(), repo = %t.repo, %status, "serving content last seen public while the upstream cannot confirm it");
            return Ok((cred, false));
        }
        let challenge = resp.challenge.clone();
        match status.as_u16() {
            200 => {
                // (The default credential's verdict was recorded inside the probe.)
                if let Some(who) = who {
                    self.inner.grants.grant(up.name(), &t.repo, &who, auth::grant_lifetime(&cred, self.inner.cfg.auth_ttl));
                }
                Ok((cred, true))
            }
            401 | 403 => {
                let challenge = match challenge {
                    Some(c) => Some(c),
                    None => self.challenge_hint(up, &t.repo).await,
                };
                Err(self.unauthorized(challenge.as_deref(), &format!("{} refused access to {}", up.name(), t.repo)))
            }
            404 => Err(ApiError::not_found(if object.starts_with("blobs/") { Code::BlobUnknown } else { Code::ManifestUnknown }, format!("{}/{}", t.repo, object))),
            429 => Err(rate_limited(up, resp.retry_after.as_ref())),
            _ => Err(ApiError::unavailable(format!("{} answered {status} when asked about {}; private content is not served while the upstream cannot confirm access", up.name(), t.repo))),
        }
    }

    /// The upstream refused this request's own credential for `t`'s repository. Forget the grant
    /// remembered for the identity, so cached content stops flowing to it now rather than when
    /// the grant would have lapsed (a revoked user learns it on the first upstream answer); and
    /// when the refused credential is the mirror's default one, the repository has turned
    /// private: record it, so its cached content is no longer served to everyone.
    async fn on_refusal(&self, t: &Target, ident: &Identity, e: ApiError) -> ApiError {
        if !matches!(e.status.as_u16(), 401 | 403) {
            return e;
        }
        let Some(up) = &t.upstream else { return e };
        let accounts = &self.inner.cfg.accounts;
        if auth::credential_for(ident, up, accounts) == up.default_credential() {
            if let Err(err) = self.record_visibility(up.name(), &t.repo, true).await {
                tracing::warn!(error = %err.message, repo = %t.repo, "could not record that a repository turned private");
            }
        } else if let Some(who) = auth::identity_key(ident, accounts) {
            self.inner.grants.revoke(up.name(), &t.repo, &who);
        }
        e
    }

    /// Whether a verdict stored at `at_us` (microseconds since the Unix epoch; 0 = unknown) is
    /// within `visibility_ttl` of now: a verdict older than that is asked again. Wall-clock
    /// time, as it must survive restarts; a clock that went backwards makes the verdict stale,
    /// never fresher.
    fn recorded_recently(&self, at_us: u64) -> bool {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        at_us > 0 && at_us <= now && std::time::Duration::from_micros(now - at_us) < self.inner.cfg.visibility_ttl
    }

    /// Records the upstream's verdict, with its time, durably in the store: the one place
    /// freshness is judged from, before and after a restart.
    async fn record_visibility(&self, upstream: &str, repo: &str, private: bool) -> Result<(), ApiError> {
        self.blocking_store(move |s, (u, r)| s.set_private(&u, &r, private), (upstream.to_string(), repo.to_string())).await
    }

    /// The challenge an anonymous client should follow for `repo` (an anonymous HEAD of the
    /// version endpoint is not enough: the challenge must carry the repository scope).
    async fn challenge_hint(&self, up: &Upstream, repo: &str) -> Option<String> {
        up.challenge(repo).await
    }

    /// Whether `d` belongs to (`upstream`, `repo`), and its size when it is stored: one trip to the
    /// blocking pool for both, as every blob and manifest-by-digest request asks them together.
    async fn membership(&self, upstream: &str, repo: &str, d: &Digest) -> Result<(bool, Option<u64>), ApiError> {
        self.blocking_store(|s, (u, r, d)| Ok((s.is_linked(&u, &r, &d)?, s.stat(&d)?)), (upstream.to_string(), repo.to_string(), d.clone()))
            .await
    }

    /// Runs a store call on the blocking pool, leaving its result to the caller.
    async fn blocking_store_raw<R: Send + 'static>(&self, f: impl FnOnce(&BlobStore) -> R + Send + 'static) -> Result<R, ApiError> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || f(&store)).await.map_err(ApiError::internal)
    }

    /// Runs a store call on the blocking pool.
    pub(crate) async fn blocking_store<A: Send + 'static, R: Send + 'static>(
        &self,
        f: impl FnOnce(&BlobStore, A) -> Result<R, thaw_store::StoreError> + Send + 'static,
        arg: A,
    ) -> Result<R, ApiError> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || f(&store, arg)).await.map_err(ApiError::internal)?.map_err(ApiError::from)
    }

    // ---------------------------------------------------------------- manifests

    #[allow(clippy::too_many_arguments)]
    async fn manifest(
        &self,
        ctx: &mut Ctx,
        method: &Method,
        headers: &HeaderMap,
        name: &str,
        reference: &str,
        ns: Option<&str>,
        ident: &Identity,
        body: Body,
    ) -> Result<Response, ApiError> {
        let t = self.resolve(name, ns)?;
        ctx.rec.upstream = t.upstream.as_ref().map(|u| u.name().to_string());
        ctx.rec.repo = Some(t.repo.clone());
        let by_digest = reference.contains(':');
        let digest = if by_digest {
            Some(reference.parse::<Digest>().map_err(|e| ApiError::bad_request(Code::DigestInvalid, e.to_string()))?)
        } else {
            reference.parse::<Tag>().map_err(|e| ApiError::bad_request(Code::ManifestInvalid, e.to_string()))?;
            ctx.rec.tag = Some(reference.to_string());
            None
        };
        match *method {
            Method::GET | Method::HEAD => {}
            Method::PUT => return self.put_manifest(ctx, &t, headers, reference, digest, body).await,
            Method::DELETE => {
                return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, Code::Unsupported, "deleting manifests is not supported by thaw"))
            }
            _ => return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, Code::Unsupported, format!("{method} is not allowed on manifests"))),
        }
        let head = *method == Method::HEAD;
        let object = format!("manifests/{reference}");
        let Some(up) = t.upstream.clone() else {
            // Local repository.
            let d = match digest {
                Some(d) => d,
                None => {
                    let entry = self.blocking_store(|s, (r, tag)| s.get_tag(LOCAL, &r, &tag), (t.repo.clone(), reference.to_string())).await?;
                    entry.ok_or_else(|| ApiError::not_found(Code::ManifestUnknown, format!("{}:{reference}", t.repo)))?.digest
                }
            };
            let linked = self.blocking_store(|s, (r, d)| s.is_linked(LOCAL, &r, &d), (t.repo.clone(), d.clone())).await?;
            if !linked {
                return Err(ApiError::not_found(Code::ManifestUnknown, format!("{}@{d}", t.repo)));
            }
            return self.serve_stored_manifest(ctx, &d, head, CacheOutcome::None).await;
        };

        let (cred, _) = self.authorize(&t, ident, &object).await?;
        let key = up.name().to_string();
        if let Some(d) = digest {
            // Content by digest is immutable: never revalidated.
            let (linked, have) = self.membership(&key, &t.repo, &d).await?;
            let have = have.is_some();
            if have && (linked || self.confirm(&up, &t.repo, &object, &cred).await?) {
                if let Some(resp) = self.stored_manifest(ctx, &d, head, CacheOutcome::Hit).await? {
                    self.inner.metrics.hits.get_or_create(&Metrics::kind("manifest")).inc();
                    return Ok(resp);
                }
                // Evicted meanwhile, or not a manifest: fetch (and verify) it as a manifest.
            }
            // A HEAD miss is answered by one upstream GET, so the manifest is cached for the GET
            // that follows (containerd and docker HEAD first): one upstream request either way.
            self.inner.metrics.misses.get_or_create(&Metrics::kind("manifest")).inc();
            let fetched = match self.fetch_manifest(&up, &t.repo, reference, &cred, Some(&d), None).await {
                Ok(f) => f,
                Err(e) => return Err(self.on_refusal(&t, ident, e).await),
            };
            return self.answer_manifest(ctx, fetched, head, CacheOutcome::Miss);
        }

        // By tag.
        let tag = reference.to_string();
        let entry = self.blocking_store(|s, (u, r, tag)| s.get_tag(&u, &r, &tag), (key.clone(), t.repo.clone(), tag.clone())).await?;
        if let Some(entry) = entry {
            let age = now_secs().saturating_sub(entry.fetched_at_unix);
            // A fresh tag whose manifest was evicted is fetched again below, not answered 404.
            if age < self.inner.cfg.tag_ttl.as_secs() {
                if let Some(resp) = self.stored_manifest(ctx, &entry.digest, head, CacheOutcome::Hit).await? {
                    self.inner.metrics.hits.get_or_create(&Metrics::kind("manifest")).inc();
                    return Ok(resp);
                }
            } else {
            // Revalidate with a HEAD (registries do not count HEADs against pull limits).
            match up.send(Method::HEAD, &t.repo, &object, &cred, accept_headers()).await {
                Ok(r) if r.status() == StatusCode::OK => {
                    let upstream_digest = r.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<Digest>().ok());
                    if upstream_digest.as_ref() == Some(&entry.digest) {
                        let mut fresh = entry.clone();
                        fresh.fetched_at_unix = now_secs();
                        self.blocking_store(move |s, (u, r, tag)| s.put_tag(&u, &r, &tag, &fresh), (key.clone(), t.repo.clone(), tag.clone())).await?;
                        if let Some(resp) = self.stored_manifest(ctx, &entry.digest, head, CacheOutcome::Hit).await? {
                            self.inner.metrics.hits.get_or_create(&Metrics::kind("manifest")).inc();
                            return Ok(resp);
                        }
                    }
                    // The tag moved (or the upstream gave no digest): fetch it anew below.
                }
                Ok(r) if r.status() == StatusCode::NOT_FOUND => {
                    let _ = self.blocking_store(|s, (u, r, tag)| s.delete_tag(&u, &r, &tag), (key.clone(), t.repo.clone(), tag.clone())).await;
                    return Err(ApiError::not_found(Code::ManifestUnknown, format!("{}:{tag}", t.repo)));
                }
                Ok(r) if matches!(r.status().as_u16(), 401 | 403) => {
                    let hint = self.challenge_hint(&up, &t.repo).await;
                    let e = self.unauthorized(hint.as_deref(), &format!("{} refused access to {}", up.name(), t.repo));
                    return Err(self.on_refusal(&t, ident, e).await);
                }
                Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS || r.status().is_server_error() => {
                    return self.serve_stale(ctx, &up, &t.repo, &tag, &entry.digest, head, &format!("upstream answered {}", r.status())).await;
                }
                Ok(r) => {
                    return Err(ApiError::unavailable(format!("{} answered {} when revalidating {}:{tag}", up.name(), r.status(), t.repo)));
                }
                Err(e) => {
                    return self.serve_stale(ctx, &up, &t.repo, &tag, &entry.digest, head, &e.to_string()).await;
                }
            }
            }
        }
        // As above: a HEAD miss of a tag fetches and caches the manifest and the tag.
        self.inner.metrics.misses.get_or_create(&Metrics::kind("manifest")).inc();
        let fetched = match self.fetch_manifest(&up, &t.repo, reference, &cred, None, Some(&tag)).await {
            Ok(f) => f,
            Err(e) => return Err(self.on_refusal(&t, ident, e).await),
        };
        self.answer_manifest(ctx, fetched, head, CacheOutcome::Miss)
    }

    #[allow(clippy::too_many_arguments)]
    async fn serve_stale(&self, ctx: &mut Ctx, up: &Upstream, repo: &str, tag: &str, d: &Digest, head: bool, why: &str) -> Result<Response, ApiError> {
        tracing::warn!(upstream = up.name(), repo, tag, reason = why, "serving a stale tag: the upstream could not revalidate it");
        self.inner.metrics.stale.inc();
        let Some(mut resp) = self.stored_manifest(ctx, d, head, CacheOutcome::Stale).await? else {
            return Err(ApiError::unavailable(format!("{}:{tag} cannot be revalidated ({why}) and its manifest is no longer cached; retry when {} answers", repo, up.name())));
        };
        resp.headers_mut().insert(STALE_HEADER, HeaderValue::from_static("1"));
        resp.headers_mut().insert(header::WARNING, HeaderValue::from_static("110 thaw \"Response is Stale\""));
        Ok(resp)
    }

    /// Asks the upstream whether `object` exists in `repo` for `cred`; on yes, links it.
    async fn confirm(&self, up: &Upstream, repo: &str, object: &str, cred: &Credential) -> Result<bool, ApiError> {
        let resp = up
            .send(Method::HEAD, repo, object, cred, accept_headers())
            .await
            .map_err(|e| ApiError::unavailable(format!("cannot confirm {object} belongs to {repo} on {}: {e}", up.name())))?;
        if resp.status() != StatusCode::OK {
            return Ok(false);
        }
        if let Some(d) = object.split_once('/').and_then(|(_, r)| r.parse::<Digest>().ok()) {
            self.blocking_store(|s, (u, r, d)| s.link(&u, &r, &d), (up.name().to_string(), repo.to_string(), d)).await?;
        }
        Ok(true)
    }

    async fn relay_head(&self, ctx: &mut Ctx, up: &Upstream, repo: &str, object: &str, cred: &Credential) -> Result<Response, ApiError> {
        let r = up
            .send(Method::HEAD, repo, object, cred, accept_headers())
            .await
            .map_err(|e| ApiError::unavailable(format!("{} cannot be reached: {e}", up.name())))?;
        let status = r.status();
        if status == StatusCode::NOT_FOUND {
            let code = if object.starts_with("blobs/") { Code::BlobUnknown } else { Code::ManifestUnknown };
            return Err(ApiError::not_found(code, format!("{repo}/{object}")));
        }
        // The upstream refusing the client's credential is an answer, not an outage: say so,
        // so the client re-authenticates instead of retrying a "service unavailable".
        if matches!(status.as_u16(), 401 | 403) {
            let challenge = r.headers().get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_string);
            return Err(self.unauthorized(challenge.as_deref(), &format!("{} refused access to {repo}", up.name())));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(rate_limited(up, r.headers().get(header::RETRY_AFTER)));
        }
        if !status.is_success() {
            return Err(ApiError::unavailable(format!("{} answered {status} to HEAD {object}", up.name())));
        }
        let mut resp = StatusCode::OK.into_response();
        for h in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
            if let Some(v) = r.headers().get(&h) {
                resp.headers_mut().insert(h, v.clone());
            }
        }
        if let Some(v) = r.headers().get("docker-content-digest") {
            resp.headers_mut().insert("docker-content-digest", v.clone());
            ctx.rec.digest = v.to_str().ok().map(str::to_string);
        }
        ctx.rec.size = r.content_length();
        Ok(resp)
    }

    /// GETs a manifest from the upstream, verifies and stores it, links it and its blobs to the
    /// repository, and records the tag.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn fetch_manifest(
        &self,
        up: &Upstream,
        repo: &str,
        reference: &str,
        cred: &Credential,
        want: Option<&Digest>,
        tag: Option<&str>,
    ) -> Result<FetchedManifest, ApiError> {
        // Concurrent requests for one manifest with one credential share one upstream GET (the
        // pulls Docker Hub counts against its rate limit), whoever of them arrived first.
        let key = (up.name().to_string(), repo.to_string(), reference.to_string(), cred.clone());
        self.inner
            .manifest_fetches
            .run(key, || async move {
                // A request that found no fresh tag may reach this point just after another
                // request's fetch of the same tag finished (and left the single-flight): the tag
                // is fresh in the store now, so answer from there instead of pulling again.
                if let (Some(tag), None) = (tag, want) {
                    if let Some(m) = self.fresh_tag_manifest(up.name(), repo, tag).await? {
                        return Ok(m);
                    }
                }
                self.fetch_manifest_once(up, repo, reference, cred, want, tag).await
            })
            .await
    }

    /// The stored manifest of `repo:tag` when the tag was fetched less than `tag_ttl` ago.
    async fn fresh_tag_manifest(&self, upstream: &str, repo: &str, tag: &str) -> Result<Option<FetchedManifest>, ApiError> {
        let entry = self.blocking_store(|s, (u, r, t)| s.get_tag(&u, &r, &t), (upstream.to_string(), repo.to_string(), tag.to_string())).await?;
        match entry {
            Some(e) if now_secs().saturating_sub(e.fetched_at_unix) < self.inner.cfg.tag_ttl.as_secs() => self.load_manifest(&e.digest).await,
            _ => Ok(None),
        }
    }

    async fn fetch_manifest_once(
        &self,
        up: &Upstream,
        repo: &str,
        reference: &str,
        cred: &Credential,
        want: Option<&Digest>,
        tag: Option<&str>,
    ) -> Result<FetchedManifest, ApiError> {
        let object = format!("manifests/{reference}");
        let t0 = Instant::now();
        let resp = up
            .send(Method::GET, repo, &object, cred, accept_headers())
            .await
            .map_err(|e| ApiError::unavailable(format!("{} cannot be reached: {e}", up.name())))?;
        self.inner.metrics.upstream_latency.get_or_create(&Metrics::upstream(up.name())).observe(t0.elapsed().as_secs_f64());
        match resp.status().as_u16() {
            200 => {}
            404 => return Err(ApiError::not_found(Code::ManifestUnknown, format!("{repo}:{reference}"))),
            401 | 403 => {
                let c = resp.headers().get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_string);
                return Err(self.unauthorized(c.as_deref(), &format!("{} refused access to {repo}", up.name())));
            }
            429 => return Err(rate_limited(up, resp.headers().get(header::RETRY_AFTER))),
            s => return Err(ApiError::unavailable(format!("{} answered {s} for {repo}:{reference}", up.name()))),
        }
        let content_type = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
        if resp.content_length().is_some_and(|l| l > MAX_MANIFEST_BYTES as u64) {
            return Err(ApiError::bad_request(Code::ManifestInvalid, format!("manifest {repo}:{reference} is larger than {MAX_MANIFEST_BYTES} bytes")));
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::unavailable(format!("{} broke off sending {repo}:{reference}: {e}", up.name())))?;
            if body.len() + chunk.len() > MAX_MANIFEST_BYTES {
                return Err(ApiError::bad_request(Code::ManifestInvalid, format!("manifest {repo}:{reference} is larger than {MAX_MANIFEST_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        self.inner.metrics.bytes_fetched.get_or_create(&Metrics::upstream(up.name())).inc_by(body.len() as u64);
        let digest = match want {
            Some(d) => {
                if !d.verify(&body) {
                    self.inner.metrics.digest_mismatches.inc();
                    return Err(ApiError::new(StatusCode::BAD_GATEWAY, Code::DigestInvalid, format!("{} sent a manifest that does not match {d}; nothing was cached", up.name())));
                }
                d.clone()
            }
            None => Digest::sha256_of(&body),
        };
        let manifest = Manifest::parse(&body, content_type.as_deref())
            .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, Code::ManifestInvalid, format!("{} sent an unusable manifest for {repo}:{reference}: {e}", up.name())))?;
        let media_type = manifest.media_type.as_str().to_string();
        let layers: Vec<LayerRef> = manifest.blobs().map(|d| LayerRef { digest: d.digest.to_string(), size: d.size }).collect();
        let links: Vec<Digest> = manifest.blobs().chain(manifest.manifests.iter()).map(|d| d.digest.clone()).collect();
        let key = up.name().to_string();
        let stored = {
            let (body, digest, media_type, repo, tag) = (body.clone(), digest.clone(), media_type.clone(), repo.to_string(), tag.map(str::to_string));
            self.blocking_store(
                move |s, ()| {
                    store_bytes(s, &digest, &body)?;
                    s.put_manifest_type(&digest, &media_type)?;
                    s.link(&key, &repo, &digest)?;
                    for d in &links {
                        s.link(&key, &repo, d)?;
                    }
                    if let Some(tag) = tag {
                        s.put_tag(&key, &repo, &tag, &TagEntry { digest: digest.clone(), media_type: media_type.clone(), fetched_at_unix: now_secs() })?;
                    }
                    Ok(())
                },
                (),
            )
            .await
        };
        if let Err(e) = stored {
            tracing::warn!(error = ?e.message, "manifest not cached; serving it anyway");
        }
        Ok(FetchedManifest { body: Bytes::from(body), digest, media_type, layers })
    }

    fn answer_manifest(&self, ctx: &mut Ctx, m: FetchedManifest, head: bool, outcome: CacheOutcome) -> Result<Response, ApiError> {
        ctx.rec.digest = Some(m.digest.to_string());
        ctx.rec.size = Some(m.body.len() as u64);
        ctx.rec.layers = m.layers;
        ctx.rec.outcome = outcome;
        let mut resp = if head { Response::new(Body::empty()) } else { Response::new(Body::from(m.body.clone())) };
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(&m.media_type).unwrap_or(HeaderValue::from_static("application/octet-stream")));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(m.body.len() as u64));
        h.insert("docker-content-digest", HeaderValue::from_str(&m.digest.to_string()).expect("digest is ascii"));
        h.insert(header::ETAG, HeaderValue::from_str(&format!("\"{}\"", m.digest)).expect("ascii"));
        Ok(resp)
    }

    async fn serve_stored_manifest(&self, ctx: &mut Ctx, d: &Digest, head: bool, outcome: CacheOutcome) -> Result<Response, ApiError> {
        self.stored_manifest(ctx, d, head, outcome).await?.ok_or_else(|| ApiError::not_found(Code::ManifestUnknown, d))
    }

    /// Answers from the store when `d` is a stored manifest; `None` when it is not there (never
    /// cached, or evicted) or is not a manifest at all (a layer digest asked for on the manifest
    /// endpoint is never read into memory or served as a manifest).
    async fn stored_manifest(&self, ctx: &mut Ctx, d: &Digest, head: bool, outcome: CacheOutcome) -> Result<Option<Response>, ApiError> {
        match self.load_manifest(d).await? {
            Some(m) => self.answer_manifest(ctx, m, head, outcome).map(Some),
            None => Ok(None),
        }
    }

    /// A stored manifest with its media type, if the store has both (and it is within the size
    /// limit); `None` sends the caller to the upstream.
    async fn load_manifest(&self, d: &Digest) -> Result<Option<FetchedManifest>, ApiError> {
        let loaded = self
            .blocking_store(
                |s, d| {
                    let Some(media_type) = s.manifest_type(&d)? else { return Ok(None) };
                    let Some(handle) = s.get(&d)? else { return Ok(None) };
                    if handle.size > MAX_MANIFEST_BYTES as u64 {
                        return Ok(None);
                    }
                    let mut body = vec![0u8; handle.size as usize];
                    use std::os::unix::fs::FileExt;
                    handle.file().read_exact_at(&mut body, 0).map_err(|source| thaw_store::StoreError::Io { op: "read", path: s.blob_path(&d), source })?;
                    Ok(Some((body, media_type)))
                },
                d.clone(),
            )
            .await?;
        let Some((body, media_type)) = loaded else {
            return Ok(None);
        };
        let layers = Manifest::parse(&body, Some(&media_type))
            .map(|m| m.blobs().map(|d| LayerRef { digest: d.digest.to_string(), size: d.size }).collect())
            .unwrap_or_default();
        Ok(Some(FetchedManifest { body: Bytes::from(body), digest: d.clone(), media_type, layers }))
    }

    async fn put_manifest(&self, ctx: &mut Ctx, t: &Target, headers: &HeaderMap, reference: &str, digest: Option<Digest>, body: Body) -> Result<Response, ApiError> {
        if t.upstream.is_some() {
            return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, Code::Unsupported, format!("{} is mirrored from an upstream; push to the upstream instead", t.repo)));
        }
        let body = read_limited(body, MAX_MANIFEST_BYTES).await?;
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let manifest = Manifest::parse(&body, content_type).map_err(|e| ApiError::bad_request(Code::ManifestInvalid, e.to_string()))?;
        let computed = match &digest {
            Some(d) => {
                if !d.verify(&body) {
                    return Err(ApiError::bad_request(Code::DigestInvalid, format!("manifest body does not match {d}")));
                }
                d.clone()
            }
            None => Digest::sha256_of(&body),
        };
        let media_type = manifest.media_type.as_str().to_string();
        let referenced: Vec<Digest> = manifest.blobs().chain(manifest.manifests.iter()).map(|d| d.digest.clone()).collect();
        let repo = t.repo.clone();
        let tag = digest.is_none().then(|| reference.to_string());
        let d2 = computed.clone();
        let bodyv = body.to_vec();
        self.blocking_store(
            move |s, ()| {
                for d in &referenced {
                    // Linked to this repository (pushed or mounted into it), not merely present
                    // somewhere in the shared store.
                    if !s.is_linked(LOCAL, &repo, d)? || s.stat(d)?.is_none() {
                        return Ok(Err(PushError::MissingBlob(d.clone())));
                    }
                }
                if store_bytes(s, &d2, &bodyv)? == Committed::NotCached {
                    return Ok(Err(PushError::NoRoom(d2.clone())));
                }
                s.put_manifest_type(&d2, &media_type)?;
                s.link(LOCAL, &repo, &d2)?;
                for d in &referenced {
                    s.link(LOCAL, &repo, d)?;
                }
                if let Some(tag) = tag {
                    s.put_tag(LOCAL, &repo, &tag, &TagEntry { digest: d2.clone(), media_type: media_type.clone(), fetched_at_unix: now_secs() })?;
                }
                Ok(Ok(()))
            },
            (),
        )
        .await?
        .map_err(push_error)?;
        ctx.rec.digest = Some(computed.to_string());
        ctx.rec.size = Some(body.len() as u64);
        let mut resp = StatusCode::CREATED.into_response();
        let h = resp.headers_mut();
        h.insert(header::LOCATION, HeaderValue::from_str(&format!("/v2/{}/manifests/{computed}", t.repo)).expect("ascii"));
        h.insert("docker-content-digest", HeaderValue::from_str(&computed.to_string()).expect("ascii"));
        Ok(resp)
    }

    // ---------------------------------------------------------------- blobs

    #[allow(clippy::too_many_arguments)]
    async fn blob(&self, ctx: &mut Ctx, method: &Method, headers: &HeaderMap, name: &str, digest: &str, ns: Option<&str>, ident: &Identity) -> Result<Response, ApiError> {
        let t = self.resolve(name, ns)?;
        ctx.rec.upstream = t.upstream.as_ref().map(|u| u.name().to_string());
        ctx.rec.repo = Some(t.repo.clone());
        let d: Digest = digest.parse().map_err(|e: thaw_oci::DigestError| ApiError::bad_request(Code::DigestInvalid, e.to_string()))?;
        ctx.rec.digest = Some(d.to_string());
        let head = match *method {
            Method::GET => false,
            Method::HEAD => true,
            Method::DELETE => return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, Code::Unsupported, "deleting blobs is not supported by thaw")),
            _ => return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, Code::Unsupported, format!("{method} is not allowed on blobs"))),
        };
        let range = match headers.get(header::RANGE) {
            // RFC 9110 §14.2: a Range the server cannot use (other unit, several ranges, bad
            // syntax) is ignored and the whole body served; only an unsatisfiable one gets 416.
            Some(v) => RangeSpec::parse(v.to_str().unwrap_or("")).ok(),
            None => None,
        };
        let object = format!("blobs/{d}");
        let key = t.key().to_string();
        let (cred, confirmed) = match &t.upstream {
            Some(_) => self.authorize(&t, ident, &object).await?,
            None => (Credential::Anonymous, false),
        };
        let (linked, have) = self.membership(&key, &t.repo, &d).await?;
        let linked = confirmed || linked;
        if let Some(size) = have {
            let allowed = linked || match &t.upstream {
                Some(up) => self.confirm(up, &t.repo, &object, &cred).await?,
                None => false,
            };
            if allowed {
                if head {
                    ctx.rec.size = Some(size);
                    return Ok(blob_head(&d, size));
                }
                if let Some(resp) = self.serve_stored_blob(ctx, &d, range).await? {
                    self.inner.metrics.hits.get_or_create(&Metrics::kind("blob")).inc();
                    return Ok(resp);
                }
                // Evicted between stat and get: fall through to the miss path.
            } else {
                // Cached, but not known to belong to this repository and not confirmed by the
                // upstream: answer as if it did not exist, so a private digest named through
                // another repository reveals nothing.
                return Err(ApiError::not_found(Code::BlobUnknown, format!("{}@{d}", t.repo)));
            }
        }
        let Some(up) = t.upstream.clone() else {
            return Err(ApiError::not_found(Code::BlobUnknown, format!("{}@{d}", t.repo)));
        };
        if head {
            return match self.relay_head(ctx, &up, &t.repo, &object, &cred).await {
                Ok(r) => Ok(r),
                Err(e) => Err(self.on_refusal(&t, ident, e).await),
            };
        }
        // A miss: join or start the flight for this digest.
        let (fl, started) = self.join_or_start(&up, &t.repo, &cred, &d).await?;
        if !started && (fl.upstream != up.name() || fl.repo != t.repo) && !linked && !self.confirm(&up, &t.repo, &object, &cred).await? {
            return Err(ApiError::not_found(Code::BlobUnknown, format!("{}@{d}", t.repo)));
        }
        if started {
            self.inner.metrics.misses.get_or_create(&Metrics::kind("blob")).inc();
            ctx.rec.outcome = CacheOutcome::Miss;
        } else {
            self.inner.metrics.coalesced.inc();
            ctx.rec.outcome = CacheOutcome::Coalesced;
        }
        let st = fl.wait_started().await;
        if let Some(Outcome::Failed { status, reason }) = &st.outcome {
            if st.written == 0 {
                let hint = if matches!(status, Some(401 | 403)) { self.challenge_hint(&up, &t.repo).await } else { None };
                return Err(match status {
                    Some(404) => ApiError::not_found(Code::BlobUnknown, format!("{}@{d}", t.repo)),
                    // Only the request that started the flight had its own credential refused.
                    Some(401 | 403) if started => self.on_refusal(&t, ident, self.unauthorized(hint.as_deref(), &format!("{} refused access to {}", up.name(), t.repo))).await,
                    Some(401 | 403) => self.unauthorized(hint.as_deref(), &format!("{} refused access to {}", up.name(), t.repo)),
                    Some(429) => rate_limited(&up, st.retry_after.as_deref().and_then(|v| HeaderValue::from_str(v).ok()).as_ref()),
                    _ => ApiError::unavailable(format!("fetching {d} from {} failed: {reason}", up.name())),
                });
            }
        }
        if let Some(Outcome::NotCached) = &st.outcome {
            ctx.rec.outcome = CacheOutcome::PassThrough;
        }
        let total = st.total.or_else(|| (st.outcome.is_some()).then_some(st.written));
        let Some(total) = total else {
            return Err(ApiError::unavailable(format!("{} did not say how large {d} is", up.name())));
        };
        if st.outcome.is_none() && self.cannot_cache(total) {
            // The headers go out before the commit decides, so say now what it will decide:
            // pinned content leaves less room than this blob needs, the store's policy will
            // refuse it, and the client is being served a relay, not a cache fill.
            ctx.rec.outcome = CacheOutcome::PassThrough;
        }
        ctx.rec.size = Some(total);
        let (status, start, end) = body_window(ctx, range, total)?;
        let reg = self.clone();
        let fl2 = fl.clone();
        tokio::spawn(async move {
            if fl2.wait_done().await == Outcome::NotCached {
                reg.inner.metrics.pass_through.inc();
            }
        });
        let resp = blob_response(Body::from_stream(fl.stream(start, end)), &d, status, start, end, total);
        Ok(resp)
    }

    /// Whether a blob of `size` bytes cannot enter the store now (see [`BlobStore::has_room_for`]).
    fn cannot_cache(&self, size: u64) -> bool {
        !self.inner.store.has_room_for(size)
    }

    /// Returns the flight for `d`, starting it when there is none. `true` when this call started it.
    pub(crate) async fn join_or_start(&self, up: &Arc<Upstream>, repo: &str, cred: &Credential, d: &Digest) -> Result<(Arc<Flight>, bool), ApiError> {
        if let Some(f) = self.inner.flights.lock().get(d) {
            return Ok((f.clone(), false));
        }
        // Create the temp file off the async threads, then re-check under the lock: another request
        // may have started the same flight meanwhile.
        let writer = self.blocking_store(|s, d| s.begin(&d, None), d.clone()).await?;
        let mut flights = self.inner.flights.lock();
        if let Some(f) = flights.get(d) {
            drop(writer);
            return Ok((f.clone(), false));
        }
        let reg = self.clone();
        let key = d.clone();
        let (u, r, dd, store) = (up.name().to_string(), repo.to_string(), d.clone(), self.inner.store.clone());
        let job = FetchJob {
            upstream: up.clone(),
            repo: repo.to_string(),
            cred: cred.clone(),
            digest: d.clone(),
            retries: self.inner.cfg.fetch_retries,
            metrics: self.inner.metrics.clone(),
            // Membership is recorded after the commit (a crash never leaves a link to a blob
            // never stored) and before the last byte is released (a client asking again at once
            // finds the blob linked to the repository it came through).
            after_commit: Some(Box::new(move || {
                if let Err(e) = store.link(&u, &r, &dd) {
                    tracing::warn!(error = %e, "could not record repository membership");
                }
            })),
        };
        let fl = flight::start(job, writer, move |_outcome| {
            reg.inner.flights.lock().remove(&key);
        })
        .map_err(ApiError::from)?;
        flights.insert(d.clone(), fl.clone());
        Ok((fl, true))
    }

    async fn serve_stored_blob(&self, ctx: &mut Ctx, d: &Digest, range: Option<RangeSpec>) -> Result<Option<Response>, ApiError> {
        let Some(handle) = self.blocking_store(|s, d| s.get(&d), d.clone()).await? else { return Ok(None) };
        let total = handle.size;
        let file = Arc::new(handle.try_clone_file().map_err(ApiError::internal)?);
        ctx.rec.outcome = CacheOutcome::Hit;
        ctx.rec.size = Some(total);
        let (status, start, end) = body_window(ctx, range, total)?;
        let resp = blob_response(Body::from_stream(flight::file_stream(file, start, end, handle)), d, status, start, end, total);
        Ok(Some(resp))
    }

    // ---------------------------------------------------------------- tags

    async fn tags(&self, ctx: &mut Ctx, method: &Method, name: &str, query: &str, ns: Option<&str>, ident: &Identity) -> Result<Response, ApiError> {
        if *method != Method::GET && *method != Method::HEAD {
            return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, Code::Unsupported, "tags are listed with GET"));
        }
        let t = self.resolve(name, ns)?;
        ctx.rec.upstream = t.upstream.as_ref().map(|u| u.name().to_string());
        ctx.rec.repo = Some(t.repo.clone());
        if let Some(up) = &t.upstream {
            let cred = auth::credential_for(ident, up, &self.inner.cfg.accounts);
            let suffix = if query.is_empty() { "tags/list".to_string() } else { format!("tags/list?{query}") };
            let r = up.send(Method::GET, &t.repo, &suffix, &cred, HeaderMap::new()).await.map_err(|e| ApiError::unavailable(format!("{} cannot be reached: {e}", up.name())))?;
            let status = r.status();
            let challenge = r.headers().get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_string);
            let link = r.headers().get(header::LINK).cloned();
            if matches!(status.as_u16(), 401 | 403) {
                return Err(self.unauthorized(challenge.as_deref(), &format!("{} refused to list tags of {}", up.name(), t.repo)));
            }
            let body = r.bytes().await.map_err(|e| ApiError::unavailable(e.to_string()))?;
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() = status;
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Some(v) = link.as_ref().and_then(|l| l.to_str().ok()).and_then(|l| next_link(l, name, ns)) {
                resp.headers_mut().insert(header::LINK, v);
            }
            return Ok(resp);
        }
        let mut tags = self.blocking_store(|s, r| s.list_tags(LOCAL, &r), t.repo.clone()).await?;
        if tags.is_empty() {
            return Err(ApiError::not_found(Code::NameUnknown, &t.repo));
        }
        let n = query_param(query, "n").map(|n| n.parse::<usize>().map_err(|_| ApiError::bad_request(Code::Unsupported, "n must be a number"))).transpose()?;
        if let Some(last) = query_param(query, "last") {
            tags.retain(|t| t.as_str() > last.as_str());
        }
        let mut link = None;
        if let Some(n) = n {
            if tags.len() > n {
                tags.truncate(n);
                if let Some(l) = tags.last() {
                    link = Some(format!("</v2/{name}/tags/list?n={n}&last={l}>; rel=\"next\""));
                }
            }
        }
        let body = serde_json::json!({ "name": name, "tags": tags });
        let mut resp = axum::Json(body).into_response();
        if let Some(l) = link {
            if let Ok(v) = HeaderValue::from_str(&l) {
                resp.headers_mut().insert(header::LINK, v);
            }
        }
        Ok(resp)
    }

    // ---------------------------------------------------------------- uploads (push)

    #[allow(clippy::too_many_arguments)]
    async fn upload_start(&self, ctx: &mut Ctx, method: &Method, headers: &HeaderMap, name: &str, query: &str, ns: Option<&str>, body: Body) -> Result<Response, ApiError> {
        if *method != Method::POST {
            return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, Code::Unsupported, "uploads start with POST"));
        }
        let t = self.local_target(name, ns)?;
        ctx.rec.repo = Some(t.repo.clone());
        // Cross-repository mount.
        if let (Some(mount), Some(from)) = (query_param(query, "mount"), query_param(query, "from")) {
            let d: Digest = mount.parse().map_err(|e: thaw_oci::DigestError| ApiError::bad_request(Code::DigestInvalid, e.to_string()))?;
            let ok = self.blocking_store(|s, (from, to, d)| {
                if s.is_linked(LOCAL, &from, &d)? && s.stat(&d)?.is_some() {
                    s.link(LOCAL, &to, &d)?;
                    Ok(true)
                } else {
                    Ok(false)
                }
            }, (from.clone(), t.repo.clone(), d.clone())).await?;
            if ok {
                ctx.rec.digest = Some(d.to_string());
                return Ok(created_blob(&t.repo, &d));
            }
            // Not mountable: fall back to a normal upload session, as the spec says.
        }
        // Monolithic upload in the POST.
        if let Some(dq) = query_param(query, "digest") {
            let d: Digest = dq.parse().map_err(|e: thaw_oci::DigestError| ApiError::bad_request(Code::DigestInvalid, e.to_string()))?;
            // Streamed into an upload (never buffered whole), then verified and committed like the
            // last PUT of a chunked upload.
            let id = self.blocking_store(|s, ()| s.upload_start(), ()).await?;
            let cancel = || self.blocking_store(move |s, ()| s.upload_cancel(&id), ());
            // The client's body breaking off ends the request too: its upload goes either way.
            let appended = match self.append_stream(&id, 0, body).await {
                Ok(a) => a,
                Err(e) => {
                    let _ = cancel().await;
                    return Err(e);
                }
            };
            let (id2, d2, repo) = (id, d.clone(), t.repo.clone());
            let finished = match appended {
                Ok(_) => self.blocking_store_raw(move |s| finish_push(s, &id2, &d2, &repo)).await?,
                Err(e) => Err(PushError::Store(e)),
            };
            if finished.is_err() {
                let _ = cancel().await;
            }
            finished.map_err(push_error)?;
            ctx.rec.digest = Some(d.to_string());
            return Ok(created_blob(&t.repo, &d));
        }
        let _ = headers;
        let id = self.blocking_store(|s, ()| s.upload_start(), ()).await?;
        Ok(upload_accepted(&t.repo, &id, 0, StatusCode::ACCEPTED))
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload(&self, ctx: &mut Ctx, method: &Method, headers: &HeaderMap, name: &str, id: &str, query: &str, ns: Option<&str>, body: Body) -> Result<Response, ApiError> {
        let t = self.local_target(name, ns)?;
        ctx.rec.repo = Some(t.repo.clone());
        let id: UploadId = id.parse().map_err(|_| ApiError::not_found(Code::BlobUploadUnknown, format!("upload {id}")))?;
        let unknown = |e: thaw_store::StoreError| push_error(PushError::Store(e));
        match *method {
            Method::GET => {
                let id2 = id;
                let size = self.blocking_store_raw(move |s| s.upload_size(&id2)).await?.map_err(unknown)?;
                Ok(upload_accepted(&t.repo, &id, size, StatusCode::NO_CONTENT))
            }
            Method::DELETE => {
                let id2 = id;
                self.blocking_store_raw(move |s| s.upload_cancel(&id2)).await?.map_err(unknown)?;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            Method::PATCH => {
                let id2 = id;
                let current = self.blocking_store_raw(move |s| s.upload_size(&id2)).await?.map_err(unknown)?;
                if let Some(cr) = headers.get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok()) {
                    let start = cr.trim_start_matches("bytes ").split('-').next().and_then(|s| s.trim().parse::<u64>().ok());
                    if start != Some(current) {
                        return Err(ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, Code::BlobUploadInvalid, format!("chunk starts at {start:?} but the upload has {current} bytes; resume from {current}")));
                    }
                }
                let size = self.append_stream(&id, current, body).await?.map_err(unknown)?;
                Ok(upload_accepted(&t.repo, &id, size, StatusCode::ACCEPTED))
            }
            Method::PUT => {
                let dq = query_param(query, "digest").ok_or_else(|| ApiError::bad_request(Code::DigestInvalid, "PUT to an upload needs ?digest="))?;
                let d: Digest = dq.parse().map_err(|e: thaw_oci::DigestError| ApiError::bad_request(Code::DigestInvalid, e.to_string()))?;
                let id2 = id;
                let current = self.blocking_store_raw(move |s| s.upload_size(&id2)).await?.map_err(unknown)?;
                self.append_stream(&id, current, body).await?.map_err(unknown)?;
                let (id2, d2, repo) = (id, d.clone(), t.repo.clone());
                self.blocking_store_raw(move |s| finish_push(s, &id2, &d2, &repo)).await?.map_err(push_error)?;
                ctx.rec.digest = Some(d.to_string());
                Ok(created_blob(&t.repo, &d))
            }
            _ => Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, Code::Unsupported, format!("{method} is not allowed on uploads"))),
        }
    }

    /// Appends a request body to an upload as it arrives.
    /// The outer error is the client's body breaking off; the inner one the store's answer.
    async fn append_stream(&self, id: &UploadId, mut offset: u64, body: Body) -> Result<Result<u64, thaw_store::StoreError>, ApiError> {
        let mut stream = body.into_data_stream();
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let next = stream.next().await;
            let done = next.is_none();
            if let Some(chunk) = next {
                let chunk = chunk.map_err(|e| ApiError::bad_request(Code::BlobUploadInvalid, format!("upload body broke off: {e}")))?;
                pending.extend_from_slice(&chunk);
            }
            if !pending.is_empty() && (done || pending.len() >= flight::CHUNK) {
                let data = std::mem::take(&mut pending);
                let store = self.inner.store.clone();
                let id = *id;
                offset = match tokio::task::spawn_blocking(move || store.upload_append(&id, offset, &data)).await.map_err(ApiError::internal)? {
                    Ok(o) => o,
                    Err(e) => return Ok(Err(e)),
                };
            }
            if done {
                return Ok(Ok(offset));
            }
        }
    }

    /// When thaw has accounts, its local repositories (pushed to it, not mirrored) are for
    /// authenticated accounts only: reading, listing and pushing alike. Mirrored repositories
    /// follow the tenant rule in [`crate::auth`] instead.
    fn local_access(&self, endpoint: Option<&Endpoint>, ns: Option<&str>, ident: &Identity) -> Result<(), ApiError> {
        if self.inner.cfg.accounts.is_empty() || matches!(ident, Identity::Account(_)) {
            return Ok(());
        }
        let name = match endpoint {
            Some(Endpoint::Manifest { name, .. } | Endpoint::Blob { name, .. } | Endpoint::Tags { name } | Endpoint::UploadStart { name } | Endpoint::Upload { name, .. }) => name,
            _ => return Ok(()),
        };
        match self.resolve(name, ns) {
            Ok(t) if t.upstream.is_none() => Err(self.unauthorized(None, &format!("{} is a local repository of this registry; log in with a thaw account", t.repo))),
            _ => Ok(()),
        }
    }

    fn local_target(&self, name: &str, ns: Option<&str>) -> Result<Target, ApiError> {
        let t = self.resolve(name, ns)?;
        if t.upstream.is_some() {
            return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, Code::Unsupported, format!("{name} is mirrored from an upstream; push to the upstream instead")));
        }
        Ok(t)
    }
}

#[derive(Clone)]
pub(crate) struct FetchedManifest {
    pub body: Bytes,
    pub digest: Digest,
    pub media_type: String,
    layers: Vec<LayerRef>,
}

/// Counts body bytes and writes the request's trace record when the body is finished or dropped.
struct Counted {
    ctx: Option<Ctx>,
    sent: u64,
    reg: Registry,
}

impl Counted {
    fn failed(&mut self) {
        if let Some(ctx) = &mut self.ctx {
            // The body was cut (e.g. a blob that failed verification): the client got less than
            // the status promised. Record it as a 502 so traces do not count it as served.
            ctx.rec.status = 502;
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.take() {
            self.reg.write_trace(ctx, self.sent);
        }
    }
}

/// Rewrites an upstream's `Link: <...?n=..&last=..>; rel="next"` for the client: the path is the
/// client's own name for the repository (with its prefix) and `ns` is kept, so the next page is
/// routed to the same upstream; only the upstream's query (the page position) is carried over.
fn next_link(upstream_link: &str, name: &str, ns: Option<&str>) -> Option<HeaderValue> {
    let inside = upstream_link.split_once('<')?.1.split_once('>')?.0;
    let query = inside.split_once('?').map(|(_, q)| q).unwrap_or("");
    let query: Vec<&str> = query.split('&').filter(|kv| !kv.is_empty() && !kv.starts_with("ns=")).collect();
    let mut q = query.join("&");
    if let Some(ns) = ns {
        let ns: String = percent_encoding::utf8_percent_encode(ns, percent_encoding::NON_ALPHANUMERIC).collect();
        q = if q.is_empty() { format!("ns={ns}") } else { format!("{q}&ns={ns}") };
    }
    let sep = if q.is_empty() { "" } else { "?" };
    HeaderValue::from_str(&format!("</v2/{name}/tags/list{sep}{q}>; rel=\"next\"")).ok()
}

/// The method as metrics and traces name it: the registry's methods, and "OTHER" for anything
/// else, so a client cannot create unbounded label sets with made-up methods.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// Why a push was refused.
enum PushError {
    Store(thaw_store::StoreError),
    /// A manifest references a blob not pushed to (or mounted into) its repository.
    MissingBlob(Digest),
    /// The store has no room beside pinned content: acknowledging the push would lose it.
    NoRoom(Digest),
}

impl From<thaw_store::StoreError> for PushError {
    fn from(e: thaw_store::StoreError) -> PushError {
        PushError::Store(e)
    }
}

fn push_error(e: PushError) -> ApiError {
    use thaw_store::StoreError as E;
    match e {
        PushError::Store(e @ E::UnknownUpload { .. }) => ApiError::not_found(Code::BlobUploadUnknown, format!("the upload session ({e})")),
        PushError::Store(e @ E::UploadOffset { .. }) => ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, Code::BlobUploadInvalid, e.to_string()),
        PushError::Store(e @ (E::DigestMismatch { .. } | E::SizeMismatch { .. })) => ApiError::bad_request(Code::DigestInvalid, e.to_string()),
        PushError::Store(e) => ApiError::from(e),
        PushError::MissingBlob(d) => ApiError::bad_request(
            Code::ManifestBlobUnknown,
            format!("manifest references {d}, which was not pushed to this repository; push (or mount) its blobs first"),
        ),
        PushError::NoRoom(d) => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            Code::SizeInvalid,
            format!("{d} does not fit in the store beside the content in use now; nothing was kept: raise the store capacity or retry later"),
        ),
    }
}

/// Verifies and commits a finished upload and links it to the local repository.
fn finish_push(s: &BlobStore, id: &UploadId, d: &Digest, repo: &str) -> Result<(), PushError> {
    match s.upload_finish(id, d)? {
        Committed::NotCached => Err(PushError::NoRoom(d.clone())),
        Committed::Stored | Committed::AlreadyPresent => {
            s.link(LOCAL, repo, d)?;
            Ok(())
        }
    }
}

/// Stores a small in-memory blob (manifests). The bytes are verified against `d` even when the
/// digest is stored already: a client proves it has content by sending it, never by naming it, so
/// a push cannot link someone else's cached blob into its repository.
fn store_bytes(s: &BlobStore, d: &Digest, data: &[u8]) -> Result<Committed, thaw_store::StoreError> {
    let mut h = d.digester();
    h.update(data);
    let actual = h.finish();
    if actual != *d {
        return Err(thaw_store::StoreError::DigestMismatch { expected: d.clone(), actual });
    }
    if s.stat(d)?.is_some() {
        return Ok(Committed::AlreadyPresent);
    }
    let mut w = s.begin(d, Some(data.len() as u64))?;
    w.write(data)?;
    w.commit()
}

/// A 429 for a rate-limited upstream, relaying its `Retry-After` so clients back off as long as
/// the upstream asked rather than hammering thaw (which would only ask the upstream again).
fn rate_limited(up: &Upstream, retry_after: Option<&HeaderValue>) -> ApiError {
    let e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, Code::TooManyRequests, format!("{} is rate-limiting; try again later", up.name()));
    match retry_after.and_then(|v| v.to_str().ok()) {
        Some(v) => e.with_header(header::RETRY_AFTER, v),
        None => e,
    }
}

fn outcome_name(o: CacheOutcome) -> &'static str {
    match o {
        CacheOutcome::Hit => "hit",
        CacheOutcome::Miss => "miss",
        CacheOutcome::Coalesced => "coalesced",
        CacheOutcome::Stale => "stale",
        CacheOutcome::PassThrough => "pass-through",
        CacheOutcome::None => "none",
    }
}

/// The part of a `total`-byte body to send: all of it (200), or the client's range (206),
/// recorded in the trace.
fn body_window(ctx: &mut Ctx, range: Option<RangeSpec>, total: u64) -> Result<(StatusCode, u64, u64), ApiError> {
    Ok(match range {
        Some(spec) => {
            let r = spec.resolve(total).map_err(|e| range_error(e, total))?;
            ctx.rec.range = Some((r.start, r.end));
            (StatusCode::PARTIAL_CONTENT, r.start, r.end + 1)
        }
        None => (StatusCode::OK, 0, total),
    })
}

/// A blob answer (from the store or from a flight) with its headers; `end` is exclusive.
fn blob_response(body: Body, d: &Digest, status: StatusCode, start: u64, end: u64, total: u64) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert("docker-content-digest", HeaderValue::from_str(&d.to_string()).expect("ascii"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, HeaderValue::from_str(&format!("\"{d}\"")).expect("ascii"));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes {}-{}/{}", start, end - 1, total)).expect("ascii"));
    }
    resp
}

fn range_error(e: thaw_oci::RangeError, total: u64) -> ApiError {
    ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, Code::RangeInvalid, e.to_string())
        .with_header(header::CONTENT_RANGE, &thaw_oci::RangeError::unsatisfied_content_range(total))
}

fn accept_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::ACCEPT, HeaderValue::from_str(&MediaType::accept_all()).expect("ascii"));
    h
}

fn version_response() -> Response {
    let mut resp = axum::Json(serde_json::json!({})).into_response();
    resp.headers_mut().insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
    resp
}

fn blob_head(d: &Digest, size: u64) -> Response {
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert("docker-content-digest", HeaderValue::from_str(&d.to_string()).expect("ascii"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    resp
}

fn created_blob(repo: &str, d: &Digest) -> Response {
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_str(&format!("/v2/{repo}/blobs/{d}")).expect("ascii"));
    h.insert("docker-content-digest", HeaderValue::from_str(&d.to_string()).expect("ascii"));
    resp
}

fn upload_accepted(repo: &str, id: &UploadId, size: u64, status: StatusCode) -> Response {
    let mut resp = status.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_str(&format!("/v2/{repo}/blobs/uploads/{id}")).expect("ascii"));
    h.insert(header::RANGE, HeaderValue::from_str(&format!("0-{}", size.saturating_sub(1))).expect("ascii"));
    h.insert("docker-upload-uuid", HeaderValue::from_str(&id.to_string()).expect("ascii"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, Code::SizeInvalid, format!("request body is too large (limit {limit} bytes) or broken: {e}"))),
    }
}

/// The value of a query parameter, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 10: the next page of an upstream tag listing is routed back to the same upstream.
    #[test]
    fn next_link_keeps_the_clients_name_and_ns() {
        let up = r#"<https://quay.io/v2/org/repo/tags/list?n=50&last=v9>; rel="next""#;
        assert_eq!(next_link(up, "quay.io/org/repo", None).unwrap(), r#"</v2/quay.io/org/repo/tags/list?n=50&last=v9>; rel="next""#);
        assert_eq!(next_link(up, "org/repo", Some("quay.io")).unwrap(), r#"</v2/org/repo/tags/list?n=50&last=v9&ns=quay%2Eio>; rel="next""#);
        let relative = r#"</v2/library/alpine/tags/list?last=3.19&n=2&ns=docker.io>; rel="next""#;
        assert_eq!(next_link(relative, "alpine", Some("docker.io")).unwrap(), r#"</v2/alpine/tags/list?last=3.19&n=2&ns=docker%2Eio>; rel="next""#);
        assert!(next_link("garbage", "x", None).is_none());
    }

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"PROPFIND").unwrap()), "OTHER");
    }
}
