#!/bin/sh
# Regenerates k8s-v1.33.binpb, the protobuf descriptor set that protobuf.rs decodes
# Kubernetes request bodies with. The .proto files are Kubernetes' own generated.proto
# (Apache-2.0) as shipped in the k8s-rs-pb crate on crates.io; protoc comes from
# Debian's protobuf-compiler. Run from anywhere: sh controller/src/api/protobuf/generate.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" && : > "$work/src/lib.rs"
cat > "$work/Cargo.toml" <<'TOML'
[package]
name = "fetch-protos"
version = "0.0.0"
edition = "2021"
[dependencies]
k8s-rs-pb = { version = "=0.5.0", default-features = false, features = ["v1_33"] }
TOML
cargo fetch --manifest-path "$work/Cargo.toml" -q
src=$(cargo metadata --manifest-path "$work/Cargo.toml" --format-version 1 |
    python3 -c 'import json,sys; m=json.load(sys.stdin); print([p["manifest_path"] for p in m["packages"] if p["name"]=="k8s-rs-pb"][0])')
cd "$(dirname "$src")/src/v1_33"
protoc -I . --include_imports --descriptor_set_out="$here/k8s-v1.33.binpb" \
    api/core/v1/generated.proto api/apps/v1/generated.proto api/batch/v1/generated.proto \
    api/coordination/v1/generated.proto api/policy/v1/generated.proto \
    api/autoscaling/v1/generated.proto 2>/dev/null
echo "wrote $here/k8s-v1.33.binpb"
