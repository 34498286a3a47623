#!/bin/sh
# Side-by-side replay throughput, thaw vs libCacheSim, on one oracleGeneral Zipf trace.
#
#   bench/libcachesim/compare.sh [REQUESTS] [CACHE]      (defaults: 20000000 requests, 1GiB)
#
# Needs the venv with libcachesim (python3 -m venv .venv && .venv/bin/pip install libcachesim==0.3.5)
# or THAW_PYTHON. Writes the trace to $TMPDIR (about 24 bytes per request). Both sides replay the
# same file from memory with no per-request output; the figure is requests / wall seconds of the
# replay loop alone.
set -eu
cd "$(dirname "$0")/../.."
REQS=${1:-20000000}
CACHE=${2:-1GiB}
PY=${THAW_PYTHON:-.venv/bin/python}
TRACE=${TMPDIR:-/tmp}/thaw-zipf-$REQS.oracleGeneral
POLICIES=fifo,lru,clock,lfu,slru,s3fifo,sieve

cargo build --release -p thaw-policy --example replay_oracle
BIN=target/release/examples/replay_oracle
[ -f "$TRACE" ] || "$BIN" gen "$TRACE" "$REQS" 1000000 1.0 42
BYTES=$("$PY" -c "
import re,sys
s='$CACHE'; m=re.fullmatch(r'(\d+)\s*(B|KiB|MiB|GiB|TiB)?', s)
if not m: sys.exit('cache size like 1GiB')
print(int(m.group(1)) * {None:1,'B':1,'KiB':1<<10,'MiB':1<<20,'GiB':1<<30,'TiB':1<<40}[m.group(2)])")
echo "# $(date -u +%F) $(nproc) cores, trace $TRACE ($REQS requests), cache $CACHE"
"$BIN" run "$TRACE" "$BYTES" "$POLICIES"
"$PY" bench/libcachesim/throughput.py "$TRACE" "$BYTES" "$POLICIES"
