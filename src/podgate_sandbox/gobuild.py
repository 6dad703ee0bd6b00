"""Kubernetes releases built from the Go module proxy, and which build serves a requested version.

k8s.io/kubernetes requires its staging modules (k8s.io/api, client-go, apiserver, …) at v0.0.0
and points them into its own tree with ``replace`` lines, which a module depending on it does not
inherit.  So the build writes a go.mod of its own: it requires ``k8s.io/kubernetes vX.Y.Z`` and
replaces every staging module, the list read from that release's go.mod, with its published
``v0.Y.Z`` (as kubernetes/autoscaler's cluster-autoscaler does), copies the release's ``go`` and
``godebug`` lines (they set the binaries' GODEBUG defaults), names the five programs as ``tool``
lines so ``go mod tidy`` resolves and downloads what they import, and runs ``go build`` for each,
with the version stamped through ldflags as upstream's hack/lib/version.sh does.  Upstream's
choices are kept: the control plane, kube-proxy and kubectl static (``CGO_ENABLED=0``), the
kubelet with cgo; ``-trimpath``, ``-s -w`` and the tags ``selinux,notest,grpcnotrace``.

The machine's Go must be at least the release's ``go`` line: ``GOTOOLCHAIN=local`` keeps the go
command from fetching another toolchain.  Downloads go through the go command and whatever
module proxy the environment configures (nothing here names one).

The pure part (go.mod parsing and generation, ldflags, picking a release) is unit-tested; the
rest runs ``go``.  Binaries are cached per version (``~/.cache/podgate/kubernetes/<version>``)
and rebuilt only when missing or broken.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from podgate_sandbox.binaries import KubeBinaries, Progress, cache_root

MODULE = "k8s.io/kubernetes"
#: The sandbox's default release: the newest minor verified here (its newest patch the proxy
#: serves).  A pinned minor, not "latest": a new upstream minor would otherwise change what
#: ``make test`` runs, and cost a 35-minute build, on the day it appears.
NEWEST_RELEASE = "1.37"
#: The oldest supported minor: the oldest still in a major cloud's standard support (GKE's 1.34,
#: December 2026; README says why).  ``make test`` runs a compatibility subset on it.
OLDEST_RELEASE = "1.34"
#: What a release from Go modules provides, in build order (the control plane first: the
#: default sandbox needs only it and kubectl).
GO_BINARIES = ("kube-apiserver", "kube-controller-manager", "kubectl", "kube-proxy", "kubelet")
#: Built with CGO_ENABLED=0, as upstream's KUBE_STATIC_BINARIES; the kubelet is built with cgo.
STATIC_BINARIES = frozenset({"kube-apiserver", "kube-controller-manager", "kubectl", "kube-proxy"})
#: upstream's tags for a non-debug build (hack/lib/golang.sh)
BUILD_TAGS = "selinux,notest,grpcnotrace"
#: Bumped whenever the recipe changes what the binaries are; older caches are rebuilt.
RECIPE = "gomod-1"
#: the generated main module's path (never published)
BUILD_MODULE = "podgate-sandbox/kubernetes"
#: where the polyglot machines keep a current Go; first choice over whatever PATH finds
PREFERRED_GO = Path("/usr/local/go/bin/go")
#: the oldest go directive that knows ``tool`` lines (every served release has a newer one)
TOOL_DIRECTIVE_GO = (1, 24)


class GoBuildError(RuntimeError):
    """A release cannot be built here; the message says why."""


# -- pure ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseModule:
    """What the build copies from a release's own go.mod."""

    go: str
    godebug: tuple[str, ...]
    #: staging modules: those the release replaces with a directory under ./staging/
    staging: tuple[str, ...]


def _directives(text: str) -> list[tuple[str, str]]:
    """(verb, rest) for every directive of a go.mod, blocks flattened; comments dropped."""
    out: list[tuple[str, str]] = []
    block: str | None = None
    for raw in text.splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        if block is not None:
            if line == ")":
                block = None
            else:
                out.append((block, line))
            continue
        verb, _, rest = line.partition(" ")
        rest = rest.strip()
        if rest == "(":
            block = verb
        elif rest.startswith("(") and rest.endswith(")"):
            inner = rest[1:-1].strip()
            if inner:
                out.append((verb, inner))
        else:
            out.append((verb, rest))
    return out


def parse_release_gomod(text: str) -> ReleaseModule:
    """The ``go`` line, ``godebug`` settings and staging modules of a k8s.io/kubernetes go.mod."""
    go = ""
    godebug: list[str] = []
    staging: list[str] = []
    for verb, rest in _directives(text):
        if verb == "go":
            go = rest
        elif verb == "godebug":
            godebug.append(" ".join(rest.split()))
        elif verb == "replace":
            left, arrow, right = rest.partition("=>")
            target = right.split()
            if arrow and len(target) == 1 and target[0].startswith("./staging/"):
                staging.append(left.split()[0])
    if not go:
        raise GoBuildError("the release's go.mod has no go line")
    if not staging:
        raise GoBuildError("the release's go.mod replaces no staging module")
    return ReleaseModule(go=go, godebug=tuple(godebug), staging=tuple(staging))


def parse_version(version: str) -> tuple[int, int, int]:
    """``1.37.2`` or ``v1.37.2`` → (1, 37, 2); pre-releases are refused."""
    m = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)", version.strip())
    if not m:
        raise GoBuildError(f"not a Kubernetes release version: {version!r} (want e.g. 1.37.2)")
    major, minor, patch = (int(g) for g in m.groups())
    return major, minor, patch


def staging_version(version: str) -> str:
    """The staging modules' tag of a release: v1.37.2 → v0.37.2."""
    _, minor, patch = parse_version(version)
    return f"v0.{minor}.{patch}"


def go_version_tuple(version: str) -> tuple[int, ...]:
    """``go1.26.8``, ``1.26.0``, ``1.24`` → comparable tuples; a pre-release suffix is dropped."""
    m = re.match(r"(?:go)?(\d+(?:\.\d+)*)", version.strip())
    if not m:
        raise GoBuildError(f"not a Go version: {version!r}")
    return tuple(int(p) for p in m.group(1).split("."))


def consumer_gomod(version: str, release: ReleaseModule, binaries: Sequence[str] = GO_BINARIES) -> str:
    """The go.mod that builds ``binaries`` of ``version`` from published modules."""
    if go_version_tuple(release.go)[:2] < TOOL_DIRECTIVE_GO:
        raise GoBuildError(f"the release's go line ({release.go}) predates tool directives (1.24)")
    tag = f"v{'.'.join(map(str, parse_version(version)))}"
    staged = staging_version(version)
    lines = [
        f"// Generated by podgate_sandbox.gobuild: Kubernetes {tag} from published modules.",
        f"module {BUILD_MODULE}",
        "",
        f"go {release.go}",
        "",
    ]
    lines += [f"godebug {setting}" for setting in release.godebug]
    if release.godebug:
        lines.append("")
    lines += ["tool (", *(f"\t{MODULE}/cmd/{name}" for name in binaries), ")", ""]
    lines += [f"require {MODULE} {tag}", ""]
    width = max(len(m) for m in release.staging)
    lines += ["replace (", *(f"\t{m:<{width}} => {m} {staged}" for m in release.staging), ")"]
    return "\n".join(lines) + "\n"


def version_ldflags(version: str, build_date: str, commit: str = "", tree_state: str = "archive") -> str:
    """``-ldflags`` for a release, as hack/lib/version.sh stamps it (both version packages), plus
    upstream's ``-s -w``.  The module proxy does not say which commit a release is: the commit is
    stamped empty unless known; ``archive`` says the tree came from a published archive."""
    major, minor, patch = parse_version(version)
    values = {
        "gitVersion": f"v{major}.{minor}.{patch}",
        "gitMajor": str(major),
        "gitMinor": str(minor),
        "gitCommit": commit,
        "gitTreeState": tree_state,
        "buildDate": build_date,
    }
    flags = ["-s", "-w"]
    for package in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        flags += [f"-X {package}.{key}={value}" for key, value in values.items()]
    return " ".join(flags)


def pick_release(requested: str, served: Sequence[str]) -> str:
    """The release a request names among the versions the proxy serves: ``1.37`` → the newest
    1.37.x, ``1.37.2`` → exactly that, ``latest`` → the newest; pre-releases never.  Returns the
    version without ``v``."""
    releases = sorted(
        (parse_version(v) for v in served if re.fullmatch(r"v?\d+\.\d+\.\d+", v.strip())), reverse=True
    )
    want = requested.strip().lstrip("v")
    if want in ("latest", "newest"):
        found = releases[:1]
    else:
        parts = want.split(".")
        if not 2 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
            raise GoBuildError(f"--kubernetes wants 1.NN or 1.NN.P, got {requested!r}")
        prefix = tuple(int(p) for p in parts)
        found = [r for r in releases if r[: len(prefix)] == prefix]
    if not found:
        shown = ", ".join(".".join(map(str, r)) for r in sorted(releases)) or "none"
        raise GoBuildError(f"no served release matches {requested!r} (served: {shown})")
    return ".".join(map(str, found[0]))


def check_supported(requested: str) -> None:
    """Refuse a request for a minor older than :data:`OLDEST_RELEASE` (one line, no build)."""
    want = requested.strip().lstrip("v")
    if want in ("latest", "newest"):
        return
    parts = want.split(".")
    if len(parts) >= 2 and all(p.isdigit() for p in parts[:2]):
        oldest = tuple(int(p) for p in OLDEST_RELEASE.split("."))
        if (int(parts[0]), int(parts[1])) < oldest:
            raise GoBuildError(
                f"Kubernetes {want} is older than the oldest release podgate supports ({OLDEST_RELEASE}); "
                f"--kubernetes takes {OLDEST_RELEASE} to {NEWEST_RELEASE} (the default)"
            )


# -- the cache ----------------------------------------------------------------------------------


def kubernetes_cache() -> Path:
    return cache_root() / "kubernetes"


def release_binaries(version: str) -> KubeBinaries:
    """The cache of a release built from Go modules."""
    return KubeBinaries(kubernetes_cache() / version, version=version, recipe=RECIPE, built=GO_BINARIES)


def cached_release(requested: str) -> str | None:
    """The newest release in the cache that a request (``1.37``, ``1.37.2``) names, if any."""
    root = kubernetes_cache()
    present = [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    try:
        return pick_release(requested, present)
    except GoBuildError:
        return None


def binaries_for(requested: str | None) -> KubeBinaries:
    """The binaries serving a requested version (none: :data:`NEWEST_RELEASE`): the newest cached
    build the request names (``podgate sandbox install --kubernetes`` makes it).  A request
    nothing cached answers gets a cache directory that is empty: ``broken`` says so."""
    requested = requested or NEWEST_RELEASE
    found = cached_release(requested)
    return release_binaries(found or requested.strip().lstrip("v"))


# -- building -----------------------------------------------------------------------------------


def go_command() -> Path:
    """The go command: /usr/local/go's when present (a current Go), else the first on PATH."""
    if PREFERRED_GO.exists():
        return PREFERRED_GO
    found = shutil.which("go")
    if found is None:
        raise GoBuildError("no go command: install Go (1.24 or newer) to build Kubernetes from modules")
    return Path(found)


def go_env(work: Path, go: Path) -> dict[str, str]:
    """The build's environment: this go first on PATH, its own module and build caches under
    ``work``, never another toolchain, no workspace; the proxy settings are the environment's."""
    env = dict(os.environ)
    env.pop("GOROOT", None)
    env |= {
        "PATH": f"{go.parent}:{env.get('PATH', '')}",
        "GOMODCACHE": str(work / "gomod"),
        "GOCACHE": str(work / "gocache"),
        "GOTOOLCHAIN": "local",
        "GOWORK": "off",
        "GOFLAGS": "-modcacherw -buildvcs=false",
    }
    return env


def served_releases(go: Path) -> list[str]:
    """k8s.io/kubernetes versions the module proxy lists."""
    with tempfile.TemporaryDirectory(prefix="podgate-go-") as tmp:
        out = subprocess.run(
            [str(go), "list", "-m", "-versions", "-json", MODULE],
            capture_output=True,
            text=True,
            env=go_env(Path(tmp), go),
            cwd=tmp,
            timeout=120,
            check=False,
        )
    if out.returncode != 0:
        raise GoBuildError(f"could not list {MODULE} versions: {out.stderr.strip()[-400:]}")
    return list(json.loads(out.stdout).get("Versions", []))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with_path = Path(root) / name
            if not with_path.is_symlink():
                total += with_path.stat().st_size
    return total


def ensure_release(
    requested: str,
    progress: Progress | None = None,
    keep_caches: bool = False,
    names: Sequence[str] = GO_BINARIES,
) -> KubeBinaries:
    """Build (or find cached) the binaries ``names`` of the release ``requested`` names;
    idempotent.  A sandbox with the node agent needs only the control plane and kubectl: the
    kubelet (the one cgo build, about a third of the CPU time) is left for a real node.

    Writes ``build.json`` beside the binaries: download and per-binary build times, sizes.  The
    Go module and build caches are removed after a successful build unless ``keep_caches``."""
    progress = progress or Progress()
    go = go_command()
    try:
        version = pick_release(requested, served_releases(go))
    except GoBuildError:
        cached = cached_release(requested)
        if cached is None:
            raise
        version = cached
    binaries = release_binaries(version)
    broken = binaries.broken(names)
    if not broken:
        progress.say(f"Kubernetes {version} binaries cached in {binaries.bin_dir}")
        return binaries
    progress.say(f"Kubernetes {version} from Go modules: need {', '.join(broken)}")
    work = binaries.root / "work"
    env = go_env(work, go)
    go_version = subprocess.run(
        [str(go), "env", "GOVERSION"], capture_output=True, text=True, env=env, check=True
    ).stdout.strip()
    report: dict[str, object] = {"version": version, "go": go_version, "build_s": {}}

    module = work / "module"
    module.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    fetched = subprocess.run(
        [str(go), "mod", "download", "-json", f"{MODULE}@v{version}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=module,
        check=False,
    )
    if fetched.returncode != 0:
        raise GoBuildError(
            f"go mod download {MODULE}@v{version} failed: {fetched.stdout[-400:]}{fetched.stderr[-400:]}"
        )
    info = json.loads(fetched.stdout)
    release = parse_release_gomod(Path(info["GoMod"]).read_text())
    progress.say(
        f"{MODULE}@v{version}: go {release.go}, {len(release.staging)} staging modules "
        f"(downloaded in {time.monotonic() - start:.0f}s)"
    )
    if go_version_tuple(go_version) < go_version_tuple(release.go):
        raise GoBuildError(f"Kubernetes {version} needs Go {release.go}; {go} is {go_version}")
    (module / "go.mod").write_text(consumer_gomod(version, release))
    (module / "go.sum").unlink(missing_ok=True)
    report["download_s"] = (
        time.monotonic()
        - start
        + progress.run(
            "go mod tidy (downloads every module the five programs import)",
            [str(go), "mod", "tidy"],
            cwd=module,
            env=env,
        )
    )

    build_date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ldflags = version_ldflags(version, build_date)
    cgo = shutil.which("gcc") is not None
    binaries.bin_dir.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for name in [n for n in GO_BINARIES if n in broken]:
        before = _children_cpu()
        static = name in STATIC_BINARIES or not cgo
        if name not in STATIC_BINARIES and not cgo:
            progress.say(f"no C compiler: {name} built without cgo (upstream builds it with)")
        tmp = binaries.path(name).with_suffix(".new")
        times[name] = progress.run(
            f"go build {name}" + (" (static)" if static else " (cgo)"),
            [
                str(go),
                "build",
                "-v",
                "-trimpath",
                "-tags",
                BUILD_TAGS,
                "-ldflags",
                ldflags,
                "-o",
                str(tmp),
                f"{MODULE}/cmd/{name}",
            ],
            cwd=module,
            env=env | {"CGO_ENABLED": "0" if static else "1"},
        )
        cpu[name] = _children_cpu() - before
        tmp.chmod(0o755)
        tmp.replace(binaries.path(name))
    report["build_s"] = times
    # CPU seconds (user + system) of the go command and its compilers: unlike the wall clock,
    # independent of what else the machine runs meanwhile
    report["build_cpu_s"] = cpu
    binaries.stamp.write_text(f"{RECIPE}\n")
    still = binaries.broken(names)
    if still:
        raise GoBuildError(f"after the build these binaries still do not run: {', '.join(still)}")
    report["bin_bytes"] = _du(binaries.bin_dir)
    report["module_cache_bytes"] = _du(work / "gomod")
    report["build_cache_bytes"] = _du(work / "gocache")
    (binaries.root / "build.json").write_text(json.dumps(report, indent=1) + "\n")
    if not keep_caches:
        shutil.rmtree(work, ignore_errors=True)
    progress.say(
        f"Kubernetes {version} binaries ready in {binaries.bin_dir} "
        f"({sum(times.values()):.0f}s of builds; {binaries.root / 'build.json'})"
    )
    return binaries


def ensure(
    requested: str | None, progress: Progress | None = None, names: Sequence[str] = GO_BINARIES
) -> KubeBinaries:
    """``podgate sandbox install [--kubernetes V] [--node agent]``: the release from Go modules,
    by default the newest patch of :data:`NEWEST_RELEASE`."""
    requested = requested or NEWEST_RELEASE
    check_supported(requested)
    return ensure_release(requested, progress, names=names)
