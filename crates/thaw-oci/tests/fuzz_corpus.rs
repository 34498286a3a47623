//! Replays every file of every fuzz corpus (`fuzz/corpus/<target>/`: the seeds, plus any crash
//! or interesting input a fuzzing run found and someone checked in) through the same
//! `thaw_oci::fuzzing` function the fuzz target calls, on stable Rust, in the normal test run.

use std::path::PathBuf;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("digest", thaw_oci::fuzzing::digest),
    ("reference", thaw_oci::fuzzing::reference),
    ("range", thaw_oci::fuzzing::range),
    ("manifest", thaw_oci::fuzzing::manifest),
    ("pax", thaw_oci::fuzzing::pax),
    ("unpack", thaw_oci::fuzzing::unpack),
];

fn corpus_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

#[test]
fn every_fuzz_target_has_a_replayed_corpus() {
    let root = corpus_root();
    for (name, f) in TARGETS {
        let dir = root.join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {} is missing ({e}); regenerate with fuzz/make_corpus.py", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(files.len() >= 8, "corpus {name} has only {} files", files.len());
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| f(&data));
            assert!(outcome.is_ok(), "fuzz target {name} panicked on {}", file.display());
        }
    }
}

#[test]
fn every_fuzz_target_is_listed() {
    // A target added to fuzz/Cargo.toml without a corpus here would never be replayed.
    let manifest = std::fs::read_to_string(corpus_root().join("../Cargo.toml")).unwrap();
    let bins: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .map(|l| l.trim_end_matches('"'))
        .filter(|n| *n != "thaw-fuzz")
        .collect();
    let listed: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(bins, listed);
}
