"""The image is built from pinned inputs only: both bases named by build arguments (a digest
with a Docker engine, the locked Debian packages for ``make image``), every Python dependency
at a locked version with its hashes and installed with ``--require-hashes``, and no pip in the
runtime stage.  Read from the files themselves; ``tests/e2e/test_image.py`` checks the built
image."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from podgate_sandbox.image import BASES, format_lock, lock_difference, lock_path, parse_lock

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def requirements(path: Path) -> dict[str, list[str]]:
    """name → its hashes, from a pip-compile file (``name==version \\`` then ``--hash=`` lines)."""
    out: dict[str, list[str]] = {}
    name = ""
    for line in path.read_text().splitlines():
        pinned = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if pinned:
            name = pinned.group(1).lower()
            out[name] = []
        elif (h := re.search(r"--hash=sha256:([0-9a-f]{64})", line)) and name:
            out[name].append(h.group(1))
        elif line and not line.lstrip().startswith("#") and not line.startswith("    "):
            raise AssertionError(f"{path.name}: an unpinned line: {line!r}")
    return out


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_dependency_is_pinned_with_its_hashes() -> None:
    locked = {canonical(n): h for n, h in requirements(ROOT / "image" / "requirements.txt").items()}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["aws"]
    wanted += project["optional-dependencies"]["alibaba"]
    for requirement in wanted:
        assert canonical(re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0]) in locked, requirement
    assert all(locked.values()), [n for n, h in locked.items() if not h]
    build = requirements(ROOT / "image" / "build-requirements.txt")
    assert {"setuptools", "wheel"} <= set(build) and all(build.values())


def test_the_dockerfile_installs_only_hashed_files_and_no_pip_at_run_time() -> None:
    stages = re.split(r"^FROM ", DOCKERFILE, flags=re.M)[1:]
    assert [s.split()[0] for s in stages] == ["${BUILD_BASE}", "${BASE}"]
    # no base by a moving tag: the arguments have no default (a digest is given, or make image's)
    assert re.findall(r"^ARG (\S+)$", DOCKERFILE, flags=re.M) == ["BASE", "BUILD_BASE"]
    build, runtime = stages
    installs = re.findall(r"pip --python \S+ (?:install|wheel)[^&]*", build)
    from_lock = [i for i in installs if "-r image/" in i]
    assert len(from_lock) == 2 and all("--require-hashes" in i for i in from_lock)
    # what is not from a lock is podgate's own wheel, from this tree, with no index
    assert all("--no-index" in i for i in installs if i not in from_lock)
    assert "--no-build-isolation" in from_lock[1]
    assert "COPY --from=build /opt/podgate /opt/podgate" in runtime
    assert "pip uninstall -y -q pip setuptools wheel" in runtime
    assert not re.search(r"pip (install|wheel)", runtime)


def test_both_debian_bases_are_locked_and_only_the_build_one_has_pip() -> None:
    runtime, build = (parse_lock(lock_path(k).read_text()) for k in ("runtime", "build"))
    for lock, kind in ((runtime, "runtime"), (build, "build")):
        assert set(BASES[kind]) <= set(lock), kind
        assert all(re.match(r"^[0-9A-Za-z.+~:-]+$", v) for v in lock.values()), kind
    assert "python3-pip" in build and not any("pip" in name for name in runtime)
    assert runtime["python3"] == build["python3"], "the venv built on one base runs on the other"


def test_a_lock_round_trips_and_a_drift_is_named() -> None:
    packages = {"python3": "3.11.2-1+b1", "ca-certificates": "20230311"}
    assert parse_lock(format_lock("runtime", packages)) == packages
    moved = {"python3": "3.11.2-1+b2", "libfoo": "1"}
    assert lock_difference(packages, moved) == [
        "ca-certificates 20230311: missing",
        "libfoo 1: not in the lock",
        "python3: 3.11.2-1+b2 instead of 3.11.2-1+b1",
    ]
    assert lock_difference(packages, dict(packages)) == []
