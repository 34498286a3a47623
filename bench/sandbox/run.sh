#!/usr/bin/env bash
# Start-to-exit of `echo hi` on one busybox root filesystem (on tmpfs), side by side in one run:
#   chroot floor | thaw run with a daemon (CLI, pooled) | thaw run --cold (CLI) | runc run
#   | crun run | podman run --network none   (hyperfine, -N, >= 50 runs)
# then through the daemon's sandbox socket (crates/thaw/benches/daemon.rs: pooled, on demand,
# sustained 1 and 8 at a time, CPU per sandbox) and through the library API
# (crates/thaw-sandbox/benches/startup.rs).
#
# Every command is paced alike (hyperfine --prepare 'sleep 0.03', not timed): `thaw run` with a
# daemon needs the pause so the pool's background refill keeps up and each start measures the
# pooled path, and the peers get the same pause so no one is measured on warmer caches. The
# unpaced, sustained rate is in the daemon bench.
#
# crun (and podman, which runs crun) refuse this machine's hybrid cgroup layout while
# /sys/fs/cgroup/unified lists a controller, so their runs (and a second floor measurement)
# happen inside one private mount namespace with that mount removed; its setup is not counted
# per run. podman runs with a containers.conf this machine needs (no CAP_SYS_RESOURCE) and vfs
# storage under the scratch directory.
#
# Usage: bench/sandbox/run.sh [RUNS]
#   (root; needs hyperfine, runc, crun, podman, jq, busybox-static)
set -euo pipefail
RUNS=${1:-100}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=$(mktemp -d /dev/shm/thaw-sandbox-bench.XXXXXX)
DAEMON=
cleanup() {
  [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
  # podman may leave mounts under its storage.
  grep " $W" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

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

# A daemon with sandboxes on its own data directory (on tmpfs), pools of depth 8.
printf '[sandbox]\ndepth = 8\n' > "$W/thaw.toml"
"$THAW" serve --standalone --listen 127.0.0.1:0 --print-address --log warn \
  --config "$W/thaw.toml" --data "$W/ddata" > "$W/daemon.out" &
DAEMON=$!
for _ in $(seq 100); do grep -q listening "$W/daemon.out" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$W/daemon.out" || { echo "thaw serve did not start" >&2; exit 1; }

PACE="sleep 0.03"
hyperfine -N --warmup 5 --runs "$RUNS" --style basic --export-json "$W/main.json" --prepare "$PACE" \
  -n floor-chroot "chroot $R /bin/echo hi" \
  -n thaw-cold-cli "$THAW run --cold --data $W/data $R -- echo hi" \
  -n runc "runc --root $W/runc run -b $W/bundle thaw-bench-runc" >/dev/null

hyperfine -N --warmup 5 --runs "$RUNS" --style basic --export-json "$W/daemon.json" --prepare "$PACE" \
  -n thaw-daemon-cli "$THAW run --data $W/ddata $R -- echo hi" >/dev/null

printf '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n' > "$W/containers.conf"
PODMAN="podman --storage-driver vfs --root $W/proot --runroot $W/prun"
unshare -m --propagation private bash -c "
  umount /sys/fs/cgroup/unified
  export CONTAINERS_CONF=$W/containers.conf
  hyperfine -N --warmup 5 --runs $RUNS --style basic --export-json $W/crun.json --prepare '$PACE' \
    -n floor-chroot-crun-ns 'chroot $R /bin/echo hi' \
    -n crun 'crun --root $W/crun run -b $W/bundle thaw-bench-crun' \
    -n podman '$PODMAN run --rm --network none --rootfs $R /bin/echo hi' >/dev/null
"

median() { jq -r --arg n "$2" '.results[] | select(.command==$n) | .median*1000' "$1"; }
F=$(median "$W/main.json" floor-chroot)
T=$(median "$W/main.json" thaw-cold-cli)
RC=$(median "$W/main.json" runc)
D=$(median "$W/daemon.json" thaw-daemon-cli)
F2=$(median "$W/crun.json" floor-chroot-crun-ns)
C=$(median "$W/crun.json" crun)
P=$(median "$W/crun.json" podman)
printf '%-26s %10s\n' command "median ms"
printf '%-26s %10.3f\n' floor-chroot "$F" thaw-daemon-cli "$D" thaw-cold-cli "$T" runc "$RC" \
  floor-chroot-crun-ns "$F2" crun "$C" podman "$P"
awk -v d="$D" -v t="$T" -v r="$RC" -v c="$C" -v p="$P" 'BEGIN {
  printf "ratios (CLI, thaw run with a daemon): crun/thaw = %.2fx (goal >= 5), runc/thaw = %.2fx, podman/thaw = %.2fx (goal >= 50)\n", c/d, r/d, p/d
  printf "ratios (CLI, cold path): crun/thaw-cold = %.2fx, runc/thaw-cold = %.2fx; thaw cold/pooled = %.2fx\n", c/t, r/t, t/d }'

echo "# through the daemon's sandbox socket (API), same machine, same rootfs recipe:"
cargo bench -q -p thaw --bench daemon --manifest-path "$ROOT/Cargo.toml" -- "$RUNS" 2>/dev/null | grep -v '^$'

echo "# library API (pooled parts, as a daemon serves them), same machine, same rootfs recipe:"
cargo bench -q -p thaw-sandbox --bench startup --manifest-path "$ROOT/Cargo.toml" -- "$RUNS" 2>/dev/null | grep -v '^$'
