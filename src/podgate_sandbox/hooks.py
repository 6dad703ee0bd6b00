"""How the kubelet calls a container's preStop ``httpGet`` hook, by its release (pure): the
node agent calls podgate's drain hook exactly so, or a feature that works only with the
sandbox's kubelet would pass tests and fail on a cluster.

From the kubelet's source (``pkg/kubelet/lifecycle/handlers.go``):

- before 1.25: ``fmt.Sprintf("http://%s/%s", host:port, path)``: always plain HTTP whatever the
  ``scheme``, a second ``/`` before a path that starts with one, ``httpHeaders`` ignored, Go's
  own User-Agent; a failed call's ``FailedPreStopHook`` Event reads ``Http lifecycle hook (PATH)
  for Container "C" in Pod "NAME_NS(UID)" failed - error: ERR, message: "BODY"``.
- 1.25 on (ConsistentHTTPGetHandlers, GA): the request is built as the probes' is: ``scheme``
  honoured, the path as given, ``httpHeaders`` sent, ``User-Agent: kube-lifecycle/1.NN`` and
  ``Accept: */*`` unless the hook sets them; the Event reads ``HTTP lifecycle hook (PATH) for
  Container "C" in Pod "NAME_NS(UID)" failed - error: ERR``.

Either way ERR is Go's ``Get "URL": …``, so the Event quotes the path and the URL, and a
status code is no failure: only a call that gets no answer is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from podgate.model.probes import resolve_port

#: the first release whose kubelet sends a hook's headers and honours its scheme
CONSISTENT_HANDLERS = (1, 25)


class HookFailed(Exception):
    """A hook call that got no answer; the message is the kubelet's Event message."""


@dataclass(frozen=True)
class HookCall:
    url: str
    headers: dict[str, str] = field(default_factory=dict)


def release(version: str) -> tuple[int, int]:
    """``(1, 37)`` for ``v1.37.2`` (``(0, 0)`` for what does not read as a release)."""
    m = re.match(r"v?(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def http_hook_call(
    action: Mapping[str, Any], pod_ip: str, container: Mapping[str, Any], version: str
) -> HookCall:
    """The request the kubelet of ``version`` makes for the ``httpGet`` ``action``."""
    host = action.get("host") or pod_ip
    port_ref = action.get("port")
    port = 80 if port_ref == "" else resolve_port(port_ref, container)
    path = str(action.get("path") or "")
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    v = release(version)
    if v < CONSISTENT_HANDLERS:
        return HookCall(f"http://{hostport}/{path}", {"User-Agent": "Go-http-client/1.1"})
    scheme = str(action.get("scheme") or "HTTP").lower()
    headers = {str(h.get("name")): str(h.get("value", "")) for h in action.get("httpHeaders") or ()}
    named = {k.lower() for k in headers}
    if "user-agent" not in named:
        headers["User-Agent"] = f"kube-lifecycle/{v[0]}.{v[1]}"
    if "accept" not in named:
        headers["Accept"] = "*/*"
    return HookCall(f"{scheme}://{hostport}{'' if path.startswith('/') else '/'}{path}", headers)


def failed_hook_message(
    version: str, action: Mapping[str, Any], container: str, pod: Mapping[str, Any], url: str, error: str
) -> str:
    """The kubelet's ``FailedPreStopHook`` message for a call to ``url`` that failed with
    ``error`` (the pod named ``NAME_NAMESPACE(UID)``, as the kubelet's ``format.Pod``)."""
    meta = pod.get("metadata") or {}
    pod_name = f"{meta.get('name')}_{meta.get('namespace')}({meta.get('uid')})"
    path = action.get("path") or ""
    what = f'lifecycle hook ({path}) for Container "{container}" in Pod "{pod_name}" failed'
    err = f'Get "{url}": {error}'
    if release(version) < CONSISTENT_HANDLERS:
        return f'Http {what} - error: {err}, message: ""'
    return f"HTTP {what} - error: {err}"
