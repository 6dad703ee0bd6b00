"""AdmissionReview handling (pure apart from reading the caches it is given).

Bad input is answered with HTTP 400 and a reason, never an exception: a webhook that crashes on
one malformed request would, with failurePolicy Ignore, silently stop gating every pod.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from podgate.model import gates
from podgate.model.checks import CheckSpec, check_gates_for_pod
from podgate.model.types import Pod, labels, meta_of


class BadReview(ValueError):
    """The request is not an AdmissionReview podgate can answer; the message says why."""


@dataclass(frozen=True)
class InjectionPolicy:
    enabled: bool = True
    remove_prefixes: Sequence[str] = ()
    skip_label_value: str = "disabled"
    #: the preStop hook for load-balanced pods without their own (a pod's annotation overrides)
    prestop: gates.PreStop = gates.NO_PRESTOP
    #: ``http(s)://HOST:PORT`` where the kubelet reaches the drain endpoint; None: no drain hook
    drain_url: str | None = None
    #: the cluster has the kubelet's ``sleep`` action (1.30+): ``sleep N`` needs no binary
    native_sleep: bool = False
    #: every kubelet of the cluster sends a hook's headers: the drain token goes in one
    drain_token_header: bool = False


def new_drain_token() -> str:
    return secrets.token_urlsafe(12)


def parse_review(raw: bytes) -> dict[str, Any]:
    """The AdmissionReview in ``raw``, its shape checked wherever :func:`review_response` reads,
    so no request (truncated, nested too deep, a list where an object belongs) can raise later."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadReview(f"request body is not JSON: {e}") from None
    except RecursionError:
        raise BadReview("request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadReview("request body is not a JSON object")
    if body.get("kind") != "AdmissionReview":
        raise BadReview(f"kind is {_shown(body.get('kind'))}, expected 'AdmissionReview'")
    if body.get("apiVersion") != "admission.k8s.io/v1":
        raise BadReview(f"apiVersion is {_shown(body.get('apiVersion'))}, expected 'admission.k8s.io/v1'")
    request = body.get("request")
    if not isinstance(request, dict):
        raise BadReview("AdmissionReview has no request")
    if not isinstance(request.get("uid"), str) or not request["uid"]:
        raise BadReview("request.uid is missing")
    for key in ("operation", "namespace", "name"):
        _field(request, key, str, "request")
    for key, inner in (("kind", "kind"), ("resource", "resource")):
        ref = _field(request, key, dict, "request")
        if ref is not None:
            _field(ref, inner, str, f"request.{key}")
    obj = request.get("object")
    creating = request.get("operation", "CREATE") == "CREATE"
    if not isinstance(obj, dict) and (obj is not None or creating):
        raise BadReview("request.object is missing or not an object")
    if isinstance(obj, dict):
        _check_pod(obj, "request.object")
    return body


def _check_pod(pod: Mapping[str, Any], where: str) -> None:
    """What the injection decision reads of a pod: metadata (labels, annotations, namespace),
    readiness gates, containers' lifecycle."""
    meta = _field(pod, "metadata", dict, where)
    if meta is not None:
        for key in ("namespace", "name", "generateName"):
            _field(meta, key, str, f"{where}.metadata")
        for key in ("labels", "annotations"):
            values = _field(meta, key, dict, f"{where}.metadata") or {}
            for k, v in values.items():
                if not isinstance(v, str):
                    raise BadReview(
                        f"{where}.metadata.{key}[{_shown(k)}] is not a string (it is {_json_type(v)})"
                    )
    spec = _field(pod, "spec", dict, where)
    if spec is None:
        return
    for i, gate in enumerate(_field(spec, "readinessGates", list, f"{where}.spec") or ()):
        if not isinstance(gate, dict):
            raise BadReview(f"{where}.spec.readinessGates[{i}] is not an object (it is {_json_type(gate)})")
        _field(gate, "conditionType", str, f"{where}.spec.readinessGates[{i}]")
    for i, container in enumerate(_field(spec, "containers", list, f"{where}.spec") or ()):
        if not isinstance(container, dict):
            raise BadReview(f"{where}.spec.containers[{i}] is not an object (it is {_json_type(container)})")
        _field(container, "lifecycle", dict, f"{where}.spec.containers[{i}]")


_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),
    (str, "a string"),
    (int, "a number"),
    (float, "a number"),
    (list, "an array"),
    (dict, "an object"),
)


def _json_type(value: object) -> str:
    return next((name for t, name in _JSON_TYPES if isinstance(value, t)), "null")


def _field(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    """``obj[key]`` when it is absent, null or a ``kind``; else the one-line reason why not."""
    value = obj.get(key)
    if value is not None and not isinstance(value, kind):
        raise BadReview(f"{where}.{key} is not {_json_type(kind())} (it is {_json_type(value)})")
    return value


def _shown(value: object) -> str:
    """A value quoted in a reason, cut short: the reason is one line whatever was sent."""
    text = repr(value) if isinstance(value, str) else _json_type(value)
    return text if len(text) <= 60 else text[:57] + "..."


def review_response(
    review: Mapping[str, Any],
    services: Iterable[Mapping[str, Any]],
    handled: Callable[[Mapping[str, Any]], bool],
    policy: InjectionPolicy,
    checks: Iterable[CheckSpec] = (),
    new_token: Callable[[], str] = new_drain_token,
) -> dict[str, Any]:
    """The AdmissionReview answer: always allowed, with a JSONPatch when gates change: one gate
    per handled Service and per ReadinessCheck of the namespace that selects the pod."""
    request = review["request"]
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    pod = cast(Pod, request.get("object") or {})
    resource = request.get("resource") or {}
    is_pod_create = (
        request.get("operation", "CREATE") == "CREATE"
        and resource.get("resource", "pods") == "pods"
        and (request.get("kind") or {}).get("kind", "Pod") == "Pod"
    )
    pod_labels = labels(pod)
    if policy.enabled and is_pod_create and pod_labels.get(gates.INJECT_LABEL) != policy.skip_label_value:
        namespace = request.get("namespace") or meta_of(pod).get("namespace")
        in_ns = [s for s in services if s["metadata"].get("namespace") == namespace]
        names = gates.services_for_pod(pod_labels, in_ns, handled)
        check_gates = check_gates_for_pod(pod_labels, [c for c in checks if c.namespace == namespace])
        patch = gates.injection_patch(
            pod, [gates.service_gate(n) for n in names] + check_gates, policy.remove_prefixes
        )
        if names:
            patch += gates.termination_patch(
                pod,
                policy.prestop,
                drain_url=policy.drain_url,
                native_sleep=policy.native_sleep,
                namespace=namespace or "",
                new_token=new_token,
                token_header=policy.drain_token_header,
            )
        if patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
