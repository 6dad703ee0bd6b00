"""The pod webhook's ``matchConditions`` on the real API server: the CEL it evaluates sends a pod
to podgate exactly when ``gates.may_need_review`` says so.  A skipped pod never reaches podgate
(podgate's ``podgate_webhook_requests_total`` and the API server's
``apiserver_admission_webhook_request_total`` stay put; its
``apiserver_admission_match_condition_exclusions_total`` counts it), and a pod that needs the
gate still gets it, a server-side dry run included."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from podgate.model import gates

from .conftest import CONTROLLER_HEALTH_PORT, SandboxHandle, condition, samples, scrape, wait_for
from .test_controller import INJECT, gate, lb_service

pytestmark = pytest.mark.sandbox
HOOK = "readiness-gates.podgate.dev"  # the sandbox's pod webhook for podgate's own label
#: a node that does not exist: its pods stay Pending, run nowhere (the node agent takes its own)
NOWHERE = "nowhere"
VENDOR_GATE = "target-health.elbv2.k8s.aws/x"


def _pod(name: str, labels: dict[str, str] | None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "annotations": {"podgate.dev/prestop": "none"}}
    if labels is not None:
        meta["labels"] = labels
    meta["annotations"] |= extra.pop("annotations", {})
    spec = {
        "containers": [{"name": "app", "image": "nginx", "ports": [{"name": "http", "containerPort": 8080}]}]
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec | extra}


def _counts(sandbox: SandboxHandle) -> tuple[float, float, float]:
    """podgate's reviews answered, the API server's calls of podgate's pod webhook, and the
    API server's match-condition exclusions of it."""
    status, text = scrape(CONTROLLER_HEALTH_PORT)
    assert status == 200
    api = sandbox.kubectl("get", "--raw", "/metrics")
    return (
        sum(samples(text, "podgate_webhook_requests_total")),
        sum(samples(api, "apiserver_admission_webhook_request_total", name=HOOK, operation="CREATE")),
        sum(samples(api, "apiserver_admission_match_condition_exclusions_total", name=HOOK)),
    )


def test_pods_that_cannot_need_a_gate_never_reach_podgate(sandbox: SandboxHandle, namespace: str) -> None:
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    sandbox.apply(lb_service("web", "web"), namespace)
    wait_for(
        "the Service served", lambda: sandbox.get("service", "web", "-n", namespace)["status"]["loadBalancer"]
    )
    cases = [
        # (pod, dry run): each created alone, so each counter's step is that pod's
        (_pod("needs", {"app": "web"}), False),  # selected by a served Service: reviewed, gated
        (_pod("dry", {"app": "web"}), True),  # kubectl create --dry-run=server shows the gate too
        (_pod("unselected", {"app": "other"}), False),  # labelled: podgate must look
        (_pod("bare", None), False),  # no labels: nothing can select it
        (_pod("vendor", None, readinessGates=[{"conditionType": VENDOR_GATE}], nodeName=NOWHERE), False),
        # a static pod's mirror, as the kubelet writes it (bound to its node)
        (
            _pod(
                "mirror", {"app": "web"}, annotations={gates.MIRROR_ANNOTATION: "0123abcd"}, nodeName=NOWHERE
            ),
            False,
        ),
    ]
    seen: dict[str, tuple[bool, bool]] = {}
    created: dict[str, dict[str, Any]] = {}
    for manifest, dry in cases:
        name = manifest["metadata"]["name"]
        before = _counts(sandbox)
        out = sandbox.kubectl(
            "create",
            "-n",
            namespace,
            "-o",
            "json",
            *(["--dry-run=server"] if dry else []),
            "-f",
            "-",
            input=json.dumps(manifest),
        )
        created[name] = json.loads(out)
        after = _counts(sandbox)
        for _ in range(30):  # with --admission process the counter comes every 0.5 s
            if after[0] - before[0] >= after[1] - before[1]:
                break
            time.sleep(0.1)
            after = _counts(sandbox)
        reached, called, excluded = (a - b for a, b in zip(after, before, strict=True))
        assert (reached, called) in ((0, 0), (1, 1)), (name, reached, called)
        assert excluded == (1 - called), (name, excluded, called)
        seen[name] = (bool(called), gates.may_need_review(manifest))  # type: ignore[arg-type]
    assert all(api == ours for api, ours in seen.values()), f"(API server's CEL, may_need_review): {seen}"
    assert {n for n, (api, _) in seen.items() if not api} == {"bare", "mirror"}

    def gate_types(name: str) -> list[str]:
        return [g["conditionType"] for g in created[name]["spec"].get("readinessGates") or ()]

    assert gate_types("needs") == [gate("web")] and gate_types("dry") == [gate("web")]
    assert gate_types("unselected") == [] and gate_types("bare") == [] and gate_types("mirror") == []

    # the gated pod turns Ready through its gate; the unlabelled one on its containers alone
    def ready(name: str) -> dict[str, Any] | None:
        p = sandbox.get("pod", name, "-n", namespace)
        return p if (condition(p, "Ready") or {}).get("status") == "True" else None

    pod = wait_for("the gated pod Ready", lambda: ready("needs"), 30)
    assert (condition(pod, gate("web")) or {}).get("status") == "True"
    wait_for("the unlabelled pod Ready", lambda: ready("bare"), 30)
