//! The blob store: verified, durable, content-addressed files with policy-driven eviction.
//!
//! # Commit order
//!
//! A blob is written to `tmp/`, hashed as it arrives, verified against its digest and announced
//! size, fsynced, renamed to `blobs/<alg>/<first 2 hex>/<hex>`, its directory fsynced, and only
//! then recorded in the metadata database. So a metadata row always names a complete, verified,
//! durable file, and a file in `blobs/` without a row is at worst a commit that crashed between
//! the rename and the database commit: recovery re-hashes it and adopts it when it is good.
//! Content that fails verification never reaches `blobs/`.
//!
//! # Policy state across restarts
//!
//! The cache policy (thaw-policy) lives in memory. What it needs to come back after a restart is
//! the order in which blobs were last used, so the store persists, for every blob, the time of its
//! last access (`get`) or of its commit, in the blob's metadata row. Accesses are batched: they
//! are written when 1024 have accumulated, when 30 seconds have passed since the last write (at
//! the next access after that), on [`BlobStore::flush_access_times`], and when the last handle on
//! the store is dropped. So after a crash the persisted times may be up to 30 seconds (or 1024
//! accesses) stale; after a clean shutdown they are exact. Commits write their time at once.
//!
//! On open, the store rebuilds the policy by admitting every blob in order of last access, oldest
//! first (ties broken by digest). For recency-based policies (LRU) this reproduces the order the
//! policy had, up to the staleness above; frequency-based policies restart with every blob seen
//! once. If the configured capacity shrank since the last run, that replay evicts the least
//! recently used blobs, exactly as the policy would have, and their files are deleted before
//! `open` returns. Blobs adopted by recovery (see above) get the time of the open.
//!
//! # Pins
//!
//! An open [`BlobHandle`] or a [`Pin`] guard keeps its blob out of the policy's victims. When
//! pinned bytes leave no room for a new blob, the policy refuses it and `commit` returns
//! [`Committed::NotCached`]: the caller has already streamed the bytes to its clients and nothing
//! is kept.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fs2::FileExt;
use parking_lot::Mutex;
use redb::ReadableTable;
use thaw_oci::{Digest, Digester};
use thaw_policy::{CachePolicy, Capacity, Effect, Key, PolicySpec, Request};

use crate::error::StoreError;
use crate::fs::{RealFs, StoreFs};
use crate::meta::{Meta, BLOBS, LINKS, MANIFEST_TYPES, TAGS, VISIBILITY};
use crate::upload::UploadId;

/// Access times are written once this many have accumulated...
const ATIME_BATCH: usize = 1024;
/// ...or when this long has passed since the last write.
const ATIME_INTERVAL: Duration = Duration::from_secs(30);
/// Read buffer for hashing files.
const HASH_BUF: usize = 256 * 1024;

/// How a store is sized and which policy evicts.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// Capacity in bytes; `None` = unbounded.
    pub capacity: Option<u64>,
    pub policy: PolicySpec,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { capacity: None, policy: PolicySpec::Lru }
    }
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The blob is now stored.
    Stored,
    /// Another writer stored the same digest first; this copy was dropped.
    AlreadyPresent,
    /// The policy refused the blob (larger than the capacity, or pinned blobs leave no room);
    /// nothing was kept.
    NotCached,
}

/// A tag's target, as the registry records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TagEntry {
    pub digest: Digest,
    pub media_type: String,
    /// When the tag was last fetched from (or revalidated with) its upstream, seconds since the
    /// Unix epoch.
    pub fetched_at_unix: u64,
}

/// Counters and sizes, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    pub blobs: u64,
    pub bytes: u64,
    pub capacity: Option<u64>,
    /// Bytes of present blobs that are pinned right now.
    pub pinned_bytes: u64,
    /// Blobs evicted by the policy since open (including at open, when the capacity shrank).
    pub evictions: u64,
    pub evicted_bytes: u64,
    /// Commits refused because the content did not match its digest or size.
    pub rejected_mismatch: u64,
    /// Commits the policy refused ([`Committed::NotCached`]).
    pub not_cached: u64,
}

/// What [`BlobStore::check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub blobs_checked: u64,
    /// One line per inconsistency; empty when the store is consistent.
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The directory layout, derived from the store's directory only.
#[derive(Debug, Clone)]
struct Layout {
    root: PathBuf,
    blobs: PathBuf,
    tmp: PathBuf,
    uploads: PathBuf,
    meta: PathBuf,
    lock: PathBuf,
}

impl Layout {
    fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
            blobs: root.join("blobs"),
            tmp: root.join("tmp"),
            uploads: root.join("uploads"),
            meta: root.join("meta.redb"),
            lock: root.join("lock"),
        }
    }

    fn shard(&self, d: &Digest) -> PathBuf {
        self.blobs.join(d.algorithm().as_str()).join(&d.hex()[..2])
    }

    fn blob(&self, d: &Digest) -> PathBuf {
        self.shard(d).join(d.hex())
    }

    fn upload(&self, id: &UploadId) -> PathBuf {
        self.uploads.join(id.to_string())
    }
}

#[derive(Debug, Default)]
struct Counters {
    evictions: AtomicU64,
    evicted_bytes: AtomicU64,
    rejected_mismatch: AtomicU64,
    not_cached: AtomicU64,
}

struct State {
    policy: Box<dyn CachePolicy>,
    /// Present blobs and their sizes. Exactly the blobs the policy holds.
    blobs: HashMap<Digest, u64>,
    /// Policy key -> digest, for turning the policy's effects back into files.
    keys: HashMap<Key, Digest>,
    /// Pin counts by policy key.
    pins: HashMap<Key, usize>,
    /// Access times not yet written to the database.
    dirty_atime: HashMap<Digest, u64>,
    last_flush: Instant,
    /// Shard directories known to exist.
    shards: HashSet<PathBuf>,
    /// Blobs evicted on a hit whose file and row are not deleted yet. Whoever next holds the
    /// writer lock deletes them: the hit itself, or a commit of the same digest that got the
    /// writer lock first (which must delete the old file before putting the new one in place).
    pending_deletes: HashMap<Digest, u64>,
}

impl State {
    /// Applies the policy's evictions to the in-memory maps and returns the victims, whose files
    /// and rows the caller removes. Single tier: the other effects need no action.
    fn take_victims(&mut self, effects: &[Effect], counters: &Counters) -> Vec<(Digest, u64)> {
        let mut victims = Vec::new();
        for e in effects {
            if let Effect::Evicted { key, .. } = *e {
                if let Some(vd) = self.keys.remove(&key) {
                    let vsize = self.blobs.remove(&vd).unwrap_or(0);
                    self.dirty_atime.remove(&vd);
                    counters.evictions.fetch_add(1, Ordering::Relaxed);
                    counters.evicted_bytes.fetch_add(vsize, Ordering::Relaxed);
                    victims.push((vd, vsize));
                }
            }
        }
        victims
    }

    fn pin(&mut self, key: Key) {
        *self.pins.entry(key).or_insert(0) += 1;
    }

    fn unpin(&mut self, key: Key) {
        if let Some(n) = self.pins.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.pins.remove(&key);
            }
        }
    }
}

#[derive(Debug)]
struct UploadState {
    size: u64,
    /// Set when the upload was finished or cancelled, for appenders that raced with that.
    gone: bool,
    /// The last time the upload was started, appended to, or found at open.
    touched: Instant,
}

struct Inner {
    layout: Layout,
    fs: Arc<dyn StoreFs>,
    meta: Meta,
    capacity: Option<u64>,
    state: Mutex<State>,
    /// Serialises every change to `blobs/` and to blob rows (commits, removals), so a file is
    /// never removed by one and re-created by another in between.
    writer: Mutex<()>,
    uploads: Mutex<HashMap<UploadId, Arc<Mutex<UploadState>>>>,
    counters: Counters,
    tmp_seq: AtomicU64,
    /// Holds the exclusive lock for as long as the store is open.
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = flush_atimes(self) {
            tracing::warn!(error = %e, "could not save blob access times at close; the cache order may be slightly stale after restart");
        }
    }
}

/// A handle on a content-addressed blob store. Cheap to clone; all clones share one store.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore").field("dir", &self.inner.layout.root).finish()
    }
}

/// An open, pinned, verified blob.
#[derive(Debug)]
pub struct BlobHandle {
    pub size: u64,
    file: File,
    digest: Digest,
    _pin: Pin,
}

impl BlobHandle {
    pub fn file(&self) -> &File {
        &self.file
    }

    /// An independent `File` (own offset) on the same content. The blob stays pinned only while
    /// this handle lives.
    pub fn try_clone_file(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }
}

/// Keeps a blob from being evicted while it lives.
pub struct Pin {
    inner: Arc<Inner>,
    key: Key,
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pin").field("key", &self.key).finish()
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.inner.state.lock().unpin(self.key);
    }
}

/// A blob being written. Dropping it without [`BlobWriter::commit`] discards the temp file.
pub struct BlobWriter {
    store: BlobStore,
    path: PathBuf,
    file: File,
    digest: Digest,
    digester: Digester,
    expected: Option<u64>,
    written: u64,
    done: bool,
    /// A write failed part-way: the file may hold bytes the hash has not seen, so the blob can
    /// only be started over.
    poisoned: bool,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("digest", &self.digest)
            .field("written", &self.written)
            .field("expected", &self.expected)
            .finish()
    }
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// Hashes everything `file` holds from its start, returning the digest and the length.
fn hash_file(mut file: File, alg: thaw_oci::digest::Algorithm) -> io::Result<(Digest, u64)> {
    file.seek(SeekFrom::Start(0))?;
    let mut h = Digester::new(alg);
    let mut buf = vec![0u8; HASH_BUF];
    let mut n_total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        n_total += n as u64;
    }
    Ok((h.finish(), n_total))
}

fn flush_atimes(inner: &Inner) -> Result<(), StoreError> {
    let dirty = {
        let mut st = inner.state.lock();
        st.last_flush = Instant::now();
        std::mem::take(&mut st.dirty_atime)
    };
    if dirty.is_empty() {
        return Ok(());
    }
    let res = inner.meta.write(|tx| {
        let mut t = tx.open_table(BLOBS)?;
        for (d, at) in &dirty {
            let key = d.to_string();
            let row = t.get(key.as_str())?.map(|v| v.value());
            if let Some((size, old)) = row {
                if *at > old {
                    t.insert(key.as_str(), (size, *at))?;
                }
            }
        }
        Ok(())
    });
    if res.is_err() {
        // Put them back for the next attempt, unless a newer access or a removal came since.
        let mut st = inner.state.lock();
        for (d, at) in dirty {
            if st.blobs.contains_key(&d) {
                st.dirty_atime.entry(d).or_insert(at);
            }
        }
    }
    res
}

/// Reads the pid a lock holder wrote, retrying briefly: the holder writes it right after locking.
fn read_lock_pid(path: &Path) -> Option<u32> {
    for _ in 0..5 {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Ok(pid) = s.trim().parse() {
                return Some(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

impl BlobStore {
    /// Opens (creating) a store in `dir` on the real file system. See [`BlobStore::open_with_fs`].
    pub fn open(dir: &Path, cfg: StoreConfig) -> Result<BlobStore, StoreError> {
        BlobStore::open_with_fs(dir, cfg, Arc::new(RealFs))
    }

    /// Opens (creating) a store in `dir`, doing its file operations through `fs`.
    ///
    /// Takes an exclusive lock (the file `lock`, holding this process's pid); a second opener gets
    /// [`StoreError::Locked`]. Before returning it recovers from any crash: leftovers in `tmp/` are
    /// deleted, metadata rows whose file is missing are dropped, blob files without a row are
    /// re-hashed and adopted when good or deleted when not, upload sizes are re-read from disk,
    /// and the policy is rebuilt from the persisted access times (see the module docs).
    pub fn open_with_fs(dir: &Path, cfg: StoreConfig, fs: Arc<dyn StoreFs>) -> Result<BlobStore, StoreError> {
        let layout = Layout::new(dir);
        fs.create_dir_all(&layout.root).map_err(StoreError::io("create the store directory", &layout.root))?;

        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&layout.lock)
            .map_err(StoreError::io("open the lock file", &layout.lock))?;
        if lock.try_lock_exclusive().is_err() {
            return Err(StoreError::Locked { dir: layout.root.clone(), pid: read_lock_pid(&layout.lock) });
        }
        let pid = std::process::id();
        lock.set_len(0)
            .and_then(|_| lock.write_all(format!("{pid}\n").as_bytes()))
            .map_err(StoreError::io("write the lock file", &layout.lock))?;

        // Created once and made durable here, so commits only ever create shard directories.
        let alg_dirs = [layout.blobs.join("sha256"), layout.blobs.join("sha512")];
        let missing = [&layout.blobs, &layout.tmp, &layout.uploads, &alg_dirs[0], &alg_dirs[1]]
            .into_iter()
            .any(|d| !d.is_dir());
        if missing {
            for d in [&layout.tmp, &layout.uploads, &alg_dirs[0], &alg_dirs[1]] {
                fs.create_dir_all(d).map_err(StoreError::io("create directory", d))?;
            }
            for d in [&layout.blobs, &layout.root] {
                fs.sync_dir(d).map_err(StoreError::io("sync", d))?;
            }
        }

        // 1. Leftovers of writes that never committed.
        let mut removed_tmp = false;
        for e in fs.read_dir(&layout.tmp).map_err(StoreError::io("list", &layout.tmp))? {
            if !e.is_dir {
                let p = layout.tmp.join(&e.name);
                fs.remove_file(&p).map_err(StoreError::io("remove leftover temp file", &p))?;
                removed_tmp = true;
            }
        }
        if removed_tmp {
            fs.sync_dir(&layout.tmp).map_err(StoreError::io("sync", &layout.tmp))?;
        }

        let meta = Meta::open(&layout.meta, fs.clone())?;

        // 2. Files present under blobs/.
        let mut files: HashMap<Digest, u64> = HashMap::new();
        let mut shards = HashSet::new();
        for alg in fs.read_dir(&layout.blobs).map_err(StoreError::io("list", &layout.blobs))? {
            if !alg.is_dir || !matches!(alg.name.as_str(), "sha256" | "sha512") {
                tracing::warn!(entry = %alg.name, dir = %layout.blobs.display(), "ignoring unexpected entry in the blob directory");
                continue;
            }
            let alg_dir = layout.blobs.join(&alg.name);
            for shard in fs.read_dir(&alg_dir).map_err(StoreError::io("list", &alg_dir))? {
                let shard_dir = alg_dir.join(&shard.name);
                if !shard.is_dir {
                    tracing::warn!(entry = %shard_dir.display(), "ignoring unexpected file in the blob directory");
                    continue;
                }
                shards.insert(shard_dir.clone());
                for f in fs.read_dir(&shard_dir).map_err(StoreError::io("list", &shard_dir))? {
                    let parsed = format!("{}:{}", alg.name, f.name).parse::<Digest>();
                    match parsed {
                        Ok(d) if !f.is_dir && d.hex()[..2] == shard.name => {
                            files.insert(d, f.len);
                        }
                        _ => tracing::warn!(entry = %shard_dir.join(&f.name).display(), "ignoring unexpected entry in the blob directory"),
                    }
                }
            }
        }

        // 3. Reconcile rows and files.
        let mut drop_rows: Vec<Digest> = Vec::new();
        let mut add_rows: Vec<(Digest, u64, u64)> = Vec::new();
        let mut dirty_dirs: BTreeSet<PathBuf> = BTreeSet::new();
        let mut live: Vec<(Digest, u64, u64)> = Vec::new();
        for row in meta.blob_rows()? {
            match files.remove(&row.digest) {
                None => {
                    tracing::info!(digest = %row.digest, "recovery: dropping metadata of a blob whose file is missing");
                    drop_rows.push(row.digest);
                }
                Some(len) if len != row.size => {
                    tracing::warn!(digest = %row.digest, recorded = row.size, found = len, "recovery: blob file has the wrong size; deleting it");
                    let p = layout.blob(&row.digest);
                    fs.remove_file(&p).map_err(StoreError::io("remove damaged blob", &p))?;
                    dirty_dirs.insert(layout.shard(&row.digest));
                    drop_rows.push(row.digest);
                }
                Some(_) => live.push((row.digest, row.size, row.atime_us)),
            }
        }
        let now = now_us();
        let mut orphans: Vec<_> = files.into_iter().collect();
        orphans.sort();
        for (d, _) in orphans {
            let p = layout.blob(&d);
            let f = fs.open_read(&p).map_err(StoreError::io("open", &p))?;
            let (actual, len) = hash_file(f, d.algorithm()).map_err(StoreError::io("read", &p))?;
            if actual == d {
                tracing::info!(digest = %d, "recovery: adopting a verified blob file that had no metadata");
                add_rows.push((d.clone(), len, now));
                live.push((d, len, now));
            } else {
                tracing::warn!(digest = %d, actual = %actual, "recovery: deleting a blob file that does not match its name");
                fs.remove_file(&p).map_err(StoreError::io("remove damaged blob", &p))?;
                dirty_dirs.insert(layout.shard(&d));
            }
        }

        // 4. Rebuild the policy, oldest access first.
        let mut policy = thaw_policy::build(&cfg.policy, Capacity::single(cfg.capacity.unwrap_or(u64::MAX)))?;
        live.sort_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
        let mut blobs = HashMap::new();
        let mut keys: HashMap<Key, Digest> = HashMap::new();
        let mut evicted: Vec<(Digest, u64)> = Vec::new();
        let mut fx = Vec::new();
        for (d, size, at) in live {
            let key = d.key64();
            fx.clear();
            let admitted = !keys.contains_key(&key)
                && policy.admit(&Request::new(at, key, size), &|_| false, &mut fx);
            for e in &fx {
                if let Effect::Evicted { key: k, .. } = e {
                    if let Some(vd) = keys.remove(k) {
                        let vsize = blobs.remove(&vd).unwrap_or(0);
                        evicted.push((vd, vsize));
                    }
                }
            }
            if admitted {
                keys.insert(key, d.clone());
                blobs.insert(d, size);
            } else {
                evicted.push((d, size));
            }
        }
        let counters = Counters::default();
        for (d, size) in &evicted {
            tracing::info!(digest = %d, size, "evicting at open: the capacity is smaller than the stored content");
            let p = layout.blob(d);
            match fs.remove_file(&p) {
                Ok(()) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(StoreError::io("remove evicted blob", &p)(e)),
            }
            dirty_dirs.insert(layout.shard(d));
            drop_rows.push(d.clone());
            counters.evictions.fetch_add(1, Ordering::Relaxed);
            counters.evicted_bytes.fetch_add(*size, Ordering::Relaxed);
        }
        for dir in &dirty_dirs {
            fs.sync_dir(dir).map_err(StoreError::io("sync", dir))?;
        }
        // Rows of evicted adoptees were never written; removing a missing row is harmless.
        if !drop_rows.is_empty() || !add_rows.is_empty() {
            meta.write(|tx| {
                let mut t = tx.open_table(BLOBS)?;
                for (d, size, at) in &add_rows {
                    t.insert(d.to_string().as_str(), (*size, *at))?;
                }
                for d in &drop_rows {
                    t.remove(d.to_string().as_str())?;
                }
                Ok(())
            })?;
        }

        // 5. Uploads in progress survive; their sizes are what reached the disk.
        let mut uploads = HashMap::new();
        for e in fs.read_dir(&layout.uploads).map_err(StoreError::io("list", &layout.uploads))? {
            match e.name.parse::<UploadId>() {
                Ok(id) if !e.is_dir => {
                    uploads.insert(id, Arc::new(Mutex::new(UploadState { size: e.len, gone: false, touched: Instant::now() })));
                }
                _ => tracing::warn!(entry = %e.name, dir = %layout.uploads.display(), "ignoring unexpected entry in the uploads directory"),
            }
        }

        let state = State {
            policy,
            blobs,
            keys,
            pins: HashMap::new(),
            dirty_atime: HashMap::new(),
            last_flush: Instant::now(),
            shards,
            pending_deletes: HashMap::new(),
        };
        Ok(BlobStore {
            inner: Arc::new(Inner {
                layout,
                fs,
                meta,
                capacity: cfg.capacity,
                state: Mutex::new(state),
                writer: Mutex::new(()),
                uploads: Mutex::new(uploads),
                counters,
                tmp_seq: AtomicU64::new(0),
                _lock: lock,
            }),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.layout.root
    }

    /// Where the file of `d` lives (whether or not it is present).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.inner.layout.blob(d)
    }

    /// Size of a present blob. No access is recorded (HEAD).
    pub fn stat(&self, d: &Digest) -> Result<Option<u64>, StoreError> {
        Ok(self.inner.state.lock().blobs.get(d).copied())
    }

    /// Every present blob and its size, sorted by digest.
    pub fn list(&self) -> Vec<(Digest, u64)> {
        let st = self.inner.state.lock();
        let mut v: Vec<_> = st.blobs.iter().map(|(d, s)| (d.clone(), *s)).collect();
        v.sort();
        v
    }

    /// Opens a present blob for reading, records the access with the policy (a hit), and pins
    /// the blob until the handle is dropped.
    pub fn get(&self, d: &Digest) -> Result<Option<BlobHandle>, StoreError> {
        let now = now_us();
        let (size, key, flush, victims) = {
            let mut st = self.inner.state.lock();
            let Some(&size) = st.blobs.get(d) else { return Ok(None) };
            let key = d.key64();
            st.pin(key);
            let mut fx = Vec::new();
            let State { policy, pins, .. } = &mut *st;
            policy.lookup_pinned(&Request::new(now, key, size), &|k| pins.contains_key(&k), &mut fx);
            // Some policies (segmented LRU's demotion cascade) evict on a hit; LRU, the default,
            // never does. The victims are deleted below, under the writer lock rather than this
            // one, so readers are not held up by file deletion and fsyncs.
            let victims = st.take_victims(&fx, &self.inner.counters);
            st.pending_deletes.extend(victims.iter().cloned());
            st.dirty_atime.insert(d.clone(), now);
            let flush = st.dirty_atime.len() >= ATIME_BATCH || st.last_flush.elapsed() >= ATIME_INTERVAL;
            (size, key, flush, victims)
        };
        if !victims.is_empty() {
            let _w = self.inner.writer.lock();
            // A commit of the same digest may have come first and deleted the old file itself.
            let mine: Vec<(Digest, u64)> = {
                let mut st = self.inner.state.lock();
                victims.into_iter().filter(|(vd, _)| st.pending_deletes.remove(vd).is_some()).collect()
            };
            if !mine.is_empty() {
                if let Err(e) = self.delete_blobs(&mine) {
                    tracing::warn!(error = %e, "could not delete blobs evicted on a hit; the next open re-verifies and adopts them");
                }
            }
        }
        let pin = Pin { inner: self.inner.clone(), key };
        if flush {
            if let Err(e) = self.flush_access_times() {
                tracing::warn!(error = %e, "could not save blob access times; will retry");
            }
        }
        let path = self.inner.layout.blob(d);
        match self.inner.fs.open_read(&path) {
            Ok(file) => Ok(Some(BlobHandle { size, file, digest: d.clone(), _pin: pin })),
            Err(e) if not_found(&e) => {
                drop(pin);
                self.forget_missing(d)?;
                Ok(None)
            }
            Err(e) => Err(StoreError::io("open blob", path)(e)),
        }
    }

    /// A blob's file disappeared behind the store's back: forget it, if it is really gone.
    fn forget_missing(&self, d: &Digest) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let _w = inner.writer.lock();
        let path = inner.layout.blob(d);
        if inner.fs.file_len(&path).map_err(StoreError::io("stat", &path))?.is_some() {
            return Ok(());
        }
        let was = {
            let mut st = inner.state.lock();
            let was = st.blobs.remove(d).is_some();
            if was {
                st.keys.remove(&d.key64());
                st.policy.remove(d.key64());
            }
            was
        };
        if was {
            tracing::warn!(digest = %d, path = %path.display(), "blob file vanished (deleted outside thaw?); forgetting it");
            inner.meta.write(|tx| {
                tx.open_table(BLOBS)?.remove(d.to_string().as_str())?;
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Writes batched access times to the database now (see the module docs).
    pub fn flush_access_times(&self) -> Result<(), StoreError> {
        flush_atimes(&self.inner)
    }

    /// Starts writing a blob that must hash to `d` (and be `expected_size` bytes, when given).
    pub fn begin(&self, d: &Digest, expected_size: Option<u64>) -> Result<BlobWriter, StoreError> {
        let seq = self.inner.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let path = self.inner.layout.tmp.join(format!("{seq}-{}.part", &d.hex()[..16]));
        let file = self.inner.fs.create_new(&path).map_err(StoreError::io("create temp file", &path))?;
        Ok(BlobWriter {
            store: self.clone(),
            path,
            file,
            digest: d.clone(),
            digester: d.digester(),
            expected: expected_size,
            written: 0,
            done: false,
            poisoned: false,
        })
    }

    /// Removes a present blob (its file and metadata). Returns whether it was present. Open
    /// handles keep reading the content they opened.
    pub fn remove(&self, d: &Digest) -> Result<bool, StoreError> {
        let inner = &*self.inner;
        let _w = inner.writer.lock();
        let was = {
            let mut st = inner.state.lock();
            let was = st.blobs.remove(d).is_some();
            if was {
                st.keys.remove(&d.key64());
                st.policy.remove(d.key64());
                st.dirty_atime.remove(d);
            }
            was
        };
        if !was {
            return Ok(false);
        }
        let path = inner.layout.blob(d);
        match inner.fs.remove_file(&path) {
            Ok(()) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(StoreError::io("remove blob", path)(e)),
        }
        let shard = inner.layout.shard(d);
        inner.fs.sync_dir(&shard).map_err(StoreError::io("sync", &shard))?;
        inner.meta.write(|tx| {
            tx.open_table(BLOBS)?.remove(d.to_string().as_str())?;
            Ok(())
        })?;
        Ok(true)
    }

    /// Pins a present blob; pinned blobs are never eviction victims.
    pub fn pin(&self, d: &Digest) -> Option<Pin> {
        let mut st = self.inner.state.lock();
        if !st.blobs.contains_key(d) {
            return None;
        }
        let key = d.key64();
        st.pin(key);
        Some(Pin { inner: self.inner.clone(), key })
    }

    pub fn stats(&self) -> StoreStats {
        let c = &self.inner.counters;
        let st = self.inner.state.lock();
        let pinned_bytes = Self::pinned_bytes_of(&st);
        StoreStats {
            blobs: st.blobs.len() as u64,
            bytes: st.blobs.values().sum(),
            capacity: self.inner.capacity,
            pinned_bytes,
            evictions: c.evictions.load(Ordering::Relaxed),
            evicted_bytes: c.evicted_bytes.load(Ordering::Relaxed),
            rejected_mismatch: c.rejected_mismatch.load(Ordering::Relaxed),
            not_cached: c.not_cached.load(Ordering::Relaxed),
        }
    }

    /// Whether a blob of `size` bytes could enter the store now: with a capacity, everything
    /// unpinned can be evicted for it, so it fits unless pinned bytes leave less than `size`.
    /// Costs a walk over the pins only (unlike [`BlobStore::stats`], which sums every blob):
    /// the registry asks it on every miss.
    pub fn has_room_for(&self, size: u64) -> bool {
        let Some(cap) = self.inner.capacity else { return true };
        let st = self.inner.state.lock();
        size <= cap.saturating_sub(Self::pinned_bytes_of(&st))
    }

    fn pinned_bytes_of(st: &State) -> u64 {
        st.pins.keys().filter_map(|k| st.keys.get(k)).filter_map(|d| st.blobs.get(d)).sum()
    }

    /// Checks the store against itself: every present blob has a row and a file of the right
    /// size that hashes to its digest, and there are no rows or blob files of absent blobs.
    /// Reads every blob, so it takes as long as hashing the whole store.
    pub fn check(&self) -> Result<CheckReport, StoreError> {
        let inner = &*self.inner;
        let _w = inner.writer.lock();
        let present: HashMap<Digest, u64> = inner.state.lock().blobs.clone();
        let mut report = CheckReport::default();
        let rows: HashMap<Digest, u64> =
            inner.meta.blob_rows()?.into_iter().map(|r| (r.digest, r.size)).collect();
        for (d, size) in &present {
            report.blobs_checked += 1;
            match rows.get(d) {
                None => report.problems.push(format!("{d}: present but has no metadata row")),
                Some(s) if s != size => report.problems.push(format!("{d}: row says {s} bytes, memory says {size}")),
                Some(_) => {}
            }
            let p = inner.layout.blob(d);
            match inner.fs.open_read(&p) {
                Ok(f) => {
                    let (actual, len) = hash_file(f, d.algorithm()).map_err(StoreError::io("read", &p))?;
                    if actual != *d || len != *size {
                        report.problems.push(format!("{d}: file holds {len} bytes hashing to {actual}"));
                    }
                }
                Err(e) => report.problems.push(format!("{d}: cannot open its file: {e}")),
            }
        }
        for d in rows.keys() {
            if !present.contains_key(d) {
                report.problems.push(format!("{d}: metadata row of an absent blob"));
            }
        }
        let blobs = &inner.layout.blobs;
        for alg in inner.fs.read_dir(blobs).map_err(StoreError::io("list", blobs))? {
            if !alg.is_dir {
                continue;
            }
            let ad = blobs.join(&alg.name);
            for shard in inner.fs.read_dir(&ad).map_err(StoreError::io("list", &ad))? {
                if !shard.is_dir {
                    continue;
                }
                let sd = ad.join(&shard.name);
                for f in inner.fs.read_dir(&sd).map_err(StoreError::io("list", &sd))? {
                    let known = format!("{}:{}", alg.name, f.name)
                        .parse::<Digest>()
                        .map(|d| present.contains_key(&d))
                        .unwrap_or(false);
                    if !known {
                        report.problems.push(format!("{}: file of an absent blob", sd.join(&f.name).display()));
                    }
                }
            }
        }
        report.problems.sort();
        Ok(report)
    }

    /// Removes the files of evicted blobs and makes that durable (no rows).
    fn delete_files(&self, victims: &[(Digest, u64)]) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let mut dirs = BTreeSet::new();
        for (vd, _) in victims {
            tracing::debug!(digest = %vd, "evicting");
            let p = inner.layout.blob(vd);
            match inner.fs.remove_file(&p) {
                Ok(()) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(StoreError::io("remove evicted blob", p)(e)),
            }
            dirs.insert(inner.layout.shard(vd));
        }
        for dir in &dirs {
            inner.fs.sync_dir(dir).map_err(StoreError::io("sync", dir))?;
        }
        Ok(())
    }

    /// Removes the files and then the rows of evicted blobs.
    fn delete_blobs(&self, victims: &[(Digest, u64)]) -> Result<(), StoreError> {
        self.delete_files(victims)?;
        self.inner.meta.write(|tx| {
            let mut t = tx.open_table(BLOBS)?;
            for (vd, _) in victims {
                t.remove(vd.to_string().as_str())?;
            }
            Ok(())
        })
    }

    /// Moves a verified, fsynced file at `src` into the store as `d` (see the module docs for
    /// the order of steps). `src` is gone afterwards, whatever the outcome.
    fn install(&self, src: &Path, d: &Digest, size: u64, sync_src_dir: bool) -> Result<Committed, StoreError> {
        let inner = &*self.inner;
        let fs = &*inner.fs;
        let discard = |src: &Path| {
            if let Err(e) = fs.remove_file(src) {
                tracing::warn!(path = %src.display(), error = %e, "could not remove a discarded file; it is removed at the next open");
            }
        };
        let _w = inner.writer.lock();
        let now = now_us();
        let key = d.key64();
        let victims: Vec<(Digest, u64)> = {
            let mut st = inner.state.lock();
            if st.blobs.contains_key(d) {
                drop(st);
                discard(src);
                return Ok(Committed::AlreadyPresent);
            }
            if let Some(other) = st.keys.get(&key) {
                tracing::warn!(digest = %d, other = %other, "policy key collision with a present blob; not caching");
                drop(st);
                inner.counters.not_cached.fetch_add(1, Ordering::Relaxed);
                discard(src);
                return Ok(Committed::NotCached);
            }
            let mut fx = Vec::new();
            let State { policy, pins, .. } = &mut *st;
            let admitted = policy.admit(&Request::new(now, key, size), &|k| pins.contains_key(&k), &mut fx);
            // Effects apply even on a refusal (S3-FIFO may make room and then not insert).
            let victims = st.take_victims(&fx, &inner.counters);
            if !admitted {
                drop(st);
                inner.counters.not_cached.fetch_add(1, Ordering::Relaxed);
                discard(src);
                if !victims.is_empty() {
                    self.delete_blobs(&victims)?;
                }
                return Ok(Committed::NotCached);
            }
            // Pinned until it is installed, so no eviction on a hit elsewhere picks it meanwhile.
            st.pin(key);
            let mut victims = victims;
            // An earlier copy evicted on a hit and not deleted yet: its file and row go first.
            if let Some(old) = st.pending_deletes.remove(d) {
                victims.push((d.clone(), old));
            }
            victims
        };
        let dest = inner.layout.blob(d);
        let shard = inner.layout.shard(d);
        let mut renamed = false;
        let result = (|| -> Result<(), StoreError> {
            self.delete_files(&victims)?;
            let known = inner.state.lock().shards.contains(&shard);
            if !known {
                fs.create_dir_all(&shard).map_err(StoreError::io("create directory", &shard))?;
                let alg_dir = shard.parent().expect("shard has a parent");
                fs.sync_dir(alg_dir).map_err(StoreError::io("sync", alg_dir))?;
                inner.state.lock().shards.insert(shard.clone());
            }
            fs.rename(src, &dest).map_err(StoreError::io("move the verified blob into place at", &dest))?;
            renamed = true;
            fs.sync_dir(&shard).map_err(StoreError::io("sync", &shard))?;
            if sync_src_dir {
                if let Some(p) = src.parent() {
                    fs.sync_dir(p).map_err(StoreError::io("sync", p))?;
                }
            }
            inner.meta.write(|tx| {
                let mut t = tx.open_table(BLOBS)?;
                // Removals first: a victim can be this digest's earlier copy.
                for (vd, _) in &victims {
                    t.remove(vd.to_string().as_str())?;
                }
                t.insert(d.to_string().as_str(), (size, now))?;
                Ok(())
            })
        })();
        let mut st = inner.state.lock();
        st.unpin(key);
        match result {
            Ok(()) => {
                st.blobs.insert(d.clone(), size);
                st.keys.insert(key, d.clone());
                Ok(Committed::Stored)
            }
            Err(e) => {
                st.policy.remove(key);
                drop(st);
                // Keep memory and disk in agreement for this run; if removal fails too, the next
                // open re-verifies the file and adopts it (its content is verified).
                discard(if renamed { &dest } else { src });
                Err(e)
            }
        }
    }

    // --- registry metadata -------------------------------------------------------------------

    pub fn put_tag(&self, upstream: &str, repo: &str, tag: &str, entry: &TagEntry) -> Result<(), StoreError> {
        let json = serde_json::to_vec(entry).expect("a TagEntry always serialises");
        self.inner.meta.write(|tx| {
            tx.open_table(TAGS)?.insert((upstream, repo, tag), json.as_slice())?;
            Ok(())
        })
    }

    pub fn get_tag(&self, upstream: &str, repo: &str, tag: &str) -> Result<Option<TagEntry>, StoreError> {
        let raw = self.inner.meta.read(|tx| {
            Ok(tx.open_table(TAGS)?.get((upstream, repo, tag))?.map(|v| v.value().to_vec()))
        })?;
        raw.map(|b| {
            serde_json::from_slice(&b).map_err(|e| StoreError::MetaCorrupt {
                path: self.inner.meta.path().to_path_buf(),
                what: format!("tag {upstream}/{repo}:{tag} does not decode: {e}"),
            })
        })
        .transpose()
    }

    /// Tags of (upstream, repo), sorted.
    pub fn list_tags(&self, upstream: &str, repo: &str) -> Result<Vec<String>, StoreError> {
        self.inner.meta.read(|tx| {
            let t = tx.open_table(TAGS)?;
            let mut out = Vec::new();
            for row in t.range((upstream, repo, "")..)? {
                let (k, _) = row?;
                let (u, r, tag) = k.value();
                if u != upstream || r != repo {
                    break;
                }
                out.push(tag.to_string());
            }
            Ok(out)
        })
    }

    pub fn delete_tag(&self, upstream: &str, repo: &str, tag: &str) -> Result<bool, StoreError> {
        self.inner.meta.write(|tx| Ok(tx.open_table(TAGS)?.remove((upstream, repo, tag))?.is_some()))
    }

    /// Records that `d` belongs to (upstream, repo): seen in its manifests or fetched through it.
    pub fn link(&self, upstream: &str, repo: &str, d: &Digest) -> Result<(), StoreError> {
        let ds = d.to_string();
        if self.is_linked(upstream, repo, d)? {
            return Ok(());
        }
        self.inner.meta.write(|tx| {
            tx.open_table(LINKS)?.insert((upstream, repo, ds.as_str()), ())?;
            Ok(())
        })
    }

    pub fn is_linked(&self, upstream: &str, repo: &str, d: &Digest) -> Result<bool, StoreError> {
        let ds = d.to_string();
        self.inner.meta.read(|tx| Ok(tx.open_table(LINKS)?.get((upstream, repo, ds.as_str()))?.is_some()))
    }

    /// Records the media type of a stored manifest (manifests are stored as blobs too).
    pub fn put_manifest_type(&self, d: &Digest, media_type: &str) -> Result<(), StoreError> {
        let ds = d.to_string();
        self.inner.meta.write(|tx| {
            tx.open_table(MANIFEST_TYPES)?.insert(ds.as_str(), media_type)?;
            Ok(())
        })
    }

    pub fn manifest_type(&self, d: &Digest) -> Result<Option<String>, StoreError> {
        let ds = d.to_string();
        self.inner.meta.read(|tx| {
            Ok(tx.open_table(MANIFEST_TYPES)?.get(ds.as_str())?.map(|v| v.value().to_string()))
        })
    }

    /// Records whether (upstream, repo) refused anonymous access the last time it was asked.
    pub fn set_private(&self, upstream: &str, repo: &str, private: bool) -> Result<(), StoreError> {
        self.inner.meta.write(|tx| {
            tx.open_table(VISIBILITY)?.insert((upstream, repo), (private, now_us()))?;
            Ok(())
        })
    }

    pub fn is_private(&self, upstream: &str, repo: &str) -> Result<Option<bool>, StoreError> {
        Ok(self.visibility(upstream, repo)?.map(|(private, _)| private))
    }

    /// The upstream's last verdict on a repository and when it was recorded (microseconds since
    /// the Unix epoch; 0 when not known, for verdicts kept from an older store).
    pub fn visibility(&self, upstream: &str, repo: &str) -> Result<Option<(bool, u64)>, StoreError> {
        self.inner.meta.read(|tx| Ok(tx.open_table(VISIBILITY)?.get((upstream, repo))?.map(|v| v.value())))
    }

    // --- push uploads ------------------------------------------------------------------------

    /// Starts an upload; its data lives in `uploads/<id>` until finished or cancelled, and
    /// survives restarts.
    pub fn upload_start(&self) -> Result<UploadId, StoreError> {
        let inner = &*self.inner;
        let id = UploadId::random();
        let path = inner.layout.upload(&id);
        let f = inner.fs.create_new(&path).map_err(StoreError::io("create upload file", &path))?;
        inner.fs.sync_file(&f).map_err(StoreError::io("sync", &path))?;
        inner.fs.sync_dir(&inner.layout.uploads).map_err(StoreError::io("sync", &inner.layout.uploads))?;
        inner.uploads.lock().insert(id, Arc::new(Mutex::new(UploadState { size: 0, gone: false, touched: Instant::now() })));
        Ok(id)
    }

    fn upload_entry(&self, id: &UploadId) -> Result<Arc<Mutex<UploadState>>, StoreError> {
        self.inner
            .uploads
            .lock()
            .get(id)
            .cloned()
            .ok_or_else(|| StoreError::UnknownUpload { id: id.to_string() })
    }

    /// Appends `data` at `offset`, which must equal the upload's current size; the data is
    /// durable on return. Returns the new size.
    pub fn upload_append(&self, id: &UploadId, offset: u64, data: &[u8]) -> Result<u64, StoreError> {
        let inner = &*self.inner;
        let entry = self.upload_entry(id)?;
        let mut up = entry.lock();
        if up.gone {
            return Err(StoreError::UnknownUpload { id: id.to_string() });
        }
        if offset != up.size {
            return Err(StoreError::UploadOffset { id: id.to_string(), size: up.size, offset });
        }
        let path = inner.layout.upload(id);
        let res = (|| {
            let f = inner.fs.open_append(&path).map_err(StoreError::io("open upload file", &path))?;
            inner.fs.write_all(&f, data).map_err(StoreError::io("write upload file", &path))?;
            inner.fs.sync_file(&f).map_err(StoreError::io("sync", &path))
        })();
        match res {
            Ok(()) => {
                up.size += data.len() as u64;
                up.touched = Instant::now();
                Ok(up.size)
            }
            Err(e) => {
                // Part of the chunk may have landed: the size is what the file holds now.
                if let Ok(Some(len)) = inner.fs.file_len(&path) {
                    up.size = len;
                }
                Err(e)
            }
        }
    }

    pub fn upload_size(&self, id: &UploadId) -> Result<u64, StoreError> {
        let entry = self.upload_entry(id)?;
        let up = entry.lock();
        if up.gone {
            return Err(StoreError::UnknownUpload { id: id.to_string() });
        }
        Ok(up.size)
    }

    /// Verifies the upload against `d` and commits it like [`BlobWriter::commit`]. On a digest
    /// mismatch the upload is discarded.
    pub fn upload_finish(&self, id: &UploadId, d: &Digest) -> Result<Committed, StoreError> {
        let inner = &*self.inner;
        let entry = self.upload_entry(id)?;
        let mut up = entry.lock();
        if up.gone {
            return Err(StoreError::UnknownUpload { id: id.to_string() });
        }
        let path = inner.layout.upload(id);
        let f = inner.fs.open_read(&path).map_err(StoreError::io("open upload file", &path))?;
        let (actual, len) = hash_file(f, d.algorithm()).map_err(StoreError::io("read upload file", &path))?;
        let finished = |up: &mut UploadState| {
            up.gone = true;
            inner.uploads.lock().remove(id);
        };
        if actual != *d {
            inner.counters.rejected_mismatch.fetch_add(1, Ordering::Relaxed);
            finished(&mut up);
            if let Err(e) = inner.fs.remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a rejected upload");
            }
            return Err(StoreError::DigestMismatch { expected: d.clone(), actual });
        }
        let out = self.install(&path, d, len, true);
        finished(&mut up);
        out
    }

    /// Ids of the uploads in progress, sorted.
    pub fn uploads(&self) -> Vec<UploadId> {
        let mut v: Vec<UploadId> = self.inner.uploads.lock().keys().copied().collect();
        v.sort();
        v
    }

    /// Garbage-collects abandoned uploads: cancels every upload not started or appended to for
    /// `idle` (uploads found at open count as touched at open, so a restart gives each a fresh
    /// grace period). Returns how many were cancelled.
    pub fn expire_uploads(&self, idle: Duration) -> Result<usize, StoreError> {
        let candidates: Vec<(UploadId, Arc<Mutex<UploadState>>)> =
            self.inner.uploads.lock().iter().map(|(id, e)| (*id, e.clone())).collect();
        let mut n = 0;
        for (id, entry) in candidates {
            let stale = {
                let up = entry.lock();
                !up.gone && up.touched.elapsed() >= idle
            };
            if stale {
                match self.upload_cancel(&id) {
                    Ok(()) => n += 1,
                    // finished or cancelled meanwhile
                    Err(StoreError::UnknownUpload { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if n > 0 {
            tracing::info!(expired = n, "removed abandoned uploads");
        }
        Ok(n)
    }

    /// Cancels an upload and deletes its data.
    pub fn upload_cancel(&self, id: &UploadId) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let entry = self.upload_entry(id)?;
        let mut up = entry.lock();
        if up.gone {
            return Err(StoreError::UnknownUpload { id: id.to_string() });
        }
        let path = inner.layout.upload(id);
        match inner.fs.remove_file(&path) {
            Ok(()) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(StoreError::io("remove upload file", path)(e)),
        }
        up.gone = true;
        inner.uploads.lock().remove(id);
        Ok(())
    }
}

impl BlobWriter {
    /// Appends `data`, hashing it as it goes. The hash covers exactly the bytes handed to the
    /// file system; a write that fails part-way poisons the writer (see
    /// [`StoreError::WriterFailed`]), so the hash and the file can never disagree. The file is not
    /// read back before commit: that would double the cost of every miss for protection only
    /// against the disk corrupting data between write and fsync.
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        if self.poisoned {
            return Err(StoreError::WriterFailed { digest: self.digest.clone() });
        }
        let new = self.written + data.len() as u64;
        if let Some(exp) = self.expected {
            if new > exp {
                return Err(StoreError::SizeMismatch { digest: self.digest.clone(), expected: exp, actual: new });
            }
        }
        if let Err(e) = self.store.inner.fs.write_all(&self.file, data) {
            self.poisoned = true;
            return Err(StoreError::io("write temp file", &self.path)(e));
        }
        self.digester.update(data);
        self.written = new;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// A read-only handle on the temp file being written, so waiters of a miss in flight can
    /// tail the bytes as they land. These bytes are not yet verified: they are the source's own
    /// bytes, relayed, never served as store content.
    pub fn tail_reader(&self) -> io::Result<File> {
        self.store.inner.fs.open_read(&self.path)
    }

    /// Verifies digest and size, fsyncs, moves the blob into place, records its metadata and
    /// admits it into the policy (evicting unpinned victims). See [`Committed`] for the outcomes;
    /// on a mismatch the temp file is gone and the error says what was received.
    pub fn commit(mut self) -> Result<Committed, StoreError> {
        self.done = true;
        let store = self.store.clone();
        let fs = &*store.inner.fs;
        let discard = |path: &Path| {
            if let Err(e) = fs.remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a discarded temp file; it is removed at the next open");
            }
        };
        if self.poisoned {
            discard(&self.path);
            return Err(StoreError::WriterFailed { digest: self.digest.clone() });
        }
        if let Some(exp) = self.expected {
            if exp != self.written {
                discard(&self.path);
                store.inner.counters.rejected_mismatch.fetch_add(1, Ordering::Relaxed);
                return Err(StoreError::SizeMismatch { digest: self.digest.clone(), expected: exp, actual: self.written });
            }
        }
        let digester = std::mem::replace(&mut self.digester, Digester::new(self.digest.algorithm()));
        let actual = digester.finish();
        if actual != self.digest {
            discard(&self.path);
            store.inner.counters.rejected_mismatch.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::DigestMismatch { expected: self.digest.clone(), actual });
        }
        if let Err(e) = fs.sync_file(&self.file) {
            discard(&self.path);
            return Err(StoreError::io("sync temp file", &self.path)(e));
        }
        store.install(&self.path, &self.digest, self.written, false)
    }

    /// Discards what was written (also done on drop).
    pub fn abort(mut self) {
        self.discard();
    }

    fn discard(&mut self) {
        if !self.done {
            self.done = true;
            if let Err(e) = self.store.inner.fs.remove_file(&self.path) {
                tracing::debug!(path = %self.path.display(), error = %e, "could not remove an aborted temp file; it is removed at the next open");
            }
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        self.discard();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn put(s: &BlobStore, data: &[u8]) -> Committed {
        let mut w = s.begin(&Digest::sha256_of(data), Some(data.len() as u64)).unwrap();
        w.write(data).unwrap();
        w.commit().unwrap()
    }

    fn slru(dir: &Path) -> BlobStore {
        BlobStore::open(dir, StoreConfig { capacity: Some(8000), policy: "slru".parse().unwrap() }).unwrap()
    }

    fn blobs() -> Vec<Vec<u8>> {
        // Mixed sizes: with equal ones segmented LRU's segments stay balanced and no hit evicts.
        (0..12u8).map(|i| vec![i; 300 + 150 * i as usize]).collect()
    }

    /// An operation of the probe: commit or hit blob `i`.
    #[derive(Clone, Copy)]
    enum Op {
        Put(usize),
        Get(usize),
    }

    fn apply(s: &BlobStore, b: &[Vec<u8>], op: Op) {
        match op {
            Op::Put(i) => drop(put(s, &b[i])),
            Op::Get(i) => drop(s.get(&Digest::sha256_of(&b[i])).unwrap()),
        }
    }

    /// Runs a fixed pseudo-random mix of commits and hits until a hit evicts. Returns the
    /// operations before it, the blob it hit and its victim.
    fn first_evicting_hit(s: &BlobStore, b: &[Vec<u8>]) -> Option<(Vec<Op>, usize, Digest)> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut ops = Vec::new();
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % b.len() as u64) as usize;
            if (x >> 20).is_multiple_of(3) {
                ops.push(Op::Put(i));
                apply(s, b, Op::Put(i));
                continue;
            }
            let before: HashSet<Digest> = s.list().into_iter().map(|(d, _)| d).collect();
            if !before.contains(&Digest::sha256_of(&b[i])) {
                continue;
            }
            apply(s, b, Op::Get(i));
            let after: HashSet<Digest> = s.list().into_iter().map(|(d, _)| d).collect();
            if let Some(v) = before.difference(&after).next() {
                return Some((ops, i, v.clone()));
            }
            ops.push(Op::Get(i));
        }
        None
    }

    /// The interleaving the deferred deletion must survive: a hit evicts V and waits for the
    /// writer lock to delete it, while a commit of V, queued for that lock first, stores V
    /// again. The commit deletes the old copy itself; the hit must then leave the new one.
    #[test]
    fn a_commit_of_a_blob_evicted_by_a_waiting_hit_keeps_the_new_copy() {
        let b = blobs();
        let probe = tempfile::tempdir().unwrap();
        let (ops, hit, victim) = first_evicting_hit(&slru(probe.path()), &b).expect("segmented LRU evicts on some hit");
        let vdata = b.iter().find(|x| Digest::sha256_of(x) == victim).unwrap().clone();

        // The same history up to just before that hit (the policy is deterministic).
        let dir = tempfile::tempdir().unwrap();
        let s = slru(dir.path());
        for op in ops {
            apply(&s, &b, op);
        }
        assert!(s.stat(&victim).unwrap().is_some());
        let writer = s.inner.writer.lock();
        std::thread::scope(|sc| {
            // The commit of V queues for the writer lock first...
            let c = sc.spawn(|| put(&s, &vdata));
            std::thread::sleep(Duration::from_millis(100));
            // ...then the hit evicts V and queues behind it.
            let h = sc.spawn(|| drop(s.get(&Digest::sha256_of(&b[hit])).unwrap()));
            let deadline = Instant::now() + Duration::from_secs(5);
            while !s.inner.state.lock().pending_deletes.contains_key(&victim) {
                assert!(Instant::now() < deadline, "the hit did not evict {victim}");
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(100));
            drop(writer);
            assert_eq!(c.join().unwrap(), Committed::Stored);
            h.join().unwrap();
        });
        let report = s.check().unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);
        assert!(s.inner.state.lock().pending_deletes.is_empty());
        if s.stat(&victim).unwrap().is_some() {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut s.get(&victim).unwrap().unwrap().try_clone_file().unwrap(), &mut v).unwrap();
            assert_eq!(v, vdata);
        }
    }
}
