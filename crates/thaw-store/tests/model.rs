//! Model-based property test: random interleavings of put, corrupt put, get, remove, crash and
//! reopen, checked against a model of what the store acknowledged.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use std::io::Read;

use common::{blob, put, scratch, tmp_leftovers};
use proptest::prelude::*;
use thaw_oci::Digest;
use thaw_store::{BlobStore, Committed, FaultFs, StoreConfig, StoreError};

const OBJECTS: u64 = 6;

#[derive(Debug, Clone)]
enum Op {
    Put(u64),
    PutCorrupt(u64),
    Get(u64),
    Remove(u64),
    /// The process dies within the next `n` file-system steps.
    CrashWithin(u64),
    /// Power cut (losing unsynced writes) and reopen.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..OBJECTS).prop_map(Op::Put),
        1 => (0..OBJECTS).prop_map(Op::PutCorrupt),
        4 => (0..OBJECTS).prop_map(Op::Get),
        2 => (0..OBJECTS).prop_map(Op::Remove),
        1 => (1u64..12).prop_map(Op::CrashWithin),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Known {
    Present,
    Absent,
    /// An operation on it was cut by a crash: either is fine until it is observed.
    Unsure,
}

fn content(n: u64) -> Vec<u8> {
    blob(500 + n, 100 + 37 * n as usize)
}

/// The content `get` serves, or an error message.
fn get_bytes(s: &BlobStore, d: &Digest) -> Result<Option<Vec<u8>>, String> {
    let Some(h) = s.get(d).map_err(|e| e.to_string())? else { return Ok(None) };
    let mut v = Vec::new();
    h.try_clone_file().and_then(|mut f| f.read_to_end(&mut v)).map_err(|e| e.to_string())?;
    Ok(Some(v))
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = scratch();
    let fs = Arc::new(FaultFs::new());
    let open = |fs: &Arc<FaultFs>| BlobStore::open_with_fs(dir.path(), StoreConfig::default(), fs.clone()).unwrap();
    let mut store = Some(open(&fs));
    let mut model: HashMap<u64, Known> = (0..OBJECTS).map(|n| (n, Known::Absent)).collect();
    let digest = |n: u64| Digest::sha256_of(&content(n));

    for op in ops {
        let s = store.as_ref().expect("open");
        match *op {
            Op::Put(n) => match put(s, &content(n)) {
                Ok(Committed::Stored) | Ok(Committed::AlreadyPresent) => {
                    model.insert(n, Known::Present);
                }
                Ok(Committed::NotCached) => prop_assert!(false, "an unbounded store refused a blob"),
                Err(e) => {
                    prop_assert!(fs.crashed(), "put failed without a crash: {e}");
                    if model[&n] != Known::Present {
                        model.insert(n, Known::Unsure);
                    }
                }
            },
            Op::PutCorrupt(n) => {
                let mut bad = content(n);
                bad[0] ^= 1;
                let mut w = match s.begin(&digest(n), None) {
                    Ok(w) => w,
                    Err(_) => {
                        prop_assert!(fs.crashed());
                        continue;
                    }
                };
                let r = w.write(&bad).and_then(|_| w.commit());
                match r {
                    Err(StoreError::DigestMismatch { .. }) => {}
                    Err(_) => prop_assert!(fs.crashed()),
                    Ok(c) => prop_assert!(false, "corrupt content committed: {:?}", c),
                }
            }
            Op::Get(n) => match get_bytes(s, &digest(n)) {
                Ok(Some(bytes)) => {
                    prop_assert_eq!(bytes, content(n), "wrong content served");
                    prop_assert!(model[&n] != Known::Absent, "served a blob that is absent");
                    model.insert(n, Known::Present);
                }
                Ok(None) => {
                    prop_assert!(model[&n] != Known::Present || fs.crashed(), "lost an acknowledged blob");
                    if !fs.crashed() {
                        model.insert(n, Known::Absent);
                    }
                }
                Err(e) => prop_assert!(fs.crashed(), "get failed without a crash: {}", e),
            },
            Op::Remove(n) => match s.remove(&digest(n)) {
                Ok(was) => {
                    if !fs.crashed() {
                        match model[&n] {
                            Known::Present => prop_assert!(was),
                            Known::Absent => prop_assert!(!was),
                            Known::Unsure => {}
                        }
                    }
                    // `false` only says the running store does not hold it; after a crash a
                    // commit that was cut short may still leave a verified file that the next
                    // open adopts.
                    if was || model[&n] != Known::Unsure {
                        model.insert(n, Known::Absent);
                    }
                }
                Err(e) => {
                    prop_assert!(fs.crashed(), "remove failed without a crash: {e}");
                    model.insert(n, Known::Unsure);
                }
            },
            Op::CrashWithin(k) => {
                if !fs.crashed() {
                    fs.crash_at(fs.ops() + k);
                }
            }
            Op::Reopen => {
                drop(store.take());
                fs.power_cut().unwrap();
                let s = open(&fs);
                prop_assert!(s.check().unwrap().is_clean());
                prop_assert!(tmp_leftovers(dir.path()).is_empty());
                for n in 0..OBJECTS {
                    let present = s.stat(&digest(n)).unwrap().is_some();
                    match model[&n] {
                        Known::Present => prop_assert!(present, "acknowledged blob {} lost across a restart", n),
                        Known::Absent => prop_assert!(!present, "removed blob {} came back", n),
                        Known::Unsure => {}
                    }
                    model.insert(n, if present { Known::Present } else { Known::Absent });
                }
                store = Some(s);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_match_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let mut ops = ops;
        ops.push(Op::Reopen);
        run(&ops)?;
    }
}
