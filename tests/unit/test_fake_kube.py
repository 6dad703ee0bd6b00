"""FakeKube behaves as the API server does where podgate's tests rely on it."""

from __future__ import annotations

import pytest

from podgate.kube.api import LEASES, PODS, SERVICES, Conflict, NotFound, PatchType
from podgate.kube.fake import FakeKube

S = PatchType.STRATEGIC


async def test_strategic_merge_merges_conditions_by_type_and_finalizers_as_a_set() -> None:
    kube = FakeKube()
    kube.add(
        PODS,
        {
            "metadata": {"name": "p", "namespace": "n", "uid": "u", "finalizers": ["a"]},
            "status": {
                "conditions": [{"type": "Ready", "status": "False"}, {"type": "g", "status": "False"}]
            },
        },
    )
    patch = {
        "metadata": {"uid": "u"},
        "status": {"conditions": [{"type": "g", "status": "True", "reason": None}]},
    }
    out = await kube.patch(PODS, "p", patch, "n", patch_type=S, subresource="status")
    assert out["status"]["conditions"] == [
        {"type": "Ready", "status": "False"},
        {"type": "g", "status": "True"},
    ]
    await kube.patch(PODS, "p", {"metadata": {"finalizers": ["b", "a"]}}, "n", patch_type=S)
    out = await kube.patch(
        PODS, "p", {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}, "n", patch_type=S
    )
    assert out["metadata"]["finalizers"] == ["b"]


async def test_preconditions_and_subresources() -> None:
    kube = FakeKube()
    kube.add(
        SERVICES, {"metadata": {"name": "s", "namespace": "n", "uid": "u"}, "spec": {"type": "LoadBalancer"}}
    )
    with pytest.raises(Conflict):
        await kube.patch(SERVICES, "s", {"metadata": {"uid": "other"}}, "n", patch_type=S)
    with pytest.raises(NotFound):
        await kube.patch(SERVICES, "t", {}, "n", patch_type=S)
    merge = {"status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}, "spec": {"type": "X"}}
    out = await kube.patch(SERVICES, "s", merge, "n", patch_type=PatchType.MERGE, subresource="status")
    assert (
        out["spec"]["type"] == "LoadBalancer"
        and out["status"]["loadBalancer"]["ingress"][0]["ip"] == "1.2.3.4"
    )
    clear = {"status": {"loadBalancer": {"ingress": None}}}
    out = await kube.patch(SERVICES, "s", clear, "n", patch_type=PatchType.MERGE, subresource="status")
    assert out["status"]["loadBalancer"] == {}
    assert [w.resource for w in kube.writes] == ["services", "services", "services/status", "services/status"]


async def test_replace_needs_the_current_version_and_lists_come_in_pages() -> None:
    kube = FakeKube()
    created = await kube.create(LEASES, {"metadata": {"name": "l"}, "spec": {}}, "n")
    await kube.replace(LEASES, "l", created, "n")
    with pytest.raises(Conflict):
        await kube.replace(LEASES, "l", created, "n")  # its resourceVersion is stale now
    with pytest.raises(Conflict):
        await kube.create(LEASES, {"metadata": {"name": "l"}}, "n")
    for i in range(3):
        kube.add(PODS, {"metadata": {"name": f"p{i}", "namespace": "n"}})
    first = await kube.list(PODS, limit=2)
    rest = await kube.list(PODS, limit=2, continue_=first["continue_"])
    assert [len(first["items"]), len(rest["items"]), rest["continue_"]] == [2, 1, ""]
