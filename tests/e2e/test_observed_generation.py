"""The gate condition's ``observedGeneration`` on a release that tracks pod generations (1.34+,
KEP-5067): the field survives podgate's strategic-merge PATCH of ``pods/status``, equals the
pod's ``metadata.generation``, and a spec update of the running pod is carried by the next
gate write, never by a write of its own (ARCHITECTURE.md, "observedGeneration on the gate")."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import SandboxHandle, condition, reconciled_after, wait_for
from .test_controller import INJECT, gate, lb_service

pytestmark = pytest.mark.sandbox


def _pod(name: str, app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}, "annotations": {"podgate.dev/prestop": "none"}},
        "spec": {
            "containers": [
                {"name": "app", "image": "nginx", "ports": [{"name": "http", "containerPort": 8080}]}
            ]
        },
    }


def test_the_gate_reports_the_generation_it_was_written_at(sandbox: SandboxHandle, namespace: str) -> None:
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    # 3 checks 2 s apart: the gate stays False (InitialHealthChecking) for about 6 s
    sandbox.apply(
        lb_service(
            "gen", "gen", **{"podgate.dev/health-check-interval": "2", "podgate.dev/healthy-threshold": "3"}
        ),
        namespace,
    )
    sandbox.apply(_pod("gen-0", "gen"), namespace)

    def get() -> dict[str, Any]:
        return sandbox.get("pod", "gen-0", "-n", namespace)

    def gate_cond(p: dict[str, Any]) -> dict[str, Any]:
        return condition(p, gate("gen")) or {}

    def with_gate(status: str) -> dict[str, Any] | None:
        p = get()
        return p if gate_cond(p).get("status") == status else None

    pending = wait_for("the gate False while HAProxy checks", lambda: with_gate("False"))
    assert pending["metadata"]["generation"] == 1
    assert gate_cond(pending)["observedGeneration"] == 1, gate_cond(pending)

    # a spec update of the running pod: the API server bumps its generation
    sandbox.kubectl(
        "patch", "pod", "gen-0", "-n", namespace, "-p", json.dumps({"spec": {"activeDeadlineSeconds": 3600}})
    )
    bumped = get()
    assert bumped["metadata"]["generation"] == 2
    assert gate_cond(bumped).get("status") == "False", "the gate opened before the update: test too slow"

    opened = wait_for("the gate True", lambda: with_gate("True"), 30)
    assert gate_cond(opened)["observedGeneration"] == 2, "the write after the update carries its generation"
    assert gate_cond(opened)["reason"] == "TargetHealthy"

    # another update with the gate settled: no write of its own (the verdict is unchanged)
    sandbox.kubectl(
        "patch", "pod", "gen-0", "-n", namespace, "-p", json.dumps({"spec": {"activeDeadlineSeconds": 1800}})
    )
    reconciled_after(sandbox, f"{namespace}/gen")
    later = get()
    assert later["metadata"]["generation"] == 3
    assert gate_cond(later) == gate_cond(opened), "no gate write for a new generation alone"
    assert (condition(later, "Ready") or {}).get("status") == "True"
