"""The node's local images, built without Docker or a registry and imported into containerd.

The pause image is a tiny static C program (sleep, reap children, exit on SIGTERM); the web
image is Debian's static busybox serving its pod name with ``httpd``.  Archives are cached by
content in the podgate cache; every ``up`` imports them (containerd's state is wiped at
``down``), so no pull is ever attempted.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

from podgate_sandbox.binaries import cache_root
from podgate_sandbox.node import oci, render

PAUSE_C = r"""
/* The pod sandbox's process: holds the namespaces, reaps orphans, exits on SIGTERM/SIGINT. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction term = {0}, chld = {0};
    term.sa_handler = stop;
    sigaction(SIGTERM, &term, 0);
    sigaction(SIGINT, &term, 0);
    chld.sa_handler = reap;
    chld.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &chld, 0);
    for (;;) pause();
}
"""

BUSYBOX = Path("/bin/busybox")
#: busybox's httpd as PID 1 ignores SIGTERM: a shell traps it and exits, taking httpd along.
WEB_SCRIPT = (
    'mkdir -p /www && echo "podgate-web $HOSTNAME" > /www/index.html && '
    "trap 'exit 0' TERM INT; httpd -f -p \"${PORT:-80}\" -h /www & wait"
)


def images_dir() -> Path:
    return cache_root() / "images"


def _pause_binary(cache: Path) -> bytes:
    key = hashlib.sha256(PAUSE_C.encode()).hexdigest()[:12]
    binary = cache / f"pause-{key}"
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "pause.c"
            src.write_text(PAUSE_C)
            out = subprocess.run(
                ["gcc", "-static", "-Os", "-s", "-o", str(binary) + ".new", str(src)],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                raise RuntimeError(f"could not compile the pause program: {out.stderr.strip()}")
        Path(str(binary) + ".new").replace(binary)
    return binary.read_bytes()


def pause_spec(binary: bytes) -> oci.ImageSpec:
    return oci.ImageSpec(render.PAUSE_IMAGE, {"pause": oci.File(binary, 0o755)}, entrypoint=["/pause"])


def web_spec(busybox: bytes) -> oci.ImageSpec:
    return oci.ImageSpec(
        render.WEB_IMAGE,
        {"bin/busybox": oci.File(busybox, 0o755)},
        entrypoint=["/bin/sh", "-c", WEB_SCRIPT],
        symlinks={f"bin/{applet}": "busybox" for applet in ("sh", "httpd", "mkdir", "echo", "sleep", "wget")},
        dirs=["tmp", "www"],
    )


def archives(cache: Path | None = None) -> list[Path]:
    """The node's image archives, (re)written when their content changed."""
    cache = cache or images_dir()
    cache.mkdir(parents=True, exist_ok=True)
    specs = [pause_spec(_pause_binary(cache))]
    if BUSYBOX.exists():
        specs.append(web_spec(BUSYBOX.read_bytes()))
    paths = []
    for spec in specs:
        data = oci.oci_archive(spec)
        path = cache / (spec.name.rsplit("/", 1)[-1].replace(":", "-") + ".oci.tar")
        if not path.exists() or path.read_bytes() != data:
            path.with_suffix(".new").write_bytes(data)
            path.with_suffix(".new").replace(path)
        paths.append(path)
    return paths


def import_all(containerd_socket: Path, ctr: str = "ctr") -> None:
    """Import every archive into containerd's CRI namespace, unpacked for the CRI snapshotter."""
    for path in archives():
        out = subprocess.run(
            [
                ctr,
                "--address",
                str(containerd_socket),
                "-n",
                "k8s.io",
                "images",
                "import",
                "--snapshotter",
                "overlayfs",
                str(path),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if out.returncode != 0:
            raise RuntimeError(f"ctr images import {path.name} failed: {out.stderr.strip()}")
