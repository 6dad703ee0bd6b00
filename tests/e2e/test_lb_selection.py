"""Which Services podgate serves, and namespaces set up for another controller, as a user sees
them on the sandbox: the provider annotation, the sandbox's default provider for class-less
Services, ``spec.loadBalancerClass`` (Alibaba Cloud's NLB class, which the sandbox maps to its
HAProxy, and another controller's class, which podgate leaves alone)."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest

from .conftest import SandboxHandle, condition, reconciled_after, wait_for, wide_row
from .test_controller import (
    INJECT,
    all_ready,
    deployment,
    events,
    external_ip,
    gate,
    lb_service,
    pods,
    servers,
)

pytestmark = pytest.mark.sandbox
ALIBABA_LABEL = "k8s.alibabacloud.com/pod-readiness-gate-inject"
ALIBABA_GATE = "service.readiness.alibabacloud.com/my-svc"


def test_a_service_opted_out_gets_nothing_and_the_annotation_serves_a_cluster_ip(
    sandbox: SandboxHandle, namespace: str
) -> None:
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    # another controller's LoadBalancer Service (podgate told to leave it) and a ClusterIP Service
    # podgate serves because its annotation says so
    sandbox.apply(lb_service("theirs", "theirs", **{"podgate.dev/load-balancer-provider": "none"}), namespace)
    sandbox.apply(
        lb_service("web", "web", "ClusterIP", **{"podgate.dev/load-balancer-provider": "haproxy"}), namespace
    )
    sandbox.apply(deployment("theirs", 1), namespace)
    sandbox.apply(deployment("web", 1), namespace)
    [mine] = wait_for(
        "the annotated Service's pod Ready", lambda: all_ready(sandbox, namespace, "web", 1), 30
    )
    assert mine["spec"]["readinessGates"] == [{"conditionType": gate("web")}]
    assert (condition(mine, gate("web")) or {}).get("status") == "True"
    assert [s.status[:2] for s in servers(sandbox, f"podgate.{namespace}.web.80")] == ["UP"]
    [theirs] = wait_for("the other pod Ready", lambda: all_ready(sandbox, namespace, "theirs", 1), 30)
    assert "readinessGates" not in theirs["spec"], "no gate for a Service podgate does not serve"
    assert wide_row(sandbox, namespace, theirs["metadata"]["name"])["READINESS GATES"] == "<none>"
    # podgate has looked at "theirs" since it and its pod were made, and decided nothing to do
    reconciled_after(sandbox, f"{namespace}/theirs")
    svc = sandbox.get("service", "theirs", "-n", namespace)
    assert not (svc.get("status") or {}).get("loadBalancer"), "no status.loadBalancer write"
    assert not svc["metadata"].get("finalizers")
    assert [e for e in events(sandbox, namespace, "theirs") if e["involvedObject"]["kind"] == "Service"] == []
    assert servers(sandbox, f"podgate.{namespace}.theirs.80") == []


#: the image the procedure's manifest names (the node agent runs its built-in app for any image)
SEED_IMAGE = "anolis-registry.cn-zhangjiakou.cr.aliyuncs.com/openanolis/nginx:1.14.1-8.6"


#: the NLB template's own example (``${zone-A}:${vsw-A},${zone-B}:${vsw-B}`` in the doc)
NLB_ZONE_MAPS = "cn-hangzhou-k:vsw-i123456,cn-hangzhou-j:vsw-j654321"


def seed_manifests(nlb: bool = False) -> list[dict[str, Any]]:
    """Alibaba Cloud's readiness-gate procedure, as written for its controller: Step 1's CLB
    template for ``my-svc`` (class-less), or with ``nlb`` its NLB template (Alibaba's NLB class
    and the zone-maps annotation an NLB requires)."""
    service: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "my-svc"},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": "nginx"},
            "ports": [{"port": 80, "targetPort": 80, "protocol": "TCP"}],
        },
    }
    if nlb:
        service["metadata"]["annotations"] = {
            "service.beta.kubernetes.io/alibaba-cloud-loadbalancer-zone-maps": NLB_ZONE_MAPS
        }
        service["spec"]["loadBalancerClass"] = "alibabacloud.com/nlb"
    nginx = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "my-nginx", "labels": {"app": "nginx"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "nginx"}},
            "template": {
                "metadata": {"labels": {"app": "nginx"}},
                "spec": {
                    "readinessGates": [{"conditionType": ALIBABA_GATE}],
                    "containers": [{"name": "nginx", "image": SEED_IMAGE, "ports": [{"containerPort": 80}]}],
                },
            },
        },
    }
    return [service, nginx]


@pytest.mark.compat
@pytest.mark.parametrize("nlb", [False, True], ids=["clb", "nlb"])
def test_alibaba_procedure_runs_verbatim(sandbox: SandboxHandle, namespace: str, nlb: bool) -> None:
    """Namespace label, my-svc (the CLB or the NLB template) and my-nginx as written for
    Alibaba Cloud's controller: pods turn Ready only once HAProxy says healthy, and the app
    answers through the EXTERNAL-IP."""
    sandbox.kubectl("label", "namespace", namespace, f"{ALIBABA_LABEL}=enabled")
    service, nginx = seed_manifests(nlb)
    sandbox.apply(service, namespace)
    if nlb:  # the API server kept the class (1.20's dropped it)
        assert sandbox.get("service", "my-svc", "-n", namespace)["spec"]["loadBalancerClass"] == (
            "alibabacloud.com/nlb"
        )
    sandbox.apply(nginx, namespace)
    be = f"podgate.{namespace}.my-svc.80"
    seen_pending = False
    deadline = time.monotonic() + 60
    ready: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        current = pods(sandbox, namespace, "nginx")
        up = {s.address for s in servers(sandbox, be) if s.status.startswith("UP")}
        for p in current:
            address = f"{p['status'].get('podIP')}:80"
            if (condition(p, "Ready") or {}).get("status") == "True":
                assert address in up, f"{p['metadata']['name']} Ready before HAProxy said UP"
            elif (condition(p, "ContainersReady") or {}).get("status") == "True":
                seen_pending = True
        if len(current) == 2 and all((condition(p, "Ready") or {}).get("status") == "True" for p in current):
            ready = current
            break
        time.sleep(0.1)
    assert ready, f"my-nginx pods not Ready: {pods(sandbox, namespace, 'nginx')}"
    assert seen_pending, "containers were ready while the gate held the pod back"
    for p in ready:
        types = [g["conditionType"] for g in p["spec"]["readinessGates"]]
        assert ALIBABA_GATE in types and gate("my-svc") in types, (
            "namespace label honoured: podgate's gate too"
        )
        for t in types:
            c = condition(p, t) or {}
            assert c.get("status") == "True" and c.get("reason") == "TargetHealthy", (t, c)
        row = wide_row(sandbox, namespace, p["metadata"]["name"])
        assert row["READINESS GATES"] == f"{len(types)}/{len(types)}"
    ip = wait_for("an EXTERNAL-IP", lambda: external_ip(sandbox, namespace, "my-svc"))
    answered = set()
    for _ in range(6):
        with urllib.request.urlopen(f"http://{ip}/", timeout=3) as r:
            assert r.status == 200
            answered.add(r.headers["X-Pod-Name"])
    assert answered == {p["metadata"]["name"] for p in ready}


def test_a_service_of_another_controllers_class_is_left_alone(sandbox: SandboxHandle, namespace: str) -> None:
    """AWS's NLB class in an opted-in namespace: the AWS controller's Service, not podgate's
    (which serves only its own classes and the sandbox's mapped Alibaba ones). Its pods are not
    gated and turn Ready on their containers; the Service gets no address, finalizer, Event or
    HAProxy backend from podgate, after podgate has demonstrably looked at it."""
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    theirs = lb_service(
        "theirs", "theirs", **{"service.beta.kubernetes.io/aws-load-balancer-type": "external"}
    )
    theirs["spec"]["loadBalancerClass"] = "service.k8s.aws/nlb"
    sandbox.apply(theirs, namespace)
    sandbox.apply(deployment("theirs", 1), namespace)
    [pod] = wait_for("the pod Ready", lambda: all_ready(sandbox, namespace, "theirs", 1), 30)
    assert "readinessGates" not in pod["spec"], "no gate for a Service podgate does not serve"
    assert wide_row(sandbox, namespace, pod["metadata"]["name"])["READINESS GATES"] == "<none>"
    reconciled_after(sandbox, f"{namespace}/theirs")
    svc = sandbox.get("service", "theirs", "-n", namespace)
    assert svc["spec"]["loadBalancerClass"] == "service.k8s.aws/nlb"
    assert not (svc.get("status") or {}).get("loadBalancer"), "no status.loadBalancer write"
    assert not svc["metadata"].get("finalizers")
    assert [e for e in events(sandbox, namespace, "theirs") if e["involvedObject"]["kind"] == "Service"] == []
    assert servers(sandbox, f"podgate.{namespace}.theirs.80") == []
    assert external_ip(sandbox, namespace, "theirs") is None
