"""Ownership of cloud groups: the pure check of a group's tags, the short memory of an accepted
group, and what a Service naming a group it may not bind shows its user."""

from __future__ import annotations

import pytest

from podgate.kube.api import PODS, SERVICES
from podgate.model.ownership import CLUSTER_TAG, SERVICE_TAG, owner_tags, ownership_problem
from podgate.providers.base import NotOwned
from podgate.providers.fake import FAKE_GROUP, FakeProvider
from podgate.providers.ownership import Ownership
from podgate.resolutions import GRANTS

from .world import NS, World, grant, pod, service

GROUP = "target group tg-1"


@pytest.mark.parametrize(
    ("tags", "problem"),
    [
        (owner_tags("prod", "shop/web"), None),
        ({**owner_tags("prod", "shop/web"), "team": "payments"}, None),  # other tags are the user's
        (
            {},
            "target group tg-1 has no tag podgate.dev/cluster, so podgate may not bind it to Service "
            "shop/web",
        ),
        ({CLUSTER_TAG: "prod"}, "target group tg-1 has no tag podgate.dev/service"),
        (
            owner_tags("staging", "shop/web"),
            "target group tg-1 is tagged podgate.dev/cluster=staging: it is another cluster's, not prod's",
        ),
        (
            owner_tags("prod", "shop/api"),
            "target group tg-1 is tagged podgate.dev/service=shop/api: it is another Service's, not "
            "shop/web's",
        ),
        ({CLUSTER_TAG: "prod", SERVICE_TAG: "other/web"}, "another Service's"),
        ({CLUSTER_TAG: "Prod", SERVICE_TAG: "shop/web"}, "another cluster's"),  # tags are case-sensitive
    ],
)
def test_a_groups_tags_must_name_this_cluster_and_service(tags: dict[str, str], problem: str | None) -> None:
    got = ownership_problem(GROUP, tags, "prod", "shop/web")
    if problem is None:
        assert got is None
    else:
        assert got is not None and problem in got
        # every refusal says how an administrator gives the group to the Service
        assert "an administrator tags it podgate.dev/cluster=prod and podgate.dev/service=shop/web" in got


async def test_an_accepted_group_is_remembered_for_the_ttl_only_and_a_refusal_not_at_all() -> None:
    now = [100.0]
    reads: list[str] = []
    tags = owner_tags("prod", "shop/web")

    async def read() -> dict[str, str]:
        reads.append("read")
        return dict(tags)

    check = Ownership("prod", ttl=30.0, clock=lambda: now[0])
    await check.check(GROUP, "tg-1", "shop/web", read)
    now[0] += 29.9
    await check.check(GROUP, "tg-1", "shop/web", read)
    assert len(reads) == 1
    with pytest.raises(NotOwned, match="another Service's"):  # another Service asks: read, refused
        await check.check(GROUP, "tg-1", "shop/api", read)
    tags[SERVICE_TAG] = "shop/api"  # an administrator gives the group to another Service
    now[0] += 0.1
    with pytest.raises(NotOwned, match=r"is tagged podgate\.dev/service=shop/api"):
        await check.check(GROUP, "tg-1", "shop/web", read)
    with pytest.raises(NotOwned):
        await check.check(GROUP, "tg-1", "shop/web", read)
    assert len(reads) == 4
    await check.check(GROUP, "tg-1", "shop/api", read)
    check.forget("shop/api")
    await check.check(GROUP, "tg-1", "shop/api", read)
    assert len(reads) == 6


async def test_without_a_cluster_name_every_group_is_refused() -> None:
    async def read() -> dict[str, str]:
        raise AssertionError("nothing to read: no name to compare the tags with")

    with pytest.raises(NotOwned, match="tg-1: podgate has no --cluster-name"):
        await Ownership(None).check(GROUP, "tg-1", "shop/web", read)


async def test_a_refused_group_is_untouched_and_the_service_and_gates_say_why() -> None:
    """A Warning Event of its own reason naming the group, the pending gate False with that
    reason and message; no target registered, no finalizer (nothing of podgate's is in it)."""
    provider = FakeProvider(binds_user_groups=True)
    world = World(provider)
    world.add(GRANTS, grant("shop-grp", "fake", [NS], ["grp-1"]))  # granted, but not tagged
    world.add(SERVICES, service(annotations={FAKE_GROUP: "grp-1"}))
    world.add(PODS, pod("p1", "10.0.0.1"))
    message = (
        "fake group grp-1 has no tag podgate.dev/cluster, so podgate may not bind it to Service shop/web"
    )
    provider.fail("bind", NotOwned(message), times=2)
    with pytest.raises(NotOwned):  # raised to the queue: retried with back-off
        await world.reconcile()
    assert ("Service", "web", "GroupNotOwned", "Warning") in world.recorder.events
    cond = world.condition("p1")
    assert cond is not None and (cond["status"], cond["reason"], cond["message"]) == (
        "False",
        "GroupNotOwned",
        message,
    )
    assert [c[0] for c in provider.calls] == ["bind"]
    assert "finalizers" not in (world.kube.object(SERVICES, "web", NS) or {})["metadata"]

    with pytest.raises(NotOwned):
        await world.reconcile()
    await world.reconcile()  # the administrator tagged the group: bound, the pod goes in
    assert ("register", f"{NS}/web", ("10.0.0.1:8080",)) in provider.calls


async def test_a_service_deleted_while_its_group_is_refused_is_let_go_untouched() -> None:
    provider = FakeProvider(binds_user_groups=True)
    world = World(provider)
    world.add(GRANTS, grant("shop-grp", "fake", [NS], ["grp-1"]))
    world.add(
        SERVICES,
        service(
            annotations={FAKE_GROUP: "grp-1"},
            finalizers=["podgate.dev/load-balancer-targets"],
            deletionTimestamp="2026-01-01T00:00:00Z",
        ),
    )
    provider.fail("bind", NotOwned("fake group grp-1 is tagged podgate.dev/service=shop/api"))
    await world.reconcile()
    assert [c[0] for c in provider.calls] == ["bind"]  # no unbind: nothing taken out
    assert ("Service", "web", "CleanupSkipped", "Warning") in world.recorder.events
    assert world.kube.object(SERVICES, "web", NS) is None  # the finalizer went: deleted
