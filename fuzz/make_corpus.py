#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ (checked in; rerun to regenerate).

Seeds are small, valid and hostile inputs for each parser, in the input format the matching
function of thaw_oci::fuzzing expects (e.g. range seeds start with the body length as 8 bytes
little-endian; manifest and unpack seeds start with one selector byte). Needs only Python's
standard library and the `zstd` command for the zstd layer seeds.
"""

import gzip
import hashlib
import io
import json
import os
import struct
import subprocess
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


H = hashlib.sha256(b"thaw").hexdigest()
H512 = hashlib.sha512(b"thaw").hexdigest()

# --- digest
for i, s in enumerate([
    "sha256:" + H, "sha512:" + H512, "sha256:" + H.upper(), "sha256:" + H[:-1], "sha256:" + H + "0",
    "md5:d41d8cd98f00b204e9800998ecf8427e", "sha256", "", ":", "sha256:" + H + ":x",
    "blake3:" + H, "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564", "sha256:" + "g" * 64,
]):
    write("digest", f"seed-{i:02}", s)

# --- reference
for i, s in enumerate([
    "alpine", "library/alpine:3.19", "docker.io/library/busybox:latest", "localhost:5000/a/b:v1",
    "127.0.0.1:5000/x@sha256:" + H, "quay.io/org/app:t@sha256:" + H, "[::1]:5000/a/b",
    "Registry.Example/a", "MyHost/app", "index.docker.io/busybox", "a" * 256, "a/" * 130 + "a",
    "a..b", "a___b", "-a", "a:b:c", "a@sha256:zz", "alpine:", "x:" + "t" * 129, "ghcr.io/a--b/c__d.e",
    "host:99999/a", "a.b:/c", "UPPER", "a b",
]):
    write("reference", f"seed-{i:02}", s)

# --- range: 8 bytes of body length, then the header value
for i, (total, h) in enumerate([
    (100, "bytes=0-9"), (100, "bytes=90-"), (100, "bytes=-10"), (100, "bytes=50-500"), (100, "bytes=100-"),
    (0, "bytes=0-"), (100, "bytes=0-1,5-6"), (100, "items=0-1"), (100, "bytes=5-1"),
    (100, "bytes=99999999999999999999-"), (100, "bytes=-99999999999999999999999"), (2**64 - 1, "bytes=0-"),
    (2**64 - 1, "bytes=-1"), (100, "BYTES = 1 - 2"), (100, "bytes=--1"), (100, "bytes=-0"),
]):
    write("range", f"seed-{i:02}", struct.pack("<Q", total) + h.encode())


# --- manifest: 1 selector byte (0 = no Content-Type, 1..4 = the served types), then the body
def desc(mt, size=1, **kw):
    d = {"mediaType": mt, "digest": "sha256:" + H, "size": size}
    d.update(kw)
    return d


oci_manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": desc("application/vnd.oci.image.config.v1+json", 7),
    "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", 9, annotations={"a": "b"})],
}
index = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [desc("application/vnd.oci.image.manifest.v1+json", 5,
                       platform={"os": "linux", "architecture": "arm64", "variant": "v8"})],
}
docker = dict(oci_manifest, mediaType="application/vnd.docker.distribution.manifest.v2+json")
for i, (sel, body) in enumerate([
    (0, oci_manifest), (0, index), (0, docker), (4, {"schemaVersion": 2, "manifests": []}),
    (1, {"schemaVersion": 2, "config": oci_manifest["config"]}), (0, {"schemaVersion": 1}), (0, {}),
    (0, {"mediaType": "text/plain"}), (2, {"manifests": [{"digest": "sha256:x", "size": 1}]}),
    (0, dict(oci_manifest, layers=[desc("x", -1)])), (0, "[" * 200), (3, dict(docker, mediaType=None)),
]):
    text = body if isinstance(body, str) else json.dumps(body)
    write("manifest", f"seed-{i:02}", bytes([sel]) + text.encode())


# --- pax
def rec(k, v):
    body = 1 + len(k) + 1 + len(v) + 1
    n = body + 1
    while n != body + len(str(n)):
        n = body + len(str(n))
    return str(n).encode() + b" " + k.encode() + b"=" + v + b"\n"


for i, d in enumerate([
    rec("path", b"a/b"), rec("SCHILY.xattr.user.x", b"\0\n=\xff") + rec("mtime", b"1.5"), b"5 a=b",
    b"99 a=b\n", b"4 =\n", rec("linkpath", b"../x") + b"\0" * 20, b"3 \n", b"18446744073709551617 a=b\n",
]):
    write("pax", f"seed-{i:02}", d)


# --- unpack: 1 selector byte (bit 0: overlay mode), then a layer
def tar(entries, fmt=tarfile.PAX_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for e in entries:
            kind, name = e[0], e[1]
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_600_000_000
            data = b""
            if kind == "file":
                data = e[2]
                ti.size = len(data)
                ti.mode = e[3] if len(e) > 3 else 0o644
            elif kind == "dir":
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
            elif kind == "sym":
                ti.type = tarfile.SYMTYPE
                ti.linkname = e[2]
            elif kind == "hard":
                ti.type = tarfile.LNKTYPE
                ti.linkname = e[2]
            elif kind == "chr":
                ti.type = tarfile.CHRTYPE
                ti.devmajor, ti.devminor = 1, 3
            elif kind == "fifo":
                ti.type = tarfile.FIFOTYPE
            elif kind == "xattr":
                data = e[2]
                ti.size = len(data)
                ti.pax_headers = {"SCHILY.xattr." + k: v for k, v in e[3].items()}
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def zstd(data):
    return subprocess.run(["zstd", "-q", "-c"], input=data, stdout=subprocess.PIPE, check=True).stdout


base = [("dir", "etc/"), ("file", "etc/hostname", b"thaw\n"), ("sym", "bin", "usr/bin"), ("dir", "usr/"),
        ("dir", "usr/bin/"), ("file", "usr/bin/sh", b"#!", 0o4755), ("hard", "usr/bin/ash", "usr/bin/sh"),
        ("fifo", "run.fifo"), ("chr", "dev-null")]
layers = {
    "plain": tar(base),
    "gnu": tar(base + [("file", "d" * 120 + "/" + "f" * 120, b"long")], tarfile.GNU_FORMAT),
    "ustar": tar(base, tarfile.USTAR_FORMAT),
    "whiteouts": tar([("dir", "a/"), ("file", "a/.wh..wh..opq", b""), ("file", "a/keep", b"k"),
                      ("file", ".wh.gone", b""), ("file", "x/.wh.deep", b""), ("file", ".wh..wh.plnk", b"")]),
    "bad-whiteout": tar([("file", ".wh..", b"")]),
    "dotdot": tar([("file", "../evil", b"x")]),
    "deep-dotdot": tar([("dir", "a/"), ("file", "a/../../evil", b"x")]),
    "absolute": tar([("file", "/etc/evil", b"x")]),
    "symlink-escape": tar([("sym", "link", "../outside"), ("file", "link/secret", b"pwned")]),
    "symlink-abs-escape": tar([("sym", "link", "/"), ("file", "link/tmp/evil", b"pwned")]),
    "dir-to-symlink": tar([("dir", "d/"), ("sym", "d", "../outside"), ("file", "d/secret", b"pwned")]),
    "hardlink-outside": tar([("hard", "h", "../outside/secret")]),
    "hardlink-forward": tar([("hard", "h", "later"), ("file", "later", b"x")]),
    "hardlink-symlink": tar([("sym", "s", "../outside/secret"), ("hard", "h", "s"), ("file", "h", b"over")]),
    "whiteout-through-symlink": tar([("sym", "l", "../outside"), ("file", "l/.wh.secret", b"")]),
    "opaque-through-symlink": tar([("sym", "l", "../outside"), ("file", "l/.wh..wh..opq", b"")]),
    "xattrs": tar([("xattr", "x", b"d", {"user.a": "1", "trusted.overlay.redirect": "/etc", "trusted.b": "2"})]),
    "replace": tar([("file", "a", b"1"), ("dir", "a/"), ("file", "a/b", b"2"), ("sym", "a", "b")]),
}
for name, data in layers.items():
    write("unpack", f"{name}-apply", b"\0" + data)
write("unpack", "plain-overlay", b"\1" + layers["plain"])
write("unpack", "whiteouts-overlay", b"\1" + layers["whiteouts"])
write("unpack", "plain-gzip", b"\0" + gzip.compress(layers["plain"], mtime=0))
write("unpack", "hostile-gzip", b"\0" + gzip.compress(layers["symlink-escape"], mtime=0))
write("unpack", "plain-zstd", b"\0" + zstd(layers["plain"]))
write("unpack", "truncated", b"\0" + layers["plain"][:700])
write("unpack", "garbage-after-gzip", b"\0" + gzip.compress(layers["plain"], mtime=0) + b"junk")
write("unpack", "zero-bomb-gzip", b"\0" + gzip.compress(tar([("file", "z", b"\0" * (1 << 20))]), mtime=0))
write("unpack", "empty", b"\0")
write("unpack", "xz-magic", b"\0\xfd7zXZ\0rest")
