#!/bin/sh
# Simulator and analysis benchmarks of issue 3. Run from the repository root:
#   sh bench/trace/run.sh
# Needs: a release build of thaw, the venv at .venv with libcachesim (pip install libcachesim),
# /usr/bin/time, about 12 GB of free disk. Traces go to BENCH_DIR (default target/bench-trace, on
# disk: the 24 M-request registry trace alone is about 10 GB, too much for a shared tmpfs) and are
# removed at the end. REGISTRY_REQUESTS shrinks parts 2 and 3 for a quick run (e.g. 3000000).
set -eu
DIR=${BENCH_DIR:-target/bench-trace}
N=${REGISTRY_REQUESTS:-24000000}
mkdir -p "$DIR"
cargo build --release -p thaw
THAW=target/release/thaw
PY=${PYTHON:-.venv/bin/python}

# 1. simulator throughput: 20 M requests, Zipf(1.0) over 1 M objects, 1 GiB cache
$THAW trace gen --shape zipf --format oracle-general --requests 20000000 --objects 1000000 \
  --alpha 1.0 --object-size 4KiB --seed 7 -o "$DIR/zipf20m.oracleGeneral"
$PY bench/trace/sim_throughput.py "$DIR/zipf20m.oracleGeneral" --thaw $THAW --cache-size 1073741824

# 2. analysis of a 24 M-request synthetic registry trace (the size of the published IBM trace)
$THAW trace gen --requests "$N" --days 7 --seed 7 -o "$DIR/reg24m.jsonl"
/usr/bin/time -v $THAW trace analyze --no-progress -t "$DIR/reg24m.jsonl" > "$DIR/analyze.txt" 2> "$DIR/analyze.time"
grep -E "Elapsed|Maximum resident" "$DIR/analyze.time"
head -8 "$DIR/analyze.txt"

# 3. LACache (with its 16 MiB fast-tier size gate, and without it: lacache:any) vs the two-tier
#    size-threshold LRU baseline on the same 7-day web/ML/IoT trace; LACache gets the associations
#    mined from the trace (all pairs, not only the top 100). Hit ratios, not timings: run niced.
nice -n 10 $THAW trace analyze --no-progress -t "$DIR/reg24m.jsonl" --json --top 1000000 > "$DIR/assoc.json"
nice -n 10 $THAW sim --no-progress -t "$DIR/reg24m.jsonl" --policy size-tiered-lru,lacache,lacache:any \
  --cache-size 8GiB+64GiB,32GiB+256GiB --latency --associations "$DIR/assoc.json"

rm -rf "$DIR"
