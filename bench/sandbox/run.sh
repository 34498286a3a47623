#!/usr/bin/env bash
# Start-to-exit of `echo hi` on one busybox root filesystem (on tmpfs), side by side in one run:
#   chroot floor | thaw run --cold (CLI) | runc run | crun run  (hyperfine, -N, >= 50 runs)
# then thaw pooled / cold / floor through the library API (crates/thaw-sandbox/benches/startup.rs),
# which is what a daemon serving requests from its pools does.
#
# crun refuses this machine's hybrid cgroup layout while /sys/fs/cgroup/unified lists a controller,
# so its runs (and a second floor measurement) happen inside one private mount namespace with that
# mount removed; its setup is not counted per run.
#
# Usage: bench/sandbox/run.sh [RUNS]   (root; needs hyperfine, runc, crun, jq, busybox-static)
set -euo pipefail
RUNS=${1:-100}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=$(mktemp -d /dev/shm/thaw-sandbox-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT

cargo build --release -q -p thaw --manifest-path "$ROOT/Cargo.toml"
THAW="$ROOT/target/release/thaw"

R="$W/bundle/rootfs"
mkdir -p "$R"/{bin,proc,sys,dev,tmp,etc}
cp /bin/busybox "$R/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
(cd "$W/bundle" && runc spec)
jq '.process.args=["echo","hi"] | .process.terminal=false' "$W/bundle/config.json" > "$W/c.json"
mv "$W/c.json" "$W/bundle/config.json"

echo "# date: $(date -u +%F\ %T) UTC; machine: $(nproc) cores, $(uname -r); rootfs and upper dirs on tmpfs (/dev/shm)"
echo "# load before start: $(cut -d' ' -f1-3 /proc/loadavg)"

hyperfine -N --warmup 5 --runs "$RUNS" --style basic --export-json "$W/main.json" \
  -n floor-chroot "chroot $R /bin/echo hi" \
  -n thaw-cold-cli "$THAW run --cold --data $W/data $R -- echo hi" \
  -n runc "runc --root $W/runc run -b $W/bundle thaw-bench-runc" >/dev/null

unshare -m --propagation private bash -c "
  umount /sys/fs/cgroup/unified
  hyperfine -N --warmup 5 --runs $RUNS --style basic --export-json $W/crun.json \
    -n floor-chroot-crun-ns 'chroot $R /bin/echo hi' \
    -n crun 'crun --root $W/crun run -b $W/bundle thaw-bench-crun' >/dev/null
"

median() { jq -r --arg n "$2" '.results[] | select(.command==$n) | .median*1000' "$1"; }
F=$(median "$W/main.json" floor-chroot)
T=$(median "$W/main.json" thaw-cold-cli)
RC=$(median "$W/main.json" runc)
F2=$(median "$W/crun.json" floor-chroot-crun-ns)
C=$(median "$W/crun.json" crun)
printf '%-26s %10s\n' command "median ms"
printf '%-26s %10.3f\n' floor-chroot "$F" thaw-cold-cli "$T" runc "$RC" floor-chroot-crun-ns "$F2" crun "$C"
awk -v t="$T" -v r="$RC" -v c="$C" 'BEGIN {
  printf "ratios (CLI, cold path): crun/thaw-cold = %.2fx, runc/thaw-cold = %.2fx\n", c/t, r/t }'

echo "# library API (pooled parts, as a daemon serves them), same machine, same rootfs recipe:"
cargo bench -q -p thaw-sandbox --bench startup --manifest-path "$ROOT/Cargo.toml" -- "$RUNS" 2>/dev/null | grep -v '^$'
