"""The records of which targets podgate registered (ELBv2 targets carry no mark of their own):
ConfigMaps in podgate's namespace, read-modify-replace, read again after another writer."""

from __future__ import annotations

from podgate.kube.fake import FakeKube
from podgate.kube.records import CONFIGMAPS, ConfigMapRecords, MemoryRecords
from podgate.model.lb import Target
from podgate.model.ownership import RECORD_GRACE, decode_record, encode_record, record_name, stale

ARN = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123456789abcdef"
A, B, C = Target("10.0.0.1", 8080), Target("10.0.0.2", 8080), Target("10.0.0.3", 9090)


def test_a_record_is_lines_of_target_and_time_and_bad_lines_are_dropped() -> None:
    text = encode_record({B: 20.0, A: 10.0})
    assert text == "10.0.0.1:8080 10\n10.0.0.2:8080 20\n"
    assert decode_record(text + "garbage\n10.0.0.9:x 1\n") == {A: 10.0, B: 20.0}


def test_a_target_is_stale_only_when_absent_from_a_read_long_enough_after_it_was_recorded() -> None:
    recorded = {A: 1000.0, B: 1000.0, C: 1200.0}
    assert stale(recorded, {A}, 1000.0 + RECORD_GRACE) == {B}  # C: a registration may be in flight
    assert stale(recorded, {A}, 1000.0 + RECORD_GRACE - 1) == set()


def test_record_names_are_object_names_per_group_and_service() -> None:
    name = record_name(ARN, "shop/web")
    assert name.startswith("podgate-targets-") and len(name) <= 63 and name == name.lower()
    assert name != record_name(ARN, "shop/api")


async def test_configmap_records_add_remove_and_go_when_empty() -> None:
    kube, now = FakeKube(), [100.0]
    records = ConfigMapRecords(kube, "podgate-system", clock=lambda: now[0])
    await records.add(ARN, "shop/web", [A, B])
    now[0] = 200.0
    await records.add(ARN, "shop/api", [C])
    assert await records.read(ARN, "shop/web") == {A: 100.0, B: 100.0}
    assert await records.groups("shop/web") == [ARN] and await records.groups("shop/db") == []
    cm = kube.object(CONFIGMAPS, record_name(ARN, "shop/web"), "podgate-system")
    assert cm is not None and cm["metadata"]["annotations"] == {
        "podgate.dev/group": ARN,
        "podgate.dev/service": "shop/web",
    }
    await records.remove(ARN, "shop/web", [A, C])
    assert await records.read(ARN, "shop/web") == {B: 100.0}
    await records.remove(ARN, "shop/web", [B])
    assert kube.object(CONFIGMAPS, record_name(ARN, "shop/web"), "podgate-system") is None
    assert await records.groups("shop/web") == []


async def test_a_write_by_another_replica_is_read_again_not_overwritten() -> None:
    """Two processes (an old leader and a new one) each with its cache: the second writer's
    replace is refused (resourceVersion), it reads again and keeps both writes."""
    kube = FakeKube()
    first, second = ConfigMapRecords(kube, "podgate-system"), ConfigMapRecords(kube, "podgate-system")
    await first.add(ARN, "shop/web", [A])
    assert set(await second.read(ARN, "shop/web")) == {A}  # cached by the second from now on
    await first.add(ARN, "shop/web", [B])
    await second.add(ARN, "shop/web", [C])
    assert set(await ConfigMapRecords(kube, "podgate-system").read(ARN, "shop/web")) == {A, B, C}


async def test_memory_records_behave_alike() -> None:
    records = MemoryRecords(clock=lambda: 5.0)
    await records.add(ARN, "shop/web", [A])
    assert await records.read(ARN, "shop/web") == {A: 5.0} and await records.groups("shop/web") == [ARN]
    await records.remove(ARN, "shop/web", [A])
    assert await records.groups("shop/web") == []
