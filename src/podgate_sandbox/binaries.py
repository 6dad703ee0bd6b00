"""Where the sandbox keeps Kubernetes binaries, whether they run, and how a long build reports.

No kube-apiserver ships on PyPI and no Docker engine runs here, so the sandbox builds each release
it runs from the Go module proxy (:mod:`podgate_sandbox.gobuild`) into a per-version cache
directory (``~/.cache/podgate/kubernetes/<version>``): the build happens once per machine and
release, and is redone only when a binary is missing, does not run, or came from an older recipe.

(Until session 8 the default was Kubernetes 1.20.2 built from Debian's source package; that
recipe went with the switch to current releases: nothing supported ran it any more.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

SERVER_BINARIES = ("kube-apiserver", "kube-controller-manager")
#: The real node's binaries (``--node kubelet``).
NODE_BINARIES = ("kubelet", "kube-proxy")
#: What the default sandbox (node agent) needs.
ALL_BINARIES = (*SERVER_BINARIES, "kubectl")


def cache_root() -> Path:
    """XDG cache directory for podgate, honouring ``XDG_CACHE_HOME``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "podgate"


@dataclass(frozen=True)
class KubeBinaries:
    """Where the cached binaries of one Kubernetes version live, and the recipe that built
    them (:mod:`podgate_sandbox.gobuild`'s)."""

    root: Path
    version: str
    recipe: str
    #: the binaries the recipe builds: a stale recipe stamp makes them all broken
    built: tuple[str, ...]

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    def path(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def stamp(self) -> Path:
        return self.root / "recipe"

    def broken(self, names: Sequence[str] = ALL_BINARIES) -> list[str]:
        """Names among ``names`` of binaries that are missing, do not answer ``--version``, or
        were built by an older recipe."""
        stale = not self.stamp.exists() or self.stamp.read_text().strip() != self.recipe
        return [
            name
            for name in names
            if not _runs(self.path(name), self.version) or (stale and name in self.built)
        ]


def _runs(binary: Path, version: str) -> bool:
    if not binary.is_file() or not os.access(binary, os.X_OK):
        return False
    args = [str(binary), "version", "--client"] if binary.name == "kubectl" else [str(binary), "--version"]
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return False
    return out.returncode == 0 and version in (out.stdout + out.stderr)


class Progress:
    """Prints each step with its elapsed time, and a heartbeat while a long step runs."""

    def __init__(self, stream: TextIO | None = None, heartbeat: float = 15.0) -> None:
        self._stream = stream or sys.stderr
        self._heartbeat = heartbeat
        self._t0 = time.monotonic()

    def say(self, message: str) -> None:
        elapsed = time.monotonic() - self._t0
        print(f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] {message}", file=self._stream, flush=True)

    def run(self, step: str, args: Sequence[str], **kwargs: object) -> float:
        """Run a command for a step; on failure raise with the tail of its output.  Returns the
        step's duration in seconds."""
        self.say(f"{step} ...")
        start = time.monotonic()
        done = threading.Event()
        last_line = [""]

        def beat() -> None:
            while not done.wait(self._heartbeat):
                self.say(f"  {step}: still running ({time.monotonic() - start:.0f}s) {last_line[0][:100]}")

        ticker = threading.Thread(target=beat, daemon=True)
        ticker.start()
        lines: list[str] = []
        try:
            proc = subprocess.Popen(
                list(args),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                **kwargs,  # type: ignore[call-overload]
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.rstrip())
                last_line[0] = line.strip()
                del lines[:-40]
            code = proc.wait()
        finally:
            done.set()
        if code != 0:
            tail = "\n".join(lines[-20:])
            raise RuntimeError(f"{step} failed (exit {code}):\n{tail}")
        elapsed = time.monotonic() - start
        self.say(f"{step}: done in {elapsed:.0f}s")
        return elapsed
