"""Check gates (``check.podgate.dev/<name>``): the ReadinessCheck spec, label selectors, query
templating, comparisons and the condition a check result leads to.  Pure, table-tested."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from podgate.model import conditions as c
from podgate.model.gates import CHECK_GATE_PREFIX
from podgate.model.types import Condition, PodView, labels, meta_of, pod_ip

GROUP, VERSION, PLURAL, KIND = "podgate.dev", "v1alpha1", "readinesschecks", "ReadinessCheck"
OPERATORS = (">", ">=", "<", "<=", "==", "!=")


class CheckSpecError(ValueError):
    """A ReadinessCheck the controller cannot run; the message says which field and why."""


def check_gate(name: str) -> str:
    return CHECK_GATE_PREFIX + name


def check_of_gate(condition_type: str) -> str | None:
    if condition_type.startswith(CHECK_GATE_PREFIX):
        return condition_type[len(CHECK_GATE_PREFIX) :] or None
    return None


@dataclass(frozen=True)
class HttpCheck:
    port: int | str
    path: str = "/"
    scheme: str = "HTTP"
    expected_statuses: tuple[int, ...] = ()  # empty: any 2xx or 3xx
    body_regex: str | None = None


@dataclass(frozen=True)
class TcpCheck:
    port: int | str


@dataclass(frozen=True)
class PrometheusCheck:
    url: str
    query: str
    operator: str
    value: float


@dataclass(frozen=True)
class CheckSpec:
    name: str
    namespace: str
    selector: Mapping[str, Any]
    check: HttpCheck | TcpCheck | PrometheusCheck
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3
    mode: Literal["startup", "continuous"] = "startup"
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def gate(self) -> str:
        return check_gate(self.name)


def parse_check(obj: Mapping[str, Any]) -> CheckSpec:
    """A ReadinessCheck object → CheckSpec.  The CRD schema already rejects malformed specs at
    the API server; this catches what a schema cannot (a regex that does not compile)."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    kinds = [k for k in ("httpGet", "tcpSocket", "prometheus") if spec.get(k) is not None]
    if len(kinds) != 1:
        has = ", ".join(kinds) or "none"
        raise CheckSpecError(f"spec must have exactly one of httpGet, tcpSocket, prometheus (has {has})")
    check: HttpCheck | TcpCheck | PrometheusCheck
    if kinds[0] == "httpGet":
        h = spec["httpGet"]
        regex = h.get("bodyRegex")
        if regex is not None:
            try:
                re.compile(regex)
            except re.error as e:
                raise CheckSpecError(f"spec.httpGet.bodyRegex does not compile: {e}") from None
        check = HttpCheck(
            h["port"],
            h.get("path") or "/",
            (h.get("scheme") or "HTTP").upper(),
            tuple(int(s) for s in h.get("expectedStatuses") or ()),
            regex,
        )
    elif kinds[0] == "tcpSocket":
        check = TcpCheck(spec["tcpSocket"]["port"])
    else:
        p = spec["prometheus"]
        op = p.get("operator", ">")
        if op not in OPERATORS:
            raise CheckSpecError(f"spec.prometheus.operator {op!r} is not one of {' '.join(OPERATORS)}")
        check = PrometheusCheck(p["url"].rstrip("/"), p["query"], op, float(p.get("value", 0)))
    return CheckSpec(
        name=meta["name"],
        namespace=meta.get("namespace", ""),
        selector=spec.get("selector") or {},
        check=check,
        period=float(spec.get("periodSeconds") or 10),
        timeout=float(spec.get("timeoutSeconds") or 1),
        success_threshold=int(spec.get("successThreshold") or 1),
        failure_threshold=int(spec.get("failureThreshold") or 3),
        mode="continuous" if spec.get("mode") == "continuous" else "startup",
    )


def label_selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str] | None) -> bool:
    """A metav1.LabelSelector (matchLabels and matchExpressions); an empty selector matches nothing
    here, as a Service's does: a check must say which pods it is for."""
    labels = labels or {}
    match_labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not match_labels and not expressions:
        return False
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for e in expressions:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def render_query(query: str, pod: PodView) -> str:
    """Substitute ``{{pod}}``, ``{{namespace}}``, ``{{ip}}`` and ``{{labels.KEY}}`` (PromQL-escaped)."""
    meta = meta_of(pod)
    pod_labels = labels(pod)
    values = {
        "pod": meta.get("name", ""),
        "namespace": meta.get("namespace", ""),
        "ip": pod_ip(pod) or "",
    }

    def sub(m: re.Match[str]) -> str:
        key = m.group(1).strip()
        value = pod_labels.get(key[len("labels.") :]) if key.startswith("labels.") else values.get(key)
        if value is None:
            raise CheckSpecError(f"query placeholder {{{{{key}}}}} has no value for this pod")
        return str(value).replace("\\", "\\\\").replace('"', '\\"')

    return re.sub(r"\{\{\s*([A-Za-z0-9_./-]+)\s*\}\}", sub, query)


def compare(value: float, operator: str, threshold: float) -> bool:
    if math.isnan(value):
        return False
    return {
        ">": value > threshold,
        ">=": value >= threshold,
        "<": value < threshold,
        "<=": value <= threshold,
        "==": value == threshold,
        "!=": value != threshold,
    }[operator]


def http_verdict(check: HttpCheck, status: int, body: str) -> tuple[bool, str]:
    if check.expected_statuses:
        ok = status in check.expected_statuses
        want = "expected " + " or ".join(map(str, check.expected_statuses))
    else:
        ok = 200 <= status < 400
        want = "expected 2xx or 3xx"
    if not ok:
        return False, f"returned {status}, {want}"
    if check.body_regex is not None and not re.search(check.body_regex, body):
        return False, f"returned {status} but the body does not match /{check.body_regex}/"
    return True, f"returned {status}"


def condition_for(gate: str, ready: bool, observed: bool, detail: str) -> Condition:
    """The gate's condition: True once the thresholds say ready; False with what the check saw."""
    if ready:
        return {"type": gate, "status": c.TRUE, "reason": "CheckPassed", "message": detail}
    if not observed:
        return {"type": gate, "status": c.FALSE, "reason": "CheckPending", "message": detail}
    return {"type": gate, "status": c.FALSE, "reason": "CheckFailing", "message": detail}


def check_gates_for_pod(labels: Mapping[str, str] | None, checks: Sequence[CheckSpec]) -> list[str]:
    return sorted(spec.gate for spec in checks if label_selector_matches(spec.selector, labels))
