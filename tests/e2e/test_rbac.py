"""deploy/base's RBAC is enough and no more: the controller runs as deploy/base's ServiceAccount,
with a token of its own, through the whole flow (Lease, certificate Secret, webhook registration,
injection, registration in the load balancer, gate, Events), and that account cannot touch a
kube-system Lease, another webhook configuration or a Service's spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from podgate_sandbox.controlplane import CONTROLLER_NAMESPACE

from .conftest import SandboxHandle, condition, wait_for
from .test_controller import INJECT, deployment, gate, lb_service
from .test_deploy import render
from .test_webhook_replicas import replicas

pytestmark = pytest.mark.sandbox
ACCOUNT = f"system:serviceaccount:{CONTROLLER_NAMESPACE}:podgate"
RBAC_KINDS = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def can_i(sandbox: SandboxHandle, *args: str) -> str:
    return sandbox.kubectl("auth", "can-i", *args, "--as", ACCOUNT, check=False).strip().splitlines()[0]


def account_kubeconfig(sandbox: SandboxHandle) -> Path:
    """The sandbox's controller kubeconfig with a token of the ServiceAccount in place of the
    controller's own: ``kubectl create token`` (TokenRequest; 1.24+ makes no token Secrets)."""
    token = sandbox.kubectl("create", "token", "podgate", "-n", CONTROLLER_NAMESPACE, "--duration=1h").strip()
    config: dict[str, Any] = yaml.safe_load((sandbox.state_dir / "controller.kubeconfig").read_text())
    config["users"][0]["user"] = {"token": token}
    path = sandbox.state_dir / "serviceaccount.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def test_the_controller_runs_as_deploy_bases_service_account(sandbox: SandboxHandle, namespace: str) -> None:
    docs = [d for d in render(sandbox, "deploy/base") if d["kind"] in RBAC_KINDS]
    assert {"Role", "RoleBinding"} <= {d["kind"] for d in docs}
    sandbox.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    # What it must not do
    assert can_i(sandbox, "update", "leases", "-n", "kube-system") == "no"
    assert can_i(sandbox, "update", "leases/kube-controller-manager", "-n", "kube-system") == "no"
    assert can_i(sandbox, "update", "mutatingwebhookconfigurations/someone-elses") == "no"
    assert can_i(sandbox, "delete", "mutatingwebhookconfigurations/someone-elses") == "no"
    assert can_i(sandbox, "update", "services", "-n", namespace) == "no"
    assert can_i(sandbox, "get", "secrets", "-n", namespace) == "no"
    assert can_i(sandbox, "get", "secrets/other", "-n", CONTROLLER_NAMESPACE) == "no"
    # ... and what it must (the flow below exercises each)
    assert can_i(sandbox, "update", "leases/podgate-controller", "-n", CONTROLLER_NAMESPACE) == "yes"
    assert can_i(sandbox, "update", "mutatingwebhookconfigurations/podgate") == "yes"
    assert can_i(sandbox, "patch", "services", "--subresource=status", "-n", namespace) == "yes"

    kubeconfig = account_kubeconfig(sandbox)
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    sandbox.apply(lb_service("web", "web"), namespace)
    log = sandbox.state_dir / "logs" / "replica-0.log"
    seen = log.stat().st_size if log.exists() else 0
    with replicas(sandbox, 1, "--kubeconfig", str(kubeconfig)):
        sandbox.apply(deployment("web", 1), namespace)

        def ready_pod() -> dict[str, Any] | None:
            items = sandbox.get("pods", "-n", namespace, "-l", "app=web")["items"]
            ok = items and (condition(items[0], "Ready") or {}).get("status") == "True"
            return items[0] if ok else None

        pod = wait_for("the pod Ready through its gate", ready_pod, 60)
        assert (condition(pod, gate("web")) or {}).get("status") == "True"
        events = sandbox.get("events", "-n", namespace)["items"]
        assert any(e["source"].get("component") == "podgate" for e in events), "no Event from podgate"
        lease = sandbox.get("lease", "podgate-controller", "-n", CONTROLLER_NAMESPACE)
        assert lease["spec"]["holderIdentity"], lease
    with log.open(errors="replace") as f:
        f.seek(seen)
        refused = [ln for ln in f.read().splitlines() if "Forbidden" in ln or "forbidden" in ln]
    assert not refused, refused[:5]
