#!/usr/bin/env python3
"""Runs libCacheSim (PyPI package `libcachesim`, pinned by the caller) on an oracleGeneral trace and
prints one JSON object per (policy, cache size) with exact request, miss and miss-byte counts.

Used by crates/thaw-policy/tests/libcachesim.rs, which runs thaw's policies on the same file and
compares. Policy names are thaw's: fifo, lru, lfu, clock, clock:BITS, slru, slru:SEGMENTS, s3fifo,
sieve.

libCacheSim's C loop (`c_process_trace`) reports miss *ratios* as doubles; the counts are recovered
by multiplying by the totals (counted here in a pass over the same reader) and rounding, and the
script refuses to answer when the product is not within 0.01 of an integer, so a count is never
guessed.
"""

import argparse
import json
import sys

import libcachesim as lcs
from libcachesim import libcachesim_python as core


def make_cache(name: str, size: int):
    params = core.CommonCacheParams(cache_size=size, default_ttl=86400 * 300, hashpower=18,
                                    consider_obj_metadata=False)
    base, _, arg = name.partition(":")
    if base == "fifo":
        return core.FIFO_init(params)
    if base == "lru":
        return core.LRU_init(params)
    if base == "lfu":
        return core.LFU_init(params)
    if base == "clock":
        bits = int(arg) if arg else 1
        return core.Clock_init(params, f"init-freq=0, n-bit-counter={bits}")
    if base == "slru":
        # no parameter: libCacheSim's own default (4 segments), exactly as its `SLRU` class builds it
        return core.SLRU_init(params, f"n-seg={int(arg)}") if arg else core.SLRU_init(params)
    if base == "s3fifo":
        return core.S3FIFO_init(params, "small-size-ratio=0.1, ghost-size-ratio=0.9, move-to-main-threshold=2")
    if base == "sieve":
        return core.Sieve_init(params)
    raise SystemExit(f"libcachesim_run.py: unknown policy {name!r}")


def exact(value: float, what: str) -> int:
    n = round(value)
    if abs(value - n) > 0.01:
        raise SystemExit(f"libcachesim_run.py: {what} {value!r} is not an integer; cannot recover an exact count")
    return int(n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--sizes", required=True, help="comma-separated cache sizes in bytes")
    ap.add_argument("--policies", required=True, help="comma-separated thaw policy names")
    ap.add_argument("--keep-zero-size", action="store_true",
                    help="feed zero-size requests to the cache (libCacheSim's readers drop them by default)")
    args = ap.parse_args()

    init = core.ReaderInitParam(ignore_size_zero_req=not args.keep_zero_size)
    reader = lcs.TraceReader(args.trace, lcs.TraceType.ORACLE_GENERAL_TRACE, init)
    n_req = 0
    bytes_req = 0
    for req in reader:
        n_req += 1
        bytes_req += req.obj_size
    for policy in args.policies.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            cache = make_cache(policy, size)
            omr, bmr = core.c_process_trace(cache, reader._reader, 0, -1)
            hits = exact((1.0 - omr) * n_req, "hit count")
            hit_bytes = exact((1.0 - bmr) * bytes_req, "hit bytes") if bytes_req else 0
            print(json.dumps({
                "policy": policy,
                "cache_size": size,
                "cache_name": cache.cache_name,
                "requests": n_req,
                "misses": n_req - hits,
                "miss_bytes": bytes_req - hit_bytes,
            }))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
