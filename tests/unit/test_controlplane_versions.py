"""The control plane per Kubernetes release: flags that differ, the release a sandbox keeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from podgate_sandbox.binaries import KUBE_VERSION
from podgate_sandbox.controlplane import (
    Sandbox,
    SandboxConfig,
    SandboxError,
    apiserver_version_flags,
    controller_manager_version_flags,
    kube_minor,
)


def test_insecure_ports_are_turned_off_only_where_the_flags_exist() -> None:
    assert apiserver_version_flags("1.20.2") == ["--insecure-port=0"]
    assert controller_manager_version_flags("1.20.2") == ["--port=0"]
    for version in ("1.24.0", "1.34.0", "1.37.2"):
        assert "--insecure-port=0" not in apiserver_version_flags(version)
        assert "--port=0" not in controller_manager_version_flags(version)


def test_kube_minor() -> None:
    assert kube_minor("v1.37.2") == (1, 37)
    assert kube_minor("1.20") == (1, 20)


def test_a_sandbox_keeps_its_release_and_finds_its_binaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "cache" / "podgate" / "kubernetes" / "1.37.2").mkdir(parents=True)
    assert SandboxConfig().kubernetes == KUBE_VERSION
    state = tmp_path / "state"
    state.mkdir()
    # a state directory from before releases were chosen: the Debian build
    (state / "sandbox.json").write_text(json.dumps({"port_offset": 20000}))
    old = Sandbox(state)
    assert (old.config.kubernetes, old.binaries.version) == (KUBE_VERSION, KUBE_VERSION)
    (state / "sandbox.json").write_text(json.dumps({"port_offset": 20000, "kubernetes": "1.37.2"}))
    sb = Sandbox(state)
    assert sb.binaries.root == tmp_path / "cache" / "podgate" / "kubernetes" / "1.37.2"
    assert sb.env().splitlines()[1] == f"export PATH={sb.binaries.bin_dir}:$PATH"
    argv = {c.name: c.argv for c in sb.components()}
    assert "--insecure-port=0" not in argv["kube-apiserver"]
    assert "--port=0" not in argv["kube-controller-manager"]


def test_a_state_directory_stays_on_the_release_that_wrote_its_etcd(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "etcd").mkdir(parents=True)
    (state / "sandbox.json").write_text(json.dumps({"port_offset": 20000}))
    with pytest.raises(SandboxError, match=f"holds a Kubernetes {KUBE_VERSION} cluster"):
        Sandbox(state, SandboxConfig(port_offset=20000, kubernetes="1.37.2")).up()
