#!/usr/bin/env bash
# Container start-to-exit latency: the same bundle running /bin/true under
# `flotilla-agent runtime run` (release build), `crun run` and `runc run`, alternating,
# N runs each (default 30), then medians and ratios.
#
# usage: benches/runtime-run.sh [RUNS]        (as root; needs runc, crun, busybox-static)
#
# crun refuses hybrid cgroup hosts unless the cgroup2 hierarchy is hidden, so the whole
# measurement runs inside one private mount namespace (`unshare -m`) in which
# /sys/fs/cgroup/unified is unmounted; the host's mounts are untouched.
set -euo pipefail

RUNS=${1:-30}
HERE=$(cd "$(dirname "$0")/.." && pwd)
AGENT=${FLOTILLA_AGENT:-${CARGO_TARGET_DIR:-$HERE/target}/release/flotilla-agent}

if [[ ${FLOTILLA_BENCH_INNER:-} != 1 ]]; then
    [[ $(id -u) == 0 ]] || { echo "runtime-run.sh: needs root" >&2; exit 1; }
    for t in runc crun busybox python3; do
        command -v "$t" >/dev/null || { echo "runtime-run.sh: $t is not installed" >&2; exit 1; }
    done
    [[ -x $AGENT ]] || {
        echo "runtime-run.sh: $AGENT missing: cargo build --release -p flotilla-agent" >&2
        exit 1
    }
    exec env FLOTILLA_BENCH_INNER=1 FLOTILLA_AGENT="$AGENT" \
        unshare -m --propagation private "$0" "$RUNS"
fi

# Inside the private mount namespace from here on.
if mountpoint -q /sys/fs/cgroup/unified; then
    umount /sys/fs/cgroup/unified
fi

WORK=$(mktemp -d /tmp/flotilla-bench-runtime.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
BUNDLE=$WORK/bundle
mkdir -p "$BUNDLE/rootfs/bin" "$BUNDLE/rootfs/proc" "$BUNDLE/rootfs/sys" \
    "$BUNDLE/rootfs/dev" "$BUNDLE/rootfs/tmp" "$BUNDLE/rootfs/etc"
cp "$(command -v busybox)" "$BUNDLE/rootfs/bin/busybox"
ln -s busybox "$BUNDLE/rootfs/bin/true"
ln -s busybox "$BUNDLE/rootfs/bin/sh"
(cd "$BUNDLE" && runc spec)
python3 - "$BUNDLE/config.json" <<'EOF'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["process"]["args"] = ["/bin/true"]
c["process"]["terminal"] = False
# One cgroup path for all three runtimes; each removes it after its run.
c["linux"]["cgroupsPath"] = "/flotilla-bench-runtime"
json.dump(c, open(p, "w"), indent=1)
EOF

declare -A CMD=(
    [flotilla]="$FLOTILLA_AGENT runtime --root $WORK/state-flotilla run --bundle $BUNDLE"
    [crun]="crun --root $WORK/state-crun run --bundle $BUNDLE"
    [runc]="runc --root $WORK/state-runc run --bundle $BUNDLE"
)
ORDER=(flotilla crun runc)

# Warm up caches (binaries, rootfs) once each; check that every runtime works.
for r in "${ORDER[@]}"; do
    if ! ${CMD[$r]} "warm-$r" </dev/null; then
        echo "runtime-run.sh: $r failed to run the bundle" >&2
        exit 1
    fi
done

for r in "${ORDER[@]}"; do : >"$WORK/$r.times"; done
for ((i = 0; i < RUNS; i++)); do
    for r in "${ORDER[@]}"; do
        t0=$EPOCHREALTIME
        ${CMD[$r]} "b$i-$r" </dev/null
        t1=$EPOCHREALTIME
        echo "$t0 $t1" >>"$WORK/$r.times"
    done
done

python3 - "$WORK" "$RUNS" "${ORDER[@]}" <<'EOF'
import statistics, sys
work, runs, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
med = {}
for n in names:
    ts = [(float(b) - float(a)) * 1000 for a, b in (l.split() for l in open(f"{work}/{n}.times"))]
    med[n] = statistics.median(ts)
    print(f"{n:>9}: median {med[n]:7.2f} ms  (min {min(ts):6.2f}, max {max(ts):6.2f}, {len(ts)} runs)")
print(f"flotilla / crun = {med['flotilla'] / med['crun']:.2f}   (target <= 0.80)")
print(f"flotilla / runc = {med['flotilla'] / med['runc']:.2f}")
print(f"crun / runc     = {med['crun'] / med['runc']:.2f}")
EOF
