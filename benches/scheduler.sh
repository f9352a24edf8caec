#!/bin/sh
# Scheduler throughput: 1,000 fake nodes and 10,000 pending pods with mixed requests,
# node selectors, required/preferred node affinity, tolerations and owners, scheduled
# (decision + assume) by flotilla-scheduler in one process, RUNS times. Prints the
# median pods/s and its ratio to the 5,000 pods/s target (kube-scheduler does hundreds
# per second; it is not packaged here to run side by side), latency, CPU and peak RSS.
#
# usage: benches/scheduler.sh [NODES] [PODS] [RUNS]     (defaults 1000 10000 5)
set -eu
cd "$(dirname "$0")/.."
exec cargo bench -q -p flotilla-scheduler --bench scheduler_throughput -- "${1:-1000}" "${2:-10000}" "${3:-5}"
