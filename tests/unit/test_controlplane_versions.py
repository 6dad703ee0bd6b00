"""The control plane per Kubernetes release: flags that differ, the release a sandbox keeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from podgate_sandbox.controlplane import LEGACY_RELEASE, Sandbox, SandboxConfig, SandboxError, kube_minor
from podgate_sandbox.gobuild import NEWEST_RELEASE


def test_kube_minor() -> None:
    assert kube_minor("v1.37.2") == (1, 37)
    assert kube_minor("1.20") == (1, 20)


def test_a_sandbox_keeps_its_release_and_finds_its_binaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "cache" / "podgate" / "kubernetes" / "1.37.2").mkdir(parents=True)
    assert SandboxConfig().kubernetes == NEWEST_RELEASE
    assert Sandbox(tmp_path / "fresh").binaries.version == "1.37.2"
    state = tmp_path / "state"
    state.mkdir()
    # a state directory from before releases were chosen: the Debian build
    (state / "sandbox.json").write_text(json.dumps({"port_offset": 20000}))
    assert Sandbox(state).config.kubernetes == LEGACY_RELEASE
    (state / "sandbox.json").write_text(json.dumps({"port_offset": 20000, "kubernetes": "1.37.2"}))
    sb = Sandbox(state)
    assert sb.binaries.root == tmp_path / "cache" / "podgate" / "kubernetes" / "1.37.2"
    assert sb.env().splitlines()[1] == f"export PATH={sb.binaries.bin_dir}:$PATH"
    argv = {c.name: c.argv for c in sb.components()}
    # the insecure ports went in 1.24 with their flags: an unknown flag would stop the process
    assert not any(a.startswith("--insecure-port") for a in argv["kube-apiserver"])
    assert not any(a.startswith("--port=") for a in argv["kube-controller-manager"])


def test_a_state_directory_stays_on_the_release_that_wrote_its_etcd(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "etcd").mkdir(parents=True)
    (state / "sandbox.json").write_text(json.dumps({"port_offset": 20000}))
    with pytest.raises(SandboxError, match=f"holds a Kubernetes {LEGACY_RELEASE} cluster"):
        Sandbox(state, SandboxConfig(port_offset=20000, kubernetes="1.37.2")).up()
    # a patch release of the same minor runs on the same etcd
    (state / "sandbox.json").write_text(json.dumps({"port_offset": 20000, "kubernetes": "1.37"}))
    with pytest.raises(SandboxError, match="binaries missing or broken"):
        Sandbox(state, SandboxConfig(port_offset=20000, kubernetes="1.37.9")).up()
