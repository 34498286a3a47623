#!/usr/bin/env bash
# Registry mirror benchmarks: thaw serve against real peers, side by side in one run.
#
#   sudo bench/registry/run.sh                # all four cases, ~10-15 minutes on 2 cores
#   CASES="1 3" RUNS=30 bench/registry/run.sh # a subset, more runs
#
# Cases (issue 2, "Benchmarks"):
#   1. warm pull of a 5-layer ~50 MB image: thaw vs docker-registry directly vs a warm
#      docker-registry proxy (loopback, hyperfine medians), plus upstream requests during warm pulls;
#   2. cold and warm pull through thaw vs direct, upstream behind a 100 Mbit/s tc-tbf veth link;
#   3. one cached blob: thaw vs nginx (sendfile) per-stream throughput; thaw's peak RSS for 10, 100
#      and 500 MB blobs;
#   4. 16 clients, each in its own network namespace on a bridge, pulling one uncached ~70 MB
#      image at once through thaw (and through the docker-registry proxy), upstream behind the
#      100 Mbit/s link: upstream bytes, wall time vs one client, peak RSS.
#
# The client for every pull is `skopeo copy docker://... dir:<tmpfs>` (it verifies every digest).
# Everything lives under $WORK (tmpfs, /dev/shm) and in network namespaces and links named after
# this script's PID; the EXIT trap stops every process started here (by PID) and deletes them.
# Needs root (network namespaces, tc), and: docker-registry, skopeo, hyperfine, nginx, curl, jq,
# python3, iproute2; thaw built with `cargo build --release -p thaw`.
#
# Environment knobs: THAW (binary), RUNS (hyperfine runs, default 20), ROUNDS1 (case 1 splits its
# runs into this many hyperfine rounds with rotated order, default 4), CASES, CLIENTS (16),
# RATE (tbf rate, 100mbit), DELAY_MS (one-way delay added to the link by delay_relay.py; 0 = none),
# REPS4 (thaw rounds of case 4, default 3), PROXY_REPS4 (1), WORK (work dir, default
# /dev/shm/thaw-rbench.PID), KEEP=1 keeps WORK, RESULTS (file that also receives the results table).

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"

# ------------------------------------------------------------------ helpers (also used by the
# internal `__reset-thaw` subcommand that hyperfine's --prepare runs)

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Appends a PID to the registry of processes the EXIT trap stops.
track() { echo "$1" >>"$WORK/pids"; }

# Stops one process started by this script (TERM, then KILL after 5 s) and forgets its PID, so
# the EXIT trap never signals a PID the kernel may have reused since.
stop_pid() {
    local pid=$1 i
    if kill -TERM "$pid" 2>/dev/null; then
        for i in $(seq 50); do
            # Gone, or a zombie waiting for its parent (kill -0 still succeeds on those).
            [[ $(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) =~ ^(Z|X|)$ ]] && break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    sed -i "/^$pid\$/d" "$WORK/pids"
}

# A TCP port the kernel considers free right now (used where a restart must keep its port).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits until URL answers (any HTTP status), up to 30 s; NETNS optional.
wait_http() {
    local url=$1 ns=${2:-} i
    for i in $(seq 300); do
        if [[ -n $ns ]]; then
            ip netns exec "$ns" curl -s -o /dev/null --max-time 1 "$url" && return 0
        else
            curl -s -o /dev/null --max-time 1 "$url" && return 0
        fi
        sleep 0.1
    done
    log "$url did not answer within 30 s"
    return 1
}

# start_thaw NAME LISTEN DATA [thaw serve args...]: starts `thaw serve` in the background, waits
# until it serves, and writes its PID to $WORK/NAME.pid and its address to $WORK/NAME.addr.
start_thaw() {
    local name=$1 listen=$2 data=$3 i addr=""
    shift 3
    mkdir -p "$data"
    : >"$WORK/logs/$name.out"
    THAW_LOG=${THAW_LOG:-warn} "$THAW" serve --listen "$listen" --data "$data" \
        --socket "$WORK/$name.sock" --print-address "$@" >"$WORK/logs/$name.out" 2>>"$WORK/logs/$name.err" &
    local pid=$!
    track "$pid"
    echo "$pid" >"$WORK/$name.pid"
    for i in $(seq 150); do
        addr=$(sed -n 's/^listening //p' "$WORK/logs/$name.out" | head -1)
        [[ -n $addr ]] && break
        kill -0 "$pid" 2>/dev/null || { cat "$WORK/logs/$name.err" >&2; die "thaw ($name) exited at start"; }
        sleep 0.1
    done
    [[ -n $addr ]] || die "thaw ($name) did not print its address"
    echo "$addr" >"$WORK/$name.addr"
    wait_http "http://$addr/v2/" || { tail -20 "$WORK/logs/$name.err" >&2; die "thaw ($name) does not answer on $addr"; }
}

stop_thaw() {
    local name=$1
    [[ -f $WORK/$name.pid ]] || return 0
    stop_pid "$(cat "$WORK/$name.pid")"
    rm -f "$WORK/$name.pid"
}

# Internal: what hyperfine's --prepare runs for a cold pull: a fresh thaw with an empty store on
# the same address (the variables come from the parent through the environment).
if [[ ${1:-} == __reset-thaw ]]; then
    name=$2 listen=$3 data=$4
    shift 4
    stop_thaw "$name"
    rm -rf "$data" "$WORK/out"
    start_thaw "$name" "$listen" "$data" "$@"
    exit 0
fi

# start_registry NAME ADDR ROOTDIR [REMOTEURL] [NETNS]: docker-registry with an access log (one
# line per request, used to count upstream requests), as a pull-through proxy when REMOTEURL is
# given, inside NETNS when given.
start_registry() {
    local name=$1 addr=$2 rootdir=$3 remote=${4:-} ns=${5:-}
    mkdir -p "$rootdir"
    {
        echo "version: 0.1"
        echo "log: {level: warn, accesslog: {disabled: false}}"
        echo "storage: {filesystem: {rootdirectory: $rootdir}, delete: {enabled: true}}"
        echo "http: {addr: \"$addr\", secret: thaw-bench-$name}"
        if [[ -n $remote ]]; then echo "proxy: {remoteurl: \"$remote\"}"; fi
    } >"$WORK/$name.yml"
    if [[ -n $ns ]]; then
        ip netns exec "$ns" docker-registry serve "$WORK/$name.yml" >"$WORK/logs/$name.log" 2>&1 &
    else
        docker-registry serve "$WORK/$name.yml" >"$WORK/logs/$name.log" 2>&1 &
    fi
    local pid=$!
    track "$pid"
    echo "$pid" >"$WORK/$name.pid"
    wait_http "http://$addr/v2/" "$ns" || { tail -20 "$WORK/logs/$name.log" >&2; die "docker-registry ($name) does not answer on $addr"; }
}

# Requests in a registry's access log after line FROM: "total by_digest body_bytes" for /v2/
# requests other than the /v2/ version check.
reg_requests() {
    local logf=$1 from=$2
    tail -n +"$((from + 1))" "$logf" | awk '
        $6 ~ /^"(GET|HEAD)$/ && $7 ~ /^\/v2\/./ {
            n++; if ($7 ~ /\/(blobs|manifests)\/sha256:/) d++; if ($10 ~ /^[0-9]+$/ && $6 == "\"GET") b += $10
        }
        END { printf "%d %d %d\n", n, d, b }'
}
lines() { wc -l <"$1"; }

# Sum of a Prometheus counter (all label sets) from thaw's /metrics.
thaw_metric() {
    curl -s "http://$1/metrics" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%d\n", s }'
}

# Peak and current resident set of a process, in KiB.
vm_hwm() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
vm_rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# User + system CPU time of a process and its reaped children so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$1/stat"; }

# tx bytes of an interface (optionally inside NETNS).
if_bytes() {
    local dev=$1 dir=$2 ns=${3:-}
    if [[ -n $ns ]]; then ip netns exec "$ns" cat "/sys/class/net/$dev/statistics/${dir}_bytes"; else cat "/sys/class/net/$dev/statistics/${dir}_bytes"; fi
}

now() { date +%s.%N; }
fsub() { python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.3f}')" "$1" "$2"; }
ratio() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print(f'{a / b:.2f}x' if b else 'n/a')" "$1" "$2"; }
ratio3() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print(f'{a / b:.3f}x' if b else 'n/a')" "$1" "$2"; }
# CPU milliseconds per operation from a tick count and an operation count.
cpu_ms() { python3 -c "import sys, os; print(f'{int(sys.argv[1]) / os.sysconf(\"SC_CLK_TCK\") / int(sys.argv[2]) * 1000:.1f}')" "$1" "$2"; }
loadavg() { echo "load avg $(cut -d' ' -f1-3 /proc/loadavg)"; }
median() { python3 -c "import sys, statistics; print(f'{statistics.median(float(x) for x in sys.argv[1:]):.3f}')" "$@"; }
mib() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1048576:.1f}')" "$1"; }

# Median and stddev (seconds) of command N (0-based) in a hyperfine JSON export.
hf_median() { printf '%.3f' "$(jq -r ".results[$2].median" "$1")"; }
# Median, standard deviation and count of the run times of the command named NAME, pooled over
# several hyperfine JSON exports.
hf_pool() {
    python3 - "$@" <<'EOF'
import json, statistics, sys
name, times = sys.argv[1], []
for path in sys.argv[2:]:
    with open(path) as f:
        for r in json.load(f)["results"]:
            if r["command"] == name:
                times += r["times"]
print(f"{statistics.median(times):.3f} {statistics.stdev(times):.3f} {len(times)}")
EOF
}
hf_stddev() { printf '%.3f' "$(jq -r ".results[$2].stddev" "$1")"; }

result() { printf '%s\n' "$*" | tee -a "$WORK/results.txt" >&2; }

SKOPEO="skopeo copy -q --src-tls-verify=false"

# ------------------------------------------------------------------ setup

[[ $(id -u) == 0 ]] || die "needs root (network namespaces, tc); run with sudo"
THAW=${THAW:-$ROOT/target/release/thaw}
[[ -x $THAW ]] || die "no thaw binary at $THAW; build it with: cargo build --release -p thaw"
for t in docker-registry skopeo hyperfine nginx curl jq python3 ip tc awk; do
    command -v "$t" >/dev/null || die "$t is not installed (Debian: docker-registry skopeo hyperfine nginx-light curl jq python3 iproute2)"
done
RUNS=${RUNS:-20}
ROUNDS1=${ROUNDS1:-4}
CASES=${CASES:-1 2 3 4}
CLIENTS=${CLIENTS:-16}
RATE=${RATE:-100mbit}
DELAY_MS=${DELAY_MS:-0}
REPS4=${REPS4:-3}
PROXY_REPS4=${PROXY_REPS4:-1}
ID=rb$$
WORK=${WORK:-/dev/shm/thaw-rbench.$$}
export WORK THAW
NS_UP=$ID-up
UP_DEV=${ID}u0          # root-namespace end of the upstream's veth
BR=${ID}br

# The EXIT trap deletes $WORK, so it must be a directory this run creates.
[[ ! -e $WORK ]] || die "$WORK already exists; point WORK at a new path (it is deleted at the end)"
mkdir -p "$WORK/logs"
: >"$WORK/pids"
: >"$WORK/results.txt"

cleanup() {
    local rc=$? pid ns
    set +e
    if [[ -f $WORK/pids ]]; then
        for pid in $(cat "$WORK/pids"); do stop_pid "$pid"; done
    fi
    for ns in $(ip netns list | awk '{print $1}' | grep "^$ID-"); do ip netns del "$ns"; done
    ip link del "$UP_DEV" 2>/dev/null
    ip link del "$BR" 2>/dev/null
    for ns in $(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep "^${ID}c[0-9]*$"); do ip link del "$ns" 2>/dev/null; done
    if [[ ${KEEP:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "work dir $WORK on $(stat -f -c %T "$WORK"); thaw $("$THAW" --version 2>/dev/null || echo "$THAW")"
result "# thaw registry benchmarks, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r)"
result "# data dirs (thaw stores, registry storage, nginx root, client output): $WORK ($(stat -f -c %T "$WORK"))"
result "# client: $SKOPEO docker://HOST/REPO:TAG dir:$WORK/out"

# Images: img50 = 5 x 10 MiB layers (cases 1-2), img70 = 7 x 10 MiB layers (case 4), disjoint.
log "generating images"
read -r IMG50_BYTES _ < <(python3 "$HERE/mkimage.py" "$WORK/oci50" --layers 5 --layer-mib 10 --seed 1)
read -r IMG70_BYTES _ < <(python3 "$HERE/mkimage.py" "$WORK/oci70" --layers 7 --layer-mib 10 --seed 2)

# The upstream's storage, filled once through a loopback docker-registry; every other upstream
# instance (direct baseline, the namespaced WAN upstream) serves the same directory.
P_SEED=$(free_port)
start_registry seed "127.0.0.1:$P_SEED" "$WORK/reg-up"
skopeo copy -q --dest-tls-verify=false "oci:$WORK/oci50:v1" "docker://127.0.0.1:$P_SEED/bench/img50:v1"
skopeo copy -q --dest-tls-verify=false "oci:$WORK/oci70:v1" "docker://127.0.0.1:$P_SEED/bench/img70:v1"
stop_pid "$(cat "$WORK/seed.pid")"
result "# images: img50 $(mib "$IMG50_BYTES") MiB (5 layers), img70 $(mib "$IMG70_BYTES") MiB (7 layers), random gzip layers"

# The WAN: the upstream in its own namespace behind a veth, shaped with tbf in both directions.
setup_wan() {
    ip netns add "$NS_UP"
    ip link add "$UP_DEV" type veth peer name eth0 netns "$NS_UP"
    ip addr add 10.201.0.1/24 dev "$UP_DEV"
    ip link set "$UP_DEV" up
    ip -n "$NS_UP" link set lo up
    ip -n "$NS_UP" addr add 10.201.0.2/24 dev eth0
    ip -n "$NS_UP" link set eth0 up
    # burst above the 64 KiB GSO packets of a veth, so tbf shapes rather than drops them.
    tc qdisc add dev "$UP_DEV" root tbf rate "$RATE" burst 256kb latency 50ms
    ip netns exec "$NS_UP" tc qdisc add dev eth0 root tbf rate "$RATE" burst 256kb latency 50ms
    start_registry wan 10.201.0.2:5000 "$WORK/reg-up" "" "$NS_UP"
    WAN=10.201.0.2:5000
    WAN_DESC="tbf $RATE"
    if [[ $DELAY_MS != 0 ]]; then
        # Latency from a userspace relay in front of the link (no netem in this kernel).
        python3 "$HERE/delay_relay.py" 127.0.0.1:0 "$WAN" --delay-ms "$DELAY_MS" >"$WORK/logs/relay.out" 2>"$WORK/logs/relay.err" &
        local pid=$! i
        track "$pid"
        for i in $(seq 50); do grep -q '^listening ' "$WORK/logs/relay.out" && break; sleep 0.1; done
        WAN=$(sed -n 's/^listening //p' "$WORK/logs/relay.out")
        [[ -n $WAN ]] || die "the delay relay did not start: $(cat "$WORK/logs/relay.err")"
        WAN_DESC="tbf $RATE + ${DELAY_MS} ms each way (relay $WAN)"
    fi
}

# ------------------------------------------------------------------ case 1: warm pull, loopback

case1() {
    log "case 1: warm pull, loopback"
    local pd pu1 pu2 pp out="$WORK/out"
    pd=$(free_port); start_registry direct "127.0.0.1:$pd" "$WORK/reg-up"
    pu1=$(free_port); start_registry up-thaw "127.0.0.1:$pu1" "$WORK/reg-up"
    pu2=$(free_port); start_registry up-proxy "127.0.0.1:$pu2" "$WORK/reg-up"
    pp=$(free_port); start_registry proxy1 "127.0.0.1:$pp" "$WORK/proxy1" "http://127.0.0.1:$pu2"
    start_thaw thaw1 127.0.0.1:0 "$WORK/thaw1" --upstream "http://127.0.0.1:$pu1"
    local ta; ta=$(cat "$WORK/thaw1.addr")
    # Warm both mirrors (the proxy twice: it may still be fetching blobs after the first pull).
    rm -rf "$out"; $SKOPEO "docker://$ta/bench/img50:v1" "dir:$out"
    rm -rf "$out"; $SKOPEO "docker://127.0.0.1:$pp/bench/img50:v1" "dir:$out"
    sleep 1
    rm -rf "$out"; $SKOPEO "docker://127.0.0.1:$pp/bench/img50:v1" "dir:$out"
    local l1 l2 fetched0
    l1=$(lines "$WORK/logs/up-thaw.log"); l2=$(lines "$WORK/logs/up-proxy.log")
    fetched0=$(thaw_metric "$ta" thaw_upstream_bytes_total)
    # Server CPU over the timed pulls: less sensitive than wall time to load from other processes
    # (skopeo's own hashing and writing dominate a warm pull's wall time).
    local ct0 cd0 cp0
    ct0=$(cpu_ticks "$(cat "$WORK/thaw1.pid")"); cd0=$(cpu_ticks "$(cat "$WORK/direct.pid")")
    cp0=$(( $(cpu_ticks "$(cat "$WORK/proxy1.pid")") + $(cpu_ticks "$(cat "$WORK/up-proxy.pid")") ))
    local cmd_t="$SKOPEO docker://$ta/bench/img50:v1 dir:$out"
    local cmd_d="$SKOPEO docker://127.0.0.1:$pd/bench/img50:v1 dir:$out"
    local cmd_p="$SKOPEO docker://127.0.0.1:$pp/bench/img50:v1 dir:$out"
    # hyperfine runs every run of one command before the next, so a change of load from other
    # processes during the run lands on one target only. The runs are therefore split into
    # ROUNDS1 hyperfine invocations with the order of the targets rotated each time, and the
    # medians are taken over the pooled run times of all rounds.
    local names=(thaw docker-registry docker-registry-proxy) cmds=("$cmd_t" "$cmd_d" "$cmd_p")
    local per=$(( (RUNS + ROUNDS1 - 1) / ROUNDS1 )) r i j args jsons=()
    ((per >= 2)) || per=2
    for r in $(seq 0 $((ROUNDS1 - 1))); do
        args=()
        for i in 0 1 2; do j=$(( (i + r) % 3 )); args+=(-n "${names[$j]}" "${cmds[$j]}"); done
        hyperfine -N --style basic --warmup 1 --runs "$per" --prepare "rm -rf $out" --export-json "$WORK/case1-$r.json" "${args[@]}" >&2
        jsons+=("$WORK/case1-$r.json")
    done
    local n_warm=$(( ROUNDS1 * (per + 1) ))
    local t d p ts ds ps
    read -r t ts _ < <(hf_pool thaw "${jsons[@]}")
    read -r d ds _ < <(hf_pool docker-registry "${jsons[@]}")
    read -r p ps _ < <(hf_pool docker-registry-proxy "${jsons[@]}")
    local best; best=$(python3 -c "print(min($d, $p))")
    read -r tn td tb < <(reg_requests "$WORK/logs/up-thaw.log" "$l1")
    read -r pn pdg pb < <(reg_requests "$WORK/logs/up-proxy.log" "$l2")
    local fetched; fetched=$(( $(thaw_metric "$ta" thaw_upstream_bytes_total) - fetched0 ))
    local hz; hz=$(getconf CLK_TCK)
    local ct cd cp
    ct=$(cpu_ms "$(( $(cpu_ticks "$(cat "$WORK/thaw1.pid")") - ct0 ))" "$n_warm")
    cd=$(cpu_ms "$(( $(cpu_ticks "$(cat "$WORK/direct.pid")") - cd0 ))" "$n_warm")
    cp=$(cpu_ms "$(( $(cpu_ticks "$(cat "$WORK/proxy1.pid")") + $(cpu_ticks "$(cat "$WORK/up-proxy.pid")") - cp0 ))" "$n_warm")
    result ""
    result "## 1. warm pull of img50 ($(mib "$IMG50_BYTES") MiB), loopback, $((ROUNDS1 * per)) runs per target ($ROUNDS1 hyperfine rounds of $per, target order rotated), medians; $(loadavg)"
    result "command: hyperfine -N --warmup 1 --runs $per --prepare 'rm -rf OUT' '$SKOPEO docker://ADDR/bench/img50:v1 dir:OUT' (x3 targets, x$ROUNDS1 rounds)"
    result "$(printf '%-24s %9s %7s %8s %13s  %s' target median_s stddev vs_best server_cpu_ms "upstream requests during $n_warm warm pulls (by digest), body bytes")"
    result "$(printf '%-24s %9s %7s %8s %13s  %s' thaw "$t" "$ts" "$(ratio "$t" "$best")" "$ct" "$tn ($td), $tb B; thaw_upstream_bytes_total +$fetched")"
    result "$(printf '%-24s %9s %7s %8s %13s  %s' docker-registry "$d" "$ds" "$(ratio "$d" "$best")" "$cd" "-")"
    result "$(printf '%-24s %9s %7s %8s %13s  %s' docker-registry-proxy "$p" "$ps" "$(ratio "$p" "$best")" "$cp" "$pn ($pdg), $pb B")"
    result "(server_cpu_ms: user+sys CPU of the serving process per pull; for the proxy, proxy + its upstream)"
    result "goal: thaw <= 1.00x the fastest of the others: $(ratio "$t" "$best"); zero upstream requests by digest: $td"
    stop_thaw thaw1
    for n in direct up-thaw up-proxy proxy1; do stop_pid "$(cat "$WORK/$n.pid")"; done
}

# ------------------------------------------------------------------ case 2: cold/warm over the link

case2() {
    log "case 2: cold and warm pull over a $RATE link"
    local out="$WORK/out" json="$WORK/case2.json" port listen
    port=$(free_port); listen=127.0.0.1:$port
    start_thaw thaw2 "$listen" "$WORK/thaw2" --upstream "http://$WAN"
    local reset="bash $SELF __reset-thaw thaw2 $listen $WORK/thaw2 --upstream http://$WAN"
    local cmd_c="$SKOPEO docker://$listen/bench/img50:v1 dir:$out"
    local cmd_d="$SKOPEO docker://$WAN/bench/img50:v1 dir:$out"
    # hyperfine runs all runs of one command before the next: after the cold runs thaw holds the
    # image, which the third command then pulls warm.
    hyperfine -N --style basic --warmup 1 --runs "$RUNS" --export-json "$json" \
        --prepare "$reset" -n thaw-cold "$cmd_c" \
        --prepare "rm -rf $out" -n direct "$cmd_d" \
        --prepare "rm -rf $out" -n thaw-warm "$cmd_c" >&2
    local c d w; c=$(hf_median "$json" 0); d=$(hf_median "$json" 1); w=$(hf_median "$json" 2)
    # Upstream traffic of warm pulls through thaw, counted on the link and in the upstream's log.
    local l0 b0 i ta; ta=$(cat "$WORK/thaw2.addr")
    l0=$(lines "$WORK/logs/wan.log"); b0=$(if_bytes "$UP_DEV" rx)
    for i in 1 2 3 4 5; do rm -rf "$out"; $SKOPEO "docker://$ta/bench/img50:v1" "dir:$out"; done
    read -r wn wd wb < <(reg_requests "$WORK/logs/wan.log" "$l0")
    local link=$(( $(if_bytes "$UP_DEV" rx) - b0 ))
    local ideal; ideal=$(python3 -c "print(f'{$IMG50_BYTES * 8 / 100e6:.3f}')")
    result ""
    result "## 2. pull of img50 ($(mib "$IMG50_BYTES") MiB), upstream in a netns behind $WAN_DESC (ideal transfer ${ideal} s), hyperfine $RUNS runs, medians; $(loadavg)"
    result "command: hyperfine -N --warmup 1 --runs $RUNS --prepare '<fresh thaw, empty store>' '$SKOPEO docker://127.0.0.1:PORT/bench/img50:v1 dir:OUT' --prepare 'rm -rf OUT' '$SKOPEO docker://$WAN/bench/img50:v1 dir:OUT' ..."
    result "$(printf '%-24s %10s %8s %10s' target median_s stddev vs_direct)"
    result "$(printf '%-24s %10s %8s %10s' thaw-cold "$c" "$(hf_stddev "$json" 0)" "$(ratio "$c" "$d")")"
    result "$(printf '%-24s %10s %8s %10s' direct "$d" "$(hf_stddev "$json" 1)" "1.00x")"
    result "$(printf '%-24s %10s %8s %10s' thaw-warm "$w" "$(hf_stddev "$json" 2)" "$(ratio "$w" "$d")")"
    result "goal: thaw cold <= 1.05x direct: $(ratio "$c" "$d"); 5 more warm pulls through thaw: $wn upstream requests ($wd by digest), $wb body bytes, $link bytes on the link"
    stop_thaw thaw2
}

# ------------------------------------------------------------------ case 3: one cached blob vs nginx

case3() {
    log "case 3: cached blob throughput and RSS"
    local www="$WORK/www" size d loc
    mkdir -p "$www"
    start_thaw thaw3 127.0.0.1:0 "$WORK/thaw3" --standalone
    local ta pid; ta=$(cat "$WORK/thaw3.addr"); pid=$(cat "$WORK/thaw3.pid")
    declare -gA BLOB
    for size in 10 100 500; do
        head -c "$((size * 1048576))" /dev/urandom >"$www/blob$size"
        d=sha256:$(sha256sum "$www/blob$size" | cut -d' ' -f1)
        BLOB[$size]=$d
        # Monolithic push: POST for an upload location, then PUT the body with the digest.
        loc=$(curl -sf -D - -o /dev/null -X POST "http://$ta/v2/bench/blob/blobs/uploads/" | tr -d '\r' | awk 'tolower($1) == "location:" { print $2 }')
        [[ $loc == /* ]] && loc="http://$ta$loc"
        [[ $loc == *\?* ]] && loc="$loc&digest=$d" || loc="$loc?digest=$d"
        curl -sf -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' --upload-file "$www/blob$size" "$loc" \
            || die "pushing the $size MiB blob to thaw failed"
    done
    local pn; pn=$(free_port)
    mkdir -p "$WORK/nginx"
    cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/logs/nginx.err warn;
events { worker_connections 64; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    types { application/octet-stream bin; }
    default_type application/octet-stream;
    server { listen 127.0.0.1:$pn; root $www; }
}
EOF
    nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
    local npid=$!; track "$npid"
    wait_http "http://127.0.0.1:$pn/" || die "nginx does not answer on 127.0.0.1:$pn"
    # Interleaved rather than hyperfine's all-of-A-then-all-of-B: the machine is shared, and
    # alternating the two servers (and which goes first) spreads load changes over both equally.
    # Each transfer's time is curl's own time_total; CPU time is read from /proc/PID/stat of thaw
    # and of nginx's worker, which load from other processes does not inflate.
    local url_t="http://$ta/v2/bench/blob/blobs/${BLOB[100]}" url_n="http://127.0.0.1:$pn/blob100"
    local nworker; nworker=$(pgrep -P "$npid" | head -1)
    local i ts=() ns=() c0t c0n
    for i in 1 2 3; do curl -sf -o /dev/null "$url_t"; curl -sf -o /dev/null "$url_n"; done
    c0t=$(cpu_ticks "$pid"); c0n=$(cpu_ticks "$nworker")
    for i in $(seq "$RUNS"); do
        if ((i % 2)); then
            ts+=("$(curl -sf -o /dev/null -w '%{time_total}' "$url_t")"); ns+=("$(curl -sf -o /dev/null -w '%{time_total}' "$url_n")")
        else
            ns+=("$(curl -sf -o /dev/null -w '%{time_total}' "$url_n")"); ts+=("$(curl -sf -o /dev/null -w '%{time_total}' "$url_t")")
        fi
    done
    local hz; hz=$(getconf CLK_TCK)
    local cput cpun
    cput=$(python3 -c "print(f'{($(cpu_ticks "$pid") - $c0t) / $hz / $RUNS * 1000:.0f}')")
    cpun=$(python3 -c "print(f'{($(cpu_ticks "$nworker") - $c0n) / $hz / $RUNS * 1000:.0f}')")
    local t n; t=$(median "${ts[@]}"); n=$(median "${ns[@]}")
    local tput_t tput_n
    tput_t=$(python3 -c "print(f'{100 * 1048576 / $t / 1e9:.2f}')")
    tput_n=$(python3 -c "print(f'{100 * 1048576 / $n / 1e9:.2f}')")
    result ""
    result "## 3. one cached 100 MiB blob over loopback, one stream, $RUNS interleaved transfers each (+3 warmup), medians; load avg $(cut -d' ' -f1-3 /proc/loadavg)"
    result "command: curl -sf -o /dev/null -w '%{time_total}' http://ADDR/v2/bench/blob/blobs/DIGEST, alternating with the same for http://ADDR/blob100 (nginx 1 worker, sendfile on, file on tmpfs)"
    result "$(printf '%-10s %10s %8s %10s %18s' server median_s GB/s vs_nginx cpu_ms_per_100MiB)"
    result "$(printf '%-10s %10s %8s %10s %18s' thaw "$t" "$tput_t" "$(python3 -c "print(f'{$n / $t:.2f}x')")" "$cput")"
    result "$(printf '%-10s %10s %8s %10s %18s' nginx "$n" "$tput_n" "1.00x" "$cpun")"
    # RSS: reset the peak (clear_refs 5), then 3 transfers of each size while sampling VmRSS.
    result "thaw RSS per blob size (peak VmHWM after reset + max sampled VmRSS during 3 GETs; KiB):"
    for size in 10 100 500; do
        echo 5 >"/proc/$pid/clear_refs"
        local before; before=$(vm_rss "$pid")
        ( m=0; while kill -0 "$pid" 2>/dev/null; do r=$(vm_rss "$pid"); ((r > m)) && m=$r; echo "$m" >"$WORK/rss.max"; sleep 0.01; done ) &
        local sampler=$!; track "$sampler"
        for _ in 1 2 3; do curl -sf -o /dev/null "http://$ta/v2/bench/blob/blobs/${BLOB[$size]}"; done
        stop_pid "$sampler"
        result "$(printf '  %4s MiB blob: before %7s  sampled max %7s  VmHWM %7s' "$size" "$before" "$(cat "$WORK/rss.max")" "$(vm_hwm "$pid")")"
    done
    stop_pid "$npid"
    stop_thaw thaw3
}

# ------------------------------------------------------------------ case 4: 16 VMs on a bridge

setup_bridge() {
    local i
    ip link add "$BR" type bridge
    ip addr add 10.202.0.1/24 dev "$BR"
    ip link set "$BR" up
    for i in $(seq "$CLIENTS"); do
        ip netns add "$ID-c$i"
        ip link add "${ID}c$i" type veth peer name eth0 netns "$ID-c$i"
        ip link set "${ID}c$i" master "$BR" up
        ip -n "$ID-c$i" link set lo up
        ip -n "$ID-c$i" addr add "10.202.0.$((10 + i))/24" dev eth0
        ip -n "$ID-c$i" link set eth0 up
    done
}

# pull_many ADDR N: N clients (namespaces c1..cN) pull img70 at once; prints the wall time.
pull_many() {
    local addr=$1 n=$2 i pids=() t0 t1 fail=0
    for i in $(seq "$n"); do rm -rf "$WORK/out$i"; done
    t0=$(now)
    for i in $(seq "$n"); do
        ip netns exec "$ID-c$i" $SKOPEO "docker://$addr/bench/img70:v1" "dir:$WORK/out$i" >"$WORK/logs/client$i.log" 2>&1 &
        pids+=($!); track "$!"
    done
    for i in "${!pids[@]}"; do wait "${pids[$i]}" || { fail=1; cat "$WORK/logs/client$((i + 1)).log" >&2; }; done
    t1=$(now)
    ((fail == 0)) || die "a client failed pulling from $addr"
    for i in $(seq "$n"); do rm -rf "$WORK/out$i"; done
    fsub "$t1" "$t0"
}

# one_round KIND N: a fresh mirror (empty store), N clients at once; prints
# "wall_s upstream_log_bytes link_bytes upstream_requests thaw_metric_bytes peak_rss_kib cpu_ticks
#  warm_wall_s warm_upstream_requests warm_cpu_ticks" (peak RSS and CPU of the mirror process over
# the cold pull, which is its whole life so far; the warm fields are "-" for one client).
one_round() {
    local kind=$1 n=$2 addr l0 b0 wall met=0 hwm=0 pid
    local port; port=$(free_port)
    addr=10.202.0.1:$port
    l0=$(lines "$WORK/logs/wan.log"); b0=$(if_bytes "$UP_DEV" rx)
    if [[ $kind == thaw ]]; then
        rm -rf "$WORK/thaw4"
        start_thaw thaw4 "$addr" "$WORK/thaw4" --upstream "http://$WAN"
        pid=$(cat "$WORK/thaw4.pid")
    else
        rm -rf "$WORK/proxy4"
        start_registry proxy4 "$addr" "$WORK/proxy4" "http://$WAN"
        pid=$(cat "$WORK/proxy4.pid")
    fi
    wall=$(pull_many "$addr" "$n")
    # docker-registry proxy keeps fetching in the background after its clients are done; give
    # stragglers a moment so the bytes are counted against the run that caused them.
    sleep 2
    [[ $kind == thaw ]] && met=$(thaw_metric "$addr" thaw_upstream_bytes_total)
    hwm=$(vm_hwm "$pid")
    local cpu; cpu=$(cpu_ticks "$pid")
    read -r rn _ rb < <(reg_requests "$WORK/logs/wan.log" "$l0")
    local link=$(( $(if_bytes "$UP_DEV" rx) - b0 ))
    # With more than one client, the same clients pull again from the now warm mirror: what a
    # host's VMs see on every later start (wall time, upstream requests, mirror CPU).
    local wwall=- wreqs=- wcpu=-
    if ((n > 1)); then
        local l1; l1=$(lines "$WORK/logs/wan.log")
        wwall=$(pull_many "$addr" "$n")
        read -r wreqs _ _ < <(reg_requests "$WORK/logs/wan.log" "$l1")
        wcpu=$(( $(cpu_ticks "$pid") - cpu ))
    fi
    if [[ $kind == thaw ]]; then stop_thaw thaw4; else stop_pid "$pid"; fi
    echo "$wall $rb $link $rn $met $hwm $cpu $wwall $wreqs $wcpu"
}

case4() {
    log "case 4: $CLIENTS clients in namespaces on a bridge, cold img70, upstream over $RATE"
    setup_bridge
    result ""
    result "## 4. $CLIENTS clients (one netns each, on a bridge) pulling cold img70 ($IMG70_BYTES B) at once; upstream behind $WAN_DESC; $(loadavg) at start"
    result "command: per client 'ip netns exec NS $SKOPEO docker://10.202.0.1:PORT/bench/img70:v1 dir:OUT', all started together; mirror restarted with an empty store each round"
    result "$(printf '%-16s %8s %7s %12s %10s %8s %15s %12s %10s' mirror/clients wall_s vs_one up_body/img link/img up_reqs thaw_metric/img peak_rss_MiB cpu_s)"
    local kind reps r n one many
    for kind in thaw proxy; do
        reps=$REPS4; [[ $kind == proxy ]] && reps=$PROXY_REPS4
        local walls1=() wallsN=() wallsW=() last1="" lastN="" bytesN=() reqsN=()
        for r in $(seq "$reps"); do
            log "case 4: $kind round $r/$reps: 1 client"
            one=$(one_round "$kind" 1) && [[ $(wc -w <<<"$one") == 10 ]] || die "case 4 ($kind, 1 client) failed; logs in $WORK/logs (KEEP=1 keeps them)"
            walls1+=("${one%% *}"); last1=$one
            log "case 4: $kind round $r/$reps: $CLIENTS clients"
            many=$(one_round "$kind" "$CLIENTS") && [[ $(wc -w <<<"$many") == 10 ]] || die "case 4 ($kind, $CLIENTS clients) failed; logs in $WORK/logs (KEEP=1 keeps them)"
            wallsN+=("${many%% *}"); lastN=$many
            wallsW+=("$(cut -d' ' -f8 <<<"$many")")
            read -r _ rb _ rn _ <<<"$many"; bytesN+=("$rb"); reqsN+=("$rn")
            log "  1: $one | $CLIENTS: $many"
        done
        local m1 mN; m1=$(median "${walls1[@]}"); mN=$(median "${wallsN[@]}")
        for n in 1 "$CLIENTS"; do
            local row w; if [[ $n == 1 ]]; then row=$last1; w=$m1; else row=$lastN; w=$mN; fi
            read -r _ rb link rn met hwm cpu _ <<<"$row"
            result "$(printf '%-16s %8s %7s %12s %10s %8s %15s %12s %10s' "$kind/$n" "$w" "$(ratio "$w" "$m1")" \
                "$(ratio3 "$rb" "$IMG70_BYTES")" "$(ratio3 "$link" "$IMG70_BYTES")" "$rn" \
                "$([[ $kind == thaw ]] && ratio3 "$met" "$IMG70_BYTES" || echo -)" "$(python3 -c "print(f'{$hwm / 1024:.1f}')")" \
                "$(python3 -c "import os; print(f'{$cpu / os.sysconf(\"SC_CLK_TCK\"):.2f}')")")"
        done
        read -r _ _ _ _ _ _ _ _ wreqs wcpu <<<"$lastN"
        local mW; mW=$(median "${wallsW[@]}")
        result "$(printf '%-16s %8s %7s %12s %10s %8s %15s %12s %10s' "$kind/$CLIENTS warm" "$mW" "$(ratio "$mW" "$m1")" \
            - - "$wreqs" - - "$(python3 -c "import os; print(f'{$wcpu / os.sysconf(\"SC_CLK_TCK\"):.2f}')")")"
        result "  ($kind: wall = median of $reps rounds: 1 client ${walls1[*]}; $CLIENTS clients ${wallsN[*]}; $CLIENTS clients again, warm: ${wallsW[*]};"
        result "   other columns from the last round; cpu_s = mirror user+sys CPU during that pull;"
        result "   $CLIENTS-client rounds: upstream body bytes ${bytesN[*]} (image $IMG70_BYTES), upstream requests ${reqsN[*]})"
    done
    result "goals: thaw upstream bytes exactly 1.0x the image; $CLIENTS-client wall <= 1.5x one client"
}

# ------------------------------------------------------------------ run

for c in $CASES; do
    case $c in
        1) case1 ;;
        2 | 4) [[ -n ${WAN:-} ]] || setup_wan; "case$c" ;;
        3) case3 ;;
        *) die "unknown case $c (cases are 1 2 3 4)" ;;
    esac
done

echo
echo "==================== results ===================="
cat "$WORK/results.txt"
[[ -n ${RESULTS:-} ]] && cp "$WORK/results.txt" "$RESULTS"
exit 0
