#!/usr/bin/env bash
# Flotilla quickstart, as root on Debian or Raspberry Pi OS:
#   ./scripts/quickstart.sh
# Builds the release binaries, installs them in /usr/local/bin, and starts as much of a
# single-node cluster as this version of Flotilla has (it says what it did and what is
# still missing).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "quickstart.sh: run as root (it installs binaries and starts containers)" >&2
    exit 1
fi

say "build tools"
if ! command -v cargo >/dev/null; then
    # Debian's cargo is older than Flotilla's minimum Rust (see Cargo.toml rust-version).
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl ca-certificates gcc >/dev/null
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
command -v cc >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc >/dev/null; }

say "build release binaries"
cargo build --release -p flotilla-controller -p flotilla-agent
install -m 0755 target/release/flotilla-controller target/release/flotilla-agent /usr/local/bin/
ls -l /usr/local/bin/flotilla-controller /usr/local/bin/flotilla-agent
flotilla-controller --version
flotilla-agent --version

say "what this version can do"
cat <<'MSG'
This version of Flotilla has the workspace, the wire protocol and the cross builds.
The API server, the container runtime and the image store arrive with the next
issues; this script will start them as they land.
MSG
