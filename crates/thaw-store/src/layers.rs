//! The unpacked-layer store: layers keyed by diff_id, each unpacked once into a directory that
//! serves as an overlayfs lower layer, pinned while a sandbox uses it, and reclaimed by a named
//! garbage collection.
//!
//! ```text
//! layers/format               "thaw-layers 1": the on-disk format of what follows
//! layers/lock                 exclusive lock of the owning process (flock), holding its pid
//! layers/sha256/<hex>/        a complete layer, unpacked in overlay mode; never modified
//! layers/tmp-<pid>-<n>/       a layer being unpacked (removed when the store opens)
//! layers/gc-<hex>-<n>/        a layer being deleted (removed when the store opens)
//! ```
//!
//! Commit order: unpack into `tmp-*` (the unpacker verifies the diff_id, and the blob digest
//! when the source knows it), `syncfs`, rename into `sha256/<hex>`, fsync `sha256/`. A directory
//! under `sha256/` therefore always holds a complete, verified layer, after any crash; anything
//! else is a leftover that [`LayerStore::open`] removes. Deletion renames a layer out of
//! `sha256/` first, so a reader never sees half a layer either.
//!
//! Concurrency: `ensure` of the same diff_id from many threads unpacks once; the others wait for
//! it (and retry themselves if it failed). Pins are counted in memory: they protect layers from
//! [`LayerStore::gc`] of this process, and the lock keeps any other process out of the directory.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use thaw_oci::layout::{Layout, LayoutError, LayoutRef};
use thaw_oci::unpack::{self, UnpackError, UnpackOptions, UnpackReport, WhiteoutMode};
use thaw_oci::Digest;

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer store {path} is in use by another process ({holder}); stop it or use another data directory")]
    Locked { path: String, holder: String },
    #[error("layer store {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("layer {diff_id}: opening its source {source_name} failed: {error}")]
    Source { diff_id: Digest, source_name: String, error: io::Error },
    #[error("layer {diff_id} from {source_name}: {error}")]
    Unpack { diff_id: Digest, source_name: String, error: Box<UnpackError> },
    #[error("layer store keys layers by sha256 diff_ids; {0} is not one")]
    Algorithm(Digest),
    #[error("layer {0} is not in the layer store; ensure it first")]
    NotPresent(Digest),
    #[error("layer store {path} has format {found:?}, this thaw reads {FORMAT:?}; the layers are a cache: remove the directory to start afresh")]
    Format { path: String, found: String },
    #[error(transparent)]
    Layout(Box<LayoutError>),
}

impl From<LayoutError> for LayerError {
    fn from(e: LayoutError) -> Self {
        LayerError::Layout(Box::new(e))
    }
}

/// The on-disk format marker. Bump it when the directory layout or the unpacking semantics
/// (what a layer directory contains) change, so an old store is never read with new meaning.
const FORMAT: &str = "thaw-layers 1";

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayerError + '_ {
    move |source| LayerError::Io { path: path.display().to_string(), source }
}

/// Where a layer's bytes come from.
pub trait LayerSource {
    /// Opens the layer stream (compressed or not; the unpacker detects which).
    fn open(&self) -> io::Result<Box<dyn Read + Send + '_>>;
    /// The digest of the bytes `open` returns (a blob digest), when known: it is verified too.
    fn digest(&self) -> Option<Digest>;
    /// For error messages: where the layer came from.
    fn describe(&self) -> String;
}

/// A layer read once from any reader (a blob from the blob store, a download, a file).
pub struct ReaderSource<R> {
    reader: Mutex<Option<R>>,
    digest: Option<Digest>,
    name: String,
}

impl<R: Read + Send> ReaderSource<R> {
    pub fn new(reader: R, digest: Option<Digest>, name: impl Into<String>) -> Self {
        ReaderSource { reader: Mutex::new(Some(reader)), digest, name: name.into() }
    }
}

impl<R: Read + Send> LayerSource for ReaderSource<R> {
    fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        match self.reader.lock().take() {
            Some(r) => Ok(Box::new(r)),
            None => Err(io::Error::other("this reader was already consumed by an earlier attempt")),
        }
    }
    fn digest(&self) -> Option<Digest> {
        self.digest.clone()
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// A layer blob in thaw's blob store, pinned there while it is read.
pub struct BlobSource<'a> {
    pub store: &'a crate::BlobStore,
    pub digest: Digest,
}

impl LayerSource for BlobSource<'_> {
    fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        let handle = self
            .store
            .get(&self.digest)
            .map_err(io::Error::other)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("blob {} is not in the blob store", self.digest)))?;
        let file = handle.try_clone_file()?;
        Ok(Box::new(PinnedRead { file, _handle: handle }))
    }
    fn digest(&self) -> Option<Digest> {
        Some(self.digest.clone())
    }
    fn describe(&self) -> String {
        format!("blob store blob {}", self.digest)
    }
}

struct PinnedRead<H> {
    file: File,
    _handle: H,
}

impl<H> Read for PinnedRead<H> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

/// A layer blob in an OCI image layout directory.
pub struct LayoutSource<'a> {
    pub layout: &'a Layout,
    pub layer: &'a thaw_oci::layout::Layer,
}

impl LayerSource for LayoutSource<'_> {
    fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        let p = self.layout.blob_path(&self.layer.descriptor.digest);
        Ok(Box::new(io::BufReader::with_capacity(1 << 20, File::open(p)?)))
    }
    fn digest(&self) -> Option<Digest> {
        Some(self.layer.descriptor.digest.clone())
    }
    fn describe(&self) -> String {
        format!("{} in OCI layout {}", self.layer.descriptor.digest, self.layout.root().display())
    }
}

/// A pinned, complete layer: its directory is not removed while this lives.
pub struct LayerPin {
    inner: Arc<Inner>,
    diff_id: Digest,
    path: PathBuf,
}

impl LayerPin {
    pub fn diff_id(&self) -> &Digest {
        &self.diff_id
    }

    /// The layer's directory, for use as an overlayfs lower layer.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Clone for LayerPin {
    fn clone(&self) -> Self {
        *self.inner.state.lock().pins.entry(self.diff_id.clone()).or_insert(0) += 1;
        LayerPin { inner: self.inner.clone(), diff_id: self.diff_id.clone(), path: self.path.clone() }
    }
}

impl Drop for LayerPin {
    fn drop(&mut self) {
        let mut st = self.inner.state.lock();
        if let Some(n) = st.pins.get_mut(&self.diff_id) {
            *n -= 1;
            if *n == 0 {
                st.pins.remove(&self.diff_id);
            }
        }
    }
}

impl std::fmt::Debug for LayerPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerPin").field("diff_id", &self.diff_id).field("path", &self.path).finish()
    }
}

/// What one garbage collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerGcReport {
    pub removed: Vec<Digest>,
    pub kept_pinned: usize,
    pub kept_listed: usize,
}

/// What opening the store found and cleaned up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerRecovery {
    /// Leftover `tmp-*` and `gc-*` directories removed.
    pub removed_leftovers: usize,
    /// Complete layers present.
    pub layers: usize,
}

#[derive(Default)]
struct State {
    pins: HashMap<Digest, usize>,
    inflight: HashSet<Digest>,
}

struct Inner {
    root: PathBuf,
    state: Mutex<State>,
    done: Condvar,
    seq: AtomicU64,
    unpack_opts: UnpackOptions,
    _lock: File,
}

/// The layer store. Cheap to clone; clones share pins and in-flight unpacks.
#[derive(Clone)]
pub struct LayerStore {
    inner: Arc<Inner>,
    recovery: LayerRecovery,
}

impl std::fmt::Debug for LayerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerStore").field("root", &self.inner.root).finish()
    }
}

impl LayerStore {
    /// Opens (creating if needed) the layer store under `dir/layers`, takes its lock, and
    /// removes what an interrupted unpack or deletion left behind.
    pub fn open(dir: impl AsRef<Path>) -> Result<LayerStore, LayerError> {
        Self::open_with(dir, UnpackOptions { mode: WhiteoutMode::Overlay, ..UnpackOptions::default() })
    }

    /// Like [`LayerStore::open`] with other unpack options (limits, id map). The whiteout mode is
    /// always overlay and the digests are always the layer's own.
    pub fn open_with(dir: impl AsRef<Path>, mut opts: UnpackOptions) -> Result<LayerStore, LayerError> {
        let root = dir.as_ref().join("layers");
        fs::create_dir_all(root.join("sha256")).map_err(io_err(&root))?;
        let lock_path = root.join("lock");
        let mut lock = fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&lock_path).map_err(io_err(&lock_path))?;
        if fs2::FileExt::try_lock_exclusive(&lock).is_err() {
            let holder = fs::read_to_string(&lock_path).unwrap_or_default();
            let holder = if holder.trim().is_empty() { "unknown pid".to_string() } else { format!("pid {}", holder.trim()) };
            return Err(LayerError::Locked { path: root.display().to_string(), holder });
        }
        lock.set_len(0).map_err(io_err(&lock_path))?;
        write!(lock, "{}", std::process::id()).map_err(io_err(&lock_path))?;

        let format_path = root.join("format");
        match fs::read_to_string(&format_path) {
            Ok(found) if found.trim() == FORMAT => {}
            Ok(found) => return Err(LayerError::Format { path: root.display().to_string(), found: found.trim().to_string() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::write(&format_path, format!("{FORMAT}\n")).map_err(io_err(&format_path))?;
            }
            Err(e) => return Err(io_err(&format_path)(e)),
        }

        let mut recovery = LayerRecovery::default();
        for e in fs::read_dir(&root).map_err(io_err(&root))? {
            let e = e.map_err(io_err(&root))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("tmp-") || name.starts_with("gc-") {
                remove_tree(&e.path()).map_err(io_err(&e.path()))?;
                recovery.removed_leftovers += 1;
            }
        }
        recovery.layers = fs::read_dir(root.join("sha256")).map_err(io_err(&root))?.count();
        opts.mode = WhiteoutMode::Overlay;
        Ok(LayerStore {
            inner: Arc::new(Inner {
                root,
                state: Mutex::new(State::default()),
                done: Condvar::new(),
                seq: AtomicU64::new(0),
                unpack_opts: opts,
                _lock: lock,
            }),
            recovery,
        })
    }

    /// What [`LayerStore::open`] cleaned up.
    pub fn recovery(&self) -> &LayerRecovery {
        &self.recovery
    }

    fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.inner.root.join("sha256").join(diff_id.hex())
    }

    /// Whether the layer is present (complete).
    pub fn contains(&self, diff_id: &Digest) -> bool {
        self.layer_dir(diff_id).is_dir()
    }

    /// The diff_ids of every complete layer.
    pub fn list(&self) -> Result<Vec<Digest>, LayerError> {
        let dir = self.inner.root.join("sha256");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            if let Ok(d) = format!("sha256:{}", e.file_name().to_string_lossy()).parse::<Digest>() {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Pins a present layer.
    pub fn pin(&self, diff_id: &Digest) -> Result<LayerPin, LayerError> {
        let mut st = self.inner.state.lock();
        let path = self.layer_dir(diff_id);
        if !path.is_dir() {
            return Err(LayerError::NotPresent(diff_id.clone()));
        }
        *st.pins.entry(diff_id.clone()).or_insert(0) += 1;
        Ok(LayerPin { inner: self.inner.clone(), diff_id: diff_id.clone(), path })
    }

    /// Makes the layer present, unpacking it from `source` unless it already is (or another
    /// thread is unpacking it right now, in which case this waits for that), and pins it.
    pub fn ensure(&self, diff_id: &Digest, source: &dyn LayerSource) -> Result<LayerPin, LayerError> {
        Ok(self.ensure_reporting(diff_id, source)?.0)
    }

    /// Like [`LayerStore::ensure`], also returning the unpack report when this call unpacked.
    pub fn ensure_reporting(&self, diff_id: &Digest, source: &dyn LayerSource) -> Result<(LayerPin, Option<UnpackReport>), LayerError> {
        if diff_id.algorithm() != thaw_oci::digest::Algorithm::Sha256 {
            return Err(LayerError::Algorithm(diff_id.clone()));
        }
        let path = self.layer_dir(diff_id);
        {
            let mut st = self.inner.state.lock();
            loop {
                if path.is_dir() {
                    *st.pins.entry(diff_id.clone()).or_insert(0) += 1;
                    return Ok((LayerPin { inner: self.inner.clone(), diff_id: diff_id.clone(), path }, None));
                }
                if !st.inflight.contains(diff_id) {
                    st.inflight.insert(diff_id.clone());
                    break;
                }
                self.inner.done.wait(&mut st);
            }
        }
        // We are the one unpacking; whatever happens, let the waiters go on.
        struct Done<'a>(&'a Inner, &'a Digest);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.state.lock().inflight.remove(self.1);
                self.0.done.notify_all();
            }
        }
        let done = Done(&self.inner, diff_id);
        let report = self.unpack_into_place(diff_id, source, &path)?;
        let pin = {
            let mut st = self.inner.state.lock();
            *st.pins.entry(diff_id.clone()).or_insert(0) += 1;
            LayerPin { inner: self.inner.clone(), diff_id: diff_id.clone(), path }
        };
        drop(done);
        Ok((pin, Some(report)))
    }

    fn unpack_into_place(&self, diff_id: &Digest, source: &dyn LayerSource, dest: &Path) -> Result<UnpackReport, LayerError> {
        let n = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.inner.root.join(format!("tmp-{}-{n}", std::process::id()));
        fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        let result = (|| {
            let reader = source.open().map_err(|error| LayerError::Source {
                diff_id: diff_id.clone(),
                source_name: source.describe(),
                error,
            })?;
            let opts = UnpackOptions {
                expected_diff_id: Some(diff_id.clone()),
                expected_digest: source.digest(),
                ..self.inner.unpack_opts.clone()
            };
            let report = unpack::unpack(reader, &tmp, &opts).map_err(|error| LayerError::Unpack {
                diff_id: diff_id.clone(),
                source_name: source.describe(),
                error: Box::new(error),
            })?;
            unpack::sync_dir(&tmp).map_err(io_err(&tmp))?;
            fs::rename(&tmp, dest).map_err(io_err(dest))?;
            let parent = dest.parent().expect("layer dirs have a parent");
            File::open(parent).and_then(|f| f.sync_all()).map_err(io_err(parent))?;
            Ok(report)
        })();
        if result.is_err() {
            let _ = remove_tree(&tmp);
        }
        result
    }

    /// Unpacks every layer of the image `oci:PATH[:TAG]` names (as skopeo writes it) and pins
    /// them, base layer first.
    pub fn ensure_layout_image(&self, image: &str) -> Result<Vec<LayerPin>, LayerError> {
        let r = LayoutRef::parse(image)?;
        let layout = Layout::open(&r.path)?;
        let img = layout.image(r.tag.as_deref())?;
        img.layers
            .iter()
            .map(|layer| self.ensure(&layer.diff_id, &LayoutSource { layout: &layout, layer }))
            .collect()
    }

    /// Removes every layer that is neither pinned, being unpacked, nor in `keep`.
    pub fn gc(&self, keep: &HashSet<Digest>) -> Result<LayerGcReport, LayerError> {
        let mut report = LayerGcReport::default();
        let mut doomed = Vec::new();
        {
            // Decide and move out of sight under the lock, so no ensure or pin can see a layer
            // that is about to disappear; delete afterwards, without the lock.
            let st = self.inner.state.lock();
            for d in self.list()? {
                if st.pins.contains_key(&d) || st.inflight.contains(&d) {
                    report.kept_pinned += 1;
                    continue;
                }
                if keep.contains(&d) {
                    report.kept_listed += 1;
                    continue;
                }
                let n = self.inner.seq.fetch_add(1, Ordering::Relaxed);
                let gone = self.inner.root.join(format!("gc-{}-{n}", d.hex()));
                let from = self.layer_dir(&d);
                fs::rename(&from, &gone).map_err(io_err(&from))?;
                doomed.push(gone);
                report.removed.push(d);
            }
        }
        for p in doomed {
            remove_tree(&p).map_err(io_err(&p))?;
        }
        Ok(report)
    }
}

/// Removes a directory tree, first making its directories writable by their owner (layers
/// carry read-only directories, which would stop an unprivileged removal).
fn remove_tree(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fn open_up(dir: &Path) -> io::Result<()> {
        let md = fs::symlink_metadata(dir)?;
        if !md.is_dir() {
            return Ok(());
        }
        if md.permissions().mode() & 0o700 != 0o700 {
            fs::set_permissions(dir, fs::Permissions::from_mode(md.permissions().mode() | 0o700))?;
        }
        for e in fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                open_up(&e.path())?;
            }
        }
        Ok(())
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        open_up(path)?;
    }
    fs::remove_dir_all(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A minimal ustar writer, enough for test layers (files, dirs, whiteouts).
    fn tar(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in entries {
            let mut h = [0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            let (kind, mode, body): (u8, &str, &[u8]) = match data {
                Some(d) => (b'0', "0000644", d),
                None => (b'5', "0000755", b""),
            };
            h[100..107].copy_from_slice(mode.as_bytes());
            h[108..115].copy_from_slice(b"0000000");
            h[116..123].copy_from_slice(b"0000000");
            h[124..135].copy_from_slice(format!("{:011o}", body.len()).as_bytes());
            h[136..147].copy_from_slice(b"00000000000");
            h[156] = kind;
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
            h[148..156].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
            h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
            out.extend_from_slice(&h);
            out.extend_from_slice(body);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn tmp() -> tempfile::TempDir {
        let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        tempfile::Builder::new().prefix("thaw-layers-").tempdir_in(base).unwrap()
    }

    fn layer(name: &str) -> (Vec<u8>, Digest) {
        let t = tar(&[("etc/", None), (&format!("etc/{name}"), Some(name.as_bytes()))]);
        let d = Digest::sha256_of(&t);
        (t, d)
    }

    /// Counts opens and reads slowly, so concurrent ensures overlap.
    struct Counting {
        data: Vec<u8>,
        opens: Arc<AtomicUsize>,
    }

    impl LayerSource for Counting {
        fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
            self.opens.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(50));
            Ok(Box::new(&self.data[..]))
        }
        fn digest(&self) -> Option<Digest> {
            None
        }
        fn describe(&self) -> String {
            "test".into()
        }
    }

    #[test]
    fn ensure_unpacks_once_and_pins() {
        let dir = tmp();
        let store = LayerStore::open(dir.path()).unwrap();
        let (t, d) = layer("a");
        let opens = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                let src = Counting { data: t.clone(), opens: opens.clone() };
                let d = d.clone();
                std::thread::spawn(move || store.ensure(&d, &src).unwrap())
            })
            .collect();
        let pins: Vec<LayerPin> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(opens.load(Ordering::SeqCst), 1, "eight concurrent ensures unpack once");
        assert_eq!(fs::read(pins[0].path().join("etc/a")).unwrap(), b"a");
        assert_eq!(store.list().unwrap(), vec![d.clone()]);
        // Present now: no more unpacking.
        let again = store.ensure(&d, &Counting { data: Vec::new(), opens: opens.clone() }).unwrap();
        assert_eq!(opens.load(Ordering::SeqCst), 1);
        assert_eq!(again.path(), pins[0].path());
    }

    #[test]
    fn bad_layers_leave_nothing() {
        let dir = tmp();
        let store = LayerStore::open(dir.path()).unwrap();
        let (t, _) = layer("a");
        let wrong = Digest::sha256_of(b"not this layer");
        let e = store.ensure(&wrong, &ReaderSource::new(&t[..], None, "test")).unwrap_err();
        assert!(matches!(&e, LayerError::Unpack { error, .. } if matches!(**error, UnpackError::DiffIdMismatch { .. })), "{e}");
        let (_, d) = layer("a");
        let e = store.ensure(&d, &ReaderSource::new(&t[..], Some(wrong), "test")).unwrap_err();
        assert!(matches!(&e, LayerError::Unpack { error, .. } if matches!(**error, UnpackError::DigestMismatch { .. })), "{e}");
        assert!(store.list().unwrap().is_empty());
        let names: Vec<_> = fs::read_dir(dir.path().join("layers")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "only format, lock and sha256/ remain: {names:?}");
        let sha512 = format!("sha512:{}", "a".repeat(128)).parse::<Digest>().unwrap();
        assert!(matches!(store.ensure(&sha512, &ReaderSource::new(&t[..], None, "t")), Err(LayerError::Algorithm(_))));
    }

    #[test]
    fn gc_spares_pinned_and_kept_layers() {
        let dir = tmp();
        let store = LayerStore::open(dir.path()).unwrap();
        let (ta, a) = layer("a");
        let (tb, b) = layer("b");
        let (tc, c) = layer("c");
        let pin_a = store.ensure(&a, &ReaderSource::new(&ta[..], None, "a")).unwrap();
        drop(store.ensure(&b, &ReaderSource::new(&tb[..], None, "b")).unwrap());
        drop(store.ensure(&c, &ReaderSource::new(&tc[..], None, "c")).unwrap());
        let keep: HashSet<Digest> = [c.clone()].into();
        let r = store.gc(&keep).unwrap();
        assert_eq!(r.removed, vec![b.clone()]);
        assert_eq!((r.kept_pinned, r.kept_listed), (1, 1));
        assert!(pin_a.path().join("etc/a").exists());
        assert!(matches!(store.pin(&b), Err(LayerError::NotPresent(_))));
        let clone = pin_a.clone();
        drop(pin_a);
        assert!(store.gc(&HashSet::new()).unwrap().removed == vec![c.clone()], "a is still pinned by its clone");
        drop(clone);
        assert_eq!(store.gc(&HashSet::new()).unwrap().removed, vec![a.clone()]);
        assert!(store.list().unwrap().is_empty());
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("layers")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 3, "{leftovers:?}");
    }

    #[test]
    fn open_recovers_leftovers_and_locks() {
        let dir = tmp();
        let (t, d) = layer("a");
        {
            let store = LayerStore::open(dir.path()).unwrap();
            store.ensure(&d, &ReaderSource::new(&t[..], None, "a")).unwrap();
            assert!(matches!(LayerStore::open(dir.path()), Err(LayerError::Locked { .. })));
        }
        // A crash mid-unpack and mid-delete leaves these behind.
        fs::create_dir_all(dir.path().join("layers/tmp-1-1/etc")).unwrap();
        fs::write(dir.path().join("layers/tmp-1-1/etc/x"), b"partial").unwrap();
        fs::create_dir_all(dir.path().join("layers/gc-abc-2")).unwrap();
        let store = LayerStore::open(dir.path()).unwrap();
        assert_eq!(store.recovery(), &LayerRecovery { removed_leftovers: 2, layers: 1 });
        assert!(!dir.path().join("layers/tmp-1-1").exists());
        assert_eq!(fs::read(store.pin(&d).unwrap().path().join("etc/a")).unwrap(), b"a");
        drop(store);
        // A store written in another format is refused, not misread.
        fs::write(dir.path().join("layers/format"), "thaw-layers 99\n").unwrap();
        assert!(matches!(LayerStore::open(dir.path()), Err(LayerError::Format { .. })));
    }

    #[test]
    fn from_an_oci_layout_and_the_blob_store() {
        let dir = tmp();
        let store = LayerStore::open(dir.path().join("data")).unwrap();
        let (ta, a) = layer("a");
        let (tb, b) = layer("b");
        let mut w = thaw_oci::layout::LayoutWriter::create(dir.path().join("img")).unwrap();
        let mt = "application/vnd.oci.image.layer.v1.tar";
        w.add_image("v1", &[(ta.clone(), a.clone(), mt), (tb.clone(), b.clone(), mt)], serde_json::json!({})).unwrap();
        let pins = store.ensure_layout_image(&format!("oci:{}:v1", dir.path().join("img").display())).unwrap();
        assert_eq!(pins.iter().map(|p| p.diff_id().clone()).collect::<Vec<_>>(), vec![a.clone(), b.clone()]);
        assert_eq!(fs::read(pins[1].path().join("etc/b")).unwrap(), b"b");
        let e = store.ensure_layout_image(&format!("oci:{}:nope", dir.path().join("img").display())).unwrap_err();
        assert!(matches!(&e, LayerError::Layout(l) if matches!(**l, LayoutError::TagNotFound { .. })), "{e}");

        // The blob store as a source: commit the blob, then unpack from it.
        let blobs = crate::BlobStore::open(&dir.path().join("blobs"), crate::StoreConfig::default()).unwrap();
        let (tc, c) = layer("c");
        let mut wr = blobs.begin(&c, Some(tc.len() as u64)).unwrap();
        wr.write(&tc).unwrap();
        wr.commit().unwrap();
        let pin = store.ensure(&c, &BlobSource { store: &blobs, digest: c.clone() }).unwrap();
        assert_eq!(fs::read(pin.path().join("etc/c")).unwrap(), b"c");
    }

    #[test]
    fn gc_racing_ensure_never_removes_a_pinned_layer() {
        let dir = tmp();
        let store = LayerStore::open(dir.path()).unwrap();
        let layers: Vec<(Vec<u8>, Digest)> = ["a", "b", "c"].iter().map(|n| layer(n)).collect();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let gc = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut removed = 0;
                while !stop.load(Ordering::SeqCst) {
                    removed += store.gc(&HashSet::new()).unwrap().removed.len();
                }
                removed
            })
        };
        let users: Vec<_> = (0..3)
            .map(|i| {
                let store = store.clone();
                let layers = layers.clone();
                std::thread::spawn(move || {
                    for round in 0..100 {
                        let (t, d) = &layers[(i + round) % layers.len()];
                        let pin = store.ensure(d, &ReaderSource::new(&t[..], None, "race")).unwrap();
                        // While pinned, the layer is complete and stays put.
                        assert!(pin.path().join("etc").is_dir(), "pinned layer vanished");
                        assert_eq!(fs::read_dir(pin.path().join("etc")).unwrap().count(), 1);
                    }
                })
            })
            .collect();
        for u in users {
            u.join().unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        let removed = gc.join().unwrap();
        assert!(removed > 0, "the collector never got to remove anything, so the race was not exercised");
    }

    /// A slow source: a layer of many small files, read a little at a time.
    struct Slow(Vec<u8>);

    impl LayerSource for Slow {
        fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
            struct R<'a>(&'a [u8]);
            impl Read for R<'_> {
                fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    let n = buf.len().min(self.0.len()).min(4096);
                    buf[..n].copy_from_slice(&self.0[..n]);
                    self.0 = &self.0[n..];
                    Ok(n)
                }
            }
            Ok(Box::new(R(&self.0)))
        }
        fn digest(&self) -> Option<Digest> {
            None
        }
        fn describe(&self) -> String {
            "slow".into()
        }
    }

    fn many_files() -> (Vec<u8>, Digest) {
        let names: Vec<String> = (0..2000).map(|i| format!("f{i}")).collect();
        let entries: Vec<(&str, Option<&[u8]>)> = names.iter().map(|n| (n.as_str(), Some(&b"content"[..]))).collect();
        let t = tar(&entries);
        let d = Digest::sha256_of(&t);
        (t, d)
    }

    /// The child half of `kill_9_mid_unpack_leaves_no_partial_layer`: unpacks slowly until killed.
    #[test]
    fn crash_child() {
        let Some(dir) = std::env::var_os("THAW_LAYERS_CRASH_CHILD") else { return };
        let store = LayerStore::open(&dir).unwrap();
        let (t, d) = many_files();
        store.ensure(&d, &Slow(t)).unwrap();
        panic!("the parent should have killed this process before the unpack finished");
    }

    #[test]
    fn kill_9_mid_unpack_leaves_no_partial_layer() {
        let dir = tmp();
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut child = Kill(
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "layers::tests::crash_child", "--nocapture", "--test-threads=1"])
                .env("THAW_LAYERS_CRASH_CHILD", dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        // Wait until the child is visibly mid-unpack: a tmp directory with some files in it.
        let layers = dir.path().join("layers");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let partial = fs::read_dir(&layers).ok().into_iter().flatten().flatten().find(|e| e.file_name().to_string_lossy().starts_with("tmp-"));
            if let Some(p) = partial {
                if fs::read_dir(p.path()).map(|r| r.count()).unwrap_or(0) > 10 {
                    break;
                }
            }
            assert!(std::time::Instant::now() < deadline, "the child never started unpacking");
            assert!(child.0.try_wait().unwrap().is_none(), "the child exited early");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.0.kill().unwrap();
        child.0.wait().unwrap();

        let store = LayerStore::open(dir.path()).unwrap();
        assert_eq!(store.recovery(), &LayerRecovery { removed_leftovers: 1, layers: 0 });
        assert!(store.list().unwrap().is_empty(), "no partial layer is visible");
        let (t, d) = many_files();
        let pin = store.ensure(&d, &ReaderSource::new(&t[..], None, "again")).unwrap();
        assert_eq!(fs::read_dir(pin.path()).unwrap().count(), 2000);
    }

    #[test]
    fn umoci_busybox_image() {
        let have = |cmd: &str| std::process::Command::new("sh").arg("-c").arg(format!("command -v {cmd}")).output().is_ok_and(|o| o.status.success());
        if !(have("umoci") && Path::new("/bin/busybox").exists()) {
            if std::env::var_os("CI").is_some() {
                panic!("umoci_busybox_image needs umoci and busybox-static (/bin/busybox), and CI is set");
            }
            eprintln!("skipping umoci_busybox_image: umoci or /bin/busybox missing");
            return;
        }
        let dir = tmp();
        let img = dir.path().join("img");
        let bundle = dir.path().join("bundle");
        let run = |args: &[&str]| {
            let out = std::process::Command::new("umoci").args(args).output().unwrap();
            assert!(out.status.success(), "umoci {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let img_s = img.display().to_string();
        run(&["init", "--layout", &img_s]);
        run(&["new", "--image", &format!("{img_s}:bb")]);
        run(&["unpack", "--rootless", "--image", &format!("{img_s}:bb"), &bundle.display().to_string()]);
        fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
        fs::copy("/bin/busybox", bundle.join("rootfs/bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", bundle.join("rootfs/bin/sh")).unwrap();
        run(&["repack", "--image", &format!("{img_s}:bb"), &bundle.display().to_string()]);
        let store = LayerStore::open(dir.path().join("data")).unwrap();
        let pins = store.ensure_layout_image(&format!("oci:{img_s}:bb")).unwrap();
        let top = pins.last().unwrap();
        assert_eq!(fs::read(top.path().join("bin/busybox")).unwrap(), fs::read("/bin/busybox").unwrap());
        assert_eq!(fs::read_link(top.path().join("bin/sh")).unwrap(), PathBuf::from("busybox"));
    }
}
