"""Which Services podgate serves (loadBalancerClass, the provider annotation, a default
provider) and which namespaces opt in (podgate's label, the vendors' with the migration
setting): a Service podgate does not serve gets nothing from it."""

from __future__ import annotations

from typing import Any

import pytest

from podgate.cli.controller_cmd import controller_settings
from podgate.kube.api import PODS, SERVICES
from podgate.model import gates, lb
from podgate.providers.fake import FakeProvider
from podgate.webhook.server import webhook_configuration
from tests.unit.world import NS, World, pod, service

ALIBABA_GATE = "service.readiness.alibabacloud.com/"


def svc(type_: str = "LoadBalancer", lb_class: str | None = None, **ann: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": type_, "selector": {"app": "web"}, "ports": [{"port": 80}]}
    if lb_class:
        spec["loadBalancerClass"] = lb_class
    return {"metadata": {"name": "web", "namespace": "ns", "annotations": ann}, "spec": spec}


CONFIGURED = ["haproxy", "aws"]


@pytest.mark.parametrize(
    ("service", "default", "classes", "want"),
    [
        (svc(lb_class="podgate.dev/haproxy"), None, None, "haproxy"),
        (svc(lb_class="podgate.dev/aws"), "haproxy", None, "aws"),
        (svc(lb_class="service.k8s.aws/nlb"), "haproxy", None, None),  # the AWS controller's
        (svc(lb_class="podgate.dev/f5"), "haproxy", None, None),  # no such provider: not ours
        (svc(lb_class="service.k8s.aws/nlb"), None, {"service.k8s.aws/nlb": "aws"}, "aws"),
        (svc(lb_class="podgate.dev/haproxy"), None, {"example.com/lb": "haproxy"}, None),
        (svc(), None, None, None),  # class-less: the cloud controller manager's
        (svc(), "haproxy", None, "haproxy"),  # ... unless the operator names a default
        (svc("ClusterIP"), "haproxy", None, None),
        (svc("ClusterIP", **{gates.PROVIDER_ANNOTATION: "aws"}), None, None, "aws"),
        (svc(**{gates.PROVIDER_ANNOTATION: "aws"}), None, None, "aws"),
        (svc(lb_class="podgate.dev/haproxy", **{gates.PROVIDER_ANNOTATION: "aws"}), None, None, "aws"),
        (svc(lb_class="podgate.dev/haproxy", **{gates.PROVIDER_ANNOTATION: "none"}), None, None, None),
    ],
    ids=[
        "class",
        "class-beats-default",
        "other-controllers-class",
        "class-of-no-configured-provider",
        "configured-class",
        "configured-classes-replace-the-defaults",
        "class-less-without-default",
        "class-less-with-default",
        "cluster-ip",
        "annotation-on-cluster-ip",
        "annotation-without-default",
        "annotation-beats-class",
        "annotation-none-opts-out",
    ],
)
def test_which_services_podgate_serves(
    service: dict[str, Any], default: str | None, classes: dict[str, str] | None, want: str | None
) -> None:
    assert lb.provider_for(service, default, CONFIGURED, classes) == want


def test_the_annotation_on_another_controllers_class_is_a_clear_error() -> None:
    with pytest.raises(
        lb.ServiceConfigError, match=r"conflicts with spec.loadBalancerClass='service.k8s.aws/nlb'"
    ):
        lb.provider_for(
            svc(lb_class="service.k8s.aws/nlb", **{gates.PROVIDER_ANNOTATION: "aws"}), None, CONFIGURED
        )


def test_classes_from_the_settings() -> None:
    base = [
        "--haproxy-runtime-socket",
        "/run/h.sock",
        "--aws-provider",
        "aws",
        "--aws-region",
        "us-east-1",
        "--cluster-name",
        "c",
    ]
    settings = controller_settings(base, {})
    assert settings.default_provider is None  # class-less Services are left alone by default
    assert settings.classes() == {"podgate.dev/haproxy": "haproxy", "podgate.dev/aws": "aws"}
    settings = controller_settings(
        [*base, "--load-balancer-class", "service.k8s.aws/nlb=aws"], {"PODGATE_DEFAULT_PROVIDER": "haproxy"}
    )
    assert settings.classes() == {"service.k8s.aws/nlb": "aws"}
    assert settings.default_provider == "haproxy"


def foreign(name: str = "web") -> Any:
    s = service(name)
    s["spec"]["loadBalancerClass"] = "service.k8s.aws/nlb"
    return s


@pytest.mark.parametrize("binds", [False, True], ids=["provisioning", "group-binding"])
async def test_a_service_podgate_does_not_serve_gets_nothing_from_it(binds: bool) -> None:
    """Another controller's Service, with pods carrying that vendor's gate (adopted prefix): no
    gate condition, no Event, no status or finalizer write, no load-balancer call."""
    world = World(
        FakeProvider(binds_user_groups=binds), lb_cidr="127.240.0.0/24", adopted_prefixes=(ALIBABA_GATE,)
    )
    vendor_gated = pod("p1", gate_for=None)
    vendor_gated["spec"]["readinessGates"] = [{"conditionType": ALIBABA_GATE + "web"}]
    world.add(SERVICES, foreign())
    world.add(PODS, vendor_gated, pod("p2", ip="10.0.0.2", gate_for=None))
    await world.reconcile()
    assert world.kube.writes == []
    assert world.recorder.events == []
    assert [c for c in world.provider.calls if c[0] not in ("release", "unbind")] == []
    assert not world.resolutions.of(foreign()).handled


async def test_a_class_less_service_without_a_default_provider_gets_nothing() -> None:
    world = World(lb_cidr="127.240.0.0/24", default=None)
    world.add(SERVICES, service())
    world.add(PODS, pod("p1", gate_for=None))
    await world.reconcile()
    assert world.kube.writes == [] and world.recorder.events == []


async def test_podgates_own_class_is_served_and_gets_its_address() -> None:
    world = World(lb_cidr="127.240.0.0/24", default=None)
    mine = service()
    mine["spec"]["loadBalancerClass"] = "podgate.dev/fake"
    world.add(SERVICES, mine)
    world.add(PODS, pod("p1"))
    await world.reconcile()
    assert world.condition("p1") is not None
    published = world.kube.object(SERVICES, "web", NS) or {}
    assert published["status"]["loadBalancer"]["ingress"][0]["ip"].startswith("127.240.0.")


async def test_a_cluster_ip_service_served_by_annotation_gets_gates_but_no_external_ip() -> None:
    """The API server refuses status.loadBalancer on a Service that is not of type LoadBalancer
    (422 on every pass, seen on 1.37): podgate writes none there."""
    world = World(lb_cidr="127.240.0.0/24", default=None)
    mine = service()
    mine["spec"]["type"] = "ClusterIP"
    mine["metadata"]["annotations"] = {gates.PROVIDER_ANNOTATION: "fake"}
    world.add(SERVICES, mine)
    world.add(PODS, pod("p1"))
    await world.reconcile()
    assert (world.condition("p1") or {}).get("reason") != "ServiceConfigInvalid"
    assert world.resolutions.of(mine).provider == "fake"
    assert [w for w in world.kube.writes if w.resource == "services/status"] == []


@pytest.mark.parametrize(
    ("labels", "migration", "want"),
    [
        ({gates.INJECT_LABEL: "enabled"}, False, True),
        ({"k8s.alibabacloud.com/pod-readiness-gate-inject": "enabled"}, False, False),
        ({"k8s.alibabacloud.com/pod-readiness-gate-inject": "enabled"}, True, True),
        ({"elbv2.k8s.aws/pod-readiness-gate-inject": "enabled"}, True, True),
        ({"elbv2.k8s.aws/pod-readiness-gate-inject": "disabled"}, True, False),
        ({}, True, False),
    ],
)
def test_namespace_opt_in(labels: dict[str, str], migration: bool, want: bool) -> None:
    assert gates.opted_in(labels, migration) is want


def selected(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A namespaceSelector as the API server reads it (matchLabels, In, NotIn)."""
    ok = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
    for e in selector.get("matchExpressions", ()):
        has = labels.get(e["key"]) in e["values"]
        ok = ok and (has if e["operator"] == "In" else not has)
    return ok


@pytest.mark.parametrize(
    "labels",
    [
        {gates.INJECT_LABEL: "enabled"},
        {"k8s.alibabacloud.com/pod-readiness-gate-inject": "enabled"},
        {"elbv2.k8s.aws/pod-readiness-gate-inject": "enabled", gates.INJECT_LABEL: "enabled"},
        {"elbv2.k8s.aws/pod-readiness-gate-inject": "enabled"},
        {
            "k8s.alibabacloud.com/pod-readiness-gate-inject": "enabled",
            "elbv2.k8s.aws/pod-readiness-gate-inject": "enabled",
        },
        {},
        {gates.INJECT_LABEL: "disabled"},
    ],
)
def test_the_webhook_is_called_once_per_pod_in_a_namespace_opted_in_by_any_label(
    labels: dict[str, str],
) -> None:
    for migration in (False, True):
        hooks = webhook_configuration(
            "podgate", b"ca", url="https://h/m", service=None, migration_labels=migration
        )
        calls = sum(selected(h["namespaceSelector"], labels) for h in hooks["webhooks"])
        assert calls == (1 if gates.opted_in(labels, migration) else 0)
        assert len({h["name"] for h in hooks["webhooks"]}) == len(hooks["webhooks"])
    plain = webhook_configuration("podgate", b"ca", url="https://h/m", service=None)["webhooks"]
    assert [h["namespaceSelector"] for h in plain] == [{"matchLabels": {gates.INJECT_LABEL: "enabled"}}]
