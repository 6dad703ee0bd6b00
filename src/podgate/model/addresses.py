"""Loopback address allocation for pods (and later for load balancers).

The whole of 127.0.0.0/8 is local on Linux, so every pod can have its own address and listen on
its declared ports without clashing; ranges are disjoint per use so a pod never takes an
address the sandbox gives to a load balancer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from collections.abc import Set as AbstractSet

LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


class AddressPoolError(ValueError):
    pass


def loopback_network(cidr: str) -> ipaddress.IPv4Network:
    """Parse a pool CIDR and insist it lies inside 127.0.0.0/8 (traffic never leaves the host)."""
    try:
        net = ipaddress.IPv4Network(cidr)
    except ValueError as e:
        raise AddressPoolError(f"{cidr!r} is not an IPv4 CIDR: {e}") from None
    if not net.subnet_of(LOOPBACK):
        raise AddressPoolError(f"{cidr} is not inside 127.0.0.0/8; sandbox addresses must be loopback")
    if net.num_addresses < 4:
        raise AddressPoolError(f"{cidr} is too small")
    return net


def allocate(net: ipaddress.IPv4Network, used: Iterable[str], hint: int = 0) -> str:
    """The first free host address of ``net`` at or after offset ``hint`` (wrapping).  A set
    (``collections.abc.Set``) is only looked up, never copied."""
    taken = used if isinstance(used, AbstractSet) else set(used)
    hosts = net.num_addresses - 2
    base = int(net.network_address) + 1
    for i in range(hosts):
        candidate = str(ipaddress.IPv4Address(base + (hint + i) % hosts))
        if candidate not in taken:
            return candidate
    raise AddressPoolError(f"no free address left in {net}")


def offset(net: ipaddress.IPv4Network, ip: str) -> int:
    """Position of ``ip`` among ``net``'s host addresses (the inverse of ``allocate``'s hint)."""
    return int(ipaddress.IPv4Address(ip)) - int(net.network_address) - 1


def contains(net: ipaddress.IPv4Network, ip: str) -> bool:
    try:
        return ipaddress.IPv4Address(ip) in net
    except ValueError:
        return False


def overlaps(a: str, b: str) -> bool:
    return loopback_network(a).overlaps(loopback_network(b))
