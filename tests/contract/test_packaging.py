"""The two distributions, installed the way users install them, each in a fresh virtualenv.

``pip install .`` is the product: ``podgate`` and ``kubectl-podgate`` with the controller, status
and gate commands, and no sandbox code at all (the image is built from the same wheel).
``pip install ./sandbox`` on top adds ``podgate sandbox …`` through the entry-point plugin.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*argv: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=False
    )


def _commands(exe: Path) -> set[str]:
    """The sub-commands ``--help`` lists in its ``{a,b,…}`` choice line."""
    helped = _run(exe, "--help", timeout=60)
    assert helped.returncode == 0, helped.stderr
    line = next(w for w in helped.stdout.split() if w.startswith("{"))
    return set(line.strip("{}").split(","))


def test_the_product_wheel_holds_no_sandbox_code(tmp_path: Path) -> None:
    built = _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path, ROOT)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("podgate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "podgate/crds/readinesscheck.yaml" in names
    assert "podgate/crds/loadbalancergroupgrant.yaml" in names
    assert "podgate/cli/main.py" in names
    assert not [n for n in names if n.startswith("podgate_sandbox/") or "/sandbox/" in n], names


def test_pip_install_gives_the_product_then_the_sandbox_plugin(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip, python = venv / "bin" / "pip", venv / "bin" / "python"

    product = _run(pip, "install", "-q", ROOT)
    assert product.returncode == 0, product.stderr[-2000:]
    for command in ("podgate", "kubectl-podgate"):
        assert _commands(venv / "bin" / command) == {"controller", "status", "gate"}
    absent = _run(python, "-c", "import podgate_sandbox")
    assert absent.returncode == 1
    assert "No module named 'podgate_sandbox'" in absent.stderr

    sandbox = _run(pip, "install", "-q", ROOT / "sandbox")
    assert sandbox.returncode == 0, sandbox.stderr[-2000:]
    for command in ("podgate", "kubectl-podgate"):
        assert _commands(venv / "bin" / command) == {"controller", "status", "gate", "sandbox"}
    # the package data the sandbox needs came along: the controller's ClusterRole
    rbac = _run(
        python,
        "-c",
        "import importlib.resources as r; "
        "print(r.files('podgate_sandbox').joinpath('rbac.yaml').read_text())",
    )
    assert rbac.returncode == 0, rbac.stderr
    assert "\nkind: ClusterRole\n" in rbac.stdout
    assert "\n  name: podgate-sandbox-controller\n" in rbac.stdout


def test_the_product_cli_loads_no_sandbox_module() -> None:
    """The sandbox distribution is installed here, yet the product's CLI must not pull it in:
    only ``podgate sandbox …`` (a plugin loaded when the parser is built) may."""
    probe = _run(
        sys.executable,
        "-c",
        "import sys, podgate.cli.main; "
        "print(sorted(m for m in sys.modules if m.startswith('podgate_sandbox')))",
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]"
