#!/usr/bin/env python3
"""Times libCacheSim's own C replay loop (`c_process_trace`) on an oracleGeneral trace, one line per
policy, in the same format as thaw's `replay_oracle run`. Part of bench/libcachesim/compare.sh.

usage: throughput.py TRACE CACHE_BYTES POLICY[,POLICY...]   (policies: lru, fifo, clock, lfu, slru,
s3fifo, sieve)
"""

import sys
import time

import libcachesim as lcs
from libcachesim import libcachesim_python as core

INIT = {
    "fifo": lambda p: core.FIFO_init(p),
    "lru": lambda p: core.LRU_init(p),
    "lfu": lambda p: core.LFU_init(p),
    "clock": lambda p: core.Clock_init(p),
    "slru": lambda p: core.SLRU_init(p),
    "s3fifo": lambda p: core.S3FIFO_init(p),
    "sieve": lambda p: core.Sieve_init(p),
}


def main() -> None:
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    trace, size, policies = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
    reader = lcs.TraceReader(trace, lcs.TraceType.ORACLE_GENERAL_TRACE)
    n_req = reader.get_num_of_req()
    for name in policies:
        if name not in INIT:
            raise SystemExit(f"throughput.py: unknown policy {name!r}")
        params = core.CommonCacheParams(cache_size=size, default_ttl=86400 * 300, hashpower=24,
                                        consider_obj_metadata=False)
        cache = INIT[name](params)
        start = time.perf_counter()
        omr, _ = core.c_process_trace(cache, reader._reader, 0, -1)
        secs = time.perf_counter() - start
        print(f"libcachesim {name} requests={n_req} misses={round(omr * n_req)} miss_ratio={omr:.4f} "
              f"seconds={secs:.3f} mreq_per_s={n_req / secs / 1e6:.2f}", flush=True)


if __name__ == "__main__":
    main()
