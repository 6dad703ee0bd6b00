"""Which namespaces may bind which load-balancer groups: the administrator's grants.

A Service names an existing group of the user's (an HAProxy backend in attach mode, an ELBv2
target group, an Alibaba server group) by annotation, and podgate then treats the pod targets of
that group as the Service's own: it registers the Service's pods and deregisters the others.
Anyone who may edit a Service could otherwise point it at another tenant's group and empty it.
So a group is bound only where a cluster-scoped ``LoadBalancerGroupGrant`` (an object only an
administrator can write: it is cluster-scoped and podgate's ClusterRole reads it, nothing more)
grants the Service's namespace that group of that provider.  Nothing is granted by default.

Why a resource and not a controller flag: grants change as tenants come and go, an
administrator lists and audits them with kubectl, RBAC decides who writes them, and podgate
picks a change up from its watch without a restart.  It is Gateway API's ReferenceGrant turned
round: the groups live outside the cluster, so the grant is cluster-scoped rather than in a
target namespace.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from podgate.model.gates import DOMAIN

GROUP = DOMAIN
VERSION = "v1alpha1"
KIND = "LoadBalancerGroupGrant"
PLURAL = "loadbalancergroupgrants"

#: a namespace name (RFC 1123 label) or ``*``, every namespace
_NAMESPACE = re.compile(r"^(\*|[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)$")


class GrantError(ValueError):
    """A grant podgate cannot read; the message names the field."""


@dataclass(frozen=True)
class Grant:
    """One grant: ``namespaces`` may bind ``groups`` of ``provider``.

    A group pattern is a group id as its Service annotation names it (a backend name, a target
    group ARN, a server group id), or a prefix of one followed by ``*``; ``*`` alone is every
    group of the provider.  A namespace is a name, or ``*`` for every namespace.
    """

    name: str
    provider: str
    namespaces: frozenset[str]
    groups: tuple[str, ...]

    def allows(self, provider: str, namespace: str, group: str) -> bool:
        if provider != self.provider:
            return False
        if namespace not in self.namespaces and "*" not in self.namespaces:
            return False
        return any(_matches(pattern, group) for pattern in self.groups)


def _matches(pattern: str, group: str) -> bool:
    if pattern.endswith("*"):
        return group.startswith(pattern[:-1])
    return group == pattern


def parse_grant(obj: Mapping[str, Any]) -> Grant:
    """The grant in a ``LoadBalancerGroupGrant`` object; :class:`GrantError` naming the field
    when it is not one (the CRD's schema refuses most of these at the API server already)."""
    name = str((obj.get("metadata") or {}).get("name") or "")
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise GrantError(f"{KIND} {name}: spec is missing")
    provider = spec.get("provider")
    if not isinstance(provider, str) or not provider:
        raise GrantError(f"{KIND} {name}: spec.provider must name a provider")
    namespaces = _strings(spec.get("namespaces"), f"{KIND} {name}: spec.namespaces")
    for ns in namespaces:
        if not _NAMESPACE.match(ns):
            raise GrantError(f"{KIND} {name}: spec.namespaces: {ns!r} is not a namespace name or *")
    groups = _strings(spec.get("groups"), f"{KIND} {name}: spec.groups")
    for g in groups:
        if "*" in g[:-1]:
            raise GrantError(f"{KIND} {name}: spec.groups: {g!r} may hold * only at its end")
    return Grant(name, provider, frozenset(namespaces), tuple(groups))


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise GrantError(f"{what} must be a non-empty list")
    if not all(isinstance(v, str) and v for v in value):
        raise GrantError(f"{what} must hold non-empty strings")
    return list(value)


@dataclass(frozen=True)
class Grants:
    """Every usable grant in the cluster, and the names of those podgate could not read."""

    items: tuple[Grant, ...] = ()
    unreadable: tuple[str, ...] = ()

    @classmethod
    def of(cls, objs: Iterable[Mapping[str, Any]]) -> Grants:
        items, unreadable = [], []
        for obj in objs:
            try:
                items.append(parse_grant(obj))
            except GrantError as e:
                unreadable.append(str(e))
        return cls(tuple(items), tuple(unreadable))

    def allows(self, provider: str, namespace: str, group: str) -> bool:
        return any(g.allows(provider, namespace, group) for g in self.items)

    def refusal(self, provider: str, namespace: str, groups: Sequence[str]) -> str | None:
        """Why ``namespace`` may not bind ``groups`` of ``provider`` (None: it may): the groups
        no grant covers, and what an administrator would write to grant them."""
        missing = sorted({g for g in groups if not self.allows(provider, namespace, g)})
        if not missing:
            return None
        named = ", ".join(missing)
        return (
            f"namespace {namespace} is not granted {provider} group(s) {named}: podgate binds a "
            f"group only where a {KIND} ({GROUP}/{VERSION}) lists provider {provider}, namespace "
            f"{namespace} and the group; the group is left untouched"
        )


#: no grant at all: what a cluster without any LoadBalancerGroupGrant has
NO_GRANTS = Grants()
