#!/usr/bin/env python3
"""Writes a multi-layer OCI image layout with random, incompressible layer contents.

Used by bench/registry/run.sh to make benchmark images without network access:

    mkimage.py OUT_DIR --layers 5 --layer-mib 10 --seed 1 --tag v1

Each layer is a gzip-compressed tar holding one file of pseudo-random bytes. The bytes come from a
seeded generator so a given (seed, layers, size) always yields the same digests, and different seeds
yield disjoint images (a "cold" image for one case never shares a layer with a warm one). Layers are
gzip-compressed at level 1 because skopeo recompresses uncompressed layers on push to a registry,
which would cost seconds of CPU per run; random data does not shrink, so the gzip blob is about
the requested size. Only the Python standard library is used.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import sys
import tarfile

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def write_blob(out: str, data: bytes) -> str:
    """Stores `data` under blobs/sha256/ and returns its digest string."""
    hexd = hashlib.sha256(data).hexdigest()
    path = os.path.join(out, "blobs", "sha256", hexd)
    with open(path, "wb") as f:
        f.write(data)
    return "sha256:" + hexd


def make_layer(rng: random.Random, index: int, size: int) -> tuple[bytes, str]:
    """Returns (gzip blob, diff_id) for a layer with one file of `size` random bytes."""
    payload = rng.randbytes(size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name=f"data/layer{index}.bin")
        info.size = size
        info.mode = 0o644
        info.mtime = 0
        tar.addfile(info, io.BytesIO(payload))
    tar_bytes = raw.getvalue()
    diff_id = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    # mtime=0 keeps the gzip header, and so the digest, reproducible.
    blob = gzip.compress(tar_bytes, compresslevel=1, mtime=0)
    return blob, diff_id


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="directory for the OCI layout (created; must not hold another layout)")
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--layer-mib", type=float, default=10.0, help="payload size of each layer in MiB")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tag", default="v1")
    args = ap.parse_args()
    if args.layers < 1 or args.layer_mib <= 0:
        print("mkimage: --layers must be >= 1 and --layer-mib > 0", file=sys.stderr)
        return 2
    os.makedirs(os.path.join(args.out, "blobs", "sha256"), exist_ok=True)
    rng = random.Random(args.seed)
    size = int(args.layer_mib * 1024 * 1024)
    layers, diff_ids = [], []
    for i in range(args.layers):
        blob, diff_id = make_layer(rng, i, size)
        layers.append({"mediaType": MEDIA_LAYER, "digest": write_blob(args.out, blob), "size": len(blob)})
        diff_ids.append(diff_id)
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"thaw bench layer {i} seed {args.seed}"} for i in range(args.layers)],
    }, separators=(",", ":")).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": write_blob(args.out, config), "size": len(config)},
        "layers": layers,
    }, separators=(",", ":")).encode()
    mdigest = write_blob(args.out, manifest)
    with open(os.path.join(args.out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": MEDIA_MANIFEST, "digest": mdigest, "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": args.tag},
            }],
        }, f)
    total = sum(l["size"] for l in layers) + len(config) + len(manifest)
    # One machine-readable line for the driver: total bytes of all blobs, manifest digest.
    print(f"{total} {mdigest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
