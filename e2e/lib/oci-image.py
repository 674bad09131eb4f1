#!/usr/bin/env python3
"""Write a one-layer OCI image archive (the layout `ctr images import` reads)
from local files, with nothing pulled from a registry.

  oci-image.py --name docker.io/relaycache/relaycache:0.1.0 --out img.tar \
      --user 65532:65532 --entrypoint /usr/local/bin/relaycache --cmd serve \
      --file /path/to/binary:/usr/local/bin/relaycache:0755 \
      --link busybox:/bin/sh --dir /tmp:1777 --env PATH=/usr/local/bin:/bin

The layer is an uncompressed tar whose entries are owned by root and dated
1970, so the same inputs give the same digests. Parent directories are added
as 0755. The archive holds oci-layout, index.json (the manifest annotated
with io.containerd.image.name, the name ctr tags it with) and blobs/sha256/.
"""
import argparse
import hashlib
import io
import json
import os
import tarfile


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--user", default="65532:65532")
    ap.add_argument("--entrypoint", action="append", default=[])
    ap.add_argument("--cmd", action="append", default=[])
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--workdir", default="/")
    ap.add_argument("--file", action="append", default=[], help="SRC:DEST[:MODE]")
    ap.add_argument("--link", action="append", default=[], help="TARGET:DEST (symlink)")
    ap.add_argument("--dir", action="append", default=[], help="DEST[:MODE]")
    a = ap.parse_args()

    entries = {}  # path (no leading /) -> (TarInfo, bytes or None)

    def add_parents(path):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in entries:
                ti = tarfile.TarInfo(d)
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                entries[d] = (ti, None)

    for spec in a.dir:
        dest, _, mode = spec.partition(":")
        dest = dest.strip("/")
        add_parents(dest + "/x")
        ti = tarfile.TarInfo(dest)
        ti.type, ti.mode = tarfile.DIRTYPE, int(mode or "755", 8)
        entries[dest] = (ti, None)
    for spec in a.file:
        src, dest, *mode = spec.split(":")
        dest = dest.strip("/")
        with open(os.path.realpath(src), "rb") as f:
            data = f.read()
        add_parents(dest)
        ti = tarfile.TarInfo(dest)
        ti.size = len(data)
        ti.mode = int(mode[0], 8) if mode else 0o644
        entries[dest] = (ti, data)
    for spec in a.link:
        target, dest = spec.split(":")
        dest = dest.strip("/")
        add_parents(dest)
        ti = tarfile.TarInfo(dest)
        ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, target, 0o777
        entries[dest] = (ti, None)

    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(entries):
            ti, data = entries[path]
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            ti.mtime = 0
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    layer = layer_buf.getvalue()

    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": a.user,
            "Env": a.env,
            "Entrypoint": a.entrypoint or None,
            "Cmd": a.cmd or None,
            "WorkingDir": a.workdir,
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]},
        "history": [{"created_by": "e2e/lib/oci-image.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": sha256(layer),
            "size": len(layer),
        }],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    tag = a.name.rsplit(":", 1)[1] if ":" in a.name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(manifest_bytes),
            "size": len(manifest_bytes),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": a.name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }

    def add_bytes(tar, name, data):
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
        tar.addfile(ti, io.BytesIO(data))

    tmp_out = a.out + ".partial"
    with tarfile.open(tmp_out, mode="w") as tar:
        add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add_bytes(tar, "index.json", json.dumps(index).encode())
        for blob in (layer, config_bytes, manifest_bytes):
            add_bytes(tar, "blobs/sha256/" + sha256(blob).split(":")[1], blob)
    os.replace(tmp_out, a.out)
    print(f"{a.name} {sha256(manifest_bytes)} ({len(layer) // 1024} KiB)")


if __name__ == "__main__":
    main()
