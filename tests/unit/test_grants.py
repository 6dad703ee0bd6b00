"""Group grants: a Service binds a load-balancer group only where an administrator's
LoadBalancerGroupGrant gives its namespace that group; otherwise the group is left untouched and
the Service's pods and Events say which grant is missing."""

from __future__ import annotations

from typing import Any

import pytest

from podgate.controller.service_controller import ServiceController
from podgate.kube.api import PODS, SERVICES
from podgate.kube.queue import WorkQueue
from podgate.model import lb
from podgate.model.grants import Grant, GrantError, Grants, parse_grant
from podgate.model.lb import Health, Target
from podgate.model.resolution import Settings, resolve
from podgate.providers.base import TargetState
from podgate.providers.fake import FAKE_GROUP, FakeProvider
from podgate.resolutions import GRANTS
from tests.unit.world import NS, World, grant, pod, service

KEY = f"{NS}/web"
SETTINGS = Settings(group_annotations={"fake": (FAKE_GROUP,)}, default_provider="fake")
#: a target someone else put in the group: podgate must never take it out of a refused group
FOREIGN = Target("192.0.2.9", 8080)


# -- the grant itself ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pattern", "group", "allowed"),
    [
        ("grp-1", "grp-1", True),
        ("grp-1", "grp-10", False),  # exact unless it ends in *
        ("grp-*", "grp-10", True),
        ("grp-*", "other", False),
        ("*", "anything", True),
        (
            "arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/shop-*",
            "arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/shop-web/1",
            True,
        ),
    ],
)
def test_a_group_pattern_is_exact_or_a_prefix(pattern: str, group: str, allowed: bool) -> None:
    g = Grant("g", "fake", frozenset({NS}), (pattern,))
    assert g.allows("fake", NS, group) is allowed


def test_a_grant_is_for_its_provider_and_namespaces_only() -> None:
    g = Grant("g", "fake", frozenset({NS}), ("grp-1",))
    assert not g.allows("aws", NS, "grp-1")
    assert not g.allows("fake", "tenant-b", "grp-1")
    assert Grant("g", "fake", frozenset({"*"}), ("grp-1",)).allows("fake", "tenant-b", "grp-1")


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (None, "spec is missing"),
        ({"namespaces": [NS], "groups": ["a"]}, "spec.provider"),
        ({"provider": "fake", "groups": ["a"]}, "spec.namespaces"),
        ({"provider": "fake", "namespaces": [], "groups": ["a"]}, "spec.namespaces"),
        ({"provider": "fake", "namespaces": ["Shop!"], "groups": ["a"]}, "spec.namespaces"),
        ({"provider": "fake", "namespaces": [NS]}, "spec.groups"),
        ({"provider": "fake", "namespaces": [NS], "groups": [""]}, "spec.groups"),
        ({"provider": "fake", "namespaces": [NS], "groups": ["a*b"]}, "spec.groups"),
    ],
)
def test_a_grant_podgate_cannot_read_is_named_and_grants_nothing(spec: Any, field: str) -> None:
    obj = grant("bad", "fake", [NS], ["a"])
    obj["spec"] = spec
    with pytest.raises(GrantError, match=field):
        parse_grant(obj)
    grants = Grants.of([obj, grant("good", "fake", [NS], ["b"])])
    assert [g.name for g in grants.items] == ["good"]
    assert len(grants.unreadable) == 1 and "bad" in grants.unreadable[0]
    assert not grants.allows("fake", NS, "a")


# -- resolution ---------------------------------------------------------------------------------
def grouped(group: str = "grp-1", namespace: str = NS) -> Any:
    s = service(annotations={FAKE_GROUP: group})
    s["metadata"]["namespace"] = namespace
    return s


def test_a_group_no_grant_covers_is_refused_with_the_grant_to_write() -> None:
    r = resolve(grouped(), SETTINGS, Grants.of([grant("other-ns", "fake", ["tenant-b"], ["grp-1"])]))
    assert not r.served and r.handled
    assert r.error_reason == lb.GROUP_NOT_GRANTED
    assert r.error is not None and "grp-1" in r.error and f"namespace {NS}" in r.error
    assert "LoadBalancerGroupGrant" in r.error
    assert [p.group.id for p in r.pools if p.group] == ["grp-1"]  # kept, to say which


def test_a_granted_group_is_served_and_a_service_naming_none_needs_no_grant() -> None:
    grants = Grants.of([grant("shop", "fake", [NS], ["grp-*"])])
    assert resolve(grouped(), SETTINGS, grants).served
    assert resolve(service(), SETTINGS).served  # podgate's own pool: nothing to grant
    assert not resolve(grouped(), SETTINGS).served  # nothing is granted by default


# -- the reconciler: a refused group is never touched ---------------------------------------
def refused_world(**meta: Any) -> World:
    world = World(FakeProvider(binds_user_groups=True))
    world.add(SERVICES, service(annotations={FAKE_GROUP: "grp-1"}, **meta))
    world.add(PODS, pod("p1"))
    # what the group holds already (the provider's pool stands for the group)
    world.provider.pools[(KEY, 80)] = {FOREIGN: TargetState("ready", lb.TargetHealth(Health.HEALTHY, "UP"))}
    return world


async def test_a_refused_service_leaves_the_group_untouched_and_says_which_grant_is_missing() -> None:
    world = refused_world()
    await world.reconcile()
    assert world.provider.calls == []  # no bind, no read, no register, no unbind
    assert list(world.provider.pools[(KEY, 80)]) == [FOREIGN]
    c = world.condition("p1")
    assert c is not None and (c["status"], c["reason"]) == ("False", lb.GROUP_NOT_GRANTED)
    assert "grp-1" in c["message"]
    assert ("Service", "web", lb.GROUP_NOT_GRANTED, "Warning") in world.recorder.events
    assert [w for w in world.kube.writes if w.resource == "services"] == []  # no finalizer


async def test_a_grant_given_later_binds_the_group_on_the_next_pass() -> None:
    world = refused_world()
    await world.reconcile()
    world.add(GRANTS, grant("shop-grp-1", "fake", [NS], ["grp-1"]))
    await world.reconcile()
    assert ("bind", KEY, ()) in world.provider.calls
    assert ("register", KEY, ("10.0.0.1:8080",)) in world.provider.calls


async def test_a_grant_taken_back_refuses_the_service_again() -> None:
    world = refused_world()
    world.add(GRANTS, grant("shop-grp-1", "fake", [NS], ["grp-1"]))
    await world.reconcile()
    await world.kube.delete(GRANTS, "shop-grp-1")
    world.provider.calls.clear()
    await world.reconcile()
    assert world.provider.calls == []
    assert world.condition("p1") is not None
    assert ("Service", "web", lb.GROUP_NOT_GRANTED, "Warning") in world.recorder.events


async def test_a_refused_service_being_deleted_lets_go_without_touching_the_group() -> None:
    world = refused_world(finalizers=[lb.TARGETS_FINALIZER], deletionTimestamp="2026-01-01T00:00:00Z")
    await world.reconcile()
    assert [c for c in world.provider.calls if c[0] in ("unbind", "deregister", "release")] == []
    assert list(world.provider.pools[(KEY, 80)]) == [FOREIGN]
    assert world.kube.object(SERVICES, "web", NS) is None  # the finalizer went: deleted


async def test_a_grant_change_queues_only_the_services_naming_a_group() -> None:
    world = refused_world()
    world.add(SERVICES, service("plain"))
    await world.sync()
    queue = WorkQueue(name="test")
    ServiceController(
        world.pods, world.services, world.namespaces, world.resolutions, world.reconciler, queue
    )
    world.add(GRANTS, grant("shop-grp-1", "fake", [NS], ["grp-1"]))
    await world.grants.relist()
    assert (await queue.get())[0] == KEY
    assert len(queue) == 0
