"""AdmissionReview handling (pure apart from reading the caches it is given).

Bad input is answered with HTTP 400 and a reason, never an exception: a webhook that crashes on
one malformed request would, with failurePolicy Ignore, silently stop gating every pod.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from podgate.model import gates
from podgate.model.checks import CheckSpec, check_gates_for_pod


class BadReview(ValueError):
    """The request is not an AdmissionReview podgate can answer; the message says why."""


@dataclass(frozen=True)
class InjectionPolicy:
    enabled: bool = True
    remove_prefixes: Sequence[str] = ()
    skip_label_value: str = "disabled"
    prestop_delay: float = 0.0  # seconds of preStop sleep for load-balanced pods; 0 = none


def parse_review(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadReview(f"request body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadReview("request body is not a JSON object")
    if body.get("kind") != "AdmissionReview":
        raise BadReview(f"kind is {body.get('kind')!r}, expected 'AdmissionReview'")
    if body.get("apiVersion") != "admission.k8s.io/v1":
        raise BadReview(f"apiVersion is {body.get('apiVersion')!r}, expected 'admission.k8s.io/v1'")
    request = body.get("request")
    if not isinstance(request, dict):
        raise BadReview("AdmissionReview has no request")
    if not isinstance(request.get("uid"), str) or not request["uid"]:
        raise BadReview("request.uid is missing")
    obj = request.get("object")
    if request.get("operation", "CREATE") == "CREATE" and not isinstance(obj, dict):
        raise BadReview("request.object is missing or not an object")
    if isinstance(obj, dict) and not isinstance(obj.get("spec", {}), dict):
        raise BadReview("request.object.spec is not an object")
    return body


def review_response(
    review: Mapping[str, Any],
    services: Iterable[Mapping[str, Any]],
    handled: Callable[[Mapping[str, Any]], bool],
    policy: InjectionPolicy,
    checks: Iterable[CheckSpec] = (),
) -> dict[str, Any]:
    """The AdmissionReview answer: always allowed, with a JSONPatch when gates change: one gate
    per handled Service and per ReadinessCheck of the namespace that selects the pod."""
    request = review["request"]
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    pod = request.get("object") or {}
    resource = request.get("resource") or {}
    is_pod_create = (
        request.get("operation", "CREATE") == "CREATE"
        and resource.get("resource", "pods") == "pods"
        and (request.get("kind") or {}).get("kind", "Pod") == "Pod"
    )
    labels = ((pod.get("metadata") or {}).get("labels")) or {}
    if policy.enabled and is_pod_create and labels.get(gates.INJECT_LABEL) != policy.skip_label_value:
        namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace")
        in_ns = [s for s in services if s["metadata"].get("namespace") == namespace]
        names = gates.services_for_pod(labels, in_ns, handled)
        check_gates = check_gates_for_pod(labels, [c for c in checks if c.namespace == namespace])
        patch = gates.injection_patch(
            pod, [gates.service_gate(n) for n in names] + check_gates, policy.remove_prefixes
        )
        if names:
            patch += gates.prestop_patch(pod, gates.prestop_delay(pod, policy.prestop_delay))
        if patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
