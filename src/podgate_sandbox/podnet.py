"""The node agent's pod addresses: a range the API server accepts in Endpoints, local to the host.

Endpoints and EndpointSlices refuse loopback addresses (``ValidateEndpointIP``: 127.0.0.0/8,
link-local and unspecified ones): with pod IPs in 127.0.0.0/8 the endpoint and EndpointSlice
controllers fail on every Service that selects a pod, and say so in Warning Events (on the
Service itself from the EndpointSlice controller of current releases).  So the node agent's pods
take addresses in 198.18.0.0/15, the range RFC 2544 sets aside for benchmarking (never routed
on the Internet), made local the way 127.0.0.0/8 is: ``up`` adds a route of type ``local`` for
the sandbox's pod range on the loopback device (every address in it is then the host's own, so
a pod's app binds it and every connection to it stays on ``lo``), and ``down`` removes it.

A range inside 127.0.0.0/8 still works (no route, no root needed) at the cost of those Warnings.
Anything else is refused: the sandbox sends traffic only to loopback and ranges it creates, and a
route for a range the machine uses would take it over, so ``up`` also refuses a range that
overlaps any route the machine has (other than this very one).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess

from podgate.model.addresses import LOOPBACK, AddressPoolError

#: RFC 2544's benchmarking range: pods' addresses with the node agent come from inside it
BENCHMARKING = ipaddress.IPv4Network("198.18.0.0/15")


def pod_network(cidr: str) -> ipaddress.IPv4Network:
    """Parse the node agent's pod range: inside 198.18.0.0/15 (local by a route ``up`` adds) or
    inside 127.0.0.0/8 (local already); at least 4 addresses (pure)."""
    try:
        net = ipaddress.IPv4Network(cidr)
    except ValueError as e:
        raise AddressPoolError(f"{cidr!r} is not an IPv4 CIDR: {e}") from None
    if not (net.subnet_of(BENCHMARKING) or net.subnet_of(LOOPBACK)):
        raise AddressPoolError(
            f"pod CIDR {cidr} must be inside {BENCHMARKING} (routed locally by the sandbox) or {LOOPBACK}"
        )
    if net.num_addresses < 4:
        raise AddressPoolError(f"{cidr} is too small")
    return net


def needs_route(net: ipaddress.IPv4Network) -> bool:
    """Whether ``up`` must make the range local (everything outside 127.0.0.0/8)."""
    return not net.subnet_of(LOOPBACK)


def route_args(net: ipaddress.IPv4Network) -> list[str]:
    """``ip route`` arguments after the verb for the range's local route (pure): type ``local``
    on ``lo`` in the ``local`` table, as the kernel's own route for 127.0.0.0/8."""
    return ["local", str(net), "dev", "lo", "table", "local"]


def conflicts(net: ipaddress.IPv4Network, routes: list[dict[str, object]]) -> list[str]:
    """Routes (``ip -j route show table all``) overlapping ``net`` other than its own local route
    (pure): each as ``ip route`` prints its destination and device."""
    found = []
    for route in routes:
        dst = str(route.get("dst", ""))
        if dst in ("default", ""):
            continue
        try:
            other = ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False)
        except ValueError:
            continue  # IPv6 and the like
        if not other.overlaps(net):
            continue
        ours = other == net and route.get("type") == "local" and route.get("dev") == "lo"
        if not ours:
            found.append(f"{dst} dev {route.get('dev', '?')} table {route.get('table', 'main')}")
    return found


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)


def add_route(net: ipaddress.IPv4Network) -> None:
    """Make ``net`` local (idempotent); refuse a range the machine already routes."""
    shown = _ip("-j", "-4", "route", "show", "table", "all")
    routes = json.loads(shown.stdout or "[]") if shown.returncode == 0 else []
    clash = conflicts(net, routes)
    if clash:
        raise AddressPoolError(f"pod CIDR {net} overlaps this machine's route(s): {'; '.join(clash)}")
    done = _ip("route", "replace", *route_args(net))
    if done.returncode != 0:
        raise AddressPoolError(
            f"could not route pod CIDR {net} locally ({done.stderr.strip()}); "
            f"run as root, or give --pod-cidr inside {LOOPBACK}"
        )


def remove_route(net: ipaddress.IPv4Network) -> None:
    """Remove ``net``'s local route if present (``down``; idempotent)."""
    _ip("route", "del", *route_args(net))


def has_route(net: ipaddress.IPv4Network) -> bool:
    shown = _ip("-j", "-4", "route", "show", "table", "local", "type", "local", "dev", "lo")
    routes = json.loads(shown.stdout or "[]") if shown.returncode == 0 else []
    return any(str(r.get("dst")) == str(net) for r in routes)
