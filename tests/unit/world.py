"""A cluster in memory for the controller's unit tests: FakeKube, synced informers, a
recorder that keeps its Events, and builders of the bodies podgate reads."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from podgate.controller.gatewriter import GateWriter
from podgate.controller.reconciler import ServiceReconciler
from podgate.kube.api import NAMESPACES, PODS, SERVICES, Obj, Resource
from podgate.kube.events import EventRecorder
from podgate.kube.fake import FakeKube
from podgate.kube.informer import Informer
from podgate.model import gates
from podgate.model.policy import GatePolicy
from podgate.model.projection import slim_namespace, slim_pod, slim_service
from podgate.model.types import Namespace, Pod, PodView, Service
from podgate.providers.fake import FakeProvider
from podgate.resolutions import ServiceResolutions, grants_informer

NS = "shop"


class Recorded(EventRecorder):
    """Keeps what would be sent: (kind, object name, reason, type)."""

    def __init__(self, kube: FakeKube) -> None:
        super().__init__(kube, "podgate")
        self.events: list[tuple[str, str, str, str]] = []

    def emit_later(
        self, obj: Mapping[str, Any], kind: str, reason: str, message: str, type_: str = "Normal"
    ) -> None:
        self.events.append((kind, obj["metadata"]["name"], reason, type_))


def pod(
    name: str,
    ip: str | None = "10.0.0.1",
    *,
    ready: bool = True,
    app: str = "web",
    gate_for: str | None = "web",
    terminating: bool = False,
) -> Pod:
    p: Pod = {
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "labels": {"app": app}},
        "spec": {"containers": [{"name": "app"}]},
        "status": {
            "conditions": [
                {"type": "ContainersReady", "status": "True" if ready else "False"},
                {"type": "Ready", "status": "False"},
            ]
        },
    }
    if ip:
        p["status"]["podIP"] = ip
    if gate_for:
        p["spec"]["readinessGates"] = [{"conditionType": gates.service_gate(gate_for)}]
    if terminating:
        p["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return p


def service(name: str = "web", *, port: int = 80, target_port: int = 8080, **meta: Any) -> Service:
    s: Service = {
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", **meta},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": name},
            "ports": [{"port": port, "targetPort": target_port, "protocol": "TCP"}],
        },
    }
    return s


def grant(name: str, provider: str, namespaces: list[str], groups: list[str]) -> Obj:
    """A LoadBalancerGroupGrant as an administrator would write it."""
    return {
        "apiVersion": "podgate.dev/v1alpha1",
        "kind": "LoadBalancerGroupGrant",
        "metadata": {"name": name},
        "spec": {"provider": provider, "namespaces": namespaces, "groups": groups},
    }


class World:
    def __init__(
        self,
        provider: FakeProvider | None = None,
        *,
        sticky: bool = True,
        policy: GatePolicy | None = None,
        default: str | None = "fake",
        lb_cidr: str | None = None,
        adopted_prefixes: tuple[str, ...] = (),
        fence: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.kube = FakeKube()
        self.kube.add(NAMESPACES, {"metadata": {"name": NS}})
        self.provider = provider or FakeProvider()
        # the controller's projections (model.projection)
        self.pods: Informer[PodView] = Informer(self.kube, PODS, project=slim_pod)
        self.services: Informer[Service] = Informer(self.kube, SERVICES, project=slim_service)
        self.namespaces: Informer[Namespace] = Informer(self.kube, NAMESPACES, project=slim_namespace)
        self.grants: Informer[Obj] = grants_informer(self.kube)
        self.recorder = Recorded(self.kube)
        self.resolutions = ServiceResolutions(
            self.services,
            {"fake": self.provider.provider()},
            default_provider=default,
            policy=policy or GatePolicy(continuous=not sticky),
            grants=self.grants,
        )
        self.gates = GateWriter(self.kube, self.pods, self.recorder, fence)
        #: Service keys queued again because a gate write failed
        self.requeued: list[str] = []
        self.reconciler = ServiceReconciler(
            self.kube,
            self.pods,
            self.services,
            self.namespaces,
            self.resolutions,
            self.recorder,
            self.gates,
            lb_cidr=lb_cidr,
            adopted_prefixes=adopted_prefixes,
            on_write_failed=self.requeued.append,
            fence=fence,
        )

    def add(self, resource: Resource, *objs: Mapping[str, Any]) -> None:
        for obj in objs:
            self.kube.add(resource, obj)

    async def sync(self) -> None:
        """What the informers would hold once their watches caught up."""
        for informer in (self.pods, self.services, self.namespaces, self.grants):
            await informer.relist()

    async def reconcile(self, key: str = f"{NS}/web") -> None:
        await self.sync()
        self.kube.writes.clear()
        self.recorder.events.clear()
        try:
            await self.reconciler.reconcile(key)
        finally:
            await self.gates.flush()  # what the controller's gate writers would send

    def condition(self, pod_name: str, service_name: str = "web") -> dict[str, Any] | None:
        obj = self.kube.object(PODS, pod_name, NS) or {}
        gate = gates.service_gate(service_name)
        return next((c for c in obj["status"].get("conditions", ()) if c["type"] == gate), None)
