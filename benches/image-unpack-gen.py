#!/usr/bin/env python3
"""Writes the synthetic image of the image-unpack benchmark, deterministically.

An OCI image layout (tag `latest`) and the same image as an oci-archive tar:
5 gzip layers, 10,000 files, about 100 MB uncompressed, with directories,
symlinks, hardlinks, overwritten files, a whiteout and an opaque directory.
The same arguments always give the same bytes.

usage: image-unpack-gen.py OUT_DIR [--files 10000] [--mb 100] [--layers 5]
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import tarfile

MTIME = 1_704_067_200


def entry(name, kind=tarfile.REGTYPE, size=0, mode=0o644, link=""):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.size = size
    ti.mode = mode
    ti.mtime = MTIME
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    ti.linkname = link
    return ti


def payload(rng, size):
    # Half random, half repetitive: compresses roughly 2:1 like real binaries and text.
    half = size // 2
    text = (b"flotilla synthetic image payload line\n" * (size // 38 + 1))[: size - half]
    return rng.randbytes(half) + text


def layer(index, n_files, total_bytes, rng):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        top = f"layer{index}"
        tar.addfile(entry(top + "/", tarfile.DIRTYPE, mode=0o755))
        dirs = [f"{top}/d{d:02}" for d in range(max(1, n_files // 100))]
        for d in dirs:
            tar.addfile(entry(d + "/", tarfile.DIRTYPE, mode=0o755))
        # Sizes: mostly small files and a few large ones, summing to total_bytes.
        weights = [rng.choice((1, 1, 1, 2, 4, 8, 64)) for _ in range(n_files)]
        scale = total_bytes / sum(weights)
        for i in range(n_files):
            size = int(weights[i] * scale)
            name = f"{dirs[i % len(dirs)]}/f{i:05}.bin"
            tar.addfile(entry(name, size=size, mode=0o755 if i % 10 == 0 else 0o644), io.BytesIO(payload(rng, size)))
        tar.addfile(entry(f"{top}/link", tarfile.SYMTYPE, mode=0o777, link="d00/f00000.bin"))
        tar.addfile(entry(f"{top}/hard", tarfile.LNKTYPE, link=f"{dirs[0]}/f00000.bin"))
        if index > 0:
            # Change the layer below: overwrite a file, delete one, make a dir opaque.
            below = f"layer{index - 1}"
            data = b"overwritten\n"
            tar.addfile(entry(f"{below}/d00/", tarfile.DIRTYPE, mode=0o755))
            tar.addfile(entry(f"{below}/d00/f00000.bin", size=len(data)), io.BytesIO(data))
            tar.addfile(entry(f"{below}/d00/.wh.f00100.bin"))
            tar.addfile(entry(f"{below}/d01/", tarfile.DIRTYPE, mode=0o755))
            tar.addfile(entry(f"{below}/d01/.wh..wh..opq"))
    return buf.getvalue()


def write_blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--mb", type=int, default=100)
    p.add_argument("--layers", type=int, default=5)
    a = p.parse_args()
    rng = random.Random(4)
    layout = os.path.join(a.out, "layout")
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    layers, diff_ids = [], []
    for i in range(a.layers):
        tar = layer(i, a.files // a.layers, a.mb * 1_000_000 // a.layers, rng)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        gz = gzip.compress(tar, compresslevel=6, mtime=0)
        layers.append(dict(mediaType="application/vnd.oci.image.layer.v1.tar+gzip", **write_blob(layout, gz)))
    config = {
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, "arm"),
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    cfg = dict(mediaType="application/vnd.oci.image.config.v1+json",
               **write_blob(layout, json.dumps(config, sort_keys=True).encode()))
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": cfg, "layers": layers}
    man = dict(mediaType="application/vnd.oci.image.manifest.v1+json",
               **write_blob(layout, json.dumps(manifest, sort_keys=True).encode()))
    man["annotations"] = {"org.opencontainers.image.ref.name": "latest"}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [man]}, f, sort_keys=True)
    # The same layout as an oci-archive.
    with tarfile.open(os.path.join(a.out, "image.tar"), "w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirnames, files in os.walk(layout):
            dirnames.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, layout)
                with open(path, "rb") as f:
                    tar.addfile(entry(rel, size=os.path.getsize(path)), f)
    print(man["digest"])


if __name__ == "__main__":
    main()
