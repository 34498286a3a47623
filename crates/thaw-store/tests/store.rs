//! Behaviour of the blob store through its public API: commits, verification, eviction, pins,
//! uploads, metadata, locking and recovery at open.

mod common;

use std::io::Read;
use std::sync::Arc;

use common::{blob, put, read_blob, scratch, tmp_leftovers};
use thaw_oci::Digest;
use thaw_policy::PolicySpec;
use thaw_store::{BlobStore, Committed, StoreConfig, StoreError, TagEntry};

fn cfg(cap: Option<u64>) -> StoreConfig {
    StoreConfig { capacity: cap, policy: PolicySpec::Lru }
}

#[test]
fn commit_then_get_stat_remove() {
    let dir = scratch();
    let s = BlobStore::open(dir.path(), StoreConfig::default()).unwrap();
    let data = blob(1, 100_000);
    let d = Digest::sha256_of(&data);
    assert_eq!(s.stat(&d).unwrap(), None);
    assert!(s.get(&d).unwrap().is_none());
    assert_eq!(put(&s, &data).unwrap(), Committed::Stored);
    assert_eq!(s.stat(&d).unwrap(), Some(100_000));
    assert_eq!(read_blob(&s, &d).unwrap(), data);
    let h = s.get(&d).unwrap().unwrap();
    assert_eq!(h.digest(), &d);
    let path = dir.path().join("blobs/sha256").join(&d.hex()[..2]).join(d.hex());
    assert!(path.is_file(), "layout blobs/<alg>/<2 hex>/<hex>");
    assert_eq!(s.blob_path(&d), path);
    drop(h);
    assert_eq!(put(&s, &data).unwrap(), Committed::AlreadyPresent);
    assert!(tmp_leftovers(dir.path()).is_empty());
    assert!(s.remove(&d).unwrap());
    assert!(!s.remove(&d).unwrap());
    assert!(s.get(&d).unwrap().is_none());
    assert!(!path.exists());
    let st = s.stats();
    assert_eq!((st.blobs, st.bytes), (0, 0));
    assert!(s.check().unwrap().is_clean());
}

#[test]
fn empty_blob_and_unknown_size() {
    let dir = scratch();
    let s = BlobStore::open(dir.path(), StoreConfig::default()).unwrap();
    let d = Digest::sha256_of(b"");
    assert_eq!(s.begin(&d, None).unwrap().commit().unwrap(), Committed::Stored);
    assert_eq!(read_blob(&s, &d).unwrap(), b"");
}

#[test]
fn digest_mismatch_leaves_nothing_and_is_never_served() {
    let dir = scratch();
    let s = BlobStore::open(dir.path(), StoreConfig::default()).unwrap();
    let good = blob(2, 5000);
    let d = Digest::sha256_of(&good);
    let mut bad = good.clone();
    bad[4321] ^= 1;
    let mut w = s.begin(&d, Some(5000)).unwrap();
    w.write(&bad).unwrap();
    let mut tail = w.tail_reader().unwrap();
    let mut seen = Vec::new();
    tail.read_to_end(&mut seen).unwrap();
    assert_eq!(seen, bad, "tail readers see the bytes as they land");
    match w.commit() {
        Err(StoreError::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, d);
            assert_eq!(actual, Digest::sha256_of(&bad));
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    assert!(s.get(&d).unwrap().is_none());
    assert_eq!(s.stat(&d).unwrap(), None);
    assert!(tmp_leftovers(dir.path()).is_empty(), "the temp file is gone");
    assert_eq!(s.stats().rejected_mismatch, 1);
    drop(s);
    let s = BlobStore::open(dir.path(), StoreConfig::default()).unwrap();
    assert!(s.get(&d).unwrap().is_none(), "not served after a restart either");
    assert!(s.check().unwrap().is_clean());
}

#[test]
fn size_mismatch_is_refused_early_and_at_commit() {
    let dir = scratch();
    let s = BlobStore::open(dir.path(), StoreConfig::default()).unwrap();
    let data = blob(3, 100);
    let d = Digest::sha256_of(&data);
    let mut w = s.begin(&d, Some(50)).unwrap();
    assert!(matches!(w.write(&data), Err(StoreError::SizeMismatch { expected: 50, actual: 100, .. })));
    drop(w);
    let mut w = s.begin(&d, Some(200)).unwrap();
    w.write(&data).unwrap();
    assert!(matches!(w.commit(), Err(StoreError::SizeMismatch { expected: 200, actual: 100, .. })));
    assert!(tmp_leftovers(dir.path()).is_empty());
    assert!(s.get(&d).unwrap().is_none());
}

#[test]
fn abort_and_drop_remove_temp_files() {
    let dir = scratch();
    let s = BlobStore::open(dir.path(), StoreConfig::default()).unwrap();
    let d = Digest::sha256_of(b"x");
    let mut w = s.begin(&d, None).unwrap();
    w.write(b"x").unwrap();
    assert_eq!(tmp_leftovers(dir.path()).len(), 1);
    w.abort();
    assert!(tmp_leftovers(dir.path()).is_empty());
    let w = s.begin(&d, None).unwrap();
    drop(w);
    assert!(tmp_leftovers(dir.path()).is_empty());
}

#[test]
fn second_opener_is_told_who_holds_the_lock() {
    let dir = scratch();
    let s = BlobStore::open(dir.path(), StoreConfig::default()).unwrap();
    let err = BlobStore::open(dir.path(), StoreConfig::default()).unwrap_err();
    match &err {
        StoreError::Locked { dir: d, pid } => {
            assert_eq!(d, dir.path());
            assert_eq!(*pid, Some(std::process::id()));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
    assert!(msg.contains("use its API") && msg.contains("or stop it"), "{msg}");
    drop(s);
    BlobStore::open(dir.path(), StoreConfig::default()).expect("the lock is released on drop");
}

#[test]
fn lru_eviction_respects_pins_and_refuses_when_pinned_bytes_fill_it() {
    let dir = scratch();
    let s = BlobStore::open(dir.path(), cfg(Some(3000))).unwrap();
    let b: Vec<Vec<u8>> = (0..6).map(|i| blob(10 + i, 1000)).collect();
    let d: Vec<Digest> = b.iter().map(|x| Digest::sha256_of(x)).collect();
    for x in &b[..3] {
        assert_eq!(put(&s, x).unwrap(), Committed::Stored);
    }
    // touch 0 so 1 is the least recent; hold 0 open
    let h0 = s.get(&d[0]).unwrap().unwrap();
    assert_eq!(put(&s, &b[3]).unwrap(), Committed::Stored);
    assert_eq!(s.stat(&d[1]).unwrap(), None, "least recently used evicted");
    assert!(!s.blob_path(&d[1]).exists(), "its file is gone");
    // 2 is now least recent, pin it: the next victim must skip 0 (open) and 2 (pinned)
    let p2 = s.pin(&d[2]).unwrap();
    assert_eq!(put(&s, &b[4]).unwrap(), Committed::Stored);
    assert_eq!(s.stat(&d[3]).unwrap(), None);
    assert!(s.stat(&d[0]).unwrap().is_some() && s.stat(&d[2]).unwrap().is_some());
    let st = s.stats();
    assert_eq!((st.evictions, st.evicted_bytes, st.pinned_bytes), (2, 2000, 2000));
    // pin the third one too: pinned bytes fill the capacity, new content is not cached
    let p4 = s.pin(&d[4]).unwrap();
    assert_eq!(put(&s, &b[5]).unwrap(), Committed::NotCached);
    assert_eq!(s.stat(&d[5]).unwrap(), None);
    assert!(!s.blob_path(&d[5]).exists());
    assert!(tmp_leftovers(dir.path()).is_empty());
    assert_eq!(s.stats().not_cached, 1);
    // content pinned while open still reads
    let mut v = Vec::new();
    h0.try_clone_file().unwrap().read_to_end(&mut v).unwrap();
    assert_eq!(v, b[0]);
    drop((h0, p2, p4));
    assert_eq!(s.stats().pinned_bytes, 0);
    assert_eq!(put(&s, &b[5]).unwrap(), Committed::Stored);
    // larger than the whole cache: never cached
    assert_eq!(put(&s, &blob(99, 3001)).unwrap(), Committed::NotCached);
    assert!(s.check().unwrap().is_clean());
    assert!(s.pin(&Digest::sha256_of(b"absent")).is_none());
}

#[test]
fn lru_order_survives_a_restart() {
    let dir = scratch();
    let b: Vec<Vec<u8>> = (0..4).map(|i| blob(20 + i, 1000)).collect();
    let d: Vec<Digest> = b.iter().map(|x| Digest::sha256_of(x)).collect();
    {
        let s = BlobStore::open(dir.path(), cfg(Some(3000))).unwrap();
        for x in &b[..3] {
            put(&s, x).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        // 0 becomes the most recent; 1 the least
        s.get(&d[0]).unwrap().unwrap();
    } // dropping the store saves access times
    let s = BlobStore::open(dir.path(), cfg(Some(3000))).unwrap();
    assert_eq!(put(&s, &b[3]).unwrap(), Committed::Stored);
    assert_eq!(s.stat(&d[1]).unwrap(), None, "the least recently used before the restart goes first");
    assert!(s.stat(&d[0]).unwrap().is_some());
    assert!(s.stat(&d[2]).unwrap().is_some());
}

#[test]
fn shrinking_capacity_evicts_oldest_at_open() {
    let dir = scratch();
    let b: Vec<Vec<u8>> = (0..4).map(|i| blob(30 + i, 1000)).collect();
    let d: Vec<Digest> = b.iter().map(|x| Digest::sha256_of(x)).collect();
    {
        let s = BlobStore::open(dir.path(), cfg(None)).unwrap();
        for x in &b {
            put(&s, x).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    let s = BlobStore::open(dir.path(), cfg(Some(2500))).unwrap();
    let present: Vec<bool> = d.iter().map(|x| s.stat(x).unwrap().is_some()).collect();
    assert_eq!(present, vec![false, false, true, true]);
    assert_eq!(s.stats().evictions, 2);
    assert!(s.check().unwrap().is_clean());
}

#[test]
fn uploads_append_resume_finish_cancel() {
    let dir = scratch();
    let data = blob(40, 30_000);
    let d = Digest::sha256_of(&data);
    let id = {
        let s = BlobStore::open(dir.path(), StoreConfig::default()).unwrap();
        let id = s.upload_start().unwrap();
        assert_eq!(s.upload_size(&id).unwrap(), 0);
        assert_eq!(s.upload_append(&id, 0, &data[..10_000]).unwrap(), 10_000);
        match s.upload_append(&id, 5, &data[10_000..]) {
            Err(StoreError::UploadOffset { size: 10_000, offset: 5, .. }) => {}
            other => panic!("expected UploadOffset, got {other:?}"),
        }
        id
    };
    // resumable after a restart, with the size read from disk
    let s = BlobStore::open(dir.path(), StoreConfig::default()).unwrap();
    assert_eq!(s.upload_size(&id).unwrap(), 10_000);
    assert_eq!(s.upload_append(&id, 10_000, &data[10_000..]).unwrap(), 30_000);
    assert_eq!(s.upload_finish(&id, &d).unwrap(), Committed::Stored);
    assert_eq!(read_blob(&s, &d).unwrap(), data);
    assert!(matches!(s.upload_size(&id), Err(StoreError::UnknownUpload { .. })));
    assert!(std::fs::read_dir(dir.path().join("uploads")).unwrap().next().is_none());

    // a wrong digest discards the upload
    let id = s.upload_start().unwrap();
    s.upload_append(&id, 0, b"abc").unwrap();
    let wrong = Digest::sha256_of(b"abd");
    assert!(matches!(s.upload_finish(&id, &wrong), Err(StoreError::DigestMismatch { .. })));
    assert!(s.get(&wrong).unwrap().is_none());
    assert!(matches!(s.upload_append(&id, 3, b"x"), Err(StoreError::UnknownUpload { .. })));

    // cancel
    let id = s.upload_start().unwrap();
    s.upload_append(&id, 0, b"abc").unwrap();
    s.upload_cancel(&id).unwrap();
    assert!(matches!(s.upload_cancel(&id), Err(StoreError::UnknownUpload { .. })));
    assert!(std::fs::read_dir(dir.path().join("uploads")).unwrap().next().is_none());

    // an upload of content already present
    let id = s.upload_start().unwrap();
    s.upload_append(&id, 0, &data).unwrap();
    assert_eq!(s.upload_finish(&id, &d).unwrap(), Committed::AlreadyPresent);
    assert!(s.check().unwrap().is_clean());
}

#[test]
fn registry_metadata_round_trips_and_is_durable() {
    let dir = scratch();
    let d1 = Digest::sha256_of(b"m1");
    let d2 = Digest::sha256_of(b"m2");
    let entry = |d: &Digest| TagEntry {
        digest: d.clone(),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        fetched_at_unix: 1_700_000_000,
    };
    {
        let s = BlobStore::open(dir.path(), StoreConfig::default()).unwrap();
        for tag in ["v2", "latest", "v1"] {
            s.put_tag("docker.io", "library/alpine", tag, &entry(&d1)).unwrap();
        }
        s.put_tag("docker.io", "library/alpine", "v2", &entry(&d2)).unwrap();
        // neighbours that must not show up in the listing
        s.put_tag("docker.io", "library/alpine2", "x", &entry(&d1)).unwrap();
        s.put_tag("docker.io", "library", "y", &entry(&d1)).unwrap();
        s.put_tag("ghcr.io", "library/alpine", "z", &entry(&d1)).unwrap();
        assert!(s.delete_tag("docker.io", "library/alpine", "v1").unwrap());
        assert!(!s.delete_tag("docker.io", "library/alpine", "v1").unwrap());
        s.link("docker.io", "library/alpine", &d1).unwrap();
        s.link("docker.io", "library/alpine", &d1).unwrap();
        s.put_manifest_type(&d1, "application/vnd.oci.image.index.v1+json").unwrap();
        s.set_private("docker.io", "acme/secret", true).unwrap();
        s.set_private("docker.io", "library/alpine", false).unwrap();
    }
    let s = BlobStore::open(dir.path(), StoreConfig::default()).unwrap();
    assert_eq!(s.list_tags("docker.io", "library/alpine").unwrap(), vec!["latest", "v2"]);
    assert_eq!(s.list_tags("docker.io", "nothing").unwrap(), Vec::<String>::new());
    assert_eq!(s.get_tag("docker.io", "library/alpine", "v2").unwrap(), Some(entry(&d2)));
    assert_eq!(s.get_tag("docker.io", "library/alpine", "v1").unwrap(), None);
    assert!(s.is_linked("docker.io", "library/alpine", &d1).unwrap());
    assert!(!s.is_linked("docker.io", "library/alpine", &d2).unwrap());
    assert!(!s.is_linked("docker.io", "library/alpine2", &d1).unwrap());
    assert_eq!(s.manifest_type(&d1).unwrap().as_deref(), Some("application/vnd.oci.image.index.v1+json"));
    assert_eq!(s.manifest_type(&d2).unwrap(), None);
    assert_eq!(s.is_private("docker.io", "acme/secret").unwrap(), Some(true));
    assert_eq!(s.is_private("docker.io", "library/alpine").unwrap(), Some(false));
    assert_eq!(s.is_private("docker.io", "other").unwrap(), None);
}

#[test]
fn recovery_cleans_tmp_drops_rows_adopts_good_files_deletes_bad_ones() {
    let dir = scratch();
    let kept = blob(50, 2000);
    let lost = blob(51, 2000);
    let orphan = blob(52, 2000);
    let (dk, dl, dor) = (Digest::sha256_of(&kept), Digest::sha256_of(&lost), Digest::sha256_of(&orphan));
    let bad_name = Digest::sha256_of(b"something else");
    {
        let s = BlobStore::open(dir.path(), StoreConfig::default()).unwrap();
        put(&s, &kept).unwrap();
        put(&s, &lost).unwrap();
    }
    // a writer in progress when the process died
    std::fs::write(dir.path().join("tmp/7-0123456789abcdef.part"), &orphan[..100]).unwrap();
    // after the "crash": one file lost, one good file without a row, one bad file without a row
    let path_of = |d: &Digest| dir.path().join("blobs/sha256").join(&d.hex()[..2]).join(d.hex());
    std::fs::remove_file(path_of(&dl)).unwrap();
    std::fs::create_dir_all(path_of(&dor).parent().unwrap()).unwrap();
    std::fs::write(path_of(&dor), &orphan).unwrap();
    std::fs::create_dir_all(path_of(&bad_name).parent().unwrap()).unwrap();
    std::fs::write(path_of(&bad_name), b"not what the name says").unwrap();
    assert_eq!(tmp_leftovers(dir.path()).len(), 1);

    let s = BlobStore::open(dir.path(), StoreConfig::default()).unwrap();
    assert!(tmp_leftovers(dir.path()).is_empty());
    assert_eq!(read_blob(&s, &dk).unwrap(), kept);
    assert!(s.get(&dl).unwrap().is_none());
    assert_eq!(read_blob(&s, &dor).unwrap(), orphan);
    assert!(s.get(&bad_name).unwrap().is_none());
    assert!(!path_of(&bad_name).exists());
    assert!(s.check().unwrap().is_clean());
}

#[test]
fn a_blob_deleted_behind_the_stores_back_is_forgotten() {
    let dir = scratch();
    let s = BlobStore::open(dir.path(), StoreConfig::default()).unwrap();
    let data = blob(60, 10);
    let d = Digest::sha256_of(&data);
    put(&s, &data).unwrap();
    std::fs::remove_file(s.blob_path(&d)).unwrap();
    assert!(s.get(&d).unwrap().is_none());
    assert_eq!(s.stat(&d).unwrap(), None);
    assert!(s.check().unwrap().is_clean());
}

#[test]
fn concurrent_writers_of_one_digest_first_commit_wins() {
    let dir = scratch();
    let s = BlobStore::open(dir.path(), StoreConfig::default()).unwrap();
    let data = Arc::new(blob(70, 200_000));
    let d = Digest::sha256_of(&data);
    let outcomes: Vec<Committed> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let (s, data, d) = (s.clone(), data.clone(), d.clone());
                sc.spawn(move || {
                    let mut w = s.begin(&d, Some(data.len() as u64)).unwrap();
                    for c in data.chunks(10_000) {
                        w.write(c).unwrap();
                    }
                    w.commit().unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(outcomes.iter().filter(|o| **o == Committed::Stored).count(), 1);
    assert_eq!(outcomes.iter().filter(|o| **o == Committed::AlreadyPresent).count(), 7);
    assert_eq!(read_blob(&s, &d).unwrap(), *data);
    assert!(tmp_leftovers(dir.path()).is_empty());
}

#[test]
fn many_threads_get_and_commit_under_eviction() {
    let dir = scratch();
    let s = BlobStore::open(dir.path(), cfg(Some(20 * 4096))).unwrap();
    let blobs: Arc<Vec<Vec<u8>>> = Arc::new((0..60).map(|i| blob(100 + i, 4096)).collect());
    std::thread::scope(|sc| {
        for t in 0..6u64 {
            let (s, blobs) = (s.clone(), blobs.clone());
            sc.spawn(move || {
                for i in 0..200u64 {
                    let n = ((i * 7 + t * 13) % 60) as usize;
                    let data = &blobs[n];
                    let d = Digest::sha256_of(data);
                    match s.get(&d).unwrap() {
                        Some(h) => {
                            let mut v = Vec::new();
                            h.try_clone_file().unwrap().read_to_end(&mut v).unwrap();
                            assert_eq!(&v, data, "served content must match its digest");
                        }
                        None => {
                            let r = put(&s, data).unwrap();
                            assert!(matches!(r, Committed::Stored | Committed::AlreadyPresent | Committed::NotCached));
                        }
                    }
                }
            });
        }
    });
    let st = s.stats();
    assert!(st.bytes <= 20 * 4096);
    assert!(st.evictions > 0);
    assert!(s.check().unwrap().is_clean());
    assert!(tmp_leftovers(dir.path()).is_empty());
}

#[test]
fn store_handle_is_send_sync_clone() {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<BlobStore>();
    fn assert_send<T: Send>() {}
    assert_send::<thaw_store::BlobHandle>();
    assert_send::<thaw_store::BlobWriter>();
    assert_send::<thaw_store::Pin>();
}

#[test]
fn access_times_that_fail_to_save_are_kept_for_the_next_attempt() {
    let dir = scratch();
    let b: Vec<Vec<u8>> = (0..4).map(|i| blob(80 + i, 1000)).collect();
    let d: Vec<Digest> = b.iter().map(|x| Digest::sha256_of(x)).collect();
    {
        let fs = Arc::new(thaw_store::FaultFs::new());
        let s = BlobStore::open_with_fs(dir.path(), cfg(Some(3000)), fs.clone()).unwrap();
        for x in &b[..3] {
            put(&s, x).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        s.get(&d[0]).unwrap().unwrap();
        fs.fail_at(fs.ops() + 1); // the metadata commit of the flush
        assert!(s.flush_access_times().is_err());
        s.flush_access_times().unwrap();
        fs.crash_now(); // nothing more reaches the disk, not even the flush at close
    }
    let s = BlobStore::open(dir.path(), cfg(Some(3000))).unwrap();
    assert_eq!(put(&s, &b[3]).unwrap(), Committed::Stored);
    assert_eq!(s.stat(&d[1]).unwrap(), None, "blob 0's access survived the failed save");
    assert!(s.stat(&d[0]).unwrap().is_some());
}

#[test]
fn segmented_lru_evictions_on_hits_delete_files() {
    let dir = scratch();
    let spec: PolicySpec = "slru".parse().unwrap();
    let s = BlobStore::open(dir.path(), StoreConfig { capacity: Some(8000), policy: spec }).unwrap();
    let b: Vec<Vec<u8>> = (0..12).map(|i| blob(90 + i, 900)).collect();
    for round in 0..3 {
        for (i, x) in b.iter().enumerate() {
            let dg = Digest::sha256_of(x);
            if (i + round) % 3 == 0 || s.get(&dg).unwrap().is_none() {
                let _ = put(&s, x).unwrap();
            }
        }
    }
    assert!(s.stats().evictions > 0);
    assert!(s.stats().bytes <= 8000);
    let report = s.check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

/// Hits that evict (segmented LRU) delete their victims after the state lock is released, while
/// other threads commit the same digests again: the store must end consistent, every present
/// blob with its file and row, nothing else on disk.
#[test]
fn evictions_on_hits_racing_commits_of_the_same_blobs_stay_consistent() {
    let dir = scratch();
    let spec: PolicySpec = "slru".parse().unwrap();
    let s = BlobStore::open(dir.path(), StoreConfig { capacity: Some(8000), policy: spec }).unwrap();
    let b: Vec<Vec<u8>> = (0..16).map(|i| blob(120 + i, 900)).collect();
    std::thread::scope(|sc| {
        for t in 0..4usize {
            let (s, b) = (&s, &b);
            sc.spawn(move || {
                for i in 0..400usize {
                    let x = &b[(i * 7 + t * 5) % b.len()];
                    let dg = Digest::sha256_of(x);
                    match s.get(&dg).unwrap() {
                        Some(h) => drop(h),
                        None => {
                            let _ = put(s, x).unwrap();
                        }
                    }
                }
            });
        }
    });
    assert!(s.stats().evictions > 0);
    let report = s.check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    drop(s);
    let s = BlobStore::open(dir.path(), StoreConfig { capacity: Some(8000), policy: "slru".parse().unwrap() }).unwrap();
    assert!(s.check().unwrap().is_clean());
    for x in &b {
        let dg = Digest::sha256_of(x);
        if let Some(h) = s.get(&dg).unwrap() {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut h.try_clone_file().unwrap(), &mut v).unwrap();
            assert_eq!(&v, x, "a present blob reads back its content");
        }
    }
}

#[test]
fn abandoned_uploads_expire_and_active_ones_stay() {
    let dir = scratch();
    let s = BlobStore::open(dir.path(), StoreConfig::default()).unwrap();
    let old = s.upload_start().unwrap();
    s.upload_append(&old, 0, b"abc").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(60));
    let fresh = s.upload_start().unwrap();
    assert_eq!(s.expire_uploads(std::time::Duration::from_millis(50)).unwrap(), 1);
    assert_eq!(s.uploads(), vec![fresh]);
    assert!(matches!(s.upload_size(&old), Err(StoreError::UnknownUpload { .. })));
    assert_eq!(s.upload_size(&fresh).unwrap(), 0);
    assert_eq!(std::fs::read_dir(dir.path().join("uploads")).unwrap().count(), 1);
    assert_eq!(s.expire_uploads(std::time::Duration::from_secs(3600)).unwrap(), 0);
}
