#!/usr/bin/env bash
# Flotilla quickstart, as root on Debian or Raspberry Pi OS:
#   ./scripts/quickstart.sh
# Builds the release binaries, installs them in /usr/local/bin, starts the controller
# and an agent on this machine joined with the controller's node token (systemd
# services where systemd runs, background processes otherwise), applies the example
# workload with kubectl and says how to use the cluster. It says plainly which parts of
# a cluster this version does not have yet.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR=/var/lib/flotilla/controller
KUBECONFIG_FILE=$DATA_DIR/admin.kubeconfig
PID_FILE=/run/flotilla-controller.pid
LOG_FILE=/var/log/flotilla-controller.log
AGENT_DATA_DIR=/var/lib/flotilla/agent
AGENT_ENV=/etc/flotilla/agent.env
AGENT_PID_FILE=/run/flotilla-agent.pid
AGENT_LOG_FILE=/var/log/flotilla-agent.log

say() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "quickstart.sh: run as root (it installs binaries and starts the controller)" >&2
    exit 1
fi

say "build tools"
if ! command -v cc >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc >/dev/null
fi
if ! command -v cargo >/dev/null; then
    # Debian's cargo is older than Flotilla's minimum Rust (Cargo.toml rust-version).
    command -v curl >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl ca-certificates >/dev/null
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
cargo --version

say "build release binaries (minutes on a laptop, longer on a small board)"
cargo build --release -p flotilla-controller -p flotilla-agent
install -m 0755 target/release/flotilla-controller target/release/flotilla-agent /usr/local/bin/
ls -lh /usr/local/bin/flotilla-controller /usr/local/bin/flotilla-agent

say "start the controller"
if [ -d /run/systemd/system ]; then
    install -m 0644 systemd/flotilla-controller.service /etc/systemd/system/
    systemctl daemon-reload
    systemctl enable --now flotilla-controller.service
    systemctl restart flotilla-controller.service
    echo "running as systemd service flotilla-controller (journalctl -u flotilla-controller)"
else
    if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        kill "$(cat "$PID_FILE")"
        while kill -0 "$(cat "$PID_FILE")" 2>/dev/null; do sleep 0.2; done
    fi
    mkdir -p "$DATA_DIR"
    nohup /usr/local/bin/flotilla-controller serve --data-dir "$DATA_DIR" >>"$LOG_FILE" 2>&1 &
    echo $! >"$PID_FILE"
    echo "running as pid $(cat "$PID_FILE") (no systemd here; log: $LOG_FILE)"
fi

if ! command -v kubectl >/dev/null; then
    say "kubectl is not installed"
    echo "Install kubectl (https://kubernetes.io/docs/tasks/tools/), then:"
    echo "  export KUBECONFIG=$KUBECONFIG_FILE"
    echo "  kubectl apply -f $(pwd)/examples/hello.yaml"
    exit 0
fi
export KUBECONFIG=$KUBECONFIG_FILE

say "wait for the API"
for _ in $(seq 1 100); do
    [ -f "$KUBECONFIG_FILE" ] && kubectl get namespace default >/dev/null 2>&1 && break
    sleep 0.3
done
kubectl get namespaces

say "start an agent on this machine (it joins with $DATA_DIR/node-token)"
mkdir -p "$(dirname "$AGENT_ENV")"
umask 077
printf 'FLOTILLA_SERVER=https://127.0.0.1:6444\nFLOTILLA_TOKEN=%s\n' "$(cat "$DATA_DIR/node-token")" >"$AGENT_ENV"
umask 022
if [ -d /run/systemd/system ]; then
    install -m 0644 systemd/flotilla-agent.service /etc/systemd/system/
    systemctl daemon-reload
    systemctl enable --now flotilla-agent.service
    systemctl restart flotilla-agent.service
    echo "running as systemd service flotilla-agent (journalctl -u flotilla-agent)"
else
    if [ -f "$AGENT_PID_FILE" ] && kill -0 "$(cat "$AGENT_PID_FILE")" 2>/dev/null; then
        kill "$(cat "$AGENT_PID_FILE")"
        while kill -0 "$(cat "$AGENT_PID_FILE")" 2>/dev/null; do sleep 0.2; done
    fi
    mkdir -p "$AGENT_DATA_DIR"
    (set -a; . "$AGENT_ENV"; set +a
     nohup /usr/local/bin/flotilla-agent run --data-dir "$AGENT_DATA_DIR" >>"$AGENT_LOG_FILE" 2>&1 &
     echo $! >"$AGENT_PID_FILE")
    echo "running as pid $(cat "$AGENT_PID_FILE") (no systemd here; log: $AGENT_LOG_FILE)"
fi
for _ in $(seq 1 100); do
    kubectl get nodes 2>/dev/null | grep -q ' Ready ' && break
    sleep 0.3
done
kubectl get nodes -o wide

say "deploy the example workload (examples/hello.yaml)"
kubectl apply -f examples/hello.yaml
kubectl get deployments,replicasets,pods,services -n hello

say "use the cluster"
cat <<MSG
  export KUBECONFIG=$KUBECONFIG_FILE
  kubectl get pods -A -w

  kubectl logs -n hello deploy/hello
  kubectl exec -n hello deploy/hello -- wget -qO- http://127.0.0.1:8080/

More machines join with the same token (see $DATA_DIR/node-token):
  FLOTILLA_SERVER=https://<this machine>:6444 FLOTILLA_TOKEN=<token> flotilla-agent run
Air-gapped machines import every image archive put in $AGENT_DATA_DIR/images/ at start.

This version of Flotilla has the API server, the scheduler, the workload controllers
and agents that run pods (images, containers, volumes, probes, logs, exec). Pod
networking is not here yet: each pod has its own network namespace with loopback only
(or the node's with hostNetwork), so pods have no IP and services have no endpoints to
reach; the example's web server answers inside its pod, as the exec above shows.
MSG
