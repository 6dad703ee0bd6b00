"""What the controller's caches keep of each object: a slim projection, built once per event.

A pod as the API server sends it is 10-40 KiB of JSON (managed fields, the whole spec, every
container status); podgate reads a few dozen fields of it.  The informers keep only these, in
the same shape (plain dicts, the same keys), and drop the raw object as soon as it is
projected.  A projected pod is typed ``PodView`` (``podgate.model.types``), which declares
only the kept fields: reading a dropped one from a cached pod is a type error.  Strings that
repeat across thousands of pods (label keys and values, condition types and statuses) are
interned, so they are stored once.

What a pod keeps: its key (name, namespace), uid, resourceVersion, generation (1.33+: what a
gate's ``observedGeneration`` reports), creation time, labels,
deletion time and grace period, podgate's annotations (``podgate.dev/``: the drain token), owner
references (apiVersion, kind, name, uid, controller), its readiness gates, the containers'
names and ports and those of its native sidecars (restartable init containers: a Service's
named targetPort may name either), its termination grace period, its IP, and
of its conditions ContainersReady, Ready and those of its readiness gates (or podgate's
prefix), each with its status, reason, message and transition time.  Nothing else: no kind or
apiVersion, phase, container statuses, probes, node name, finalizers, other annotations,
PodScheduled or Initialized (``podgate status`` reads those from the API, never the cache).

A Service keeps what ``model.lb`` and ``model.policy`` read: metadata without managed fields,
its type, selector, ports and class, and its load-balancer ingress.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, cast

from podgate.model import conditions as c
from podgate.model.gates import SERVICE_GATE_PREFIX
from podgate.model.types import Namespace, PodView, Service

#: a pod's annotations kept: podgate's own (the drain token the preStop hook names it by)
PODGATE_PREFIX = "podgate.dev/"

_intern = sys.intern
_CONDITION_KEYS = ("reason", "message", "lastTransitionTime")
_OWNER_KEYS = ("apiVersion", "kind", "name", "uid", "controller")


def _labels(raw: Mapping[str, str] | None) -> dict[str, str]:
    return {_intern(k): _intern(v) for k, v in (raw or {}).items()}


def slim_pod(raw: Mapping[str, Any]) -> PodView:
    """The pod as the controller keeps it (see the module's docstring)."""
    meta = raw.get("metadata") or {}
    spec = raw.get("spec") or {}
    status = raw.get("status") or {}
    slim_meta: dict[str, Any] = {
        "name": meta.get("name"),
        "namespace": _intern(meta.get("namespace") or ""),
        "uid": meta.get("uid"),
        "resourceVersion": meta.get("resourceVersion"),
        "creationTimestamp": meta.get("creationTimestamp"),
        "labels": _labels(meta.get("labels")),
    }
    if meta.get("generation") is not None:
        slim_meta["generation"] = meta["generation"]
    if meta.get("deletionTimestamp"):
        slim_meta["deletionTimestamp"] = meta["deletionTimestamp"]
    if meta.get("deletionGracePeriodSeconds") is not None:
        slim_meta["deletionGracePeriodSeconds"] = meta["deletionGracePeriodSeconds"]
    ours = {k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith(PODGATE_PREFIX)}
    if ours:
        slim_meta["annotations"] = ours
    owners = meta.get("ownerReferences")
    if owners:
        slim_meta["ownerReferences"] = [{k: o[k] for k in _OWNER_KEYS if k in o} for o in owners]
    gate_types = [
        _intern(g["conditionType"]) for g in spec.get("readinessGates") or () if g.get("conditionType")
    ]
    slim_spec: dict[str, Any] = {"containers": [_container(x) for x in spec.get("containers") or ()]}
    sidecars = [x for x in spec.get("initContainers") or () if x.get("restartPolicy") == "Always"]
    if sidecars:
        slim_spec["initContainers"] = [_container(x) | {"restartPolicy": "Always"} for x in sidecars]
    if spec.get("terminationGracePeriodSeconds") is not None:
        slim_spec["terminationGracePeriodSeconds"] = spec["terminationGracePeriodSeconds"]
    if gate_types:
        slim_spec["readinessGates"] = [{"conditionType": t} for t in gate_types]
    kept = {c.CONTAINERS_READY, c.READY, *gate_types}
    conditions = []
    for cond in status.get("conditions") or ():
        ctype = cond.get("type") or ""
        if ctype in kept or ctype.startswith(SERVICE_GATE_PREFIX):
            slim = {"type": _intern(ctype), "status": _intern(cond.get("status") or "")}
            for k in _CONDITION_KEYS:
                if cond.get(k) is not None:
                    slim[k] = cond[k]
            if slim.get("reason"):
                slim["reason"] = _intern(slim["reason"])
            conditions.append(slim)
    slim_status: dict[str, Any] = {"conditions": conditions}
    if status.get("podIP"):
        slim_status["podIP"] = status["podIP"]
    return cast(PodView, {"metadata": slim_meta, "spec": slim_spec, "status": slim_status})


def _container(raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": raw.get("name")}
    ports = [
        {
            k: _intern(v) if isinstance(v, str) else v
            for k, v in p.items()
            if k in ("name", "containerPort", "protocol")
        }
        for p in raw.get("ports") or ()
    ]
    if ports:
        out["ports"] = ports
    return out


def slim_service(raw: Mapping[str, Any]) -> Service:
    """The Service as the controller keeps it: no managed fields; of its cluster IPs only
    ``clusterIP`` (the drain hook's address when podgate's own Service is the way in)."""
    meta = dict(raw.get("metadata") or {})
    meta.pop("managedFields", None)
    spec = raw.get("spec") or {}
    slim_spec = {
        k: spec[k] for k in ("type", "selector", "ports", "loadBalancerClass", "clusterIP") if k in spec
    }
    ingress = ((raw.get("status") or {}).get("loadBalancer") or {}).get("ingress")
    out: dict[str, Any] = {"metadata": meta, "spec": slim_spec}
    if ingress:
        out["status"] = {"loadBalancer": {"ingress": ingress}}
    return cast(Service, out)


def slim_namespace(raw: Mapping[str, Any]) -> Namespace:
    """A namespace as the controller keeps it: its name and labels (the opt-in label)."""
    meta = raw.get("metadata") or {}
    slim = {k: meta[k] for k in ("name", "uid", "resourceVersion") if k in meta}
    return cast(Namespace, {"metadata": {**slim, "labels": _labels(meta.get("labels"))}})
