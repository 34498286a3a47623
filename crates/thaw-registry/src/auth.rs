//! Tenants: who a client is, which upstream credential its requests use, and whether it may be
//! served cached content of a repository.
//!
//! A client is one of:
//! - anonymous (no `Authorization`);
//! - a holder of an upstream token (`Authorization: Bearer`, tenant mode a): thaw relayed the
//!   upstream's challenge, the client got a token from the upstream's token service, and thaw
//!   forwards that token upstream unchanged;
//! - one of thaw's own accounts (`Authorization: Basic`, tenant mode b), mapped in the config to
//!   its own upstream credentials.
//!
//! The rule for serving cached content of repository R on upstream U:
//! - R is *public* when U grants the mirror's default credential (anonymous, or the operator's
//!   configured credentials — whose content the operator chose to share) access to it. Public
//!   content is served to anyone. The verdict is revised when a request made with the default
//!   credential is refused (a tag revalidation after `tag_ttl`, a manifest or blob fetch): the
//!   repository is then private from that moment. Content by digest is never revalidated, so a
//!   repository that turns private is noticed at its next tag revalidation or miss.
//! - Otherwise R is private, and a client is served it only after U has said yes to that client's
//!   own credential for R (a HEAD of the object asked for, with that credential). The yes is
//!   remembered for `auth_ttl`, never past the expiry of the client's token, and forgotten as soon
//!   as U refuses that credential for R. When U cannot be asked the answer is no (fail closed).
//! - Independently, a blob or manifest digest is served under R only when it is known to belong to
//!   R (listed by R's manifests or fetched through R), or U confirms it; so naming a private digest
//!   through a public repository reveals nothing.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::HeaderMap;
use subtle_eq::constant_time_eq;

use crate::config::Account;
use crate::upstream::{Credential, Upstream};

/// Who a client authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    /// Index into the configured accounts.
    Account(usize),
    /// An upstream token presented by the client.
    Token(String),
}

/// Why a client's credentials were refused.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// Basic credentials that match no account.
    BadAccount,
    /// An `Authorization` header thaw cannot read.
    Malformed,
}

/// Reads the client's identity from its request headers.
pub fn identify(headers: &HeaderMap, accounts: &[Account]) -> Result<Identity, AuthFailure> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else { return Ok(Identity::Anonymous) };
    let value = value.to_str().map_err(|_| AuthFailure::Malformed)?.trim();
    if let Some(token) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthFailure::Malformed);
        }
        return Ok(Identity::Token(token.to_string()));
    }
    if let Some(b64) = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic ")) {
        let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|_| AuthFailure::Malformed)?;
        let raw = String::from_utf8(raw).map_err(|_| AuthFailure::Malformed)?;
        let (user, pass) = raw.split_once(':').ok_or(AuthFailure::Malformed)?;
        if user.is_empty() && pass.is_empty() {
            // What containers/image sends after a Basic challenge when it has no credentials:
            // a client that chose not to authenticate.
            return Ok(Identity::Anonymous);
        }
        // Compare every account in constant time so timing tells nothing about which names exist.
        let mut found = None;
        for (i, a) in accounts.iter().enumerate() {
            let ok = constant_time_eq(a.username.as_bytes(), user.as_bytes())
                & constant_time_eq(a.password.as_bytes(), pass.as_bytes());
            if ok && found.is_none() {
                found = Some(i);
            }
        }
        return found.map(Identity::Account).ok_or(AuthFailure::BadAccount);
    }
    Err(AuthFailure::Malformed)
}

/// The credential `ident`'s requests to `up` are sent with.
pub fn credential_for(ident: &Identity, up: &Upstream, accounts: &[Account]) -> Credential {
    match ident {
        Identity::Anonymous => up.default_credential(),
        Identity::Token(t) => Credential::Bearer(t.clone()),
        Identity::Account(i) => accounts
            .get(*i)
            .and_then(|a| a.upstream.get(up.name()))
            .map(Credential::from)
            .unwrap_or_else(|| up.default_credential()),
    }
}

/// A stable string naming the identity, for the trace's keyed principal hash and the
/// authorisation cache. Never logged or written as is.
pub fn identity_key(ident: &Identity, accounts: &[Account]) -> Option<String> {
    match ident {
        Identity::Anonymous => None,
        Identity::Token(t) => Some(format!("token:{t}")),
        Identity::Account(i) => accounts.get(*i).map(|a| format!("account:{}", a.username)),
    }
}

/// How long an upstream's yes to `cred` may be remembered: `ttl`, shortened to the token's own
/// expiry when the credential is a JWT carrying `exp`.
pub fn grant_lifetime(cred: &Credential, ttl: Duration) -> Duration {
    let Credential::Bearer(token) = cred else { return ttl };
    let Some(exp) = jwt_exp(token) else { return ttl };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    ttl.min(Duration::from_secs(exp.saturating_sub(now)))
}

/// The `exp` claim of a JWT, read without verifying it (the upstream verifies; thaw only uses it
/// to forget a grant no later than the token dies).
fn jwt_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("exp")?.as_u64()
}

/// Remembered upstream grants: (upstream, repo, identity key) -> valid until.
#[derive(Default)]
pub struct Grants {
    map: parking_lot::Mutex<std::collections::HashMap<(String, String, String), Instant>>,
}

impl Grants {
    pub fn allowed(&self, upstream: &str, repo: &str, who: &str) -> bool {
        let key = (upstream.to_string(), repo.to_string(), who.to_string());
        let mut map = self.map.lock();
        match map.get(&key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                map.remove(&key);
                false
            }
            None => false,
        }
    }

    pub fn grant(&self, upstream: &str, repo: &str, who: &str, life: Duration) {
        if life.is_zero() {
            return;
        }
        let mut map = self.map.lock();
        // Keep the map bounded: drop expired grants when it grows.
        if map.len() > 100_000 {
            let now = Instant::now();
            map.retain(|_, until| *until > now);
        }
        map.insert((upstream.to_string(), repo.to_string(), who.to_string()), Instant::now() + life);
    }

    pub fn revoke(&self, upstream: &str, repo: &str, who: &str) {
        self.map.lock().remove(&(upstream.to_string(), repo.to_string(), who.to_string()));
    }
}

/// Constant-time byte comparison (written here: it is six lines, and pulling a crate for it would
/// add a dependency to the registry's attack surface for no gain).
mod subtle_eq {
    pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
        let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
        for i in 0..a.len().max(b.len()) {
            diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
        }
        diff == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Credentials;
    use crate::upstream::basic_header;

    fn accounts() -> Vec<Account> {
        vec![Account {
            username: "alice".into(),
            password: "s3cret".into(),
            upstream: [("up".to_string(), Credentials { username: "a-up".into(), password: "p".into() })].into(),
        }]
    }

    fn hdr(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn identities() {
        let acc = accounts();
        assert_eq!(identify(&HeaderMap::new(), &acc), Ok(Identity::Anonymous));
        assert_eq!(identify(&hdr(&basic_header("alice", "s3cret")), &acc), Ok(Identity::Account(0)));
        assert_eq!(identify(&hdr(&basic_header("alice", "wrong")), &acc), Err(AuthFailure::BadAccount));
        assert_eq!(identify(&hdr(&basic_header("alic", "s3cret")), &acc), Err(AuthFailure::BadAccount));
        assert_eq!(identify(&hdr("Bearer tok"), &acc), Ok(Identity::Token("tok".into())));
        assert_eq!(identify(&hdr("Digest x"), &acc), Err(AuthFailure::Malformed));
        assert_eq!(identify(&hdr("Basic !!!"), &acc), Err(AuthFailure::Malformed));
        assert_eq!(identify(&hdr(&basic_header("", "")), &acc), Ok(Identity::Anonymous));
        assert_eq!(identify(&hdr(&basic_header("", "s3cret")), &acc), Err(AuthFailure::BadAccount));
    }

    #[test]
    fn constant_time_eq_is_eq() {
        use subtle_eq::constant_time_eq as eq;
        assert!(eq(b"", b""));
        assert!(eq(b"abc", b"abc"));
        assert!(!eq(b"abc", b"abd"));
        assert!(!eq(b"abc", b"ab"));
        assert!(!eq(b"ab\xff", b"ab"));
    }

    #[test]
    fn grants_expire_and_never_outlive_a_jwt() {
        let g = Grants::default();
        g.grant("u", "r", "k", Duration::from_millis(30));
        assert!(g.allowed("u", "r", "k"));
        assert!(!g.allowed("u", "r2", "k"));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!g.allowed("u", "r", "k"));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{}}}", now + 5));
        let jwt = Credential::Bearer(format!("eyJhbGciOiJub25lIn0.{claims}.sig"));
        assert!(grant_lifetime(&jwt, Duration::from_secs(60)) <= Duration::from_secs(5));
        let expired = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{}}}", now - 5));
        assert_eq!(grant_lifetime(&Credential::Bearer(format!("a.{expired}.b")), Duration::from_secs(60)), Duration::ZERO);
        assert_eq!(grant_lifetime(&Credential::Bearer("opaque".into()), Duration::from_secs(60)), Duration::from_secs(60));
    }
}
