//! Crash consistency: run a workload on the fault-injecting file system, kill it at every single
//! file-system step in turn, cut the power (losing everything not fsynced), reopen on the real
//! file system, and check that the store is consistent and kept everything it acknowledged.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{blob, put, read_blob, scratch, tmp_leftovers};
use thaw_oci::Digest;
use thaw_policy::PolicySpec;
use thaw_store::{BlobStore, Committed, FaultFs, StoreConfig, StoreError, TagEntry};

const SIZE: usize = 3000;

fn config() -> StoreConfig {
    // room for three blobs, so the workload also evicts
    StoreConfig { capacity: Some(3 * SIZE as u64), policy: PolicySpec::Lru }
}

/// What the workload was told had happened, durably.
#[derive(Debug, Default)]
struct Acked {
    present: BTreeSet<Digest>,
    absent: BTreeSet<Digest>,
    tags: Vec<String>,
    /// Every digest the workload may have stored, with its content.
    known: Vec<(Digest, Vec<u8>)>,
}

fn mark_present(a: &mut Acked, d: &Digest) {
    a.absent.remove(d);
    a.present.insert(d.clone());
}

/// A workload touching every kind of write: commits, a rejected commit, an access, an upload,
/// metadata, a removal and evictions. Stops at the first error (the process died there).
fn workload(s: &BlobStore, a: &mut Acked) -> Result<(), StoreError> {
    let blobs: Vec<Vec<u8>> = (0..6).map(|i| blob(1000 + i, SIZE)).collect();
    let ds: Vec<Digest> = blobs.iter().map(|b| Digest::sha256_of(b)).collect();
    a.known = ds.iter().cloned().zip(blobs.iter().cloned()).collect();

    assert_eq!(put(s, &blobs[0])?, Committed::Stored);
    mark_present(a, &ds[0]);
    assert_eq!(put(s, &blobs[1])?, Committed::Stored);
    mark_present(a, &ds[1]);

    // wrong bytes for blob 2: must never become visible
    let mut bad = blobs[2].clone();
    bad[7] ^= 0xff;
    let mut w = s.begin(&ds[2], Some(SIZE as u64))?;
    w.write(&bad)?;
    match w.commit() {
        Err(StoreError::DigestMismatch { .. }) => {}
        Err(e) => return Err(e),
        Ok(c) => panic!("corrupt content committed: {c:?}"),
    }
    a.absent.insert(ds[2].clone());

    assert!(s.get(&ds[0])?.is_some());

    let id = s.upload_start()?;
    s.upload_append(&id, 0, &blobs[3][..1000])?;
    s.upload_append(&id, 1000, &blobs[3][1000..])?;
    assert_eq!(s.upload_finish(&id, &ds[3])?, Committed::Stored);
    mark_present(a, &ds[3]);

    let entry = TagEntry { digest: ds[3].clone(), media_type: "application/vnd.oci.image.manifest.v1+json".into(), fetched_at_unix: 1 };
    s.put_tag("up", "repo", "t1", &entry)?;
    a.tags.push("t1".into());
    s.link("up", "repo", &ds[3])?;

    a.present.remove(&ds[1]); // a removal cut short may or may not have happened
    assert!(s.remove(&ds[1])?);
    a.absent.insert(ds[1].clone());

    // 0 and 3 present; 4 fits; 5 evicts the least recently used (0)
    assert_eq!(put(s, &blobs[4])?, Committed::Stored);
    mark_present(a, &ds[4]);
    a.present.remove(&ds[0]); // may be evicted from here on: no promise either way
    assert_eq!(put(s, &blobs[5])?, Committed::Stored);
    mark_present(a, &ds[5]);
    assert_eq!(s.stat(&ds[0])?, None, "LRU evicted blob 0");
    a.absent.insert(ds[0].clone());
    s.flush_access_times()?;
    Ok(())
}

fn verify_after_restart(dir: &std::path::Path, a: &Acked, k: u64, what: &str) {
    let names: Vec<&str> = ["blob0", "blob1", "blob2(corrupt)", "blob3(upload)", "blob4", "blob5"].to_vec();
    let name = |d: &Digest| a.known.iter().position(|(x, _)| x == d).map(|i| names[i]).unwrap_or("?");
    let s = BlobStore::open(dir, config()).unwrap_or_else(|e| panic!("{what} at step {k}: reopen failed: {e}"));
    let report = s.check().unwrap();
    assert!(report.is_clean(), "{what} at step {k}: inconsistent after restart: {:?}", report.problems);
    assert!(tmp_leftovers(dir).is_empty(), "{what} at step {k}: temp leftovers");
    for (d, content) in &a.known {
        if let Some(got) = read_blob(&s, d) {
            assert_eq!(&got, content, "{what} at step {k}: {d} served with wrong content");
        }
        if a.present.contains(d) {
            assert!(s.stat(d).unwrap().is_some(), "{what} at step {k}: acknowledged {} lost", name(d));
        }
        if a.absent.contains(d) {
            assert!(s.stat(d).unwrap().is_none(), "{what} at step {k}: {} should be absent", name(d));
        }
    }
    for t in &a.tags {
        assert!(s.get_tag("up", "repo", t).unwrap().is_some(), "{what} at step {k}: tag {t} lost");
    }
    assert!(s.stats().bytes <= 3 * SIZE as u64);
    // the store still works
    let fresh = blob(77, 100);
    assert_eq!(put(&s, &fresh).unwrap(), Committed::Stored);
    assert_eq!(read_blob(&s, &Digest::sha256_of(&fresh)).unwrap(), fresh);
}

/// Runs the whole workload once without faults and returns the kinds of its file-system steps.
fn steps() -> Vec<&'static str> {
    let dir = scratch();
    let fs = Arc::new(FaultFs::new());
    let s = BlobStore::open_with_fs(dir.path(), config(), fs.clone()).unwrap();
    let mut a = Acked::default();
    workload(&s, &mut a).expect("the workload passes without faults");
    drop(s);
    let n: Vec<_> = (1..=fs.ops()).map(|i| fs.op_kind(i).unwrap()).collect();
    // no faults and a power cut after a clean close: everything acknowledged is there
    fs.power_cut().unwrap();
    verify_after_restart(dir.path(), &a, 0, "clean run");
    n
}

#[test]
fn crash_at_every_step_then_power_cut_leaves_a_consistent_store() {
    let kinds = steps();
    let n = kinds.len() as u64;
    assert!(n > 40, "the workload should take many steps, took {n}");
    for k in 1..=n {
        let dir = scratch();
        let fs = Arc::new(FaultFs::new());
        fs.crash_at(k);
        let mut a = Acked::default();
        if let Ok(s) = BlobStore::open_with_fs(dir.path(), config(), fs.clone()) {
            let r = workload(&s, &mut a);
            assert!(r.is_err(), "crash at step {k} of {n} went unnoticed");
        }
        assert!(fs.crashed(), "step {k} never ran");
        fs.power_cut().unwrap();
        verify_after_restart(dir.path(), &a, k, &format!("crash at {}", kinds[k as usize - 1]));
    }
}

#[test]
fn a_failed_step_never_serves_bad_content_and_restart_is_consistent() {
    let kinds = steps();
    let n = kinds.len() as u64;
    for k in 1..=n {
        let dir = scratch();
        let fs = Arc::new(FaultFs::new());
        fs.fail_at(k);
        let mut a = Acked::default();
        let s = match BlobStore::open_with_fs(dir.path(), config(), fs.clone()) {
            Ok(s) => s,
            Err(_) => BlobStore::open_with_fs(dir.path(), config(), fs.clone()).expect("open after a transient failure"),
        };
        let _ = workload(&s, &mut a);
        // whatever the failure, what the running store serves is right
        for (d, content) in &a.known {
            if let Some(got) = read_blob(&s, d) {
                assert_eq!(&got, content, "failure at step {k}: wrong content served for {d}");
            }
        }
        drop(s);
        fs.power_cut().unwrap();
        // a single failure is not a crash: acknowledged blobs stay acknowledged
        verify_after_restart(dir.path(), &a, k, &format!("failure of {}", kinds[k as usize - 1]));
    }
}
