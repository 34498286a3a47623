//! End to end: `thaw trace gen` → `thaw trace analyze` → `thaw sim` → `thaw trace report`, through
//! the built binary, with the JSON outputs checked.

use std::path::Path;
use std::process::{Command, Output};

fn thaw(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_thaw")).args(args).output().expect("run thaw");
    assert!(
        out.status.success(),
        "thaw {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not json ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn gen_analyze_sim_report() {
    let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
    let trace = dir.path().join("g.jsonl");
    thaw(&["trace", "gen", "--requests", "30000", "--days", "1", "--seed", "4", "-o", s(&trace)]);
    // reproducible
    let again = dir.path().join("g2.jsonl");
    thaw(&["trace", "gen", "--requests", "30000", "--days", "1", "--seed", "4", "-o", s(&again)]);
    assert_eq!(std::fs::read(&trace).unwrap(), std::fs::read(&again).unwrap());
    // a malformed line is counted, not fatal
    let mut text = std::fs::read_to_string(&trace).unwrap();
    text.push_str("{not a record\n");
    std::fs::write(&trace, text).unwrap();

    let analyzed = thaw(&["trace", "analyze", "-t", s(&trace), "--no-progress", "--json", "--assoc-min-pulls", "20", "--top", "10000"]);
    let assoc = dir.path().join("analysis.json");
    std::fs::write(&assoc, &analyzed.stdout).unwrap();
    let a = json(&analyzed);
    assert_eq!(a["requests"].as_u64(), Some(30_000));
    assert_eq!(a["read"]["malformed"].as_u64(), Some(1));
    let cats: Vec<&str> = a["categories"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for c in ["web", "ml", "iot"] {
        assert!(cats.contains(&c), "{cats:?}");
    }
    assert!(a["associations_found"].as_u64().unwrap() > 0);

    // --strict turns the malformed line into an error naming its position
    let out = Command::new(env!("CARGO_BIN_EXE_thaw")).args(["trace", "analyze", "-t", s(&trace), "--strict", "--no-progress"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 30001"), "{err}");

    let mrc = dir.path().join("mrc.svg");
    let simj = dir.path().join("sim.json");
    let out = thaw(&[
        "sim", "-t", s(&trace), "--policy", "lru,sieve", "--cache-size", "512MiB,2GiB,8GiB", "--latency", "--json", "--no-progress",
        "--mrc-plot", s(&mrc),
    ]);
    std::fs::write(&simj, &out.stdout).unwrap();
    let r = json(&out);
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6);
    let accesses = r["accesses"].as_u64().unwrap();
    assert!(accesses > 20_000 && accesses < 30_000, "{accesses}");
    for run in runs {
        let st = &run["stats"];
        assert_eq!(st["requests"].as_u64(), Some(accesses));
        assert_eq!(st["hits"].as_u64().unwrap() + st["misses"].as_u64().unwrap(), accesses);
        assert!(run["latency"]["avg_pull_us"].as_f64().unwrap() > 0.0);
    }
    // LRU: a bigger cache never misses more
    let lru: Vec<u64> = runs.iter().filter(|r| r["policy"] == "lru").map(|r| r["stats"]["misses"].as_u64().unwrap()).collect();
    assert!(lru.windows(2).all(|w| w[0] >= w[1]), "{lru:?}");
    let svg = std::fs::read_to_string(&mrc).unwrap();
    assert!(svg.contains("<svg") && svg.contains("lru") && svg.contains("sieve"));

    // LACache with the mined associations prefetches, and its slow tier serves hits
    let r = json(&thaw(&[
        "sim", "-t", s(&trace), "--policy", "lacache", "--tiers", "1GiB,8GiB", "--associations", s(&assoc), "--json", "--no-progress",
    ]));
    let st = &r["runs"][0]["stats"];
    assert!(st["prefetches"].as_u64().unwrap() > 0, "{st}");
    assert!(st["tier_hits"][1].as_u64().unwrap() > 0, "{st}");

    let html = dir.path().join("r.html");
    let summary = dir.path().join("r.json");
    let out = thaw(&[
        "trace", "report", "-t", s(&trace), "--no-progress", "--html", s(&html), "--json", s(&summary), "--sim", s(&simj),
        "--assoc-min-pulls", "20",
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("category") && table.contains("web"), "{table}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.matches("<svg").count() >= 10, "8 distributions and 2 miss-ratio curves");
    let sum: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(sum["analysis"]["requests"].as_u64(), Some(30_000));
    assert_eq!(sum["simulation"]["runs"].as_array().unwrap().len(), 6);
}

#[test]
fn oracle_general_round_trip_and_clear_errors() {
    let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
    let trace = dir.path().join("z.oracleGeneral");
    thaw(&[
        "trace", "gen", "--shape", "zipf", "--format", "oracle-general", "--requests", "50000", "--objects", "5000", "-o", s(&trace),
    ]);
    assert_eq!(std::fs::metadata(&trace).unwrap().len(), 50_000 * 24);
    let r = json(&thaw(&["sim", "-t", s(&trace), "--format", "oracle-general", "--policy", "lru,fifo", "--cache-size", "16MiB", "--json", "--no-progress"]));
    assert_eq!(r["accesses"].as_u64(), Some(50_000));
    assert_eq!(r["runs"].as_array().unwrap().len(), 2);

    // LACache needs categories and images: refused on oracleGeneral with a message naming both
    let out = Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(["sim", "-t", s(&trace), "--format", "oracle-general", "--policy", "lacache", "--tiers", "1GiB,4GiB", "--no-progress"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lacache") && err.contains("oracle-general"), "{err}");

    // unknown policy: the message lists the known ones
    let out = Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(["sim", "-t", s(&trace), "--format", "oracle-general", "--policy", "nope", "--cache-size", "1GiB"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lru"));
}
