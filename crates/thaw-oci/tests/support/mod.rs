//! Helpers shared by the unpack tests: tar archives built entry by entry (including headers the
//! `tar` crate's safe setters refuse to write), scratch directories on tmpfs, and a snapshot of
//! a directory tree to prove that nothing outside the target changed.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

/// A scratch directory on tmpfs (`/dev/shm`, as unpack-heavy tests should be), with a `root`
/// to unpack into and an `outside` holding a file that no archive may touch.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir = tempfile::Builder::new().prefix("thaw-oci-test-").tempdir_in(base).unwrap();
        fs::create_dir(dir.path().join("root")).unwrap();
        fs::create_dir(dir.path().join("outside")).unwrap();
        fs::write(dir.path().join("outside/secret"), b"untouched").unwrap();
        Scratch { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    /// Everything in the scratch directory except `root`.
    pub fn outside_snapshot(&self) -> BTreeMap<String, String> {
        let mut m = snapshot(self.dir.path());
        m.retain(|k, _| k != "root" && !k.starts_with("root/"));
        m
    }
}

/// Path -> description (kind, content or target, mode) of every entry below `dir`.
pub fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for p in names {
        let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
        let md = match fs::symlink_metadata(&p) {
            Ok(md) => md,
            // overlayfs lists a whiteout in a directory that exists in one layer only, and
            // then cannot stat it (see whiteout_model.rs).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", p.display()),
        };
        let ft = md.file_type();
        let desc = if ft.is_dir() {
            walk(base, &p, out);
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("symlink {}", fs::read_link(&p).unwrap().display())
        } else if ft.is_file() {
            format!("file {:?}", String::from_utf8_lossy(&fs::read(&p).unwrap()))
        } else if ft.is_char_device() {
            format!("char {}", md.rdev())
        } else {
            "other".to_string()
        };
        out.insert(rel, desc);
    }
}

/// An archive under construction, written header by header.
#[derive(Default)]
pub struct Tar {
    pub bytes: Vec<u8>,
}

fn pad(v: &mut Vec<u8>) {
    let rem = v.len() % 512;
    if rem != 0 {
        v.resize(v.len() + 512 - rem, 0);
    }
}

impl Tar {
    pub fn new() -> Tar {
        Tar::default()
    }

    /// Appends a header whose name and link fields are written raw (no validation, so `..`
    /// and absolute paths go in as a hostile archive would have them), followed by `data`.
    pub fn raw(&mut self, kind: EntryType, name: &[u8], link: &[u8], mode: u32, data: &[u8]) -> &mut Self {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        {
            let old = h.as_old_mut();
            assert!(name.len() <= 100 && link.len() <= 100);
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_cksum();
        self.bytes.extend_from_slice(h.as_bytes());
        self.bytes.extend_from_slice(data);
        pad(&mut self.bytes);
        self
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(EntryType::Regular, name.as_bytes(), b"", 0o644, data)
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(EntryType::Directory, name.as_bytes(), b"", 0o755, b"")
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(EntryType::Symlink, name.as_bytes(), target.as_bytes(), 0o777, b"")
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(EntryType::Link, name.as_bytes(), target.as_bytes(), 0o644, b"")
    }

    /// A PAX extended header carrying `records` for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (k, v) in records {
            data.extend(pax_record(k, v));
        }
        self.raw(EntryType::XHeader, b"././@PaxHeader", b"", 0o644, &data)
    }

    /// A GNU long-name header for the next entry.
    pub fn long_name(&mut self, name: &[u8]) -> &mut Self {
        let mut d = name.to_vec();
        d.push(0);
        self.raw(EntryType::GNULongName, b"././@LongLink", b"", 0o644, &d)
    }

    /// The two zero blocks that end an archive.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut v = std::mem::take(&mut self.bytes);
        v.extend_from_slice(&[0u8; 1024]);
        v
    }
}

pub fn pax_record(k: &str, v: &[u8]) -> Vec<u8> {
    let body = 1 + k.len() + 1 + v.len() + 1;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {k}=").into_bytes();
    r.extend_from_slice(v);
    r.push(b'\n');
    r
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// For tests that need root: `true` to go on; otherwise fails under CI and skips elsewhere.
pub fn need_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs root, and CI is set: CI must run the tests as root");
    }
    eprintln!("skipping {test}: needs root");
    false
}
