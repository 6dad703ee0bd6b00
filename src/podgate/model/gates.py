"""Gate names, the contract's labels and annotations, and the injection decision.

Pure: the webhook hands in the pod and the Services of its namespace and gets back a JSONPatch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from podgate.model.types import Pod, annotations_of, containers, meta_of, pod_spec

DOMAIN = "podgate.dev"
SERVICE_GATE_PREFIX = "service.readiness.podgate.dev/"
CHECK_GATE_PREFIX = "check.podgate.dev/"
INJECT_LABEL = f"{DOMAIN}/pod-readiness-gate-inject"
PROVIDER_ANNOTATION = f"{DOMAIN}/load-balancer-provider"
#: a pod's preStop hook: ``drain`` (wait for the load balancer), ``sleep N`` or ``none``
PRESTOP_ANNOTATION = f"{DOMAIN}/prestop"
#: the older form, still honoured: N seconds means ``sleep N``, 0 means ``none``
PRESTOP_DELAY_ANNOTATION = f"{DOMAIN}/prestop-delay"
#: set by the webhook beside the drain hook: the hook's path names the pod by it (a webhook sees
#: no name yet for a pod made from ``generateName``, and no uid)
DRAIN_TOKEN_ANNOTATION = f"{DOMAIN}/drain-token"
DRAIN_PATH = "/drain"
#: the hook's header carrying the drain token (where the kubelets send headers): out of the
#: path, the token stays out of the kubelet's FailedPreStopHook Events, which quote the path
DRAIN_TOKEN_HEADER = "Podgate-Drain-Token"
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


#: the kubelet's mark on the API's copy of a static pod (a mirror pod)
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"

#: The pod webhooks' ``matchConditions`` (CEL, GA in 1.30; every one must hold for the API server
#: to call podgate): the pods a review could change.  :func:`may_need_review` says the same in
#: Python; tests/unit/test_match_conditions.py holds the admission to it (a pod it rejects gets
#: no patch) and an e2e test holds the API server's CEL to it.  Not among them, on purpose:
#: pods already carrying podgate's gates and hooks (a later webhook that changed the pod since
#: podgate's first review, the only reason it is called again, may have added a container without
#: the hook or labels another Service selects) and dry-run requests (``--dry-run=server`` and
#: ``kubectl diff`` must show the gates the real create gets).
MATCH_CONDITIONS: tuple[dict[str, str], ...] = (
    {
        # the kubelet runs the static pod's own manifest: gates or hooks on its mirror do nothing
        "name": "not-a-mirror-pod",
        "expression": (
            f"!has(object.metadata.annotations) || !('{MIRROR_ANNOTATION}' in object.metadata.annotations)"
        ),
    },
    {
        # a pod with no labels is selected by no Service or ReadinessCheck; one with readiness
        # gates still goes (the webhook may drop gates of a --remove-gate-prefix)
        "name": "labelled-or-gated",
        "expression": (
            "(has(object.metadata.labels) && size(object.metadata.labels) > 0)"
            " || (has(object.spec.readinessGates) && size(object.spec.readinessGates) > 0)"
        ),
    },
)


def may_need_review(pod: Pod) -> bool:
    """Whether the pod webhook's :data:`MATCH_CONDITIONS` send this pod to podgate."""
    meta = meta_of(pod)
    if MIRROR_ANNOTATION in (meta.get("annotations") or {}):
        return False
    return bool(meta.get("labels")) or bool(pod_spec(pod).get("readinessGates"))


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
    pod: Pod,
    gate_types: Sequence[str],
    remove_prefixes: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """JSONPatch adding the gates (never twice) and dropping gates with the given prefixes.

    An empty list means "leave the pod as it is".
    """
    spec = pod_spec(pod)
    current = [g for g in spec.get("readinessGates") or () if isinstance(g, Mapping)]
    kept = [g for g in current if not str(g.get("conditionType", "")).startswith(tuple(remove_prefixes))]
    present = {g.get("conditionType") for g in kept}
    wanted = [t for t in gate_types if t not in present]
    if not wanted and len(kept) == len(current):
        return []
    gates = [dict(g) for g in kept] + [{"conditionType": t} for t in wanted]
    op = "replace" if "readinessGates" in spec else "add"
    return [{"op": op, "path": "/spec/readinessGates", "value": gates}]


@dataclass(frozen=True)
class PreStop:
    """The preStop hook podgate gives a load-balanced container that has none of its own."""

    mode: Literal["drain", "sleep", "none"]
    seconds: float = 0.0  # sleep only

    def __str__(self) -> str:
        return f"sleep {self.seconds:g}" if self.mode == "sleep" else self.mode


DRAIN = PreStop("drain")
NO_PRESTOP = PreStop("none")
_SLEEP = re.compile(r"^sleep[ =:]+(\d+(?:\.\d*)?|\.\d+)s?$")


def parse_prestop(raw: str) -> PreStop:
    """``drain``, ``none`` or ``sleep N`` (seconds, up to an hour); ValueError otherwise."""
    text = raw.strip().lower()
    if text in ("drain", "none"):
        return PreStop(text)  # type: ignore[arg-type]
    m = _SLEEP.match(text)
    if m and float(m.group(1)) <= 3600:
        seconds = float(m.group(1))
        return PreStop("sleep", seconds) if seconds > 0 else NO_PRESTOP
    raise ValueError(raw)


def prestop_delay_as_prestop(seconds: float) -> PreStop:
    """The older setting and annotation (``prestop-delay: N``) in today's terms."""
    return PreStop("sleep", seconds) if seconds > 0 else NO_PRESTOP


def prestop_for(pod: Pod, default: PreStop) -> PreStop:
    """The hook for a pod: its ``podgate.dev/prestop`` annotation, else its older
    ``podgate.dev/prestop-delay``, else the setting.  A value podgate cannot read counts as the
    setting (the webhook must not fail a pod)."""
    annotations = annotations_of(pod)
    raw = annotations.get(PRESTOP_ANNOTATION)
    if raw is not None:
        try:
            return parse_prestop(str(raw))
        except ValueError:
            return default
    raw = annotations.get(PRESTOP_DELAY_ANNOTATION)
    if raw is not None:
        try:
            value = float(str(raw).removesuffix("s"))
        except ValueError:
            return default
        return prestop_delay_as_prestop(value) if 0 <= value <= 3600 else default
    return default


def drain_budget(grace: float) -> float:
    """Seconds the drain hook may wait, of a pod's grace period: the rest is the app's, after
    SIGTERM, to stop (a quarter of the period, between 2 and 5 seconds; the kubelet itself gives
    at least 2 after a hook that used the whole period)."""
    return max(0.0, grace - min(5.0, max(2.0, grace / 4)))


def native_sleep_supported(version: Mapping[str, Any] | None) -> bool:
    """Whether the API server's ``/version`` answer is of a cluster with the ``sleep`` lifecycle
    action on by default (PodLifecycleSleepAction, beta in 1.30).  ``minor`` may read ``30+``."""
    return _minor_at_least(version, 30)


def _minor_at_least(version: Mapping[str, Any] | None, minor_wanted: int) -> bool:
    """Whether ``/version`` says 1.``minor_wanted`` or later (``minor`` may read ``30+``)."""
    if not version:
        return False
    try:
        major = int(re.sub(r"\D.*", "", str(version.get("major", ""))) or 0)
        minor = int(re.sub(r"\D.*", "", str(version.get("minor", ""))) or 0)
    except ValueError:
        return False
    return (major, minor) >= (1, minor_wanted)


def sleep_hook(seconds: float, native: bool) -> dict[str, Any]:
    """``sleep N``: the kubelet's own action where the cluster has it (whole seconds), else
    ``exec sleep``, which needs a sleep binary in the image (distroless has none)."""
    if native:
        return {"sleep": {"seconds": math.ceil(seconds)}}
    return {"exec": {"command": ["sleep", f"{seconds:g}"]}}


def drain_url_errors(url: str) -> str | None:
    """Why ``url`` cannot be the drain hook's address (``http(s)://HOST:PORT``), or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "expected http://HOST:PORT or https://HOST:PORT"
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return "the port is not a number from 0 to 65535"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "no path: podgate adds its own"
    return None


def drain_hook(url: str, namespace: str, token: str, *, token_header: bool = False) -> dict[str, Any]:
    """The preStop ``httpGet`` calling the drain endpoint at ``url`` for the pod holding
    ``token``: in a header with ``token_header`` (kubelets 1.25+ send a hook's ``httpHeaders``;
    older ones ignore them, and ``scheme`` too), else in the path, which the kubelet's
    ``FailedPreStopHook`` Event quotes."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = f"{DRAIN_PATH}/{quote(namespace, safe='')}"
    action: dict[str, Any] = {"scheme": parts.scheme.upper(), "host": parts.hostname, "port": port}
    if token_header:
        action |= {"path": path, "httpHeaders": [{"name": DRAIN_TOKEN_HEADER, "value": token}]}
    else:
        action["path"] = f"{path}/{quote(token, safe='')}"
    return {"httpGet": action}


def hook_headers_sent(version: Mapping[str, Any] | None) -> bool:
    """Whether every kubelet an API server of this ``/version`` admits sends a hook's
    ``httpHeaders``: kubelets do from 1.25 (ConsistentHTTPGetHandlers, GA), and a kubelet may be
    two minor releases older than its API server (three from 1.28), so from an API server of
    1.27.  Unknown: False (the path form works everywhere)."""
    return _minor_at_least(version, 27)


def prestop_patch(pod: Pod, hook: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """JSONPatch giving each container without a preStop hook of its own ``hook``.  A
    container's own hook wins; None gives none.  Main containers (``spec.containers``) only: a
    native sidecar (an init container with ``restartPolicy: Always``) is stopped by the kubelet
    only after they have exited, so it keeps carrying their traffic through the drain on its own
    lifecycle, and a run-to-completion init container may not have a lifecycle at all."""
    if hook is None:
        return []
    ops: list[dict[str, Any]] = []
    for i, container in enumerate(containers(pod)):
        lifecycle = container.get("lifecycle")
        if lifecycle is None:
            ops.append({"op": "add", "path": f"/spec/containers/{i}/lifecycle", "value": {"preStop": hook}})
        elif not lifecycle.get("preStop"):
            ops.append({"op": "add", "path": f"/spec/containers/{i}/lifecycle/preStop", "value": hook})
    return ops


def annotation_patch(pod: Pod, key: str, value: str) -> list[dict[str, Any]]:
    """JSONPatch setting one annotation (``/`` in the key escaped as JSON Pointer wants)."""
    annotations = meta_of(pod).get("annotations")
    if annotations is None:
        path = "/metadata/annotations" if "metadata" in pod else "/metadata"
        value_obj: dict[str, Any] = {key: value} if "metadata" in pod else {"annotations": {key: value}}
        return [{"op": "add", "path": path, "value": value_obj}]
    pointer = key.replace("~", "~0").replace("/", "~1")
    return [{"op": "add", "path": f"/metadata/annotations/{pointer}", "value": value}]


def termination_patch(
    pod: Pod,
    default: PreStop,
    *,
    drain_url: str | None,
    native_sleep: bool,
    namespace: str,
    new_token: Callable[[], str],
    token_header: bool = False,
) -> list[dict[str, Any]]:
    """The preStop hooks (and the drain token) for a load-balanced pod, by its annotation or the
    setting.  ``drain`` without a ``drain_url`` (podgate does not know where the kubelet can
    reach it) gives no hook.  A pod whose containers all have a hook is left alone, which also
    makes a second review of the same pod (reinvocation) add nothing."""
    chosen = prestop_for(pod, default)
    if not any(not (x.get("lifecycle") or {}).get("preStop") for x in containers(pod)):
        return []  # every container has its own hook
    if chosen.mode == "sleep":
        return prestop_patch(pod, sleep_hook(chosen.seconds, native_sleep))
    if chosen.mode != "drain" or not drain_url or not namespace:
        return []
    # always a new token: one copied into a template with a pod's manifest would name them all
    token = new_token()
    return annotation_patch(pod, DRAIN_TOKEN_ANNOTATION, token) + prestop_patch(
        pod, drain_hook(drain_url, namespace, token, token_header=token_header)
    )
