"""OCI image archives written by hand: no Docker engine, no registry, no builder needed.

``ctr images import`` takes an OCI image layout in a tar.  The node's images are a handful of
static files (a pause binary, busybox), so one uncompressed layer built with :mod:`tarfile` is
enough.  Everything is deterministic (zero mtimes, root owner), so the same inputs give the
same digests and a cached archive is recognised as current.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
#: containerd's own annotation for the full image name: ``ctr images import`` uses it as is.
NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class File:
    data: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class ImageSpec:
    """One image: its full name, its files, symlinks and directories, and its process."""

    name: str
    files: Mapping[str, File]
    entrypoint: Sequence[str]
    cmd: Sequence[str] = ()
    symlinks: Mapping[str, str] = field(default_factory=dict)
    dirs: Sequence[str] = ()
    env: Sequence[str] = ("PATH=/bin:/usr/bin:/sbin:/usr/sbin",)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def layer_tar(spec: ImageSpec) -> bytes:
    """The image's one layer: parent directories first, then files and symlinks, sorted."""
    paths = [*spec.files, *spec.symlinks, *spec.dirs]
    parents = sorted(
        {"/".join(p.strip("/").split("/")[:i]) for p in paths for i in range(1, p.strip("/").count("/") + 1)}
        | {d.strip("/") for d in spec.dirs}
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for d in parents:
            tar.addfile(_info(d, tarfile.DIRTYPE, 0o755))
        for path in sorted(spec.files):
            f = spec.files[path]
            tar.addfile(_info(path.strip("/"), tarfile.REGTYPE, f.mode, len(f.data)), io.BytesIO(f.data))
        for path in sorted(spec.symlinks):
            tar.addfile(_info(path.strip("/"), tarfile.SYMTYPE, 0o777, link=spec.symlinks[path]))
    return buf.getvalue()


def oci_archive(spec: ImageSpec) -> bytes:
    """The image as an OCI layout in a tar, named for ``ctr -n k8s.io images import``."""
    layer = layer_tar(spec)
    config = _json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": list(spec.entrypoint),
                **({"Cmd": list(spec.cmd)} if spec.cmd else {}),
                "Env": list(spec.env),
                "WorkingDir": "/",
            },
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        }
    )
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": LAYER, "digest": _digest(layer), "size": len(layer)}],
        }
    )
    index = _json(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": MANIFEST,
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "annotations": {
                        NAME_ANNOTATION: spec.name,
                        REF_ANNOTATION: spec.name.rsplit(":", 1)[-1],
                    },
                }
            ],
        }
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(_info("blobs", tarfile.DIRTYPE, 0o755))
        tar.addfile(_info("blobs/sha256", tarfile.DIRTYPE, 0o755))
        for blob in (layer, config, manifest):
            name = "blobs/sha256/" + _digest(blob).split(":", 1)[1]
            tar.addfile(_info(name, tarfile.REGTYPE, 0o644, len(blob)), io.BytesIO(blob))
        for name, data in (("oci-layout", _json({"imageLayoutVersion": "1.0.0"})), ("index.json", index)):
            tar.addfile(_info(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    return buf.getvalue()


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
