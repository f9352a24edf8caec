#!/bin/sh
# Side-by-side benchmark: unpacking a synthetic image (~100 MB, 10,000 files,
# 5 gzip layers; built deterministically by image-unpack-gen.py) with
# `flotilla-agent image import` (archive → verified blob store → unpacked layers)
# against `umoci unpack` of the same image (from its OCI layout; umoci cannot read
# the archive). Runs alternate, each into a fresh directory; prints medians and the
# ratio flotilla/umoci (target: <= 1.0).
#
# usage: benches/image-unpack.sh [RUNS]      (default 5; needs root, umoci, python3)
# env:   FLOTILLA_AGENT=path   use this binary instead of building the release one
#        BENCH_DIR=dir         where to build the image and unpack (default: a temp dir)
set -eu

RUNS=${1:-5}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")

if [ -z "${FLOTILLA_AGENT:-}" ]; then
    (cd "$ROOT" && cargo build --release -q -p flotilla-agent)
    FLOTILLA_AGENT=${CARGO_TARGET_DIR:-$ROOT/target}/release/flotilla-agent
fi
command -v umoci >/dev/null || { echo "umoci is not installed" >&2; exit 1; }

WORK=${BENCH_DIR:-$(mktemp -d /var/tmp/flotilla-image-bench.XXXXXX)}
cleanup() { [ -n "${BENCH_DIR:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT INT TERM

echo "building the synthetic image in $WORK ..." >&2
python3 "$HERE/image-unpack-gen.py" "$WORK/image" >/dev/null
echo "image: $(du -h "$WORK/image/image.tar" | cut -f1) archive (gzip layers), 10,000 files, 5 layers, ~100 MB unpacked" >&2

now() { date +%s.%N; }

run_flotilla() {
    rm -rf "$WORK/data"
    sync
    t0=$(now)
    "$FLOTILLA_AGENT" image --data-dir "$WORK/data" --quiet import "$WORK/image/image.tar" >/dev/null
    t1=$(now)
    echo "$t1 - $t0" | bc
}

run_umoci() {
    rm -rf "$WORK/bundle"
    sync
    t0=$(now)
    umoci unpack --image "$WORK/image/layout:latest" "$WORK/bundle" >/dev/null
    t1=$(now)
    echo "$t1 - $t0" | bc
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# Warm-up (page cache, binaries), not counted.
run_flotilla >/dev/null
run_umoci >/dev/null

: > "$WORK/flotilla.times"
: > "$WORK/umoci.times"
i=1
while [ "$i" -le "$RUNS" ]; do
    f=$(run_flotilla); u=$(run_umoci)
    echo "$f" >> "$WORK/flotilla.times"; echo "$u" >> "$WORK/umoci.times"
    printf 'run %d: flotilla %.3f s   umoci %.3f s\n' "$i" "$f" "$u" >&2
    i=$((i + 1))
done

# Same tree? Compare file counts and the regular files' total size as a sanity check.
count() { find "$1" -type f | wc -l; }
echo "files: flotilla layers $(count "$WORK/data/layers/sha256"), umoci rootfs $(count "$WORK/bundle/rootfs")" >&2

F=$(median < "$WORK/flotilla.times")
U=$(median < "$WORK/umoci.times")
printf 'image-unpack: flotilla-agent image import  median %.3f s\n' "$F"
printf 'image-unpack: umoci unpack                 median %.3f s\n' "$U"
printf 'image-unpack: ratio flotilla/umoci         %.2f (target <= 1.00)\n' "$(echo "$F / $U" | bc -l)"
