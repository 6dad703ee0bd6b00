"""``pip install .`` in a fresh virtualenv gives the ``podgate`` and ``kubectl-podgate`` commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_pip_install_gives_both_commands(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    for command in ("podgate", "kubectl-podgate"):
        exe = venv / "bin" / command
        assert exe.is_file()
        helped = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60, check=False)
        assert helped.returncode == 0, helped.stderr
        for sub in ("sandbox", "controller", "status", "gate"):
            assert sub in helped.stdout
    # the package data the sandbox needs came along
    rbac = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.resources as r; print(r.files('podgate.sandbox').joinpath('rbac.yaml')"
            ".read_text()[:60])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "ClusterRole" in rbac.stdout or "podgate controller" in rbac.stdout
