//! One entry point per parser of untrusted input, shared by the fuzz targets in `fuzz/` (run
//! with cargo-fuzz on nightly) and by `tests/fuzz_corpus.rs`, which replays every seed and
//! every checked-in finding on stable in the normal test run.
//!
//! Each function must never panic on any input, and checks the invariants its parser promises
//! (round trips, bounds, nothing written outside the target): a violated invariant panics, which
//! is what the fuzzer reports.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::Digest;
use crate::manifest::{Manifest, MediaType, MAX_DESCRIPTORS};
use crate::name::{Reference, RepoName, Tag};
use crate::range::ByteRange;
use crate::unpack::{self, Limits, Ownership, UnpackOptions, WhiteoutMode};

/// Digests: whatever parses prints back identically and verifies its own preimage.
pub fn digest(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(d) = s.parse::<Digest>() {
        assert_eq!(d.to_string(), s);
        let _ = d.key64();
        // verify() agrees with hashing afresh (a fuzzer can learn the probe's hash from the
        // comparison, so the probe's outcome itself is not asserted).
        let probe = b"thaw fuzz probe";
        let mut h = d.digester();
        h.update(probe);
        assert_eq!(d.verify(probe), h.finish() == d);
    }
}

/// References, repository names and tags: whatever parses prints as a string that parses back
/// to the same value, and names stay within their limits.
pub fn reference(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(r) = s.parse::<Reference>() {
        let again: Reference = r.to_string().parse().expect("a printed reference parses");
        assert_eq!(again, r);
        assert!(r.repo.as_str().len() <= crate::name::MAX_REPO_LEN);
    }
    if let Ok(n) = s.parse::<RepoName>() {
        assert_eq!(n.as_str(), s);
    }
    if let Ok(t) = s.parse::<Tag>() {
        assert!(t.as_str().len() <= 128);
    }
}

/// Range headers: the first 8 bytes are the body length, the rest the header value. A resolved
/// range lies inside the body and survives printing and parsing again.
pub fn range(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let total = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let Ok(h) = std::str::from_utf8(&data[8..]) else { return };
    if let Ok(r) = ByteRange::parse(h, total) {
        assert!(r.start <= r.end && r.end < total, "{r:?} outside a body of {total}");
        assert_eq!(r.len(), r.end - r.start + 1);
        assert_eq!(ByteRange::parse(&r.to_string(), total).expect("printed range parses"), r);
        assert!(r.content_range().starts_with("bytes "));
    }
}

/// Manifests: the first byte picks the Content-Type the body arrives with (none or one of the
/// four served types), the rest is the body.
pub fn manifest(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else { return };
    let ct = match sel % 5 {
        0 => None,
        n => Some(MediaType::ALL[usize::from(n - 1)].as_str()),
    };
    if let Ok(m) = Manifest::parse(body, ct) {
        assert!(m.layers.len() + m.manifests.len() <= MAX_DESCRIPTORS);
        if !m.media_type.is_index() {
            assert!(m.config.is_some());
        }
        let _ = m.blobs().count();
    }
}

/// PAX extended headers: records never extend past the input.
pub fn pax(data: &[u8]) {
    if let Ok(recs) = unpack::meta::parse_pax(data) {
        let total: usize = recs.iter().map(|r| r.key.len() + r.value.len()).sum();
        assert!(total <= data.len());
    }
}

static SCRATCH: AtomicU64 = AtomicU64::new(0);

/// Tar layers: the first byte picks apply or overlay mode; the rest is the layer (any
/// compression). Unpacked into a scratch root next to a sentinel directory, with small limits;
/// whatever the outcome, the sentinel is untouched and nothing but the root and the sentinel
/// exists beside it.
pub fn unpack(data: &[u8]) {
    let Some((&sel, layer)) = data.split_first() else { return };
    let base = scratch_base().join(format!(
        "thaw-fuzz-{}-{}",
        std::process::id(),
        SCRATCH.fetch_add(1, Ordering::Relaxed)
    ));
    let root = base.join("root");
    let outside = base.join("outside");
    std::fs::create_dir_all(&root).expect("create scratch root");
    std::fs::create_dir_all(&outside).expect("create sentinel");
    std::fs::write(outside.join("secret"), b"untouched").expect("write sentinel");

    // Overlay mode needs root for whiteouts; without it the unpacker reports that, which is
    // still a valid outcome to fuzz.
    let mode = if sel & 1 == 1 { WhiteoutMode::Overlay } else { WhiteoutMode::Apply };
    let opts = UnpackOptions {
        mode,
        ownership: Ownership::Ignore,
        limits: Limits {
            max_uncompressed_bytes: 16 << 20,
            max_entries: 4096,
            max_path_len: 1024,
            max_xattr_size: 4096,
            max_xattrs_per_entry: 16,
            max_metadata_bytes: 64 << 10,
            max_path_bytes: 1 << 20,
        },
        ..UnpackOptions::default()
    };
    let _ = unpack::unpack(layer, &root, &opts);

    let mut beside: Vec<String> = std::fs::read_dir(&base)
        .expect("list scratch")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    beside.sort();
    assert_eq!(beside, ["outside", "root"], "the layer created something beside its root");
    let sentinel: Vec<_> = std::fs::read_dir(&outside).expect("list sentinel").collect();
    assert_eq!(sentinel.len(), 1, "the layer created something in the sentinel directory");
    assert_eq!(std::fs::read(outside.join("secret")).expect("read sentinel"), b"untouched");
    remove_scratch(&base);
}

fn scratch_base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Removes a scratch tree, first making its directories writable again (a layer may have made
/// them read-only, which stops an unprivileged removal).
fn remove_scratch(base: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fn open_up(dir: &Path) {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    open_up(&e.path());
                }
            }
        }
    }
    open_up(base);
    let _ = std::fs::remove_dir_all(base);
}
