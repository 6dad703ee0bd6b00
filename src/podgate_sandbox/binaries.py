"""Kubernetes control-plane binaries for the sandbox, built from Debian's source package.

No kube-apiserver ships on PyPI and no Docker engine runs here, so the sandbox builds
kube-apiserver and kube-controller-manager from Debian's ``kubernetes`` source package (the
full 1.20.2 tree with vendor/) and takes kubectl from Debian's matching ``kubernetes-client``
binary package.  The real node's kubelet and kube-proxy come from the same tree with the same
recipe (``podgate sandbox up --node kubelet``).  Everything lands in a per-version cache
directory so the multi-minute build happens once per machine, and is redone only when a binary
is missing or does not run.

The deb-src entry is derived from the machine's own apt sources and handed to apt privately
(its own sources file and lists directory), so the machine's apt state is untouched and no
mirror host name is ever written into the repository.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

SOURCE_PACKAGE = "kubernetes"
CLIENT_PACKAGE = "kubernetes-client"
#: The upstream version inside Debian bookworm's package; the cache is keyed by it.
KUBE_VERSION = "1.20.2"
SERVER_BINARIES = ("kube-apiserver", "kube-controller-manager")
#: The real node's binaries (``--node kubelet``): same tree, same recipe, same cache.
NODE_BINARIES = ("kubelet", "kube-proxy")
BUILT_BINARIES = (*SERVER_BINARIES, *NODE_BINARIES)
#: Bumped whenever the build recipe changes what the binaries are; older caches are rebuilt.
RECIPE = 2
#: The tree vendors modern-go/reflect2 1.0.1, whose map iteration faults under Go ≥ 1.18 (seen:
#: kube-apiserver dies with SIGSEGV in mapiterinit when a mutating webhook returns a patch).
#: Debian packages 1.0.2, which fixes it; it replaces the vendored copy before the build.
REFLECT2_PACKAGE = "golang-github-modern-go-reflect2-dev"
#: What the default sandbox (node agent) needs.
ALL_BINARIES = (*SERVER_BINARIES, "kubectl")
#: The tree's Makefile builds with whatever ``go`` comes first on PATH; the recipe was verified
#: with Debian's golang-go (1.19), not the newer Go a machine may put first (/usr/local/go).
DEBIAN_GO_BIN = Path("/usr/lib/go-1.19/bin")


def cache_root() -> Path:
    """XDG cache directory for podgate, honouring ``XDG_CACHE_HOME``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "podgate"


@dataclass(frozen=True)
class KubeBinaries:
    """Where the cached binaries of one Kubernetes version live, and the recipe that built
    them (the Debian one here; :mod:`podgate_sandbox.gobuild` for releases from Go modules)."""

    root: Path
    version: str = KUBE_VERSION
    recipe: str = str(RECIPE)
    #: the binaries the recipe builds: a stale recipe stamp makes them all broken
    built: tuple[str, ...] = BUILT_BINARIES

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


def default_binaries() -> KubeBinaries:
    return KubeBinaries(cache_root() / "kubernetes" / KUBE_VERSION)


def _runs(binary: Path, version: str) -> bool:
    if not binary.is_file() or not os.access(binary, os.X_OK):
        return False
    args = [str(binary), "version", "--client"] if binary.name == "kubectl" else [str(binary), "--version"]
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return False
    return out.returncode == 0 and version in (out.stdout + out.stderr)


def deb_src_sources(sources_list: str, deb822_files: Sequence[str]) -> str:
    """Turn the machine's ``deb`` entries into ``deb-src`` entries (pure, table-tested).

    Accepts both the one-line format (``/etc/apt/sources.list``) and deb822 ``.sources``
    files; returns deb822 text.  Entries already of type deb-src are kept as they are.
    """
    stanzas: list[str] = []
    for line in sources_list.splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.match(r"^deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
        if not m:
            continue
        options, uri, suite, components = m.groups()
        stanza = ["Types: deb-src", f"URIs: {uri}", f"Suites: {suite}"]
        if components:
            stanza.append(f"Components: {components}")
        if options:
            for opt in options.strip("[] \t").split():
                key, _, value = opt.partition("=")
                if key == "signed-by":
                    stanza.append(f"Signed-By: {value}")
                elif key == "trusted":
                    stanza.append(f"Trusted: {value}")
        stanzas.append("\n".join(stanza))
    for text in deb822_files:
        for block in re.split(r"\n\s*\n", text):
            fields = [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
            types = next((ln for ln in fields if ln.lower().startswith("types:")), None)
            if types is None or "deb" not in types.split(":", 1)[1].split():
                continue
            enabled = next((ln for ln in fields if ln.lower().startswith("enabled:")), "")
            if enabled.split(":", 1)[-1].strip().lower() == "no":
                continue
            rest = [ln for ln in fields if not ln.lower().startswith("types:")]
            stanzas.append("\n".join(["Types: deb-src", *rest]))
    return "\n\n".join(stanzas) + "\n"


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


def ensure_binaries(binaries: KubeBinaries | None = None, progress: Progress | None = None) -> KubeBinaries:
    """Build or fetch whatever is missing or broken in the cache; idempotent and cheap when cached."""
    binaries = binaries or default_binaries()
    progress = progress or Progress()
    broken = binaries.broken((*ALL_BINARIES, *NODE_BINARIES))
    if not broken:
        progress.say(f"Kubernetes {KUBE_VERSION} binaries cached in {binaries.bin_dir}")
        return binaries
    progress.say(f"Kubernetes {KUBE_VERSION}: need {', '.join(broken)}")
    work = binaries.root / "work"
    apt_args = _private_apt(work, progress)
    binaries.bin_dir.mkdir(parents=True, exist_ok=True)
    if "kubectl" in broken:
        _fetch_kubectl(binaries, work, apt_args, progress)
    to_build = [name for name in BUILT_BINARIES if name in broken]
    if to_build:
        _build(binaries, to_build, work, apt_args, progress)
    binaries.stamp.write_text(f"{RECIPE}\n")
    still = binaries.broken((*ALL_BINARIES, *NODE_BINARIES))
    if still:
        raise RuntimeError(f"after the build these binaries still do not run: {', '.join(still)}")
    # The source tarball stays (a rebuild then needs no download); the tree and Go's build
    # cache are large and only needed again if a binary breaks.
    shutil.rmtree(work / "gopath", ignore_errors=True)
    shutil.rmtree(work / "gocache", ignore_errors=True)
    progress.say(f"Kubernetes {KUBE_VERSION} binaries ready in {binaries.bin_dir}")
    return binaries


def _private_apt(work: Path, progress: Progress) -> list[str]:
    """A private apt configuration with deb-src entries; returns the apt-get option arguments."""
    apt_dir = work / "apt"
    lists = apt_dir / "lists"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    etc = Path("/etc/apt")
    one_line = (etc / "sources.list").read_text() if (etc / "sources.list").exists() else ""
    deb822 = [p.read_text() for p in sorted((etc / "sources.list.d").glob("*.sources"))]
    one_line += "".join(p.read_text() for p in sorted((etc / "sources.list.d").glob("*.list")))
    sources = apt_dir / "deb-src.sources"
    sources.write_text(deb_src_sources(one_line, deb822))
    parts = apt_dir / "sources.list.d"
    parts.mkdir(exist_ok=True)
    for stale in parts.iterdir():
        stale.unlink()
    shutil.copy(sources, parts / "deb-src.sources")
    args = [
        "-o",
        f"Dir::Etc::sourcelist={apt_dir / 'empty.list'}",
        "-o",
        f"Dir::Etc::sourceparts={parts}",
        "-o",
        f"Dir::State::Lists={lists}",
        "-o",
        "APT::Sandbox::User=root",
    ]
    (apt_dir / "empty.list").write_text("")
    # Binary entries are kept too (deb822 copies above are deb-src only), so also add the
    # machine's own binary sources for apt-get download of kubernetes-client.
    for src in sorted((etc / "sources.list.d").glob("*.sources")):
        shutil.copy(src, parts / src.name)
    if one_line.strip():
        (parts / "machine.list").write_text(one_line)
    progress.run("apt-get update (private lists with deb-src)", ["apt-get", *args, "-q", "update"])
    return args


def _fetch_kubectl(binaries: KubeBinaries, work: Path, apt_args: list[str], progress: Progress) -> None:
    dl = work / "client"
    shutil.rmtree(dl, ignore_errors=True)
    dl.mkdir(parents=True)
    progress.run(
        "apt-get download kubernetes-client", ["apt-get", *apt_args, "download", CLIENT_PACKAGE], cwd=dl
    )
    deb = next(dl.glob("*.deb"))
    progress.run("unpack kubernetes-client", ["dpkg-deb", "-x", str(deb), str(dl / "root")])
    shutil.copy(dl / "root" / "usr" / "bin" / "kubectl", binaries.path("kubectl"))
    binaries.path("kubectl").chmod(0o755)
    shutil.rmtree(dl, ignore_errors=True)


def _apply_debian_patches(src: Path, tree: Path, progress: Progress) -> None:
    """Debian's own patches to the tree (a CVE fix among them), in their series order."""
    debian = next(src.glob("*.debian.tar.*"))
    unpacked = src / "debian-unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    unpacked.mkdir()
    progress.run("unpack Debian's packaging", ["tar", "-xf", str(debian), "-C", str(unpacked)])
    patches = unpacked / "debian" / "patches"
    series = (patches / "series").read_text().split() if (patches / "series").exists() else []
    for name in series:
        progress.run(
            f"apply Debian patch {name}", ["patch", "-p1", "-N", "-i", str(patches / name)], cwd=tree
        )
    shutil.rmtree(unpacked, ignore_errors=True)


def _replace_reflect2(work: Path, tree: Path, apt_args: list[str], progress: Progress) -> None:
    dl = work / "reflect2"
    shutil.rmtree(dl, ignore_errors=True)
    dl.mkdir(parents=True)
    progress.run(
        f"apt-get download {REFLECT2_PACKAGE}", ["apt-get", *apt_args, "download", REFLECT2_PACKAGE], cwd=dl
    )
    deb = next(dl.glob("*.deb"))
    progress.run(f"unpack {REFLECT2_PACKAGE}", ["dpkg-deb", "-x", str(deb), str(dl / "root")])
    source = dl / "root" / "usr" / "share" / "gocode" / "src" / "github.com" / "modern-go" / "reflect2"
    vendored = tree / "vendor" / "github.com" / "modern-go" / "reflect2"
    shutil.rmtree(vendored)
    shutil.copytree(source, vendored, ignore=shutil.ignore_patterns("*_test.go", "test*"))
    shutil.rmtree(dl, ignore_errors=True)
    progress.say("replaced vendored modern-go/reflect2 with Debian's 1.0.2 (Go 1.19 map iteration fix)")


def _build(
    binaries: KubeBinaries, names: Sequence[str], work: Path, apt_args: list[str], progress: Progress
) -> None:
    src = work / "source"
    tree = work / "gopath" / "src" / "k8s.io" / "kubernetes"
    if not any(src.glob("*.orig.tar.*")):
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        progress.run(
            "apt-get source --download-only kubernetes (about 34 MB)",
            ["apt-get", *apt_args, "source", "--download-only", SOURCE_PACKAGE],
            cwd=src,
        )
    orig = next(src.glob("*.orig.tar.*"))
    shutil.rmtree(work / "gopath", ignore_errors=True)
    tree.mkdir(parents=True)
    progress.run("unpack the source tree", ["tar", "-xf", str(orig), "-C", str(tree), "--strip-components=1"])
    _apply_debian_patches(src, tree, progress)
    _replace_reflect2(work, tree, apt_args, progress)
    env = {
        **os.environ,
        "GOPATH": str(work / "gopath"),
        "GOCACHE": str(work / "gocache"),
        "CGO_ENABLED": "0",
    }
    if (DEBIAN_GO_BIN / "go").exists():
        env["PATH"] = f"{DEBIAN_GO_BIN}:{env.get('PATH', '')}"
        env.pop("GOROOT", None)
        env.pop("GOTOOLCHAIN", None)
    shutil.rmtree(tree / "_output", ignore_errors=True)
    progress.run(
        f"go build {' '.join(names)} (about 4 minutes per pair on 2 cores)",
        ["make", "WHAT=" + " ".join(f"cmd/{b}" for b in names)],
        cwd=tree,
        env=env,
    )
    for name in names:
        built = tree / "_output" / "bin" / name
        tmp = binaries.path(name).with_suffix(".new")
        shutil.copy(built, tmp)
        tmp.chmod(0o755)
        tmp.replace(binaries.path(name))
