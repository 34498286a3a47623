#!/bin/sh
# Recording overhead of `thaw trace files` (issue 3, item 3): the same command on the same busybox
# root, side by side in one hyperfine run:
#   runc run              — the plain runtime, a bundle on the root directory;
#   thaw trace files DIR  — overlay on the directory, inventory, runc create, fanotify mark,
#                           runc start, events until exit, runc delete, unmount;
#   thaw trace files oci: — the same over a two-layer OCI image from the layer store.
# Run as root from the repository root:  sh bench/trace/files.sh
# Needs: runc, hyperfine, busybox-static, jq, a release build of thaw. Everything lives on tmpfs
# (/dev/shm) and is removed at the end.
set -eu
DIR=${BENCH_DIR:-/dev/shm/thaw-bench-files}
RUNS=${RUNS:-50}
rm -rf "$DIR"
mkdir -p "$DIR/bundle/rootfs" "$DIR/runc" "$DIR/crun" "$DIR/scratch" "$DIR/top/data"
cargo build --release -p thaw
THAW=$PWD/target/release/thaw

# The busybox root: a static busybox, its applets as symlinks, /etc basics.
R="$DIR/bundle/rootfs"
mkdir -p "$R/bin" "$R/etc" "$R/proc" "$R/sys" "$R/dev" "$R/tmp" "$R/data"
cp /bin/busybox "$R/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$R/etc/passwd"
head -c 300 /dev/zero | tr '\0' a > "$DIR/top/data/a.txt"
head -c 5000 /dev/zero | tr '\0' b > "$DIR/top/data/b.txt"
CMD='cat /data/a.txt /etc/passwd >/dev/null; /bin/busybox true'

# runc's own bundle: `runc spec` defaults, no terminal, our command.
( cd "$DIR/bundle" && runc spec )
jq --arg cmd "$CMD" '.process.terminal=false | .process.args=["sh","-c",$cmd] | .root.readonly=false' \
  "$DIR/bundle/config.json" > "$DIR/bundle/c.json" && mv "$DIR/bundle/c.json" "$DIR/bundle/config.json"
cp "$DIR/top/data/a.txt" "$R/data/a.txt"

# A two-layer OCI layout: base = the root, top = /data (umoci-free: tar + sha256 by hand).
L="$DIR/layout"; mkdir -p "$L/blobs/sha256"
blob() { d=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$L/blobs/sha256/$d"; echo "$d"; }
tar -C "$R" -cf "$DIR/base.tar" .
tar -C "$DIR/top" -cf "$DIR/top.tar" .
BASE=$(blob "$DIR/base.tar"); TOP=$(blob "$DIR/top.tar")
BS=$(stat -c %s "$DIR/base.tar"); TS=$(stat -c %s "$DIR/top.tar")
jq -n --arg b "sha256:$BASE" --arg t "sha256:$TOP" \
  '{architecture:"amd64",os:"linux",config:{Env:["PATH=/bin"]},rootfs:{type:"layers",diff_ids:[$b,$t]}}' > "$DIR/config.json"
CFG=$(blob "$DIR/config.json"); CS=$(stat -c %s "$DIR/config.json")
M=application/vnd.oci.image.layer.v1.tar
jq -n --arg c "sha256:$CFG" --argjson cs "$CS" --arg b "sha256:$BASE" --argjson bs "$BS" --arg t "sha256:$TOP" --argjson ts "$TS" --arg m "$M" \
  '{schemaVersion:2,mediaType:"application/vnd.oci.image.manifest.v1+json",
    config:{mediaType:"application/vnd.oci.image.config.v1+json",digest:$c,size:$cs},
    layers:[{mediaType:$m,digest:$b,size:$bs},{mediaType:$m,digest:$t,size:$ts}]}' > "$DIR/manifest.json"
MD=$(blob "$DIR/manifest.json"); MS=$(stat -c %s "$DIR/manifest.json")
jq -n --arg d "sha256:$MD" --argjson s "$MS" \
  '{schemaVersion:2,manifests:[{mediaType:"application/vnd.oci.image.manifest.v1+json",digest:$d,size:$s,annotations:{"org.opencontainers.image.ref.name":"v1"}}]}' > "$L/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$L/oci-layout"
# Unpack once into the layer store, and show what one recording sees.
"$THAW" trace files --data "$DIR/data" --scratch "$DIR/scratch" "oci:$L:v1" -- sh -c "$CMD"

hyperfine --warmup 3 --runs "$RUNS" -N --export-markdown "$DIR/files.md" --export-json "$DIR/files.json" \
  -n "runc run" "runc --root $DIR/runc run --bundle $DIR/bundle bench-files" \
  -n "thaw trace files (root dir)" "$THAW trace files --scratch $DIR/scratch $R -- sh -c '$CMD'" \
  -n "thaw trace files (2-layer oci)" "$THAW trace files --data $DIR/data --scratch $DIR/scratch oci:$L:v1 -- sh -c '$CMD'"
# crun refuses hybrid cgroups while /sys/fs/cgroup/unified lists controllers: the whole crun
# run happens in one private mount namespace without it (thaw --runtime crun does the same
# inside itself, per run, and that is counted).
unshare -m --propagation private sh -c "umount -l /sys/fs/cgroup/unified 2>/dev/null || true
  hyperfine --warmup 3 --runs $RUNS -N --export-markdown $DIR/files-crun.md \
    --export-json $DIR/files-crun.json -n 'crun run' 'crun --root $DIR/crun run --bundle $DIR/bundle bench-files' \
    -n 'thaw trace files --runtime crun (2-layer oci)' \
       \"$THAW trace files --runtime crun --data $DIR/data --scratch $DIR/scratch oci:$L:v1 -- sh -c '$CMD'\""
cat "$DIR/files.md" "$DIR/files-crun.md"
# Medians resist the noise of a shared 2-core machine better than means.
jq -r '.results[] | "median \(.median*1000 | floor) ms  \(.command)"' "$DIR/files.json" "$DIR/files-crun.json"
"$THAW" trace files --timings --data "$DIR/data" --scratch "$DIR/scratch" "oci:$L:v1" -- sh -c "$CMD" 2>&1 >/dev/null | grep -A9 timings
rm -rf "$DIR"
