#!/bin/sh
# Unpacking a ~100 MB layer: thaw vs umoci vs GNU tar, side by side in one hyperfine run, on
# tmpfs (/dev/shm) so the disk does not dominate. Needs: hyperfine, umoci, tar, gzip, jq,
# python3; run as root (umoci raw unpack keeps ownership; thaw chowns as root too).
#
#   sh bench/unpack/run.sh [SIZE_MB] [RUNS]
set -eu
SIZE=${1:-100}
RUNS=${2:-20}
cd "$(dirname "$0")/../.."
cargo build --release -q -p thaw-oci --example unpack
THAW=$PWD/target/release/examples/unpack
W=$(mktemp -d /dev/shm/oci-unpack-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT

# An image with one gzip layer, made by umoci from the generated tree.
python3 bench/unpack/gen_tree.py "$W/tree" "$SIZE"
umoci init --layout "$W/img"
umoci new --image "$W/img:bench"
umoci unpack --image "$W/img:bench" "$W/bundle"
cp -a "$W/tree/." "$W/bundle/rootfs/"
umoci repack --image "$W/img:bench" "$W/bundle"
rm -rf "$W/bundle" "$W/tree"
LAYER=$(jq -r '.layers[-1].digest' "$W/img/blobs/sha256/$(jq -r '.manifests[0].digest' "$W/img/index.json" | cut -d: -f2)" | cut -d: -f2)
BLOB="$W/img/blobs/sha256/$LAYER"
gzip -dc "$BLOB" > "$W/layer.tar"
echo "layer: $(du -m "$BLOB" | cut -f1) MB gzip, $(du -m "$W/layer.tar" | cut -f1) MB tar"

hyperfine --warmup 2 --runs "$RUNS" --export-json "$W/result.json" \
  --prepare "rm -rf $W/out" \
  -n "thaw oci (gzip, digests verified)" "$THAW oci:$W/img:bench $W/out" \
  -n "umoci raw unpack (gzip)" "umoci raw unpack --image $W/img:bench $W/out" \
  -n "tar -xzf (gzip)" "mkdir $W/out && tar -xzf $BLOB -C $W/out" \
  -n "thaw (plain tar)" "$THAW $W/layer.tar $W/out" \
  -n "tar -xf (plain tar)" "mkdir $W/out && tar -xf $W/layer.tar -C $W/out"

jq -r '.results | (map({(.command): .median}) | add) as $m
  | "median seconds:", (.[] | "  \(.command): \(.median | . * 1000 | round / 1000)"),
    "ratios (thaw / peer, lower is better):",
    "  thaw vs umoci (gzip): \($m["thaw oci (gzip, digests verified)"] / $m["umoci raw unpack (gzip)"] | . * 100 | round / 100)",
    "  thaw vs tar -xzf:     \($m["thaw oci (gzip, digests verified)"] / $m["tar -xzf (gzip)"] | . * 100 | round / 100)",
    "  thaw vs tar -xf:      \($m["thaw (plain tar)"] / $m["tar -xf (plain tar)"] | . * 100 | round / 100)"' "$W/result.json"
