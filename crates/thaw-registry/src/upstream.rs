//! The client side: talking to an upstream registry, including its Bearer-token challenge flow.
//!
//! A request is sent with the best credential known for it; on a `401` carrying a Bearer challenge
//! thaw obtains a token from the challenge's realm (with Basic credentials when it has them) and
//! sends the request again. Tokens are cached per (scope, credential) until shortly before they
//! expire. A client's own Bearer token (tenant mode a) is forwarded as is and never exchanged.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use parking_lot::Mutex;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};

use crate::config::{Credentials, UpstreamConfig};

/// The credential a request is sent upstream with.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    Anonymous,
    Basic { username: String, password: String },
    /// A client's token from the upstream's own token service, forwarded unchanged.
    Bearer(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Basic { username, .. } => write!(f, "Basic({username})"),
            Credential::Bearer(_) => f.write_str("Bearer(<token>)"),
        }
    }
}

impl From<&Credentials> for Credential {
    fn from(c: &Credentials) -> Credential {
        Credential::Basic { username: c.username.clone(), password: c.password.clone() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {upstream} could not be reached: {source}")]
    Unreachable { upstream: String, source: reqwest::Error },
    #[error("upstream {upstream}'s token service at {realm} refused a token ({status})")]
    TokenRefused { upstream: String, realm: String, status: StatusCode },
    #[error("upstream {upstream} sent an authentication challenge thaw cannot follow: {challenge}")]
    BadChallenge { upstream: String, challenge: String },
}

/// A parsed `WWW-Authenticate: Bearer realm=...,service=...,scope=...` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BearerChallenge {
    pub realm: String,
    pub service: Option<String>,
    pub scope: Option<String>,
}

/// Parses a challenge header. Returns `None` for non-Bearer schemes.
pub fn parse_bearer_challenge(value: &str) -> Option<BearerChallenge> {
    let rest = value.trim().strip_prefix("Bearer ").or_else(|| value.trim().strip_prefix("bearer "))?;
    let mut params: HashMap<String, String> = HashMap::new();
    // key="value" pairs separated by commas; values may contain commas inside quotes (scopes).
    let mut chars = rest.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(' ' | ',')) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            val.push(n)
                        }
                    }
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            val = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), val);
    }
    Some(BearerChallenge {
        realm: params.remove("realm")?,
        service: params.remove("service"),
        scope: params.remove("scope"),
    })
}

/// The most upstream tokens kept at once.
const MAX_CACHED_TOKENS: usize = 4096;

#[derive(Hash, PartialEq, Eq)]
struct TokenKey {
    scope: String,
    cred: Credential,
}

/// One upstream registry.
pub struct Upstream {
    pub config: UpstreamConfig,
    base: String,
    http: reqwest::Client,
    tokens: Mutex<HashMap<TokenKey, (String, Instant)>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upstream({})", self.config.name)
    }
}

impl Upstream {
    pub fn new(config: UpstreamConfig, http: reqwest::Client) -> Upstream {
        let base = config.url.trim_end_matches('/').to_string();
        Upstream { config, base, http, tokens: Mutex::new(HashMap::new()) }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The credential the mirror uses when a client brings none of its own for this upstream.
    pub fn default_credential(&self) -> Credential {
        self.config.credentials.as_ref().map(Credential::from).unwrap_or(Credential::Anonymous)
    }

    /// The repository name as the upstream knows it (Docker Hub's `library/` added).
    pub fn upstream_repo(&self, repo: &str) -> String {
        if self.config.adds_library_prefix() && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo.to_string()
        }
    }

    fn url(&self, repo: &str, suffix: &str) -> String {
        format!("{}/v2/{}/{}", self.base, repo, suffix)
    }

    /// Sends `method` to `/v2/<repo>/<suffix>` with `cred`, following a Bearer challenge once.
    /// Any status is returned to the caller; only transport failures are errors.
    pub async fn send(
        &self,
        method: Method,
        repo: &str,
        suffix: &str,
        cred: &Credential,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = self.url(repo, suffix);
        let scope = format!("repository:{repo}:pull");
        let first_auth = match cred {
            Credential::Bearer(t) => Some(format!("Bearer {t}")),
            other => self.cached_token(&scope, other).map(|t| format!("Bearer {t}")),
        };
        let resp = self.send_once(method.clone(), &url, headers.clone(), first_auth.as_deref()).await?;
        if resp.status() != StatusCode::UNAUTHORIZED || matches!(cred, Credential::Bearer(_)) {
            return Ok(resp);
        }
        let Some(challenge) = resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_string)
        else {
            return Ok(resp);
        };
        if let Some(bc) = parse_bearer_challenge(&challenge) {
            let token = self.fetch_token(&bc, &scope, cred).await?;
            let auth = format!("Bearer {token}");
            return self.send_once(method, &url, headers, Some(&auth)).await;
        }
        if challenge.to_ascii_lowercase().starts_with("basic") {
            if let Credential::Basic { username, password } = cred {
                let auth = basic_header(username, password);
                return self.send_once(method, &url, headers, Some(&auth)).await;
            }
            return Ok(resp);
        }
        Err(UpstreamError::BadChallenge { upstream: self.name().into(), challenge })
    }

    /// The challenge the upstream gives an unauthenticated request for `repo` (with the
    /// repository's scope), for relaying to a client; `None` when it asks for none or cannot be
    /// reached. No token is fetched.
    pub async fn challenge(&self, repo: &str) -> Option<String> {
        let url = self.url(repo, "tags/list");
        let resp = self.send_once(Method::HEAD, &url, HeaderMap::new(), None).await.ok()?;
        resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_string)
    }

    async fn send_once(
        &self,
        method: Method,
        url: &str,
        mut headers: HeaderMap,
        auth: Option<&str>,
    ) -> Result<reqwest::Response, UpstreamError> {
        if let Some(a) = auth {
            if let Ok(v) = HeaderValue::from_str(a) {
                headers.insert(AUTHORIZATION, v);
            }
        }
        self.http
            .request(method, url)
            .headers(headers)
            .send()
            .await
            .map_err(|source| UpstreamError::Unreachable { upstream: self.name().into(), source })
    }

    fn cached_token(&self, scope: &str, cred: &Credential) -> Option<String> {
        let key = TokenKey { scope: scope.to_string(), cred: cred.clone() };
        let mut tokens = self.tokens.lock();
        match tokens.get(&key) {
            Some((t, exp)) if *exp > Instant::now() => Some(t.clone()),
            Some(_) => {
                tokens.remove(&key);
                None
            }
            None => None,
        }
    }

    async fn fetch_token(&self, bc: &BearerChallenge, scope: &str, cred: &Credential) -> Result<String, UpstreamError> {
        let mut req = self.http.get(&bc.realm);
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = &bc.service {
            query.push(("service", s));
        }
        // The challenge's scope is what the upstream wants for this request; fall back to ours.
        let want = bc.scope.as_deref().unwrap_or(scope);
        query.push(("scope", want));
        req = req.query(&query);
        if let Credential::Basic { username, password } = cred {
            req = req.basic_auth(username, Some(password));
        }
        let resp = req
            .send()
            .await
            .map_err(|source| UpstreamError::Unreachable { upstream: self.name().into(), source })?;
        if !resp.status().is_success() {
            return Err(UpstreamError::TokenRefused {
                upstream: self.name().into(),
                realm: bc.realm.clone(),
                status: resp.status(),
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let body: TokenResponse = resp
            .json()
            .await
            .map_err(|source| UpstreamError::Unreachable { upstream: self.name().into(), source })?;
        let token = body.token.or(body.access_token).ok_or_else(|| UpstreamError::BadChallenge {
            upstream: self.name().into(),
            challenge: "token response carries no token".into(),
        })?;
        let life = token_cache_life(body.expires_in);
        if !life.is_zero() {
            let mut tokens = self.tokens.lock();
        // Bounded: one token per (repository scope, credential) would otherwise grow with every
        // repository name anyone asks for. Expired tokens go first; past the bound, all of them
        // (they are re-fetched on demand).
        if tokens.len() >= MAX_CACHED_TOKENS {
            let now = Instant::now();
            tokens.retain(|_, (_, exp)| *exp > now);
            if tokens.len() >= MAX_CACHED_TOKENS {
                tokens.clear();
            }
        }
        tokens.insert(TokenKey { scope: scope.to_string(), cred: cred.clone() }, (token.clone(), Instant::now() + life));
        }
        Ok(token)
    }
}

/// How long a token from a token service is reused: its `expires_in` (the spec's default is 60 s),
/// renewed early by 10 s or by half its life when that is shorter, so a request never races the
/// expiry and a short-lived token is never used past its end.
fn token_cache_life(expires_in: Option<u64>) -> Duration {
    let secs = expires_in.unwrap_or(60);
    Duration::from_secs(secs - (secs / 2).min(10))
}

pub fn basic_header(username: &str, password: &str) -> String {
    let raw = format!("{username}:{password}");
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parsing() {
        let c = parse_bearer_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.docker.io/token");
        assert_eq!(c.service.as_deref(), Some("registry.docker.io"));
        assert_eq!(c.scope.as_deref(), Some("repository:library/alpine:pull,push"));
        assert_eq!(parse_bearer_challenge("Basic realm=\"x\""), None);
        assert_eq!(parse_bearer_challenge("Bearer service=\"x\""), None, "realm is required");
        assert!(parse_bearer_challenge("Bearer realm=unquoted,service=s").is_some());
    }

    #[test]
    fn tokens_are_never_reused_past_their_expiry() {
        assert_eq!(token_cache_life(None), Duration::from_secs(50));
        assert_eq!(token_cache_life(Some(300)), Duration::from_secs(290));
        assert_eq!(token_cache_life(Some(4)), Duration::from_secs(2));
        assert_eq!(token_cache_life(Some(1)), Duration::from_secs(1));
        assert_eq!(token_cache_life(Some(0)), Duration::ZERO);
    }

    #[test]
    fn library_prefix() {
        let hub = Upstream::new(UpstreamConfig::docker_hub(), reqwest::Client::new());
        assert_eq!(hub.upstream_repo("alpine"), "library/alpine");
        assert_eq!(hub.upstream_repo("team/app"), "team/app");
        let other = Upstream::new(UpstreamConfig::from_url("http://127.0.0.1:5001").unwrap(), reqwest::Client::new());
        assert_eq!(other.name(), "127.0.0.1:5001");
        assert_eq!(other.upstream_repo("alpine"), "alpine");
    }
}
