//! Single-flight misses with streaming fan-out.
//!
//! The first GET of an uncached blob starts one upstream fetch (a *flight*); every later GET of the
//! same digest joins it. The fetch writes the upstream's bytes into the store's temp file for that
//! blob, and every waiter reads that file with positioned reads as it grows, so each receives bytes
//! as they arrive, from its own offset, without the bytes being held in memory per waiter.
//!
//! Trust: until the whole blob is verified these are the upstream's own bytes, relayed. A waiter is
//! never given the blob's **last byte** before the digest has been checked: when verification fails
//! the flight is marked failed and every waiter's connection is cut short, so no client ever
//! receives a complete body that does not match its digest (its own length or digest check fails,
//! and it retries). A Range request that ends before the last byte is served from the unverified
//! stream, which is exactly what the client would have got from the upstream itself.
//!
//! An interrupted upstream download is resumed with `Range: bytes=<received>-` up to the configured
//! number of attempts; an upstream that ignores the Range header (answers 200) is handled by
//! skipping the bytes already received. The same attempts cover failures before the first byte:
//! an unreachable upstream or a 5xx answer is retried with a short backoff, since no client has
//! been told anything yet; a 429 is not (it asks us to slow down, and its Retry-After reaches the
//! client).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_RANGE, RANGE};
use reqwest::{Method, StatusCode};
use thaw_oci::Digest;
use thaw_store::{BlobWriter, Committed, StoreError};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::upstream::{Credential, Upstream};

/// Chunk size for reads from the temp file and from stored blobs.
pub const CHUNK: usize = 512 * 1024;

/// How a flight ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Verified and committed to the store.
    Stored,
    /// Verified, but not kept: no room beside pinned content. Waiters got every byte.
    NotCached,
    /// The upstream refused before sending a byte (its status), or the fetch failed.
    Failed { status: Option<u16>, reason: String },
}

/// What waiters watch.
#[derive(Debug, Clone, Default)]
pub struct FlightState {
    /// Bytes written to the temp file and readable from it.
    pub written: u64,
    /// The blob's size, once the upstream said it.
    pub total: Option<u64>,
    pub outcome: Option<Outcome>,
    /// The upstream's `Retry-After` when it refused the fetch (429, 503), relayed to waiters.
    pub retry_after: Option<String>,
}

impl FlightState {
    /// How many bytes from the start a waiter may send now (see the module docs on the last byte).
    pub fn releasable(&self) -> u64 {
        match (&self.outcome, self.total) {
            (Some(Outcome::Stored | Outcome::NotCached), _) => self.written,
            (Some(Outcome::Failed { .. }), _) => self.written.min(self.total.unwrap_or(0).saturating_sub(1)),
            (None, Some(t)) => self.written.min(t.saturating_sub(1)),
            (None, None) => self.written.saturating_sub(1),
        }
    }
}

/// A fetch in progress. Cheap to share; waiters hold an `Arc`.
pub struct Flight {
    pub digest: Digest,
    /// The (upstream, repository) it was started through (the repository it is known to belong to).
    pub upstream: String,
    pub repo: String,
    rx: watch::Receiver<FlightState>,
    /// A read-only handle on the temp file; waiters use positioned reads, so one handle serves all.
    reader: Arc<File>,
}

impl Flight {
    pub fn state(&self) -> FlightState {
        self.rx.borrow().clone()
    }

    /// Waits until the upstream has said the blob's size, or the flight ended.
    pub async fn wait_started(&self) -> FlightState {
        let mut rx = self.rx.clone();
        loop {
            let st = rx.borrow_and_update().clone();
            if st.total.is_some() || st.outcome.is_some() {
                return st;
            }
            if rx.changed().await.is_err() {
                return rx.borrow().clone();
            }
        }
    }

    /// Waits until more than `seen` bytes were written or the flight ended, and returns the state.
    pub async fn next_state(&self, seen: u64) -> FlightState {
        let mut rx = self.rx.clone();
        loop {
            let st = rx.borrow_and_update().clone();
            if st.written != seen || st.outcome.is_some() {
                return st;
            }
            if rx.changed().await.is_err() {
                return rx.borrow().clone();
            }
        }
    }

    /// Waits for the end of the flight.
    pub async fn wait_done(&self) -> Outcome {
        let mut rx = self.rx.clone();
        loop {
            if let Some(o) = rx.borrow_and_update().outcome.clone() {
                return o;
            }
            if rx.changed().await.is_err() {
                return rx.borrow().outcome.clone().unwrap_or(Outcome::Failed {
                    status: None,
                    reason: "fetch ended without an outcome".into(),
                });
            }
        }
    }

    /// Streams bytes `start..end` (end exclusive) to a waiter as they become releasable. Ends with
    /// an error (which cuts the client's connection) when the flight fails.
    pub fn stream(self: Arc<Self>, start: u64, end: u64) -> impl Stream<Item = io::Result<Bytes>> + Send {
        let rx = self.rx.clone();
        futures::stream::unfold((self, rx, start), move |(flight, mut rx, pos)| async move {
            if pos >= end {
                return None;
            }
            loop {
                let st = rx.borrow_and_update().clone();
                let avail = st.releasable().min(end);
                if pos < avail {
                    let len = ((avail - pos) as usize).min(CHUNK);
                    let reader = flight.reader.clone();
                    let read = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0u8; len];
                        reader.read_exact_at(&mut buf, pos).map(|_| Bytes::from(buf))
                    })
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e)));
                    return Some(match read {
                        Ok(b) => {
                            let n = b.len() as u64;
                            (Ok(b), (flight, rx, pos + n))
                        }
                        Err(e) => (Err(e), (flight, rx, end)),
                    });
                }
                if let Some(Outcome::Failed { reason, .. }) = &st.outcome {
                    let err = io::Error::other(format!("upstream fetch of {} failed: {reason}", flight.digest));
                    return Some((Err(err), (flight, rx, end)));
                }
                if rx.changed().await.is_err() {
                    let err = io::Error::other("upstream fetch ended unexpectedly");
                    return Some((Err(err), (flight, rx, end)));
                }
            }
        })
    }
}

enum Msg {
    Data(Bytes),
    Finish,
    Abort,
}

/// Everything a fetch needs.
pub struct FetchJob {
    pub upstream: Arc<Upstream>,
    pub repo: String,
    pub cred: Credential,
    pub digest: Digest,
    pub retries: u32,
    pub metrics: Arc<Metrics>,
    /// Runs on the writer thread after a successful commit and before the outcome is published,
    /// so whatever it records (the blob's repository membership) is in place before any waiter
    /// gets the last byte and can ask again.
    pub after_commit: Option<Box<dyn FnOnce() + Send + Sync>>,
}

/// Creates a flight around `writer` and starts its fetch. `on_done` runs once the outcome is set
/// (the registry removes the flight from its map there).
pub fn start(
    job: FetchJob,
    writer: BlobWriter,
    on_done: impl FnOnce(&Outcome) + Send + 'static,
) -> Result<Arc<Flight>, StoreError> {
    let reader = Arc::new(writer.tail_reader().map_err(|source| StoreError::Io { op: "open for tailing", path: "the store's temp file".into(), source })?);
    let (tx, rx) = watch::channel(FlightState::default());
    let flight = Arc::new(Flight {
        digest: job.digest.clone(),
        upstream: job.upstream.name().to_string(),
        repo: job.repo.clone(),
        rx,
        reader,
    });
    let tx = Arc::new(tx);
    tokio::spawn(run(job, writer, tx, on_done));
    Ok(flight)
}

async fn run(
    job: FetchJob,
    mut writer: BlobWriter,
    tx: Arc<watch::Sender<FlightState>>,
    on_done: impl FnOnce(&Outcome) + Send + 'static,
) {
    // The writer lives on a blocking thread: store writes are synchronous file I/O.
    let (chunk_tx, chunk_rx) = std::sync::mpsc::sync_channel::<Msg>(32);
    let wtx = tx.clone();
    let digest = job.digest.clone();
    let metrics = job.metrics.clone();
    let mut job = job;
    let after_commit = job.after_commit.take();
    let writer_task = tokio::task::spawn_blocking(move || -> Outcome {
        for msg in chunk_rx {
            match msg {
                Msg::Data(b) => {
                    if let Err(e) = writer.write(&b) {
                        writer.abort();
                        return Outcome::Failed { status: None, reason: format!("store write failed: {e}") };
                    }
                    let n = b.len() as u64;
                    wtx.send_modify(|s| s.written += n);
                }
                Msg::Finish => {
                    return match writer.commit() {
                        Ok(Committed::Stored | Committed::AlreadyPresent) => {
                            if let Some(f) = after_commit {
                                f();
                            }
                            Outcome::Stored
                        }
                        Ok(Committed::NotCached) => Outcome::NotCached,
                        Err(StoreError::DigestMismatch { expected, actual }) => {
                            metrics.digest_mismatches.inc();
                            tracing::error!(%expected, %actual, "upstream sent a blob that does not match its digest; discarded, waiters cut off");
                            Outcome::Failed { status: None, reason: format!("digest mismatch: upstream sent {actual}") }
                        }
                        Err(e) => Outcome::Failed { status: None, reason: format!("store commit failed: {e}") },
                    };
                }
                Msg::Abort => {
                    writer.abort();
                    return Outcome::Failed { status: None, reason: "fetch aborted".into() };
                }
            }
        }
        writer.abort();
        Outcome::Failed { status: None, reason: "fetch ended".into() }
    });

    let fetch_result = fetch(&job, &tx, &chunk_tx).await;
    let outcome = match fetch_result {
        Ok(()) => {
            let _ = chunk_tx.send(Msg::Finish);
            drop(chunk_tx);
            writer_task.await.unwrap_or_else(|e| Outcome::Failed { status: None, reason: format!("writer panicked: {e}") })
        }
        Err(o) => {
            let _ = chunk_tx.send(Msg::Abort);
            drop(chunk_tx);
            let _ = writer_task.await;
            o
        }
    };
    if let Outcome::Failed { reason, .. } = &outcome {
        tracing::warn!(digest = %digest, upstream = job.upstream.name(), %reason, "blob fetch failed");
    }
    tx.send_modify(|s| s.outcome = Some(outcome.clone()));
    on_done(&outcome);
}

/// Pulls the blob from the upstream into the writer thread, resuming on interruption.
async fn fetch(job: &FetchJob, tx: &watch::Sender<FlightState>, chunks: &std::sync::mpsc::SyncSender<Msg>) -> Result<(), Outcome> {
    let suffix = format!("blobs/{}", job.digest);
    let labels = Metrics::upstream(job.upstream.name());
    let mut received: u64 = 0;
    let mut attempt = 0u32;
    let fail = |status: Option<u16>, reason: String| Outcome::Failed { status, reason };
    loop {
        let mut headers = HeaderMap::new();
        if received > 0 {
            headers.insert(RANGE, HeaderValue::from_str(&format!("bytes={received}-")).expect("ascii"));
        }
        let t0 = Instant::now();
        let resp = match job.upstream.send(Method::GET, &job.repo, &suffix, &job.cred, headers).await {
            Ok(r) => r,
            Err(e) if attempt < job.retries => {
                // Unreachable before the first byte or in the middle: either way nobody has been
                // promised anything the retry could contradict, so try again (with Range when
                // some bytes are already in).
                attempt += 1;
                tracing::info!(error = %e, attempt, received, "upstream unreachable; retrying");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                continue;
            }
            Err(e) => return Err(fail(None, e.to_string())),
        };
        job.metrics.upstream_latency.get_or_create(&labels).observe(t0.elapsed().as_secs_f64());
        let status = resp.status();
        // How many bytes at the front of this response we already have.
        let mut skip: u64 = 0;
        if received == 0 {
            if status.is_server_error() && attempt < job.retries {
                // A 5xx before the first byte is usually a passing outage of one upstream node
                // (a load balancer's 502/503/504). 429 is not retried: it asks us to back off,
                // and the client gets its Retry-After.
                attempt += 1;
                tracing::info!(digest = %job.digest, %status, attempt, "upstream answered a server error; retrying");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                continue;
            }
            if status != StatusCode::OK {
                let retry_after = resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
                tx.send_modify(|s| s.retry_after = retry_after);
                return Err(fail(Some(status.as_u16()), format!("upstream answered {status}")));
            }
            let total = resp.content_length();
            tx.send_modify(|s| s.total = total);
        } else if status == StatusCode::PARTIAL_CONTENT {
            let start = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if start != Some(received) {
                return Err(fail(None, format!("upstream resumed at {start:?}, expected {received}")));
            }
            job.metrics.upstream_resumes.inc();
        } else if status == StatusCode::OK {
            skip = received;
            job.metrics.upstream_resumes.inc();
        } else {
            return Err(fail(None, format!("upstream answered {status} to a resume")));
        }
        let mut body = resp.bytes_stream();
        let mut interrupted = None;
        while let Some(item) = body.next().await {
            match item {
                Ok(mut b) => {
                    if skip > 0 {
                        let cut = (skip as usize).min(b.len());
                        b = b.slice(cut..);
                        skip -= cut as u64;
                        if b.is_empty() {
                            continue;
                        }
                    }
                    if let Some(t) = tx.borrow().total {
                        if received + b.len() as u64 > t {
                            return Err(fail(None, format!("upstream sent more than the {t} bytes it announced")));
                        }
                    }
                    received += b.len() as u64;
                    job.metrics.bytes_fetched.get_or_create(&labels).inc_by(b.len() as u64);
                    if chunks.send(Msg::Data(b)).is_err() {
                        return Err(fail(None, "store writer stopped".into()));
                    }
                }
                Err(e) => {
                    interrupted = Some(e.to_string());
                    break;
                }
            }
        }
        let total = tx.borrow().total;
        let short = total.is_some_and(|t| received < t);
        if interrupted.is_none() && !short {
            return Ok(());
        }
        if attempt >= job.retries {
            let why = interrupted.unwrap_or_else(|| format!("body ended after {received} of {total:?} bytes"));
            return Err(fail(None, format!("upstream download interrupted: {why}")));
        }
        attempt += 1;
        tracing::info!(digest = %job.digest, received, attempt, "upstream download interrupted; resuming with Range");
        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
    }
}

/// Streams `start..end` of a stored blob. `guard` (the store's pinned handle) lives as long as the
/// stream, so the blob cannot be evicted while it is being served.
pub fn file_stream<G: Send + Sync + 'static>(
    file: Arc<File>,
    start: u64,
    end: u64,
    guard: G,
) -> impl Stream<Item = io::Result<Bytes>> + Send {
    let guard = Arc::new(guard);
    futures::stream::unfold((file, start, guard), move |(file, pos, guard)| async move {
        if pos >= end {
            return None;
        }
        let len = ((end - pos) as usize).min(CHUNK);
        let f = file.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, pos).map(|_| Bytes::from(buf))
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
        Some(match read {
            Ok(b) => {
                let n = b.len() as u64;
                (Ok(b), (file, pos + n, guard))
            }
            Err(e) => (Err(e), (file, end, guard)),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_byte_is_held_until_verified() {
        let mut s = FlightState { written: 100, total: Some(100), outcome: None, retry_after: None };
        assert_eq!(s.releasable(), 99);
        s.outcome = Some(Outcome::Stored);
        assert_eq!(s.releasable(), 100);
        s.outcome = Some(Outcome::Failed { status: None, reason: "x".into() });
        assert_eq!(s.releasable(), 99);
        let s = FlightState { written: 10, total: None, outcome: None, retry_after: None };
        assert_eq!(s.releasable(), 9);
        let s = FlightState { written: 0, total: Some(0), outcome: None, retry_after: None };
        assert_eq!(s.releasable(), 0);
    }
}
