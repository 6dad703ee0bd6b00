"""Gate names, the contract's labels and annotations, and the injection decision.

Pure: the webhook hands in the pod and the Services of its namespace and gets back a JSONPatch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

DOMAIN = "podgate.dev"
SERVICE_GATE_PREFIX = "service.readiness.podgate.dev/"
CHECK_GATE_PREFIX = "check.podgate.dev/"
INJECT_LABEL = f"{DOMAIN}/pod-readiness-gate-inject"
PROVIDER_ANNOTATION = f"{DOMAIN}/load-balancer-provider"
PRESTOP_ANNOTATION = f"{DOMAIN}/prestop-delay"
#: Namespace opt-in labels of the controllers podgate replaces, honoured with the migration
#: setting, so a namespace set up for them needs no relabelling (value ``enabled`` as for ours).
VENDOR_INJECT_LABELS = (
    "k8s.alibabacloud.com/pod-readiness-gate-inject",
    "elbv2.k8s.aws/pod-readiness-gate-inject",
)
#: Gate prefixes of the controllers podgate replaces; injection can remove them (migration).
VENDOR_PREFIXES = ("target-health.elbv2.k8s.aws/", "service.readiness.alibabacloud.com/")

_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def service_gate(service: str) -> str:
    return SERVICE_GATE_PREFIX + service


def service_of_gate(condition_type: str, adopted_prefixes: Sequence[str] = ()) -> str | None:
    """The Service a service gate is for (podgate's own, or another controller's whose prefix
    podgate adopts), or None for any other condition type."""
    for prefix in (SERVICE_GATE_PREFIX, *adopted_prefixes):
        if condition_type.startswith(prefix):
            return condition_type[len(prefix) :] or None
    return None


def inject_labels(migration: bool) -> tuple[str, ...]:
    """The namespace labels that opt a namespace in (value ``enabled``)."""
    return (INJECT_LABEL, *VENDOR_INJECT_LABELS) if migration else (INJECT_LABEL,)


def opted_in(namespace_labels: Mapping[str, str] | None, migration: bool) -> bool:
    """Whether a namespace asks for readiness gates: any of its opt-in labels is ``enabled``."""
    found = namespace_labels or {}
    return any(found.get(label) == "enabled" for label in inject_labels(migration))


def namespace_selectors(migration: bool) -> list[dict[str, Any]]:
    """One webhook namespaceSelector per opt-in label (a selector cannot say "this label or
    that one").  Each excludes the namespaces an earlier one selects, so a namespace carrying
    several labels is still sent to the webhook once per pod."""
    labels = inject_labels(migration)
    first: dict[str, Any] = {"matchLabels": {labels[0]: "enabled"}}
    return [first] + [
        {
            "matchExpressions": [
                {"key": label, "operator": "In", "values": ["enabled"]},
                *({"key": earlier, "operator": "NotIn", "values": ["enabled"]} for earlier in labels[:i]),
            ]
        }
        for i, label in enumerate(labels)
        if i > 0
    ]


def condition_type_errors(value: str) -> list[str]:
    """Why ``value`` is not a valid condition type (a qualified name), or [] when it is."""
    errors = []
    prefix, slash, name = value.rpartition("/")
    if not slash:
        prefix, name = "", value
    if not name:
        errors.append("name part must not be empty")
    elif len(name) > 63:
        errors.append("name part must be no more than 63 characters")
    elif not _NAME.match(name):
        errors.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
            "with an alphanumeric character"
        )
    if slash:
        if not prefix:
            errors.append("prefix part must not be empty")
        elif len(prefix) > 253 or not all(_DNS_LABEL.match(label) for label in prefix.split(".")):
            errors.append("prefix part must be a lowercase RFC 1123 subdomain")
    return errors


def selector_matches(selector: Mapping[str, str] | None, labels: Mapping[str, str] | None) -> bool:
    """A Service's selector against a pod's labels; an empty selector matches nothing."""
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def services_for_pod(
    pod_labels: Mapping[str, str] | None,
    services: Iterable[Mapping[str, Any]],
    handled: Callable[[Mapping[str, Any]], bool],
) -> list[str]:
    """Names of the handled Services whose selector matches, sorted for stable patches; a
    Service being deleted gives new pods no gate (it may wait on podgate's finalizer a while)."""
    return sorted(
        s["metadata"]["name"]
        for s in services
        if handled(s)
        and not s["metadata"].get("deletionTimestamp")
        and selector_matches((s.get("spec") or {}).get("selector"), pod_labels)
    )


def injection_patch(
    pod: Mapping[str, Any],
    gate_types: Sequence[str],
    remove_prefixes: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """JSONPatch adding the gates (never twice) and dropping gates with the given prefixes.

    An empty list means "leave the pod as it is".
    """
    spec = pod.get("spec") or {}
    current = [g for g in spec.get("readinessGates") or () if isinstance(g, Mapping)]
    kept = [g for g in current if not str(g.get("conditionType", "")).startswith(tuple(remove_prefixes))]
    present = {g.get("conditionType") for g in kept}
    wanted = [t for t in gate_types if t not in present]
    if not wanted and len(kept) == len(current):
        return []
    gates = [dict(g) for g in kept] + [{"conditionType": t} for t in wanted]
    op = "replace" if "readinessGates" in spec else "add"
    return [{"op": op, "path": "/spec/readinessGates", "value": gates}]


def prestop_delay(pod: Mapping[str, Any], default: float) -> float:
    """The preStop delay for a pod: its annotation, else the setting.  A value that is not a
    non-negative number of seconds counts as the setting (the webhook must not fail a pod)."""
    raw = (((pod.get("metadata") or {}).get("annotations")) or {}).get(PRESTOP_ANNOTATION)
    if raw is None:
        return default
    try:
        value = float(str(raw).removesuffix("s"))
    except ValueError:
        return default
    return value if 0 <= value <= 3600 else default


def prestop_patch(pod: Mapping[str, Any], delay: float) -> list[dict[str, Any]]:
    """JSONPatch giving each container without a preStop hook ``sleep DELAY``, so the load
    balancer has drained the pod before its process gets SIGTERM.  A container's own hook wins.
    (``exec sleep`` needs a sleep binary in the image; the sandbox's node agent honours it.)"""
    if delay <= 0:
        return []
    hook = {"exec": {"command": ["sleep", f"{delay:g}"]}}
    ops: list[dict[str, Any]] = []
    for i, container in enumerate((pod.get("spec") or {}).get("containers") or ()):
        lifecycle = container.get("lifecycle")
        if lifecycle is None:
            ops.append({"op": "add", "path": f"/spec/containers/{i}/lifecycle", "value": {"preStop": hook}})
        elif not lifecycle.get("preStop"):
            ops.append({"op": "add", "path": f"/spec/containers/{i}/lifecycle/preStop", "value": hook})
    return ops
