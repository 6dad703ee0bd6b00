"""Not a test module: ``test_projection.test_mypy_rejects_reading_what_the_projection_drops``
runs mypy on this file.  Every line marked ``# error: CODE`` must be exactly one mypy error with
that code, and no other line may have one: reading a field the projection drops from a cached
pod (a ``PodView``) is an error, the same read from a raw ``Pod`` is not, and what reads only
kept fields takes both."""

from __future__ import annotations

from datetime import datetime

from podgate.kube.informer import Informer
from podgate.model import lb, report
from podgate.model.projection import slim_pod
from podgate.model.types import (
    Pod,
    PodView,
    containers,
    meta_of,
    pod_conditions,
    pod_ip,
    pod_spec,
    pod_status,
)


def cached(pods: Informer[PodView], raw: Pod, now: datetime) -> None:
    view = pods.cache["shop/web-1"]
    # what the projection keeps reads the same on both
    for pod in (view, raw):
        print(meta_of(pod)["uid"], pod_ip(pod), pod_conditions(pod), pod_spec(pod).get("readinessGates"))
        print(containers(pod)[0].get("ports"), pod["status"]["podIP"], meta_of(pod).get("labels"))
        print(lb.membership(pod, {"app": "web"}), report.gate_rows(pod, now))
    # what it drops reads only on a raw pod
    print(raw["status"]["phase"], pod_status(raw)["containerStatuses"], meta_of(raw)["finalizers"])
    print(containers(raw)[0]["readinessProbe"], pod_spec(raw)["nodeName"], raw["kind"])
    print(report.explain(raw, [], now), report.container_rows(raw, now))
    print(view["status"]["phase"])  # error: typeddict-item
    print(pod_status(view)["containerStatuses"])  # error: typeddict-item
    print(view["spec"]["containers"][0]["readinessProbe"])  # error: typeddict-item
    print(containers(view)[0]["image"])  # error: typeddict-item
    print(pod_spec(view)["nodeName"])  # error: typeddict-item
    print(meta_of(view)["finalizers"])  # error: typeddict-item
    print(view["kind"])  # error: typeddict-item
    print(slim_pod(raw)["status"]["phase"])  # error: typeddict-item
    for status in pod_status(view).get("containerStatuses") or ():  # error: attr-defined
        print(status)
    print(report.explain(view, [], now))  # error: arg-type
    print(report.container_rows(view, now))  # error: arg-type
    full: Pod = view  # error: assignment
    print(full)
    # the cache's objects are shared by its indexes and snapshots: never changed in place
    view["metadata"]["labels"] = {}  # error: typeddict-readonly-mutated
