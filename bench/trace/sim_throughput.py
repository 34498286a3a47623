#!/usr/bin/env python3
"""Simulator throughput: thaw sim vs libCacheSim on the same oracleGeneral trace.

Usage: sim_throughput.py TRACE [--thaw PATH] [--cache-size BYTES] [--policies lru,fifo,...] [--runs N]

For each policy both simulators replay TRACE with the same byte capacity, one policy and one
size per process, single-threaded. Times are the simulators' own replay times (thaw: the
`wall_seconds` of `thaw sim --json`, which covers reading and replaying the trace; libCacheSim:
the wall time of `process_trace`, which also covers reading), the best of --runs runs, so
interpreter start-up and Python imports are not counted against libCacheSim. Miss ratios of
both are printed next to each other as a sanity check.
"""
import argparse
import json
import subprocess
import sys
import time

import libcachesim as lcs

LCS = {
    "lru": lcs.LRU,
    "fifo": lcs.FIFO,
    "clock": lcs.Clock,
    "lfu": lcs.LFU,
    "slru": lcs.SLRU,
    "s3fifo": lcs.S3FIFO,
    "sieve": lcs.Sieve,
}


def run_lcs(trace, policy, size):
    reader = lcs.TraceReader(trace, lcs.TraceType.ORACLE_GENERAL_TRACE)
    cache = LCS[policy](cache_size=size)
    t = time.perf_counter()
    obj_mr, byte_mr = cache.process_trace(reader)
    return time.perf_counter() - t, obj_mr, byte_mr


def run_thaw(thaw, trace, policy, size):
    out = subprocess.run(
        [thaw, "sim", "--trace", trace, "--format", "oracle-general", "--policy", policy,
         "--cache-size", str(size), "--threads", "1", "--no-progress", "--json"],
        check=True, capture_output=True, text=True)
    rep = json.loads(out.stdout)
    r = rep["runs"][0]
    return rep["wall_seconds"], r["miss_ratio"], r["byte_miss_ratio"], rep["accesses"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--thaw", default="target/release/thaw")
    ap.add_argument("--cache-size", type=int, default=1 << 30)
    ap.add_argument("--policies", default="lru,fifo,clock,sieve,s3fifo,slru,lfu")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    print(f"libcachesim {lcs.__version__ if hasattr(lcs, '__version__') else '?'}; trace {a.trace}; cache {a.cache_size} bytes")
    print(f"{'policy':8} {'thaw s':>8} {'thaw Mreq/s':>12} {'lcs s':>8} {'lcs Mreq/s':>11} {'speedup':>8} {'thaw miss':>10} {'lcs miss':>10}")
    for p in a.policies.split(","):
        tt = [run_thaw(a.thaw, a.trace, p, a.cache_size) for _ in range(a.runs)]
        lt = [run_lcs(a.trace, p, a.cache_size) for _ in range(a.runs)]
        t_best = min(x[0] for x in tt)
        l_best = min(x[0] for x in lt)
        n = tt[0][3]
        print(f"{p:8} {t_best:8.2f} {n / t_best / 1e6:12.1f} {l_best:8.2f} {n / l_best / 1e6:11.1f} "
              f"{l_best / t_best:7.2f}x {tt[0][1]:10.4f} {lt[0][1]:10.4f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
