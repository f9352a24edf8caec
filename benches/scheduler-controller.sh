#!/bin/sh
# Scheduling through the real controller: NODES fake nodes registered through the API
# (Ready, with Leases) and PODS pending pods from SETS ReplicaSets with mixed requests,
# nodeSelectors, node affinity and tolerations, created with the scheduler off
# (--controllers=*,-scheduler); then, RUNS times, a copy of that data directory starts
# with every loop on and the clock runs until a watch has seen every pod bound. Prints
# each run and, from the median run, pods bound per second against the 5,000 pods/s
# target (PASS/FAIL), the controller's CPU time and RSS; checks every placement.
# (kube-scheduler does hundreds per second; it is not packaged here to run side by side.)
#
# usage: benches/scheduler-controller.sh [NODES] [PODS] [SETS] [RUNS]
#        (defaults 1000 10000 100 3)
set -eu
cd "$(dirname "$0")/.."
cargo build -q --release -p flotilla-controller
cargo build -q --release --manifest-path benches/scheduler-bench/Cargo.toml
main="${CARGO_TARGET_DIR:-target}/release"
bench="${CARGO_TARGET_DIR:-benches/scheduler-bench/target}/release"
exec "$bench/scheduler-bench" --controller "$main/flotilla-controller" \
    --nodes "${1:-1000}" --pods "${2:-10000}" --sets "${3:-100}" --runs "${4:-3}"
