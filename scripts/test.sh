#!/usr/bin/env bash
# The whole Flotilla test suite, as root on Debian or Raspberry Pi OS:
#   ./scripts/test.sh
# Installs what the tests need (idempotent; quick when already present), then runs
# rustfmt, clippy, unit and end-to-end tests, and the cross builds for the boards we
# ship to (aarch64 musl, armv7 gnueabihf) with their checks under qemu-user.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
started=$SECONDS

if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: run as root: the end-to-end tests create namespaces, cgroups and mounts" >&2
    exit 1
fi

CROSS_TARGETS=(aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf)
APT_PACKAGES=(
    busybox-static iptables iproute2 umoci skopeo docker-registry apache2-utils
    runc crun hyperfine jq python3-pip systemd
    qemu-user-static gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf
    libc6-dev-arm64-cross libc6-dev-armhf-cross
)

step "system packages"
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "all present"
fi

step "rust targets and components"
installed_targets=$(rustup target list --installed)
for target in "${CROSS_TARGETS[@]}"; do
    grep -qx "$target" <<<"$installed_targets" || rustup target add "$target"
done
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

step "python client used by the API tests"
KUBERNETES_PY=37.0.2
python3 -c "import kubernetes, sys; sys.exit(kubernetes.__version__ != '$KUBERNETES_PY')" 2>/dev/null ||
    python3 -m pip install -q --disable-pip-version-check --break-system-packages "kubernetes==$KUBERNETES_PY"

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "build the binaries the end-to-end tests start"
cargo build --workspace

step "systemd unit files"
units=$(mktemp -d)
for unit in systemd/*.service; do
    # Verify against the binaries just built, since nothing is installed yet.
    sed "s#/usr/local/bin/#$PWD/target/debug/#" "$unit" >"$units/$(basename "$unit")"
    systemd-analyze verify "$units/$(basename "$unit")"
done
rm -rf "$units"

step "unit and end-to-end tests"
# As root the end-to-end tests must run, never skip.
export FLOTILLA_E2E=1
cargo test --workspace

for target in "${CROSS_TARGETS[@]}"; do
    step "cross build for $target"
    cargo build --target "$target" -p flotilla-agent -p flotilla-controller
    for bin in flotilla-agent flotilla-controller; do
        cargo run -q --target "$target" --bin "$bin" -- --version
    done
    step "shared crate tests under qemu-user for $target"
    cargo test --target "$target" -p flotilla-shared
done

step "all green in $((SECONDS - started)) s"
