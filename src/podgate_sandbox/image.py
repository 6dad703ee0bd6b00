"""``make image``: the repo's Dockerfile built into ``dist/podgate-image.tar`` (an OCI archive)
without a Docker engine or a registry.

No registry answers here, so ``python:3.11-slim`` cannot be pulled: the base is made from Debian's
own packages with mmdebstrap (minbase, python3 and pip, from the host's apt sources; the
EXTERNALLY-MANAGED marker removed, as the Dockerfile installs with pip), cached by its recipe, and
handed to the Dockerfile as its ``BASE``.  buildah builds with ``--storage-driver vfs`` (on every
command: the variable alone is not enough here) and ``--isolation chroot``.  pip inside the build
reaches PyPI through this machine's TLS proxy, which only the host's CA bundle trusts: the bundle
is mounted over the base's for the build's RUN steps, and is in no layer.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from podgate_sandbox.binaries import cache_root

ROOT = Path(__file__).resolve().parents[2]
TAG = "localhost/podgate:0.1.0"
BASE_PACKAGES = ("python3", "python3-pip", "ca-certificates")
APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
BUILDAH = ["buildah", "--storage-driver", "vfs"]


class ImageError(RuntimeError):
    """The image cannot be built; the message says what to do."""


def _run(argv: list[str], what: str, cwd: Path | None = None) -> None:
    out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-15:])
        raise ImageError(f"{what} failed ({out.returncode}):\n{tail}")


def base_image() -> str:
    """The Debian base, tagged by its recipe: built once, then taken from buildah's storage."""
    recipe = f"bookworm minbase {' '.join(BASE_PACKAGES)} no-externally-managed"
    tag = f"localhost/podgate-base:{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    have = subprocess.run([*BUILDAH, "inspect", tag], capture_output=True, check=False)
    if have.returncode == 0:
        return tag
    work = cache_root() / "images" / "podgate-base"
    work.mkdir(parents=True, exist_ok=True)
    rootfs = work / "rootfs.tar"
    _run(
        [
            "mmdebstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            '--customize-hook=rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',
            "bookworm",
            str(rootfs),
            str(APT_SOURCES),  # the host's own mirrors: no mirror name written here
        ],
        "mmdebstrap (the Debian base)",
    )
    (work / "Containerfile").write_text("FROM scratch\nADD rootfs.tar /\n")
    _run(
        [*BUILDAH, "bud", "--isolation", "chroot", "-t", tag, "-f", "Containerfile", "."], "base image", work
    )
    rootfs.unlink()
    return tag


def build(out: Path) -> Path:
    """The Dockerfile's image on the Debian base, written to ``out`` as an OCI archive."""
    missing = [t for t in ("buildah", "mmdebstrap") if shutil.which(t) is None]
    if missing:
        raise ImageError(f"missing {', '.join(missing)}: apt-get install {' '.join(missing)}")
    base = base_image()
    _run(
        [
            *BUILDAH,
            "bud",
            "--isolation",
            "chroot",
            "--build-arg",
            f"BASE={base}",
            "--volume",
            f"{HOST_CA}:{HOST_CA}:ro",
            "-t",
            TAG,
            "-f",
            "Dockerfile",
            ".",
        ],
        "buildah bud (the Dockerfile)",
        ROOT,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    # The archive names the image in full: an importer that reads a short name (``podgate:0.1.0``)
    # as Docker Hub's (containerd's CRI does) would never find it.
    _run([*BUILDAH, "push", TAG, f"oci-archive:{out}:{TAG}"], "buildah push")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m podgate_sandbox.image", description=__doc__)
    p.add_argument("--out", type=Path, default=ROOT / "dist" / "podgate-image.tar")
    args = p.parse_args(argv)
    try:
        print(build(args.out))
    except ImageError as e:
        print(f"make image: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
