//! Safe unpacking of an OCI layer (a tar stream, gzip- or zstd-compressed or not) into a directory.
//!
//! # How no entry writes outside the target
//!
//! Every entry is created with `*at` system calls relative to a directory file descriptor, and
//! that descriptor is reached from the target's descriptor one path component at a time with
//! `openat(O_DIRECTORY | O_NOFOLLOW)`. A component that is a symlink is therefore never
//! followed: the walk stops with [`UnpackError::ThroughSymlink`]. `..` components and absolute
//! paths are refused before the walk begins ([`meta::components`]). The last component is
//! created with `O_EXCL`/`mknodat`/`symlinkat`/`linkat`, none of which follows a symlink in that
//! place (an existing entry there is removed first, itself without following anything).
//!
//! We chose this walk over `openat2(RESOLVE_IN_ROOT)`: in-root resolution would silently
//! *follow* a layer's symlink (clamped to the root), so `evil -> /etc` then `evil/passwd` would
//! quietly write `<root>/etc/passwd`; nothing escapes, but the archive is hostile and should be
//! reported, and no image built by docker, buildah or umoci writes an entry through a symlink
//! (their diffs always carry the real parent directories). `RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS`
//! would have the same effect as our walk in one call, but needs 5.6+ and a fallback path anyway;
//! the walk works everywhere and keeps one code path. Parents are cached, so the walk costs one
//! `openat` per component only when the directory changes.
//!
//! Hard links may only point at entries this same archive created earlier (checked against the
//! set of paths written so far, then resolved by the same walk): a link to a path outside, to a
//! lower layer, or to something not yet extracted is refused.
//!
//! # Whiteouts
//!
//! In [`WhiteoutMode::Apply`] the layer is applied onto what the directory already holds (the
//! layers below): `.wh.NAME` removes NAME, `.wh..wh..opq` removes everything in its directory
//! that this layer did not itself create, a directory entry over an existing directory merges,
//! and any other entry replaces what was there. The result equals what overlayfs would show for
//! the same stack. In [`WhiteoutMode::Overlay`] the directory is one overlayfs lower layer:
//! whiteouts become 0/0 character devices and opaque directories get `trusted.overlay.opaque=y`
//! (both need root, as overlayfs itself does).
//!
//! # Bombs
//!
//! [`Limits`] bounds the uncompressed bytes, the entries, path lengths, xattr sizes, the
//! metadata (PAX headers, GNU long names) and the paths of the layer's own tree that are held in
//! memory (`max_path_bytes`, for hard links and whiteouts). Sparse files are refused, so
//! no entry writes more bytes than the stream carries. zstd frames that need a window larger
//! than the decoder's default (128 MiB) are refused by the decoder.

pub mod meta;
mod sys;

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use tar::EntryType;

use crate::digest::{Algorithm, Digest, Digester};
pub use meta::{PathProblem, Whiteout};

/// What whiteout entries turn into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhiteoutMode {
    /// Apply the layer onto the directory's current content (flattening a stack of layers).
    #[default]
    Apply,
    /// Produce an overlayfs lower directory: whiteouts become 0/0 character devices and opaque
    /// directories carry `trusted.overlay.opaque=y`. The target should start empty.
    Overlay,
}

/// Whether entries get the owner the archive names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ownership {
    /// Chown when running as root, otherwise leave everything owned by the caller.
    #[default]
    Auto,
    /// Always chown; fails without the privilege to do so.
    Preserve,
    /// Never chown.
    Ignore,
}

/// Shifts the archive's ids into a host range (for idmapped or user-namespaced use): archive id
/// `n` becomes host id `base + n`, and ids at or past `size` are refused.
///
/// `security.capability` values are applied as the archive has them: a v3 capability's root id
/// is not rewritten, so a shifted layer's file capabilities only take effect in a user
/// namespace whose root maps to the id the archive names (usually 0, i.e. not at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub uid_base: u32,
    pub gid_base: u32,
    pub size: u32,
}

/// Bounds on what one layer may make the unpacker do. Each error that hits one names the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of the uncompressed tar stream.
    pub max_uncompressed_bytes: u64,
    /// Entries (files, directories, links, whiteouts...), not counting PAX/long-name headers.
    pub max_entries: u64,
    /// Bytes of an entry's path or link target.
    pub max_path_len: usize,
    /// Bytes of one extended attribute's value (the kernel's own ceiling is 64 KiB).
    pub max_xattr_size: usize,
    /// Extended attributes on one entry.
    pub max_xattrs_per_entry: usize,
    /// Bytes of one PAX header or GNU long name, which are held in memory.
    pub max_metadata_bytes: u64,
    /// Bytes of all the distinct paths the unpacker remembers for one layer (every entry and
    /// parent it wrote, every whiteout it made, every directory whose mode is set at the end).
    /// Hard links, whiteouts and opaque markers need that memory, so without this bound it would
    /// be limited only by `max_entries × max_path_len` (gigabytes with the defaults).
    pub max_path_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_uncompressed_bytes: 32 << 30,
            max_entries: 2_000_000,
            max_path_len: 4096,
            max_xattr_size: 64 << 10,
            max_xattrs_per_entry: 128,
            max_metadata_bytes: 1 << 20,
            // Real layers stay far below: half a million files at 100 bytes a path is 50 MiB.
            max_path_bytes: 256 << 20,
        }
    }
}

/// How to unpack one layer.
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    pub mode: WhiteoutMode,
    /// Create character and block devices. Off by default: a sandbox never gets device nodes
    /// from an image. When off, device entries are skipped and counted. (FIFOs are not devices
    /// and are always created.)
    pub allow_devices: bool,
    /// Apply `trusted.*` xattrs from the archive (needs root). `trusted.overlay.*` and
    /// `user.overlay.*` are never applied, in any mode: a layer that forged overlayfs metadata
    /// (redirects, metacopy, opaque markers) could make the overlay show files of other layers
    /// under paths it chose.
    pub allow_trusted_xattrs: bool,
    pub ownership: Ownership,
    pub id_map: Option<IdMap>,
    /// The layer's diff_id (digest of the uncompressed tar); checked once the stream ends.
    pub expected_diff_id: Option<Digest>,
    /// The digest of the bytes as given (the blob digest of a compressed layer).
    pub expected_digest: Option<Digest>,
    pub limits: Limits,
}

/// The compression detected from the stream's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// What an unpack did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackReport {
    pub compression: Compression,
    /// Digest of the uncompressed stream (the layer's diff_id).
    pub diff_id: Digest,
    /// Digest of the bytes as read.
    pub digest: Digest,
    pub uncompressed_bytes: u64,
    pub compressed_bytes: u64,
    pub entries: u64,
    pub whiteouts: u64,
    pub skipped_devices: u64,
    pub skipped_xattrs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer exceeds the unpack limit {limit} ({value} > {max}); if the layer is trusted, raise Limits::{limit}")]
    Limit { limit: &'static str, value: u64, max: u64 },
    #[error("layer entry {entry:?} has an absolute path; layers name paths relative to the root")]
    AbsolutePath { entry: String },
    #[error("layer entry {entry:?} has a '..' component, which would reach outside the root")]
    DotDot { entry: String },
    #[error("layer entry {entry:?} contains a NUL byte in its path")]
    NulInPath { entry: String },
    #[error("layer entry {entry:?} would be written through the symlink {component:?}; refusing, as that can reach outside the root")]
    ThroughSymlink { entry: String, component: String },
    #[error("layer entry {entry:?} needs {component:?} to be a directory, but it is another kind of file")]
    ParentNotDirectory { entry: String, component: String },
    #[error("layer entry {entry:?} is a hard link to {target:?}, which {why}; hard links may only point at entries earlier in the same layer")]
    HardLink { entry: String, target: String, why: &'static str },
    #[error("layer entry {entry:?} is a whiteout of nothing (empty, '.' or '..' name)")]
    BadWhiteout { entry: String },
    #[error("layer entry {entry:?} is a {kind}, which thaw does not unpack")]
    Unsupported { entry: String, kind: &'static str },
    #[error("layer entry {entry:?} has owner {id} outside the id map of {size} ids; widen UnpackOptions::id_map")]
    IdOutOfRange { entry: String, id: u64, size: u32 },
    #[error("layer has a malformed PAX header: {0}")]
    BadPax(String),
    #[error("layer is not a valid tar stream: {0}")]
    Tar(String),
    #[error("layer is compressed with {0}, which thaw does not unpack (gzip, zstd or uncompressed only)")]
    UnsupportedCompression(&'static str),
    #[error("layer diff_id mismatch: expected {expected}, the uncompressed stream hashes to {actual}; the layer is corrupt or not the one named")]
    DiffIdMismatch { expected: Digest, actual: Digest },
    #[error("layer digest mismatch: expected {expected}, the stream hashes to {actual}; the blob is corrupt or not the one named")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("overlay whiteout {entry:?} needs root (CAP_MKNOD and trusted xattrs) as overlayfs itself does: {source}")]
    NeedsRoot { entry: String, source: io::Error },
    #[error("unpacking layer entry {entry:?}: {op} failed: {source}")]
    Io { entry: String, op: &'static str, source: io::Error },
    #[error("reading the layer stream: {0}")]
    Read(io::Error),
    #[error("target directory {path}: {source}")]
    Target { path: String, source: io::Error },
}

/// Unpacks the layer read from `input` into the existing directory `target`.
///
/// On an error, `target` may hold part of the layer: unpack into a scratch directory and rename
/// it into place only on success (the layer store does exactly that). Digests are checked when
/// the stream ends, after the entries were written, for the same reason.
pub fn unpack<R: Read + Send>(input: R, target: &Path, opts: &UnpackOptions) -> Result<UnpackReport, UnpackError> {
    let root = File::open(target).map_err(|source| UnpackError::Target { path: target.display().to_string(), source })?;
    if !root.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(UnpackError::Target {
            path: target.display().to_string(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    unpack_at(input, OwnedFd::from(root), opts)
}

/// Like [`unpack`], with the target given as an open directory descriptor.
///
/// Reading, decompressing and hashing run on a helper thread that hands the uncompressed
/// stream over in chunks, so they overlap with the file-system work on this thread (the same
/// overlap `tar -xz` gets from running gzip as a separate process).
pub fn unpack_at<R: Read + Send>(input: R, root: OwnedFd, opts: &UnpackOptions) -> Result<UnpackReport, UnpackError> {
    let over = Arc::new(AtomicBool::new(false));
    let digest_alg = opts.expected_digest.as_ref().map_or(Algorithm::Sha256, Digest::algorithm);
    let diff_alg = opts.expected_diff_id.as_ref().map_or(Algorithm::Sha256, Digest::algorithm);
    let mut raw = Hashing::new(input, digest_alg, None, over.clone());

    // Sniff the compression from the first bytes, then put them back in front of the stream.
    let mut magic = [0u8; 6];
    let mut got = 0;
    while got < magic.len() {
        match raw.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(UnpackError::Read(e)),
        }
    }
    let head = &magic[..got];
    let compression = if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(UnpackError::UnsupportedCompression("xz"));
    } else if head.starts_with(b"BZh") {
        return Err(UnpackError::UnsupportedCompression("bzip2"));
    } else {
        Compression::None
    };
    // An uncompressed layer's blob digest is its diff_id: hash those bytes once, not twice.
    let same_bytes = compression == Compression::None && digest_alg == diff_alg;
    if same_bytes {
        raw.hashing = false;
    }
    let buffered = BufReader::with_capacity(256 << 10, io::Cursor::new(head.to_vec()).chain(raw));
    let decoder = match compression {
        Compression::None => Decoder::Plain(Box::new(buffered)),
        Compression::Gzip => Decoder::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(buffered))),
        Compression::Zstd => Decoder::Zstd(Box::new(zstd::Decoder::with_buffer(buffered).map_err(UnpackError::Read)?)),
    };
    let limit = opts.limits.max_uncompressed_bytes;
    let stream = Hashing::new(decoder, diff_alg, Some(limit), over.clone());
    let limit_err = || UnpackError::Limit { limit: "max_uncompressed_bytes", value: limit.saturating_add(1), max: limit };

    let cancel = AtomicBool::new(false);
    let (tx, rx) = mpsc::sync_channel(8);
    let (unpacked, totals) = std::thread::scope(|scope| {
        let producer = scope.spawn(|| produce(stream, tx, &cancel, same_bytes));
        let mut archive = tar::Archive::new(ChannelReader { rx, cur: Vec::new(), pos: 0 });
        let unpacked = (|| {
            let mut u = Unpacker::new(root, opts)?;
            u.run(&mut archive)?;
            u.finish()?;
            Ok(u)
        })();
        // On failure the rest of the stream is not worth reading; on success it is hashed to
        // the end (padding after the archive's zero blocks is part of the diff_id). The flag is
        // set before the receiver goes away with the archive, which is what the producer sees.
        if unpacked.is_err() {
            cancel.store(true, Ordering::SeqCst);
        }
        drop(archive);
        let totals = producer.join().unwrap_or_else(|_| Err(io::Error::other("layer reader thread panicked")));
        (unpacked, totals)
    });
    if over.load(Ordering::SeqCst) {
        return Err(limit_err());
    }
    let u: Unpacker<'_> = unpacked?;
    let totals = totals.map_err(UnpackError::Read)?;
    let (diff_id, digest) = (totals.diff_id, totals.digest);

    if let Some(expected) = &opts.expected_diff_id {
        if *expected != diff_id {
            return Err(UnpackError::DiffIdMismatch { expected: expected.clone(), actual: diff_id });
        }
    }
    if let Some(expected) = &opts.expected_digest {
        if *expected != digest {
            return Err(UnpackError::DigestMismatch { expected: expected.clone(), actual: digest });
        }
    }
    Ok(UnpackReport {
        compression,
        diff_id,
        digest,
        uncompressed_bytes: totals.uncompressed_bytes,
        compressed_bytes: totals.compressed_bytes,
        entries: u.entries,
        whiteouts: u.whiteouts,
        skipped_devices: u.skipped_devices,
        skipped_xattrs: u.skipped_xattrs,
    })
}

/// Digests and sizes of the whole stream, as the producer thread measured them.
struct Totals {
    diff_id: Digest,
    digest: Digest,
    uncompressed_bytes: u64,
    compressed_bytes: u64,
}

const CHUNK: usize = 256 << 10;

/// Reads, decompresses and hashes the layer, sending the uncompressed bytes to the unpacker.
/// When the unpacker stops listening it keeps reading to the end (for the digests) unless it
/// was cancelled.
fn produce<R: Read>(
    mut stream: Hashing<Decoder<R>>,
    tx: mpsc::SyncSender<io::Result<Vec<u8>>>,
    cancel: &AtomicBool,
    same_bytes: bool,
) -> io::Result<Totals> {
    let mut sending = true;
    let mut spare = vec![0u8; CHUNK];
    loop {
        let mut buf = if sending { vec![0u8; CHUNK] } else { std::mem::take(&mut spare) };
        let n = loop {
            match stream.read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if sending {
                        let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                    }
                    return Err(e);
                }
                Ok(n) => break n,
            }
        };
        if n == 0 {
            break;
        }
        if sending {
            buf.truncate(n);
            if tx.send(Ok(buf)).is_err() {
                if cancel.load(Ordering::SeqCst) {
                    return Err(io::Error::other("unpacking stopped"));
                }
                sending = false;
            }
        } else {
            spare = buf;
        }
    }
    drop(tx);
    let uncompressed_bytes = stream.count;
    let diff_id = stream.hasher.finish();
    let mut rest = match stream.inner {
        Decoder::Plain(b) => *b,
        Decoder::Gzip(g) => g.into_inner(),
        Decoder::Zstd(z) => z.finish(),
    };
    io::copy(&mut rest, &mut io::sink())?;
    let (_, raw) = rest.into_inner().into_inner();
    let digest = if same_bytes { diff_id.clone() } else { raw.hasher.finish() };
    Ok(Totals { diff_id, digest, uncompressed_bytes, compressed_bytes: raw.count })
}

/// The unpacker's end of the producer's channel.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(v)) => {
                    self.cur = v;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

type Buffered<R> = BufReader<io::Chain<io::Cursor<Vec<u8>>, Hashing<R>>>;

enum Decoder<R: Read> {
    Plain(Box<Buffered<R>>),
    Gzip(Box<flate2::bufread::MultiGzDecoder<Buffered<R>>>),
    Zstd(Box<zstd::Decoder<'static, Buffered<R>>>),
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
        }
    }
}

/// Hashes and counts what passes through; with a limit, fails once more than it has passed and
/// raises the shared flag (the tar reader wraps I/O errors, so the flag is how the caller learns
/// that the limit, not corruption, stopped the read).
struct Hashing<R> {
    inner: R,
    /// Off when another `Hashing` sees the very same bytes.
    hashing: bool,
    hasher: Digester,
    count: u64,
    limit: Option<u64>,
    over: Arc<AtomicBool>,
}

impl<R> Hashing<R> {
    fn new(inner: R, alg: Algorithm, limit: Option<u64>, over: Arc<AtomicBool>) -> Self {
        Hashing { inner, hashing: true, hasher: Digester::new(alg), count: 0, limit, over }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.hashing {
            self.hasher.update(&buf[..n]);
        }
        self.count += n as u64;
        if let Some(limit) = self.limit {
            if self.count > limit {
                self.over.store(true, Ordering::SeqCst);
                return Err(io::Error::other("uncompressed size limit reached"));
            }
        }
        Ok(n)
    }
}

/// Metadata collected from PAX headers and GNU long-name entries for the next real entry.
#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<(i64, u32)>,
    size: Option<u64>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Everything about one entry that the file system calls need.
struct EntryMeta {
    path: Vec<u8>,
    link: Option<Vec<u8>>,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: (i64, u32),
    dev: (u32, u32),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn show(p: &[u8]) -> String {
    crate::digest::clip(&String::from_utf8_lossy(p))
}

fn cstring(entry: &[u8], c: &[u8]) -> Result<CString, UnpackError> {
    CString::new(c).map_err(|_| UnpackError::NulInPath { entry: show(entry) })
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

struct Unpacker<'o> {
    root: Rc<OwnedFd>,
    opts: &'o UnpackOptions,
    chown: bool,
    /// The directories of the last walk, one per component: (name, open directory, whether it
    /// was recorded in `created`).
    chain: Vec<(Vec<u8>, Rc<OwnedFd>, bool)>,
    /// Every path in this layer's own tree (joined by '/'): entries and the parents they were
    /// written under. Hard links may only point at these, whiteouts do not remove them, and
    /// opaque markers keep them.
    created: HashSet<Vec<u8>>,
    /// Overlay mode: whiteout devices this layer made. A directory this layer then puts in
    /// their place must hide the lower one, so it is made opaque (what apply mode does by
    /// removing the lower one first).
    whited: HashSet<Vec<u8>>,
    /// Directories whose mode and mtime are set at the end, when nothing more is written in them.
    dirs: Vec<(Vec<u8>, u32, (i64, u32))>,
    entries: u64,
    whiteouts: u64,
    skipped_devices: u64,
    skipped_xattrs: u64,
    /// Bytes of paths held in `created`, `whited` and `dirs`, bounded by
    /// `Limits::max_path_bytes`.
    path_bytes: u64,
    buf: Vec<u8>,
    /// This process's umask, when it can be read without changing it.
    umask: Option<u32>,
}

/// Reads the umask from /proc (setting it to read it back would race with other threads).
fn current_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

impl<'o> Unpacker<'o> {
    fn new(root: OwnedFd, opts: &'o UnpackOptions) -> Result<Self, UnpackError> {
        let chown = match opts.ownership {
            Ownership::Auto => sys::geteuid() == 0,
            Ownership::Preserve => true,
            Ownership::Ignore => false,
        };
        Ok(Unpacker {
            root: Rc::new(root),
            opts,
            chown,
            chain: Vec::new(),
            created: HashSet::new(),
            whited: HashSet::new(),
            dirs: Vec::new(),
            entries: 0,
            whiteouts: 0,
            skipped_devices: 0,
            skipped_xattrs: 0,
            path_bytes: 0,
            buf: vec![0; 256 << 10],
            umask: current_umask(),
        })
    }

    fn run<R: Read>(&mut self, archive: &mut tar::Archive<R>) -> Result<(), UnpackError> {
        let tar_err = |e: io::Error| UnpackError::Tar(e.to_string());
        // Raw mode: we see PAX and GNU long-name headers ourselves, so their size is checked
        // against the limit before any of it is read into memory.
        let entries = archive.entries().map_err(tar_err)?.raw(true);
        let mut pending = Pending::default();
        for entry in entries {
            let mut entry = entry.map_err(tar_err)?;
            let kind = entry.header().entry_type();
            let size = entry.header().entry_size().map_err(tar_err)?;
            match kind {
                EntryType::GNULongName => {
                    pending.path = Some(trim_nul(self.read_meta(&mut entry, size)?));
                    continue;
                }
                EntryType::GNULongLink => {
                    pending.link = Some(trim_nul(self.read_meta(&mut entry, size)?));
                    continue;
                }
                EntryType::XHeader => {
                    let data = self.read_meta(&mut entry, size)?;
                    self.take_pax(&data, &mut pending)?;
                    continue;
                }
                EntryType::XGlobalHeader => {
                    // Global headers carry defaults (git archive writes a comment); thaw reads
                    // no global keys, but bounds them like any metadata.
                    self.read_meta(&mut entry, size)?;
                    continue;
                }
                _ => {}
            }
            self.entries += 1;
            if self.entries > self.opts.limits.max_entries {
                return Err(UnpackError::Limit { limit: "max_entries", value: self.entries, max: self.opts.limits.max_entries });
            }
            let p = std::mem::take(&mut pending);
            let h = entry.header();
            let path = p.path.unwrap_or_else(|| h.path_bytes().into_owned());
            // Old (v7) archivers mark directories as regular files whose name ends in '/'.
            let kind = if kind == EntryType::Regular && path.ends_with(b"/") { EntryType::Directory } else { kind };
            if let Some(pax_size) = p.size {
                if pax_size != size {
                    // In raw mode the tar reader framed the entry by the header's size; a PAX
                    // size that differs (files over 8 GiB) would desynchronise it. Refuse.
                    return Err(UnpackError::Unsupported { entry: show(&path), kind: "entry whose PAX size differs from its header (files over 8 GiB)" });
                }
            }
            let meta = EntryMeta {
                link: p.link.or_else(|| h.link_name_bytes().map(|l| l.into_owned())),
                mode: h.mode().map_err(tar_err)?,
                uid: match p.uid {
                    Some(u) => u,
                    None => h.uid().map_err(tar_err)?,
                },
                gid: match p.gid {
                    Some(g) => g,
                    None => h.gid().map_err(tar_err)?,
                },
                mtime: match p.mtime {
                    Some(t) => t,
                    None => (i64::try_from(h.mtime().map_err(tar_err)?).unwrap_or(i64::MAX), 0),
                },
                dev: match kind {
                    EntryType::Char | EntryType::Block => (
                        h.device_major().map_err(tar_err)?.unwrap_or(0),
                        h.device_minor().map_err(tar_err)?.unwrap_or(0),
                    ),
                    _ => (0, 0),
                },
                xattrs: p.xattrs,
                path,
            };
            self.entry(kind, meta, &mut entry)?;
        }
        Ok(())
    }

    fn read_meta<R: Read>(&self, entry: &mut R, size: u64) -> Result<Vec<u8>, UnpackError> {
        let max = self.opts.limits.max_metadata_bytes;
        if size > max {
            return Err(UnpackError::Limit { limit: "max_metadata_bytes", value: size, max });
        }
        let mut v = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut v).map_err(|e| UnpackError::Tar(e.to_string()))?;
        Ok(v)
    }

    fn take_pax(&self, data: &[u8], p: &mut Pending) -> Result<(), UnpackError> {
        let recs = meta::parse_pax(data).map_err(|e| UnpackError::BadPax(e.to_string()))?;
        let num = |v: &[u8], what: &str| -> Result<u64, UnpackError> {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| UnpackError::BadPax(format!("{what} is not a decimal number")))
        };
        for r in recs {
            match r.key {
                b"path" => p.path = Some(r.value.to_vec()),
                b"linkpath" => p.link = Some(r.value.to_vec()),
                b"uid" => p.uid = Some(num(r.value, "uid")?),
                b"gid" => p.gid = Some(num(r.value, "gid")?),
                b"size" => p.size = Some(num(r.value, "size")?),
                b"mtime" => {
                    p.mtime = Some(meta::parse_pax_time(r.value).ok_or_else(|| UnpackError::BadPax("mtime is not a time".into()))?)
                }
                k if k.starts_with(b"GNU.sparse.") => {
                    return Err(UnpackError::Unsupported { entry: show(p.path.as_deref().unwrap_or(b"")), kind: "sparse file" });
                }
                k if k.starts_with(b"SCHILY.xattr.") => {
                    let name = &k[b"SCHILY.xattr.".len()..];
                    if r.value.len() > self.opts.limits.max_xattr_size {
                        return Err(UnpackError::Limit {
                            limit: "max_xattr_size",
                            value: r.value.len() as u64,
                            max: self.opts.limits.max_xattr_size as u64,
                        });
                    }
                    p.xattrs.push((name.to_vec(), r.value.to_vec()));
                    if p.xattrs.len() > self.opts.limits.max_xattrs_per_entry {
                        return Err(UnpackError::Limit {
                            limit: "max_xattrs_per_entry",
                            value: p.xattrs.len() as u64,
                            max: self.opts.limits.max_xattrs_per_entry as u64,
                        });
                    }
                }
                // atime, ctime, uname, gname, comment, charset, LIBARCHIVE.* (which duplicates
                // SCHILY.xattr in base64): nothing thaw applies.
                _ => {}
            }
        }
        Ok(())
    }

    /// Counts `len` more bytes of remembered paths against `Limits::max_path_bytes`.
    fn charge_path(&mut self, len: usize) -> Result<(), UnpackError> {
        self.path_bytes = self.path_bytes.saturating_add(len as u64);
        let max = self.opts.limits.max_path_bytes;
        if self.path_bytes > max {
            return Err(UnpackError::Limit { limit: "max_path_bytes", value: self.path_bytes, max });
        }
        Ok(())
    }

    /// Records `path` as part of this layer's own tree; only a path not yet recorded costs bytes.
    fn record_created(&mut self, path: Vec<u8>) -> Result<(), UnpackError> {
        let len = path.len();
        if self.created.insert(path) {
            self.charge_path(len)?;
        }
        Ok(())
    }

    /// Queues a directory's mode and mtime for `finish`. A directory listed twice is queued
    /// twice (the later entry wins), so every push costs its bytes.
    fn defer_dir(&mut self, path: Vec<u8>, mode: u32, mtime: (i64, u32)) -> Result<(), UnpackError> {
        self.charge_path(path.len())?;
        self.dirs.push((path, mode, mtime));
        Ok(())
    }

    fn entry<R: Read>(&mut self, kind: EntryType, meta: EntryMeta, data: &mut R) -> Result<(), UnpackError> {
        let entry = &meta.path;
        let comps = meta::components(entry, self.opts.limits.max_path_len).map_err(|p| problem(p, entry, &self.opts.limits))?;
        let Some((name, parents)) = comps.split_last() else {
            // `./` itself: the root directory's metadata.
            if kind == EntryType::Directory {
                let root = self.root.clone();
                self.set_owner_xattrs(root.as_fd(), None, &meta)?;
                self.defer_dir(Vec::new(), meta.mode, meta.mtime)?;
                return Ok(());
            }
            return Err(UnpackError::Unsupported { entry: show(entry), kind: "non-directory entry for the root itself" });
        };
        if let Some(w) = meta::whiteout(name) {
            self.whiteouts += 1;
            return self.whiteout(w, parents, &meta);
        }
        let joined = comps.join(&b'/');
        let cname = cstring(entry, name)?;
        match kind {
            EntryType::Directory => {
                let parent = self.parent(parents, entry, true)?.expect("created");
                let mut opaque = false;
                match sys::lstat_at(parent.as_fd(), &cname).map_err(io_err(entry, "lstat"))? {
                    Some(st) if is_dir(&st) => {}
                    Some(_) => {
                        self.remove(parent.as_fd(), &cname, entry)?;
                        sys::mkdir_at(parent.as_fd(), &cname, 0o700).map_err(io_err(entry, "mkdir"))?;
                        // In overlay mode the non-directory was this layer's (the target starts
                        // empty) and hid whatever the layers below have here; the directory
                        // replacing it must go on hiding that, as apply mode's would.
                        opaque = self.opts.mode == WhiteoutMode::Overlay;
                        self.whited.remove(&joined);
                    }
                    None => sys::mkdir_at(parent.as_fd(), &cname, 0o700).map_err(io_err(entry, "mkdir"))?,
                }
                let dir = sys::open_dir_at(parent.as_fd(), &cname).map_err(io_err(entry, "open directory"))?;
                if opaque {
                    set_opaque(dir.as_fd(), entry)?;
                }
                self.set_owner_xattrs(dir.as_fd(), None, &meta)?;
                self.defer_dir(joined.clone(), meta.mode, meta.mtime)?;
            }
            EntryType::Regular | EntryType::Continuous => {
                let parent = self.parent(parents, entry, true)?.expect("created");
                // Created with its final permission bits when the umask leaves them intact, which
                // saves a chmod for nearly every file; O_EXCL never follows or reuses what is
                // there, and whatever is there is removed first.
                let perm = meta.mode & 0o777;
                let create = |dir: BorrowedFd<'_>| {
                    sys::open_at(dir, &cname, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW, perm)
                };
                let fd = match create(parent.as_fd()) {
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                        self.remove(parent.as_fd(), &cname, entry)?;
                        create(parent.as_fd())
                    }
                    other => other,
                }
                .map_err(io_err(entry, "create file"))?;
                let mut f = File::from(fd);
                loop {
                    let n = match data.read(&mut self.buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(UnpackError::Tar(format!("reading {}: {e}", show(entry)))),
                    };
                    f.write_all(&self.buf[..n]).map_err(io_err(entry, "write"))?;
                }
                // Order matters: chown clears setuid bits and file capabilities, so the mode and
                // `security.capability` come after it; the mtime comes last of all.
                self.set_owner_xattrs(f.as_fd(), None, &meta)?;
                let umask_ok = self.umask.is_some_and(|m| perm & m == 0);
                if meta.mode & 0o7000 != 0 || !umask_ok {
                    sys::fchmod(f.as_fd(), meta.mode & 0o7777).map_err(io_err(entry, "chmod"))?;
                }
                sys::futimens(f.as_fd(), meta.mtime.0, meta.mtime.1).map_err(io_err(entry, "set mtime"))?;
            }
            EntryType::Symlink => {
                let target = meta.link.as_deref().unwrap_or(b"");
                if target.is_empty() {
                    return Err(UnpackError::Unsupported { entry: show(entry), kind: "symlink with an empty target" });
                }
                if target.len() > self.opts.limits.max_path_len {
                    return Err(UnpackError::Limit { limit: "max_path_len", value: target.len() as u64, max: self.opts.limits.max_path_len as u64 });
                }
                let ctarget = cstring(entry, target)?;
                let parent = self.parent(parents, entry, true)?.expect("created");
                self.remove(parent.as_fd(), &cname, entry)?;
                // The target is stored verbatim: it is only ever resolved later, inside the
                // sandbox's own root, never by the unpacker.
                sys::symlink_at(&ctarget, parent.as_fd(), &cname).map_err(io_err(entry, "symlink"))?;
                self.set_owner_xattrs(parent.as_fd(), Some(&cname), &meta)?;
                sys::utimens_at(parent.as_fd(), &cname, meta.mtime.0, meta.mtime.1).map_err(io_err(entry, "set mtime"))?;
            }
            EntryType::Link => {
                let raw = meta.link.as_deref().unwrap_or(b"");
                let tcomps = meta::components(raw, self.opts.limits.max_path_len).map_err(|p| match p {
                    PathProblem::TooLong => problem(p, raw, &self.opts.limits),
                    _ => UnpackError::HardLink { entry: show(entry), target: show(raw), why: "is outside the root" },
                })?;
                let tjoined = tcomps.join(&b'/');
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(UnpackError::HardLink { entry: show(entry), target: show(raw), why: "is the root directory" });
                };
                if !self.created.contains(&tjoined) {
                    return Err(UnpackError::HardLink { entry: show(entry), target: show(raw), why: "was not extracted before it" });
                }
                if tjoined == joined {
                    return Ok(());
                }
                let tcname = cstring(raw, tname)?;
                let tparent = self.parent(tparents, raw, false)?.ok_or_else(|| UnpackError::HardLink {
                    entry: show(entry),
                    target: show(raw),
                    why: "no longer exists",
                })?;
                match sys::lstat_at(tparent.as_fd(), &tcname).map_err(io_err(entry, "lstat"))? {
                    None => return Err(UnpackError::HardLink { entry: show(entry), target: show(raw), why: "no longer exists" }),
                    Some(st) if is_dir(&st) => {
                        return Err(UnpackError::HardLink { entry: show(entry), target: show(raw), why: "is a directory" })
                    }
                    Some(_) => {}
                }
                let parent = self.parent(parents, entry, true)?.expect("created");
                self.remove(parent.as_fd(), &cname, entry)?;
                sys::link_at(tparent.as_fd(), &tcname, parent.as_fd(), &cname).map_err(io_err(entry, "link"))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let ifmt = match kind {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                if ifmt != libc::S_IFIFO && !self.opts.allow_devices {
                    self.skipped_devices += 1;
                    return Ok(());
                }
                let parent = self.parent(parents, entry, true)?.expect("created");
                self.remove(parent.as_fd(), &cname, entry)?;
                let dev = libc::makedev(meta.dev.0, meta.dev.1);
                sys::mknod_at(parent.as_fd(), &cname, ifmt | 0o600, dev).map_err(io_err(entry, "mknod"))?;
                self.set_owner_xattrs(parent.as_fd(), Some(&cname), &meta)?;
                sys::chmod_at(parent.as_fd(), &cname, meta.mode & 0o7777).map_err(io_err(entry, "chmod"))?;
                sys::utimens_at(parent.as_fd(), &cname, meta.mtime.0, meta.mtime.1).map_err(io_err(entry, "set mtime"))?;
            }
            EntryType::GNUSparse => return Err(UnpackError::Unsupported { entry: show(entry), kind: "sparse file" }),
            _ => return Err(UnpackError::Unsupported { entry: show(entry), kind: "tar entry of an unknown type" }),
        }
        self.record_created(joined)
    }

    fn whiteout(&mut self, w: Whiteout<'_>, parents: &[&[u8]], meta: &EntryMeta) -> Result<(), UnpackError> {
        let entry = &meta.path;
        let overlay = self.opts.mode == WhiteoutMode::Overlay;
        let parent_joined = parents.join(&b'/');
        match w {
            Whiteout::Invalid => Err(UnpackError::BadWhiteout { entry: show(entry) }),
            Whiteout::Reserved => Ok(()),
            Whiteout::Remove(name) => {
                let mut joined = parent_joined;
                if !joined.is_empty() {
                    joined.push(b'/');
                }
                joined.extend_from_slice(name);
                // An entry of this same layer wins over its whiteout: the whiteout is meant for
                // the layers below.
                if self.created.contains(&joined) {
                    return Ok(());
                }
                let cname = cstring(entry, name)?;
                // Missing parents are created in both modes: overlay mode needs them to hold the
                // whiteout, and apply mode does the same so that a flattened stack shows exactly
                // what overlayfs shows for the layer directories (an empty directory there).
                let parent = self.parent(parents, entry, true)?.expect("created");
                if overlay {
                    self.remove(parent.as_fd(), &cname, entry)?;
                    sys::mknod_at(parent.as_fd(), &cname, libc::S_IFCHR, libc::makedev(0, 0)).map_err(|e| {
                        if e.raw_os_error() == Some(libc::EPERM) {
                            UnpackError::NeedsRoot { entry: show(entry), source: e }
                        } else {
                            io_err(entry, "mknod whiteout")(e)
                        }
                    })?;
                    let len = joined.len();
                    if self.whited.insert(joined) {
                        self.charge_path(len)?;
                    }
                } else {
                    self.remove(parent.as_fd(), &cname, entry)?;
                }
                Ok(())
            }
            Whiteout::Opaque => {
                let dir = self.parent(parents, entry, true)?.expect("created");
                if overlay {
                    return set_opaque(dir.as_fd(), entry);
                }
                self.chain.clear();
                self.clear_lower(dir, parent_joined, entry)
            }
        }
    }

    /// Makes `dir` opaque in apply mode: removes everything below it that this layer did not
    /// create. A directory this layer created over one from below merged with it, so it is
    /// descended into and cleared the same way (overlayfs would not show the lower one's
    /// content under an opaque parent either).
    fn clear_lower(&mut self, dir: Rc<OwnedFd>, joined: Vec<u8>, entry: &[u8]) -> Result<(), UnpackError> {
        use std::os::unix::ffi::OsStrExt;
        // Directories still to clear, by path: holding their descriptors instead could run out
        // of file descriptors under a wide tree.
        let mut stack = vec![joined.clone()];
        let mut first = Some(dir);
        while let Some(joined) = stack.pop() {
            let dir = match first.take() {
                Some(d) => d,
                None => {
                    let comps: Vec<&[u8]> = joined.split(|&b| b == b'/').collect();
                    match self.parent(&comps, entry, false)? {
                        Some(d) => d,
                        None => continue,
                    }
                }
            };
            let listing = std::fs::read_dir(sys::proc_path(dir.as_fd(), c"")).map_err(io_err(entry, "read directory"))?;
            let mut children = Vec::new();
            for child in listing {
                let child = child.map_err(io_err(entry, "read directory"))?;
                children.push(child.file_name().as_bytes().to_vec());
            }
            for name in children {
                let mut path = joined.clone();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(&name);
                let c = cstring(entry, &name)?;
                if !self.created.contains(&path) {
                    self.remove(dir.as_fd(), &c, entry)?;
                } else if sys::lstat_at(dir.as_fd(), &c).map_err(io_err(entry, "lstat"))?.is_some_and(|st| is_dir(&st)) {
                    stack.push(path);
                }
            }
        }
        Ok(())
    }

    /// Walks to the directory `parents` below the root, one component at a time, never following
    /// a symlink. Missing directories are created (0755, owned by the unpacker) when `create`;
    /// otherwise a missing one gives `Ok(None)`.
    fn parent(&mut self, parents: &[&[u8]], entry: &[u8], create: bool) -> Result<Option<Rc<OwnedFd>>, UnpackError> {
        // Reuse the open directories of the previous walk for the components this path shares
        // with it: archives list a tree depth-first, so most walks open one directory or none.
        let mut keep = 0;
        while keep < parents.len() && keep < self.chain.len() && self.chain[keep].0 == parents[keep] {
            keep += 1;
        }
        self.chain.truncate(keep);
        let mut walked: Vec<u8> = Vec::new();
        for (i, comp) in parents.iter().enumerate() {
            if !walked.is_empty() {
                walked.push(b'/');
            }
            walked.extend_from_slice(comp);
            if i < keep {
                if create && !self.chain[i].2 {
                    self.record_created(walked.clone())?;
                    self.chain[i].2 = true;
                }
                continue;
            }
            let cur = self.chain.last().map_or_else(|| self.root.clone(), |l| l.1.clone());
            let c = cstring(entry, comp)?;
            let next = match sys::open_dir_at(cur.as_fd(), &c) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    if !create {
                        return Ok(None);
                    }
                    sys::mkdir_at(cur.as_fd(), &c, 0o755).map_err(io_err(entry, "mkdir parent"))?;
                    sys::open_dir_at(cur.as_fd(), &c).map_err(io_err(entry, "open parent"))?
                }
                Err(e) if create && self.whited.contains(&walked) && e.raw_os_error() == Some(libc::ENOTDIR) => {
                    // A whiteout device of this layer stands where an entry needs a directory:
                    // replace it with an opaque one (see `whited`).
                    self.whited.remove(&walked);
                    sys::unlink_at(cur.as_fd(), &c, 0).map_err(io_err(entry, "unlink whiteout"))?;
                    sys::mkdir_at(cur.as_fd(), &c, 0o755).map_err(io_err(entry, "mkdir parent"))?;
                    let dir = sys::open_dir_at(cur.as_fd(), &c).map_err(io_err(entry, "open parent"))?;
                    set_opaque(dir.as_fd(), entry)?;
                    dir
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                    let st = sys::lstat_at(cur.as_fd(), &c).map_err(io_err(entry, "lstat parent"))?;
                    let link = st.is_some_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFLNK);
                    let component = show(&walked);
                    return Err(if link {
                        UnpackError::ThroughSymlink { entry: show(entry), component }
                    } else {
                        UnpackError::ParentNotDirectory { entry: show(entry), component }
                    });
                }
                Err(e) => return Err(io_err(entry, "open parent")(e)),
            };
            if create {
                // Parents belong to this layer's tree whether they existed or not: an opaque
                // marker keeps them (overlayfs shows the layer's own directories).
                self.record_created(walked.clone())?;
            }
            self.chain.push((comp.to_vec(), Rc::new(next), create));
        }
        Ok(Some(self.chain.last().map_or_else(|| self.root.clone(), |l| l.1.clone())))
    }

    /// Removes `name` below `dir` if it exists: a directory with everything in it, anything else
    /// with unlink. Nothing is followed.
    fn remove(&mut self, dir: BorrowedFd<'_>, name: &CStr, entry: &[u8]) -> Result<(), UnpackError> {
        match sys::lstat_at(dir, name).map_err(io_err(entry, "lstat"))? {
            None => Ok(()),
            Some(st) if is_dir(&st) => {
                // The cached parent may be inside what is removed.
                self.chain.clear();
                std::fs::remove_dir_all(sys::proc_path(dir, name)).map_err(io_err(entry, "remove directory"))
            }
            Some(_) => sys::unlink_at(dir, name, 0).map_err(io_err(entry, "unlink")),
        }
    }

    fn ids(&self, meta: &EntryMeta) -> Result<(u32, u32), UnpackError> {
        let map = |id: u64, base: u32| -> Result<u32, UnpackError> {
            match self.opts.id_map {
                Some(m) => {
                    if id >= u64::from(m.size) {
                        return Err(UnpackError::IdOutOfRange { entry: show(&meta.path), id, size: m.size });
                    }
                    u32::try_from(u64::from(base) + id)
                        .map_err(|_| UnpackError::IdOutOfRange { entry: show(&meta.path), id, size: m.size })
                }
                None => u32::try_from(id).ok().filter(|&i| i != u32::MAX).ok_or(UnpackError::IdOutOfRange {
                    entry: show(&meta.path),
                    id,
                    size: u32::MAX,
                }),
            }
        };
        let m = self.opts.id_map;
        Ok((map(meta.uid, m.map_or(0, |m| m.uid_base))?, map(meta.gid, m.map_or(0, |m| m.gid_base))?))
    }

    /// Sets owner and xattrs, on `fd` itself when `name` is `None`, else on `name` below `fd`
    /// without following it.
    fn set_owner_xattrs(&mut self, fd: BorrowedFd<'_>, name: Option<&CStr>, meta: &EntryMeta) -> Result<(), UnpackError> {
        let entry = &meta.path;
        let (uid, gid) = self.ids(meta)?;
        if self.chown {
            match name {
                None => sys::fchown(fd, uid, gid),
                Some(n) => sys::lchown_at(fd, n, uid, gid),
            }
            .map_err(io_err(entry, "chown"))?;
        }
        for (key, value) in &meta.xattrs {
            let trusted = key.starts_with(b"trusted.");
            let overlay_meta = key.starts_with(b"trusted.overlay.") || key.starts_with(b"user.overlay.");
            if overlay_meta || (trusted && !self.opts.allow_trusted_xattrs) {
                self.skipped_xattrs += 1;
                continue;
            }
            let Ok(k) = CString::new(key.clone()) else {
                self.skipped_xattrs += 1;
                continue;
            };
            let r = match name {
                None => sys::fsetxattr(fd, &k, value),
                Some(n) => sys::lsetxattr_at(fd, n, &k, value),
            };
            let eperm = matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EPERM));
            match r {
                Ok(()) => {}
                // The file system has no such namespace, or (EPERM on a symlink or device) the
                // kernel never allows user.* there: the attribute cannot exist here; count it.
                Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) || (name.is_some() && eperm) => {
                    self.skipped_xattrs += 1;
                }
                // An unprivileged unpacker (not chowning) may not write `security.capability`
                // (that needs CAP_SETFCAP) nor, under most LSMs, other `security.*` names. Such an
                // attribute is as impossible here as on a file system without the namespace, so
                // it is counted like ENOTSUP rather than failing the whole layer. When chowning,
                // the caller asked for a faithful copy and has the privilege: EPERM stays an error.
                Err(_) if eperm && !self.chown && key.starts_with(b"security.") => {
                    self.skipped_xattrs += 1;
                }
                Err(e) => return Err(io_err(entry, "set xattr")(e)),
            }
        }
        Ok(())
    }

    /// Applies directory modes and mtimes, deepest last-created first, now that nothing more is
    /// written into them (writing an entry would bump the mtime, and a read-only mode would stop
    /// an unprivileged unpacker from writing).
    fn finish(&mut self) -> Result<(), UnpackError> {
        let dirs = std::mem::take(&mut self.dirs);
        for (path, mode, (secs, nanos)) in dirs.into_iter().rev() {
            let comps: Vec<&[u8]> = if path.is_empty() { Vec::new() } else { path.split(|&b| b == b'/').collect() };
            let Some((name, parents)) = comps.split_last() else {
                let root = self.root.clone();
                sys::fchmod(root.as_fd(), mode & 0o7777).map_err(io_err(b".", "chmod"))?;
                sys::utimens_at(root.as_fd(), c"", secs, nanos).map_err(io_err(b".", "set mtime"))?;
                continue;
            };
            // A later entry or whiteout may have removed or replaced the directory.
            let Ok(Some(parent)) = self.parent(parents, &path, false) else { continue };
            let c = cstring(&path, name)?;
            match sys::lstat_at(parent.as_fd(), &c).map_err(io_err(&path, "lstat"))? {
                Some(st) if is_dir(&st) => {}
                _ => continue,
            }
            sys::chmod_at(parent.as_fd(), &c, mode & 0o7777).map_err(io_err(&path, "chmod"))?;
            sys::utimens_at(parent.as_fd(), &c, secs, nanos).map_err(io_err(&path, "set mtime"))?;
        }
        Ok(())
    }
}

fn set_opaque(dir: BorrowedFd<'_>, entry: &[u8]) -> Result<(), UnpackError> {
    sys::fsetxattr(dir, c"trusted.overlay.opaque", b"y").map_err(|e| {
        if e.raw_os_error() == Some(libc::EPERM) {
            UnpackError::NeedsRoot { entry: show(entry), source: e }
        } else {
            io_err(entry, "set trusted.overlay.opaque")(e)
        }
    })?;
    // The same mark in the user namespace of xattrs: an overlay mounted inside a user namespace
    // (a template runtime's) cannot read trusted.* and honours user.overlay.opaque instead, when
    // mounted with `userxattr`. A filesystem without user xattrs keeps only the trusted mark;
    // the template runtime warns about such directories.
    match sys::fsetxattr(dir, c"user.overlay.opaque", b"y") {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EPERM)) => Ok(()),
        r => r.map_err(io_err(entry, "set user.overlay.opaque")),
    }
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

fn io_err<'a>(entry: &'a [u8], op: &'static str) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Io { entry: show(entry), op, source }
}

fn problem(p: PathProblem, entry: &[u8], limits: &Limits) -> UnpackError {
    let entry_s = show(entry);
    match p {
        PathProblem::Absolute => UnpackError::AbsolutePath { entry: entry_s },
        PathProblem::DotDot => UnpackError::DotDot { entry: entry_s },
        PathProblem::Nul => UnpackError::NulInPath { entry: entry_s },
        PathProblem::TooLong => UnpackError::Limit { limit: "max_path_len", value: entry.len() as u64, max: limits.max_path_len as u64 },
    }
}

/// Flushes the file system holding `dir` to stable storage (the layer store calls this before
/// renaming a freshly unpacked layer into place).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let f = File::open(dir)?;
    sys::syncfs(f.as_fd())
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}
