#!/bin/sh
# Side-by-side: committing a 100 MiB blob into thaw's store (stream, hash, verify, fsync, rename,
# metadata commit; store opened fresh each run) versus a shell baseline doing the minimum a careful
# mirror must do (sha256sum + cp + sync of the copy), on tmpfs and on the ext4 disk (/var/tmp).
# Usage: sh crates/thaw-store/benches/commit_vs_shell.sh   (from the workspace root; needs hyperfine)
set -eu
cargo build --profile bench -p thaw-store --example commit_file
B="$(pwd)/target/release/examples/commit_file"
SRC=/dev/shm/thaw-bench-src
head -c $((100 << 20)) /dev/urandom > "$SRC"
D="sha256:$(sha256sum "$SRC" | cut -d' ' -f1)"
mkdir -p /var/tmp/thaw-bench
trap 'rm -rf "$SRC" /dev/shm/thaw-bench-store /dev/shm/thaw-bench-dst /var/tmp/thaw-bench' EXIT
hyperfine -N --warmup 2 --runs "${RUNS:-20}" --export-json "${OUT:-/tmp/thaw-store-commit.json}" \
  --prepare 'rm -rf /dev/shm/thaw-bench-store /dev/shm/thaw-bench-dst /var/tmp/thaw-bench/store /var/tmp/thaw-bench/dst' \
  -n thaw-tmpfs "$B /dev/shm/thaw-bench-store $SRC $D" \
  -n shell-tmpfs "sh -c 'sha256sum $SRC >/dev/null && cp $SRC /dev/shm/thaw-bench-dst && sync /dev/shm/thaw-bench-dst'" \
  -n thaw-ext4 "$B /var/tmp/thaw-bench/store $SRC $D" \
  -n shell-ext4 "sh -c 'sha256sum $SRC >/dev/null && cp $SRC /var/tmp/thaw-bench/dst && sync /var/tmp/thaw-bench/dst'"
