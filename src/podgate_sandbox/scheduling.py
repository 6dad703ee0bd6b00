"""Scheduling for the sandbox's one node: no kube-scheduler is built, so the node agent (and, for
a real kubelet, the binder) binds every unscheduled pod whose ``nodeSelector`` the node's labels
satisfy, and marks the rest Unschedulable in the scheduler's own words."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes_asyncio import client

from podgate.kube.api import Obj
from podgate.kube.client import STRATEGIC_MERGE, call
from podgate.kube.events import now_rfc3339

UNSCHEDULABLE = "0/1 nodes are available: 1 node(s) didn't match node selector."


async def bind_or_refuse(
    core: client.CoreV1Api, pod: Obj, node_name: str, node_labels: Mapping[str, str]
) -> bool:
    """Bind the pod to the node, or write PodScheduled=False/Unschedulable when its
    ``nodeSelector`` does not match; True if it was bound.  API errors are the caller's."""
    meta = pod["metadata"]
    selector: dict[str, Any] = (pod.get("spec") or {}).get("nodeSelector") or {}
    if any(node_labels.get(k) != v for k, v in selector.items()):
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": UNSCHEDULABLE,
            "lastTransitionTime": now_rfc3339(),
        }
        await call(
            core.patch_namespaced_pod_status,
            meta["name"],
            meta["namespace"],
            {"status": {"conditions": [condition]}},
            _content_type=STRATEGIC_MERGE,
        )
        return False
    await call(
        core.create_namespaced_pod_binding,
        meta["name"],
        meta["namespace"],
        {
            "metadata": {"name": meta["name"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node_name},
        },
    )
    return True
