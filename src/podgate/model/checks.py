"""Check gates (``check.podgate.dev/<name>``): the ReadinessCheck spec, label selectors, query
templating, comparisons and the condition a check result leads to.  Pure, table-tested."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import SplitResult, unquote, urlsplit

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
    here, as a Service's does: a check must say which pods it is for.  Nor does any selector
    match a pod without labels (one of only ``NotIn``/``DoesNotExist`` would): as no Service
    selects such a pod, the API server need not send it to the webhook at all
    (``gates.MATCH_CONDITIONS``)."""
    if not labels:
        return False
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


# -- which Prometheus URLs a check may query ----------------------------------------------------
#: Cloud instance metadata services (AWS IPv4 and IPv6, Alibaba Cloud; GCP and Azure use
#: 169.254.169.254 too): they hand out the node's credentials, so no check ever reaches them.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog"})
URL_NOT_ALLOWED = "URLNotAllowed"
_DEFAULT_PORTS = {"http": 80, "https": 443}
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def forbidden_address(ip: Address) -> bool:
    """A link-local address (169.254.0.0/16, fe80::/10: where metadata services live) or a
    cloud's metadata address, IPv4-mapped forms included."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_link_local or ip in METADATA_ADDRESSES


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address the C library reads in ``host`` (``2852039166``, ``0xa9.0376.43518``:
    one to four parts, decimal, octal or hex), which ``ipaddress`` does not; None: not one."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        try:
            if part.lower().startswith("0x"):
                values.append(int(part[2:], 16))
            elif len(part) > 1 and part.startswith("0"):
                values.append(int(part, 8))
            else:
                values.append(int(part, 10) if part.isdigit() else -1)
        except ValueError:
            return None
    if any(v < 0 for v in values):
        return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = 0
    for v in head:
        number = number * 256 + v
    return ipaddress.IPv4Address(number * 256 ** (4 - len(head)) + last)


def host_address(host: str) -> Address | None:
    """The address a host names literally (any form a resolver would take), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return _inet_aton(host)


def _never(host: str) -> bool:
    ip = host_address(host)
    return host.rstrip(".") in METADATA_HOSTS or (ip is not None and forbidden_address(ip))


@dataclass(frozen=True)
class AllowedPrefix:
    """One ``--prometheus-allow`` entry: a URL prefix (``http://prometheus.monitoring:9090``,
    ``https://thanos.example:443/api``) or ``HOST:PORT`` (either scheme)."""

    host: str
    port: int
    scheme: str | None = None
    path: str = ""

    def admits(self, url: SplitResult, port: int) -> bool:
        if (url.hostname or "").rstrip(".") != self.host or port != self.port:
            return False
        if self.scheme is not None and url.scheme != self.scheme:
            return False
        return not self.path or url.path == self.path or url.path.startswith(self.path + "/")


def parse_allowed(entry: str) -> AllowedPrefix:
    """An allowlist entry, or ValueError saying what is wrong with it (at start-up: an entry
    naming a link-local or metadata address is an error, never a silent no-op)."""
    raw = entry.strip()
    if "://" in raw:
        url = urlsplit(raw)
        if url.scheme not in _DEFAULT_PORTS or not url.hostname or url.query or url.fragment:
            raise ValueError(f"{entry!r}: give http(s)://HOST[:PORT][/PATH] or HOST:PORT")
        if url.username is not None or url.password is not None:
            raise ValueError(f"{entry!r}: no credentials in the URL")
        try:
            port = url.port or _DEFAULT_PORTS[url.scheme]
        except ValueError:
            raise ValueError(f"{entry!r}: the port is not a number from 1 to 65535") from None
        allowed = AllowedPrefix(url.hostname.rstrip("."), port, url.scheme, url.path.rstrip("/"))
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536 or "/" in host:
            raise ValueError(f"{entry!r}: give http(s)://HOST[:PORT][/PATH] or HOST:PORT")
        allowed = AllowedPrefix(host.strip("[]").lower().rstrip("."), int(port_text))
    if _never(allowed.host):
        raise ValueError(f"{entry!r}: a link-local or cloud metadata address is never allowed")
    return allowed


def prometheus_url_refusal(url: str, allowed: Sequence[AllowedPrefix]) -> str | None:
    """Why the controller will not query ``url`` (None: it may).  A URL must be http(s) with no
    credentials, query or fragment, never a link-local or metadata address, and within one of
    the administrator's ``--prometheus-allow`` entries (none by default: nothing is allowed)."""
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
    except ValueError:
        return f"spec.prometheus.url {url!r} is not a valid URL"
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return f"spec.prometheus.url {url!r} is not an http:// or https:// URL"
    if parts.username is not None or parts.password is not None:
        return "spec.prometheus.url carries credentials, which podgate does not send"
    if parts.query or parts.fragment:
        return f"spec.prometheus.url {url!r} has a query or fragment; give the server's base URL"
    if any(unquote(seg) in (".", "..") for seg in parts.path.split("/")):
        # the HTTP client would resolve them, stepping out of an allowed path prefix
        return f"spec.prometheus.url {url!r} has . or .. path segments"
    if _never(parts.hostname):
        return f"spec.prometheus.url {url!r} is a link-local or cloud metadata address, never queried"
    if not any(a.admits(parts, port) for a in allowed):
        return (
            f"spec.prometheus.url {url!r} is not allowed by the controller's --prometheus-allow "
            f"({', '.join(_shown(a) for a in allowed) or 'nothing is allowed'})"
        )
    return None


def _shown(a: AllowedPrefix) -> str:
    host = f"[{a.host}]" if ":" in a.host else a.host
    return f"{a.scheme}://{host}:{a.port}{a.path}" if a.scheme else f"{host}:{a.port}"
