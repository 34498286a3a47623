//! The one event type every reader produces, and the URI and time parsing they share.
//!
//! Readers differ wildly in what they know: thaw's own records carry repositories, digests and
//! manifests' layer lists; the distribution registry's logs and the IBM traces carry a URI from which
//! repository, kind and reference are parsed; libCacheSim's `oracleGeneral` records carry only an
//! object id and a size. [`Event`] holds the union, with `Option`s for what a format may lack, so the
//! simulator and the analysis see one shape.

use thaw_oci::{Digest, RepoName};
pub use thaw_record::ObjectKind;

/// The HTTP method of a request, reduced to what analyses distinguish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Head,
    Put,
    Post,
    Patch,
    Delete,
    Other,
}

impl Method {
    pub fn parse(s: &str) -> Method {
        match s {
            "GET" | "get" => Method::Get,
            "HEAD" | "head" => Method::Head,
            "PUT" | "put" => Method::Put,
            "POST" | "post" => Method::Post,
            "PATCH" | "patch" => Method::Patch,
            "DELETE" | "delete" => Method::Delete,
            _ => Method::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Other => "OTHER",
        }
    }

    /// Whether the method writes to the registry (a push or part of one).
    pub fn is_write(self) -> bool {
        matches!(self, Method::Put | Method::Post | Method::Patch)
    }
}

/// One request of any trace, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Microseconds since the Unix epoch (or since the trace's own origin for formats without
    /// wall-clock times, like `oracleGeneral`, whose times are seconds from the trace start).
    pub time_us: u64,
    /// The client as the registry saw it (address, or anonymised id).
    pub client: Option<String>,
    /// The repository, e.g. `library/alpine` (kept as a string: anonymised names may not be valid
    /// OCI names).
    pub repo: Option<String>,
    pub kind: ObjectKind,
    /// The object's identity for a cache: a digest's first 8 bytes, a stable hash of
    /// `repo:reference` for manifests by tag, or the trace's own object id.
    pub key: u64,
    /// The reference as the request named it: a digest or a tag.
    pub reference: Option<String>,
    /// Object size in bytes (whole object when known, otherwise bytes sent).
    pub size: u64,
    pub method: Method,
    pub status: u16,
    /// The image (hash of repository and reference) when the record itself says which image it
    /// belongs to: manifest requests. Blob requests get theirs from the pull aggregation.
    pub image: Option<u64>,
    /// Whether a cache sees this request as an access (GET of content answered with content).
    pub cache_access: bool,
    /// For manifests whose record lists them: the layers (key, size).
    pub layers: Vec<(u64, u64)>,
}

impl Event {
    /// A bare access: what `oracleGeneral` records become.
    pub fn access(time_us: u64, key: u64, size: u64) -> Event {
        Event {
            time_us,
            client: None,
            repo: None,
            kind: ObjectKind::Blob,
            key,
            reference: None,
            size,
            method: Method::Get,
            status: 200,
            image: None,
            cache_access: true,
            layers: Vec::new(),
        }
    }

    /// The first path component of the repository: what analyses map to a service category.
    pub fn namespace(&self) -> Option<&str> {
        self.repo.as_deref().map(namespace_of)
    }
}

/// The first path component of a repository name.
pub fn namespace_of(repo: &str) -> &str {
    repo.split('/').next().unwrap_or(repo)
}

/// FNV-1a, 64 bit: a stable hash (the same in every run and build) for names that are not digests.
pub fn stable_hash(parts: &[&str]) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            // a separator byte that cannot occur in names keeps ("a","bc") apart from ("ab","c")
            h.write(&[0xff]);
        }
        h.write(p.as_bytes());
    }
    h.finish()
}

/// The cache key of a content reference: a valid digest's own key, otherwise a stable hash of the
/// string (anonymised traces replace digests by opaque tokens).
pub fn key_of_digest(reference: &str) -> u64 {
    // Fast path for the common case, without allocating: a well-formed sha256/sha512 digest's key
    // is its first 16 hex digits, exactly what `Digest::key64` computes.
    let hex = match reference.split_once(':') {
        Some(("sha256", h)) if h.len() == 64 => Some(h),
        Some(("sha512", h)) if h.len() == 128 => Some(h),
        _ => None,
    };
    if let Some(h) = hex {
        if h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            if let Ok(k) = u64::from_str_radix(&h[..16], 16) {
                return k;
            }
        }
    }
    match reference.parse::<Digest>() {
        Ok(d) => d.key64(),
        Err(_) => stable_hash(&[reference]),
    }
}

/// The identity of an image: its repository and the reference its manifest was asked by.
pub fn image_id(repo: &str, reference: &str) -> u64 {
    stable_hash(&[repo, reference])
}

/// What a registry URI addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUri {
    pub kind: ObjectKind,
    pub repo: Option<String>,
    pub reference: Option<String>,
}

/// The longest URI path accepted; longer ones are reported as malformed.
pub const MAX_URI_LEN: usize = 4096;

/// Parses a distribution API path (`/v2/<name>/manifests/<ref>`, `/v2/<name>/blobs/<digest>`,
/// `/v2/<name>/blobs/uploads/...`, `/v2/<name>/tags/list`, `/v2/`). The query string is ignored.
/// Names are validated as OCI repository names when they are valid; otherwise they are kept as
/// given (anonymised traces), as long as they are non-empty and printable.
pub fn parse_uri(uri: &str) -> Result<ParsedUri, String> {
    if uri.len() > MAX_URI_LEN {
        return Err(format!("uri is longer than {MAX_URI_LEN} bytes"));
    }
    // A full URL (scheme and host) is cut down to its path.
    let path = match uri.find("://") {
        Some(i) => {
            let rest = &uri[i + 3..];
            rest.find('/').map(|j| &rest[j..]).unwrap_or("/")
        }
        None => uri,
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    let Some(rest) = path.strip_prefix("/v2") else {
        return Ok(ParsedUri {
            kind: ObjectKind::Other,
            repo: None,
            reference: None,
        });
    };
    if rest.is_empty() || rest == "/" {
        return Ok(ParsedUri {
            kind: ObjectKind::Version,
            repo: None,
            reference: None,
        });
    }
    let rest = rest
        .strip_prefix('/')
        .ok_or_else(|| format!("bad path {:?}", clip(path)))?;
    if rest == "_catalog" {
        return Ok(ParsedUri {
            kind: ObjectKind::Other,
            repo: None,
            reference: None,
        });
    }
    // The repository name may contain '/', so find the last route keyword.
    let split = |marker: &str| {
        rest.rfind(marker)
            .map(|i| (&rest[..i], &rest[i + marker.len()..]))
    };
    let (kind, name, reference) = if let Some((name, tail)) = split("/blobs/uploads") {
        (ObjectKind::Upload, name, tail.trim_start_matches('/'))
    } else if let Some((name, tail)) = split("/manifests/") {
        (ObjectKind::Manifest, name, tail)
    } else if let Some((name, tail)) = split("/blobs/") {
        (ObjectKind::Blob, name, tail)
    } else if let Some(name) = rest.strip_suffix("/tags/list") {
        (ObjectKind::Tags, name, "")
    } else {
        return Ok(ParsedUri {
            kind: ObjectKind::Other,
            repo: None,
            reference: None,
        });
    };
    let repo = check_name(name)?;
    let reference = if reference.is_empty() {
        None
    } else if reference.contains('/') || reference.chars().any(|c| c.is_control()) {
        return Err(format!("bad reference {:?}", clip(reference)));
    } else {
        Some(reference.to_string())
    };
    if matches!(kind, ObjectKind::Manifest | ObjectKind::Blob) && reference.is_none() {
        return Err(format!("{kind:?} path without a reference: {:?}", clip(path)).to_lowercase());
    }
    Ok(ParsedUri {
        kind,
        repo: Some(repo),
        reference,
    })
}

fn check_name(name: &str) -> Result<String, String> {
    if let Ok(r) = name.parse::<RepoName>() {
        return Ok(r.as_str().to_string());
    }
    // Anonymised traces (IBM) hash names into tokens that may break OCI's grammar (upper case,
    // '=' padding). Keep them, but not empty, not with empty components and not with controls.
    if name.is_empty()
        || name.split('/').any(str::is_empty)
        || name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!("bad repository name {:?}", clip(name)));
    }
    Ok(name.to_string())
}

/// Keeps error messages bounded when the input is huge.
pub fn clip(s: &str) -> String {
    const MAX: usize = 120;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Parses an RFC 3339 timestamp (`2017-06-20T02:12:40.004215Z`, `...+02:00`) into microseconds
/// since the Unix epoch. Fractions beyond microseconds are truncated.
pub fn parse_rfc3339_us(s: &str) -> Result<u64, String> {
    let b = s.as_bytes();
    let bad = || {
        format!(
            "bad timestamp {:?}: expected RFC 3339 like 2017-06-20T02:12:40.004Z",
            clip(s)
        )
    };
    if b.len() < 20 {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let t = s.get(r).ok_or_else(bad)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        t.parse::<i64>().map_err(|_| bad())
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return Err(bad());
    }
    let mut i = 19;
    let mut micros: i64 = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 6 {
                micros = micros * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return Err(bad());
        }
        for _ in digits..6 {
            micros *= 10;
        }
    }
    let offset_s: i64 = match b.get(i) {
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return Err(bad());
            }
            let o = h * 3600 + m * 60;
            if sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_s;
    if secs < 0 {
        return Err(format!("timestamp {:?} is before 1970", clip(s)));
    }
    Ok(secs as u64 * 1_000_000 + micros as u64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's well-known algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats microseconds since the epoch as RFC 3339 UTC with microseconds.
pub fn format_rfc3339_us(us: u64) -> String {
    let secs = (us / 1_000_000) as i64;
    let micros = us % 1_000_000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parses a Go duration string (`1.5ms`, `250µs`, `2m3.5s`, `0s`) into microseconds.
pub fn parse_go_duration_us(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "bad duration {:?}: expected a Go duration like 1.5ms",
            clip(s)
        )
    };
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.starts_with('-') {
        return Err(format!("negative duration {:?}", clip(s)));
    }
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if n == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ns = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[u..];
        total_ns += value * unit_ns;
    }
    if !total_ns.is_finite() || total_ns > 1e18 {
        return Err(bad());
    }
    Ok((total_ns / 1e3).round() as u64)
}

#[cfg(test)]
mod tests {

    /// Hashes end up in traces and analyses: they must be the same in every build. Pinned.
    #[test]
    fn stable_hash_is_pinned_and_separates_parts() {
        assert_eq!(stable_hash(&["a", "bc"]), 15182748705655151062);
        assert_ne!(stable_hash(&["a", "bc"]), stable_hash(&["ab", "c"]));
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn uris() {
        let d = format!("sha256:{}", "a".repeat(64));
        let p = parse_uri(&format!("/v2/library/alpine/blobs/{d}")).unwrap();
        assert_eq!(p.kind, ObjectKind::Blob);
        assert_eq!(p.repo.as_deref(), Some("library/alpine"));
        assert_eq!(p.reference.as_deref(), Some(d.as_str()));
        let p = parse_uri("/v2/a/b/c/manifests/latest?x=1").unwrap();
        assert_eq!(
            (p.kind, p.repo.as_deref(), p.reference.as_deref()),
            (ObjectKind::Manifest, Some("a/b/c"), Some("latest"))
        );
        assert_eq!(parse_uri("/v2/").unwrap().kind, ObjectKind::Version);
        assert_eq!(parse_uri("/v2/x/tags/list").unwrap().kind, ObjectKind::Tags);
        assert_eq!(
            parse_uri("/v2/x/blobs/uploads/").unwrap().kind,
            ObjectKind::Upload
        );
        assert_eq!(
            parse_uri("/v2/x/blobs/uploads/abc-123").unwrap().kind,
            ObjectKind::Upload
        );
        assert_eq!(parse_uri("/metrics").unwrap().kind, ObjectKind::Other);
        assert_eq!(
            parse_uri("https://h:5000/v2/x/manifests/1").unwrap().kind,
            ObjectKind::Manifest
        );
        // anonymised names are kept
        let p = parse_uri("/v2/AbC=/Xy/blobs/QmToken").unwrap();
        assert_eq!(p.repo.as_deref(), Some("AbC=/Xy"));
        assert!(parse_uri("/v2//blobs/x").is_err());
        assert!(parse_uri("/v2/x/manifests/").is_err());
        assert!(parse_uri(&"/v2/".repeat(2000)).is_err());
    }

    #[test]
    fn times() {
        assert_eq!(parse_rfc3339_us("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_rfc3339_us("1970-01-01T00:00:01.5Z").unwrap(),
            1_500_000
        );
        assert_eq!(
            parse_rfc3339_us("2017-06-20T02:12:40.004215305Z").unwrap(),
            1_497_924_760_004_215
        );
        assert_eq!(
            parse_rfc3339_us("2017-06-20T04:12:40.004215+02:00").unwrap(),
            parse_rfc3339_us("2017-06-20T02:12:40.004215Z").unwrap()
        );
        for bad in [
            "",
            "2017-06-20",
            "2017-13-20T00:00:00Z",
            "2017-06-20T00:00:00",
            "2017-06-20T00:00:00.Z",
            "x017-06-20T00:00:00Z",
        ] {
            assert!(parse_rfc3339_us(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration_us("1.5ms").unwrap(), 1500);
        assert_eq!(parse_go_duration_us("250µs").unwrap(), 250);
        assert_eq!(parse_go_duration_us("2m3.5s").unwrap(), 123_500_000);
        assert_eq!(parse_go_duration_us("0s").unwrap(), 0);
        assert_eq!(parse_go_duration_us("0").unwrap(), 0);
        assert_eq!(parse_go_duration_us("100ns").unwrap(), 0);
        for bad in ["", "ms", "1", "1x", "-1s", "1.2.3s"] {
            assert!(parse_go_duration_us(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn digest_keys_match_oci(hex in "[0-9a-f]{64}", junk in "[a-zA-Z0-9:]{0,80}") {
            let d = format!("sha256:{hex}");
            prop_assert_eq!(key_of_digest(&d), d.parse::<Digest>().unwrap().key64());
            let want = match junk.parse::<Digest>() { Ok(x) => x.key64(), Err(_) => stable_hash(&[&junk]) };
            prop_assert_eq!(key_of_digest(&junk), want);
        }

        #[test]
        fn rfc3339_round_trips(us in 0u64..4_000_000_000_000_000) {
            prop_assert_eq!(parse_rfc3339_us(&format_rfc3339_us(us)).unwrap(), us);
        }

        #[test]
        fn parsers_never_panic(s in ".{0,80}") {
            let _ = parse_uri(&s);
            let _ = parse_rfc3339_us(&s);
            let _ = parse_go_duration_us(&s);
        }

        #[test]
        fn uri_paths_parse(repo in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}", tag in "[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,20}") {
            let p = parse_uri(&format!("/v2/{repo}/manifests/{tag}")).unwrap();
            prop_assert_eq!(p.kind, ObjectKind::Manifest);
            prop_assert_eq!(p.repo.as_deref(), Some(repo.as_str()));
            prop_assert_eq!(p.reference.as_deref(), Some(tag.as_str()));
        }
    }
}
