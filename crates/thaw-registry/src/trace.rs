//! The request trace: every answered request appended to a rotating JSON-lines file.
//!
//! Writing happens on a dedicated thread fed by a bounded channel, so a slow disk never delays an
//! answer: when the channel is full the record is dropped and counted (`thaw_trace_dropped_total`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thaw_record::{Record, RequestRecord};

use crate::config::TraceConfig;

const CURRENT: &str = "requests.jsonl";

/// Sends records to the writer thread.
#[derive(Clone)]
pub struct TraceWriter {
    tx: SyncSender<RequestRecord>,
    pub dropped: Arc<AtomicU64>,
}

impl TraceWriter {
    /// Starts the writer thread. Fails when the directory cannot be created or written.
    pub fn start(cfg: &TraceConfig) -> io::Result<TraceWriter> {
        fs::create_dir_all(&cfg.dir)?;
        let mut sink = Sink::open(cfg.clone())?;
        let (tx, rx) = sync_channel::<RequestRecord>(65_536);
        std::thread::Builder::new().name("thaw-trace".into()).spawn(move || {
            while let Ok(rec) = rx.recv() {
                if let Err(e) = sink.append(&rec) {
                    tracing::warn!(error = %e, "request trace write failed");
                }
                // Flush when the queue is drained so a reader sees whole lines promptly.
                if let Ok(next) = rx.try_recv() {
                    let _ = sink.append(&next);
                } else {
                    let _ = sink.flush();
                }
            }
            let _ = sink.flush();
        })?;
        Ok(TraceWriter { tx, dropped: Arc::new(AtomicU64::new(0)) })
    }

    pub fn record(&self, rec: RequestRecord) {
        match self.tx.try_send(rec) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

struct Sink {
    cfg: TraceConfig,
    out: BufWriter<File>,
    size: u64,
}

impl Sink {
    fn open(cfg: TraceConfig) -> io::Result<Sink> {
        let path = cfg.dir.join(CURRENT);
        let f = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = f.metadata()?.len();
        Ok(Sink { cfg, out: BufWriter::with_capacity(64 << 10, f), size })
    }

    fn append(&mut self, rec: &RequestRecord) -> io::Result<()> {
        let line = Record::Request(rec.clone()).to_line();
        if self.size > 0 && self.size + line.len() as u64 > self.cfg.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(line.as_bytes())?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        fs::rename(self.cfg.dir.join(CURRENT), self.cfg.dir.join(format!("requests-{stamp}.jsonl")))?;
        prune(&self.cfg.dir, self.cfg.keep)?;
        let f = OpenOptions::new().create(true).append(true).open(self.cfg.dir.join(CURRENT))?;
        self.out = BufWriter::with_capacity(64 << 10, f);
        self.size = 0;
        Ok(())
    }
}

/// Keeps the `keep` newest rotated files (their names sort by time).
fn prune(dir: &Path, keep: usize) -> io::Result<()> {
    let mut rotated: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("requests-") && n.ends_with(".jsonl"))
        })
        .collect();
    rotated.sort();
    let excess = rotated.len().saturating_sub(keep);
    for p in &rotated[..excess] {
        fs::remove_file(p)?;
    }
    Ok(())
}

/// Turns a tenant identity into the trace's `principal`: HMAC-SHA256 under a per-install secret,
/// truncated to 64 bits. Without the secret the value cannot be recomputed from a guessed name or
/// token, unlike a plain hash.
#[derive(Clone)]
pub struct PrincipalHasher {
    secret: [u8; 32],
}

impl PrincipalHasher {
    /// Loads the secret from `path`, creating it (mode 0600, 32 random bytes) on first use.
    pub fn load_or_create(path: &Path) -> io::Result<PrincipalHasher> {
        use rand::RngCore;
        if let Ok(bytes) = fs::read(path) {
            if let Ok(secret) = <[u8; 32]>::try_from(bytes.as_slice()) {
                return Ok(PrincipalHasher { secret });
            }
            tracing::warn!(path = %path.display(), "trace secret has the wrong length; making a new one");
        }
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp)?;
            f.write_all(&secret)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        Ok(PrincipalHasher { secret })
    }

    pub fn with_secret(secret: [u8; 32]) -> PrincipalHasher {
        PrincipalHasher { secret }
    }

    pub fn hash(&self, identity: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(identity.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thaw_record::{CacheOutcome, ObjectKind, SCHEMA_VERSION};

    fn rec(i: u64) -> RequestRecord {
        RequestRecord {
            v: SCHEMA_VERSION, ts_us: i, client: None, principal: None, user_agent: None, upstream: None,
            repo: Some("r".into()), tag: None, digest: None, kind: ObjectKind::Blob, size: Some(i),
            bytes_sent: i, method: "GET".into(), status: 200, duration_us: 1, outcome: CacheOutcome::Hit,
            range: None, layers: vec![],
        }
    }

    #[test]
    fn rotates_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TraceConfig { dir: dir.path().into(), max_bytes: 600, keep: 2 };
        let mut sink = Sink::open(cfg).unwrap();
        for i in 0..60 {
            sink.append(&rec(i)).unwrap();
        }
        sink.flush().unwrap();
        let names: Vec<String> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(names.contains(&CURRENT.to_string()));
        assert_eq!(names.iter().filter(|n| n.starts_with("requests-")).count(), 2, "{names:?}");
        // every line of the current file is a whole record
        for line in fs::read_to_string(dir.path().join(CURRENT)).unwrap().lines() {
            Record::from_line(line).unwrap();
        }
    }

    #[test]
    fn principal_hash_is_keyed_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        let a = PrincipalHasher::load_or_create(&p).unwrap();
        let b = PrincipalHasher::load_or_create(&p).unwrap();
        assert_eq!(a.hash("alice"), b.hash("alice"));
        assert_eq!(a.hash("alice").len(), 16);
        assert_ne!(a.hash("alice"), a.hash("bob"));
        let other = PrincipalHasher::with_secret([7; 32]);
        assert_ne!(a.hash("alice"), other.hash("alice"), "a different install gives a different value");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
