//! Commits one file into a blob store, as a miss would (stream in, hash, verify, fsync, rename,
//! record): `commit_file STORE_DIR FILE DIGEST`.
//!
//! Exists so the commit path can be timed side by side with a shell baseline (hash, copy, fsync)
//! under `hyperfine`; the digest is given, as a registry knows it from the request.

use std::io::Read;
use std::path::Path;

use thaw_oci::Digest;
use thaw_store::{BlobStore, StoreConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        return Err("usage: commit_file STORE_DIR FILE DIGEST".into());
    }
    let d: Digest = args[3].parse()?;
    let mut src = std::fs::File::open(&args[2])?;
    let size = src.metadata()?.len();
    let store = BlobStore::open(Path::new(&args[1]), StoreConfig::default())?;
    let mut w = store.begin(&d, Some(size))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        w.write(&buf[..n])?;
    }
    println!("{d} {:?}", w.commit()?);
    Ok(())
}
