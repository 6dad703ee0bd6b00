"""``make image``: the repo's Dockerfile built into ``dist/podgate-image.tar`` (an OCI archive)
without a Docker engine or a registry.

No registry answers here, so no base image can be pulled: both of the Dockerfile's bases are made
from Debian's own packages with mmdebstrap (minbase, from the host's apt sources) at the exact
versions ``image/debian-runtime.lock`` and ``image/debian-build.lock`` record — every package
of each base, checked after the build, so a mirror that moved on fails the build with the
difference instead of changing the image.  The runtime base is Python and CA certificates only
(no pip); the build base adds pip.  Each is cached by its lock's content and handed to the
Dockerfile as ``BASE`` / ``BUILD_BASE``.  ``make image-lock`` records the versions the mirror
has now (review the diff), and pins the Python dependencies with hashes (pip-tools).

buildah builds with ``--storage-driver vfs`` (on every command: the variable alone is not enough
here) and ``--isolation chroot``.  pip inside the build reaches the package index through this
machine's TLS proxy, which only the host's CA bundle trusts: the bundle is mounted over the
base's for the build's RUN steps, and is in no layer.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from podgate_sandbox.binaries import cache_root

ROOT = Path(__file__).resolve().parents[2]
TAG = "localhost/podgate:0.1.0"
LOCKS = ROOT / "image"
#: the packages asked for; the lock pins them and everything they pull in
BASES: Mapping[str, tuple[str, ...]] = {
    "runtime": ("python3", "ca-certificates"),
    "build": ("python3", "ca-certificates", "python3-pip"),
}
SUITE = "bookworm"
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


def lock_path(kind: str) -> Path:
    return LOCKS / f"debian-{kind}.lock"


def parse_lock(text: str) -> dict[str, str]:
    """``name=version`` lines (``#`` comments) → {name: version}."""
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("=")
            out[name] = version
    return out


def format_lock(kind: str, packages: Mapping[str, str]) -> str:
    head = (
        f"# Every Debian package of the image's {kind} base ({SUITE} minbase + "
        f"{' '.join(BASES[kind])}), at the version the image is built from.\n"
        "# Written by `make image-lock`; `make image` fails if the mirror delivers anything else.\n"
    )
    return head + "".join(f"{n}={packages[n]}\n" for n in sorted(packages))


def lock_difference(want: Mapping[str, str], got: Mapping[str, str]) -> list[str]:
    """What a built base has that its lock does not say (empty: it is the locked base)."""
    out = []
    for name in sorted(set(want) | set(got)):
        if name not in got:
            out.append(f"{name} {want[name]}: missing")
        elif name not in want:
            out.append(f"{name} {got[name]}: not in the lock")
        elif want[name] != got[name]:
            out.append(f"{name}: {got[name]} instead of {want[name]}")
    return out


def base_image(kind: str, relock: bool = False) -> str:
    """The ``kind`` base (runtime or build) at its locked versions: built once, then taken from
    buildah's storage by the lock's hash.  ``relock``: build it from what the mirror has now and
    write the lock."""
    path = lock_path(kind)
    text = "" if relock or not path.exists() else path.read_text()
    lock = parse_lock(text)
    if not lock and not relock:
        raise ImageError(f"{path} is missing: run `make image-lock`")
    tag = f"localhost/podgate-{kind}-base:{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    if (
        not relock
        and subprocess.run([*BUILDAH, "inspect", tag], capture_output=True, check=False).returncode == 0
    ):
        return tag
    work = cache_root() / "images" / f"podgate-{kind}-base"
    work.mkdir(parents=True, exist_ok=True)
    rootfs, manifest = work / "rootfs.tar", work / "packages.txt"
    manifest.unlink(missing_ok=True)
    include = [f"{p}={lock[p]}" if p in lock else p for p in BASES[kind]]
    _run(
        [
            "mmdebstrap",
            "--variant=minbase",
            f"--include={','.join(include)}",
            # what was installed, read from the root's own dpkg database
            f'--customize-hook=dpkg-query --admindir="$1/var/lib/dpkg" -W '
            f"-f='${{Package}}=${{Version}}\\n' > {manifest}",
            SUITE,
            str(rootfs),
            str(APT_SOURCES),  # the host's own mirrors: no mirror name written here
        ],
        f"mmdebstrap (the Debian {kind} base)",
    )
    got = parse_lock(manifest.read_text())
    if relock:
        path.write_text(format_lock(kind, got))
        text = path.read_text()
        tag = f"localhost/podgate-{kind}-base:{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    else:
        wrong = lock_difference(lock, got)
        if wrong:
            rootfs.unlink()
            raise ImageError(
                f"the Debian mirror's {kind} base differs from {path.name} ({len(wrong)} packages: "
                f"{'; '.join(wrong[:10])}); review and run `make image-lock`"
            )
    (work / "Containerfile").write_text("FROM scratch\nADD rootfs.tar /\n")
    _run(
        [*BUILDAH, "bud", "--isolation", "chroot", "-t", tag, "-f", "Containerfile", "."],
        f"{kind} base image",
        work,
    )
    rootfs.unlink()
    return tag


def lock_python(tools: Path) -> None:
    """Pin podgate's dependencies (both cloud extras) and its wheel's build requirements, with
    every file's hash, in ``image/`` (pip-tools in a venv of its own, ``tools``)."""
    if not (tools / "bin" / "pip-compile").exists():
        _run([sys.executable, "-m", "venv", str(tools)], "a venv for pip-tools")
        _run([str(tools / "bin" / "pip"), "install", "-q", "pip-tools"], "pip install pip-tools")
    common = ["--quiet", "--generate-hashes", "--allow-unsafe", "--strip-extras"]
    common += ["--no-emit-index-url", "--no-emit-find-links"]  # no index or host names in the repo
    compile_ = str(tools / "bin" / "pip-compile")
    _run(
        [
            compile_,
            *common,
            "--extra",
            "aws",
            "--extra",
            "alibaba",
            "-o",
            "image/requirements.txt",
            "pyproject.toml",
        ],
        "pip-compile (podgate's dependencies)",
        ROOT,
    )
    _run(
        [compile_, *common, "-o", "image/build-requirements.txt", "image/build-requirements.in"],
        "pip-compile (the wheel's build requirements)",
        ROOT,
    )


def build(out: Path) -> Path:
    """The Dockerfile's image on the Debian base, written to ``out`` as an OCI archive."""
    missing = [t for t in ("buildah", "mmdebstrap") if shutil.which(t) is None]
    if missing:
        raise ImageError(f"missing {', '.join(missing)}: apt-get install {' '.join(missing)}")
    base, build_base = base_image("runtime"), base_image("build")
    _run(
        [
            *BUILDAH,
            "bud",
            "--isolation",
            "chroot",
            "--build-arg",
            f"BASE={base}",
            "--build-arg",
            f"BUILD_BASE={build_base}",
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
    p.add_argument(
        "--lock",
        action="store_true",
        help="record the Debian bases' packages as the mirror has them now and pin the Python "
        "dependencies with hashes (image/), instead of building",
    )
    args = p.parse_args(argv)
    try:
        if args.lock:
            lock_python(cache_root() / "pip-tools")
            for kind in BASES:
                print(base_image(kind, relock=True))
            return 0
        print(build(args.out))
    except ImageError as e:
        print(f"make image: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
