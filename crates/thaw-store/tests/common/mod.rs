//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::Read;
use std::path::Path;

use thaw_oci::Digest;
use thaw_store::{BlobStore, Committed, StoreError};

/// A scratch directory on tmpfs when there is one (these tests write and fsync a lot).
pub fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::Builder::new().prefix("thaw-store-test-").tempdir_in(shm).expect("tempdir in /dev/shm")
    } else {
        tempfile::tempdir().expect("tempdir")
    }
}

/// Deterministic content number `n` of `len` bytes.
pub fn blob(n: u64, len: usize) -> Vec<u8> {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn put(store: &BlobStore, data: &[u8]) -> Result<Committed, StoreError> {
    let d = Digest::sha256_of(data);
    let mut w = store.begin(&d, Some(data.len() as u64))?;
    for chunk in data.chunks(7919) {
        w.write(chunk)?;
    }
    w.commit()
}

pub fn read_blob(store: &BlobStore, d: &Digest) -> Option<Vec<u8>> {
    let h = store.get(d).expect("get")?;
    let mut f = h.try_clone_file().expect("clone");
    let mut v = Vec::new();
    f.read_to_end(&mut v).expect("read");
    assert_eq!(v.len() as u64, h.size);
    Some(v)
}

/// Names left in `dir/tmp`.
pub fn tmp_leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("tmp"))
        .map(|rd| rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}
