"""The deploy manifests: rendered by kustomize, accepted by the API server (server-side dry run),
least-privilege RBAC equal to what the sandbox's controller runs with, hardened pods."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from podgate.cli import controller_cmd

from .conftest import SandboxHandle, wait_for

pytestmark = pytest.mark.sandbox
ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZATIONS = [
    "deploy/base",
    "deploy/overlays/cert-manager",
    "deploy/overlays/servicemonitor",
    "deploy/overlays/aws",
    "deploy/overlays/alibaba",
    "deploy/overlays/sandbox",
    "deploy/overlays/network-policy",
    "deploy/overlays/migration-labels",
    "deploy/policy",
]

STUB_CRDS = [
    ("cert-manager.io", "Certificate", "certificates"),
    ("cert-manager.io", "Issuer", "issuers"),
    ("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
]


def crd(group: str, kind: str, plural: str) -> dict[str, Any]:
    """A schema-less stand-in CRD so the dry run can check everything else in an overlay."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }


def render(sandbox: SandboxHandle, path: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(sandbox.kubectl("kustomize", str(ROOT / path))) if d]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_server_side_dry_run(sandbox: SandboxHandle, path: str) -> None:
    for group, kind, plural in STUB_CRDS:
        sandbox.apply(crd(group, kind, plural))
        wait_for(
            f"CRD {plural}",
            lambda p=plural, g=group: (
                "True"
                in sandbox.kubectl(  # type: ignore[misc]
                    "get",
                    "crd",
                    f"{p}.{g}",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                )
            ),
        )
    if "podgate-system" not in sandbox.kubectl("get", "namespaces", "-o", "name"):
        sandbox.kubectl("create", "namespace", "podgate-system")
    rendered = sandbox.kubectl("kustomize", str(ROOT / path))
    out = sandbox.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered) if d}
    assert out.count("(server dry run)") == len([d for d in yaml.safe_load_all(rendered) if d])
    if path == "deploy/policy":  # applied beside an install, not one
        assert kinds == {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
        return
    assert {
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "Namespace",
    } <= kinds


def rules(docs: list[dict[str, Any]]) -> list[Any]:
    """Every rule of every Role and ClusterRole, as comparable tuples."""
    return sorted(
        (
            role["kind"],
            sorted(r["apiGroups"]),
            sorted(r["resources"]),
            sorted(r.get("resourceNames") or ()),
            sorted(r["verbs"]),
        )
        for role in docs
        if role["kind"] in ("ClusterRole", "Role")
        for r in role["rules"] or ()
    )


def files(*paths: str) -> list[dict[str, Any]]:
    return [d for p in paths for d in yaml.safe_load_all((ROOT / p).read_text()) if d]


def test_the_sandboxs_rbac_is_deploys_union(sandbox: SandboxHandle) -> None:
    """The sandbox's controller passes every controller test with exactly deploy/base's rules plus
    what deploy/rbac adds (Service rights: it provisions HAProxy and binds cloud groups; the AWS
    target records), on its own webhook configurations' name."""
    deploy = files(
        "deploy/base/rbac.yaml",
        "deploy/rbac/service-finalizers/rbac.yaml",
        "deploy/rbac/service-status/rbac.yaml",
        "deploy/rbac/target-records/rbac.yaml",
    )
    renamed = [
        (kind, groups, resources, ["podgate-sandbox"] if names == ["podgate"] else names, verbs)
        for kind, groups, resources, names, verbs in rules(deploy)
    ]
    assert rules(files("src/podgate_sandbox/rbac.yaml")) == sorted(renamed)
    for kind, _groups, resources, names, verbs in rules(deploy):
        assert "*" not in resources and "*" not in verbs
        # its webhook configurations: read and patch its own, by name; never create, update, delete
        if {"mutatingwebhookconfigurations", "validatingwebhookconfigurations"} & set(resources):
            assert names == ["podgate"] and verbs == ["get", "patch"]
        # its Lease and certificate Secret: in its own namespace only
        assert kind == "Role" or not {"leases", "secrets"} & set(resources)
        # grants are the administrator's: podgate reads them and can never grant itself a group
        assert "loadbalancergroupgrants" not in resources or set(verbs) <= {"get", "list", "watch"}
    # no Service write in the base: only the overlays whose providers need one add it
    assert not [
        r
        for r in rules(files("deploy/base/rbac.yaml"))
        if "services" in r[2] and r[4] != ["get", "list", "watch"]
    ]


@pytest.mark.parametrize(
    ("path", "migration_labels"),
    [
        ("deploy/base", False),
        ("deploy/overlays/cert-manager", False),
        ("deploy/overlays/aws", True),
        ("deploy/overlays/alibaba", True),
    ],
)
def test_each_installs_webhooks_are_what_its_controller_would_render(
    sandbox: SandboxHandle, path: str, migration_labels: bool
) -> None:
    """Each overlay's static webhook configurations carry one webhook per label its controller
    acts on (--migration-labels in the cloud overlays), exactly as podgate renders them."""
    from podgate.webhook import eviction
    from podgate.webhook import server as webhook

    docs = render(sandbox, path)
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    env = {
        e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0].get("env") or ()
    }
    assert (env.get("PODGATE_MIGRATION_LABELS") == "true") is migration_labels
    service = ("podgate-system", "podgate", 443)
    for kind, wanted in (
        ("MutatingWebhookConfiguration", webhook.webhook_configuration),
        ("ValidatingWebhookConfiguration", eviction.webhook_configuration),
    ):
        (found,) = [d for d in docs if d["kind"] == kind]
        body = wanted("podgate", b"", url=None, service=service, migration_labels=migration_labels)
        hooks = [
            {**h, "clientConfig": {k: v for k, v in h["clientConfig"].items() if k != "caBundle"}}
            for h in body["webhooks"]
        ]
        assert found["webhooks"] == hooks, kind


def test_network_policies_open_each_listener_to_its_callers_only(sandbox: SandboxHandle) -> None:
    """deploy/overlays/network-policy (dry-run above): podgate's pods take ingress on three
    ports, each from one kind of caller (the webhook from an address range, the control plane's;
    the drain port from one, the nodes'; /metrics from the namespace monitoring), on container
    ports the Deployment declares under those names, and README tells where to set the ranges."""
    docs = render(sandbox, "deploy/overlays/network-policy")
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    declared = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    allowed: dict[str, list[dict[str, Any]]] = {}
    for policy in policies:
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"] and "egress" not in spec
        assert spec["podSelector"]["matchLabels"].items() <= labels.items()
        for rule in spec["ingress"]:
            assert rule["from"], f"{policy['metadata']['name']}: a rule with no source opens to all"
            for port in rule["ports"]:
                allowed.setdefault(port["port"], []).extend(rule["from"])
    assert set(allowed) == {"webhook", "drain", "health"} <= declared
    assert [list(f) for f in allowed["webhook"]] == [["ipBlock"]]
    assert [list(f) for f in allowed["drain"]] == [["ipBlock"]]
    assert allowed["health"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    readme = (ROOT / "README.md").read_text()
    assert "deploy/overlays/network-policy" in readme and "NODE RANGE" in readme


@pytest.mark.parametrize("crd", ["readinesscheck", "loadbalancergroupgrant"])
def test_crd_is_the_one_the_sandbox_installs(crd: str) -> None:
    assert (ROOT / f"deploy/base/{crd}-crd.yaml").read_text() == (
        ROOT / f"src/podgate/crds/{crd}.yaml"
    ).read_text()
    assert f"{crd}-crd.yaml" in (ROOT / "deploy/base/kustomization.yaml").read_text()


def test_pods_are_hardened_and_never_gated(sandbox: SandboxHandle) -> None:
    docs = render(sandbox, "deploy/base")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]
    assert dep["spec"]["replicas"] == 2
    assert pod["metadata"]["labels"]["podgate.dev/pod-readiness-gate-inject"] == "disabled"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    c = pod["spec"]["containers"][0]
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert (
        c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    )
    assert "--leader-elect" in c["args"]
    # podgate's own availability: scheduled before what it gates, spread over nodes, and memory
    # above the 256 MiB peak measured at 5,000 pods (bench/results/scale-at-composition-root.md)
    (pdb,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["minAvailable"] == 1 and pdb["spec"]["selector"] == dep["spec"]["selector"]
    classes = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PriorityClass"}
    assert classes[pod["spec"]["priorityClassName"]]["value"] > 0
    (spread,) = pod["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    limit = c["resources"]["limits"]["memory"]
    assert limit.endswith("Mi") and int(limit[:-2]) >= 256 + 64, limit
    hook = next(
        d
        for d in render(sandbox, "deploy/overlays/cert-manager")
        if d["kind"] == "MutatingWebhookConfiguration"
    )["webhooks"][0]
    assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None"
    assert hook["objectSelector"]["matchExpressions"][0]["values"] == ["disabled"]
    assert hook["namespaceSelector"]["matchLabels"] == {"podgate.dev/pod-readiness-gate-inject": "enabled"}


@pytest.mark.parametrize(
    ("path", "provider", "credentials"),
    [
        ("deploy/overlays/aws", "aws", ("ServiceAccount", "eks.amazonaws.com/role-arn")),
        ("deploy/overlays/alibaba", "alibaba", ("ServiceAccount", "pod-identity.alibabacloud.com/role-name")),
    ],
)
def test_cloud_overlays_configure_their_provider(
    sandbox: SandboxHandle,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    provider: str,
    credentials: tuple[str, str],
) -> None:
    """The overlay's environment and arguments, read by podgate's own settings parser: the cloud
    provider is the only one, serving its class, and the workload identity is wired."""
    docs = render(sandbox, path)
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][
        0
    ]
    monkeypatch.delenv("KUBECONFIG", raising=False)
    for e in container["env"]:
        if "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
    assert container["args"][0] == "controller"
    settings = controller_cmd.controller_settings(container["args"][1:], os.environ)
    # the cloud's own controller keeps class-less Services; podgate serves podgate.dev/<provider>
    assert settings.default_provider is None and settings.haproxy == ()
    assert settings.classes() == {f"podgate.dev/{provider}": provider}
    # namespaces labelled for the vendor's controller get podgate's gates too
    assert settings.migration_labels is True
    assert [p.name for p in (settings.aws if provider == "aws" else settings.alibaba)] == [provider]
    kind, annotation = credentials
    assert annotation in next(d for d in docs if d["kind"] == kind)["metadata"]["annotations"]
    if provider == "alibaba":
        assert settings.adopt_gate_prefixes == ("service.readiness.alibabacloud.com/",)
        namespace = next(d for d in docs if d["kind"] == "Namespace")
        assert namespace["metadata"]["labels"]["pod-identity.alibabacloud.com/injection"] == "on"
    else:
        assert settings.remove_gate_prefixes == ("target-health.elbv2.k8s.aws/",)
