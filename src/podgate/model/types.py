"""Typed shapes of the Kubernetes bodies podgate reads and writes (the parts it uses).

The API server omits empty fields, so almost everything is ``total=False``: the accessors at
the end read a field or its empty value, so callers never dig with ``(x.get(...) or {})``.
Bodies stay plain JSON dicts on the wire (see ``podgate.kube.client``); these types only tell
mypy and the reader which fields podgate relies on.

A pod comes in two types.  ``Pod`` is the object as the API server sends it (the webhook's
review, ``podgate status``, a write's answer).  ``PodView`` is what the controller's caches keep
of it (``podgate.model.projection.slim_pod``): only the fields the projection keeps, every one
read-only (a cached object is shared by the cache, its indexes and snapshots).  A raw ``Pod`` is
a ``PodView`` (it has every field the view has), so code that reads only view fields takes a
``PodView`` and accepts both; a ``PodView`` is not a ``Pod``, so reading a field the projection
dropped (``status.phase``, ``status.containerStatuses``, a container's probes, ``finalizers``)
from a cached pod is a type error instead of a silent empty value.  Read fields by subscript or
through the accessors: mypy gives ``.get`` of an undeclared key the type ``object`` without an
error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast, overload

if TYPE_CHECKING:
    # typing.ReadOnly is Python 3.13's; with ``from __future__ import annotations`` the fields'
    # types stay strings at run time, so only mypy needs it
    from typing_extensions import ReadOnly


class Condition(TypedDict):
    type: str
    status: str
    reason: NotRequired[str | None]
    message: NotRequired[str | None]
    lastTransitionTime: NotRequired[str | None]
    lastProbeTime: NotRequired[str | None]
    #: the pod's ``metadata.generation`` the condition was decided at (Kubernetes 1.34+)
    observedGeneration: NotRequired[int]


#: a pod's condition is the generic condition shape (the kubelet's and the readiness gates')
PodCondition = Condition


class OwnerReference(TypedDict, total=False):
    apiVersion: str
    kind: str
    name: str
    uid: str
    controller: bool


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
    readinessProbe: dict[str, Any]
    lifecycle: dict[str, Any]
    #: ``Always`` on an init container: a native sidecar (1.29+), running beside the main ones
    restartPolicy: str


class PodReadinessGate(TypedDict):
    conditionType: str


class PodSpec(TypedDict, total=False):
    nodeName: str
    containers: list[Container]
    initContainers: list[Container]
    readinessGates: list[PodReadinessGate]
    terminationGracePeriodSeconds: int


class ContainerStateWaiting(TypedDict, total=False):
    reason: str
    message: str


class ContainerStateRunning(TypedDict, total=False):
    startedAt: str


class ContainerStateTerminated(TypedDict, total=False):
    reason: str
    message: str
    exitCode: int


class ContainerState(TypedDict, total=False):
    waiting: ContainerStateWaiting
    running: ContainerStateRunning
    terminated: ContainerStateTerminated


class ContainerStatus(TypedDict, total=False):
    name: str
    ready: bool
    state: ContainerState


class PodStatus(TypedDict, total=False):
    phase: str
    podIP: str
    conditions: list[PodCondition]
    containerStatuses: list[ContainerStatus]


class Pod(TypedDict, total=False):
    """A pod as the API server sends it."""

    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: PodSpec
    status: PodStatus


# -- the pod as the controller's caches keep it (model.projection.slim_pod) -----------------
class PodViewMeta(TypedDict, total=False):
    name: ReadOnly[str]
    namespace: ReadOnly[str]
    uid: ReadOnly[str]
    resourceVersion: ReadOnly[str]
    #: absent before Kubernetes 1.33 (PodObservedGenerationTracking)
    generation: ReadOnly[int]
    creationTimestamp: ReadOnly[str]
    deletionTimestamp: ReadOnly[str]
    deletionGracePeriodSeconds: ReadOnly[int]
    labels: ReadOnly[Mapping[str, str]]
    #: podgate's own only (``podgate.dev/…``: the drain token)
    annotations: ReadOnly[Mapping[str, str]]
    ownerReferences: ReadOnly[Sequence[OwnerReference]]


class ContainerView(TypedDict, total=False):
    name: ReadOnly[str]
    ports: ReadOnly[Sequence[ContainerPort]]


class SidecarView(ContainerView, total=False):
    restartPolicy: ReadOnly[str]  # always ``Always``: the projection keeps native sidecars only


class PodViewSpec(TypedDict, total=False):
    containers: ReadOnly[Sequence[ContainerView]]
    #: native sidecars only (``restartPolicy: Always``): their ports can be a Service's
    initContainers: ReadOnly[Sequence[SidecarView]]
    readinessGates: ReadOnly[Sequence[PodReadinessGate]]
    terminationGracePeriodSeconds: ReadOnly[int]


class PodViewStatus(TypedDict, total=False):
    podIP: ReadOnly[str]
    #: ContainersReady, Ready and the readiness gates' conditions only (no PodScheduled,
    #: Initialized …), without lastProbeTime
    conditions: ReadOnly[Sequence[PodCondition]]


class PodView(TypedDict, total=False):
    """A pod as the controller's caches keep it: what ``slim_pod`` keeps, read-only.  No kind
    or apiVersion, no phase, container statuses, probes, node name, finalizers or other
    annotations; see ``podgate.model.projection``."""

    metadata: ReadOnly[PodViewMeta]
    spec: ReadOnly[PodViewSpec]
    status: ReadOnly[PodViewStatus]


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
    ipMode: str


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
# Each takes a raw ``Pod`` and a cached ``PodView`` alike and answers with the matching type: a
# view's metadata, spec or status has only the view's fields.
@overload
def meta_of(obj: Pod) -> ObjectMeta: ...
@overload
def meta_of(obj: PodView) -> PodViewMeta: ...
@overload
def meta_of(obj: Mapping[str, Any]) -> ObjectMeta: ...
def meta_of(obj: Mapping[str, Any]) -> ObjectMeta | PodViewMeta:
    return cast(ObjectMeta, obj.get("metadata") or {})


def labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return cast(ObjectMeta, obj.get("metadata") or {}).get("labels") or {}


def annotations_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    """The object's annotations (of a ``PodView``, podgate's own only)."""
    return cast(ObjectMeta, obj.get("metadata") or {}).get("annotations") or {}


def is_terminating(obj: Mapping[str, Any]) -> bool:
    return bool(cast(ObjectMeta, obj.get("metadata") or {}).get("deletionTimestamp"))


@overload
def pod_spec(pod: Pod) -> PodSpec: ...
@overload
def pod_spec(pod: PodView) -> PodViewSpec: ...
def pod_spec(pod: PodView) -> PodSpec | PodViewSpec:
    return pod.get("spec") or {}


@overload
def pod_status(pod: Pod) -> PodStatus: ...
@overload
def pod_status(pod: PodView) -> PodViewStatus: ...
def pod_status(pod: PodView) -> PodStatus | PodViewStatus:
    return pod.get("status") or {}


@overload
def containers(pod: Pod) -> Sequence[Container]: ...
@overload
def containers(pod: PodView) -> Sequence[ContainerView]: ...
def containers(pod: PodView) -> Sequence[Container] | Sequence[ContainerView]:
    return (pod.get("spec") or {}).get("containers") or ()


@overload
def sidecars(pod: Pod) -> Sequence[Container]: ...
@overload
def sidecars(pod: PodView) -> Sequence[SidecarView]: ...
def sidecars(pod: PodView) -> Sequence[Container] | Sequence[SidecarView]:
    """The pod's native sidecars: init containers with ``restartPolicy: Always``, which run
    beside the main containers and, like them, may serve a Service's named targetPort."""
    return [
        x for x in (pod.get("spec") or {}).get("initContainers") or () if x.get("restartPolicy") == "Always"
    ]


def pod_conditions(pod: PodView) -> Sequence[PodCondition]:
    return (pod.get("status") or {}).get("conditions") or ()


def pod_ip(pod: PodView) -> str | None:
    return (pod.get("status") or {}).get("podIP") or None


def selector_of(service: Service) -> dict[str, str]:
    return (service.get("spec") or {}).get("selector") or {}


def ingress(service: Service) -> list[LoadBalancerIngress]:
    return ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
