#!/usr/bin/env python3
"""Generates a deterministic root-filesystem-like tree of about TARGET_MB megabytes: many small
files (configs, scripts), a tail of larger ones (libraries), directories several levels deep,
symlinks, and content that compresses about as well as real binaries (~2.5-3x with gzip)."""

import os
import random
import sys

root = sys.argv[1]
target = int(sys.argv[2]) if len(sys.argv) > 2 else 100
rng = random.Random(20261123)
words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 10))) for _ in range(4000)]


def content(n):
    # Half text-like, half noise: similar entropy to a mix of ELF code and data.
    out = bytearray()
    while len(out) < n:
        if rng.random() < 0.5:
            out += b" ".join(rng.choice(words) for _ in range(64)) + b"\n"
        else:
            out += rng.randbytes(256)
    return bytes(out[:n])


total = 0
i = 0
dirs = [""]
while total < target * 1024 * 1024:
    if rng.random() < 0.08 or len(dirs) < 20:
        parent = rng.choice(dirs)
        d = os.path.join(parent, f"d{i}")
        os.makedirs(os.path.join(root, d), exist_ok=True)
        dirs.append(d)
    d = rng.choice(dirs)
    size = int(rng.paretovariate(1.2) * 2000)
    size = min(size, 8 * 1024 * 1024)
    p = os.path.join(root, d, f"f{i}")
    with open(p, "wb") as f:
        f.write(content(size))
    os.chmod(p, rng.choice([0o644, 0o755, 0o600]))
    total += size
    if rng.random() < 0.05:
        os.symlink(f"f{i}", os.path.join(root, d, f"l{i}"))
    i += 1
print(f"{i} files, {total / 1e6:.1f} MB, {len(dirs)} directories")
