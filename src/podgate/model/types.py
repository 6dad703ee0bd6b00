"""Typed shapes of the Kubernetes bodies podgate reads and writes (the parts it uses).

The API server omits empty fields, so almost everything is ``total=False``: the accessors at
the end read a field or its empty value, so callers never dig with ``(x.get(...) or {})``.
Bodies stay plain JSON dicts on the wire (see ``podgate.kube.client``); these types only tell
mypy and the reader which fields podgate relies on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NotRequired, TypedDict, cast


class Condition(TypedDict):
    type: str
    status: str
    reason: NotRequired[str | None]
    message: NotRequired[str | None]
    lastTransitionTime: NotRequired[str | None]
    lastProbeTime: NotRequired[str | None]


#: a pod's condition is the generic condition shape (the kubelet's and the readiness gates')
PodCondition = Condition


class OwnerReference(TypedDict, total=False):
    apiVersion: str
    kind: str
    name: str
    uid: str


class ObjectMeta(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    resourceVersion: str
    generation: int
    creationTimestamp: str
    deletionTimestamp: str
    deletionGracePeriodSeconds: int
    labels: dict[str, str]
    annotations: dict[str, str]
    finalizers: list[str]
    ownerReferences: list[OwnerReference]


class ContainerPort(TypedDict, total=False):
    name: str
    containerPort: int
    protocol: str


class Container(TypedDict, total=False):
    name: str
    image: str
    ports: list[ContainerPort]


class PodReadinessGate(TypedDict):
    conditionType: str


class PodSpec(TypedDict, total=False):
    nodeName: str
    containers: list[Container]
    readinessGates: list[PodReadinessGate]
    terminationGracePeriodSeconds: int


class PodStatus(TypedDict, total=False):
    phase: str
    podIP: str
    conditions: list[PodCondition]


class Pod(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: PodSpec
    status: PodStatus


class ServicePort(TypedDict, total=False):
    name: str
    port: int
    targetPort: int | str
    protocol: str


class ServiceSpec(TypedDict, total=False):
    type: str
    selector: dict[str, str]
    ports: list[ServicePort]
    loadBalancerClass: str


class LoadBalancerIngress(TypedDict, total=False):
    ip: str
    hostname: str


class LoadBalancerStatus(TypedDict, total=False):
    ingress: list[LoadBalancerIngress] | None


class ServiceStatus(TypedDict, total=False):
    loadBalancer: LoadBalancerStatus


class Service(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: ServiceSpec
    status: ServiceStatus


class Namespace(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta


class LeaseSpec(TypedDict, total=False):
    holderIdentity: str | None
    leaseDurationSeconds: int
    acquireTime: str | None
    renewTime: str | None
    leaseTransitions: int


class Lease(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: LeaseSpec


class ObjectReference(TypedDict, total=False):
    apiVersion: str
    kind: str
    name: str
    namespace: str | None
    uid: str | None
    resourceVersion: str | None


class EventSource(TypedDict, total=False):
    component: str
    host: str


class Event(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    involvedObject: ObjectReference
    reason: str
    message: str
    type: str
    source: EventSource
    firstTimestamp: str
    lastTimestamp: str
    count: int
    reportingComponent: str


# -- accessors: a field or its empty value ---------------------------------------------------
def meta_of(obj: Mapping[str, Any]) -> ObjectMeta:
    return cast(ObjectMeta, obj.get("metadata") or {})


def labels(obj: Mapping[str, Any]) -> dict[str, str]:
    return meta_of(obj).get("labels") or {}


def is_terminating(obj: Mapping[str, Any]) -> bool:
    return bool(meta_of(obj).get("deletionTimestamp"))


def pod_conditions(pod: Pod) -> Sequence[PodCondition]:
    return (pod.get("status") or {}).get("conditions") or ()


def pod_ip(pod: Pod) -> str | None:
    return (pod.get("status") or {}).get("podIP") or None


def pod_spec(pod: Pod) -> PodSpec:
    return pod.get("spec") or {}


def selector_of(service: Service) -> dict[str, str]:
    return (service.get("spec") or {}).get("selector") or {}


def ingress(service: Service) -> list[LoadBalancerIngress]:
    return ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
