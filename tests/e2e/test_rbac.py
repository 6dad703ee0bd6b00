"""deploy/'s RBAC is enough and no more, per install: the controller runs as deploy/base's
ServiceAccount (plus the services/status right HAProxy provisioning adds), with a token of its own,
through the whole flow (Lease, certificate Secret, its webhook configurations' caBundle,
injection, registration in the load balancer, gate, Events); what each install must not do,
`kubectl auth can-i` says no to and the API server refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from podgate_sandbox.controlplane import CONTROLLER_NAMESPACE, Sandbox

from .conftest import SandboxHandle, condition, server_minor, wait_for
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


def apply_rbac(sandbox: SandboxHandle, path: str) -> None:
    docs = [d for d in render(sandbox, path) if d["kind"] in RBAC_KINDS]
    sandbox.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def as_account(sandbox: SandboxHandle, *args: str) -> str:
    """A write as podgate's ServiceAccount (impersonated): what the API server answers."""
    return sandbox.kubectl(*args, "--as", ACCOUNT, check=False)


def test_each_install_has_only_the_rights_it_needs(sandbox: SandboxHandle, namespace: str) -> None:
    sandbox.apply(lb_service("web", "web"), namespace)
    try:
        apply_rbac(sandbox, "deploy/base")
        # its webhook configurations: the caBundle by patch, by name, nothing else
        assert can_i(sandbox, "patch", "mutatingwebhookconfigurations/podgate") == "yes"
        assert can_i(sandbox, "patch", "validatingwebhookconfigurations/podgate") == "yes"
        for verb in ("create", "update", "delete"):
            assert can_i(sandbox, verb, "mutatingwebhookconfigurations/podgate") == "no", verb
        assert can_i(sandbox, "create", "mutatingwebhookconfigurations") == "no"
        assert can_i(sandbox, "patch", "mutatingwebhookconfigurations/podgate-sandbox") == "no"
        # no Service write at all in the base (HAProxy attach mode needs none)
        assert can_i(sandbox, "patch", "services", "-n", namespace) == "no"
        assert can_i(sandbox, "patch", "services", "--subresource=status", "-n", namespace) == "no"
        assert can_i(sandbox, "create", "secrets", "-n", CONTROLLER_NAMESPACE) == "yes"
        assert can_i(sandbox, "create", "configmaps", "-n", CONTROLLER_NAMESPACE) == "no"
        # ... and the API server refuses what can-i says no to
        refused = as_account(
            sandbox,
            "patch",
            "mutatingwebhookconfiguration",
            "podgate-sandbox",
            "--type=merge",
            "-p",
            json.dumps({"metadata": {"labels": {"taken": "over"}}}),
        )
        assert "forbidden" in refused.lower(), refused
        refused = as_account(
            sandbox,
            "patch",
            "service",
            "web",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            json.dumps({"metadata": {"finalizers": ["podgate.dev/load-balancer-targets"]}}),
        )
        assert "forbidden" in refused.lower(), refused
        assert not sandbox.get("service", "web", "-n", namespace)["metadata"].get("finalizers")

        apply_rbac(sandbox, "deploy/overlays/aws")  # a cloud install: podgate's finalizer on Services
        assert can_i(sandbox, "patch", "services", "-n", namespace) == "yes"
        assert can_i(sandbox, "patch", "services", "--subresource=status", "-n", namespace) == "no"
        assert can_i(sandbox, "update", "services", "-n", namespace) == "no"
        assert can_i(sandbox, "create", "configmaps", "-n", CONTROLLER_NAMESPACE) == "yes"  # target records
        assert can_i(sandbox, "create", "configmaps", "-n", namespace) == "no"

        apply_rbac(sandbox, "deploy/overlays/cert-manager")  # cert-manager owns certificates and CA
        assert can_i(sandbox, "patch", "mutatingwebhookconfigurations/podgate") == "no"
        assert can_i(sandbox, "get", "validatingwebhookconfigurations/podgate") == "no"
        assert can_i(sandbox, "create", "secrets", "-n", CONTROLLER_NAMESPACE) == "no"
        assert can_i(sandbox, "get", "secrets/podgate-webhook-certs", "-n", CONTROLLER_NAMESPACE) == "no"
        assert can_i(sandbox, "update", "leases/podgate-controller", "-n", CONTROLLER_NAMESPACE) == "yes"
    finally:
        sandbox.kubectl("delete", "clusterrole,clusterrolebinding", "podgate-service-finalizers", check=False)
        sandbox.kubectl(
            "delete", "role,rolebinding", "podgate-target-records", "-n", CONTROLLER_NAMESPACE, check=False
        )
        apply_rbac(sandbox, "deploy/base")


def test_the_controller_runs_as_deploy_bases_service_account(sandbox: SandboxHandle, namespace: str) -> None:
    docs = [d for d in render(sandbox, "deploy/base") if d["kind"] in RBAC_KINDS]
    docs += [d for d in render(sandbox, "deploy/rbac/service-status") if d["kind"] in RBAC_KINDS]
    # with the policy that narrows its writes further, where the API server has it (1.30+)
    policy = server_minor(sandbox) >= 30
    if policy:
        docs += render(sandbox, "deploy/policy")
    assert {"Role", "RoleBinding"} <= {d["kind"] for d in docs}
    sandbox.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    # the installer's webhook configurations, named as deploy/base's, by the front door's URL
    configs = Sandbox(sandbox.state_dir).webhook_configurations("podgate")
    sandbox.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(configs))

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
    assert can_i(sandbox, "patch", "mutatingwebhookconfigurations/podgate") == "yes"
    assert can_i(sandbox, "patch", "services", "--subresource=status", "-n", namespace) == "yes"

    kubeconfig = account_kubeconfig(sandbox)
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    sandbox.apply(lb_service("web", "web"), namespace)
    log = sandbox.state_dir / "logs" / "replica-0.log"
    seen = log.stat().st_size if log.exists() else 0
    try:
        with replicas(sandbox, 1, "--kubeconfig", str(kubeconfig), config="podgate"):
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
            mutating = sandbox.get("mutatingwebhookconfiguration", "podgate")
            assert all(h["clientConfig"].get("caBundle") for h in mutating["webhooks"]), (
                "caBundle not written"
            )
    finally:
        sandbox.kubectl(
            "delete", "mutatingwebhookconfiguration,validatingwebhookconfiguration", "podgate", check=False
        )
        sandbox.kubectl("delete", "clusterrole,clusterrolebinding", "podgate-service-status", check=False)
        if policy:
            sandbox.kubectl(
                "delete",
                "validatingadmissionpolicy,validatingadmissionpolicybinding",
                "podgate-controller-writes",
                check=False,
            )
    with log.open(errors="replace") as f:
        f.seek(seen)
        refused = [ln for ln in f.read().splitlines() if "Forbidden" in ln or "forbidden" in ln]
    assert not refused, refused[:5]
