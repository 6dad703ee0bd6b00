"""deploy/policy, the ValidatingAdmissionPolicy that narrows podgate's writes below what RBAC can
say: as podgate's ServiceAccount, a write of its own gate condition, its finalizer and a
caBundle passes; another condition, a pod's address, any other change of a Service and any
change of a webhook's rules are refused by the API server.  Kubernetes 1.30+ (the policy's GA)."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from podgate_sandbox.controlplane import Sandbox

from .conftest import SandboxHandle, server_minor, wait_for
from .test_controller import deployment, lb_service, pods
from .test_deploy import render
from .test_rbac import RBAC_KINDS, as_account

pytestmark = pytest.mark.sandbox
GATE = "service.readiness.podgate.dev/web"


@pytest.fixture
def policy(sandbox: SandboxHandle) -> Iterator[None]:
    """deploy/policy and the roles of a cloud install (deploy/base + Service finalizers) for
    podgate's ServiceAccount, and podgate's webhook configurations; all gone after."""
    if server_minor(sandbox) < 30:
        pytest.skip("ValidatingAdmissionPolicy is GA in Kubernetes 1.30; this API server is older")
    docs = [
        d
        for path in ("deploy/base", "deploy/rbac/service-finalizers", "deploy/policy")
        for d in render(sandbox, path)
        if d["kind"] in RBAC_KINDS or d["kind"].startswith("ValidatingAdmissionPolicy")
    ]
    sandbox.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    configs = Sandbox(sandbox.state_dir).webhook_configurations("podgate")
    for c in configs:  # not called: these only stand for podgate's, to be patched
        for hook in c["webhooks"]:
            hook["namespaceSelector"] = {"matchLabels": {"podgate.test/never": "true"}}
    sandbox.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(configs))
    try:
        yield
    finally:
        sandbox.kubectl(
            "delete",
            "validatingadmissionpolicy,validatingadmissionpolicybinding",
            "podgate-controller-writes",
            check=False,
        )
        sandbox.kubectl(
            "delete", "mutatingwebhookconfiguration,validatingwebhookconfiguration", "podgate", check=False
        )
        sandbox.kubectl("delete", "clusterrole,clusterrolebinding", "podgate-service-finalizers", check=False)


def patch(
    sandbox: SandboxHandle,
    *target: str,
    body: dict[str, Any],
    subresource: str | None = None,
    content_type: str = "application/strategic-merge-patch+json",
) -> str:
    """A strategic merge as podgate's account, sent as the controller sends it: one PATCH with its
    own token (``kubectl patch`` would first GET the subresource, a right podgate does not have).
    Conditions merge by type, so only what the body names changes (the node agent may be writing
    the pod's other conditions meanwhile).  What the API server answered, kubectl-style."""
    kind, name, _, namespace = target
    config = yaml.safe_load(sandbox.kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    ctx = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    if not hasattr(patch, "token"):
        patch.token = sandbox.kubectl(  # type: ignore[attr-defined]
            "create", "token", "podgate", "-n", "podgate-system", "--duration=1h"
        ).strip()
    path = f"/api/v1/namespaces/{namespace}/{kind}s/{name}" + (f"/{subresource}" if subresource else "")
    request = urllib.request.Request(
        cluster["server"] + path,
        data=json.dumps(body).encode(),
        method="PATCH",
        headers={
            "Authorization": f"Bearer {patch.token}",  # type: ignore[attr-defined]
            "Content-Type": content_type,
        },
    )
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=10):
            return f"{kind}/{name} patched"
    except urllib.error.HTTPError as e:
        return e.read().decode(errors="replace")


def refused(answer: str, what: str) -> bool:
    return "denied request" in answer and what in answer


def test_podgates_own_writes_pass_and_everything_else_is_refused(
    sandbox: SandboxHandle, namespace: str, policy: None
) -> None:
    sandbox.apply(lb_service("web", "web", **{"podgate.dev/load-balancer-provider": "none"}), namespace)
    sandbox.apply(deployment("web", 1), namespace)
    [pod] = wait_for(
        "the pod's containers ready",
        lambda: [p for p in pods(sandbox, namespace, "web") if p["status"].get("podIP")],
        30,
    )
    name = pod["metadata"]["name"]

    def conditions(*extra: dict[str, Any]) -> dict[str, Any]:
        return {"status": {"conditions": list(extra)}}

    # The policy is in force once the API server has loaded it: a refused write says so.
    own = {"type": GATE, "status": "False", "reason": "Test", "message": "podgate's own"}
    answers: list[str] = []

    def ready_refused() -> bool:
        answers.append(
            patch(
                sandbox,
                "pod",
                name,
                "-n",
                namespace,
                subresource="status",
                body=conditions({"type": "Ready", "status": "False", "reason": "TakenOver"}),
            )
        )
        return refused(answers[-1], "only its own condition types")

    try:
        wait_for("the policy in force", ready_refused, 30)
    except AssertionError as e:
        raise AssertionError(f"{e}; the API server's last answer: {answers[-1:]}") from None
    # pods/status: its own condition passes; Ready, another condition or the address does not
    answer = patch(sandbox, "pod", name, "-n", namespace, subresource="status", body=conditions(own))
    assert "patched" in answer, answer
    assert any(c["type"] == GATE for c in sandbox.get("pod", name, "-n", namespace)["status"]["conditions"])
    for body in (
        conditions({"type": "Ready", "status": "False", "reason": "TakenOver"}),
        conditions({"type": "example.com/other", "status": "True"}),
    ):
        answer = patch(sandbox, "pod", name, "-n", namespace, subresource="status", body=body)
        assert refused(answer, "only its own condition types"), (body, answer)
    # the pod's address (what Endpoints route to), replaced whole by a merge patch
    moved = {"status": {"podIP": "198.18.255.254", "podIPs": [{"ip": "198.18.255.254"}]}}
    answer = patch(
        sandbox,
        "pod",
        name,
        "-n",
        namespace,
        subresource="status",
        body=moved,
        content_type="application/merge-patch+json",
    )
    assert refused(answer, "only its own condition types"), answer

    # Services: its finalizer passes; a label, an annotation or the spec does not
    finalizer = "podgate.dev/load-balancer-targets"
    answer = as_account(
        sandbox,
        "patch",
        "service",
        "web",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"metadata": {"finalizers": [finalizer]}}),
    )
    assert "patched" in answer, answer
    for body in (
        {"metadata": {"labels": {"taken": "over"}}},
        {"metadata": {"annotations": {"podgate.dev/load-balancer-provider": "haproxy"}}},
        {"spec": {"selector": {"app": "someone-else"}}},
        {"metadata": {"finalizers": [finalizer, "example.com/keep-forever"]}},
    ):
        answer = as_account(
            sandbox, "patch", "service", "web", "-n", namespace, "--type=merge", "-p", json.dumps(body)
        )
        assert refused(answer, "only its own finalizer"), (body, answer)
    sandbox.kubectl(
        "patch", "service", "web", "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}'
    )

    # its webhook configurations: a caBundle passes; the rules or the destination do not
    config = sandbox.get("mutatingwebhookconfiguration", "podgate")
    hooks = config["webhooks"]
    with_ca = [{**h, "clientConfig": {**h["clientConfig"], "caBundle": "Q0E="}} for h in hooks]
    answer = as_account(
        sandbox,
        "patch",
        "mutatingwebhookconfiguration",
        "podgate",
        "--type=json",
        "-p",
        json.dumps([{"op": "replace", "path": "/webhooks", "value": with_ca}]),
    )
    assert "patched" in answer, answer
    widened = [{**h, "rules": [{**h["rules"][0], "resources": ["pods", "secrets"]}]} for h in with_ca]
    elsewhere = [
        {**h, "clientConfig": {**h["clientConfig"], "url": "https://192.0.2.1/steal"}} for h in with_ca
    ]
    # the static configuration's matchConditions are the installer's too (deploy/policy compares them)
    assert all(h.get("matchConditions") for h in with_ca)
    unconditioned = [{k: v for k, v in h.items() if k != "matchConditions"} for h in with_ca]
    for body in (widened, elsewhere, unconditioned):
        answer = as_account(
            sandbox,
            "patch",
            "mutatingwebhookconfiguration",
            "podgate",
            "--type=json",
            "-p",
            json.dumps([{"op": "replace", "path": "/webhooks", "value": body}]),
        )
        assert refused(answer, "only the caBundle"), answer
    after = sandbox.get("mutatingwebhookconfiguration", "podgate")["webhooks"]
    assert [h["rules"] for h in after] == [h["rules"] for h in hooks]
